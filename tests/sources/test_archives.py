"""Zip members read in place (local, over HTTP with range requests, on S3), hostile archives
refused, and materialize() turning a published zip into the tree the adapters read."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import struct
import tarfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cloudmic.datasets import get_adapter
from cloudmic.errors import SourceError
from cloudmic.manifest import Download, load_manifest
from cloudmic.sources.byte_ranges import RangeNotSupportedError
from cloudmic.sources.materialization import materialize, materialize_manifest, resolve_source
from cloudmic.sources.zip_archive import ZipArchive, extract_members, list_members, open_member
from cloudmic.sources.zip_checks import NotAZipError, ZipLimits

FAST = {"backoff": 0.01, "timeout": 5.0}
JSON_50 = "platelet-em/labels-semantic/50-semantic.json"
IMG_24 = "platelet-em/images/24-images.tif"
IMG_50 = "platelet-em/images/50-images.tif"


def build_zip(entries: list[tuple[str | zipfile.ZipInfo, bytes]],
              compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns on the duplicate names we build
        with zipfile.ZipFile(buf, "w", compression) as zf:
            for name, blob in entries:
                zf.writestr(name, blob)
    return buf.getvalue()


def patch_cd(data: bytes, name: str, **fields: int) -> bytes:
    """Rewrite fields of one central-directory entry (APPNOTE 4.3.12 offsets)."""
    offsets = {"flags": (8, "<H"), "size": (24, "<L"), "header_offset": (42, "<L")}
    out = bytearray(data)
    pos = out.find(b"PK\x01\x02")
    while pos >= 0:
        n = struct.unpack_from("<H", out, pos + 28)[0]
        if out[pos + 46 : pos + 46 + n].decode() == name:
            for key, value in fields.items():
                off, fmt = offsets[key]
                struct.pack_into(fmt, out, pos + off, value)
            return bytes(out)
        pos = out.find(b"PK\x01\x02", pos + 4)
    raise KeyError(name)


def tree_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)}


# ---- listing, extraction, random access ------------------------------------------------------
def test_listing_a_remote_zip_costs_one_small_request(http_server, platelet_zip):
    url = http_server.serve("images_and_labels_json.zip", platelet_zip.zip_path.read_bytes())
    remote = list_members(url, **FAST)
    assert remote == list_members(platelet_zip.zip_path)
    files = {m.name: m.size for m in remote if not m.is_dir}
    assert files == {k: len(v) for k, v in platelet_zip.files.items()}
    gets = http_server.gets()
    assert len(gets) == 1 and gets[0].range == "bytes=-65536"


def test_redirects_keep_the_range(http_server, platelet_zip, tmp_path):
    """Dropbox's ?dl=1 and figshare's ndownloader answer 302 to a content server."""
    http_server.serve("content/pe.zip", platelet_zip.zip_path.read_bytes())
    url = http_server.serve("s/tgm/images_and_labels_json.zip", b"", redirect_to="content/pe.zip")
    extract_members(url + "?dl=1", tmp_path, select=lambda m: m.name == IMG_24, **FAST)
    assert (tmp_path / IMG_24).read_bytes() == platelet_zip.files[IMG_24]
    content = http_server.gets("content/pe.zip")
    assert [g.status for g in content] == [206, 206]


def test_one_member_is_streamed_out_without_the_whole_archive(http_server, platelet_zip,
                                                                  tmp_path):
    archive = platelet_zip.zip_path.read_bytes()
    url = http_server.serve("pe.zip", archive)
    out = extract_members(url, tmp_path, select=lambda m: m.name == IMG_24, **FAST)
    assert out == [tmp_path / IMG_24]
    assert out[0].read_bytes() == platelet_zip.files[IMG_24]
    assert tree_files(tmp_path) == {IMG_24: platelet_zip.files[IMG_24]}
    # one request for the directory, one for the member (it lies outside the tail)
    assert len(http_server.gets()) == 2
    assert http_server.sent() < len(archive) * 0.5


def test_stored_movie_frame_is_read_by_range_without_the_movie(http_server):
    """A DeepCAD-like case: one frame of a TIFF movie stored in a zip, read in place."""
    movie = np.random.default_rng(0).integers(0, 4000, (24, 256, 256), dtype=np.uint16)
    buf = io.BytesIO()
    tifffile.imwrite(buf, movie)
    member = buf.getvalue()
    url = http_server.serve("rec.zip", build_zip([("rec/low.tif", member)], zipfile.ZIP_STORED))
    with ZipArchive(url, **FAST) as z:
        http_server.reset()
        with z.open("rec/low.tif") as f:
            assert f.seekable()
            f.seek(100_000)
            assert f.read(1000) == member[100_000:101_000]
            f.seek(0)  # tifffile takes the current position as the start of the TIFF
            with tifffile.TiffFile(f) as tif:
                frame = tif.asarray(key=17)
    assert np.array_equal(frame, movie[17])
    # header + first 64 KiB, the read at 100,000, the first 64 KiB again (tifffile's header
    # and IFD: the one-block buffer moved on), then the frame itself
    assert len(http_server.gets()) == 4
    assert http_server.sent() < len(member) * 0.15  # 327 KB of a 3.1 MB movie


def test_stored_member_of_the_platelet_zip_opens_with_tifffile(http_server, platelet_zip):
    url = http_server.serve("pe.zip", platelet_zip.zip_path.read_bytes())
    with open_member(url, IMG_50, **FAST) as f:
        image = tifffile.imread(f)
    assert np.array_equal(image, tifffile.imread(platelet_zip.tree / IMG_50))


def test_stored_member_read_costs_what_it_reads(http_server, tmp_path):
    blob = os.urandom(4 * 1024 * 1024)
    data = build_zip([(zipfile.ZipInfo("movie/raw.bin"), blob)], compression=zipfile.ZIP_STORED)
    url = http_server.serve("stored.zip", data)
    with ZipArchive(url, **FAST) as z:
        http_server.reset()
        with z.open("movie/raw.bin") as f:
            f.seek(3_000_000)
            assert f.read(100) == blob[3_000_000:3_000_100]
    assert http_server.sent() <= 64 * 1024 + 200 + 64 * 1024  # header + first block + one block
    assert len(http_server.gets()) == 2


def test_a_central_directory_larger_than_the_tail_is_read_too(http_server, tmp_path):
    entries = [(f"BioSR/Microtubules/training_wf/{i:08d}.tif", i.to_bytes(4, "little"))
               for i in range(1500)]  # ~100 KB of central directory
    url = http_server.serve("many.zip", build_zip(entries))
    members = list_members(url, **FAST)
    assert [m.name for m in members] == [n for n, _ in entries]
    assert len(http_server.gets()) == 2  # the tail, then the rest of the directory
    extract_members(url, tmp_path, select=lambda m: m.name.endswith("01234.tif"), **FAST)
    assert (tmp_path / entries[1234][0]).read_bytes() == entries[1234][1]


def test_zip64_member_with_a_longer_local_header(http_server):
    """Archives over 4 GiB (the DeepCAD zips) use zip64 extras, in the local header too."""
    blob = os.urandom(300_000)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("pad.bin", b"p" * 1000)
        with zf.open("rec/low.tif", "w", force_zip64=True) as w:
            w.write(blob)
    url = http_server.serve("z64.zip", buf.getvalue())
    with open_member(url, "rec/low.tif", **FAST) as f:
        f.seek(250_000)
        assert f.read(5) == blob[250_000:250_005]
        f.seek(0)
        assert f.read() == blob


def test_deflated_member_opens_as_a_checked_stream(platelet_zip):
    with open_member(platelet_zip.zip_path, JSON_50) as f:
        assert f.read() == platelet_zip.files[JSON_50]


def test_local_extraction_of_everything_matches_the_tree(platelet_zip, tmp_path):
    extract_members(platelet_zip.zip_path, tmp_path)
    assert tree_files(tmp_path) == platelet_zip.files


def test_extraction_skips_verified_files_and_replaces_wrong_ones(platelet_zip, tmp_path):
    extract_members(platelet_zip.zip_path, tmp_path)
    good, bad = tmp_path / JSON_50, tmp_path / IMG_24
    before = good.stat()
    bad.write_bytes(b"x" * bad.stat().st_size)  # same size, wrong bytes: the CRC tells
    extract_members(platelet_zip.zip_path, tmp_path)
    assert good.stat().st_mtime_ns == before.st_mtime_ns and good.stat().st_ino == before.st_ino
    assert bad.read_bytes() == platelet_zip.files[IMG_24]


def test_macos_junk_is_skipped_and_unicode_names_kept(tmp_path):
    data = build_zip([("ER-sec61β/cell1/WF1.tif", b"wf"), ("__MACOSX/ER-sec61β/._x", b"rsrc"),
                      ("ER-sec61β/.DS_Store", b"ds")])
    (tmp_path / "CCPs.zip").write_bytes(data)
    extract_members(tmp_path / "CCPs.zip", tmp_path / "out")
    assert tree_files(tmp_path / "out") == {"ER-sec61β/cell1/WF1.tif": b"wf"}


# ---- hostile archives ------------------------------------------------------------------------
def _symlink() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("platelet-em/images/link.tif")
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


HOSTILE = {
    "traversal": ([("platelet-em/ok.txt", b"ok"), ("../evil", b"pwned")], "path traversal"),
    "nested traversal": ([("platelet-em/../../evil", b"x")], "path traversal"),
    "absolute": ([("/etc/evil", b"x")], "absolute path"),
    "backslash": ([("..\\evil", b"x")], "Windows path"),
    "symlink": ([(_symlink(), b"/etc/passwd")], "symbolic link"),
    "duplicate": ([("a/x.tif", b"1"), ("a/x.tif", b"2")], "appears twice"),
    "unicode duplicate": ([("caf\u00e9/x", b"1"), ("cafe\u0301/x", b"2")],
                          "after Unicode normalisation"),
    "file under file": ([("a/x", b"1"), ("a/x/y", b"2")], "which is a file"),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_names_are_refused_before_anything_is_written(case, tmp_path):
    entries, problem = HOSTILE[case]
    path = tmp_path / "sub" / "hostile.zip"
    path.parent.mkdir()
    path.write_bytes(build_zip(entries))
    with pytest.raises(SourceError, match=problem) as err:
        extract_members(path, tmp_path / "sub" / "out")
    assert str(path) in str(err.value)
    assert not (tmp_path / "sub" / "out").exists() and not (tmp_path / "evil").exists()
    with pytest.raises(SourceError, match=problem):
        list_members(path)


def test_hostile_remote_zip_is_refused_too(http_server, tmp_path):
    url = http_server.serve("evil.zip", build_zip([("../evil", b"x")]))
    with pytest.raises(SourceError, match="path traversal") as err:
        materialize(url, tmp_path / "out", **FAST)
    assert url in str(err.value)
    assert not (tmp_path / "evil").exists()


def test_overlapping_entries_are_refused(tmp_path):
    data = build_zip([("a.bin", os.urandom(5000)), ("b.bin", os.urandom(5000))])
    path = tmp_path / "overlap.zip"
    path.write_bytes(patch_cd(data, "b.bin", header_offset=0))
    with pytest.raises(SourceError, match="overlaps"):
        list_members(path)


def test_zip_bomb_is_refused_by_its_ratio(tmp_path):
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("platelet-em/images/50-images.tif", bytes(64 * 1024 * 1024))
    assert path.stat().st_size < 100_000
    [m] = list_members(path)  # listing is harmless
    assert m.size == 64 * 1024 * 1024
    with pytest.raises(SourceError, match=r"expands 1,0\d\dx .* a zip bomb"):
        extract_members(path, tmp_path / "out")
    assert tree_files(tmp_path / "out") == {}


def test_members_and_selections_over_the_caps_are_refused(platelet_zip, tmp_path):
    with pytest.raises(SourceError, match="above the limit of 100,000"):
        extract_members(platelet_zip.zip_path, tmp_path, limits=ZipLimits(max_member_bytes=100_000))
    with pytest.raises(SourceError, match="chosen members expand to"):
        extract_members(platelet_zip.zip_path, tmp_path,
                        limits=ZipLimits(max_total_bytes=1_000_000))
    # within the caps, a selection passes
    extract_members(platelet_zip.zip_path, tmp_path, select=lambda m: m.name == JSON_50,
                    limits=ZipLimits(max_total_bytes=1_000_000))


def test_a_member_larger_than_declared_fails_its_crc_and_leaves_nothing(platelet_zip, tmp_path):
    data = platelet_zip.zip_path.read_bytes()
    path = tmp_path / "liar.zip"
    path.write_bytes(patch_cd(data, JSON_50, size=100))
    with pytest.raises(SourceError, match="cannot be read.*CRC") as err:
        extract_members(path, tmp_path / "out", select=lambda m: m.name == JSON_50)
    assert JSON_50 in str(err.value)
    assert list((tmp_path / "out").rglob("*.*")) == []  # no .part, no half file


def test_corrupted_member_data_is_refused(platelet_zip, tmp_path):
    data = bytearray(platelet_zip.zip_path.read_bytes())
    with zipfile.ZipFile(platelet_zip.zip_path) as zf:
        info = zf.getinfo(IMG_24)
    data[info.header_offset + 30 + len(IMG_24) + 1000] ^= 0xFF
    path = tmp_path / "corrupt.zip"
    path.write_bytes(bytes(data))
    with pytest.raises(SourceError, match="cannot be read"):
        extract_members(path, tmp_path / "out", select=lambda m: m.name == IMG_24)
    assert list((tmp_path / "out").rglob("*.*")) == []


def test_encrypted_members_are_refused(tmp_path):
    path = tmp_path / "enc.zip"
    path.write_bytes(patch_cd(build_zip([("a.bin", b"secret")]), "a.bin", flags=1))
    with pytest.raises(SourceError, match="encrypted"):
        extract_members(path, tmp_path / "out")


def test_a_web_page_instead_of_a_zip_says_so(http_server, tmp_path):
    page = b"<!DOCTYPE html><html><body>Dropbox - sign in</body></html>" * 20
    url = http_server.serve("s/x/images_and_labels_json.zip", page, content_type="text/html")
    with pytest.raises(NotAZipError, match="web page") as err:
        list_members(url, **FAST)
    assert "?dl=1" in err.value.fix
    with pytest.raises(SourceError, match="web page"):
        materialize(url, tmp_path, **FAST)
    assert tree_files(tmp_path) == {}


def test_a_truncated_zip_is_reported(platelet_zip, tmp_path):
    path = tmp_path / "cut.zip"
    path.write_bytes(platelet_zip.zip_path.read_bytes()[:100_000])
    with pytest.raises(NotAZipError, match="cut short"):
        list_members(path)


# ---- materialize -----------------------------------------------------------------------------
def test_materialize_a_published_zip_into_the_tree_the_adapter_reads(http_server, platelet_zip,
                                                                         tmp_path):
    archive = platelet_zip.zip_path.read_bytes()
    url = http_server.serve("s/tgm/images_and_labels_json.zip", archive) + "?dl=1"
    download = Download(url=url, sha256=hashlib.sha256(archive).hexdigest(), bytes=len(archive))
    dest = tmp_path / "src"
    assert materialize(None, dest, download, **FAST) == dest
    assert tree_files(dest) == platelet_zip.files
    assert not (dest / ".cloudmic-sources" / "downloads" / "images_and_labels_json.zip").exists()
    inv = get_adapter(load_manifest("platelet-em")).scan(dest)
    assert {g.name.split("/")[0] for g in inv.groups} >= {"50", "24"}
    # a re-run finds everything in place and verified: no request at all
    http_server.reset()
    assert materialize(url, dest, download, **FAST) == dest
    assert http_server.gets() == []


def test_materialize_with_a_checksum_mismatch_leaves_nothing(http_server, platelet_zip, tmp_path):
    url = http_server.serve("pe.zip", platelet_zip.zip_path.read_bytes())
    with pytest.raises(SourceError, match="checksum mismatch"):
        materialize(url, tmp_path, Download(url=url, sha256="0" * 64), **FAST)
    assert tree_files(tmp_path) == {}
    assert list((tmp_path / ".cloudmic-sources" / "downloads").iterdir()) == [
        tmp_path / ".cloudmic-sources" / "downloads" / ".pe.zip.lock"]


def test_materialize_a_selection_reads_members_in_place(http_server, platelet_zip, tmp_path):
    archive = platelet_zip.zip_path.read_bytes()
    url = http_server.serve("pe.zip", archive)

    def json_labels(m):
        return m.name.endswith(".json")

    materialize(url, tmp_path, select=json_labels, **FAST)
    want = {k: v for k, v in platelet_zip.files.items() if k.endswith(".json")}
    assert tree_files(tmp_path) == want
    assert http_server.sent() < len(archive) * 0.5
    http_server.reset()
    materialize(url, tmp_path, select=json_labels, **FAST)
    assert http_server.gets() == []
    # widening the selection fetches only what is missing
    materialize(url, tmp_path, select=lambda m: json_labels(m) or m.name == IMG_24, **FAST)
    assert tree_files(tmp_path)[IMG_24] == platelet_zip.files[IMG_24]


def test_materialize_falls_back_to_a_download_when_ranges_are_ignored(http_server, platelet_zip,
                                                                          tmp_path):
    archive = platelet_zip.zip_path.read_bytes()
    url = http_server.serve("pe.zip", archive, ignore_range=True)
    with pytest.raises(RangeNotSupportedError):
        list_members(url, **FAST)
    materialize(url, tmp_path, select=lambda m: m.name == JSON_50, **FAST)
    assert tree_files(tmp_path) == {JSON_50: platelet_zip.files[JSON_50]}


def test_materialize_local_sources(platelet_zip, tmp_path):
    assert materialize(platelet_zip.tree, tmp_path / "x") == platelet_zip.tree  # a folder
    out = materialize(platelet_zip.zip_path, tmp_path / "from-zip")
    assert tree_files(out) == platelet_zip.files
    tar = tmp_path / "STED-FM-dataset-crop.tar"
    with tarfile.open(tar, "w") as tf:
        tf.add(platelet_zip.tree / IMG_24, "x")
    assert materialize(tar, tmp_path / "y") == tar  # adapters read tars themselves


def test_materialize_a_remote_tar_downloads_it_into_the_folder(http_server, tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("1-2-3-4")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"npz"))
    url = http_server.serve("STED-FM-dataset-crop.tar", buf.getvalue())
    dest = materialize(url, tmp_path, **FAST)
    assert (dest / "STED-FM-dataset-crop.tar").read_bytes() == buf.getvalue()
    http_server.reset()
    materialize(url, tmp_path, **FAST)
    assert http_server.gets() == []


def test_materialize_manifest_unpacks_each_download_where_the_adapter_looks(
        http_server, tmp_path):
    from types import SimpleNamespace

    rec = build_zip([("low.tif", b"low"), ("high.tif", b"high")])
    urls = [http_server.serve(f"record/8079069/files/{i}_ZOOM1.3.zip", rec) + "?download=1"
            for i in (1, 2)]
    downloads = tuple(SimpleNamespace(url=u, sha256=hashlib.sha256(rec).hexdigest(), bytes=None,
                                      into="DeepCAD/{stem}") for u in urls)
    manifest = SimpleNamespace(name="deepcad", source=SimpleNamespace(downloads=downloads,
                                                                         homepage="h"))
    dest = materialize_manifest(manifest, tmp_path, **FAST)
    assert tree_files(dest) == {f"DeepCAD/{i}_ZOOM1.3/{n}": b for i in (1, 2)
                                for n, b in (("low.tif", b"low"), ("high.tif", b"high"))}
    one = materialize_manifest(manifest, tmp_path / "one", only=lambda d: "/1_ZOOM" in d.url,
                               **FAST)
    assert sorted(tree_files(one)) == ["DeepCAD/1_ZOOM1.3/high.tif", "DeepCAD/1_ZOOM1.3/low.tif"]
    empty = SimpleNamespace(name="biosr", source=SimpleNamespace(
        downloads=(), homepage="h", original="https://record", no_download="ask the lab"))
    with pytest.raises(SourceError, match="lists no downloads .*: ask the lab(.|\n)*by hand "
                       "from https://record"):
        materialize_manifest(empty, tmp_path)


def test_resolve_source_for_an_ingest(http_server, platelet_zip, tmp_path, monkeypatch):
    monkeypatch.setenv("CLOUDMIC_CACHE", str(tmp_path / "cache"))
    manifest = load_manifest("platelet-em")
    url = http_server.serve("s/x/images_and_labels_json.zip", platelet_zip.zip_path.read_bytes())
    got = resolve_source(manifest, url + "?dl=1", **FAST)
    assert got == tmp_path / "cache" / "sources" / "platelet-em"
    assert tree_files(got) == platelet_zip.files
    assert resolve_source(manifest, platelet_zip.tree) == platelet_zip.tree  # a folder
    assert resolve_source(manifest, "s3://bucket/sted") == "s3://bucket/sted"  # a prefix
    local = resolve_source(manifest, platelet_zip.zip_path, cache_dir=tmp_path / "c2")
    assert tree_files(local) == platelet_zip.files


@pytest.mark.e2e
def test_members_of_a_zip_on_s3(s3_server, platelet_zip, tmp_path):
    import s3fs

    opts = s3_server.storage_options()
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **opts)
    fs.mkdir("cm-zips")
    fs.put_file(str(platelet_zip.zip_path), "cm-zips/platelet/pe.zip")
    url = "s3://cm-zips/platelet/pe.zip"
    assert list_members(url, storage_options=opts) == list_members(platelet_zip.zip_path)
    extract_members(url, tmp_path, select=lambda m: m.name == JSON_50, storage_options=opts)
    assert tree_files(tmp_path) == {JSON_50: platelet_zip.files[JSON_50]}
    with open_member(url, IMG_50, storage_options=opts) as f:
        assert tifffile.imread(f).shape == (8, 128, 128)


# --- issue 14: names and versions zipfile cannot handle -------------------------------------


@pytest.mark.parametrize("names", [["a/b.txt", "a/./b.txt"], ["x/.", "x/y"], ["./a.txt"]])
def test_dot_components_are_refused_before_anything_is_written(names, tmp_path):
    # 'a/./b.txt' and 'a/b.txt' overwrote each other; 'x/.' then 'x/y' gave FileExistsError.
    path = tmp_path / "d.zip"
    path.write_bytes(build_zip([(n, b"hi") for n in names]))
    out = tmp_path / "out"
    with pytest.raises(SourceError, match=r"d\.zip: member '.*\.[^']*': member name contains "
                       r"a '\.' component"):
        extract_members(path, out)
    assert not out.exists() or not any(out.iterdir())


def test_member_needing_zip_version_18_8_is_named(tmp_path):
    raw = bytearray(build_zip([("a.txt", b"1"), ("b/c.txt", b"2")]))
    pos = raw.find(b"PK\x01\x02", raw.find(b"PK\x01\x02") + 4)  # b/c.txt's directory entry
    struct.pack_into("<H", raw, pos + 6, 188)  # version needed to extract: 18.8
    path = tmp_path / "v.zip"
    path.write_bytes(bytes(raw))
    with pytest.raises(SourceError, match=r"v\.zip: member 'b/c\.txt': .*version 18\.8"):
        list_members(path)


@pytest.mark.parametrize("blob", [b"", b"PK", b"x" * 21])
def test_files_shorter_than_a_zip_directory_are_not_zips(blob, tmp_path):
    # found by the fuzz suite: an empty file gave "ValueError: negative seek position -22"
    path = tmp_path / "short.zip"
    path.write_bytes(blob)
    with pytest.raises(NotAZipError, match=r"short\.zip"):
        list_members(path)


def test_corrupt_deflate_member_is_a_source_error_when_read(tmp_path):
    # found by the fuzz suite: zlib.error / BadZipFile escaped from ZipArchive.open().read()
    raw = bytearray(build_zip([("a.bin", bytes(range(256)) * 64)]))
    data_at = 30 + len("a.bin")
    raw[data_at + 5:data_at + 40] = b"\xff" * 35
    path = tmp_path / "c.zip"
    path.write_bytes(bytes(raw))
    with (ZipArchive(path) as z, z.open("a.bin") as f,
          pytest.raises(SourceError, match=r"c\.zip: member 'a\.bin'")):
        f.read()


def test_empty_and_overlong_member_names_are_refused(tmp_path):
    # found by the fuzz suite: an empty name gave IndexError, a 300-byte one ENAMETOOLONG
    path = tmp_path / "n.zip"
    path.write_bytes(build_zip([("n" * 300, b"x")]))
    with pytest.raises(SourceError, match=r"n\.zip: member 'n+\.\.\.': .*longer than 255"):
        list_members(path)
    raw = build_zip([("a", b"x")])
    raw = raw.replace(b"\x01\x00\x00\x00a", b"\x00\x00\x00\x00a")  # not needed: patch name len
    pos = raw.find(b"PK\x01\x02")
    raw = bytearray(raw)
    struct.pack_into("<H", raw, pos + 28, 0)  # central directory: file name length 0
    path.write_bytes(bytes(raw))
    with pytest.raises(SourceError, match=r"n\.zip"):
        list_members(path)
