"""Downloads that survive bad networks: ``fetch(url, dest_dir)``.

A file is written to ``<name>.part`` and renamed into place only once its size and
checksum are right, so a name without ``.part`` is always a complete, verified file. An
interrupted ``.part`` resumes with an HTTP ``Range`` request (a seek on S3 or a local
file) guarded by the validator (ETag, else Last-Modified) saved beside it in
``.<name>.part.json``: ``If-Range`` makes a server whose file changed send it whole, and a
changed validator restarts from zero, so a download is never spliced from two versions.
A server that keeps sending bytes other than those asked for is given up on after
``MAX_RESTARTS`` fresh starts. Transient failures (connection errors, 5xx, 429, a body
cut short) are retried with exponential backoff (:mod:`cloudmic.sources.transport`), and
one process at a time fetches a file (:func:`cloudmic.storage.locks.file_lock`).
"""

from __future__ import annotations

import http.client
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from cloudmic.errors import SourceError
from cloudmic.sources.file_checks import (
    Expected,
    check_free_space,
    check_name,
    name_from_url,
    verify_file,
)
from cloudmic.sources.transport import (
    CHUNK,
    MiB,
    Progress,
    RangeNotSatisfiable,
    RetryPolicy,
    TransientError,
    Validator,
    describe_error,
    filesystem_for,
    http_get,
    run_with_retries,
    url_scheme,
)
from cloudmic.storage.locks import file_lock

log = logging.getLogger(__name__)

# fresh starts per file: more means a server that answers other bytes than asked for
MAX_RESTARTS = 5


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
