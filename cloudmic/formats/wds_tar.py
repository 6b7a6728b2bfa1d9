"""WebDataset tar shards read back as records, fast: ``cloudmic.shards``' decoder.

webdataset reads a shard with ``tarfile``'s stream mode, which parses each 512-byte header
in Python through a dozen helpers and pulls the bytes through a 10 KB buffer, then
``np.load`` parses every ``.npy`` header with ``ast``: ~320 us of CPU a BioSR record
through ``cloudmic.shards`` on these cores. Here a header is sliced once, a member's
payload lands in one buffer with one read, and a ``.npy`` header is parsed by NumPy's own
parser once per distinct header (every record of a shard has the same ones): ~83 us a
record through ``cloudmic.shards``, ~55 from a plain local file. The records are the
same dicts as ``group_by_keys(tar_file_expander(...))`` makes (``tests/formats/
test_wds_tar.py`` holds the two to each other).

What it reads: the ustar/GNU/pax tars that tar writers make of short and long names
(cloudmic's ``ingest/tar_writer.py``, webdataset's ``TarWriter``, GNU tar): regular
members, pax extended headers (``path``, ``size``), GNU long names; directories, links and
the rest are skipped, as webdataset skips them. What it refuses: a header whose checksum
fails (damaged bytes), a member that claims more than ``MAX_MEMBER_BYTES`` or a metadata
header above ``MAX_META_BYTES`` (a few damaged bytes must not allocate gigabytes), a
stream that ends mid-member, an ``.npy`` of Python objects (a pickle).
"""

from __future__ import annotations

import functools
import io
import math
import re
import tarfile
from collections.abc import Iterator
from typing import Any, BinaryIO

import numpy as np
from numpy.lib import format as npy_format

from cloudmic.formats.safe_tar import MAX_META_BYTES

BLOCK = tarfile.BLOCKSIZE
MAX_MEMBER_BYTES = 1 << 30  # one field of one record; a published one is < 64 MiB
# webdataset's rules (its package imports torch): its key/extension split (base_plus_ext)
# and the names it skips
_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
_META = re.compile(r"__[^/]*__($|/)")
_REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)


class TarFormatError(ValueError):
    """The bytes are not a readable tar (damaged, truncated, or a member too large)."""


def records(stream: BinaryIO, url: str) -> Iterator[dict[str, Any]]:
    """The records of a WebDataset tar: ``{"__key__", "__url__", <ext>: bytearray, ...}``
    per key, extensions lower-cased, in the order of the tar (``group_by_keys``' rules;
    webdataset gives ``bytes``: a bytearray lets arrays view it writably, no copy)."""
    current: dict[str, Any] | None = None
    for name, data in members(stream):
        if _META.match(name):
            continue
        m = _KEY_EXT.match(name)
        if m is None:
            continue
        key, ext = m.group(1), m.group(2).lower()
        if current is None or key != current["__key__"]:
            if current is not None:
                yield current
            current = {"__key__": key, "__url__": url}
        if ext in current:
            raise TarFormatError(f"{name}: duplicate file name in the tar ({ext})")
        current[ext] = data
    if current is not None:
        yield current


def members(stream: BinaryIO) -> Iterator[tuple[str, bytearray]]:
    """(name, payload) of each regular member, in order, until the end-of-archive block."""
    long_name: str | None = None
    pax: dict[str, str] = {}
    while True:
        header = _read(stream, BLOCK, "a header")
        if header is None or not any(header):
            return
        name, size, kind = _parse(header)
        if "size" in pax:
            try:
                size = int(pax["size"])
            except ValueError:
                raise TarFormatError(f"{name}: a pax size that is not a number") from None
        if kind in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME):
            meta = _payload(stream, size, MAX_META_BYTES, name)
            if kind == tarfile.XHDTYPE:
                pax = _pax_records(meta)
            elif kind == tarfile.GNUTYPE_LONGNAME:
                long_name = tarfile.nts(meta, "utf-8", "surrogateescape")
            continue  # a global pax header: nothing in it changes what a record holds
        name = pax.get("path") or long_name or name
        data = _payload(stream, size, MAX_MEMBER_BYTES, name)
        long_name, pax = None, {}
        if kind in _REGULAR:
            yield name, data


