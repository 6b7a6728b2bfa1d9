"""fetch(): resumable, retried, verified downloads against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

import pytest

from cloudmic.errors import SourceError
from cloudmic.sources import fetch, name_from_url

FAST = {"backoff": 0.01, "timeout": 5.0}


@pytest.fixture(scope="module")
def payload() -> bytes:
    return os.urandom(3 * 1024 * 1024 + 12345)  # several 1 MiB chunks, not a round number


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leftovers(folder: Path) -> list[str]:
    """Files other than the hidden lock files."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def test_downloads_verifies_and_names_the_file_after_the_url(http_server, payload, tmp_path):
    url = http_server.serve("s/tgm/images_and_labels_json.zip", payload) + "?dl=1"
    seen: list[tuple[int, int | None]] = []
    out = fetch(url, tmp_path, sha256=sha(payload), size=len(payload),
                progress=lambda d, t: seen.append((d, t)), **FAST)
    assert out == tmp_path / "images_and_labels_json.zip"
    assert out.read_bytes() == payload
    assert leftovers(tmp_path) == ["images_and_labels_json.zip"]
    assert len(http_server.gets()) == 1 and http_server.gets()[0].range is None
    assert seen[-1] == (len(payload), len(payload))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_a_complete_file_is_not_downloaded_again(http_server, payload, tmp_path):
    url = http_server.serve("a.bin", payload)
    fetch(url, tmp_path, sha256=sha(payload), **FAST)
    http_server.reset()
    assert fetch(url, tmp_path, sha256=sha(payload), **FAST).read_bytes() == payload
    assert fetch(url, tmp_path, **FAST).read_bytes() == payload  # no checksum: trusted name
    assert http_server.gets() == []


def test_a_wrong_file_in_place_is_downloaded_again(http_server, payload, tmp_path):
    url = http_server.serve("a.bin", payload)
    (tmp_path / "a.bin").write_bytes(b"something else")
    assert fetch(url, tmp_path, sha256=sha(payload), **FAST).read_bytes() == payload
    assert len(http_server.gets()) == 1


def test_connection_dropped_mid_body_resumes_with_range(http_server, payload, tmp_path):
    cut = 1_500_000
    url = http_server.serve("movie.zip", payload, drop_after=cut, drops=1)
    out = fetch(url, tmp_path, sha256=sha(payload), **FAST)
    assert out.read_bytes() == payload
    gets = http_server.gets()
    assert [g.range for g in gets] == [None, f"bytes={cut}-"]
    assert [g.status for g in gets] == [200, 206]
    assert http_server.sent() == len(payload)  # nothing fetched twice
    assert leftovers(tmp_path) == ["movie.zip"]


