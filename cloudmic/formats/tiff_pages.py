"""Big multipage TIFF movies (T, Y, X), read a block of frames at a time.

A DeepCAD recording is ~4.5 GB, so nothing here loads a whole movie: :func:`movie_info`
reads headers only, and :func:`iter_frame_blocks` yields ``block`` frames at a time, so
memory stays at O(block) whatever the movie length.

Two read paths:

- **contiguous** (uncompressed pages stored back to back, as tifffile, ImageJ and ScanImage
  write movies): frames are read straight from the file into a fresh array with one
  ``readinto`` per block: no decoding, no memory map (mapped pages would count towards the
  reader's RSS), and it also covers ImageJ hyperstacks over 4 GB, which have one IFD only;
- **paged** (compressed or scattered pages): tifffile decodes the block's pages only.

Axes: ``tifffile.imread`` gives DeepCAD's ``(T, Y, X)`` for a plain multipage file, but
ImageJ hyperstacks and tifffile "shaped" files add singleton axes (``TZCYXS``,
``(1, T, Y, X)``). Those are squeezed and recorded; a second axis of length > 1 besides time
is refused (the DeepCAD code asks to re-save such hyperstacks with ImageJ). The one axis left
must be able to mean time: ``T``, tifffile's page/sequence axes ``I``/``Q``, or the ``Z`` of a
plain ImageJ stack (ImageJ calls every plain stack "slices"). A hyperstack that declares its
only long axis as depth (``Z``, ``hyperstack=true``) or channels (``C``) is a z-stack or a
channel stack, not a movie, and is refused rather than relabelled as time.

Memory bound: the page headers (~2 KB of tifffile objects per page), plus one block of
``block`` frames as declared. On the contiguous path every frame's bytes must lie inside
the file, so a block is at most the file's size; on the paged path the whole movie may
decode to at most ``max(64 MiB, 100 x file size)`` (:mod:`cloudmic.formats.tiff`), checked
from the headers in :func:`movie_info` before a block is read, so a 585 KB file cannot
declare 16 compressed 4096x4096 frames (512 MiB).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from cloudmic.errors import SourceError
from cloudmic.formats.tiff import (
    check_decoded_size,
    check_page_extent,
    indexed,
    open_tiff,
    truncated_error,
)

__all__ = ["MovieInfo", "iter_frame_blocks", "movie_info"]


@dataclass(frozen=True, slots=True)
class MovieInfo:
    """What the headers of a movie TIFF say, checked against the file's real size.

    ``shape`` is one frame's ``(Y, X)``; ``stored_shape`` / ``stored_axes`` are the series as
    tifffile describes it (tifffile axis codes, e.g. ``TZCYXS`` for ImageJ), and
    ``squeezed_axes`` the positions in ``stored_shape`` of the singleton axes dropped to get
    ``(frames, Y, X)``, ``frame_axis`` the code of the axis kept as frames ("" for a single
    frame). ``contiguous`` says whether the fast, decode-free path applies; then
    ``data_offset`` is the first byte of frame 0 and ``byteorder`` the file's ("<" or ">").
    """

    path: Path
    frames: int
    shape: tuple[int, int]
    dtype: np.dtype
    squeezed_axes: tuple[int, ...]
    file_bytes: int
    stored_shape: tuple[int, ...] = ()
    stored_axes: str = ""
    contiguous: bool = False
    frame_axis: str = ""
    data_offset: int | None = None
    byteorder: str = "="

    @property
    def frame_bytes(self) -> int:
        return self.shape[0] * self.shape[1] * self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        return self.frames * self.frame_bytes


@dataclass(frozen=True, slots=True)
class _Layout:
    info: MovieInfo
    offset: int | None  # first byte of frame 0 on the contiguous path
    disk_dtype: np.dtype  # dtype with the file's byte order


def movie_info(path: Path | str) -> MovieInfo:
    """Frames, frame shape and dtype of a movie TIFF, from its headers only.

    Raises:
        SourceError: not a readable TIFF, truncated (pixel data beyond the end of the file),
            not a single-channel movie (a second axis of length > 1, colour samples).
    """
    path = Path(path)
    with open_tiff(path, index=False) as tif:
        return _layout(path, tif).info


def iter_frame_blocks(
    path: Path | str,
    block: int,
    *,
    start: int = 0,
    stop: int | None = None,
    info: MovieInfo | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(i, frames[i:i + block])`` for ``i = start, start + block, ...`` up to ``stop``.

    Each block is a fresh ``(n, Y, X)`` array in native byte order, with the file's dtype;
    only that block's bytes are read, so peak memory is about one block. ``start``/``stop``
    let parallel work units read disjoint frame ranges of one file.

    ``info``, this file's :func:`movie_info` from an earlier scan, spares a contiguous movie
    the walk over every page header (~0.1 ms a page: 0.4 s for 4,700 frames, paid again by
    each work unit); a file whose size changed since is refused.
    """
    if not isinstance(block, int | np.integer) or isinstance(block, bool) or block < 1:
        raise ValueError(f"block must be a whole number of frames >= 1, got {block!r}")
    path = Path(path)
    if info is not None and info.contiguous and info.data_offset is not None:
        _check_unchanged(path, info)
        lay = _Layout(info, info.data_offset, info.dtype.newbyteorder(info.byteorder))
        stop = _stop(info, start, stop)
        yield from _contiguous_blocks(path, lay, int(block), int(start), stop)
        return
    with open_tiff(path, index=False) as tif:
        lay = _layout(path, tif)
        info = lay.info
        stop = _stop(info, start, stop)
        if lay.offset is not None:
            yield from _contiguous_blocks(path, lay, int(block), int(start), stop)
            return
        series = tif.series[0]
        for i in range(start, stop, block):
            n = min(block, stop - i)
            try:
                arr = tif.asarray(key=range(i, i + n), series=series)
            except Exception as exc:
                raise SourceError(
                    path,
                    f"cannot decode frames {i}..{i + n - 1} ({type(exc).__name__}: {exc})",
                    "the file is damaged: download it again",
                ) from exc
            yield i, np.ascontiguousarray(arr.reshape(n, *info.shape), dtype=info.dtype)


