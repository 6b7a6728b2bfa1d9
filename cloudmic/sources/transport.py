"""How source bytes are asked for: the URL schemes sources accept, one HTTP GET (with a
byte range and an ``If-Range`` validator), and the retry policy around every request.

Both the download (:mod:`cloudmic.sources.download`) and the range reads of archives read in
place (:mod:`cloudmic.sources.byte_ranges`) go through here, so that they agree on what a
transient failure is and how long to wait. HTTP is spoken with the standard library only;
object stores (``s3://``, ``az://``, ``gs://``) go through fsspec with the credentials
:class:`cloudmic.storage.location.Location` resolves.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import random
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar
from urllib.parse import urlparse

from cloudmic import __version__
from cloudmic.errors import SourceError, StoreError

log = logging.getLogger(__name__)

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
CHUNK = 1 * MiB
USER_AGENT = f"cloudmic/{__version__} (python urllib)"
# 408/425/429 and the 5xx that mean "try later"; other 4xx are answers, not accidents
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
RETRY_HINT = ("check the network and the URL, then run again: a partial download resumes "
              "where it stopped")

Progress = Callable[[int, int | None], None]  # (bytes done, total bytes or None)
T = TypeVar("T")


# ---- URLs -----------------------------------------------------------------------------------
def url_scheme(url: str) -> str:
    """``http``, ``https``, ``file``, or the scheme of an object store (``s3``, ``az``, ``gs``)."""
    from cloudmic.storage.backends import SUPPORTED, backend_for

    scheme = urlparse(url).scheme.lower()
    if scheme == "" or (len(scheme) == 1 and os.name == "nt"):
        return "file"
    try:
        backend_for(url)
    except StoreError:
        raise SourceError(url, f"unsupported URL scheme {scheme!r}", f"use {SUPPORTED}") from None
    return scheme


def filesystem_for(url: str, storage_options: dict[str, Any] | None) -> tuple[Any, str]:
    """The fsspec filesystem and path of an object-store (``s3://``, ``az://``, ``gs://``) or
    local source."""
    # imported here: fsspec (and its cloud clients) load only when a source is not on HTTP
    from cloudmic.storage.location import Location

    where = Location.parse(url, **(storage_options or {}))
    return where.fs, where.path


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


def describe_error(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return f"{type(exc).__name__}: {reason if reason is not None else exc}"


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
