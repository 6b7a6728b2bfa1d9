"""STED-FM archive members: ``numpy.savez(buf, image=crop, metadata=info)`` bytes, read
without ``allow_pickle=True``.

A member is a zip holding ``image.npy`` (uint8 or uint16, 2-D) and, for labelled data,
``metadata.npy`` (a 0-d object array whose pickle holds a plain dict). Every size is
checked from the zip directory and the .npy header before anything is decompressed or
allocated, and the metadata pickle goes through :mod:`cloudmic.formats.safe_pickle`.

Memory bound: an image entry unpacks to at most ``max_bytes`` (32 MiB by default), and one
above 1 MiB only if it compresses at most 200:1; the metadata entry to at most 1 MiB + 64 KiB;
a declared compressed size must fit inside the member. The image array is built only when
the .npy header's shape matches the entry's bytes, so peak memory is about
``len(member) + 2 * max_bytes`` plus the pickle's bound (see safe_pickle).
"""

from __future__ import annotations

import io
import logging
import math
import zipfile
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from cloudmic.errors import SourceError
from cloudmic.formats.safe_pickle import MAX_PICKLE_BYTES, load_0d_object_array_item
from cloudmic.formats.safe_tar import check_member_name

log = logging.getLogger(__name__)

MiB = 1024 * 1024
DEFAULT_MAX_BYTES = 32 * MiB  # a 224x224 uint16 crop is 100 KB; room for much larger crops
# Deflate tops out near 1032:1, and real images compress far less; a high ratio on a large
# entry is the signature of a zip bomb. Small entries (a blank crop) may compress very well.
MAX_RATIO = 200
RATIO_CHECK_ABOVE = 1 * MiB
IMAGE_ENTRY, METADATA_ENTRY = "image.npy", "metadata.npy"
IMAGE_DTYPES = (np.dtype("uint8"), np.dtype("uint16"))
_NPY_HEADER_MAX = 64 * 1024

_FIX_REBUILD = "the member is damaged or not a STED-FM crop: download the archive again"


@dataclass(frozen=True, slots=True, eq=False)
class NpzSample:
    """One crop as stored (dtype kept) and its metadata dict (None when unlabelled)."""

    image: np.ndarray
    metadata: dict[str, Any] | None


def _open_zip(data: bytes, member: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(io.BytesIO(data))
    # NotImplementedError: a directory entry that needs a newer zip version than Python reads
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, NotImplementedError) as exc:
        raise SourceError(
            member, f"not an .npz (zip) file ({type(exc).__name__}: {exc})", _FIX_REBUILD
        ) from exc


def _entries(zf: zipfile.ZipFile, member: str) -> dict[str, zipfile.ZipInfo]:
    """The entries we read, by name; path-like or duplicate names are refused."""
    found: dict[str, zipfile.ZipInfo] = {}
    for info in zf.infolist():
        # Same rules as tar member names: an npz written by numpy has flat names only.
        check_member_name(info.filename, archive=member)
        if info.filename in found:
            raise SourceError(
                member, f"the npz holds {info.filename!r} twice; which one is meant?", _FIX_REBUILD
            )
        if info.filename not in (IMAGE_ENTRY, METADATA_ENTRY):
            log.warning("%s: ignoring unexpected npz entry %r", member, info.filename)
            continue
        found[info.filename] = info
    return found


def _check_entry_size(info: zipfile.ZipInfo, member: str, limit: int, member_bytes: int) -> None:
    """Refuse from the zip directory alone, before a byte is decompressed."""
    where = f"{member} ({info.filename})"
    if info.compress_size > member_bytes:
        # The ratio check below trusts compress_size, so it must be backed by real bytes.
        raise SourceError(
            where,
            f"the npz entry claims {info.compress_size:,} compressed bytes, but the whole "
            f"member has {member_bytes:,}",
            _FIX_REBUILD,
        )
    if info.flag_bits & 0x1:
        raise SourceError(where, "the npz entry is encrypted", _FIX_REBUILD)
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise SourceError(
            where,
            f"the npz entry uses zip compression method {info.compress_type}; numpy writes "
            "only stored or deflated entries",
            _FIX_REBUILD,
        )
    if info.file_size > limit:
        raise SourceError(
            where,
            f"the npz entry unpacks to {info.file_size:,} bytes, above the limit of "
            f"{limit:,} bytes (zip bomb or not a crop)",
            "raise max_bytes if crops this large are expected, else rebuild the archive",
        )
    ratio = info.file_size / max(info.compress_size, 1)
    if info.file_size > RATIO_CHECK_ABOVE and ratio > MAX_RATIO:
        raise SourceError(
            where,
            f"the npz entry compresses {ratio:,.0f}:1, which images never do (zip bomb)",
            _FIX_REBUILD,
        )


