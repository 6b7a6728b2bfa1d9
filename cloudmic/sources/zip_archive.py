"""Zip archives read in place: list, stream out or randomly access the members of a local or
remote zip (HTTP range requests, S3 ranged GETs) without unpacking the whole archive.

Opening an archive reads its central directory through :mod:`cloudmic.sources.byte_ranges`
and refuses what :mod:`cloudmic.sources.zip_checks` finds hostile before any member is
read. Decompression is bounded (``zipfile`` inflates at most a read's worth per call),
payloads never exceed their declared size, and every member's CRC-32 is checked by
``zipfile``; extracted files are written as hidden ``.part`` files and renamed once
complete, after a check that the selection fits on the disk.
"""

from __future__ import annotations

import logging
import os
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO, Literal

from cloudmic.errors import SourceError
from cloudmic.sources.byte_ranges import ByteSource, RangeFile, open_source
from cloudmic.sources.file_checks import check_free_space
from cloudmic.sources.transport import CHUNK, KiB, MiB, Progress, RetryPolicy
from cloudmic.sources.zip_checks import (
    DEFAULT_LIMITS,
    HTML_FIX,
    LOCAL_HEADER,
    Member,
    MemberFile,
    NotAZipError,
    ZipLimits,
    check_readable,
    checked_members,
    encoded_len,
    looks_like_html,
    open_checked,
    refuse,
    too_new_error,
)

log = logging.getLogger(__name__)

Select = Callable[[Member], bool]
VerifyExisting = Literal["crc", "size"]