def _stop(info: MovieInfo, start: int, stop: int | None) -> int:
    stop = info.frames if stop is None else min(int(stop), info.frames)
    if not 0 <= start <= stop:
        raise ValueError(f"start must be in 0..{stop}, got {start!r}")
    return stop


def _check_unchanged(path: Path, info: MovieInfo) -> None:
    size = os.path.getsize(path)
    if size != info.file_bytes:
        raise SourceError(
            path,
            f"changed since its headers were read: now {size:,} bytes, then {info.file_bytes:,}",
            "re-run on a source that is not being modified",
        )


def _contiguous_blocks(
    path: Path, lay: _Layout, block: int, start: int, stop: int
) -> Iterator[tuple[int, np.ndarray]]:
    info = lay.info
    native = lay.disk_dtype.newbyteorder("=")
    swap = lay.disk_dtype != native
    with open(path, "rb", buffering=0) as fh:
        for i in range(start, stop, block):
            n = min(block, stop - i)
            out = np.empty((n, *info.shape), dtype=lay.disk_dtype)
            view = memoryview(out).cast("B")
            fh.seek(lay.offset + i * info.frame_bytes)
            got = 0
            while got < len(view):
                k = fh.readinto(view[got:])
                if not k:
                    raise SourceError(
                        path,
                        f"truncated TIFF: frame {i + got // info.frame_bytes} ends beyond the "
                        f"file's {os.path.getsize(path):,} bytes",
                        "download the file again (or restore it from the original archive)",
                    )
                got += k
            yield i, (out.byteswap().view(native) if swap else out)


def _layout(path: Path, tif: tifffile.TiffFile) -> _Layout:
    size = os.path.getsize(path)
    try:
        with _tifffile_errors() as errors:
            pages = list(indexed(tif).pages)  # every IFD: the extent checks need them all
            series = tif.series[0]
        stored_shape = tuple(int(n) for n in series.get_shape(False))
        stored_axes = str(series.get_axes(False))
        dtype = np.dtype(series.dtype)
        keyframe = series.keyframe
        offset = series.dataoffset
    except Exception as exc:
        raise SourceError(
            path,
            f"not a readable TIFF ({type(exc).__name__}: {exc})",
            "check that the file is a TIFF from the published dataset and download it again",
        ) from exc
    if errors:
        # tifffile logs, rather than raises, when the IFD chain runs off the end of the file;
        # it then makes up a shorter series, which must not pass for the real movie.
        if any("offset" in msg and "circular" not in msg for msg in errors):
            raise SourceError(
                path,
                f"truncated TIFF: the chain of page headers runs past the end of the file "
                f"({size:,} bytes; tifffile: {errors[0]})",
                "download the file again (or restore it from the original archive)",
            )
        raise SourceError(
            path,
            f"corrupt TIFF (tifffile: {errors[0]})",
            "download the file again (or restore it from the original archive)",
        )
    _check_imagej_count(path, tif, pages, series, size)
    hyperstack = bool((tif.imagej_metadata or {}).get("hyperstack"))
    frames, shape, squeezed, frame_axis = _squeeze(path, stored_shape, stored_axes, hyperstack)
    if min(shape) < 1:
        raise SourceError(path, f"the TIFF declares empty frames ({shape[0]}x{shape[1]} pixels)",
                          "download the file again (or restore it from the original archive)")
    info = MovieInfo(
        path=path,
        frames=frames,
        shape=shape,
        dtype=dtype,
        squeezed_axes=squeezed,
        file_bytes=size,
        stored_shape=stored_shape,
        stored_axes=stored_axes,
        contiguous=False,
        frame_axis=frame_axis,
    )
    for page in pages:
        check_page_extent(path, page, size)
    if offset is not None and keyframe.compression == 1 and keyframe.is_final:
        end = offset + info.nbytes
        if end > size:  # ImageJ > 4 GB: one IFD, the other frames follow it unannounced
            raise truncated_error(path, end, size)
        disk = dtype.newbyteorder(tif.byteorder)
        info = MovieInfo(**{**_fields(info), "contiguous": True, "data_offset": int(offset),
                            "byteorder": tif.byteorder})
        return _Layout(info, int(offset), disk)
    # Compressed or scattered pages: the headers' sizes must be what the file can hold.
    check_decoded_size(path, (frames, *shape), dtype, size)
    if len(series) != frames or any(p is None for p in series):
        raise SourceError(
            path,
            f"{len(series)} pages make {frames} frames of {shape[0]}x{shape[1]}: "
            "each frame must be one page when the pixel data is compressed or scattered",
            "re-save the movie as a plain multipage TIFF (one page per frame), e.g. with "
            "tifffile.imwrite or ImageJ 'Save As > Tiff'",
        )
    return _Layout(info, None, dtype)


