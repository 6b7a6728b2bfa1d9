"""Downloads that survive bad networks: ``fetch(url, dest_dir)``.

A file is written to ``<name>.part`` and renamed into place only once its size and
checksum are right, so a name without ``.part`` is always a complete, verified file. An
interrupted ``.part`` resumes with an HTTP ``Range`` request (a seek on S3 or a local
file) guarded by the validator (ETag, else Last-Modified) saved beside it in
``.<name>.part.json``: ``If-Range`` makes a server whose file changed send it whole, and a
changed validator restarts from zero, so a download is never spliced from two versions.
A server that keeps sending bytes other than those asked for is given up on after
``MAX_RESTARTS`` fresh starts. Transient failures (connection errors, 5xx, 429, a body
cut short) are retried with exponential backoff. HTTP is spoken with the standard library
only; ``s3://`` goes through s3fs with the credentials of
:func:`cloudmic.storage.location.resolve_s3_options`.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import os
import random
import re
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, BinaryIO, TypeVar
from urllib.parse import unquote, urlparse

from cloudmic import __version__
from cloudmic.errors import SourceError, StoreError
from cloudmic.storage.locks import file_lock

log = logging.getLogger(__name__)

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
CHUNK = 1 * MiB
# The largest published file of the seed datasets is a ~4.5 GB DeepCAD zip; a download
# without a known size stops here rather than filling a disk (pass max_bytes to raise it).
DEFAULT_MAX_BYTES = 32 * GiB
USER_AGENT = f"cloudmic/{__version__} (python urllib)"
# 408/425/429 and the 5xx that mean "try later"; other 4xx are answers, not accidents
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
# fresh starts per file: more means a server that answers other bytes than asked for
MAX_RESTARTS = 5
RETRY_HINT = ("check the network and the URL, then run again: a partial download resumes "
              "where it stopped")

Progress = Callable[[int, int | None], None]  # (bytes done, total bytes or None)
T = TypeVar("T")


# ---- retries --------------------------------------------------------------------------------
class TransientError(Exception):
    """A failure worth retrying (connection error, 5xx, body cut short)."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason, self.retry_after = reason, retry_after


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``retries`` failed attempts in a row are tolerated; an attempt that made progress
    (wrote bytes) resets the count, so a long download over a flaky link still finishes."""

    retries: int = 5
    backoff: float = 0.5
    max_delay: float = 30.0
    timeout: float = 60.0

    def delay(self, failures: int, retry_after: float | None = None) -> float:
        d = min(self.backoff * 2 ** (failures - 1), self.max_delay)
        if retry_after is not None:
            d = max(d, min(retry_after, self.max_delay))
        return d * (1 + 0.25 * random.random())  # jitter: many workers do not retry in step


def run_with_retries(url: str, policy: RetryPolicy, attempt: Callable[[], T],
                     position: Callable[[], int] = lambda: 0) -> T:
    """Call ``attempt`` until it returns; retry :class:`TransientError` with backoff."""
    failures = 0
    while True:
        before = position()
        try:
            return attempt()
        except TransientError as exc:
            failures = 1 if position() > before else failures + 1
            if failures > policy.retries:
                raise SourceError(url, f"{exc.reason}; gave up after {failures} failed "
                                  "attempts in a row", RETRY_HINT) from None
            wait = policy.delay(failures, exc.retry_after)
            log.warning("%s: %s; retry %d of %d in %.1f s", url, exc.reason, failures,
                        policy.retries, wait)
            time.sleep(wait)


# ---- HTTP -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Validator:
    """What identifies one version of a remote file: its ETag and/or Last-Modified."""

    etag: str | None = None
    last_modified: str | None = None

    @classmethod
    def of(cls, headers: Any) -> Validator | None:
        v = cls(headers.get("ETag") or None, headers.get("Last-Modified") or None)
        return v if v.etag or v.last_modified else None

    def if_range(self) -> str | None:
        """RFC 9110 13.1.5: If-Range takes a strong ETag or a date, never a weak ETag."""
        if self.etag and not self.etag.startswith("W/"):
            return self.etag
        return self.last_modified

    def differs(self, other: Validator | None) -> bool:
        """True only when both name the same kind of validator and they disagree."""
        if other is None:
            return False
        if self.etag and other.etag:  # weak comparison: a W/ prefix alone is no change
            return self.etag.removeprefix("W/") != other.etag.removeprefix("W/")
        if self.last_modified and other.last_modified:
            return self.last_modified != other.last_modified
        return False

    def __str__(self) -> str:
        return f"ETag {self.etag}" if self.etag else f"Last-Modified {self.last_modified}"


class RangeNotSatisfiable(Exception):  # noqa: N818 - mirrors HTTP 416, caught internally
    def __init__(self, total: int | None, validator: Validator | None = None) -> None:
        super().__init__(total)
        self.total, self.validator = total, validator


_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)
_CONTENT_RANGE_UNSAT = re.compile(r"^\s*bytes\s+\*/(\d+)\s*$", re.IGNORECASE)


def parse_content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """``bytes 100-199/1000`` -> ``(100, 200, 1000)`` (end exclusive); None if malformed."""
    m = _CONTENT_RANGE.match(value or "")
    if not m:
        return None
    first, last = int(m[1]), int(m[2])
    total = None if m[3] == "*" else int(m[3])
    if last < first or (total is not None and last >= total):
        return None
    return first, last + 1, total


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    with contextlib.suppress(TypeError, ValueError):
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    return None


def _http_error(url: str, exc: urllib.error.HTTPError) -> Exception:
    code, reason = exc.code, exc.reason
    if code == 416:
        m = _CONTENT_RANGE_UNSAT.match(exc.headers.get("Content-Range") or "")
        return RangeNotSatisfiable(int(m[1]) if m else None, Validator.of(exc.headers))
    if code in RETRY_STATUS:
        return TransientError(f"HTTP {code} {reason}", _retry_after(exc.headers.get("Retry-After")))
    if code in (404, 410):
        return SourceError(url, f"HTTP {code} {reason}: nothing is published at this URL",
                           "check the URL (a manifest's source.downloads, or the dataset's "
                           "homepage if it moved), or download the file by hand and pass its "
                           "local path")
    if code in (401, 403):
        return SourceError(url, f"HTTP {code} {reason}: the server refuses access",
                           "the link may have expired or need a login: download the file in a "
                           "browser and pass its local path")
    return SourceError(url, f"HTTP {code} {reason}",
                       "check the URL, or download the file by hand and pass its local path")


def describe_error(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return f"{type(exc).__name__}: {reason if reason is not None else exc}"


def http_get(url: str, *, start: int = 0, end: int | None = None, suffix: int | None = None,
             timeout: float = 60.0, if_range: str | None = None,
             ) -> tuple[http.client.HTTPResponse, int, int | None]:
    """GET ``url`` from byte ``start`` (to ``end``, exclusive), or its last ``suffix`` bytes.

    Returns ``(response, offset, total)``: ``offset`` is where the body starts in the file
    (``start`` when the server honoured the range, 0 when it ignored it and sent the whole
    file with 200) and ``total`` the file size when the server said it. Raises
    :class:`TransientError` for what is worth retrying, :class:`RangeNotSatisfiable` for
    416 and :class:`SourceError` for the rest. The caller closes the response.
    ``if_range`` (an ETag or date) goes with a range: a server whose file no longer
    matches it answers 200 with the whole file.
    """
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if suffix is not None:
        headers["Range"] = f"bytes=-{suffix}"
    elif start or end is not None:
        headers["Range"] = f"bytes={start}-" + ("" if end is None else str(end - 1))
        if if_range:
            headers["If-Range"] = if_range
    request = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - scheme checked
    except urllib.error.HTTPError as exc:
        exc.close()
        raise _http_error(url, exc) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise TransientError(f"cannot connect ({describe_error(exc)})") from None
    if resp.status == 206:
        parsed = parse_content_range(resp.headers.get("Content-Range"))
        if parsed is None:
            resp.close()
            raise SourceError(url, "the server answered 206 Partial Content with a missing or "
                              f"malformed Content-Range ({resp.headers.get('Content-Range')!r})",
                              "download the file by hand and pass its local path")
        return resp, parsed[0], parsed[2]
    if resp.status == 200:
        length = resp.headers.get("Content-Length")
        return resp, 0, int(length) if length and length.strip().isdigit() else None
    resp.close()
    raise SourceError(url, f"unexpected HTTP status {resp.status} {resp.reason}",
                      "download the file by hand and pass its local path")


# ---- what a download must be ----------------------------------------------------------------
_HEX = re.compile(r"^[0-9a-f]+$")


@dataclass(frozen=True, slots=True)
class Expected:
    """What the finished file must be: exact size and checksums when known, else a cap."""

    sha256: str | None = None
    md5: str | None = None
    size: int | None = None
    max_bytes: int = DEFAULT_MAX_BYTES

    @classmethod
    def make(cls, *, sha256: str | None = None, md5: str | None = None,
             size: int | None = None, max_bytes: int | None = None) -> Expected:
        for label, value, n in (("sha256", sha256, 64), ("md5", md5, 32)):
            if value is not None and not (len(value) == n and _HEX.match(value.lower())):
                raise ValueError(f"{label} must be {n} hex digits, got {value!r}")
        if size is not None and size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        if max_bytes is None:  # a stated size is trusted over the default cap
            max_bytes = max(DEFAULT_MAX_BYTES, size or 0)
        return cls(sha256.lower() if sha256 else None, md5.lower() if md5 else None, size,
                   max_bytes)

    @property
    def limit(self) -> int:
        """No more bytes than this are ever written."""
        return self.size if self.size is not None else self.max_bytes

    def check_total(self, url: str, total: int | None) -> None:
        """Refuse before the body is read when the announced size is wrong or absurd."""
        if self.size is not None and self.size > self.max_bytes:
            raise SourceError(url, f"the expected size {self.size:,} bytes is above the "
                              f"limit of {self.max_bytes:,} bytes",
                              "pass a larger max_bytes if a file this large is expected")
        if total is None:
            return
        if self.size is not None and total != self.size:
            raise SourceError(url, f"the server offers {total:,} bytes but {self.size:,} are "
                              "expected", "the file changed on the server or the URL is "
                              "wrong: check the dataset's page and update the manifest's "
                              "source.downloads (size and checksum) if the new file is right")
        if total > self.max_bytes:
            raise SourceError(url, f"the server offers {total:,} bytes, above the limit of "
                              f"{self.max_bytes:,} bytes", "pass a larger max_bytes if a file "
                              "this large is expected")

    def hashers(self) -> dict[str, Any]:
        h = {"sha256": hashlib.sha256()}
        if self.md5:
            h["md5"] = hashlib.md5()  # noqa: S324 - integrity check against a published md5
        return h


def hash_file(path: Path, algorithms: tuple[str, ...] = ("sha256",)) -> dict[str, str]:
    hashers = {a: hashlib.new(a) for a in algorithms}
    with open(path, "rb") as f:
        while chunk := f.read(8 * MiB):
            for h in hashers.values():
                h.update(chunk)
    return {a: h.hexdigest() for a, h in hashers.items()}


def verify_file(path: Path, expect: Expected) -> str | None:
    """None when ``path`` has the expected size and checksums, else what is wrong."""
    n = path.stat().st_size
    if expect.size is not None and n != expect.size:
        return f"{n:,} bytes, expected {expect.size:,}"
    algos = tuple(a for a in ("sha256", "md5") if getattr(expect, a))
    if not algos:
        return None
    got = hash_file(path, algos)
    for a in algos:
        if got[a] != getattr(expect, a):
            return f"{a} {got[a]}, expected {getattr(expect, a)}"
    return None


# ---- names, locks, space --------------------------------------------------------------------
_BAD_NAME = re.compile(r"[\x00-\x1f\x7f/\\]")


def name_from_url(url: str) -> str:
    """The file name a URL stands for: the last path segment, without the query string
    (``.../images_and_labels_json.zip?dl=1`` -> ``images_and_labels_json.zip``)."""
    path = urlparse(url).path if "://" in url else url
    name = unquote(path.rstrip("/").rpartition("/")[2])
    check_name(name, url)
    return name


def check_name(name: str, url: str) -> None:
    if not name or name in (".", "..") or _BAD_NAME.search(name) or name.endswith(".part"):
        raise SourceError(url, f"cannot use {name!r} as a local file name",
                          "pass name= (a plain file name, like 'CCPs.zip')")




def check_free_space(folder: Path, need: int, what: str) -> None:
    free = shutil.disk_usage(folder).free
    if need > free:
        raise StoreError(f"{folder}: not enough free space for {what}: {need:,} bytes needed, "
                         f"{free:,} free; free some space or choose another folder")


# ---- the .part file -------------------------------------------------------------------------
class _Part:
    """The growing ``.part`` file with running checksums (primed from a previous run's
    bytes) and the validator of the version those bytes came from (``.<name>.part.json``)."""

    def __init__(self, url: str, path: Path, expect: Expected,
                 progress: Progress | None) -> None:
        self.url, self.path, self.expect, self.progress = url, path, expect, progress
        self.meta = path.with_name(f".{path.name}.json")
        self.total: int | None = None
        self.file: BinaryIO = open(path, "ab")  # noqa: SIM115 - closed in finish/discard
        self.hashers = expect.hashers()
        self.done = self.restarts = 0
        self.validator = self._load_validator()
        if path.stat().st_size > expect.limit:
            self.restart("the .part file is larger than expected")
            return
        with open(path, "rb") as f:
            while chunk := f.read(8 * MiB):
                self._account(chunk)
        if self.done:
            log.info("%s: resuming at byte %d from %s (%s)", url, self.done, path,
                     self.validator or "no validator saved: the checksum is the only guard")

    def _load_validator(self) -> Validator | None:
        try:
            saved = json.loads(self.meta.read_text())
            if saved.get("url") == self.url:
                return Validator.of(saved) if isinstance(saved, dict) else None
        except (OSError, ValueError, AttributeError):
            pass  # none, or unreadable: resume unguarded, as before validators were kept
        return None

    def remember(self, validator: Validator | None) -> None:
        """Save the validator of the version the .part starts to hold (before its bytes)."""
        self.validator = validator
        if validator is None:
            self.meta.unlink(missing_ok=True)
            return
        tmp = self.meta.with_name(f"{self.meta.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"url": self.url, "ETag": validator.etag,
                                   "Last-Modified": validator.last_modified}))
        os.replace(tmp, self.meta)

    def _account(self, chunk: bytes) -> None:
        for h in self.hashers.values():
            h.update(chunk)
        self.done += len(chunk)

    def restart(self, why: str) -> None:
        """Empty the .part; a server that makes us do this again and again is broken."""
        self.restarts += 1
        if self.restarts > MAX_RESTARTS:
            raise self.discard(f"{why}; gave up after {MAX_RESTARTS} fresh starts",
                               "the server (or a proxy in between) does not serve this file "
                               "consistently: try again later, or download the file by hand "
                               "and pass its local path")
        log.info("%s: %s; starting again from byte 0", self.url, why)
        self.file.seek(0)
        self.file.truncate()
        self.hashers, self.done = self.expect.hashers(), 0
        self.remember(None)
        self._report()

    def _report(self) -> None:
        if self.progress is not None:
            self.progress(self.done, self.total)

    def write(self, chunk: bytes) -> None:
        if self.done + len(chunk) > self.expect.limit:
            what = ("the expected size" if self.expect.size is not None
                    else "the limit (max_bytes)")
            raise self.discard(f"the server sent more than {self.expect.limit:,} bytes, "
                               f"{what}", "the file changed on the server or the URL serves "
                               "something else; check it (pass a larger max_bytes if a file "
                               "this large is expected)")
        self.file.write(chunk)
        self._account(chunk)
        self._report()

    def pump(self, read: Callable[[], bytes]) -> None:
        """Copy chunks from ``read`` until it returns b''; read errors are transient."""
        while True:
            try:
                chunk = read()
            except (OSError, http.client.HTTPException) as exc:
                raise TransientError(f"the connection broke after {self.done:,} bytes "
                                     f"({describe_error(exc)})") from None
            if not chunk:
                return
            self.write(chunk)

    def discard(self, problem: str, fix: str) -> SourceError:
        """Remove the .part (a re-run starts afresh) and return the error to raise."""
        self.file.close()
        self.path.unlink(missing_ok=True)
        self.meta.unlink(missing_ok=True)
        return SourceError(self.url, problem, fix)

    def close(self) -> None:
        self.file.close()

    def finish(self, target: Path) -> dict[str, str]:
        """Check size and checksums; rename into place only when all agree."""
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        exp = self.expect
        if exp.size is not None and self.done != exp.size:
            raise self.discard(f"the download has {self.done:,} bytes but {exp.size:,} are "
                               "expected", "the file changed on the server or the URL is "
                               "wrong: check the dataset's page; the partial download was "
                               "removed")
        digests = {a: h.hexdigest() for a, h in self.hashers.items()}
        for algo in ("sha256", "md5"):
            want = getattr(exp, algo)
            if want and digests[algo] != want:
                raise self.discard(
                    f"checksum mismatch: expected {algo} {want}, but the download has "
                    f"{algo} {digests[algo]}",
                    "the file was corrupted in transit or changed on the server; the download "
                    "was removed, so run again to download it afresh; if it fails again, the "
                    "published file differs from the manifest: check the dataset's page and "
                    "update source.downloads in the manifest")
        if not (exp.sha256 or exp.md5):
            log.warning("%s: no checksum to verify against; its sha256 is %s (add it to the "
                        "manifest's source.downloads to pin it)", self.url, digests["sha256"])
        os.replace(self.path, target)
        self.meta.unlink(missing_ok=True)
        return digests


# ---- transports -----------------------------------------------------------------------------
def _http_attempt(url: str, part: _Part, timeout: float) -> bool:
    """One GET; True when the .part is complete, False to ask again at once."""
    guard = part.validator.if_range() if part.validator and part.done else None
    try:
        resp, offset, total = http_get(url, start=part.done, timeout=timeout, if_range=guard)
    except RangeNotSatisfiable as exc:
        if exc.total is not None and exc.total == part.done and not (
                part.validator and part.validator.differs(exc.validator)):
            part.total = exc.total
            return True  # the .part already holds the whole file
        part.restart(f"the server cannot resume at byte {part.done:,}")
        return False
    with resp:
        if not _same_version(part, resp, offset, total, guard):
            return False
        try:
            part.expect.check_total(url, total)
        except SourceError as exc:
            raise part.discard(exc.problem, exc.fix) from None
        part.total = total
        if total is not None:
            check_free_space(part.path.parent, total - part.done, url)
        part.pump(lambda: resp.read(CHUNK))
        if total is not None and part.done < total:
            raise TransientError(f"the connection closed after {part.done:,} of {total:,} "
                                 "bytes")
        if total is None and part.expect.size is None:
            log.warning("%s: the server sent no length; completeness is only as good as the "
                        "checksum", url)
    return True


def _same_version(part: _Part, resp: Any, offset: int, total: int | None,
                  guard: str | None) -> bool:
    """Match a response to the .part: True to read its body into it (emptied first when the
    body is a whole file), False to ask again from byte 0 (the .part was emptied)."""
    got = Validator.of(resp.headers)
    if offset != part.done and offset:  # a range we did not ask for: ask again without one
        part.restart(f"asked for byte {part.done:,} on, got Content-Range "
                     f"{resp.headers.get('Content-Range')!r}")
        return False
    if offset != part.done:  # a 200: the whole file, a new version's if If-Range was sent
        part.restart("the server sent the whole file (the file changed, or the server "
                     "ignores Range)" if guard else "the server ignored the Range request")
    elif part.done and part.validator and part.validator.differs(got):
        part.restart(f"the file changed on the server ({part.validator} is now {got})")
        return False  # a 206 of the new version (If-Range not honoured): ask from byte 0
    elif total is not None and total < part.done:  # only with a 206 from a changed file
        part.restart(f"the file shrank on the server to {total:,} bytes")
        return False
    if part.done == 0:
        part.remember(got)
    return True


def filesystem_for(url: str, storage_options: dict[str, Any] | None) -> tuple[Any, str]:
    import fsspec

    scheme = urlparse(url).scheme
    if scheme == "s3":
        from cloudmic.storage.location import resolve_s3_options

        return fsspec.filesystem("s3", **resolve_s3_options(storage_options)), url[len("s3://"):]
    return fsspec.filesystem("file"), str(Path(url.removeprefix("file://")).expanduser())


def _fs_validator(info: dict[str, Any]) -> Validator | None:
    """An S3 object's ETag and LastModified, or a local file's mtime."""
    modified = info.get("LastModified") or info.get("mtime")
    v = Validator(info.get("ETag") or None, str(modified) if modified else None)
    return v if v.etag or v.last_modified else None


def _fs_attempt(url: str, fs: Any, path: str, part: _Part) -> bool:
    try:
        info = fs.info(path)
        total = int(info["size"])
    except FileNotFoundError:
        raise SourceError(url, "no such file", "check the path or URL") from None
    except PermissionError as exc:
        raise SourceError(url, f"access denied ({exc})", "check the credentials "
                          "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL)") from None
    except OSError as exc:
        raise TransientError(f"cannot stat ({describe_error(exc)})") from None
    try:
        part.expect.check_total(url, total)
    except SourceError as exc:
        raise part.discard(exc.problem, exc.fix) from None
    part.total = total
    got = _fs_validator(info)
    if part.done > total:
        part.restart(f"the file shrank to {total:,} bytes")
    elif part.done and part.validator and part.validator.differs(got):
        part.restart(f"the file changed ({part.validator} is now {got})")
    if part.done == 0:
        part.remember(got)
    check_free_space(part.path.parent, total - part.done, url)
    if part.done < total:
        try:
            f = fs.open(path, "rb", block_size=8 * MiB)
            f.seek(part.done)
        except OSError as exc:
            raise TransientError(f"cannot open ({describe_error(exc)})") from None
        with f:
            part.pump(lambda: f.read(CHUNK))
        if part.done < total:
            raise TransientError(f"the read stopped after {part.done:,} of {total:,} bytes")
    return True


def url_scheme(url: str) -> str:
    scheme = urlparse(url).scheme.lower()
    if scheme in ("http", "https", "s3", "file"):
        return scheme
    if scheme == "" or (len(scheme) == 1 and os.name == "nt"):
        return "file"
    raise SourceError(url, f"unsupported URL scheme {scheme!r}",
                      "use http(s)://, s3:// or a local path")


# ---- the public function --------------------------------------------------------------------
def fetch(url: str | os.PathLike[str], dest_dir: str | os.PathLike[str], *,
          name: str | None = None, sha256: str | None = None, md5: str | None = None,
          size: int | None = None, max_bytes: int | None = None, retries: int = 5,
          backoff: float = 0.5, timeout: float = 60.0, progress: Progress | None = None,
          storage_options: dict[str, Any] | None = None) -> Path:
    """Download ``url`` to ``dest_dir/<name>`` and return that path.

    ``url`` is ``http(s)://``, ``s3://``, ``file://`` or a local path; ``name`` defaults to
    the URL's last path segment (without the query string). Bytes go to ``<name>.part``,
    which a later call resumes (HTTP ``Range``; a server that ignores it makes the download
    start again). The file is renamed into place only when its size (``size``) and
    checksums (``sha256``, ``md5``) match; a checksum mismatch removes the ``.part`` and
    raises :class:`SourceError` naming the URL and both checksums. No more than ``size``
    bytes (else ``max_bytes``, default 32 GiB) are ever written. A complete file already
    at the target with the expected size and checksums is not downloaded again.

    Transient failures (connection errors, HTTP 408/429/5xx, a body cut short) are retried
    with exponential backoff from ``backoff`` seconds; ``retries`` failures in a row without
    progress give up (the ``.part`` stays, for the next run). ``progress(done, total)`` is
    called as bytes arrive (``total`` None while unknown).
    """
    url = os.fspath(url)
    scheme = url_scheme(url)
    expect = Expected.make(sha256=sha256, md5=md5, size=size, max_bytes=max_bytes)
    name = name or name_from_url(url)
    check_name(name, url)
    folder = Path(dest_dir)
    folder.mkdir(parents=True, exist_ok=True)
    target, part_path = folder / name, folder / f"{name}.part"
    policy = RetryPolicy(retries=retries, backoff=backoff, timeout=timeout)
    problem = None
    with file_lock(folder / f".{name}.lock"):  # one process fetches one file at a time
        if target.is_file():
            problem = verify_file(target, expect)
            if problem is None:
                log.info("%s: already downloaded to %s", url, target)
                return target
            log.warning("%s: %s is not the expected file (%s); downloading it again", url,
                        target, problem)
        if scheme == "file":
            src = Path(url.removeprefix("file://")).expanduser()
            if not src.is_file():
                raise SourceError(url, "no such file" if not src.exists() else "not a file",
                                  "check the path")
            if src.resolve() == target.resolve():
                raise SourceError(url, f"{target} is the source itself and does not verify "
                                  f"({problem})", "check the file or the expected checksum")
        part = _Part(url, part_path, expect, progress)
        try:
            if scheme in ("http", "https"):
                def attempt() -> None:
                    while not _http_attempt(url, part, policy.timeout):
                        pass
            else:
                fs, path = filesystem_for(url, storage_options)

                def attempt() -> None:
                    _fs_attempt(url, fs, path, part)

            run_with_retries(url, policy, attempt, position=lambda: part.done)
            digests = part.finish(target)
        finally:
            part.close()
    log.info("%s: downloaded %d bytes to %s (sha256 %s)", url, target.stat().st_size, target,
             digests["sha256"])
    return target
