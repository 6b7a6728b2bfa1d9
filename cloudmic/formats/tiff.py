"""TIFF reading with the checks a published dataset needs: shape and dtype come from each
file (never from documentation), and a truncated or corrupt file is named, not guessed at.
The plainest layout (one uncompressed grayscale page in strips) is read from its header by
``tiff_plain``; every other file, and every error message, goes through tifffile.

Memory bound. Headers are read first (tifffile keeps ~2 KB of objects per page header), and
pixels are decoded only when what the headers declare is plausible:

- the series shape equals ``expected_shape`` when the caller knows it (a STED-FM crop is
  224x224), and
- the decoded size is at most ``MAX_RATIO`` (100) times the file's bytes, unless it is below
  ``RATIO_FLOOR`` (64 MiB). Deflate reaches ~1030:1 only on constant filler; 100:1 is the
  zip-bomb threshold of Apache POI, and only a near-blank image above 64 MiB compresses
  more. Small files may compress any amount (a blank crop).

So a decode allocates at most ``max(64 MiB, 100 x file size)`` for the pixels, plus the
file's bytes; tifffile's codecs decode each strip or tile into a buffer of its declared
size, so a strip that inflates further fails instead of growing.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from cloudmic.errors import SourceError
from cloudmic.formats import tiff_plain

TIFF_SUFFIXES = (".tif", ".tiff")
MiB = 1024 * 1024
MAX_RATIO = 100
RATIO_FLOOR = 64 * MiB


@dataclass(frozen=True, slots=True)
class TiffInfo:
    """What the header of a TIFF says, checked against the file's real size."""

    path: Path
    shape: tuple[int, ...]
    dtype: np.dtype
    pages: int
    file_bytes: int


def is_tiff_name(name: str) -> bool:
    return name.lower().endswith(TIFF_SUFFIXES)


def truncated_error(path: Path, end: int, size: int) -> SourceError:
    return SourceError(
        path,
        f"truncated TIFF: its header points at byte {end:,} but the file has only {size:,} bytes",
        "download the file again (or restore it from the original archive)",
    )


def check_page_extent(path: Path, page: tifffile.TiffPage, size: int) -> None:
    """Every strip of ``page`` must lie inside the file. This is what catches a download cut
    short: the header of a truncated TIFF still parses, only its pixel data is missing."""
    offsets, counts = page.dataoffsets, page.databytecounts
    if len(offsets) != len(counts):
        raise SourceError(
            path,
            f"corrupt TIFF: a page lists {len(offsets)} strip offsets but {len(counts)} strip "
            "byte counts",
            "download the file again (or restore it from the original archive)",
        )
    ends = [o + n for o, n in zip(offsets, counts, strict=True)]
    if ends and max(ends) > size:
        raise truncated_error(path, max(ends), size)


def check_decoded_size(path: object, shape: tuple[int, ...], dtype: np.dtype, stored: int) -> None:
    """Refuse, before decoding, pixels that ``stored`` bytes cannot plausibly hold."""
    decoded = math.prod(shape) * np.dtype(dtype).itemsize  # Python ints: no overflow
    if decoded > RATIO_FLOOR and decoded > MAX_RATIO * stored:
        raise SourceError(
            path,
            f"the TIFF declares {'x'.join(map(str, shape))} {np.dtype(dtype)} pixels "
            f"({decoded:,} bytes) in a file of {stored:,} bytes, a compression of "
            f"{decoded / max(stored, 1):,.0f}:1 (images stay below {MAX_RATIO}:1): a forged "
            "header or a decompression bomb; nothing was decoded",
            "do not use this file: download it again from the publisher",
        )


def check_expected_shape(path: object, shape: tuple[int, ...],
                         expected: tuple[int, ...] | None) -> None:
    if expected is not None and tuple(shape) != tuple(expected):
        raise SourceError(
            path,
            f"the TIFF declares shape {tuple(shape)}, expected {tuple(expected)}; "
            "nothing was decoded",
            "check that the file belongs to this dataset, or download it again",
        )


def indexed(tif: tifffile.TiffFile) -> tifffile.TiffFile:
    """Walk the IFD chain once (len() stops at a loop) and keep the pages: iterating
    uncached pages re-walks the chain, and a loop tifffile's len() caught can then make
    that walk endless (found by the fuzz suite)."""
    try:
        len(tif.pages)
        tif.pages.cache = True
    except BaseException:
        tif.close()
        raise
    return tif


