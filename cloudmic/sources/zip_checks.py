"""What :mod:`zipfile` refuses without naming a member, found in the central directory.

``zipfile.ZipFile`` raises a bare ``NotImplementedError("zip file version 18.8")`` while it
reads the central directory, for an entry whose "version needed to extract" is above what
it implements (6.3). Users need to know which archive and which member, so the directory is
walked here, with the same record layout zipfile uses, to find it.

Likewise the stream zipfile gives for a compressed member raises zlib/bzip2/lzma errors,
``BadZipFile`` (bad local header, CRC mismatch) or ``UnicodeDecodeError``:
:class:`CheckedMember` turns each into a SourceError naming the archive and member.
"""

from __future__ import annotations

import io
import lzma
import struct
import zipfile
import zlib
from typing import Any, BinaryIO

from cloudmic.errors import CloudmicError, SourceError

_CENTRAL = struct.Struct(zipfile.structCentralDir)  # 46 bytes, APPNOTE 4.3.12
_MAX_DIRECTORY = 64 * 1024 * 1024  # zipfile itself reads the directory in one piece


def first_too_new(fp: BinaryIO) -> tuple[str, int] | None:
    """(name, version x 10) of the first entry needing a newer zip than zipfile reads."""
    try:
        end = zipfile._EndRecData(fp)  # the same end-of-directory search zipfile does
        if end is None:
            return None
        size, at = end[zipfile._ECD_SIZE], end[zipfile._ECD_LOCATION] - end[zipfile._ECD_SIZE]
        if not 0 <= size <= _MAX_DIRECTORY or at < 0:
            return None
        fp.seek(at)
        data = fp.read(size)
    except (OSError, ValueError, struct.error, EOFError):
        return None
    pos = 0
    while pos + _CENTRAL.size <= len(data):
        rec = _CENTRAL.unpack_from(data, pos)
        if rec[0] != zipfile.stringCentralDir:
            return None
        n_name = rec[zipfile._CD_FILENAME_LENGTH]
        raw = data[pos + _CENTRAL.size : pos + _CENTRAL.size + n_name]
        if rec[zipfile._CD_EXTRACT_VERSION] > zipfile.MAX_EXTRACT_VERSION:
            utf8 = rec[zipfile._CD_FLAG_BITS] & 0x800
            return raw.decode("utf-8" if utf8 else "cp437", "replace"), rec[
                zipfile._CD_EXTRACT_VERSION]
        pos += (_CENTRAL.size + n_name + rec[zipfile._CD_EXTRA_FIELD_LENGTH]
                + rec[zipfile._CD_COMMENT_LENGTH])
    return None


def too_new_error(fp: BinaryIO, archive: str, exc: NotImplementedError) -> SourceError:
    """The error for zipfile's ``NotImplementedError`` while opening ``archive``."""
    found = first_too_new(fp)
    where = archive if found is None else f"{archive}: member {found[0]!r}"
    version = f"{found[1] / 10:.1f}" if found else "unknown"
    return SourceError(
        where,
        f"the member needs zip version {version} to extract; Python's zipfile reads up to "
        f"{zipfile.MAX_EXTRACT_VERSION / 10:.1f} ({exc})",
        "unpack the archive with 7-Zip or unzip and pass the folder, or ask the publisher "
        "for a plain zip",
    )


# What zipfile lets escape from a damaged member: a bad local header, a deflate/bzip2/lzma
# stream that does not decode (bz2 raises OSError), a CRC mismatch, a name that is not the
# UTF-8 it claims.
MEMBER_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError,
                 UnicodeDecodeError, OSError, lzma.LZMAError)


def member_error(archive: str, name: str, exc: BaseException) -> SourceError:
    return SourceError(f"{archive}: member {name!r}",
                       f"member cannot be read ({type(exc).__name__}: {exc})",
                       "download the archive again (it is corrupt or cut short)")


class CheckedMember(io.BufferedIOBase):
    """zipfile's stream of a compressed member, its errors turned into SourceError."""

    def __init__(self, inner: BinaryIO, archive: str, name: str) -> None:
        super().__init__()
        self._inner, self._archive, self._name = inner, archive, name

    def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except CloudmicError:  # e.g. a StoreError of the remote source: already worded
            raise
        except MEMBER_ERRORS as exc:
            raise member_error(self._archive, self._name, exc) from None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self._inner.seekable()

    def read(self, size: int | None = -1) -> bytes:
        return self._call(self._inner.read, -1 if size is None else size)

    def read1(self, size: int = -1) -> bytes:
        return self._call(self._inner.read, size)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._call(self._inner.seek, offset, whence)

    def tell(self) -> int:
        return self._inner.tell()

    def close(self) -> None:
        if not self.closed:
            self._inner.close()
        super().close()


def open_checked(zf: zipfile.ZipFile, info: zipfile.ZipInfo, archive: str) -> BinaryIO:
    """``zf.open(info)`` as a :class:`CheckedMember`; opening errors are SourceErrors too."""
    try:
        inner = zf.open(info)
    except CloudmicError:
        raise
    except MEMBER_ERRORS as exc:
        raise member_error(archive, info.filename, exc) from None
    return CheckedMember(inner, archive, info.filename)  # type: ignore[return-value]
