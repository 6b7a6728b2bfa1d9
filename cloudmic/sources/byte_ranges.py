"""Random reads of one local, HTTP(S) or object-store file, and a seekable file over them.

Zips are read in place through these: a remote zip costs one request to list (the last
64 KiB, which holds the central directory of archives with up to a few hundred members),
and about one more per member read, because :class:`RangeFile` reads ahead, and further
ahead the longer a read stays sequential (64 KiB up to 8 MiB per request). Every request
goes through the retry policy of :mod:`cloudmic.sources.transport`.
"""

from __future__ import annotations

import http.client
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cloudmic.errors import SourceError
from cloudmic.sources.transport import (
    KiB,
    MiB,
    RangeNotSatisfiable,
    RetryPolicy,
    TransientError,
    describe_error,
    filesystem_for,
    http_get,
    run_with_retries,
    url_scheme,
)
from cloudmic.sources.zip_checks import REDOWNLOAD, NotAZipError

TAIL_BYTES = 64 * KiB
MAX_READ = 64 * MiB  # the largest single read of an archive (a central directory)
DEFAULT_POLICY = RetryPolicy()


class RangeNotSupportedError(SourceError):
    """The server does not answer byte-range requests, so members cannot be read in place."""


class ByteSource:
    """Random reads of one file: ``read(start, end)`` returns exactly ``end - start`` bytes."""

    url: str
    size: int
    tail: tuple[int, bytes] | None = None  # bytes fetched while opening, kept for the zip

    def read(self, start: int, end: int) -> bytes:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        pass


class LocalSource(ByteSource):
    def __init__(self, path: Path) -> None:
        self.url = str(path)
        try:
            self._fd: int | None = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise SourceError(path, "no such file", "check the path") from None
        except IsADirectoryError:
            raise SourceError(path, "a folder, not a zip archive", "pass the zip file") from None
        self.size = os.fstat(self._fd).st_size

    def read(self, start: int, end: int) -> bytes:
        if self._fd is None:
            raise ValueError(f"{self.url}: read from a closed archive")
        out = bytearray()
        while len(out) < end - start:
            chunk = os.pread(self._fd, end - start - len(out), start + len(out))
            if not chunk:
                raise NotAZipError(self.url, f"file ends at byte {start + len(out):,}, before "
                                   f"byte {end:,} (it shrank while being read?)", REDOWNLOAD)
            out += chunk
        return bytes(out)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class HttpSource(ByteSource):
    """An HTTP(S) file read by ``Range`` requests (standard library, no connection reuse)."""

    def __init__(self, url: str, policy: RetryPolicy = DEFAULT_POLICY) -> None:
        self.url, self.policy = url, policy
        run_with_retries(url, policy, self._probe)

    def _unsupported(self, why: str) -> RangeNotSupportedError:
        return RangeNotSupportedError(self.url, f"the server does not serve byte ranges ({why}), "
                                      "so members cannot be read in place",
                                      "download the whole archive first (materialize does this "
                                      "by itself when stream is not forced)")

    def _probe(self) -> None:
        """One request for the last 64 KiB: the file size and, usually, the central directory."""
        try:
            resp, offset, total = http_get(self.url, suffix=TAIL_BYTES,
                                           timeout=self.policy.timeout)
        except RangeNotSatisfiable:
            raise NotAZipError(self.url, "the file is empty", REDOWNLOAD) from None
        with resp:
            if resp.status == 200 and (total is None or total > TAIL_BYTES):
                raise self._unsupported("it answered a range request with the whole file")
            if total is None:
                raise self._unsupported("it does not say the file size")
            want = total - offset
            data = _read_body(resp, want)
        self.size, self.tail = total, (offset, data)

    def read(self, start: int, end: int) -> bytes:
        pieces: list[bytes] = []
        pos = start
        while pos < end:
            piece = run_with_retries(self.url, self.policy, lambda p=pos: self._get(p, end))
            pieces.append(piece)
            pos += len(piece)
        return b"".join(pieces)

    def _get(self, start: int, end: int) -> bytes:
        try:
            resp, offset, total = http_get(self.url, start=start, end=end,
                                           timeout=self.policy.timeout)
        except RangeNotSatisfiable:
            raise SourceError(self.url, f"the file is now shorter than {end:,} bytes", "the "
                              "file changed on the server while being read: run again") from None
        with resp:
            if resp.status != 206 or offset != start:
                raise self._unsupported(f"asked for bytes {start}-{end - 1}, got status "
                                        f"{resp.status} from byte {offset}")
            if total is not None and total != self.size:
                raise SourceError(self.url, f"the file was {self.size:,} bytes and is now "
                                  f"{total:,}", "the file changed on the server while being "
                                  "read: run again")
            length = resp.headers.get("Content-Length")
            want = min(end - start, int(length)) if length and length.isdigit() else end - start
            if want <= 0:
                raise SourceError(self.url, f"an empty answer to a request for bytes {start:,}-"
                                  f"{end - 1:,}", "download the whole archive instead")
            return _read_body(resp, want)