def _read_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, member: str) -> bytes:
    # zipfile stops at the declared file_size and checks the CRC, so a lying size cannot
    # make it produce more than the limit checked above.
    try:
        return zf.read(info)
    except (
        zipfile.BadZipFile, EOFError, OSError, ValueError, RuntimeError, NotImplementedError,
        zlib.error,
    ) as exc:
        raise SourceError(
            f"{member} ({info.filename})",
            f"the npz entry cannot be read ({type(exc).__name__}: {exc})",
            _FIX_REBUILD,
        ) from exc


def _npy_header(blob: bytes, where: str) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran_order, dtype, data offset) from a .npy header, without the data."""
    fp = io.BytesIO(blob)
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(
                fp, max_header_size=_NPY_HEADER_MAX
            )
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(
                fp, max_header_size=_NPY_HEADER_MAX
            )
        else:
            # 3.0 only exists for utf-8 structured field names, which neither entry has.
            raise ValueError(f".npy format version {version} is not used for crops")
    except (ValueError, TypeError, KeyError, EOFError, SyntaxError) as exc:
        raise SourceError(where, f"not a valid .npy entry ({exc})", _FIX_REBUILD) from exc
    if any(n < 0 for n in shape):
        # numpy would only fail later, in read_array, with a ValueError that names no file.
        raise SourceError(where, f"the .npy header declares a negative shape {shape}",
                          _FIX_REBUILD)
    return tuple(shape), bool(fortran), dtype, fp.tell()


def _read_image(blob: bytes, member: str) -> np.ndarray:
    where = f"{member} ({IMAGE_ENTRY})"
    shape, _fortran, dtype, offset = _npy_header(blob, where)
    if len(shape) != 2 or dtype.newbyteorder("=") not in IMAGE_DTYPES:
        raise SourceError(
            where,
            f"image is {dtype} with shape {shape}; a STED-FM crop is a 2-D uint8 or uint16 array",
            "check that the archive is a STED-FM crops tar (not the TIFF or full-image one)",
        )
    expected = offset + math.prod(shape) * dtype.itemsize
    if len(blob) != expected:
        # Checked before read_array, which would allocate the header's shape first.
        raise SourceError(
            where,
            f"image header promises {expected:,} bytes but the entry has {len(blob):,}",
            _FIX_REBUILD,
        )
    image = np.lib.format.read_array(io.BytesIO(blob), allow_pickle=False)
    # Native byte order, C order: the same values and dtype, cheaper for every consumer.
    return np.ascontiguousarray(image, dtype=dtype.newbyteorder("="))


def _read_metadata(blob: bytes, member: str) -> dict[str, Any]:
    where = f"{member} ({METADATA_ENTRY})"
    shape, _fortran, dtype, offset = _npy_header(blob, where)
    if dtype != np.dtype(object) or shape != ():
        raise SourceError(
            where,
            f"metadata is {dtype} with shape {shape}; STED-FM stores a 0-d object array "
            "holding a dict",
            _FIX_REBUILD,
        )
    item = load_0d_object_array_item(blob[offset:], what=where)
    if not isinstance(item, dict):
        raise SourceError(
            where, f"metadata holds a {type(item).__name__}, not a dict", _FIX_REBUILD
        )
    return item


def read_npz_member(data: bytes, *, member: str, max_bytes: int = DEFAULT_MAX_BYTES) -> NpzSample:
    """Parse one STED-FM archive member (the npz bytes); ``member`` names it in errors.

    ``max_bytes`` bounds the decompressed image entry. A member without ``metadata.npy``
    gives ``metadata=None`` (unlabelled crop; the caller decides how to report it).
    """
    with _open_zip(data, member) as zf:
        entries = _entries(zf, member)
        if IMAGE_ENTRY not in entries:
            raise SourceError(
                member,
                f"the npz has no {IMAGE_ENTRY!r} (entries: {sorted(zf.namelist())})",
                "check that the archive holds STED-FM crops written with numpy.savez",
            )
        limits = {IMAGE_ENTRY: max_bytes, METADATA_ENTRY: MAX_PICKLE_BYTES + _NPY_HEADER_MAX}
        for name, info in entries.items():
            _check_entry_size(info, member, limits[name], len(data))
        image = _read_image(_read_entry(zf, entries[IMAGE_ENTRY], member), member)
        metadata = None
        if METADATA_ENTRY in entries:
            blob = _read_entry(zf, entries[METADATA_ENTRY], member)
            metadata = _read_metadata(blob, member)
    return NpzSample(image=image, metadata=metadata)
