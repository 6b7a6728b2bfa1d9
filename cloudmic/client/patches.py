"""``cloudmic.PatchStream``: aligned random patches, read block by block.

Reading one patch at a time from a sharded store costs several GETs per patch (~60
samples/s, STACK-NOTES "Reading patterns"). So the stream reads whole shard-aligned
blocks of samples (a few ahead, concurrently), cuts every sample's patch from the
decoded block at once, and shuffles over a buffer of blocks. The order of an epoch is a
pure function of (seed, epoch).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from cloudmic.client.metadata import ArrayMeta, read_store_metadata
from cloudmic.storage.location import Location

log = logging.getLogger(__name__)

try:  # a torch IterableDataset when torch is installed, a plain iterable otherwise
    from torch.utils.data import IterableDataset as _Base
    from torch.utils.data import get_worker_info
except ImportError:  # pragma: no cover - exercised in environments without torch
    _Base = object  # type: ignore[assignment,misc]

    def get_worker_info() -> None:  # type: ignore[misc]
        return None


@dataclass(frozen=True, slots=True)
class _VarPlan:
    """Where a variable's patch window lies, relative to the reference variable's grid."""

    name: str
    meta: ArrayMeta
    axes: tuple[int, ...]  # the array axes the patch dims map to
    scale: tuple[Fraction, ...]  # this grid's pixels per reference pixel, per patch dim


class PatchStream(_Base):  # type: ignore[misc,valid-type]
    """Aligned patches of several variables of one group, one per sample per epoch.

    ``patch`` gives the window in pixels of the first (reference) variable, e.g.
    ``{"y": 64, "x": 64}``; the other variables get the window covering the same field of
    view on their own grid (a 2x GT gets 128x128). Each item is a dict
    ``{variable: ndarray, "__key__": "<group>/<sample>", "index": i, "origin": {...}}``.
    """

    def __init__(
        self,
        url: str,
        group: str,
        variables: Sequence[str],
        patch: Mapping[str, int],
        *,
        seed: int = 0,
        shuffle: bool = True,
        buffer_blocks: int = 4,
        prefetch: int = 2,
        codec_pipeline: str = "zarrs",
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not variables:
            raise ValueError("PatchStream needs at least one variable, e.g. ['wf', 'gt']")
        self.url, self.group, self.variables = url, group, list(variables)
        self.patch = dict(patch)
        self.seed, self.shuffle, self.epoch = seed, shuffle, 0
        self.buffer_blocks, self.prefetch = max(1, buffer_blocks), max(1, prefetch)
        self.codec_pipeline = codec_pipeline
        self.storage_options = dict(storage_options or {})
        loc = Location.parse(url, **self.storage_options)
        self._url = loc.url
        self.storage_options = loc.storage_options  # resolved credentials travel to workers
        _, arrays = read_store_metadata(loc)
        self._plans = self._make_plans(arrays)
        ref = self._plans[0].meta
        self.length = ref.shape[0]
        self.block = ref.block[0]
        self.steps = tuple(  # positions on a grid every variable can be cut at exactly
            math.lcm(*(s.denominator for s in (p.scale[k] for p in self._plans)))
            for k in range(len(self.patch))
        )

    def _make_plans(self, arrays: dict[str, ArrayMeta]) -> list[_VarPlan]:
        in_group = {p.split("/", 1)[1]: m for p, m in arrays.items()
                    if p.startswith(f"{self.group}/")}
        if not in_group:
            groups = sorted({p.split("/", 1)[0] for p in arrays if "/" in p})
            raise KeyError(f"{self.url}: no group {self.group!r}; groups: {', '.join(groups)}")
        plans: list[_VarPlan] = []
        for name in self.variables:
            meta = in_group.get(name)
            if meta is None or meta.dtype == "string":
                have = sorted(n for n, m in in_group.items() if m.dtype != "string"
                              and n not in m.dims)
                raise KeyError(f"{self.url}: group {self.group!r} has no variable {name!r}; "
                               f"variables: {', '.join(have)}")
            plans.append(self._plan(name, meta, plans[0] if plans else None))
        return plans

    def _plan(self, name: str, meta: ArrayMeta, ref: _VarPlan | None) -> _VarPlan:
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
                        f"patch {d}={self.patch[d]} does not fit {name!r}, which is "
                        f"{meta.shape[a]} along {d!r}; pass a size between 1 and {meta.shape[a]}")
            scale = (Fraction(1),) * n
        else:
            scale = tuple(Fraction(meta.shape[a], ref.meta.shape[r])
                          for a, r in zip(axes, ref.axes, strict=True))
            if meta.shape[0] != ref.meta.shape[0]:
                raise ValueError(f"{name!r} has {meta.shape[0]} samples but {ref.name!r} has "
                                 f"{ref.meta.shape[0]}: they cannot be paired")
            for d, s in zip(self.patch, scale, strict=True):
                if (self.patch[d] * s).denominator != 1:
                    raise ValueError(f"patch {d}={self.patch[d]} maps to a fractional window "
                                     f"on {name!r} (scale {s}); use a multiple of {s.denominator}")
        return _VarPlan(name, meta, axes, scale)

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    # ---- order: pure functions of (seed, epoch) ----
    def block_order(self, epoch: int) -> np.ndarray:
        n_blocks = math.ceil(self.length / self.block)
        if not self.shuffle:
            return np.arange(n_blocks)
        return np.random.default_rng([self.seed, epoch, 0]).permutation(n_blocks)

    def origins(self, epoch: int, start: int, stop: int) -> np.ndarray:
        """Patch origins (reference pixels) of samples [start, stop): one row per sample."""
        ref = self._plans[0].meta
        out = np.empty((stop - start, len(self.patch)), dtype=np.int64)
        for k, (d, a) in enumerate(zip(self.patch, self._plans[0].axes, strict=True)):
            room = (ref.shape[a] - self.patch[d]) // self.steps[k]
            rng = np.random.default_rng([self.seed, epoch, 1, k, start])
            out[:, k] = rng.integers(0, room + 1, size=stop - start) * self.steps[k]
        return out

    # ---- I/O: opened lazily in the process that iterates ----
    def _arrays(self) -> list[Any]:
        import zarr

        loc = Location(self._url, self.storage_options)
        store = loc.zarr_store(read_only=True)
        cfg = {"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"} if (
            self.codec_pipeline == "zarrs") else {}
        with zarr.config.set(cfg), warnings.catch_warnings():  # pipeline binds at open
            # zarrs rebuilds the obstore store on its side; it says so once per array
            warnings.filterwarnings("ignore", message="Successfully reconstructed a store")
            group = zarr.open_group(store, mode="r", path=self.group)
            arrays = [group[p.name] for p in self._plans]
            self._stems = group["sample"][:] if "sample" in group else None
        return arrays

    def _read_block(self, arrays: list[Any], b: int, epoch: int) -> list[dict[str, Any]]:
        start, stop = b * self.block, min((b + 1) * self.block, self.length)
        origins = self.origins(epoch, start, stop)
        blocks = [arr[start:stop] for arr in arrays]
        items = []
        for j in range(stop - start):
            i = start + j
            item: dict[str, Any] = {
                "__key__": f"{self.group}/{self._stems[i] if self._stems is not None else i}",
                "index": i, "origin": dict(zip(self.patch, origins[j].tolist(), strict=True))}
            for plan, block in zip(self._plans, blocks, strict=True):
                window = [slice(None)] * (block.ndim - 1)
                for k, (d, a) in enumerate(zip(self.patch, plan.axes, strict=True)):
                    lo = int(origins[j, k] * plan.scale[k])
                    window[a - 1] = slice(lo, lo + int(self.patch[d] * plan.scale[k]))
                item[plan.name] = np.ascontiguousarray(block[j][tuple(window)])
            items.append(item)
        return items

    def _worker_share(self, order: np.ndarray) -> np.ndarray:
        info = get_worker_info()
        return order if info is None else order[info.id::info.num_workers]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch = self.epoch
        mine = self._worker_share(self.block_order(epoch))
        arrays = self._arrays()
        rng = np.random.default_rng([self.seed, epoch, 2, int(mine[0]) if len(mine) else 0])
        with ThreadPoolExecutor(self.prefetch) as pool:
            futures = [pool.submit(self._read_block, arrays, int(b), epoch) for b in mine]
            for g in range(0, len(futures), self.buffer_blocks):
                buffer = [it for f in futures[g:g + self.buffer_blocks] for it in f.result()]
                for k in (rng.permutation(len(buffer)) if self.shuffle else range(len(buffer))):
                    yield buffer[k]