def crc32_file(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(8 * MiB):
            crc = zlib.crc32(chunk, crc)
    return crc


def holds_member(target: Path, m: Member, verify: VerifyExisting, warn: bool = True) -> bool:
    """True when ``target`` already holds the member (same size, and same CRC-32)."""
    if not target.is_file():
        return False
    if target.stat().st_size == m.size and (verify == "size" or crc32_file(target) == m.crc32):
        return True
    if warn:
        log.warning("%s differs from the archive member %s; replacing it", target, m.name)
    return False


def member_path(dest: Path, m: Member) -> Path:
    return dest.joinpath(*m.name.rstrip("/").split("/"))


def choose(members: Iterable[Member], select: Select | None, *,
           skip_junk: bool = True) -> list[Member]:
    """File members ``select`` accepts (all files without it), macOS junk left out."""
    return [m for m in members if not m.is_dir and not (skip_junk and m.junk)
            and (select is None or select(m))]


# ---- the archive ----------------------------------------------------------------------------
class ZipArchive:
    """An open zip, local (a path or ``file://``) or remote (``http(s)://``, ``s3://``).

    Opening reads and checks the central directory; ``members`` lists its entries.
    Use as a context manager; member files from :meth:`open` need the archive open.
    ``label`` is what errors name instead of the source (e.g. the URL of a downloaded copy).
    """

    def __init__(self, source: str | os.PathLike[str] | ByteSource, *,
                 storage_options: dict[str, Any] | None = None,
                 limits: ZipLimits = DEFAULT_LIMITS, retries: int = 5, backoff: float = 0.5,
                 timeout: float = 60.0, label: str | None = None) -> None:
        self.limits = limits
        policy = RetryPolicy(retries=retries, backoff=backoff, timeout=timeout)
        self._src = (source if isinstance(source, ByteSource)
                     else open_source(source, storage_options, policy))
        self.url = label or self._src.url  # what errors name (a URL for a downloaded copy)
        self._zf: zipfile.ZipFile | None = None
        try:
            self._fp = RangeFile(self._src)
            self._zf = self._open_zip()
            self.members = tuple(checked_members(self._zf, self.url, limits))
        except BaseException:
            self.close()
            raise
        self._infos = {i.filename: i for i in self._zf.infolist()}
        self._by_name = {m.name: m for m in self.members}

    def _open_zip(self) -> zipfile.ZipFile:
        try:
            return zipfile.ZipFile(self._fp)
        # ValueError: RangeFile refuses the negative seek zipfile makes in a file < 22 bytes
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, struct.error,
                ValueError) as exc:
            head = self._src.read(0, min(self._src.size, 512)) if self._src.size else b""
            problem = f"not a zip archive, or cut short ({exc})"
            fix = "download it again and check its size and checksum"
            if looks_like_html(head):
                problem = "the file is a web page (HTML), not a zip archive"
                fix = HTML_FIX
            elif head[:4] == b"PK\x03\x04":
                problem = f"the zip archive is cut short or damaged ({exc})"
            raise NotAZipError(self.url, problem, fix) from None
        except NotImplementedError as exc:  # an entry needs a newer zip version
            raise too_new_error(self._fp, self.url, exc) from None

    def __enter__(self) -> ZipArchive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._zf is not None:
            self._zf.close()
            self._zf = None
        self._src.close()

    def _zipfile(self) -> zipfile.ZipFile:
        if self._zf is None:
            raise ValueError(f"{self.url}: the archive is closed")
        return self._zf

    @property
    def size(self) -> int:
        return self._src.size

    def member(self, name: str) -> Member:
        try:
            return self._by_name[name]
        except KeyError:
            names = [m.name for m in self.members if not m.is_dir][:5]
            raise SourceError(f"{self.url}: member {name!r}", "no such member in the archive "
                              f"(it has {', '.join(map(repr, names))}, ...)",
                              "check the name; list_members() shows them all") from None

    def _data_offset(self, m: Member, ahead: int = 0) -> tuple[int, bytes]:
        """Where a member's bytes start: after its local header (checked against the
        central directory, as zipfile does); also the first bytes of the data, up to
        ``ahead``, read in the same request."""
        info = self._infos[m.name]
        n_name = encoded_len(info)
        guess = LOCAL_HEADER.size + n_name + len(info.extra) + 64  # extras rarely differ more
        head = self._src.read(m.header_offset, min(self.size, m.header_offset + guess + ahead))
        if len(head) < LOCAL_HEADER.size + n_name:
            raise refuse(self.url, m.name, "local header lies past the end of the archive")
        fields = LOCAL_HEADER.unpack_from(head)
        sig, n_local, n_extra = fields[0], fields[9], fields[10]
        local_name = head[LOCAL_HEADER.size:LOCAL_HEADER.size + n_local]
        if sig != b"PK\x03\x04" or n_local != n_name or local_name != info.orig_filename.encode(
                "utf-8" if info.flag_bits & 0x800 else "cp437", errors="replace"):
            raise refuse(self.url, m.name, "local header does not match the central directory")
        skip = LOCAL_HEADER.size + n_local + n_extra
        start = m.header_offset + skip
        if start + m.compressed_size > self.size:
            raise refuse(self.url, m.name, "member data runs past the end of the archive")
        return start, head[skip:]

    def open(self, name: str) -> BinaryIO:
        """A read-only file of one member. A stored (uncompressed) member gives a seekable
        window onto the archive: random access costs only the bytes read (its CRC is not
        checked then). A compressed member gives zipfile's stream, which checks the CRC;
        seeking backwards in it decompresses again from the start."""
        m = self.member(name)
        check_readable(m, self.url, self.limits)
        if m.stored:
            if m.compressed_size != m.size:
                raise refuse(self.url, m.name, "stored member whose compressed and "
                              "uncompressed sizes differ")
            start, first = self._data_offset(m, ahead=min(m.size, 64 * KiB))
            return RangeFile(self._src, start, m.size, initial=first)  # type: ignore[return-value]
        return open_checked(self._zipfile(), self._infos[name], self.url)

    def extract(self, dest_dir: str | os.PathLike[str], select: Select | None = None, *,
                skip_junk: bool = True, verify_existing: VerifyExisting = "crc",
                progress: Progress | None = None) -> list[Path]:
        """Write the chosen file members under ``dest_dir`` (folders as in the archive), one
        at a time in bounded memory; return their paths. Members already there with the
        same size and CRC-32 (or size only, with ``verify_existing="size"``) are skipped."""
        dest = Path(dest_dir)
        dest.mkdir(parents=True, exist_ok=True)
        chosen = choose(self.members, select, skip_junk=skip_junk)
        for m in chosen:
            check_readable(m, self.url, self.limits)
        total = sum(m.size for m in chosen)
        if total > self.limits.max_total_bytes:
            raise SourceError(self.url, f"the chosen members expand to {total:,} bytes, above "
                              f"the limit of {self.limits.max_total_bytes:,}", "choose fewer "
                              "members (select=) or raise ZipLimits.max_total_bytes")
        todo = [(m, member_path(dest, m)) for m in chosen]
        todo = [(m, t) for m, t in todo if not holds_member(t, m, verify_existing)]
        need = sum(m.size for m, _ in todo)
        check_free_space(dest, need, f"{len(todo)} members of {self.url}")
        log.info("%s: extracting %d of %d chosen members (%d bytes) to %s", self.url,
                 len(todo), len(chosen), need, dest)
        done = 0
        for m, target in todo:
            def report(n: int, base: int = done) -> None:
                if progress is not None:
                    progress(base + n, need)

            self._extract_one(m, target, report)
            done += m.size
        return [member_path(dest, m) for m in chosen]

    def _extract_one(self, m: Member, target: Path, report: Callable[[int], None]) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_dir():
            raise refuse(self.url, m.name, f"{target} is a folder in the way",
                          "remove it, or extract into another folder")
        part = target.with_name(f".{target.name}.{os.getpid()}.part")
        part.unlink(missing_ok=True)  # a stale one from a crashed run of the same pid
        try:
            n = 0
            # "xb": never write through a link someone left at the .part name
            with self._zipfile().open(self._infos[m.name]) as src, open(part, "xb") as out:
                while chunk := src.read(CHUNK):
                    n += len(chunk)
                    if n > m.size:  # zipfile stops at the declared size; belt and braces
                        raise refuse(self.url, m.name, "member expands beyond its declared "
                                      f"size of {m.size:,} bytes", "do not use this archive")
                    out.write(chunk)
                    report(n)
            if n != m.size:
                raise refuse(self.url, m.name, f"member has {n:,} bytes but the archive "
                              f"says {m.size:,}")
            os.replace(part, target)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError,
                RuntimeError, UnicodeDecodeError) as exc:
            raise refuse(self.url, m.name, f"member cannot be read ({exc})") from None
        finally:
            part.unlink(missing_ok=True)


