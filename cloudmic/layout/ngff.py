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

from collections.abc import Sequence
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


def downsample_mean(a: np.ndarray, step: Sequence[int]) -> np.ndarray:
    """Block mean with partial edge blocks averaged over the pixels they have."""
    out = a.astype("float64")
    for axis, f in enumerate(step):
        if f == 1:
            continue
        starts = np.arange(0, out.shape[axis], f)
        counts = np.diff(np.append(starts, out.shape[axis])).astype("float64")
        shape = [1] * out.ndim
        shape[axis] = len(counts)
        out = np.add.reduceat(out, starts, axis=axis) / counts.reshape(shape)
    if np.issubdtype(a.dtype, np.integer):
        info = np.iinfo(a.dtype)
        return np.clip(np.rint(out), info.min, info.max).astype(a.dtype)
    return out.astype(a.dtype)


def downsample_mode(a: np.ndarray, step: Sequence[int]) -> np.ndarray:
    """Block mode (ties to the smaller id); edge blocks are padded by repeating their edge,
    so a result is always an id present in its block."""
    pad = [(0, (-n) % f) for n, f in zip(a.shape, step, strict=True)]
    p = np.pad(a, pad, mode="edge") if any(w for _, w in pad) else a
    split = []
    for n, f in zip(p.shape, step, strict=True):
        split += [n // f, f]
    blocks = p.reshape(split)
    nd = a.ndim
    blocks = blocks.transpose(*range(0, 2 * nd, 2), *range(1, 2 * nd, 2))
    flat = np.sort(blocks.reshape(*blocks.shape[:nd], -1), axis=-1)
    k = flat.shape[-1]
    counts = np.zeros(flat.shape, dtype=np.int32)
    for j in range(k):  # k = prod(step) is small (4 or 8): O(k^2) compares stay cheap
        counts[..., j] = (flat == flat[..., j : j + 1]).sum(-1)
    best = np.argmax(counts, axis=-1)  # first maximum: the smallest id among ties
    return np.take_along_axis(flat, best[..., None], axis=-1)[..., 0]


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
