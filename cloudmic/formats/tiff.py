"""TIFF reading with the checks a published dataset needs: shape and dtype come from each
file (never from documentation), and a truncated or corrupt file is named, not guessed at."""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from cloudmic.errors import SourceError

TIFF_SUFFIXES = (".tif", ".tiff")


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
    ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts, strict=True)]
    if ends and max(ends) > size:
        raise truncated_error(path, max(ends), size)


def open_tiff(path: Path) -> tifffile.TiffFile:
    """Open a TIFF's header; anything but a readable TIFF is a SourceError naming the file."""
    try:
        return tifffile.TiffFile(path)
    except FileNotFoundError:
        raise
    except Exception as exc:  # tifffile raises a zoo of types for bad headers
        raise SourceError(
            path,
            f"not a readable TIFF ({type(exc).__name__}: {exc})",
            "check that the file is a TIFF from the published dataset and download it again",
        ) from exc


def inspect_tiff(path: Path) -> TiffInfo:
    """Read the header only, and check that every image strip lies inside the file."""
    size = os.path.getsize(path)
    with open_tiff(path) as tif:
        try:
            series = tif.series[0]
            for page in tif.pages:
                check_page_extent(path, page, size)
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


def read_tiff(path: Path) -> tuple[np.ndarray, str]:
    """The pixels as stored (dtype kept) and the sha256 of the exact file bytes.

    One read serves both, so provenance checksums cost no extra I/O.
    """
    blob = Path(path).read_bytes()
    try:
        arr = tifffile.imread(io.BytesIO(blob))
    except Exception as exc:
        raise SourceError(
            path,
            f"cannot read the TIFF pixels ({type(exc).__name__}: {exc})",
            "the file is damaged: download it again",
        ) from exc
    return arr, hashlib.sha256(blob).hexdigest()
