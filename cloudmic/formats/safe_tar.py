"""Streaming tar reading for archives we did not write (STED-FM, WebDataset-style sources).

Members are read into memory one by one and never extracted to disk, so path tricks
(``../x``, ``/etc/x``, symlinks) cannot write anywhere; they are still refused, because a
name like that means the archive is not what the published layout promises, and because a
caller might later use the name as a path. Works on any binary file object with ``read``:
a local ``open()``, an fsspec/s3fs file, a pipe.

Memory bound: one member's payload at a time (at most ``max_member_bytes``, 64 MiB by
default), plus tarfile's metadata headers (pax extended headers, GNU long names), which
tarfile reads whole before the member they describe: each is refused above
``MAX_META_BYTES`` (1 MiB), since in a compressed tar a few KB can declare gigabytes. The
codec is chosen from the magic bytes (gzip, bzip2: < 8 MiB of state; xz: its dictionary
capped at ``MAX_XZ_MEMORY``, 256 MiB); anything else is read as an uncompressed tar.
Headers already read are dropped, so a million members cost no more than one.
"""

from __future__ import annotations

import io
import logging
import lzma
import re
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from cloudmic.errors import SourceError

log = logging.getLogger(__name__)

MiB = 1024 * 1024
DEFAULT_MAX_MEMBER_BYTES = 64 * MiB

MAX_META_BYTES = 1 * MiB  # a pax header or GNU long name; real ones are < 1 KB
_META_TYPES = frozenset(
    {tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
     tarfile.SOLARIS_XHDTYPE}
)

# What tarfile lets escape from a damaged stream besides TarError (a gzip header cut short
# gives TypeError from ord(b""), a bad deflate block zlib.error).
_STREAM_ERRORS = (tarfile.TarError, EOFError, OSError, TypeError, zlib.error, lzma.LZMAError)
_MAX_COMPONENT_BYTES = 255  # NAME_MAX of every common file system

