"""fetch(): resumable, retried, verified downloads against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

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


# ---- a server whose file changes: validators (ETag, Last-Modified) and If-Range ------------
class Versioned(BaseHTTPRequestHandler):
    """One file at any path, with an ETag and/or Last-Modified; it honours ``If-Range``
    unless told not to, drops the first ``drops`` bodies after ``drop_after`` bytes, and can
    answer every request with a fixed ``206`` whatever was asked (a broken CDN)."""

    protocol_version = "HTTP/1.1"
    server: VersionedServer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        srv = self.server
        with srv.lock:
            srv.hits.append({k.lower(): v for k, v in self.headers.items()})
            n, dropping = len(srv.hits), srv.drops > 0
            srv.drops -= dropping
        if srv.fixed_206 is not None and n <= 100:  # then 404, so an endless loop ends
            return self._send(206, srv.data[5:10], {"Content-Range": srv.fixed_206})
        if srv.fixed_206 is not None:
            return self._send(404, b"gone")
        data, start, headers = srv.data, 0, dict(srv.validators())
        rng, if_range = self.headers.get("Range"), self.headers.get("If-Range")
        fresh = if_range is None or not srv.honour_if_range or if_range in headers.values()
        if rng and fresh:
            start = int(rng.removeprefix("bytes=").rstrip("-"))
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        if dropping:
            return self._send(206 if start else 200, body, headers, cut=srv.drop_after)
        return self._send(206 if start else 200, body, headers)

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None,
              cut: int | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body if cut is None else body[:cut])
        if cut is not None:
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)


class VersionedServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, data: bytes, **behaviour: Any) -> None:
        super().__init__(("127.0.0.1", 0), Versioned)
        self.data, self.etag, self.last_modified = data, '"v1"', None
        self.honour_if_range, self.drops, self.drop_after = True, 0, 0
        self.fixed_206: str | None = None
        self.hits: list[dict[str, str]] = []
        self.lock = threading.Lock()
        for k, v in behaviour.items():
            setattr(self, k, v)

    def validators(self) -> dict[str, str]:
        return {k: v for k, v in (("ETag", self.etag), ("Last-Modified", self.last_modified))
                if v is not None}

    def url(self, name: str = "file.zip") -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{name}"


@pytest.fixture
def versioned() -> Iterator[Callable[..., VersionedServer]]:
    servers: list[VersionedServer] = []

    def start(data: bytes, **behaviour: Any) -> VersionedServer:
        srv = VersionedServer(data, **behaviour)
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def interrupted(srv: VersionedServer, folder: Path, cut: int) -> None:
    """A first run that stops after ``cut`` bytes (retries=0: as if killed there)."""
    srv.drops, srv.drop_after = 1, cut
    with pytest.raises(SourceError, match="gave up"):
        fetch(srv.url(), folder, retries=0, **FAST)
    assert (folder / "file.zip.part").stat().st_size == cut


@pytest.mark.timeout(60)
def test_a_server_answering_a_range_never_asked_for_is_given_up_on(versioned, tmp_path):
    # on main: 3,935 GETs in 10 s and no end (this server stops it with a 404 after 100)
    srv = versioned(b"0123456789", fixed_206="bytes 5-9/10")
    with pytest.raises(SourceError) as err:
        fetch(srv.url(), tmp_path, retries=2, **FAST)
    assert srv.url() in str(err.value) and "bytes 5-9/10" in str(err.value)
    assert "404" not in str(err.value)
    assert len(srv.hits) <= 10
    assert leftovers(tmp_path) == []


def test_resume_of_an_unchanged_file_sends_if_range_and_gets_the_rest(versioned, payload,
                                                                      tmp_path):
    srv = versioned(payload)
    interrupted(srv, tmp_path, 1_000_000)
    out = fetch(srv.url(), tmp_path, sha256=sha(payload), **FAST)
    assert out.read_bytes() == payload
    assert srv.hits[-1]["range"] == "bytes=1000000-" and srv.hits[-1]["if-range"] == '"v1"'
    assert [p.name for p in tmp_path.iterdir() if ".part" in p.name] == []  # no validator left


def test_resume_after_the_file_changed_restarts_from_zero(versioned, payload, tmp_path):
    # on main the result was spliced: v1's first MB followed by the rest of v2
    srv = versioned(payload)
    interrupted(srv, tmp_path, 1_000_000)
    v2 = os.urandom(len(payload))  # same size, other bytes
    srv.data, srv.etag = v2, '"v2"'
    out = fetch(srv.url(), tmp_path, **FAST)  # no checksum: only the validator can catch it
    assert sha(out.read_bytes()) == sha(v2)
    assert srv.hits[-1]["if-range"] == '"v1"'
    assert len(srv.hits) == 2  # the 200 to If-Range carried the whole new file


def test_a_server_ignoring_if_range_is_caught_by_its_etag(versioned, payload, tmp_path):
    srv = versioned(payload, honour_if_range=False)
    interrupted(srv, tmp_path, 1_000_000)
    v2 = os.urandom(len(payload))
    srv.data, srv.etag = v2, '"v2"'
    assert sha(fetch(srv.url(), tmp_path, **FAST).read_bytes()) == sha(v2)
    assert [h.get("range") for h in srv.hits[1:]] == ["bytes=1000000-", None]


def test_last_modified_is_the_validator_without_an_etag(versioned, payload, tmp_path):
    srv = versioned(payload, etag=None, last_modified="Mon, 02 Jun 2025 10:00:00 GMT")
    interrupted(srv, tmp_path, 1_000_000)
    v2 = os.urandom(len(payload))
    srv.data, srv.last_modified = v2, "Tue, 03 Jun 2025 10:00:00 GMT"
    assert sha(fetch(srv.url(), tmp_path, **FAST).read_bytes()) == sha(v2)
    assert srv.hits[-1]["if-range"] == "Mon, 02 Jun 2025 10:00:00 GMT"


def test_a_weak_etag_is_never_sent_as_if_range_but_still_catches_a_change(versioned, payload,
                                                                         tmp_path):
    # RFC 9110 13.1.5: If-Range takes a strong validator only; a weak one is still compared
    srv = versioned(payload, etag='W/"v1"')
    interrupted(srv, tmp_path, 1_000_000)
    v2 = os.urandom(len(payload))
    srv.data, srv.etag = v2, 'W/"v2"'
    assert sha(fetch(srv.url(), tmp_path, **FAST).read_bytes()) == sha(v2)
    assert "if-range" not in srv.hits[1]
    assert [h.get("range") for h in srv.hits[1:]] == ["bytes=1000000-", None]


def test_manifest_pins_size_and_checksum_of_a_download(http_server, payload, tmp_path):
    from cloudmic.manifest import Download
    from cloudmic.sources.materialization import materialize

    url = http_server.serve("STED-FM-dataset-crop.tar", payload)
    ok = Download(url=url, sha256=sha(payload), bytes=len(payload))
    assert (materialize(None, tmp_path / "a", ok, **FAST) / "STED-FM-dataset-crop.tar"
            ).read_bytes() == payload
    wrong_size = Download(url=url, sha256=sha(payload), bytes=len(payload) - 1)
    with pytest.raises(SourceError, match="bytes but .* are expected"):
        materialize(None, tmp_path / "b", wrong_size, **FAST)
    assert not (tmp_path / "b" / "STED-FM-dataset-crop.tar").exists()
    with pytest.raises(SourceError, match="checksum mismatch"):
        materialize(None, tmp_path / "c", Download(url=url, sha256="0" * 64), **FAST)


@pytest.mark.e2e
def test_s3_object_changed_since_the_part_was_written_restarts(s3_server, payload, tmp_path):
    import json

    import s3fs

    opts = s3_server.storage_options()
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **opts)
    fs.makedirs("cm-sources", exist_ok=True)
    fs.pipe("cm-sources/raw/changing.tar", payload)
    url = "s3://cm-sources/raw/changing.tar"
    etag = fs.info("cm-sources/raw/changing.tar")["ETag"]
    # as a run killed after 1 MB leaves it: the bytes and the version they came from
    (tmp_path / "changing.tar.part").write_bytes(payload[:1_000_000])
    (tmp_path / ".changing.tar.part.json").write_text(json.dumps({"url": url, "ETag": etag}))
    v2 = os.urandom(len(payload))
    fs.pipe("cm-sources/raw/changing.tar", v2)
    out = fetch(url, tmp_path, storage_options=opts, **FAST)
    assert sha(out.read_bytes()) == sha(v2)
    assert leftovers(tmp_path) == ["changing.tar"]
