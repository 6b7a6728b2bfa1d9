"""Zips we did not write, checked before anything is read out of them.

- names: no absolute paths, ``..`` or ``.`` components, drive letters, backslashes or
  control characters (the checks of :mod:`cloudmic.formats.safe_tar`), no name twice (also
  after Unicode normalisation), no file below another file;
- entries: no symbolic links or special files, no encrypted members, no entries whose data
  overlap (the "overlapping files" zip bomb; the Python 3.11 ``zipfile`` does not check);
- sizes: a member above ``max_member_bytes``, a selection above ``max_total_bytes``, or a
  member that expands more than ``max_ratio`` times (deflate tops out near 1030x, which only
  constant filler such as a bomb reaches; sparse label volumes stay near 500x) are refused.

What :mod:`zipfile` itself refuses is given a name here too: it raises a bare
``NotImplementedError("zip file version 18.8")`` for an entry whose "version needed to
extract" is above what it implements (6.3), so the central directory is walked, with the
record layout zipfile uses, to find which member; and the stream it gives for a compressed
member raises zlib/bzip2/lzma errors, ``BadZipFile`` (bad local header, CRC mismatch) or
``UnicodeDecodeError``, which :class:`CheckedMember` turns into a SourceError naming the
archive and member.
"""

from __future__ import annotations

import io
import lzma
import stat
import struct
import unicodedata
import zipfile
import zlib
from dataclasses import dataclass
from typing import Any, BinaryIO

from cloudmic.errors import CloudmicError, SourceError
from cloudmic.formats.safe_tar import check_member_name
from cloudmic.sources.transport import GiB, MiB

DEFAULT_MAX_MEMBER_BYTES = 32 * GiB
DEFAULT_MAX_TOTAL_BYTES = 256 * GiB
DEFAULT_MAX_RATIO = 1000.0
RATIO_MIN_BYTES = 1 * MiB  # small members have silly ratios and do no harm
MAX_MEMBERS = 1_000_000
JUNK_PREFIXES = ("__MACOSX/",)
JUNK_NAMES = (".DS_Store", "Thumbs.db")
METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated",
           zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "lzma"}
LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # 30 bytes, APPNOTE 4.3.7
_CENTRAL = struct.Struct(zipfile.structCentralDir)  # 46 bytes, APPNOTE 4.3.12
_MAX_DIRECTORY = 64 * 1024 * 1024  # zipfile itself reads the directory in one piece
REDOWNLOAD = "download the archive again (it is corrupt or cut short)"
HTML_FIX = ("use the direct download link (Dropbox: ?dl=1, Zenodo: ?download=1), or download "
            "the file in a browser and pass its local path")


class NotAZipError(SourceError):
    """The file is not a zip archive (or is cut short before its central directory)."""


@dataclass(frozen=True, slots=True)
class ZipLimits:
    """Guards against hostile archives; raise them only for archives you trust."""

    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES
    max_ratio: float = DEFAULT_MAX_RATIO
    ratio_min_bytes: int = RATIO_MIN_BYTES
    max_members: int = MAX_MEMBERS


DEFAULT_LIMITS = ZipLimits()


@dataclass(frozen=True, slots=True)
class Member:
    """One entry of a zip's central directory."""

    name: str
    size: int
    compressed_size: int
    crc32: int
    method: int
    header_offset: int
    is_dir: bool = False
    encrypted: bool = False

    @property
    def stored(self) -> bool:
        return self.method == zipfile.ZIP_STORED

    @property
    def method_name(self) -> str:
        return METHODS.get(self.method, f"method {self.method}")

    @property
    def junk(self) -> bool:
        """macOS resource forks and desktop files that zips made on a Mac carry along."""
        base = self.name.rstrip("/").rpartition("/")[2]
        return (self.name.startswith(JUNK_PREFIXES) or base in JUNK_NAMES
                or base.startswith("._"))


def refuse(archive: str, name: str, problem: str, fix: str = REDOWNLOAD) -> SourceError:
    return SourceError(f"{archive}: member {name!r}", problem, fix)


def looks_like_html(head: bytes) -> bool:
    """A web page where a file was expected: what a share link gives without its
    direct-download parameter."""
    return head.lstrip()[:15].lower().startswith((b"<!doctype html", b"<html"))