def open_tiff(path: Path, *, index: bool = True) -> tifffile.TiffFile:
    """Open a TIFF's header; anything but a readable TIFF is a SourceError naming the file.

    ``index=False`` leaves :func:`indexed` to the caller (to collect what tifffile logs).
    """
    try:
        tif = tifffile.TiffFile(path)
        return indexed(tif) if index else tif
    except FileNotFoundError:
        raise
    except Exception as exc:  # tifffile raises a zoo of types for bad headers
        if is_lfs_pointer(path):
            raise SourceError(
                path, "a Git LFS pointer (a small text file naming the image), not the image: "
                "the repository archive or checkout did not include its LFS objects",
                "clone the repository with git-lfs installed (git lfs install; git clone "
                "URL; cd into it; git lfs pull) and pass that folder as --source",
            ) from exc
        raise SourceError(
            path,
            f"not a readable TIFF ({type(exc).__name__}: {exc})",
            "check that the file is a TIFF from the published dataset and download it again",
        ) from exc


LFS_POINTER = b"version https://git-lfs.github.com/spec/"


def is_lfs_pointer(path: Path) -> bool:
    """A Git LFS pointer file (what a repository archive holds in place of an LFS object)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(LFS_POINTER)) == LFS_POINTER
    except OSError:
        return False


def inspect_tiff(path: Path) -> TiffInfo:
    """Read the header only, and check that every image strip lies inside the file."""
    plain, size = _peek(path)
    if plain is not None and plain.end <= size:
        return TiffInfo(path, plain.shape, plain.dtype, 1, size)
    size = size or os.path.getsize(path)  # 0: _peek could not open it (tifffile says why)
    with open_tiff(path) as tif:
        try:
            series = tif.series[0]
            for page in tif.pages:
                check_page_extent(path, page, size)
            check_decoded_size(path, tuple(series.shape), series.dtype, size)
            return TiffInfo(path, tuple(series.shape), np.dtype(series.dtype), len(tif.pages),
                            size)
        except SourceError:
            raise
        except Exception as exc:  # damaged IFDs surface while walking the pages
            raise SourceError(
                path,
                f"not a readable TIFF ({type(exc).__name__}: {exc})",
                "check that the file is a TIFF from the published dataset and download it again",
            ) from exc


def _peek(path: Path) -> tuple[tiff_plain.Plain | None, int]:
    """The file's plain page (``tiff_plain``) if it is one, and the file's size."""
    try:
        with open(path, "rb") as f:
            return tiff_plain.parse(f.read(tiff_plain.HEAD_BYTES)), os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        raise
    except OSError:  # not a regular file, say: tifffile's path names the problem
        return None, 0


def read_tiff(path: Path, *, expected_shape: tuple[int, ...] | None = None
              ) -> tuple[np.ndarray, str]:
    """The pixels as stored (dtype kept) and the sha256 of the exact file bytes.

    One read serves both, so provenance checksums cost no extra I/O. The declared size is
    checked (module docstring) before anything is decoded.
    """
    blob = Path(path).read_bytes()
    return decode_tiff_bytes(blob, where=path, expected_shape=expected_shape), \
        hashlib.sha256(blob).hexdigest()


def decode_tiff_bytes(blob: bytes, *, where: object,
                      expected_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """The first series of an in-memory TIFF (an archive member), ``where`` naming it.

    Shape (against ``expected_shape``) and decoded size (against ``len(blob)``) are checked
    from the headers before a pixel is decoded.
    """
    plain = tiff_plain.parse(blob)
    if plain is not None and plain.end <= len(blob):  # uncompressed: no size to check
        check_expected_shape(where, plain.shape, expected_shape)
        return plain.pixels(blob)
    try:
        with indexed(tifffile.TiffFile(io.BytesIO(blob))) as tif:
            series = tif.series[0]
            shape, dtype = tuple(int(n) for n in series.shape), np.dtype(series.dtype)
            check_expected_shape(where, shape, expected_shape)
            check_decoded_size(where, shape, dtype, len(blob))
            return series.asarray()
    except SourceError:
        raise
    except Exception as exc:  # tifffile raises a zoo of types for damaged files
        raise SourceError(
            where,
            f"cannot read the TIFF pixels ({type(exc).__name__}: {exc})",
            "the file is damaged: download it again",
        ) from exc
