"""What a stream reads: the groups matched, each variable's window on its own grid, and
the blocks (shard-aligned runs of samples) an epoch is made of.

Built once in the process that makes the stream, from the consolidated metadata alone (one
GET, no store client opened: DataLoader workers inherit nothing they could hang on).
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from cloudmic.client.metadata import ArrayMeta
from cloudmic.errors import GroupNotFoundError, VariableNotFoundError

# unit -> (quantity, factor to the base unit: nm for lengths, s for time)
UNITS = {"nm": ("length", 1.0), "um": ("length", 1e3), "µm": ("length", 1e3),
         "mm": ("length", 1e6), "s": ("time", 1.0), "ms": ("time", 1e-3)}


@dataclass(frozen=True, slots=True)
class VarPlan:
    """Where a variable's patch window lies, relative to the reference variable's grid."""

    name: str
    path: str  # the array's path inside its group
    meta: ArrayMeta
    axes: tuple[int, ...]  # the array axes the patch dims map to
    scale: tuple[Fraction, ...]  # this grid's pixels per reference pixel, per patch dim

    def starts(self, origins: np.ndarray) -> np.ndarray:
        """Window corners on this grid, (items, patch dims), for origins in reference
        pixels: exact integers, as origins lie on a grid every variable can be cut at."""
        num = np.array([s.numerator for s in self.scale], dtype=np.int64)
        den = np.array([s.denominator for s in self.scale], dtype=np.int64)
        return origins * num // den

    def cut(self, block: np.ndarray, samples: np.ndarray, origins: np.ndarray,
            patch: Sequence[int], stacked: bool) -> np.ndarray:
        """The windows at ``origins`` of ``block[samples]`` (``block`` has a leading sample
        axis), as one array (items, *item shape): a single gather through a strided view
        when the patch takes every axis but the sample one, else one slice per item."""
        shape = self.patch_shape(patch, stacked)
        axes = tuple(a + (0 if stacked else 1) for a in self.axes)  # axes of ``block``
        starts = self.starts(origins)
        if axes == tuple(range(1, block.ndim)):
            view = np.lib.stride_tricks.sliding_window_view(block, shape, axis=axes)
            return view[(samples, *starts.T)]
        out = np.empty((len(samples), *shape), block.dtype)
        for k, (j, lo) in enumerate(zip(samples, starts, strict=True)):
            window = [slice(None)] * (block.ndim - 1)
            for a, x in zip(axes, lo, strict=True):
                window[a - 1] = slice(int(x), int(x) + shape[a - 1])
            out[k] = block[j][tuple(window)]
        return out

    def patch_shape(self, patch: Sequence[int], stacked: bool) -> tuple[int, ...]:
        """Shape of one item of this variable (non-patch axes kept whole)."""
        shape = list(self.meta.shape[1:] if stacked else self.meta.shape)
        shift = 1 if stacked else 0
        for k, a in enumerate(self.axes):
            shape[a - shift] = int(patch[k] * self.scale[k])
        return tuple(shape)


@dataclass(frozen=True, slots=True)
class GroupPlan:
    """One group the stream reads, with its variables' plans."""

    path: str
    plans: tuple[VarPlan, ...]
    stacked: bool  # samples along the first dim, else the group is one sample
    length: int  # samples
    block: int  # samples per read: one shard when stacked
    steps: tuple[int, ...]  # origins on a grid every variable can be cut at exactly
    has_stems: bool  # a ``sample`` coordinate names the samples


@dataclass(frozen=True, slots=True)
class Block:
    group: int
    start: int
    stop: int


def glob(path: str, pattern: str) -> bool:
    """Glob per path segment: ``*`` never crosses a ``/`` (``*/cell*`` is one level down)."""
    parts, pats = path.split("/"), pattern.split("/")
    return len(parts) == len(pats) and all(
        fnmatch.fnmatchcase(a, b) for a, b in zip(parts, pats, strict=True))


def match_groups(url: str, arrays: Mapping[str, ArrayMeta], patterns: Sequence[str]) -> list[str]:
    groups = sorted({"/".join(parts[:k]) for p in arrays for parts in [p.split("/")]
                     for k in range(1, len(parts))})
    matched = [g for g in groups if any(glob(g, p) for p in patterns)]
    if not matched:
        raise GroupNotFoundError(f"{url}: no group {' or '.join(map(repr, patterns))}; "
                                 f"groups: {', '.join(groups)}")
    return matched


def physical_patch(url: str, arrays: Mapping[str, ArrayMeta], ref: str,
                   patch: Mapping[str, int | str], read_coord: Any) -> dict[str, int]:
    """Patch sizes given in physical units (``"2.5um"``, ``"400nm"``, ``"0.5s"``) in pixels
    of the reference array ``ref``, from its coordinates (``read_coord(path)`` gives the
    first two values)."""
    parent = ref.rpartition("/")[0]
    out = {}
    for d, v in patch.items():
        if not isinstance(v, str):
            out[d] = int(v)
            continue
        m = re.fullmatch(r"\s*([0-9.]+)\s*(nm|um|µm|mm|s|ms)\s*", v)
        coord = arrays.get(f"{parent}/{d}")
        unit = (coord.attrs.get("units") if coord else None) or ""
        if m is None or unit not in UNITS or UNITS[unit][0] != UNITS[m[2]][0]:
            raise ValueError(f"patch {d}={v!r}: give a number with a unit (nm, um, s, ms) "
                             f"matching the {d!r} coordinate of {ref!r}, whose units are "
                             f"{unit or 'none'}; or give pixels")
        values = read_coord(f"{parent}/{d}")
        step = float(values[1] - values[0]) * UNITS[unit][1] if len(values) > 1 else 0.0
        if step <= 0:
            raise ValueError(f"patch {d}={v!r}: {ref!r} has no pixel spacing along {d!r}")
        out[d] = max(1, round(float(m[1]) * UNITS[m[2]][1] / step))
    return out