# ---- the central directory ------------------------------------------------------------------
def encoded_len(info: zipfile.ZipInfo) -> int:
    try:
        return len(info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437"))
    except UnicodeEncodeError:
        return len(info.orig_filename.encode("utf-8"))


def checked_members(zf: zipfile.ZipFile, archive: str, limits: ZipLimits) -> list[Member]:
    infos = zf.infolist()
    if len(infos) > limits.max_members:
        raise SourceError(archive, f"{len(infos):,} members, above the limit of "
                          f"{limits.max_members:,}", "raise ZipLimits.max_members if the "
                          "archive is expected to be this large")
    members: list[Member] = []
    seen: dict[str, str] = {}
    files: set[str] = set()
    for info in infos:
        name = info.filename
        is_dir = name.endswith("/")  # ZipInfo.is_dir() fails on an empty name
        bare = name[:-1] if is_dir else name
        check_member_name(bare, archive=archive, allow_dirs=True)
        kind = stat.S_IFMT(info.external_attr >> 16)
        if kind == stat.S_IFLNK:
            raise refuse(archive, name, "member is a symbolic link; links are refused")
        if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
            raise refuse(archive, name, "member is a device, FIFO or socket, not a file")
        key = unicodedata.normalize("NFC", bare)
        if key in seen:
            same = "" if seen[key] == name else f" (as {seen[key]!r}, after Unicode normalisation)"
            raise refuse(archive, name, f"member name appears twice{same}; which copy is meant "
                         "is ambiguous", "rebuild the archive from the original files")
        seen[key] = name
        if not is_dir:
            files.add(key)
        members.append(Member(name, info.file_size, info.compress_size, info.CRC,
                              info.compress_type, info.header_offset, is_dir,
                              bool(info.flag_bits & 0x1)))
    for key, name in seen.items():
        parts = key.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in files:
                raise refuse(archive, name, f"member lies below {'/'.join(parts[:i])!r}, "
                             "which is a file", "rebuild the archive from the original files")
    _check_overlaps(infos, archive, zf.start_dir)
    return members


def _check_overlaps(infos: list[zipfile.ZipInfo], archive: str, start_dir: int) -> None:
    """Each member's local header and data must end before the next one starts."""
    spans = sorted((i.header_offset, i.header_offset + LOCAL_HEADER.size + encoded_len(i)
                    + i.compress_size, i.filename) for i in infos)
    prev_end, prev_name = 0, None
    for start, end, name in spans:
        if start < prev_end:
            raise refuse(archive, name, f"member data overlaps member {prev_name!r} (a zip "
                         "bomb trick: overlapping entries)", "do not use this archive")
        prev_end, prev_name = end, name
    if prev_end > start_dir:
        raise refuse(archive, str(prev_name), "member data runs into the central directory")


def check_readable(m: Member, archive: str, limits: ZipLimits) -> None:
    if m.is_dir:
        raise refuse(archive, m.name, "member is a folder, not a file", "pick a file member")
    if m.encrypted:
        raise refuse(archive, m.name, "member is encrypted; only plain archives are read",
                     "unpack the archive by hand and pass the folder")
    if m.method not in METHODS:
        raise refuse(archive, m.name, f"member uses compression {m.method_name}, which "
                     "Python's zipfile cannot read", "unpack the archive with 7-Zip or unzip "
                     "and pass the folder")
    if m.size > limits.max_member_bytes:
        raise refuse(archive, m.name, f"member expands to {m.size:,} bytes, above the "
                     f"limit of {limits.max_member_bytes:,}", "raise "
                     "ZipLimits.max_member_bytes if members this large are expected")
    if m.size > limits.ratio_min_bytes and m.size > limits.max_ratio * max(m.compressed_size, 1):
        raise refuse(archive, m.name, f"member expands {m.size / max(m.compressed_size, 1):,.0f}"
                     f"x ({m.compressed_size:,} -> {m.size:,} bytes), above the limit of "
                     f"{limits.max_ratio:,.0f}x: a zip bomb", "do not use this archive; "
                     "raise ZipLimits.max_ratio only if you trust it")


# ---- what zipfile refuses without naming a member -------------------------------------------
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
    return refuse(archive, name, f"member cannot be read ({type(exc).__name__}: {exc})")


class MemberFile(io.BufferedIOBase):
    """A read-only member file that hands every call to ``inner`` through :meth:`_call`
    (the hook subclasses use to reword errors)."""

    def __init__(self, inner: BinaryIO) -> None:
        super().__init__()
        self._inner = inner

    def _call(self, fn: Any, *args: Any) -> Any:
        return fn(*args)

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


class CheckedMember(MemberFile):
    """zipfile's stream of a compressed member, its errors turned into SourceError."""

    def __init__(self, inner: BinaryIO, archive: str, name: str) -> None:
        super().__init__(inner)
        self._archive, self._name = archive, name

    def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except CloudmicError:  # e.g. a StoreError of the remote source: already worded
            raise
        except MEMBER_ERRORS as exc:
            raise member_error(self._archive, self._name, exc) from None


def open_checked(zf: zipfile.ZipFile, info: zipfile.ZipInfo, archive: str) -> BinaryIO:
    """``zf.open(info)`` as a :class:`CheckedMember`; opening errors are SourceErrors too."""
    try:
        inner = zf.open(info)
    except CloudmicError:
        raise
    except MEMBER_ERRORS as exc:
        raise member_error(archive, info.filename, exc) from None
    return CheckedMember(inner, archive, info.filename)  # type: ignore[return-value]
