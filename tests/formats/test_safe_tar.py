import io
import tarfile
from pathlib import Path

import pytest

from cloudmic.errors import SourceError
from cloudmic.formats.safe_tar import TarEntry, iter_tar_members, list_tar_members, scan_tar
from realdata import STEDFM_DERIVED, real_path


def real_tar(name: str) -> Path:
    return real_path(STEDFM_DERIVED / name)


class Stream(io.RawIOBase):
    """A read-only, non-seekable file (a pipe, an HTTP body)."""

    def __init__(self, data: bytes) -> None:
        self._buf = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        chunk = self._buf.read(len(b))
        b[: len(chunk)] = chunk
        return len(chunk)


def build_tar(entries: list[tarfile.TarInfo | tuple[str, bytes]], mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                tf.addfile(entry)
            else:
                name, blob = entry
                info = tarfile.TarInfo(name)
                info.size = len(blob)
                tf.addfile(info, io.BytesIO(blob))
    return buf.getvalue()


def special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


GOOD = [("FUS-a-0-0", b"one"), ("tubulin-b-0-224", b"two" * 100)]


def test_streams_members_in_order_from_a_pipe():
    data = build_tar(GOOD)
    assert list(iter_tar_members(Stream(data), archive="t.tar")) == GOOD
    assert list_tar_members(io.BytesIO(data), archive="t.tar") == [
        ("FUS-a-0-0", 3), ("tubulin-b-0-224", 300),
    ]  # fmt: skip
    assert list_tar_members(Stream(data), archive="t.tar") == [(n, len(b)) for n, b in GOOD]


def test_compressed_tar_is_detected():
    data = build_tar(GOOD, mode="w:gz")
    assert list(iter_tar_members(Stream(data), archive="t.tar.gz")) == GOOD


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        (("../x", b"evil"), "'..' component"),
        (("a/../../x", b"evil"), "'..' component"),
        (("/etc/x", b"evil"), "absolute path"),
        (("a\\b", b"evil"), "Windows path"),
        (("C:x", b"evil"), "Windows path"),
        (("line\nbreak", b"evil"), "control characters"),
        (special("link", tarfile.SYMTYPE, "/etc/passwd"), "symbolic link to '/etc/passwd'"),
        (special("hard", tarfile.LNKTYPE, "FUS-a-0-0"), "hard link to 'FUS-a-0-0'"),
        (special("dev", tarfile.CHRTYPE), "device or FIFO"),
        (special("blk", tarfile.BLKTYPE), "device or FIFO"),
        (special("fifo", tarfile.FIFOTYPE), "device or FIFO"),
        (("folder/FUS-a-0-0", b"x"), "lies in a folder"),
    ],
)
def test_hostile_members_are_refused_and_named(entry, problem):
    data = build_tar([GOOD[0], entry])
    name = entry.name if isinstance(entry, tarfile.TarInfo) else entry[0]
    members = iter_tar_members(Stream(data), archive="crops.tar")
    assert next(members) == GOOD[0]  # what precedes the bad member is fine
    with pytest.raises(SourceError) as e:
        next(members)
    msg = str(e.value)
    assert f"crops.tar: member {name!r}" in msg and problem in msg
    with pytest.raises(SourceError, match="crops.tar: member"):
        list_tar_members(io.BytesIO(data), archive="crops.tar")


def test_folders_only_when_allowed_and_directory_entries_skipped():
    folder = tarfile.TarInfo("train")
    folder.type = tarfile.DIRTYPE
    data = build_tar([folder, ("train/FUS-a-0-0", b"x")])
    got = list(iter_tar_members(Stream(data), archive="t.tar", allow_dirs=True))
    assert got == [("train/FUS-a-0-0", b"x")]
    only_dir = build_tar([folder, GOOD[0]])
    assert list(iter_tar_members(Stream(only_dir), archive="t.tar")) == [GOOD[0]]
    with pytest.raises(SourceError, match="'..' component"):
        list(iter_tar_members(Stream(build_tar([("a/../b", b"")])), archive="t", allow_dirs=True))


def test_size_limits():
    data = build_tar([("small", b"x" * 10), ("big", b"x" * 5000)])
    members = iter_tar_members(Stream(data), archive="t.tar", max_member_bytes=1000)
    assert next(members) == ("small", b"x" * 10)
    with pytest.raises(SourceError, match=r"member 'big'.*5,000 bytes, above the limit of 1,000"):
        next(members)
    with pytest.raises(SourceError, match=r"member 'big'.*5,010 bytes, above the archive limit"):
        list(iter_tar_members(Stream(data), archive="t.tar", max_archive_bytes=1000))


def test_truncated_archive_is_named():
    data = build_tar([("a", b"x" * 10_000)])
    with pytest.raises(SourceError, match="t.tar"):
        list(iter_tar_members(Stream(data[:5_000]), archive="t.tar"))
    with pytest.raises(SourceError, match="not a readable tar"):
        list(iter_tar_members(Stream(b"not a tar at all" * 100), archive="t.tar"))