# ---- module-level helpers -------------------------------------------------------------------
ZipLike = str | os.PathLike[str] | ZipArchive


def list_members(zip_file: ZipLike, **kwargs: Any) -> list[Member]:
    """Every entry of a zip (files and folders) with sizes; for a remote zip this reads only
    its tail (one request for archives with up to a few hundred members)."""
    if isinstance(zip_file, ZipArchive):
        return list(zip_file.members)
    with ZipArchive(zip_file, **kwargs) as z:
        return list(z.members)


def extract_members(zip_file: ZipLike, dest_dir: str | os.PathLike[str],
                    select: Select | None = None, *, skip_junk: bool = True,
                    verify_existing: VerifyExisting = "crc", progress: Progress | None = None,
                    **kwargs: Any) -> list[Path]:
    """Stream the members ``select`` accepts (default: all files) out of a local or remote
    zip into ``dest_dir``, one by one; see :meth:`ZipArchive.extract`."""
    if isinstance(zip_file, ZipArchive):
        return zip_file.extract(dest_dir, select, skip_junk=skip_junk,
                                verify_existing=verify_existing, progress=progress)
    with ZipArchive(zip_file, **kwargs) as z:
        return z.extract(dest_dir, select, skip_junk=skip_junk, verify_existing=verify_existing,
                         progress=progress)


def open_member(zip_file: ZipLike, name: str, **kwargs: Any) -> BinaryIO:
    """One member as a read-only file; see :meth:`ZipArchive.open` (a stored member gives
    random access by range reads). Closing it closes the archive it opened."""
    if isinstance(zip_file, ZipArchive):
        return zip_file.open(name)
    z = ZipArchive(zip_file, **kwargs)
    try:
        inner = z.open(name)
    except BaseException:
        z.close()
        raise
    return _Closing(inner, z)  # type: ignore[return-value]


class _Closing(MemberFile):
    """A member file that also closes the archive it came from."""

    def __init__(self, inner: BinaryIO, owner: ZipArchive) -> None:
        super().__init__(inner)
        self._owner = owner

    def close(self) -> None:
        was_open = not self.closed
        super().close()
        if was_open:
            self._owner.close()