def _parse(header: bytearray) -> tuple[str, int, bytes]:
    """(name, size, type flag) of a ustar/GNU header, its checksum checked; the fields are
    read by tarfile's own readers, as ``TarInfo.frombuf`` reads them."""
    try:
        stored, size = tarfile.nti(header[148:156]), tarfile.nti(header[124:136])
    except tarfile.HeaderError:
        stored, size = -1, 0
    # the sum of the header with its checksum field as 8 spaces: one pass over it, where
    # tarfile.calc_chksums makes two (its signed sum, of some old writers, only if needed:
    # the hot path of every member, ~20 us a record less)
    unsigned = sum(header) - sum(header[148:156]) + 8 * 32
    if stored != unsigned and stored not in tarfile.calc_chksums(header):
        raise TarFormatError("a tar header's checksum does not match: the bytes are damaged "
                             "or this is not a tar")
    if size < 0:
        raise TarFormatError("a tar header declares a negative size")
    name = tarfile.nts(header[0:100], "utf-8", "surrogateescape")
    if header[257:262] == b"ustar":
        prefix = tarfile.nts(header[345:500], "utf-8", "surrogateescape")
        if prefix:
            name = prefix + "/" + name
    return name, size, bytes(header[156:157])


def _pax_records(meta: bytearray) -> dict[str, str]:
    """``"<len> <key>=<value>\\n"`` records of a pax extended header."""
    out, pos, data = {}, 0, bytes(meta)
    while pos < len(data) and data[pos:pos + 1] != b"\0":
        length, _, _ = data[pos:pos + 20].partition(b" ")
        try:
            n = int(length)
        except ValueError:
            raise TarFormatError("a pax header is malformed") from None
        key, _, value = data[pos:pos + n].partition(b" ")[2].rstrip(b"\n").partition(b"=")
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += max(n, 1)
    return out


def _payload(stream: BinaryIO, size: int, limit: int, name: str) -> bytearray:
    if size > limit:
        raise TarFormatError(f"{name}: a member of {size} bytes, more than the {limit} "
                             "this reader takes")
    data = _read(stream, size, name) if size else bytearray()
    if data is None:
        raise TarFormatError(f"{name}: the tar ends before this member")
    pad = -size % BLOCK
    if pad and _read(stream, pad, name) is None:
        raise TarFormatError(f"{name}: the tar ends inside this member's padding")
    return data


def _read(stream: BinaryIO, n: int, what: str) -> bytearray | None:
    """Exactly ``n`` bytes, None at a clean end of the stream (nothing read)."""
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = stream.readinto(view[got:])  # type: ignore[attr-defined]
        if not k:
            if got == 0:
                return None
            raise TarFormatError(f"{what}: the tar ends after {got} of its {n} bytes")
        got += k
    return buf


def load_npy(data: bytearray) -> np.ndarray:
    """An ``.npy`` payload as an array viewing ``data`` (writable, as a payload from
    :func:`records` is); never unpickles."""
    view = memoryview(data)
    if bytes(view[:6]) != npy_format.MAGIC_PREFIX or len(view) < 12:
        raise ValueError("not an .npy payload (no NumPy magic)")
    end = 10 + int.from_bytes(view[8:10], "little") if view[6] == 1 else (
        12 + int.from_bytes(view[8:12], "little"))
    header = _npy_header(bytes(view[:end]))
    if header is None:  # a format version without a public header reader: numpy's own load
        return np.load(io.BytesIO(data), allow_pickle=False)
    shape, fortran, dtype = header
    count = math.prod(shape)  # exact: numpy's product of a forged shape can wrap around
    if len(view) - end < count * dtype.itemsize:
        raise ValueError(f"an .npy payload of {len(view)} bytes holds less than its "
                         f"header's {shape} {dtype}")
    return np.frombuffer(data, dtype, count, offset=end).reshape(
        shape, order="F" if fortran else "C")


@functools.lru_cache(maxsize=256)
def _npy_header(raw: bytes) -> tuple[tuple[int, ...], bool, np.dtype] | None:
    """NumPy's own parse of an ``.npy`` header (magic included), once per distinct one."""
    f = io.BytesIO(raw)
    read = {(1, 0): npy_format.read_array_header_1_0,
            (2, 0): npy_format.read_array_header_2_0}.get(npy_format.read_magic(f))
    if read is None:
        return None
    try:
        shape, fortran, dtype = read(f)
    except Exception as exc:  # noqa: BLE001 - ast/tokenize errors of a damaged header too
        raise ValueError(f"an .npy header numpy cannot parse ({type(exc).__name__}: "
                         f"{str(exc)[:100]})") from None
    if dtype.hasobject:
        raise ValueError(".npy of Python objects: refused (reading it would unpickle)")
    return shape, fortran, dtype