@pytest.mark.parametrize("tar_name", ["stedfm-sample-crops.tar", "stedfm-sample-crops-raw.tar"])
def test_real_derived_tars_stream(tar_name):
    path = real_tar(tar_name)
    with open(path, "rb") as fh:
        listed = list_tar_members(fh, archive=tar_name)
    with open(path, "rb") as fh:
        streamed = [(name, len(blob)) for name, blob in iter_tar_members(fh, archive=tar_name)]
    with open(path, "rb") as fh:
        piped = [
            (name, len(blob))
            for name, blob in iter_tar_members(Stream(fh.read()), archive=tar_name)
        ]
    assert len(listed) == 8 and listed == streamed == piped
    with tarfile.open(path) as tf:  # the stdlib's own reading of the same archive
        assert listed == [(m.name, m.size) for m in tf.getmembers()]


def test_scan_gives_payload_offsets_for_range_reads():
    data = build_tar(GOOD)
    for fileobj in (io.BytesIO(data), Stream(data)):
        entries = scan_tar(fileobj, archive="t.tar")
        assert [(e.name, e.size) for e in entries] == [(n, len(b)) for n, b in GOOD]
        for entry, (_, blob) in zip(entries, GOOD, strict=True):
            assert isinstance(entry, TarEntry)
            assert data[entry.offset : entry.offset + entry.size] == blob
    with pytest.raises(SourceError, match="member '../x'"):
        scan_tar(io.BytesIO(build_tar([("../x", b"")])), archive="t.tar")


def test_scan_refuses_compressed_tars_with_the_fix():
    data = build_tar(GOOD, mode="w:gz")
    with pytest.raises(SourceError, match="decompress it first"):
        scan_tar(io.BytesIO(data), archive="t.tar.gz")


@pytest.mark.parametrize("tar_name", ["stedfm-sample-crops.tar", "stedfm-sample-crops-raw.tar"])
def test_real_derived_tars_scan(tar_name):
    path = real_tar(tar_name)
    with open(path, "rb") as fh:
        entries = scan_tar(fh, archive=tar_name)
    data = path.read_bytes()
    with open(path, "rb") as fh:
        streamed = list(iter_tar_members(fh, archive=tar_name))
    assert len(entries) == 8
    assert [(e.name, data[e.offset : e.offset + e.size]) for e in entries] == streamed


# --- issue 14 -------------------------------------------------------------------------------


def _tar_with(name: str, payload: bytes = b"x") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        info = tarfile.TarInfo(name)
        info.size = len(payload)
        tf.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


@pytest.mark.parametrize("name", ["a/./b", "./a", "a/."])
def test_dot_components_are_refused(name):
    with pytest.raises(SourceError, match=r"component"):
        list(iter_tar_members(io.BytesIO(_tar_with(name)), archive="x.tar", allow_dirs=True))


def test_oversized_pax_header_is_refused_before_it_is_read():
    info = tarfile.TarInfo("././@PaxHeader")
    info.type, info.size = tarfile.XHDTYPE, 5 * 1024 * 1024
    raw = info.tobuf(format=tarfile.USTAR_FORMAT) + b"\0" * 1024
    for fn in (iter_tar_members, list_tar_members, scan_tar):
        with pytest.raises(SourceError, match=r"x\.tar: refused: a metadata header"):
            list(fn(io.BytesIO(raw), archive="x.tar"))


def test_pax_headers_of_normal_size_still_work():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("n" * 150)
        info.size = 2
        tf.addfile(info, io.BytesIO(b"ok"))
    buf.seek(0)
    assert list(iter_tar_members(buf, archive="x.tar")) == [("n" * 150, b"ok")]


def test_gzip_header_cut_short_is_a_source_error():
    # found by the fuzz suite: tarfile's gzip reader raised TypeError (ord of b"")
    with pytest.raises(SourceError, match=r"x\.tar\.gz"):
        list(iter_tar_members(io.BytesIO(b"\x1f\x8b\x08"), archive="x.tar.gz"))


def test_xz_decoder_memory_is_capped(monkeypatch):
    # an xz header may name a dictionary of up to 1.5 GiB; the decoder refuses beyond the cap
    import lzma

    from cloudmic.formats import safe_tar

    raw = lzma.compress(_tar_with("a", b"x" * 100), format=lzma.FORMAT_XZ,
                        filters=[{"id": lzma.FILTER_LZMA2, "dict_size": 8 * 1024 * 1024}])
    assert list(iter_tar_members(io.BytesIO(raw), archive="x.tar.xz")) == [("a", b"x" * 100)]
    monkeypatch.setattr(safe_tar, "MAX_XZ_MEMORY", 1024 * 1024)
    with pytest.raises(SourceError, match=r"x\.tar\.xz: .*Memory usage limit"):
        list(iter_tar_members(io.BytesIO(raw), archive="x.tar.xz"))
