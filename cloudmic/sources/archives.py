"""Zip archives read in place: list, stream out or randomly access the members of a local or
remote zip (HTTP range requests, S3 ranged GETs) without unpacking the whole archive.

A remote zip costs one request to list (the last 64 KiB, which holds the central directory
of archives with up to a few hundred members), and about one more per member read: reads
go through a seekable window onto the archive that reads ahead, and reads further ahead
the longer a read stays sequential (64 KiB up to 8 MiB per request).

Archives we did not write are checked before anything is read out of them:

- names: no absolute paths, ``..`` or ``.`` components, drive letters, backslashes or
  control characters (the checks of :mod:`cloudmic.formats.safe_tar`), no name twice (also
  after Unicode normalisation), no file below another file;
- entries: no symbolic links or special files, no encrypted members, no entries whose data
  overlap (the "overlapping files" zip bomb; the Python 3.11 ``zipfile`` does not check);
- sizes: a member above ``max_member_bytes``, a selection above ``max_total_bytes``, or a
  member that expands more than ``max_ratio`` times (deflate tops out near 1030x, which only
  constant filler such as a bomb reaches; sparse label volumes stay near 500x) are refused,
  as is a selection that does not fit on the disk.

Decompression is bounded (``zipfile`` inflates at most a read's worth per call), payloads
never exceed their declared size, and every member's CRC-32 is checked by ``zipfile``.
Extracted files are written as hidden ``.part`` files and renamed once complete.
"""

from __future__ import annotations

import http.client
import io
import json
import logging
import os
import shutil
import stat
import struct
import unicodedata
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

from cloudmic.errors import SourceError
from cloudmic.formats.safe_tar import check_member_name
from cloudmic.sources.fetch import (
    CHUNK,
    Expected,
    GiB,
    KiB,
    MiB,
    Progress,
    RangeNotSatisfiable,
    RetryPolicy,
    TransientError,
    check_free_space,
    describe_error,
    fetch,
    filesystem_for,
    http_get,
    name_from_url,
    run_with_retries,
    url_scheme,
    verify_file,
)
from cloudmic.sources.zip_checks import open_checked, too_new_error

log = logging.getLogger(__name__)

DEFAULT_MAX_MEMBER_BYTES = 32 * GiB
DEFAULT_MAX_TOTAL_BYTES = 256 * GiB
DEFAULT_MAX_RATIO = 1000.0
RATIO_MIN_BYTES = 1 * MiB  # small members have silly ratios and do no harm
MAX_MEMBERS = 1_000_000
TAIL_BYTES = 64 * KiB
MAX_READ = 64 * MiB  # the largest single read of an archive (a central directory)
MARKER_DIR = ".cloudmic-sources"
JUNK_PREFIXES = ("__MACOSX/",)
JUNK_NAMES = (".DS_Store", "Thumbs.db")
METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated",
           zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "lzma"}
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # 30 bytes, APPNOTE 4.3.7
_REDOWNLOAD = "download the archive again (it is corrupt or cut short)"

Select = Callable[["Member"], bool]


class NotAZipError(SourceError):
    """The file is not a zip archive (or is cut short before its central directory)."""


class RangeNotSupportedError(SourceError):
    """The server does not answer byte-range requests, so members cannot be read in place."""


@dataclass(frozen=True, slots=True)
class ZipLimits:
    """Guards against hostile archives; raise them only for archives you trust."""

    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES
    max_ratio: float = DEFAULT_MAX_RATIO
    ratio_min_bytes: int = RATIO_MIN_BYTES
    max_members: int = MAX_MEMBERS


DEFAULT_LIMITS = ZipLimits()
DEFAULT_POLICY = RetryPolicy()

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


def _refuse(archive: str, name: str, problem: str, fix: str = _REDOWNLOAD) -> SourceError:
    return SourceError(f"{archive}: member {name!r}", problem, fix)


# ---- byte sources ---------------------------------------------------------------------------
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
                                   f"byte {end:,} (it shrank while being read?)", _REDOWNLOAD)
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
            raise NotAZipError(self.url, "the file is empty", _REDOWNLOAD) from None
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
    """An ``s3://`` object read by ranged GETs through s3fs."""

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
                raise SourceError(self.url, f"access denied ({exc})", "check the credentials "
                                  "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
                                  "AWS_ENDPOINT_URL)") from None
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
    if scheme == "s3":
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