@contextmanager
def _tifffile_errors() -> Iterator[list[str]]:
    """Collect the ERROR records tifffile logs while parsing (truncation shows up there)."""
    errors: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            errors.append(record.getMessage())

    handler = _Collect(level=logging.ERROR)
    logger = logging.getLogger("tifffile")
    logger.addHandler(handler)
    try:
        yield errors
    finally:
        logger.removeHandler(handler)


def _check_imagej_count(
    path: Path, tif: tifffile.TiffFile, pages: list, series: object, size: int
) -> None:
    """An ImageJ file whose description announces more images than its series holds."""
    meta = tif.imagej_metadata
    if not meta:
        return
    announced = int(meta.get("images", 0) or 0)
    found = int(np.prod(series.get_shape(False)[:-3] or (1,)))  # type: ignore[attr-defined]
    if getattr(series, "kind", "") != "imagej" or announced > found:
        raise SourceError(
            path,
            f"truncated or damaged ImageJ TIFF: its description announces {announced} images "
            f"but only {len(pages)} page header(s) and {found} image(s) could be read "
            f"from its {size:,} bytes",
            "download the file again (or restore it from the original archive)",
        )


def _fields(info: MovieInfo) -> dict:
    return {name: getattr(info, name) for name in MovieInfo.__slots__}


def _squeeze(
    path: Path, shape: tuple[int, ...], axes: str, hyperstack: bool = False
) -> tuple[int, tuple[int, int], tuple[int, ...], str]:
    """(frames, (Y, X), positions of dropped singleton axes, frame axis code) of a series."""
    if axes.endswith("S") and len(axes) == len(shape):
        if shape[-1] != 1:
            raise SourceError(
                path,
                f"has {shape[-1]} samples per pixel (colour/RGB; axes {axes}, shape {shape}); "
                "a movie must be single-channel",
                "export one grey-scale channel as a (T, Y, X) multipage TIFF",
            )
        shape, axes = shape[:-1], axes[:-1]
    if len(shape) < 2 or not axes.endswith("YX"):
        raise SourceError(
            path,
            f"unexpected axis order {axes} (shape {shape}): a movie is frames of (Y, X) pages",
            "re-save the movie as (T, Y, X), one page per frame",
        )
    lead = shape[:-2]
    keep = [i for i, n in enumerate(lead) if n != 1]
    if len(keep) > 1:
        extra = ", ".join(f"{axes[i]}={shape[i]}" for i in keep)
        raise SourceError(
            path,
            f"has more than one non-singleton axis besides Y and X ({extra}; axes {axes}, "
            f"shape {shape}); a movie must be (T, Y, X)",
            "split it into one (T, Y, X) file per plane/channel (DeepCAD uses '..._sliceN.tif' "
            "per plane) or re-save the hyperstack in ImageJ with only a time axis",
        )
    frames = shape[keep[0]] if keep else 1
    frame_axis = axes[keep[0]] if keep else ""
    _check_frame_axis(path, frame_axis, frames, shape, axes, hyperstack)
    dropped = tuple(i for i in range(len(lead)) if i not in keep)
    if not keep and lead:
        dropped = dropped[1:]  # a single frame: the first leading axis is T (length 1)
    return int(frames), (int(shape[-2]), int(shape[-1])), dropped, frame_axis


# axis codes that may hold a movie's frames: time, tifffile's generic page sequence and
# "shaped" axis; a plain (non-hyperstack) ImageJ stack's Z is checked separately
_TIME_LIKE = {"T", "I", "Q"}


def _check_frame_axis(path: Path, axis: str, frames: int, shape: tuple[int, ...], axes: str,
                      hyperstack: bool) -> None:
    if not axis or axis in _TIME_LIKE or (axis == "Z" and not hyperstack):
        return
    what = {"Z": f"a z-stack ({frames} planes at one time point)",
            "C": f"a channel stack ({frames} channels at one time point)"}.get(
                axis, f"{frames} images along axis {axis!r}, which is not time")
    raise SourceError(
        path,
        f"unexpected axis order: {what} (axes {axes}, shape {shape}); a movie is (T, Y, X)",
        "if the images really are time points, re-save the file as (T, Y, X) (ImageJ: "
        "Image > Hyperstacks > Re-order Hyperstack, or Image > Properties with frames="
        f"{frames}, slices=1, channels=1; tifffile: metadata={{'axes': 'TYX'}})",
    )
