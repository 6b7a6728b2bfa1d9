"""STED-FM's own writer rules (``dataset.py::from_tarfile``, ``shared/datasets.md`` section 2).

What turns a source image into archive members, as the published writer does it: the
0.001/0.999 quantile scaling to uint8, the 224-pixel crop grid (edge crops shifted
inwards, named by their grid position) with its Otsu foreground filter, the three member
encodings (``numpy.savez`` of the uint8 or the raw uint16 crop, or an ImageJ TIFF of the
raw crop) and the archive each variant goes into. The tar headers are fixed (mtime 0,
uid/gid 0, mode 0o644, no user names), so the same members give the same archive bytes.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from typing import Literal

import numpy as np
import tifffile
from numpy.typing import NDArray

__all__ = [
    "ARCHIVES",
    "CROP",
    "QUANTILES",
    "VARIANTS",
    "Variant",
    "add_member",
    "crop_grid",
    "encode",
    "otsu_threshold",
    "quantile_uint8",
]

Variant = Literal["uint8", "uint16", "tiff"]
VARIANTS: tuple[Variant, ...] = ("uint8", "uint16", "tiff")
ARCHIVES: dict[str, str] = {
    "uint8": "STED-FM-dataset-crop.tar",
    "uint16": "STED-FM-dataset-crops-raw.tar",
    "tiff": "STED-FM-dataset-crops-tiff-raw.tar",
}

CROP = 224
QUANTILES = (0.001, 0.999)
MIN_FOREGROUND = 0.001  # of the crop's pixels, above the Otsu threshold
TAR_MTIME = 0


def quantile_uint8(image: NDArray) -> NDArray[np.uint8]:
    """STED-FM's normalisation: ``clip((x - m) / (M - m), 0, 1) * 255`` truncated to uint8.

    ``m, M`` are the 0.001 and 0.999 quantiles of the whole source image (not of a crop).
    """
    m, big_m = np.quantile(image, QUANTILES)
    if big_m <= m:  # the writer skips such images; ours always have signal
        raise ValueError("image has no contrast between its 0.001 and 0.999 quantiles")
    return (np.clip((image - m) / (big_m - m), 0, 1) * 255).astype(np.uint8)


def otsu_threshold(image: NDArray[np.uint8]) -> int:
    """Otsu's threshold of an integer image, as ``skimage.filters.threshold_otsu`` computes
    it (one histogram bin per integer value between the image's min and max)."""
    lo, hi = int(image.min()), int(image.max())
    if lo == hi:
        return lo
    counts = np.bincount(image.ravel().astype(np.int64) - lo, minlength=hi - lo + 1)
    centers = np.arange(lo, hi + 1, dtype=np.float64)
    w1 = np.cumsum(counts)
    w2 = np.cumsum(counts[::-1])[::-1]
    m1 = np.cumsum(counts * centers) / np.maximum(w1, 1)
    m2 = (np.cumsum((counts * centers)[::-1]) / np.maximum(w2[::-1], 1))[::-1]
    between = w1[:-1] * w2[1:] * (m1[:-1] - m2[1:]) ** 2
    return int(centers[int(np.argmax(between))])


def crop_grid(
    image8: NDArray[np.uint8],
) -> Iterator[tuple[int, int, tuple[slice, slice]]]:
    """Grid positions ``(j, i)`` and slices of the crops the writer keeps."""
    h, w = image8.shape
    foreground = image8 > otsu_threshold(image8)
    for j in range(0, h, CROP):
        for i in range(0, w, CROP):
            # Edge crops are shifted inwards; the name keeps the grid position.
            slc = (
                slice(j, j + CROP) if j + CROP < h else slice(h - CROP, h),
                slice(i, i + CROP) if i + CROP < w else slice(w - CROP, w),
            )
            if foreground[slc].sum() > MIN_FOREGROUND * CROP * CROP:
                yield j, i, slc


def encode(
    crop8: NDArray[np.uint8],
    raw: NDArray[np.uint16],
    info: dict | None,
    variant: Variant,
) -> bytes:
    """One member's bytes in ``variant``'s encoding; ``info=None`` writes no metadata key."""
    buffer = io.BytesIO()
    if variant == "tiff":
        tifffile.imwrite(buffer, np.ascontiguousarray(raw), imagej=True)
        return buffer.getvalue()
    crop = np.ascontiguousarray(crop8 if variant == "uint8" else raw)
    if info is None:
        np.savez(buffer, image=crop)
    else:
        np.savez(buffer, image=crop, metadata=info)
    return buffer.getvalue()


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """Add ``data`` as regular file ``name`` with the fixed header."""
    header = tarfile.TarInfo(name)
    header.size = len(data)
    header.mtime = TAR_MTIME
    header.mode = 0o644
    header.uid = header.gid = 0
    header.uname = header.gname = ""
    tar.addfile(header, io.BytesIO(data))