class Planner:
    """Builds the group plans of one stream; fixes the patch's dim order on the way."""

    def __init__(self, url: str, paths: Mapping[str, str], patch: Mapping[str, int]) -> None:
        self.url, self.paths, self.patch = url, dict(paths), dict(patch)

    def group(self, path: str, arrays: Mapping[str, ArrayMeta], dim: str | None) -> GroupPlan:
        plans: list[VarPlan] = []
        for name, rel in self.paths.items():
            meta = arrays.get(f"{path}/{rel}")
            if meta is None or meta.dtype == "string":
                have = sorted(p.removeprefix(f"{path}/") for p, m in arrays.items()
                              if p.startswith(f"{path}/") and m.dtype != "string"
                              and (p.rsplit("/", 1)[-1],) != m.dims
                              and not p.rsplit("/", 1)[-1].startswith("loc_"))
                raise VariableNotFoundError(f"{self.url}: group {path!r} has no variable "
                                            f"{rel!r}; variables: {', '.join(have)}")
            plans.append(self._var(path, name, rel, meta, plans[0] if plans else None, dim))
        ref = plans[0].meta
        # the group's unit dim is a sample axis only when the patch does not cut along it
        stacked = bool(dim is not None and ref.dims and ref.dims[0] == dim
                       and dim not in self.patch)
        steps = tuple(math.lcm(*(p.scale[k].denominator for p in plans))
                      for k in range(len(self.patch)))
        stems = stacked and f"{path}/sample" in arrays
        return GroupPlan(path, tuple(plans), stacked, ref.shape[0] if stacked else 1,
                         ref.block[0] if stacked else 1, steps, stems)

    def _var(self, path: str, name: str, rel: str, meta: ArrayMeta, ref: VarPlan | None,
             dim: str | None) -> VarPlan:
        n = len(self.patch)
        axes = tuple(range(len(meta.shape) - n, len(meta.shape)))
        if ref is None:
            names = tuple(meta.dims[a] for a in axes)
            if set(names) != set(self.patch):
                raise ValueError(f"patch dims {sorted(self.patch)} do not match the spatial dims "
                                 f"{names} of {name!r}; use e.g. {dict.fromkeys(names, 64)}")
            self.patch = {d: self.patch[d] for d in names}  # array order
            for d, a in zip(names, axes, strict=True):
                if not 0 < self.patch[d] <= meta.shape[a]:
                    raise ValueError(
                        f"patch {d}={self.patch[d]} does not fit {name!r} of {path!r}, which is "
                        f"{meta.shape[a]} along {d!r}; pass a size between 1 and {meta.shape[a]}")
            return VarPlan(name, rel, meta, axes, (Fraction(1),) * n)
        scale = tuple(Fraction(meta.shape[a], ref.meta.shape[r])
                      for a, r in zip(axes, ref.axes, strict=True))
        if dim is not None and meta.shape[0] != ref.meta.shape[0]:
            raise ValueError(f"{name!r} has {meta.shape[0]} samples but {ref.name!r} has "
                             f"{ref.meta.shape[0]} in {path!r}: they cannot be paired")
        for d, s in zip(self.patch, scale, strict=True):
            if (self.patch[d] * s).denominator != 1:
                raise ValueError(f"patch {d}={self.patch[d]} maps to a fractional window "
                                 f"on {name!r} (scale {s}); use a multiple of {s.denominator}")
        return VarPlan(name, rel, meta, axes, scale)


def check_coords(url: str, groups: Sequence[GroupPlan], arrays: Mapping[str, ArrayMeta],
                 coords: Sequence[str]) -> None:
    """Per-sample coordinates shipped with each item must exist in every stacked group."""
    for g in groups:
        dim = g.plans[0].meta.dims[0]
        have = sorted(p.rsplit("/", 1)[1] for p, m in arrays.items()
                      if p.rsplit("/", 1)[0] == g.path and m.dims == (dim,))
        for c in coords:
            if not g.stacked or c not in have:
                raise VariableNotFoundError(f"{url}: group {g.path!r} has no per-sample "
                                            f"coordinate {c!r}; it has: "
                                            f"{', '.join(have) or 'none'}")


class Blocks:
    """The blocks of a stream's groups, in group order, computed on access: memory is
    O(groups) plus one offset per block, however many samples there are."""

    def __init__(self, groups: Sequence[GroupPlan], per_sample: Sequence[int]) -> None:
        self.groups = list(groups)
        counts = [-(-g.length // g.block) for g in groups]
        self.first = np.concatenate(([0], np.cumsum(counts, dtype=np.int64)))
        sizes = [np.minimum(g.block, g.length - np.arange(0, g.length, g.block)) * n
                 for g, n in zip(groups, per_sample, strict=True)]
        #: item offset of every block, plus the total at the end
        self.offsets = np.concatenate(([0], np.cumsum(np.concatenate(sizes or [[]]),
                                                       dtype=np.int64))).astype(np.int64)

    def __len__(self) -> int:
        return int(self.first[-1])

    def __getitem__(self, bi: int) -> Block:
        gi = int(np.searchsorted(self.first, bi, side="right")) - 1
        g = self.groups[gi]
        start = (int(bi) - int(self.first[gi])) * g.block
        return Block(gi, start, min(start + g.block, g.length))
