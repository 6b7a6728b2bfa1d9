"""A real HTTP server on 127.0.0.1 (random free port) that serves byte ranges and misbehaves
on demand: drops connections mid-body, ignores ``Range``, answers 503, sends no length.
Every request is logged with the bytes of body it sent, so tests can hold I/O budgets."""

from __future__ import annotations

import re
import socket
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from cloudmic.synth.platelet_em import synth_platelet_em


@dataclass
class Served:
    data: bytes
    drop_after: int | None = None  # close the connection after this many body bytes ...
    drops: int = 0  # ... on this many requests
    fail_status: int = 503  # answer this status instead of the file ...
    fails: int = 0  # ... on this many requests
    retry_after: str | None = None
    ignore_range: bool = False
    no_length: bool = False  # no Content-Length: the body ends when the connection closes
    content_type: str = "application/octet-stream"
    redirect_to: str | None = None  # answer 302 to this path (Dropbox, figshare, Zenodo do)


@dataclass
class Hit:
    method: str
    path: str
    range: str | None
    status: int = 0
    sent: int = 0


class RangeHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FileServer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - base signature
        pass

    def do_HEAD(self) -> None:  # noqa: N802 - http.server naming
        self._serve(head=True)

    def do_GET(self) -> None:  # noqa: N802
        self._serve(head=False)

    def _status_only(self, hit: Hit, status: int, headers: dict[str, str] | None = None) -> None:
        body = f"status {status}\n".encode()
        hit.status = status
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _serve(self, head: bool) -> None:
        srv = self.server
        path = urlsplit(self.path).path.lstrip("/")
        rng = self.headers.get("Range")
        hit = Hit(self.command, path, rng)
        with srv.lock:
            srv.hits.append(hit)
            f = srv.files.get(path)
            failing = f is not None and f.fails > 0
            dropping = f is not None and not head and f.drops > 0 and f.drop_after is not None
            if failing:
                f.fails -= 1
            elif dropping:
                f.drops -= 1
        if f is None:
            return self._status_only(hit, 404)
        if f.redirect_to is not None:
            return self._status_only(hit, 302, {"Location": f"/{f.redirect_to}"})
        if failing:
            extra = {"Retry-After": f.retry_after} if f.retry_after else {}
            return self._status_only(hit, f.fail_status, extra)
        data, start, end, status = f.data, 0, len(f.data), 200
        if rng and not f.ignore_range:
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
            assert m and (m[1] or m[2]), f"bad Range {rng!r}"
            if not m[1]:
                start = max(0, len(data) - int(m[2]))
            else:
                start = int(m[1])
                end = min(len(data), int(m[2]) + 1) if m[2] else len(data)
            if start >= len(data):
                return self._status_only(hit, 416, {"Content-Range": f"bytes */{len(data)}"})
            status = 206
        body = data[start:end]
        hit.status = status
        self.send_response(status)
        self.send_header("Content-Type", f.content_type)
        self.send_header("Accept-Ranges", "none" if f.ignore_range else "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        if f.no_length:
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if head:
            return None
        if dropping:
            body = body[: f.drop_after]
            self.close_connection = True
        try:
            for i in range(0, len(body), 64 * 1024):
                self.wfile.write(body[i : i + 64 * 1024])
                hit.sent += len(body[i : i + 64 * 1024])
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        if dropping:
            self.connection.shutdown(socket.SHUT_RDWR)
        return None


class FileServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), RangeHandler)
        self.files: dict[str, Served] = {}
        self.hits: list[Hit] = []
        self.lock = threading.Lock()

    def serve(self, path: str, data: bytes, **behaviour: object) -> str:
        self.files[path] = Served(data, **behaviour)  # type: ignore[arg-type]
        return self.url(path)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{path}"

    def gets(self, path: str | None = None) -> list[Hit]:
        return [h for h in self.hits if h.method == "GET" and (path is None or h.path == path)]

    def sent(self, path: str | None = None) -> int:
        return sum(h.sent for h in self.gets(path))

    def reset(self) -> None:
        self.hits.clear()


@pytest.fixture
def http_server() -> Iterator[FileServer]:
    server = FileServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@dataclass
class PlateletZip:
    tree: Path  # the folder holding platelet-em/
    zip_path: Path
    files: dict[str, bytes] = field(default_factory=dict)  # member name -> bytes


def zip_tree(root: Path, out: Path, *, stored: tuple[str, ...] = ()) -> dict[str, bytes]:
    """Zip every file under ``root`` with names relative to it (folder entries too, as
    Info-ZIP does); names in ``stored`` are not compressed."""
    files: dict[str, bytes] = {}
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(root.rglob("*")):
            name = p.relative_to(root).as_posix()
            if p.is_dir():
                zf.writestr(name + "/", b"")
                continue
            files[name] = p.read_bytes()
            method = zipfile.ZIP_STORED if name in stored else zipfile.ZIP_DEFLATED
            zf.write(p, name, compress_type=method)
    return files


@pytest.fixture(scope="session")
def platelet_zip(tmp_path_factory: pytest.TempPathFactory) -> PlateletZip:
    """The synthetic platelet-em tree, zipped as the published zip is (top folder
    platelet-em/); the 50-volume image is stored, the rest deflated."""
    base = tmp_path_factory.mktemp("platelet-zip")
    tree = base / "tree"
    synth_platelet_em(tree, slices=8, size=128, seed=3)
    zip_path = base / "images_and_labels_json.zip"
    files = zip_tree(tree, zip_path, stored=("platelet-em/images/50-images.tif",))
    return PlateletZip(tree, zip_path, files)