class _Closing(io.BufferedIOBase):
    """A member file that also closes the archive it came from."""

    def __init__(self, inner: BinaryIO, owner: ZipArchive) -> None:
        super().__init__()
        self._inner, self._owner = inner, owner

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self._inner.seekable()

    def read(self, size: int | None = -1) -> bytes:
        return self._inner.read(-1 if size is None else size)

    def read1(self, size: int = -1) -> bytes:
        return self._inner.read(size)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._inner.seek(offset, whence)

    def tell(self) -> int:
        return self._inner.tell()

    def close(self) -> None:
        if not self.closed:
            self._inner.close()
            self._owner.close()
        super().close()


# ---- checks ---------------------------------------------------------------------------------
def _encoded_len(info: zipfile.ZipInfo) -> int:
    try:
        return len(info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437"))
    except UnicodeEncodeError:
        return len(info.orig_filename.encode("utf-8"))


def _checked_members(zf: zipfile.ZipFile, archive: str, limits: ZipLimits) -> list[Member]:
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
            raise _refuse(archive, name, "member is a symbolic link; links are refused")
        if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
            raise _refuse(archive, name, "member is a device, FIFO or socket, not a file")
        key = unicodedata.normalize("NFC", bare)
        if key in seen:
            same = "" if seen[key] == name else f" (as {seen[key]!r}, after Unicode normalisation)"
            raise _refuse(archive, name, f"member name appears twice{same}; which copy is meant "
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
                raise _refuse(archive, name, f"member lies below {'/'.join(parts[:i])!r}, "
                              "which is a file", "rebuild the archive from the original files")
    _check_overlaps(infos, archive, zf.start_dir)
    return members


def _check_overlaps(infos: list[zipfile.ZipInfo], archive: str, start_dir: int) -> None:
    """Each member's local header and data must end before the next one starts."""
    spans = sorted((i.header_offset, i.header_offset + _LOCAL_HEADER.size + _encoded_len(i)
                    + i.compress_size, i.filename) for i in infos)
    prev_end, prev_name = 0, None
    for start, end, name in spans:
        if start < prev_end:
            raise _refuse(archive, name, f"member data overlaps member {prev_name!r} (a zip "
                          "bomb trick: overlapping entries)", "do not use this archive")
        prev_end, prev_name = end, name
    if prev_end > start_dir:
        raise _refuse(archive, str(prev_name), "member data runs into the central directory")


def _check_readable(m: Member, archive: str, limits: ZipLimits) -> None:
    if m.is_dir:
        raise _refuse(archive, m.name, "member is a folder, not a file", "pick a file member")
    if m.encrypted:
        raise _refuse(archive, m.name, "member is encrypted; only plain archives are read",
                      "unpack the archive by hand and pass the folder")
    if m.method not in METHODS:
        raise _refuse(archive, m.name, f"member uses compression {m.method_name}, which "
                      "Python's zipfile cannot read", "unpack the archive with 7-Zip or unzip "
                      "and pass the folder")
    if m.size > limits.max_member_bytes:
        raise _refuse(archive, m.name, f"member expands to {m.size:,} bytes, above the "
                      f"limit of {limits.max_member_bytes:,}", "raise "
                      "ZipLimits.max_member_bytes if members this large are expected")
    if m.size > limits.ratio_min_bytes and m.size > limits.max_ratio * max(m.compressed_size, 1):
        raise _refuse(archive, m.name, f"member expands {m.size / max(m.compressed_size, 1):,.0f}"
                      f"x ({m.compressed_size:,} -> {m.size:,} bytes), above the limit of "
                      f"{limits.max_ratio:,.0f}x: a zip bomb", "do not use this archive; "
                      "raise ZipLimits.max_ratio only if you trust it")


def crc32_file(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(8 * MiB):
            crc = zlib.crc32(chunk, crc)
    return crc


VerifyExisting = Literal["crc", "size"]


def _present(target: Path, m: Member, verify: VerifyExisting, warn: bool = True) -> bool:
    """True when ``target`` already holds the member (same size, and same CRC-32)."""
    if not target.is_file():
        return False
    if target.stat().st_size == m.size and (verify == "size" or crc32_file(target) == m.crc32):
        return True
    if warn:
        log.warning("%s differs from the archive member %s; replacing it", target, m.name)
    return False


def _target(dest: Path, m: Member) -> Path:
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
            self.members = tuple(_checked_members(self._zf, self.url, limits))
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
            if head.lstrip()[:15].lower().startswith((b"<!doctype html", b"<html")):
                problem = "the file is a web page (HTML), not a zip archive"
                fix = ("use the direct download link (Dropbox: ?dl=1, Zenodo: ?download=1), "
                       "or download the file in a browser and pass its local path")
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
        n_name = _encoded_len(info)
        guess = _LOCAL_HEADER.size + n_name + len(info.extra) + 64  # extras rarely differ more
        head = self._src.read(m.header_offset, min(self.size, m.header_offset + guess + ahead))
        if len(head) < _LOCAL_HEADER.size + n_name:
            raise _refuse(self.url, m.name, "local header lies past the end of the archive")
        fields = _LOCAL_HEADER.unpack_from(head)
        sig, n_local, n_extra = fields[0], fields[9], fields[10]
        local_name = head[_LOCAL_HEADER.size:_LOCAL_HEADER.size + n_local]
        if sig != b"PK\x03\x04" or n_local != n_name or local_name != info.orig_filename.encode(
                "utf-8" if info.flag_bits & 0x800 else "cp437", errors="replace"):
            raise _refuse(self.url, m.name, "local header does not match the central directory")
        skip = _LOCAL_HEADER.size + n_local + n_extra
        start = m.header_offset + skip
        if start + m.compressed_size > self.size:
            raise _refuse(self.url, m.name, "member data runs past the end of the archive")
        return start, head[skip:]

    def open(self, name: str) -> BinaryIO:
        """A read-only file of one member. A stored (uncompressed) member gives a seekable
        window onto the archive: random access costs only the bytes read (its CRC is not
        checked then). A compressed member gives zipfile's stream, which checks the CRC;
        seeking backwards in it decompresses again from the start."""
        m = self.member(name)
        _check_readable(m, self.url, self.limits)
        if m.stored:
            if m.compressed_size != m.size:
                raise _refuse(self.url, m.name, "stored member whose compressed and "
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
            _check_readable(m, self.url, self.limits)
        total = sum(m.size for m in chosen)
        if total > self.limits.max_total_bytes:
            raise SourceError(self.url, f"the chosen members expand to {total:,} bytes, above "
                              f"the limit of {self.limits.max_total_bytes:,}", "choose fewer "
                              "members (select=) or raise ZipLimits.max_total_bytes")
        todo = [(m, _target(dest, m)) for m in chosen]
        todo = [(m, t) for m, t in todo if not _present(t, m, verify_existing)]
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
        return [_target(dest, m) for m in chosen]

    def _extract_one(self, m: Member, target: Path, report: Callable[[int], None]) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_dir():
            raise _refuse(self.url, m.name, f"{target} is a folder in the way",
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
                        raise _refuse(self.url, m.name, "member expands beyond its declared "
                                      f"size of {m.size:,} bytes", "do not use this archive")
                    out.write(chunk)
                    report(n)
            if n != m.size:
                raise _refuse(self.url, m.name, f"member has {n:,} bytes but the archive "
                              f"says {m.size:,}")
            os.replace(part, target)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError,
                RuntimeError, UnicodeDecodeError) as exc:
            raise _refuse(self.url, m.name, f"member cannot be read ({exc})") from None
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


# ---- materialize ----------------------------------------------------------------------------
def _is_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4)
    return head in (b"PK\x03\x04", b"PK\x05\x06")  # a member first, or an empty zip


def _looks_like_html(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(512).lstrip()[:15].lower()
    return head.startswith((b"<!doctype html", b"<html"))


@dataclass(frozen=True)
class _Marker:
    """What a previous run found: the archive's listing (so a re-run needs no network)."""

    url: str
    expect: dict[str, Any]
    kind: Literal["zip", "file"]
    members: tuple[Member, ...] = ()

    @classmethod
    def load(cls, path: Path) -> _Marker | None:
        try:
            raw = json.loads(path.read_text())
            return cls(raw["url"], raw["expect"], raw["kind"],
                       tuple(Member(**m) for m in raw.get("members", ())))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        blob = {"url": self.url, "expect": self.expect, "kind": self.kind,
                "members": [asdict(m) for m in self.members]}
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(blob, indent=1))
        os.replace(tmp, path)


def _expected(download: Any) -> dict[str, Any]:
    """sha256 / md5 / size of a manifest ``Download`` (fields it lacks count as unknown)."""
    return {"sha256": getattr(download, "sha256", None), "md5": getattr(download, "md5", None),
            "size": getattr(download, "bytes", None)}


def materialize(url_or_path: str | os.PathLike[str] | None, dest_dir: str | os.PathLike[str],
                manifest_download: Any = None, *, select: Select | None = None,
                name: str | None = None, stream: bool | None = None,
                keep_archive: bool = False, cache_dir: str | os.PathLike[str] | None = None,
                verify_existing: VerifyExisting = "crc", skip_junk: bool = True,
                limits: ZipLimits = DEFAULT_LIMITS, retries: int = 5, backoff: float = 0.5,
                timeout: float = 60.0, progress: Progress | None = None,
                storage_options: dict[str, Any] | None = None) -> Path:
    """Make a published archive a local folder tree the dataset adapters read; return it.

    ``url_or_path`` (default: ``manifest_download.url``) is a zip or another file, remote
    (``http(s)://``, ``s3://``) or local. ``manifest_download`` (a manifest ``Download``)
    gives the expected ``sha256`` / ``md5`` / ``bytes``. A zip's members go under
    ``dest_dir`` with the archive's folders (the platelet-em zip makes
    ``dest_dir/platelet-em/...``); another remote file (a tar) is downloaded into
    ``dest_dir``; a local folder or non-zip file is returned as it is.

    A remote zip is downloaded whole (resumable, checksum verified, into ``cache_dir``,
    default ``dest_dir/.cloudmic-sources/downloads``, removed after extraction unless
    ``keep_archive``) when ``select`` is None; with ``select`` (or ``stream=True``) only
    the chosen members are read in place by range requests, each verified by its CRC-32
    (the archive's own checksum cannot be checked then), falling back to a whole download
    when the server serves no ranges. Members already extracted and verified are skipped;
    a re-run whose files are all in place makes no request at all (the listing is kept in
    ``dest_dir/.cloudmic-sources/<name>.json``).
    """
    if url_or_path is None:
        if manifest_download is None:
            raise ValueError("materialize needs a URL or path, or a manifest download")
        url_or_path = manifest_download.url
    source = os.fspath(url_or_path)
    scheme = url_scheme(source)
    expect_kw = _expected(manifest_download)
    expect = Expected.make(**expect_kw)
    dest = Path(dest_dir)
    if scheme == "file":
        local = Path(source.removeprefix("file://")).expanduser()
        if local.is_dir():
            return local
        if not local.is_file():
            raise SourceError(local, "no such file or folder", "check the path")
    name = name or getattr(manifest_download, "name", None) or name_from_url(source)
    dest.mkdir(parents=True, exist_ok=True)
    marker_path = dest / MARKER_DIR / f"{name}.json"
    marker = _Marker.load(marker_path)
    if marker is not None and marker.url == source and marker.expect == expect_kw:
        if marker.kind == "file" and (dest / name).is_file() and verify_file(
                dest / name, expect) is None:
            log.info("%s: already in %s", source, dest)
            return dest
        if marker.kind == "zip":
            chosen = choose(marker.members, select, skip_junk=skip_junk)
            if all(_present(_target(dest, m), m, verify_existing, warn=False) for m in chosen):
                log.info("%s: all %d chosen members already in %s", source, len(chosen), dest)
                return dest

    policy_kw = {"retries": retries, "backoff": backoff, "timeout": timeout}
    archive: ZipArchive | None = None
    downloaded: Path | None = None
    if scheme == "file":
        local = Path(source.removeprefix("file://")).expanduser()
        problem = verify_file(local, expect)
        if problem is not None:
            raise SourceError(local, f"not the published file: {problem}", "download it again")
        if not _is_zip(local):
            return local
        archive = ZipArchive(local, limits=limits)
    else:
        use_stream = select is not None if stream is None else stream
        if use_stream:
            try:
                archive = ZipArchive(source, storage_options=storage_options, limits=limits,
                                     **policy_kw)
            except (RangeNotSupportedError, NotAZipError) as exc:
                log.info("%s: cannot read members in place (%s); downloading it whole",
                         source, exc.problem)
            else:
                if expect.sha256 or expect.md5:
                    log.info("%s: reading members in place; each is checked by its CRC-32, the "
                             "archive's checksum is not", source)
        if archive is None:
            cache = Path(cache_dir) if cache_dir is not None else dest / MARKER_DIR / "downloads"
            downloaded = fetch(source, cache, name=name, progress=progress,
                               storage_options=storage_options, **expect_kw, **policy_kw)
            if not _is_zip(downloaded):
                if _looks_like_html(downloaded):
                    downloaded.unlink()
                    raise SourceError(source, "the download is a web page (HTML), not the "
                                      "file", "use the direct download link (Dropbox: ?dl=1, "
                                      "Zenodo: ?download=1), or download it in a browser and "
                                      "pass its local path")
                final = dest / name
                shutil.move(downloaded, final)
                _Marker(source, expect_kw, "file").save(marker_path)
                return dest
            archive = ZipArchive(downloaded, limits=limits,
                                 label=f"{source} (downloaded to {downloaded})")
    with archive:
        _Marker(source, expect_kw, "zip", archive.members).save(marker_path)
        archive.extract(dest, select, skip_junk=skip_junk, verify_existing=verify_existing,
                        progress=progress)
    if downloaded is not None and not keep_archive:
        downloaded.unlink(missing_ok=True)
    return dest


def materialize_manifest(manifest: Any, dest_dir: str | os.PathLike[str], *,
                         select: Select | None = None, only: Callable[[Any], bool] | None = None,
                         **kwargs: Any) -> Path:
    """Materialize the ``source.downloads`` of a manifest (those ``only`` accepts) into
    ``dest_dir``; return it.

    An entry with an ``into`` field (a folder under ``dest_dir``; ``{stem}`` is the file
    name without its extension) is unpacked there, e.g. DeepCAD's ``DeepCAD/{stem}``.
    """
    downloads = [d for d in manifest.source.downloads if only is None or only(d)]
    if not downloads:
        why = manifest.source.no_download
        raise SourceError(manifest.name, "the manifest lists no downloads (source.downloads)"
                          + ("" if only is None else " that match")
                          + (f": {why}" if why else ""),
                          f"download the dataset by hand from {manifest.source.original} and "
                          "pass its folder as the source")
    dest = Path(dest_dir)
    for d in downloads:
        into = getattr(d, "into", None)
        folder = dest
        if into:
            fname = getattr(d, "name", None) or name_from_url(d.url)
            stem = fname.rsplit(".", 1)[0] if "." in fname else fname
            folder = dest / into.format(stem=stem)
        materialize(d.url, folder, d, select=select, **kwargs)
    return dest


def default_cache_dir() -> Path:
    """Where downloaded sources go: ``$CLOUDMIC_CACHE``, else ``$XDG_CACHE_HOME/cloudmic``,
    else ``~/.cache/cloudmic`` (each with a ``sources`` folder)."""
    root = os.environ.get("CLOUDMIC_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "cloudmic")
    return Path(root).expanduser() / "sources"


def _is_zip_url(source: str) -> bool:
    path = source.split("?", 1)[0].split("#", 1)[0]
    return path.lower().endswith(".zip")


def resolve_source(manifest: Any, source: str | os.PathLike[str] | None, *,
                   cache_dir: str | os.PathLike[str] | None = None,
                   **kwargs: Any) -> str | Path:
    """What an adapter can scan, from what a user passed as the source of an ingest.

    ``None`` materializes the manifest's ``source.downloads``; an ``http(s)://`` URL, or a
    ``.zip`` (local or ``s3://``), is materialized with the matching manifest download's
    checksums, under ``cache_dir`` (default :func:`default_cache_dir` ``/<dataset>``). A
    folder, a tar or an ``s3://`` prefix is returned unchanged: the adapters read those.
    """
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir() / manifest.name
    if source is None:
        return materialize_manifest(manifest, folder, **kwargs)
    text = os.fspath(source)
    remote_http = url_scheme(text) in ("http", "https")
    if not (remote_http or _is_zip_url(text)) or Path(text).is_dir():
        return source
    download = next((d for d in manifest.source.downloads if d.url == text), None)
    return materialize(text, folder, download, **kwargs)