def test_dropped_many_times_still_finishes_because_progress_resets_retries(
        http_server, payload, tmp_path):
    url = http_server.serve("flaky.bin", payload, drop_after=400_000, drops=100)
    out = fetch(url, tmp_path, sha256=sha(payload), retries=2, **FAST)
    assert out.read_bytes() == payload
    assert len(http_server.gets()) == -(-len(payload) // 400_000)


def test_resume_follows_redirects_with_its_range(http_server, payload, tmp_path):
    http_server.serve("cdn/f.zip", payload, drop_after=1_000_000, drops=1)
    url = http_server.serve("ndownloader/files/26879218", b"", redirect_to="cdn/f.zip")
    out = fetch(url, tmp_path, name="CCPs.zip", sha256=sha(payload), **FAST)
    assert out == tmp_path / "CCPs.zip" and out.read_bytes() == payload
    assert [g.range for g in http_server.gets("cdn/f.zip")] == [None, "bytes=1000000-"]


def test_an_interrupted_part_file_from_an_earlier_run_resumes(http_server, payload, tmp_path):
    url = http_server.serve("big.zip", payload)
    (tmp_path / "big.zip.part").write_bytes(payload[:2_000_000])  # as after a kill -9
    out = fetch(url, tmp_path, sha256=sha(payload), size=len(payload), **FAST)
    assert out.read_bytes() == payload
    assert [g.range for g in http_server.gets()] == ["bytes=2000000-"]
    assert http_server.sent() == len(payload) - 2_000_000


def test_a_complete_part_file_is_finished_without_a_body(http_server, payload, tmp_path):
    url = http_server.serve("done.zip", payload)
    (tmp_path / "done.zip.part").write_bytes(payload)
    assert fetch(url, tmp_path, sha256=sha(payload), **FAST).read_bytes() == payload
    assert [g.status for g in http_server.gets()] == [416]


def test_server_ignoring_range_restarts_from_zero(http_server, payload, tmp_path):
    url = http_server.serve("norange.zip", payload, ignore_range=True)
    (tmp_path / "norange.zip.part").write_bytes(payload[:1_000_000])
    out = fetch(url, tmp_path, sha256=sha(payload), **FAST)
    assert out.read_bytes() == payload
    gets = http_server.gets()
    assert len(gets) == 1 and gets[0].range == "bytes=1000000-" and gets[0].status == 200


def test_a_stale_part_file_from_another_version_fails_the_checksum_and_is_removed(
        http_server, payload, tmp_path):
    url = http_server.serve("v.zip", payload)
    (tmp_path / "v.zip.part").write_bytes(os.urandom(1000))  # not a prefix of the file
    with pytest.raises(SourceError, match="checksum mismatch"):
        fetch(url, tmp_path, sha256=sha(payload), **FAST)
    assert leftovers(tmp_path) == []
    assert fetch(url, tmp_path, sha256=sha(payload), **FAST).read_bytes() == payload


def test_corrupted_byte_is_refused_naming_url_and_both_checksums(http_server, payload, tmp_path):
    bad = bytearray(payload)
    bad[777_777] ^= 0x01
    url = http_server.serve("corrupt.zip", bytes(bad))
    with pytest.raises(SourceError) as err:
        fetch(url, tmp_path, sha256=sha(payload), size=len(payload), **FAST)
    msg = str(err.value)
    assert url in msg and sha(payload) in msg and sha(bytes(bad)) in msg
    assert "run again" in err.value.fix
    assert leftovers(tmp_path) == []  # no .part, nothing that looks complete
    http_server.files["corrupt.zip"].data = payload  # the server is fixed: a re-run works
    http_server.reset()
    assert fetch(url, tmp_path, sha256=sha(payload), **FAST).read_bytes() == payload
    assert [g.range for g in http_server.gets()] == [None]


def test_md5_is_checked_too(http_server, payload, tmp_path):
    url = http_server.serve("m.zip", payload)
    md5 = hashlib.md5(payload).hexdigest()
    assert fetch(url, tmp_path, md5=md5, **FAST).read_bytes() == payload
    with pytest.raises(SourceError, match=f"expected md5 {'0' * 32}"):
        fetch(url, tmp_path / "again", md5="0" * 32, **FAST)
    assert leftovers(tmp_path / "again") == []


def test_503_then_ok_is_retried(http_server, payload, tmp_path):
    url = http_server.serve("busy.zip", payload, fails=2, retry_after="0")
    assert fetch(url, tmp_path, sha256=sha(payload), **FAST).read_bytes() == payload
    assert [g.status for g in http_server.gets()] == [503, 503, 200]


def test_persistent_503_gives_up_after_the_retries(http_server, payload, tmp_path):
    url = http_server.serve("down.zip", payload, fails=100)
    with pytest.raises(SourceError, match="HTTP 503.*gave up after 3 failed attempts"):
        fetch(url, tmp_path, retries=2, **FAST)
    assert len(http_server.gets()) == 3


def test_404_is_not_retried(http_server, tmp_path):
    with pytest.raises(SourceError, match="HTTP 404") as err:
        fetch(http_server.url("missing.zip"), tmp_path, **FAST)
    assert "check the URL" in err.value.fix
    assert len(http_server.gets()) == 1


def test_connection_refused_is_retried_then_reported(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(SourceError, match="cannot connect.*gave up after 2"):
        fetch(f"http://127.0.0.1:{port}/x.zip", tmp_path, retries=1, **FAST)


def test_oversize_announced_length_is_refused_before_the_body(http_server, payload, tmp_path):
    url = http_server.serve("bomb.zip", payload)
    with pytest.raises(SourceError, match=f"offers {len(payload):,} bytes but 1,000 are"):
        fetch(url, tmp_path, size=1000, **FAST)
    with pytest.raises(SourceError, match="above the limit of 1,048,576 bytes"):
        fetch(url, tmp_path, max_bytes=1024 * 1024, **FAST)
    assert leftovers(tmp_path) == []


def test_oversize_stream_without_length_is_cut_at_the_cap(http_server, payload, tmp_path):
    url = http_server.serve("stream.bin", payload, no_length=True)
    with pytest.raises(SourceError, match="sent more than 1,048,576 bytes"):
        fetch(url, tmp_path, max_bytes=1024 * 1024, **FAST)
    assert leftovers(tmp_path) == []
    # the same stream within the cap is fine (a close-delimited body)
    assert fetch(url, tmp_path, sha256=sha(payload), **FAST).read_bytes() == payload


def test_a_shorter_file_than_expected_is_refused(http_server, payload, tmp_path):
    url = http_server.serve("short.bin", payload[:1000], no_length=True)
    with pytest.raises(SourceError, match="has 1,000 bytes but 5,000 are expected"):
        fetch(url, tmp_path, size=5000, **FAST)
    assert leftovers(tmp_path) == []


def test_local_paths_and_file_urls_are_copied_and_verified(payload, tmp_path):
    src = tmp_path / "src" / "CCPs.zip"
    src.parent.mkdir()
    src.write_bytes(payload)
    a = fetch(src, tmp_path / "a", sha256=sha(payload))
    b = fetch(f"file://{src}", tmp_path / "b", size=len(payload))
    assert a.read_bytes() == b.read_bytes() == payload
    with pytest.raises(SourceError, match="checksum mismatch"):
        fetch(src, tmp_path / "c", sha256="0" * 64)
    with pytest.raises(SourceError, match="no such file"):
        fetch(tmp_path / "nope.zip", tmp_path / "d")


def test_names_from_urls():
    assert name_from_url("https://zenodo.org/record/8079069/files/1_ZOOM1.3_x.zip?download=1") \
        == "1_ZOOM1.3_x.zip"
    assert name_from_url("https://x.org/files/ER-sec61%CE%B2.zip") == "ER-sec61β.zip"
    assert name_from_url("s3://bucket/a/b.tar") == "b.tar"
    for bad in ("https://x.org/", "https://x.org/a/..", "https://x.org/a%2Fb"):
        with pytest.raises(SourceError, match="pass name="):
            name_from_url(bad)


def test_bad_checksum_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="sha256 must be 64 hex digits"):
        fetch("https://x.org/a.zip", tmp_path, sha256="abc")


@pytest.mark.e2e
def test_s3_object_is_fetched_and_resumed(s3_server, payload, tmp_path):
    import s3fs

    opts = s3_server.storage_options()
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **opts)
    fs.mkdir("cm-sources")
    fs.pipe("cm-sources/raw/STED-FM-dataset-crop.tar", payload)
    url = "s3://cm-sources/raw/STED-FM-dataset-crop.tar"
    (tmp_path / "STED-FM-dataset-crop.tar.part").write_bytes(payload[:1_234_567])
    out = fetch(url, tmp_path, sha256=sha(payload), storage_options=opts, **FAST)
    assert out.read_bytes() == payload
    with pytest.raises(SourceError, match="no such file"):
        fetch("s3://cm-sources/raw/missing.tar", tmp_path, storage_options=opts, **FAST)
