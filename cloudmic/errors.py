"""Errors that reach users. Each names the file or URL at fault and says what to do.

They subclass the builtin they refine, so ``except ValueError`` and friends keep working.
:func:`one_line` turns the errors that come from outside (the OS, memory, object stores)
into one such line for the command line; :func:`is_permanent` tells which a retry cannot fix.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Iterator


class CloudmicError(Exception):
    """Base of every error cloudmic raises on purpose."""


class SourceError(CloudmicError, ValueError):
    """The source data does not match its published layout (missing pair, bad TIFF, ...)."""

    def __init__(self, path: object, problem: str, fix: str) -> None:
        self.path, self.problem, self.fix = str(path), problem, fix
        super().__init__(f"{self.path}: {problem}\n  what to do: {fix}")

    def __reduce__(self):  # survives the trip back from a dask worker
        return (type(self), (self.path, self.problem, self.fix))


class ManifestError(CloudmicError, ValueError):
    """A manifest YAML is missing a field, has an unknown one, or a wrong value."""


class StoreError(CloudmicError, OSError):
    """The destination or source store cannot be reached, read or written."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """Nothing is published at the URL."""


class VerifyFailed(CloudmicError):
    """The staged dataset did not verify; nothing was published."""


class NotInStoreError(CloudmicError, KeyError):
    """A name the caller asked for is not in the store (a ``KeyError``, with a readable
    message: ``KeyError`` would print it in quotes)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class GroupNotFoundError(NotInStoreError):
    """No group (or split) of that name or pattern."""


class VariableNotFoundError(NotInStoreError):
    """The group has no variable (or coordinate) of that name."""


# ---- errors from outside: which to retry, and one line for each -----------------------------
# errnos a retry cannot fix: the unit would fail the same way, after rewriting its data
PERMANENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM,
                              errno.EROFS})
_RESUME = "then run the same command again: finished work is kept"
_OS_FIXES = {
    errno.ENOSPC: ("no space left on device", f"free some space or choose another "
                   f"destination, {_RESUME}"),
    errno.EDQUOT: ("disk quota exceeded", f"free some space or choose another destination, "
                   f"{_RESUME}"),
    errno.EACCES: ("permission denied", "check the owner and permissions of the file and its "
                   "folder (ls -ld), or choose another location"),
    errno.EPERM: ("operation not permitted", "check the owner and permissions of the file and "
                  "its folder (ls -ld), or choose another location"),
    errno.EROFS: ("read-only file system", f"choose a writable destination, {_RESUME}"),
}
_STORE_FIX = ("try again later (an ingest resumes where it stopped); if it persists, check "
              "the server's logs and AWS_ENDPOINT_URL")
_CREDENTIALS_FIX = "check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_ENDPOINT_URL"
_STORE_MODULES = ("obstore", "botocore", "aiobotocore", "aiohttp", "s3fs")
MAX_LINE = 400


def is_permanent(exc: BaseException) -> bool:
    """Failures a retry cannot fix: a full disk, a refused permission, a read-only file
    system, exhausted memory, or input that does not match its published layout."""
    if isinstance(exc, MemoryError | SourceError | ManifestError):
        return True
    if isinstance(exc, OSError) and exc.errno in PERMANENT_ERRNOS:
        return True
    # obstore's refusals are not OSErrors (s3fs turns a 403 into a PermissionError)
    return type(exc).__module__.startswith("obstore") and type(exc).__name__ in (
        "PermissionDeniedError", "UnauthenticatedError")


def one_line(exc: BaseException, *, read: str | None = None,
             write: str | None = None) -> str | None:
    """``exc`` as one line naming the file or URL at fault and what to do, or None when it
    is not an error from outside (a bug keeps its traceback). ``read`` and ``write`` are
    what the command reads and writes: named when the error itself names no file."""
    if isinstance(exc, MemoryError):
        where = f" while working on {write or read}" if write or read else ""
        return _clip(f"out of memory{where}; use fewer --workers or --threads, close other "
                     "programs, or use a machine with more memory")
    store = next((e for e in _chain(exc) if type(e).__module__.split(".")[0]
                  in _STORE_MODULES), None)
    if store is not None:
        remote = next((u for u in (read, write) if u and "://" in u), write or read)
        return _clip(_store_line(store, remote))
    if isinstance(exc, OSError):
        return _clip(_os_line(exc, read=read, write=write))
    return None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the errors it was raised from (s3fs wraps botocore's in an OSError)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen and len(seen) < 20:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _os_line(exc: OSError, *, read: str | None, write: str | None) -> str:
    named = next((e.filename for e in _chain(exc)
                  if isinstance(e, OSError) and e.filename not in (None, "")), None)
    if exc.errno in _OS_FIXES:
        problem, fix = _OS_FIXES[exc.errno]
        where = named or (write or read if exc.errno in (errno.ENOSPC, errno.EDQUOT,
                                                         errno.EROFS) else read or write)
        return f"{where or '(unnamed file)'}: {problem}; {fix}"
    if exc.errno == errno.EREMOTEIO:  # s3fs: the object store answered an HTTP error
        return f"{named or read or write}: the object store answered {exc.strerror}; {_STORE_FIX}"
    text = exc.strerror or str(exc) or type(exc).__name__
    return (f"{named or read or write or '(unnamed file)'}: {text}; check the path, the disk "
            "and the network, then run again")


def _store_line(exc: BaseException, where: str | None) -> str:
    """One line for an obstore, botocore or aiohttp error."""
    name, text = type(exc).__name__, _first_line(exc)
    if name == "ClientError" and hasattr(exc, "response"):  # botocore: no URL in it
        err = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        said = " ".join(dict.fromkeys(str(x) for x in (status, err.get("Code")) if x))
        if err.get("Message") and err["Message"] not in said:
            said += f" ({err['Message'].rstrip('.')})"
        op = getattr(exc, "operation_name", None) or "a request"
        fix = _CREDENTIALS_FIX if str(status) in ("401", "403") else _STORE_FIX
        return f"{where or 's3'}: the object store answered {said or '?'} to {op}; {fix}"
    m = re.search(r"\b(?:GET|PUT|HEAD|POST|DELETE) (\S+)", text)  # obstore: method and URL
    m = m or re.search(r"https?://[^\s\"']+", text)
    url = (m[1] if m.groups() else m[0]) if m else where or "s3"
    status = re.search(r"status code: (\d{3}[^:<]*)", text)
    if name in ("PermissionDeniedError", "UnauthenticatedError"):
        return f"{url}: the object store refused access; {_CREDENTIALS_FIX}"
    if name == "NotFoundError":
        return f"{url}: not found in the object store; check the URL"
    if status:
        return f"{url}: the object store answered {status[1].strip()}; {_STORE_FIX}"
    said = name if m else f"{name}: {text}"
    return (f"{url}: cannot reach the object store ({said}); is it running (cloudmic store "
            f"status)? {_STORE_FIX}")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _clip(line: str) -> str:
    line = " ".join(line.split())  # one line whatever a library put in its message
    return line if len(line) <= MAX_LINE else line[: MAX_LINE - 3] + "..."
