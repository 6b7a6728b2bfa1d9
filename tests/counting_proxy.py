"""A counting HTTP reverse proxy for request-budget tests.

zarrs reads through its own Rust object_store client, which no Python store wrapper sees,
so requests are counted on the wire: clients point their endpoint at the proxy, which
forwards every request verbatim (method, path, query, headers, body) to the upstream S3
server and records it. The Host header is forwarded as the client sent it (the proxy's
address): it is what the client signed, and the server checks SigV4 against the Host it
receives, so signatures stay valid.

The proxy runs in a child process: some zarrs reads (partial shards) wait for the network
while holding the GIL, so a proxy thread in the reading process would never get to answer.
Each request is logged (one JSON line) before its response is sent, so once a client has
its answer, ``requests`` lists it. ``fail(method, pattern, status)`` makes the proxy answer
``status`` itself (without forwarding) to requests whose path matches the regex: a server
failing at a chosen moment.
"""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding"}


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # without the query
    query: str
    range: str | None  # the Range header, if any
    status: int
    nbytes: int  # response body bytes


class CountingProxy:
    """``with CountingProxy("http://127.0.0.1:8333") as proxy:`` point clients at
    ``proxy.url``; ``proxy.requests`` lists what went through since the last ``reset()``,
    in the order the proxy answered."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.url = ""
        self._dir = tempfile.TemporaryDirectory(prefix="counting-proxy-")
        self._log = Path(self._dir.name) / "requests.jsonl"
        self._log.touch()
        self._faults = Path(self._dir.name) / "faults.json"
        self._faults.write_text("[]")
        self._start = 0
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> CountingProxy:
        self._proc = subprocess.Popen([sys.executable, __file__, self.upstream, str(self._log),
                                       str(self._faults)],
                                      stdout=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None
        port = self._proc.stdout.readline().strip()
        if not port:
            raise RuntimeError(f"the counting proxy did not start (exit {self._proc.wait()})")
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(10)
        self._dir.cleanup()

    def fail(self, method: str, pattern: str, status: int = 500) -> None:
        """Answer ``status`` to every ``method`` request whose path matches ``pattern``."""
        self._write_rules(json.loads(self._faults.read_text()) + [[method, pattern, status]])

    def cut(self, method: str, pattern: str, after: int) -> None:
        """Answer a whole-object ``method`` request matching ``pattern`` (no ``Range``) with
        its real headers and only its first ``after`` bytes, then drop the connection: a
        body that breaks off mid-way. A ranged request gets through."""
        self.fail(method, pattern, -after)

    def clear(self) -> None:
        """No more injected faults."""
        self._write_rules([])

    def _write_rules(self, rules: list) -> None:
        """Replace the rules at once: the proxy reads them on every request."""
        tmp = self._faults.with_suffix(".tmp")
        tmp.write_text(json.dumps(rules))
        tmp.replace(self._faults)

    def reset(self) -> None:
        self._start = self._log.stat().st_size

    @property
    def requests(self) -> list[Request]:
        with self._log.open("rb") as f:
            f.seek(self._start)
            return [Request(**json.loads(line)) for line in f.read().splitlines()]

    def counts(self) -> Counter[str]:
        return Counter(r.method for r in self.requests)


def _fault(faults: Path | None, method: str, path: str) -> int | None:
    if faults is None:
        return None
    for m, pattern, status in json.loads(faults.read_text()):
        if m == method and re.search(pattern, path):
            return int(status)
    return None


def serve(upstream: str, log: IO[str], faults: Path | None = None) -> ThreadingHTTPServer:
    """The proxy server (not started), appending one JSON line per request to ``log``."""
    up = urlsplit(upstream)
    target = (up.hostname or "127.0.0.1", up.port or 80)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as clients use it against S3
        conn: http.client.HTTPConnection | None = None

        def log_message(self, *args: object) -> None:  # quiet
            pass

        def _send_upstream(self, body: bytes) -> http.client.HTTPResponse:
            if self.conn is None:
                self.conn = http.client.HTTPConnection(*target, timeout=60)
            self.conn.putrequest(self.command, self.path, skip_host=True,
                                 skip_accept_encoding=True)
            for name, value in self.headers.items():  # verbatim, Host included
                self.conn.putheader(name, value)
            self.conn.endheaders(body or None)
            return self.conn.getresponse()

        def _forward(self) -> None:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                self.send_error(501, "chunked request bodies are not supported")
                return
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status = _fault(faults, self.command, self.path.partition("?")[0])
            cut = None
            if status is not None and status < 0:  # cut() rules: only whole-object reads
                cut, status = (-status if "Range" not in self.headers else None), None
            if status is not None:
                self._log(status, 0)
                self.send_response_only(status, "injected by the test proxy")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            try:
                resp = self._send_upstream(body)
            except (http.client.RemoteDisconnected, ConnectionError):
                if self.conn is not None:  # the server closed an idle keep-alive connection
                    self.conn.close()
                self.conn = None
                resp = self._send_upstream(body)
            data = resp.read()
            self._log(resp.status, len(data) if cut is None else min(cut, len(data)))
            self.send_response_only(resp.status, resp.reason)
            head = self.command == "HEAD"
            for name, value in resp.getheaders():
                if name.lower() not in HOP_BY_HOP and (head or name.lower() != "content-length"):
                    self.send_header(name, value)
            if not head:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if not head:
                self.wfile.write(data if cut is None else data[:cut])
            if cut is not None:
                self.wfile.flush()
                self.close_connection = True

        def _log(self, status: int, nbytes: int) -> None:
            path, _, query = self.path.partition("?")
            with lock:
                log.write(json.dumps({"method": self.command, "path": path, "query": query,
                                      "range": self.headers.get("Range"), "status": status,
                                      "nbytes": nbytes}) + "\n")
                log.flush()

        def finish(self) -> None:
            super().finish()
            if self.conn is not None:
                self.conn.close()

        do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

    class Server(ThreadingHTTPServer):
        request_queue_size = 128  # clients open many connections at once
        daemon_threads = True

    return Server(("127.0.0.1", 0), Handler)


if __name__ == "__main__":
    with open(sys.argv[2], "a", encoding="utf-8") as out:
        srv = serve(sys.argv[1], out, Path(sys.argv[3]) if len(sys.argv) > 3 else None)
        print(srv.server_address[1], flush=True)
        srv.serve_forever()
