"""The plainest TIFF, read from its header without tifffile's object model.

Every file of the synthetic BioSR (87,900 TIFFs at the published size) is one uncompressed
grayscale page in strips. For such a file tifffile builds its page, tag and
series objects, ~170 us a file on this machine, around a header that ``struct`` reads in
~6 us: BioSR's scan of every header and its units' decodes spent most of their Python time
there (``bench/bench_tiff.py``).

This module recognises exactly that layout and nothing else: classic TIFF (not BigTIFF),
one page (no next IFD), no compression or predictor, one sample per pixel, black is zero,
chunky, strips (not tiles) that follow one another, at least 2 x 2 pixels, and either no
ImageDescription, tifffile's own ``{"shape": [height, width]}`` or an ImageJ description of
one image (STED-FM's TIFF crops: ``tifffile.imwrite(buf, crop, imagej=True)``). Every tag
must be a baseline one of ``_ALLOWED``: a vendor's private tag or another metadata
description (OME, an ImageJ stack, MetaMorph, LSM, FluoView, Micro-Manager...) can change
what the pixels mean. Anything else gives None and the caller reads the file with tifffile,
which stays the reader of record and the source of every error message (the writer of the
published BioSR files is not documented).
``tests/formats/test_tiff_plain.py`` checks the two agree on every file this module accepts.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass

import numpy as np

# the parser TiffFile.imagej_metadata uses (not re-exported by the tifffile package)
from tifffile.tifffile import imagej_description_metadata

HEAD_BYTES = 64 * 1024  # what a header check reads of a file: a plain header comes first
_MAX_TAGS = 256
_MAX_STRIPS = 1 << 16

# tag -> the values a plain page may hold (None: any; 256-258, 270 and 339 checked below)
_ALLOWED: dict[int, frozenset[int] | None] = {
    254: frozenset({0}),  # NewSubfileType: a full-resolution image
    256: None, 257: None, 258: None,  # ImageWidth, ImageLength, BitsPerSample
    259: frozenset({1}),  # Compression: none
    262: frozenset({1}),  # PhotometricInterpretation: black is zero
    266: frozenset({1}),  # FillOrder
    269: None, 270: None, 271: None, 272: None,  # DocumentName, ImageDescription, Make, Model
    273: None,  # StripOffsets
    274: frozenset({1}),  # Orientation: rows top to bottom, columns left to right
    277: frozenset({1}),  # SamplesPerPixel
    278: None, 279: None,  # RowsPerStrip, StripByteCounts
    280: None, 281: None, 282: None, 283: None,  # Min/MaxSampleValue, X/YResolution
    284: frozenset({1}),  # PlanarConfiguration: chunky
    285: None, 296: None, 297: None,  # PageName, ResolutionUnit, PageNumber
    305: None, 306: None, 315: None, 316: None,  # Software, DateTime, Artist, HostComputer
    317: frozenset({1}),  # Predictor: none
    339: None, 340: None, 341: None,  # SampleFormat, SMin/SMaxSampleValue
}
_REQUIRED = frozenset({256, 257, 262, 273, 279})  # size, photometric, where the strips are
_TYPE_BYTES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8}
_INT_FORMATS = {1: "B", 3: "H", 4: "I"}
_DTYPES = {(1, 8): "u1", (1, 16): "u2", (1, 32): "u4", (1, 64): "u8", (2, 8): "i1",
           (2, 16): "i2", (2, 32): "i4", (2, 64): "i8", (3, 32): "f4", (3, 64): "f8"}


class _NotPlain(Exception):
    """Anything this module does not read: tifffile will."""


@dataclass(frozen=True, slots=True)
class Plain:
    """One plain page: its pixels are ``shape`` x ``dtype`` at ``start`` of the file."""

    shape: tuple[int, int]
    dtype: np.dtype  # native byte order, as tifffile reports it
    start: int
    byteorder: str  # the file's: "<" or ">"

    @property
    def end(self) -> int:
        """The byte after the last pixel: the file must be at least this long."""
        return self.start + math.prod(self.shape) * self.dtype.itemsize

    def pixels(self, blob: bytes) -> np.ndarray:
        """The page as a new array in native byte order (as tifffile returns it)."""
        stored = self.dtype.newbyteorder(self.byteorder)
        view = np.frombuffer(blob, stored, math.prod(self.shape), self.start)
        return view.reshape(self.shape).astype(self.dtype)


def parse(head: bytes | bytearray | memoryview) -> Plain | None:
    """The plain page ``head`` (a file's first bytes, or all of them) holds, or None."""
    try:
        return _parse(head)
    except (_NotPlain, struct.error):
        return None


def _parse(b: bytes) -> Plain:
    bo = {b"II": "<", b"MM": ">"}.get(bytes(b[:2]))
    if bo is None:
        raise _NotPlain
    magic, ifd = struct.unpack_from(bo + "HI", b, 2)
    if magic != 42 or ifd < 8:
        raise _NotPlain
    (n,) = struct.unpack_from(bo + "H", b, ifd)
    if not 0 < n <= _MAX_TAGS or struct.unpack_from(bo + "I", b, ifd + 2 + 12 * n)[0]:
        raise _NotPlain  # no tags, too many, or a second page
    tags = dict(_entry(b, bo, ifd + 2 + 12 * i) for i in range(n))
    if len(tags) != n:
        raise _NotPlain  # a tag twice
    for code, allowed in _ALLOWED.items():
        if allowed is not None and code in tags and _one(bo, tags[code]) not in allowed:
            raise _NotPlain
    if not tags.keys() >= _REQUIRED:
        raise _NotPlain
    width, height = _one(bo, tags[256]), _one(bo, tags[257])
    bits = _one(bo, tags[258]) if 258 in tags else 1
    kind = _DTYPES.get((_one(bo, tags[339]) if 339 in tags else 1, bits))
    if kind is None or width < 2 or height < 2:
        raise _NotPlain  # a 1-pixel side: tifffile's series drops it
    dtype = np.dtype(kind)
    if 270 in tags:
        _check_description(tags[270], (height, width))
    start = _strips_start(bo, tags, width * dtype.itemsize, height)
    return Plain((height, width), dtype, start, bo)


def _entry(b: bytes, bo: str, at: int) -> tuple[int, tuple[int, int, bytes]]:
    """(tag, (type, count, value bytes)) of the IFD entry at ``at``."""
    code, typ, count, inline = struct.unpack_from(bo + "HHI4s", b, at)
    if code not in _ALLOWED or typ not in _TYPE_BYTES:
        raise _NotPlain
    size = _TYPE_BYTES[typ] * count
    if size <= 4:
        return code, (typ, count, inline[:size])
    (offset,) = struct.unpack(bo + "I", inline)
    if count > _MAX_STRIPS or offset + size > len(b):
        raise _NotPlain  # beyond the head read: tifffile reads it
    return code, (typ, count, bytes(b[offset:offset + size]))


def _ints(bo: str, value: tuple[int, int, bytes]) -> tuple[int, ...]:
    typ, count, data = value
    if typ not in _INT_FORMATS:
        raise _NotPlain
    return struct.unpack(f"{bo}{count}{_INT_FORMATS[typ]}", data)


def _one(bo: str, value: tuple[int, int, bytes]) -> int:
    ints = _ints(bo, value)
    if len(ints) != 1:
        raise _NotPlain
    return ints[0]


def _strips_start(bo: str, tags: dict, row_bytes: int, height: int) -> int:
    """Where the pixels start, if the strips hold exactly the rows they should, in order
    and back to back."""
    if 273 not in tags or 279 not in tags:
        raise _NotPlain
    rows = min(_one(bo, tags[278]) if 278 in tags else height, height)
    if rows < 1:
        raise _NotPlain
    offsets, counts = _ints(bo, tags[273]), _ints(bo, tags[279])
    strips = -(-height // rows)
    if len(offsets) != strips or len(counts) != strips:
        raise _NotPlain
    for i, (offset, count) in enumerate(zip(offsets, counts, strict=True)):
        if count != min(rows, height - i * rows) * row_bytes or (
                i and offset != offsets[i - 1] + counts[i - 1]):
            raise _NotPlain
    return offsets[0]


def _check_description(value: tuple[int, int, bytes], shape: tuple[int, int]) -> None:
    """Only a description that leaves the page's own shape keeps it plain: tifffile's
    ``{"shape": [h, w]}`` naming this page, or an ImageJ one of a single image. Any other
    says how to read the pixels (OME, a vendor, an ImageJ stack or hyperstack)."""
    typ, _, data = value
    if typ != 2:
        raise _NotPlain
    text = data.rstrip(b"\0")
    if text.lstrip().startswith(b"ImageJ="):
        _check_imagej(text)
        return
    try:
        meta = json.loads(text)
    except (ValueError, RecursionError):  # not JSON, or nested past Python's stack
        raise _NotPlain from None
    dims = meta.get("shape") if isinstance(meta, dict) else None
    if dims != list(shape):  # [1, h, w] too: tifffile's series keeps the unit axis
        raise _NotPlain


# The ImageJ keys that shape a series (tifffile's _series_imagej); every other key
# (min, max, unit, spacing, mode, hyperstack, loop...) leaves the pixels as they are.
_IMAGEJ_SHAPE_KEYS = ("images", "channels", "slices", "frames")


def _check_imagej(text: bytes) -> None:
    """An ImageJ description of one 2-D image, as ``tifffile.imwrite(..., imagej=True)``
    writes it for a STED-FM crop (``ImageJ=1.11a\\nimages=1\\nhyperstack=true\\n...``): read
    by tifffile's own parser, every shape key absent or the integer 1."""
    try:
        desc = text.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise _NotPlain from None  # tifffile falls back to cp1252: let it
    if desc[-10:].strip().endswith("OME>"):
        raise _NotPlain  # tifffile tries the OME series first
    try:
        meta = imagej_description_metadata(desc)
    except ValueError:
        raise _NotPlain from None
    counts = [meta.get(k, 1) for k in _IMAGEJ_SHAPE_KEYS]
    if any(type(n) is not int or n != 1 for n in counts):  # 1.0, True, "1x": tifffile's call
        raise _NotPlain