def _read_body(resp: Any, want: int) -> bytes:
    try:
        data = resp.read(want)
    except (OSError, http.client.HTTPException) as exc:
        raise TransientError(f"the connection broke mid-body ({describe_error(exc)})") from None
    if len(data) < want:
        raise TransientError(f"the body was cut short ({len(data):,} of {want:,} bytes)")
    return data


class FsspecSource(ByteSource):
    """An object-store object (``s3://``, ``az://``, ``gs://``) read by ranged GETs through
    its fsspec filesystem."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None,
                 policy: RetryPolicy = DEFAULT_POLICY) -> None:
        self.url, self.policy = url, policy
        self.fs, self.path = filesystem_for(url, storage_options)
        self.size = int(self._call(self.fs.size, self.path))

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        def attempt() -> Any:
            try:
                return fn(*args, **kwargs)
            except FileNotFoundError:
                raise SourceError(self.url, "no such object", "check the URL") from None
            except PermissionError as exc:
                from cloudmic.storage.backends import backend_for

                raise SourceError(self.url, f"access denied ({exc})", "check the credentials "
                                  f"({backend_for(self.url).credentials_hint})") from None
            except OSError as exc:
                raise TransientError(describe_error(exc)) from None

        return run_with_retries(self.url, self.policy, attempt)

    def read(self, start: int, end: int) -> bytes:
        data = self._call(self.fs.cat_file, self.path, start=start, end=end)
        if len(data) != end - start:
            raise SourceError(self.url, f"asked for {end - start:,} bytes at {start:,}, got "
                              f"{len(data):,}", "the object changed while being read: run again")
        return data


def open_source(url: str | os.PathLike[str], storage_options: dict[str, Any] | None = None,
                policy: RetryPolicy = DEFAULT_POLICY) -> ByteSource:
    url = os.fspath(url)
    scheme = url_scheme(url)
    if scheme in ("http", "https"):
        return HttpSource(url, policy)
    if scheme != "file":
        return FsspecSource(url, storage_options, policy)
    return LocalSource(Path(url.removeprefix("file://")).expanduser())


class RangeFile(io.RawIOBase):
    """A seekable, read-only window ``[base, base + length)`` onto a :class:`ByteSource`.

    Misses fetch ahead of the read: 64 KiB after a jump, doubling up to 8 MiB while reads
    stay sequential. The source's tail (fetched when it was opened) is served from memory.
    """

    def __init__(self, source: ByteSource, base: int = 0, length: int | None = None, *,
                 min_ahead: int = 64 * KiB, max_ahead: int = 8 * MiB,
                 initial: bytes = b"") -> None:
        super().__init__()
        self._src, self._base = source, base
        self._len = source.size - base if length is None else length
        self._pos = 0
        self._buf_start, self._buf = 0, initial[: self._len]  # bytes already read at base
        self._min_ahead, self._max_ahead, self._ahead = min_ahead, max_ahead, min_ahead
        self._last_end = len(self._buf) if self._buf else -1
        self._tail: tuple[int, bytes] | None = None
        if source.tail is not None:
            t_start, t_data = source.tail
            rel = t_start - base
            if rel <= self._len and rel + len(t_data) >= 0:
                self._tail = (rel, t_data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._len}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = max(0, self._len - self._pos)
        if min(size, self._len - self._pos) > MAX_READ:
            raise SourceError(self._src.url, f"a single read of {size:,} bytes at offset "
                              f"{self._base + self._pos:,} (above {MAX_READ:,}): the zip's "
                              "central directory is absurdly large", "this is not a zip "
                              "archive cloudmic reads; unpack it by hand if you trust it")
        return super().read(size)

    def readall(self) -> bytes:
        return self.read(-1)

    def _cached(self, pos: int) -> tuple[int, bytes] | None:
        for start, data in ((self._buf_start, self._buf), self._tail or (0, b"")):
            if start <= pos < start + len(data):
                return start, data
        return None

    def readinto(self, b: Any) -> int:
        out = memoryview(b).cast("B")
        n = max(0, min(len(out), self._len - self._pos))
        got = 0
        while got < n:
            hit = self._cached(self._pos)
            if hit is None:
                self._fill(n - got)
                continue
            start, data = hit
            i = self._pos - start
            take = min(n - got, len(data) - i)
            out[got:got + take] = data[i:i + take]
            got += take
            self._pos += take
        return got

    def _fill(self, want: int) -> None:
        p = self._pos
        sequential = p == self._last_end
        self._ahead = min(self._ahead * 2, self._max_ahead) if sequential else self._min_ahead
        end = min(self._len, p + max(want, self._ahead))
        if self._tail is not None and self._tail[0] > p:
            end = min(end, max(self._tail[0], p + want))  # do not fetch what the tail holds
        self._buf = self._src.read(self._base + p, self._base + end)
        self._buf_start, self._last_end = p, end

    def close(self) -> None:
        self._buf = b""
        super().close()
