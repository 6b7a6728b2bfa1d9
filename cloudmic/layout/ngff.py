"""OME-NGFF 0.5 image groups (ADR 0004): pyramids, pixel-centre coordinates, ``ome`` metadata.

An image group holds one child group per level (``0/``, ``1/``, ...) with the named variable
and its 1-D coordinates, so plain ``xr.open_datatree`` gives clean Datasets; the group's
``ome.multiscales`` points at ``k/<name>``. Labels live in ``labels/<name>/k/<name>`` with
the same levels. Coordinates are pixel centres ``(i + 0.5) * scale_k`` and the NGFF
transforms say the same (``translation = scale_k / 2``), so every level aligns in physical
space. Level k is computed from level k-1 in memory (one pass over level 0): images by block
mean rounded to their dtype, labels by block mode (ties to the smaller id), which never
invents an id.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cloudmic.layout.schema import VarSpec

NGFF_VERSION = "0.5"
# UDUNITS names NGFF expects, from the short units cloudmic writes in coordinate attrs
UNIT_NAMES = {"nm": "nanometer", "um": "micrometer", "s": "second"}


@dataclass(frozen=True)
class Axis:
    name: str
    kind: str  # "space" | "time"
    unit: str  # short form: nm, um, s
    scale: float  # level-0 pixel size in ``unit``
    note: str | None = None  # where the pixel size comes from, when not stated as written

    def ome(self) -> dict[str, str]:
        return {"name": self.name, "type": self.kind, "unit": UNIT_NAMES[self.unit]}


def level_factors(steps: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    """Cumulative factors of each level from the per-level relative steps (level 0 = 1s)."""
    out = [tuple(1 for _ in steps[0])] if steps else []
    for step in steps:
        out.append(tuple(a * b for a, b in zip(out[-1], step, strict=True)))
    return out


def level_shape(shape: Sequence[int], factor: Sequence[int]) -> tuple[int, ...]:
    return tuple(-(-n // f) for n, f in zip(shape, factor, strict=True))


def pixel_centres(n: int, scale: float) -> np.ndarray:
    return (np.arange(n, dtype="float64") + 0.5) * scale


# Downsampling works box by box: per axis the full blocks and the one partial edge block, so
# every block of a box has the same pixel count and is summed from strided views of the box (one
# view per offset in the block), level rows a chunk at a time so temporaries stay small. The
# results are bit-identical to the reference definitions (tests/layout/test_downsample.py):
# a float64 block mean taken axis by axis in axis order, each axis summed as numpy's
# ``add.reduceat`` does and divided by its pixel count, then rounded half to even and clipped
# for integers; and the mode of the block padded by repeating its edge, ties to the smaller id.
_CHUNK = 1 << 17  # level pixels per pass
# reduceat adds the pixels after a block's first one left to right when there are fewer than
# this many, else pairwise with 8 accumulators (numpy's pairwise_sum)
_PAIRWISE_FROM = 8


def _boxes(shape: Sequence[int], step: Sequence[int]) -> Iterator[
        tuple[tuple[slice, ...], tuple[slice, ...], tuple[int, ...]]]:
    """(source box, level box, pixels per block along each axis) of every non-empty box."""
    per_axis = []
    for n, f in zip(shape, step, strict=True):
        full, rest = divmod(n, f)
        parts = [(slice(0, full * f), slice(0, full), f)] if full else []
        if rest:
            parts.append((slice(full * f, n), slice(full, full + 1), rest))
        per_axis.append(parts)
    for parts in itertools.product(*per_axis):
        yield (tuple(p[0] for p in parts), tuple(p[1] for p in parts),
               tuple(p[2] for p in parts))


def _chunks(level: np.ndarray, block: Sequence[int]) -> Iterator[tuple[slice, slice]]:
    """(source rows, level rows) along axis 0, about ``_CHUNK`` level pixels at a time."""
    rows = max(1, _CHUNK // max(1, math.prod(level.shape[1:])))
    for i in range(0, level.shape[0], rows):
        j = min(i + rows, level.shape[0])
        yield slice(i * block[0], j * block[0]), slice(i, j)


def _offset_views(x: np.ndarray, block: Sequence[int]) -> Iterator[np.ndarray]:
    """One strided view per offset in the block (C order), each shaped like the level."""
    for offset in np.ndindex(*block):
        yield x[tuple(slice(d, None, f) for d, f in zip(offset, block, strict=True))]


def _exact_accumulator(dtype: np.dtype, pixels: int) -> np.dtype | None:
    """An integer dtype that holds block sums (plus the rounding offset) when the float64 mean
    is exact: integers of at most 32 bits and a power-of-two pixel count, so every partial mean
    is a dyadic fraction float64 holds exactly and the result is the sum rounded half to even."""
    if not np.issubdtype(dtype, np.integer) or pixels & (pixels - 1):
        return None
    bits, k = dtype.itemsize * 8, pixels.bit_length() - 1
    if bits > 32 or bits + 2 * k > 53:
        return None
    signed = dtype.kind == "i"
    need = (1 << (bits - 1) if signed else (1 << bits) - 1) * pixels + pixels
    for size in (2, 4):
        acc = np.dtype(f"{'i' if signed else 'u'}{size}")
        if size >= dtype.itemsize and need <= np.iinfo(acc).max:
            return acc
    return np.dtype("i8" if signed else "u8")


def _mean_exact(x: np.ndarray, block: Sequence[int], out: np.ndarray, acc: np.dtype) -> None:
    total = np.empty(out.shape, dtype=acc)
    views = _offset_views(x, block)
    np.copyto(total, next(views))
    for view in views:
        np.add(total, view, out=total)
    k = math.prod(block).bit_length() - 1
    if k:  # floor(sum / 2**k) rounded half to even: add the parity of the floor, then the half
        odd = np.right_shift(total, k)
        np.bitwise_and(odd, 1, out=odd)
        total += odd
        if k > 1:
            total += (1 << (k - 1)) - 1
        total >>= k
    out[...] = total


def _axis_mean(x: np.ndarray, axis: int, f: int) -> np.ndarray:
    """float64 block means of ``f`` pixels along one axis, summed as ``add.reduceat`` sums a
    block: the first pixel plus the left-to-right sum of the others (pairwise from 8 on)."""
    def part(j: int) -> np.ndarray:
        return x[(slice(None),) * axis + (slice(j, None, f),)]

    if f - 1 >= _PAIRWISE_FROM:
        sums = np.add.reduceat(x.astype("float64", copy=False),
                               np.arange(0, x.shape[axis], f), axis=axis)
    else:
        # the running sum is the first operand, so that of two NaNs it is its NaN that stays,
        # as in reduceat; never in place: numpy adds a 1-element array into itself as a
        # reduction, which keeps the other NaN
        sums = part(1)
        for j in [*range(2, f), 0]:
            sums = np.add(sums, part(j), dtype="float64")
    sums /= f
    return sums


def _mean_float(x: np.ndarray, block: Sequence[int], out: np.ndarray) -> None:
    mean = x
    for axis, f in enumerate(block):
        if f > 1:
            mean = _axis_mean(mean, axis, f)
    mean = mean.astype("float64", copy=False)
    if np.issubdtype(out.dtype, np.integer):
        info = np.iinfo(out.dtype)
        mean = np.clip(np.rint(mean), info.min, info.max)
    else:
        nan = np.isnan(mean)
        if nan.any():
            mean[nan] = _reduceat_mean(x, block, np.nonzero(nan))
    out[...] = mean


def _reduceat_mean(x: np.ndarray, block: Sequence[int],
                   where: tuple[np.ndarray, ...]) -> np.ndarray:
    """The means of the blocks at ``where``, summed by ``add.reduceat`` itself: which of two NaNs
    an add keeps depends on numpy's vector loop (and on the element's position in it), so NaN
    signs and payloads stay those of the reference only when its own per-block loop sums."""
    blocks = np.stack([view[where] for view in _offset_views(x, block)], axis=-1)
    sums = blocks.reshape(-1, *block).astype("float64")
    for axis, f in enumerate(block, start=1):
        if f > 1:
            sums = np.add.reduceat(sums, [0], axis=axis) / f
    return sums.reshape(-1)


def downsample_mean(a: np.ndarray, step: Sequence[int]) -> np.ndarray:
    """Block mean with partial edge blocks averaged over the pixels they have: float64 means
    taken axis by axis, rounded half to even (and clipped) into integer dtypes."""
    if a.ndim == 0:
        return downsample_mean(a.reshape(1), (1,)).reshape(())
    out = np.empty(level_shape(a.shape, step), dtype=a.dtype)
    for src, dst, block in _boxes(a.shape, step):
        x, level = a[src], out[dst]
        acc = _exact_accumulator(a.dtype, math.prod(block))
        for rows, level_rows in _chunks(level, block):
            if acc is not None:
                _mean_exact(x[rows], block, level[level_rows], acc)
            else:
                _mean_float(x[rows], block, level[level_rows])
    return out


@functools.cache
def _sorting_network(k: int) -> list[tuple[int, int]]:
    """Batcher's odd-even merge sort of ``k`` items: compare-exchange pairs (lower index first),
    those of the next power of two with both items present."""
    n = 1 << max(0, k - 1).bit_length()
    pairs, p = [], 1
    while p < n:
        d = p
        while d >= 1:
            for j in range(d % p, n - d, 2 * d):
                for i in range(min(d, n - j - d)):
                    if (i + j) // (2 * p) == (i + j + d) // (2 * p) and i + j + d < k:
                        pairs.append((i + j, i + j + d))
            d //= 2
        p *= 2
    return pairs


_NETWORK_UP_TO = 32  # block sizes sorted by a network of vector min/max; larger ones by np.sort


def _sorted_columns(w: np.ndarray) -> list[np.ndarray]:
    """The columns of ``w`` (k, s) sorted, as its k rows: min/max networks for integers."""
    k = w.shape[0]
    if w.dtype.kind not in "biu" or k > _NETWORK_UP_TO:
        return list(np.sort(w, axis=0))
    rows, spare = list(w), np.empty_like(w[0])
    for i, j in _sorting_network(k):
        np.minimum(rows[i], rows[j], out=spare)
        np.maximum(rows[i], rows[j], out=rows[j])
        rows[i], spare = spare, rows[i]
    return rows


def _mode_of_columns(w: np.ndarray) -> np.ndarray:
    """The most frequent value of each column of ``w`` (ties to the smaller value; NaN never
    counts, as it equals nothing): in the sorted column, the start of the longest run, the
    first one among equally long runs. Overwrites ``w``."""
    k, s = w.shape
    rows = _sorted_columns(w)
    nan = np.isnan if w.dtype.kind in "fc" else None
    # key of a position: the length of the run ending there, then earlier positions first
    bits = max(1, (k - 1).bit_length())
    low = (1 << bits) - 1
    run = np.ones(s, dtype=np.min_scalar_type(k))
    if nan is not None:
        run[nan(rows[0])] = 0
    best = np.left_shift(run, bits, dtype=np.min_scalar_type((k + 1) << bits))
    best |= low
    same, key = np.empty(s, bool), np.empty_like(best)
    for j in range(1, k):
        np.equal(rows[j], rows[j - 1], out=same)
        run *= same.view(np.uint8)
        run += 1
        if nan is not None:
            run[nan(rows[j])] = 0
        np.left_shift(run, bits, out=key, dtype=key.dtype)
        key |= low - j
        np.maximum(best, key, out=best)
    length = best >> bits
    start = low - (best & low)
    start -= length
    start += length > 0  # a NaN (length 0) is its own start
    flat = start.astype(np.intp)
    flat *= s
    flat += np.arange(s)
    return np.stack(rows).reshape(-1).take(flat)


def _mode_box(x: np.ndarray, step: Sequence[int], out: np.ndarray) -> None:
    w = np.stack(list(_offset_views(x, step))).reshape(math.prod(step), -1)
    first = w[0]
    if len(w) > 1:
        # most blocks of a label image hold one id: only the others need counting
        mixed = np.not_equal(w[1], first)
        other = np.empty_like(mixed)
        for row in w[2:]:
            mixed |= np.not_equal(row, first, out=other)
        where = np.flatnonzero(mixed)
        if where.size > len(first) // 2:  # noise more than labels: no gathering
            first = _mode_of_columns(w)
        elif where.size:
            first[where] = _mode_of_columns(np.take(w, where, axis=1))
    out[...] = first.reshape(out.shape)


def _edge_padded(x: np.ndarray, step: Sequence[int]) -> np.ndarray:
    """``x`` padded to whole blocks by repeating its last pixel along each axis."""
    for axis, f in enumerate(step):
        n = x.shape[axis]
        if n % f:
            x = x.take(np.minimum(np.arange(n + f - n % f), n - 1), axis=axis)
    return x


def downsample_mode(a: np.ndarray, step: Sequence[int]) -> np.ndarray:
    """Block mode (ties to the smaller id); edge blocks are padded by repeating their edge,
    so a result is always an id present in its block."""
    out = np.empty(level_shape(a.shape, step), dtype=a.dtype)
    # a small array is padded whole, a large one box by box, so only its edges are copied
    parts = ([(a, out)] if a.size <= _CHUNK else
             [(a[src], out[dst]) for src, dst, _ in _boxes(a.shape, step)])
    for x, level in parts:
        x = _edge_padded(x, step)
        for rows, level_rows in _chunks(level, step):
            _mode_box(x[rows], step, level[level_rows])
    return out


def pyramid(level0: np.ndarray, steps: Sequence[Sequence[int]], *,
            labels: bool) -> list[np.ndarray]:
    """Level 0 and every downsampled level, each from the one before."""
    down = downsample_mode if labels else downsample_mean
    levels = [level0]
    for step in steps:
        levels.append(down(levels[-1], step))
    return levels


def multiscales(name: str, axes: Sequence[Axis], array: str, n_levels: int,
                steps: Sequence[Sequence[int]], kind: str) -> dict[str, Any]:
    """``ome.multiscales[0]`` of an image whose level k is the array ``k/<array>``."""
    datasets = []
    for k, factor in enumerate(level_factors(steps)[:n_levels]):
        scale = [ax.scale * f for ax, f in zip(axes, factor, strict=True)]
        datasets.append({
            "path": f"{k}/{array}",
            "coordinateTransformations": [
                {"type": "scale", "scale": scale},
                {"type": "translation", "translation": [s / 2 for s in scale]},
            ],
        })
    return {"name": name, "axes": [ax.ome() for ax in axes], "datasets": datasets, "type": kind}


def image_attrs(name: str, axes: Sequence[Axis], array: str,
                steps: Sequence[Sequence[int]]) -> dict[str, Any]:
    return {"ome": {"version": NGFF_VERSION,
                    "multiscales": [multiscales(name, axes, array, len(steps) + 1, steps,
                                                "mean")]}}


def labels_group_attrs(names: Sequence[str]) -> dict[str, Any]:
    return {"ome": {"version": NGFF_VERSION, "labels": list(names)}}


def label_image_attrs(name: str, axes: Sequence[Axis], steps: Sequence[Sequence[int]],
                      colors: dict[int, Sequence[int]],
                      classes: dict[int, str] | None = None) -> dict[str, Any]:
    """A label image: multiscales (mode) plus ``image-label`` colours (RGBA 0..255) and, for
    class maps, one property per value; ``source`` points back at the image group."""
    label: dict[str, Any] = {
        "version": NGFF_VERSION,
        "colors": [{"label-value": int(v), "rgba": [int(c) for c in rgba]}
                   for v, rgba in sorted(colors.items())],
        "source": {"image": "../../"},
    }
    if classes:
        label["properties"] = [{"label-value": int(v), "class": c}
                               for v, c in sorted(classes.items())]
    return {"ome": {"version": NGFF_VERSION,
                    "multiscales": [multiscales(name, axes, name, len(steps) + 1, steps,
                                                "mode")],
                    "image-label": label}}


def level_variables(prefix: str, array: str, axes: Sequence[Axis], shape: Sequence[int],
                    dtype: str, steps: Sequence[Sequence[int]], attrs: dict[str, Any],
                    unit_axis: int = 0) -> list[VarSpec]:
    """The VarSpecs of every level of one NGFF image: ``prefix/k/array`` (filled by units,
    ``factor`` along the unit axis) and its eager pixel-centre coordinates ``prefix/k/<axis>``.
    """
    out: list[VarSpec] = []
    dims = tuple(ax.name for ax in axes)
    for k, factor in enumerate(level_factors(steps)):
        base = f"{prefix}/{k}" if prefix else str(k)
        lshape = level_shape(shape, factor)
        out.append(VarSpec(f"{base}/{array}", dims, lshape, dtype,
                           {**attrs, "level": k, "downsample_factor": list(factor)},
                           factor=factor[unit_axis]))
        for ax, n, f in zip(axes, lshape, factor, strict=True):
            note = {"provenance": ax.note} if ax.note else {}
            out.append(VarSpec(f"{base}/{ax.name}", (ax.name,), (n,), "float64",
                               {"units": ax.unit, "long_name": f"{ax.name} (pixel centres)",
                                "pixel_size": ax.scale * f, **note},
                               data=pixel_centres(n, ax.scale * f), coord=True))
    return out