_DRIVE = re.compile(r"^[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_REBUILD = "rebuild the archive from the original files, or download it again"


def _refuse(archive: str, name: str, problem: str, fix: str = _REBUILD) -> SourceError:
    return SourceError(f"{archive}: member {name!r}", problem, fix)


def check_member_name(name: str, *, archive: str, allow_dirs: bool = False) -> None:
    """Refuse names that could escape a folder or that the flat STED-FM layout never has."""
    if not name:
        raise _refuse(archive, name, "member has an empty name")
    if _CONTROL.search(name):
        raise _refuse(archive, name, "member name contains control characters")
    if "\\" in name or _DRIVE.match(name):
        raise _refuse(archive, name, "member name is a Windows path (backslash or drive letter)")
    if name.startswith("/"):
        raise _refuse(archive, name, "member name is an absolute path")
    parts = name.split("/")
    if ".." in parts:
        raise _refuse(archive, name, "member name contains a '..' component (path traversal)")
    if "." in parts:
        # 'a/./b' and 'a/b' are one path on disk: two members would overwrite each other.
        raise _refuse(archive, name, "member name contains a '.' component")
    if any(len(p.encode("utf-8", "surrogateescape")) > _MAX_COMPONENT_BYTES for p in parts):
        raise _refuse(archive, name[:80] + "...", "member name has a component longer than "
                      f"{_MAX_COMPONENT_BYTES} bytes, which no file system can hold")
    if len(parts) > 1 and not allow_dirs:
        raise _refuse(
            archive,
            name,
            "member lies in a folder, but this archive layout has flat member names only",
            "repack the archive without folders (or read it with allow_dirs=True if "
            "folders are expected in this source)",
        )
    if allow_dirs and "" in parts:
        raise _refuse(archive, name, "member name has an empty path component ('//')")


def _check_member(
    info: tarfile.TarInfo, *, archive: str, max_member_bytes: int, allow_dirs: bool
) -> bool:
    """True for a regular file to read, False for a directory entry to skip; raise otherwise."""
    name = info.name
    if info.isdir():
        # Pure folder entries carry no data; what matters is the files' own names.
        log.debug("%s: skipping directory entry %r", archive, name)
        return False
    check_member_name(name, archive=archive, allow_dirs=allow_dirs)
    if info.issym() or info.islnk():
        kind = "symbolic link" if info.issym() else "hard link"
        raise _refuse(archive, name, f"member is a {kind} to {info.linkname!r}; links are refused")
    if info.ischr() or info.isblk() or info.isfifo():
        raise _refuse(archive, name, "member is a device or FIFO, not a regular file")
    if info.issparse():
        # A sparse member's header size is not what it expands to on read.
        raise _refuse(archive, name, "member is a GNU sparse file; sparse members are refused")
    if not info.isreg():
        raise _refuse(archive, name, f"member has an unsupported tar type {info.type!r}")
    if info.size > max_member_bytes:
        raise _refuse(
            archive,
            name,
            f"member is {info.size:,} bytes, above the limit of {max_member_bytes:,} bytes",
            "raise max_member_bytes if members this large are expected, else rebuild the archive",
        )
    return True


class _MetaTooLarge(Exception):
    """Internal: a pax/long-name header larger than MAX_META_BYTES (raised inside tarfile)."""


class _BoundedTarInfo(tarfile.TarInfo):
    """tarfile reads a pax or long-name header's payload whole: bound it first."""

    def _proc_member(self, tf: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _META_TYPES and self.size > MAX_META_BYTES:
            raise _MetaTooLarge(
                f"a metadata header (tar type {self.type!r}) of {self.size:,} bytes, above "
                f"the limit of {MAX_META_BYTES:,}"
            )
        return super()._proc_member(tf)


def _open_error(archive: str, exc: Exception) -> SourceError:
    if isinstance(exc, _MetaTooLarge):
        return SourceError(archive, f"refused: {exc} (a tar bomb, or not a tar)", _REBUILD)
    return SourceError(
        archive,
        f"not a readable tar archive, or cut short ({type(exc).__name__}: {exc})",
        "download the archive again and check its size and checksum",
    )


_XZ_MAGIC, _GZ_MAGIC, _BZ2_MAGIC = b"\xfd7zXZ\x00", b"\x1f\x8b", b"BZh"
MAX_XZ_MEMORY = 256 * MiB  # xz's dictionary comes from the header; xz -9 needs 65 MiB


class _Prefixed(io.RawIOBase):
    """``head`` (bytes already read to sniff the format), then the rest of ``inner``."""

    def __init__(self, head: bytes, inner: BinaryIO) -> None:
        super().__init__()
        self._head, self._inner = head, inner

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self._head:
            n = min(len(b), len(self._head))
            b[:n], self._head = self._head[:n], self._head[n:]
            return n
        data = self._inner.read(len(b))
        b[: len(data)] = data
        return len(data)


class _XzReader(io.RawIOBase):
    """xz decompression whose dictionary is capped (tarfile's own has no memory limit)."""

    def __init__(self, inner: BinaryIO) -> None:
        super().__init__()
        self._inner, self._out = inner, b""
        self._dec = lzma.LZMADecompressor(lzma.FORMAT_XZ, memlimit=MAX_XZ_MEMORY)

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._out and not self._dec.eof:
            chunk = b"" if self._dec.needs_input is False else self._inner.read(64 * 1024)
            if not chunk and self._dec.needs_input:
                raise EOFError("the xz stream is cut short")
            self._out = self._dec.decompress(chunk, max_length=len(b))
        n = min(len(b), len(self._out))
        b[:n], self._out = self._out[:n], self._out[n:]
        return n


def _sniffed(fileobj: BinaryIO, mode: str) -> tuple[Any, str]:
    """(file object, explicit tarfile mode) for a ``*`` mode, from the magic bytes.

    tarfile's own ``*`` tries every codec in turn, so random bytes reach its legacy .lzma
    reader, which allocates the dictionary size the first bytes name (up to 4 GiB).
    """
    if not mode.endswith("*"):
        return fileobj, mode
    stream = mode[1]
    head = fileobj.read(6)
    if stream == ":":
        fileobj.seek(-len(head), io.SEEK_CUR)
        rest: Any = fileobj
    else:
        rest = io.BufferedReader(_Prefixed(head, fileobj))
    if head.startswith(_XZ_MAGIC):
        return io.BufferedReader(_XzReader(rest)), "r|"
    codec = "gz" if head.startswith(_GZ_MAGIC) else "bz2" if head.startswith(_BZ2_MAGIC) else ""
    return rest, f"r{stream}{codec}"


def _open_tar(fileobj: BinaryIO, mode: str, archive: str) -> tarfile.TarFile:
    try:
        fileobj, mode = _sniffed(fileobj, mode)
        return tarfile.open(fileobj=fileobj, mode=mode, tarinfo=_BoundedTarInfo)
    except (*_STREAM_ERRORS, _MetaTooLarge) as exc:
        raise _open_error(archive, exc) from exc


def _next(tf: tarfile.TarFile, archive: str) -> tarfile.TarInfo | None:
    try:
        info = tf.next()
    except (*_STREAM_ERRORS, _MetaTooLarge) as exc:
        raise _open_error(archive, exc) from exc
    # Both modes append every header to tf.members; with ~10^6 members that list would be
    # the only thing growing, so drop it (nothing here looks back).
    tf.members = []
    return info


def iter_tar_members(
    fileobj: BinaryIO,
    *,
    archive: str,
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
    max_archive_bytes: int | None = None,
    allow_dirs: bool = False,
) -> Iterator[tuple[str, bytes]]:
    """Yield ``(name, payload)`` for each regular file, in archive order, streaming.

    Checks run on each header before its payload is read, so an oversized or hostile
    member costs no memory. ``max_archive_bytes`` bounds the sum of payload sizes.
    Compressed tars (gz, bz2, xz) are detected from the stream.
    """
    total = 0
    with _open_tar(fileobj, "r|*", archive) as tf:
        while (info := _next(tf, archive)) is not None:
            if not _check_member(
                info, archive=archive, max_member_bytes=max_member_bytes, allow_dirs=allow_dirs
            ):
                continue
            total += info.size
            if max_archive_bytes is not None and total > max_archive_bytes:
                raise _refuse(
                    archive,
                    info.name,
                    f"the members up to this one add up to {total:,} bytes, above the "
                    f"archive limit of {max_archive_bytes:,} bytes",
                    "raise max_archive_bytes if the archive is expected to be this large",
                )
            yield info.name, _read_payload(tf, info, archive=archive)


def _read_payload(tf: tarfile.TarFile, info: tarfile.TarInfo, *, archive: str) -> bytes:
    try:
        handle = tf.extractfile(info)
        payload = handle.read() if handle is not None else b""
    except _STREAM_ERRORS as exc:
        raise _refuse(
            archive,
            info.name,
            f"payload cannot be read, the archive is cut short ({type(exc).__name__}: {exc})",
            "download the archive again",
        ) from exc
    if len(payload) != info.size:
        raise _refuse(
            archive,
            info.name,
            f"payload has {len(payload):,} bytes but its header says {info.size:,}",
            "download the archive again",
        )
    return payload


def _checked_headers(
    fileobj: BinaryIO, mode: str, *, archive: str, max_member_bytes: int, allow_dirs: bool
) -> Iterator[tarfile.TarInfo]:
    with _open_tar(fileobj, mode, archive) as tf:
        while (info := _next(tf, archive)) is not None:
            if _check_member(
                info, archive=archive, max_member_bytes=max_member_bytes, allow_dirs=allow_dirs
            ):
                yield info


def _seekable(fileobj: BinaryIO) -> bool:
    return bool(getattr(fileobj, "seekable", lambda: False)())


def list_tar_members(
    fileobj: BinaryIO,
    *,
    archive: str,
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
    allow_dirs: bool = False,
) -> list[tuple[str, int]]:
    """``(name, size)`` of each regular file, with the same checks as :func:`iter_tar_members`.

    A seekable file object is read header by header (payloads are skipped with seeks, so a
    remote file costs a few small range reads per member); otherwise the tar is streamed.
    Compressed tars work too (through decompression).
    """
    mode = "r:*" if _seekable(fileobj) else "r|*"
    headers = _checked_headers(
        fileobj, mode, archive=archive, max_member_bytes=max_member_bytes, allow_dirs=allow_dirs
    )
    return [(info.name, info.size) for info in headers]


@dataclass(frozen=True, slots=True)
class TarEntry:
    """A regular file in an uncompressed tar: its payload is ``file[offset : offset + size]``."""

    name: str
    size: int
    offset: int


def scan_tar(
    fileobj: BinaryIO,
    *,
    archive: str,
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
    allow_dirs: bool = False,
) -> list[TarEntry]:
    """Name, size and payload offset of each regular file, with the checks of
    :func:`iter_tar_members`, so that members can later be read by byte range (one GET each)
    without walking the archive again.

    Offsets only mean something in an uncompressed tar, so compressed ones are refused.
    Payloads are skipped with seeks when ``fileobj`` is seekable.
    """
    mode = "r:" if _seekable(fileobj) else "r|"
    try:
        headers = _checked_headers(
            fileobj, mode, archive=archive, max_member_bytes=max_member_bytes,
            allow_dirs=allow_dirs,
        )  # fmt: skip
        return [TarEntry(info.name, info.size, info.offset_data) for info in headers]
    except SourceError as exc:
        if "not a readable tar" not in exc.problem:
            raise
        raise SourceError(
            archive,
            f"{exc.problem}; byte-range access needs an uncompressed tar",
            "if the archive is compressed (.tar.gz, .tar.xz, ...), decompress it first; "
            "otherwise download it again",
        ) from exc
