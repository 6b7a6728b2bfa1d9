"""A minimal classic-TIFF writer that writes whatever the caller declares.

tifffile refuses to write lies (a strip that does not hold the declared pixels, offsets
past the end); hostile files are made of such lies, so headers are packed here by hand.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

# tag -> TIFF type: 3 SHORT, 4 LONG
_TYPES = {256: 4, 257: 4, 258: 3, 259: 3, 262: 3, 273: 4, 277: 3, 278: 4, 279: 4, 284: 3,
          339: 3}
_SIZE = {3: 2, 4: 4}


@dataclass
class Page:
    width: int
    height: int
    bits: int = 16
    compression: int = 1  # 1 none, 5 LZW, 8 deflate, 32773 PackBits
    strips: list[bytes] = field(default_factory=list)
    rowsperstrip: int | None = None
    samples: int = 1
    sampleformat: int = 1
    planar: int = 1
    offsets: list[int] | None = None  # override where the strips are said to be
    counts: list[int] | None = None  # override their declared byte counts


def _entry(tag: int, values: list[int], bo: str, out_of_line: bytearray, base: int) -> bytes:
    typ = _TYPES[tag]
    fmt = {3: "H", 4: "I"}[typ]
    values = [v & (0xFFFF if typ == 3 else 0xFFFFFFFF) for v in values] or [0]
    data = struct.pack(f"{bo}{len(values)}{fmt}", *values)
    if len(data) <= 4:
        return struct.pack(f"{bo}HHI", tag, typ, len(values)) + data.ljust(4, b"\0")
    offset = base + len(out_of_line)
    out_of_line += data + b"\0" * (len(data) % 2)
    return struct.pack(f"{bo}HHII", tag, typ, len(values), offset)


def tiff_bytes(pages: list[Page], *, big_endian: bool = False) -> bytes:
    """A classic TIFF holding ``pages``: header, all strip data, then the IFD chain."""
    bo = ">" if big_endian else "<"
    out = bytearray((b"MM\0*" if big_endian else b"II*\0") + b"\0\0\0\0")
    placed = []
    for page in pages:
        offs = []
        for strip in page.strips:
            offs.append(len(out))
            out += strip
        placed.append(offs)
    if len(out) % 2:
        out += b"\0"
    struct.pack_into(f"{bo}I", out, 4, len(out) if pages else 0)
    for i, (page, offs) in enumerate(zip(pages, placed, strict=True)):
        ifd_at = len(out)
        tags = {256: [page.width], 257: [page.height], 258: [page.bits] * page.samples,
                259: [page.compression], 262: [1 if page.samples == 1 else 2],
                273: page.offsets if page.offsets is not None else offs,
                277: [page.samples], 278: [page.rowsperstrip or page.height],
                279: page.counts if page.counts is not None else [len(s) for s in page.strips],
                284: [page.planar], 339: [page.sampleformat] * page.samples}
        n = len(tags)
        extra = bytearray()
        base = ifd_at + 2 + 12 * n + 4
        entries = b"".join(_entry(t, tags[t], bo, extra, base) for t in sorted(tags))
        nxt = base + len(extra) if i + 1 < len(pages) else 0
        out += struct.pack(f"{bo}H", n) + entries + struct.pack(f"{bo}I", nxt) + extra
    return bytes(out)


def zlib_zeros(nbytes: int, level: int = 9) -> bytes:
    """zlib stream of ``nbytes`` zero bytes, compressed a MiB at a time."""
    z, block, parts = zlib.compressobj(level), bytes(min(nbytes, 1 << 20)), []
    left = nbytes
    while left > 0:
        parts.append(z.compress(block[: min(left, len(block))]))
        left -= len(block)
    return b"".join(parts) + z.flush()


def bomb_tiff(width: int, height: int, pages: int = 1, bits: int = 16, strips: int = 1) -> bytes:
    """Pages of deflate strips of zeros: ~1000:1, what a forged header looks like.

    One strip is compressed and repeated (``strips`` per page, ``height`` divisible by it).
    """
    rows = height // strips
    strip = zlib_zeros(width * rows * bits // 8)
    return tiff_bytes([Page(width, height, bits, 8, [strip] * strips, rowsperstrip=rows)
                       for _ in range(pages)])
