"""``cloudmic.PatchStream``: aligned random patches, read block by block.

Reading one patch at a time from a sharded store costs several GETs per patch (~60
samples/s, STACK-NOTES "Reading patterns"). So the stream reads whole shard-aligned
blocks of samples (a few ahead, concurrently), cuts every sample's patch from the
decoded block at once, and shuffles over a buffer of blocks. The order of an epoch is a
pure function of (seed, epoch).

Groups come in two shapes: stacked (BioSR ``train``: samples along a leading ``sample``
dim, read a shard at a time) and single (a DL-SMLM cell: one sample per group, read
whole, ``patches_per_sample`` patches cut from it). A stream may span many groups.

Distribution: every item of an epoch has a fixed ``position`` (its block's offset plus its
index in the block). The consumers of an epoch (ranks x DataLoader workers) split the
blocks that still hold unconsumed items round-robin in the epoch's block order, so they
cover the epoch exactly once without talking to each other. ``state_dict()`` records the
positions consumed so far as a bitmap (gathered over ranks), so a run resumes mid-epoch on
any number of ranks and workers with no item skipped or repeated.
"""

from __future__ import annotations

import base64
import copy
import fnmatch
import logging
import math
import os
import re
import time
import warnings
import zlib
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from cloudmic.client.metadata import ArrayMeta, read_store_metadata
from cloudmic.errors import StoreError
from cloudmic.storage.location import Location

log = logging.getLogger(__name__)

try:  # a torch IterableDataset when torch is installed, a plain iterable otherwise
    from torch.utils.data import IterableDataset as _Base
    from torch.utils.data import get_worker_info
except ImportError:  # pragma: no cover - exercised in environments without torch
    _Base = object  # type: ignore[assignment,misc]

    def get_worker_info() -> None:  # type: ignore[misc]
        return None


# What a store that is briefly down or overloaded says, through obstore, zarrs or s3fs
_TRANSIENT = re.compile(r"error sending request|connection|timed? ?out|service unavailable|"
                        r"slow ?down|broken pipe|reset by peer|status(?: code)?:? 5\d\d", re.I)


def is_transient(exc: BaseException) -> bool:
    """A read error worth retrying (the store is unreachable or overloaded), as opposed to
    bad data (a checksum or decode error), which fails the same way every time."""
    return isinstance(exc, ConnectionError | TimeoutError) or bool(_TRANSIENT.search(str(exc)))


@dataclass(frozen=True, slots=True)
class _VarPlan:
    """Where a variable's patch window lies, relative to the reference variable's grid."""

    name: str
    meta: ArrayMeta
    axes: tuple[int, ...]  # the array axes the patch dims map to
    scale: tuple[Fraction, ...]  # this grid's pixels per reference pixel, per patch dim


@dataclass(frozen=True, slots=True)
class _Group:
    """One group the stream reads, with its variables' plans."""

    path: str
    plans: tuple[_VarPlan, ...]
    stacked: bool  # samples along the first dim, else the group is one sample
    length: int
    block: int  # samples per read: one shard when stacked
    steps: tuple[int, ...]  # origins on a grid every variable can be cut at exactly


@dataclass(frozen=True, slots=True)
class _Block:
    group: int
    start: int
    stop: int


class PatchStream(_Base):  # type: ignore[misc,valid-type]
    """Aligned patches of several variables, ``patches_per_sample`` per sample per epoch.

    ``group`` is a group path (``"train"``), a glob (``"CCPs/*"``) or a list of them.
    ``patch`` gives the window in pixels of the first (reference) variable, e.g.
    ``{"y": 64, "x": 64}``; the other variables get the window covering the same field of
    view on their own grid (a 2x GT gets 128x128, an 8x SR image 512x512). Each item is a
    dict ``{variable: ndarray, "__key__": str, "group": str, "index": i, "origin": {...},
    "position": p}``.

    Under ``torchrun`` the rank and world size come from ``torch.distributed`` (or ``RANK``
    / ``WORLD_SIZE``; ``rank=``/``world_size=`` override), DataLoader workers are detected,
    and together they read disjoint blocks that cover the epoch exactly once. Iterate
    :meth:`loader` (or call :meth:`mark_consumed` with each batch's ``position``) and
    :meth:`state_dict` says exactly what was consumed; :meth:`load_state_dict` resumes.
    Reads that fail because the store is unreachable are retried for ``retry_seconds``;
    unreadable (damaged) data raises, or with ``on_error="skip"`` its block is skipped with
    a warning.
    """

    def __init__(
        self,
        url: str,
        group: str | Sequence[str],
        variables: Sequence[str] | Mapping[str, str],
        patch: Mapping[str, int],
        *,
        seed: int = 0,
        shuffle: bool = True,
        patches_per_sample: int = 1,
        buffer_blocks: int = 4,
        prefetch: int = 2,
        codec_pipeline: str = "zarrs",
        storage_options: dict[str, Any] | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        on_error: str = "raise",
        retry_seconds: float = 60.0,
        coords: Sequence[str] = (),
        labels: str | None = None,
        min_foreground: float = 0.0,
        class_weights: Mapping[Any, float] | str | None = None,
        sampling: str = "random",
        cache_dir: str | None = None,
        cache_bytes: int = 4 << 30,
        scheduler: str | None = None,
    ) -> None:
        super().__init__()
        if sampling not in ("random", "grid"):
            raise ValueError(f"sampling must be 'random' or 'grid', got {sampling!r}")
        self.sampling = sampling
        # node-local cache of decoded blocks (shared by workers), and an optional dask
        # scheduler that cuts patches on a cluster instead of in this process
        self.cache_dir, self.cache_bytes, self.scheduler = cache_dir, cache_bytes, scheduler
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.on_error, self.retry_seconds = on_error, float(retry_seconds)
        self.coords = list(coords)  # per-sample coordinates shipped with each item (a class)
        if not variables:
            raise ValueError("PatchStream needs at least one variable, e.g. ['wf', 'gt']")
        if patches_per_sample < 1:
            raise ValueError("patches_per_sample must be at least 1")
        self.url, self.variables = url, list(variables)
        # output name -> array path inside the group (``{"semantic":
        # "labels/semantic/0/semantic"}`` pairs an NGFF image with its labels)
        self.paths = dict(variables) if isinstance(variables, Mapping) else {
            v: v for v in variables}
        self.patterns = [group] if isinstance(group, str) else list(group)
        self.patch = dict(patch)
        self.seed, self.shuffle, self.epoch = seed, shuffle, 0
        self._passes = 0  # iterations since the last set_epoch, in this copy of the stream
        self.patches_per_sample = patches_per_sample
        self.buffer_blocks, self.prefetch = max(1, buffer_blocks), max(1, prefetch)
        self.codec_pipeline = codec_pipeline
        loc = Location.parse(url, **dict(storage_options or {}))
        self._url = loc.url
        self.storage_options = loc.storage_options  # resolved credentials travel to workers
        attrs, arrays = read_store_metadata(loc)
        dims = {g: d.get("dim") for g, d in attrs.get("cloudmic", {}).get("groups", {}).items()}
        matched = self._match_groups(arrays)
        if any(isinstance(v, str) for v in self.patch.values()):
            self.patch = self._pixels(loc, arrays, matched[0])
        self._groups = [self._make_group(p, arrays, dims.get(p)) for p in matched]
        self._check_coords(arrays)
        self.labels, self.min_foreground, self.class_weights = labels, min_foreground, class_weights
        self._chunk_pick = ([self._label_chunks(g) for g in self._groups] if labels
                            else [None] * len(self._groups))
        self._blocks = [_Block(gi, s, min(s + g.block, g.length))
                        for gi, g in enumerate(self._groups) for s in range(0, g.length, g.block)]
        # items per sample: the tiles of the grid, or patches_per_sample random windows
        self._grid = [self._tiles(g) if sampling == "grid" else None for g in self._groups]
        self._pps = [len(t) if t is not None else patches_per_sample for t in self._grid]
        self.length = sum(g.length * n for g, n in zip(self._groups, self._pps, strict=True))
        sizes = [(b.stop - b.start) * self._pps[b.group] for b in self._blocks]
        self._offsets = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
        self.rank, self.world_size = rank, world_size
        self._consumed = np.zeros(self.length, dtype=bool)  # of _consumed_epoch, seen here
        self._consumed_epoch: int | None = None
        self._finished = False  # a pass over _consumed_epoch ran to its end here

    # ---- construction: resolve groups and check every variable fits ----
    def _match_groups(self, arrays: dict[str, ArrayMeta]) -> list[str]:
        groups = sorted({"/".join(parts[:k]) for p in arrays for parts in [p.split("/")]
                         for k in range(1, len(parts))})
        matched = [g for g in groups if any(_glob(g, p) for p in self.patterns)]
        if not matched:
            raise KeyError(f"{self.url}: no group {' or '.join(map(repr, self.patterns))}; "
                           f"groups: {', '.join(groups)}")
        return matched

    def _pixels(self, loc: Location, arrays: dict[str, ArrayMeta], group: str) -> dict[str, int]:
        """Patch sizes given in physical units (``"2.5um"``, ``"400nm"``, ``"0.5s"``) in
        pixels of the reference variable, from its coordinates in the first matched group."""
        import zarr

        ref = f"{group}/{self.paths[self.variables[0]]}"
        parent = ref.rpartition("/")[0]
        root = zarr.open_group(loc.zarr_store(read_only=True), mode="r", zarr_format=3)
        out = {}
        for d, v in self.patch.items():
            if not isinstance(v, str):
                out[d] = int(v)
                continue
            m = re.fullmatch(r"\s*([0-9.]+)\s*(nm|um|µm|mm|s|ms)\s*", v)
            coord = arrays.get(f"{parent}/{d}")
            unit = (coord.attrs.get("units") if coord else None) or ""
            if m is None or unit not in _UNITS or _UNITS[unit][0] != _UNITS[m[2]][0]:
                raise ValueError(f"patch {d}={v!r}: give a number with a unit (nm, um, s, ms) "
                                 f"matching the {d!r} coordinate of {ref!r}, whose units are "
                                 f"{unit or 'none'}; or give pixels")
            values = root[f"{parent}/{d}"][:2]
            step = float(values[1] - values[0]) * _UNITS[unit][1] if len(values) > 1 else 0.0
            if step <= 0:
                raise ValueError(f"patch {d}={v!r}: {ref!r} has no pixel spacing along {d!r}")
            out[d] = max(1, round(float(m[1]) * _UNITS[m[2]][1] / step))
        return out

    def _tiles(self, g: _Group) -> np.ndarray:
        """Grid origins covering every pixel once (the last tile flush with the edge)."""
        ref = g.plans[0]
        axes = []
        for k, (d, a) in enumerate(zip(self.patch, ref.axes, strict=True)):
            top = ref.meta.shape[a] - self.patch[d]
            starts = list(range(0, top + 1, self.patch[d]))
            if starts[-1] != top:
                starts.append(top - top % g.steps[k])
            axes.append(starts)
        return np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(axes))

    def _label_chunks(self, g: _Group) -> tuple[np.ndarray, np.ndarray]:
        """(probability of each label chunk, its centre in reference pixels), from the chunk
        statistics stored at ingest: no pixel is read to choose."""
        from cloudmic.layout.label_stats import read_stats

        plan = next((p for p in g.plans if p.name == self.labels), None)
        if plan is None:
            raise ValueError(f"labels={self.labels!r} is not one of the variables "
                             f"{self.variables}")
        stats = read_stats(plan.meta.attrs)
        if stats is None or g.stacked:
            raise ValueError(f"{self.url}: {self.paths[plan.name]!r} of group {g.path!r} has "
                             "no per-chunk label statistics; label-aware sampling needs a "
                             "label volume ingested by cloudmic (e.g. platelet-em semantic)")
        chunk, counts = stats
        total = counts.sum(-1).astype(float)
        fg = 1.0 - counts[..., 0] / np.maximum(total, 1)
        weight = np.ones(total.shape)
        if self.class_weights is not None:
            w = self._class_vector(plan, counts)
            weight = (counts * w).sum(-1) / np.maximum(total, 1)
        p = np.where((fg >= self.min_foreground) & (total > 0), weight, 0.0).ravel()
        if p.sum() <= 0:
            raise ValueError(f"{self.url}: no chunk of group {g.path!r} has foreground >= "
                             f"{self.min_foreground} (best: {fg.max():.3f}); lower "
                             "min_foreground")
        grid = np.indices(counts.shape[:-1]).reshape(len(chunk), -1).T
        shape = np.array(plan.meta.shape)
        centres = np.minimum((grid + 0.5) * np.array(chunk), shape - 0.5)
        ref = centres[:, list(plan.axes)] / np.array([float(s) for s in plan.scale])
        return p / p.sum(), ref

    def _class_vector(self, plan: _VarPlan, counts: np.ndarray) -> np.ndarray:
        names = plan.meta.attrs["chunk_stats"]["classes"]
        if self.class_weights == "balanced":  # every class present equally likely
            per_class = counts.reshape(-1, counts.shape[-1]).sum(0).astype(float)
            return np.where(per_class > 0, 1.0 / np.maximum(per_class, 1), 0.0)
        if not isinstance(self.class_weights, Mapping):
            raise ValueError(f"class_weights must be 'balanced' or a mapping, got "
                             f"{self.class_weights!r}")
        w = np.zeros(len(names))
        for key, value in self.class_weights.items():
            k = names.index(key) if isinstance(key, str) and key in names else key
            if not isinstance(k, int | np.integer) or not 0 <= k < len(names):
                raise ValueError(f"class_weights key {key!r} is not a class: {names}")
            w[k] = float(value)
        return w

    def _check_coords(self, arrays: dict[str, ArrayMeta]) -> None:
        for g in self._groups:
            dim = g.plans[0].meta.dims[0]
            have = sorted(p.rsplit("/", 1)[1] for p, m in arrays.items()
                          if p.rsplit("/", 1)[0] == g.path and m.dims == (dim,))
            for c in self.coords:
                if not g.stacked or c not in have:
                    raise KeyError(f"{self.url}: group {g.path!r} has no per-sample coordinate "
                                   f"{c!r}; it has: {', '.join(have) or 'none'}")

    def _make_group(self, path: str, arrays: dict[str, ArrayMeta], dim: str | None) -> _Group:
        plans: list[_VarPlan] = []
        for name in self.variables:
            meta = arrays.get(f"{path}/{self.paths[name]}")
            if meta is None or meta.dtype == "string":
                have = sorted(p.removeprefix(f"{path}/") for p, m in arrays.items()
                              if p.startswith(f"{path}/") and m.dtype != "string"
                              and (p.rsplit("/", 1)[-1],) != m.dims
                              and not p.rsplit("/", 1)[-1].startswith("loc_"))
                raise KeyError(f"{self.url}: group {path!r} has no variable "
                               f"{self.paths[name]!r}; variables: {', '.join(have)}")
            plans.append(self._plan(path, name, meta, plans[0] if plans else None, dim))
        ref = plans[0].meta
        # the group's unit dim is a sample axis only when the patch does not cut along it
        stacked = dim is not None and ref.dims and ref.dims[0] == dim and dim not in self.patch
        steps = tuple(math.lcm(*(p.scale[k].denominator for p in plans))
                      for k in range(len(self.patch)))
        return _Group(path, tuple(plans), bool(stacked), ref.shape[0] if stacked else 1,
                      ref.block[0] if stacked else 1, steps)

    def _plan(self, path: str, name: str, meta: ArrayMeta, ref: _VarPlan | None,
              dim: str | None) -> _VarPlan:
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
            return _VarPlan(name, meta, axes, (Fraction(1),) * n)
        scale = tuple(Fraction(meta.shape[a], ref.meta.shape[r])
                      for a, r in zip(axes, ref.axes, strict=True))
        if dim is not None and meta.shape[0] != ref.meta.shape[0]:
            raise ValueError(f"{name!r} has {meta.shape[0]} samples but {ref.name!r} has "
                             f"{ref.meta.shape[0]} in {path!r}: they cannot be paired")
        for d, s in zip(self.patch, scale, strict=True):
            if (self.patch[d] * s).denominator != 1:
                raise ValueError(f"patch {d}={self.patch[d]} maps to a fractional window "
                                 f"on {name!r} (scale {s}); use a multiple of {s.denominator}")
        return _VarPlan(name, meta, axes, scale)

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` on the next pass. Each further pass without a call counts
        as the next epoch: persistent DataLoader workers hold their own copy of the
        stream, which ``set_epoch`` in the parent never reaches, and still move on."""
        self.epoch, self._passes = int(epoch), 0

    # ---- order: pure functions of (seed, epoch) ----
    def block_order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self._blocks))
        return np.random.default_rng([self.seed, epoch, 0]).permutation(len(self._blocks))

    def origins(self, epoch: int, block: _Block) -> np.ndarray:
        """Patch origins (reference pixels): shape (samples, patches_per_sample, dims)."""
        g = self._groups[block.group]
        ref = g.plans[0]
        count = (block.stop - block.start, self._pps[block.group])
        out = np.empty((*count, len(self.patch)), dtype=np.int64)
        tiles = self._grid[block.group]
        if tiles is not None:
            return np.broadcast_to(tiles, (*count, len(self.patch))).copy()
        pick = self._chunk_pick[block.group]
        if pick is not None:  # label-aware: a chunk by its stored statistics, then a window
            rng = np.random.default_rng([self.seed, epoch, 3, block.group, block.start])
            probs, centres = pick
            chosen = centres[rng.choice(len(probs), size=count, p=probs)]
            size = np.array(list(self.patch.values()))
            top = np.array([ref.meta.shape[a] for a in ref.axes]) - size
            o = np.floor(chosen - rng.random(chosen.shape) * size).clip(0, top)
            steps = np.array(g.steps)
            return ((o // steps) * steps).astype(np.int64)
        for k, (d, a) in enumerate(zip(self.patch, ref.axes, strict=True)):
            room = (ref.meta.shape[a] - self.patch[d]) // g.steps[k]
            rng = np.random.default_rng([self.seed, epoch, 1, k, block.group, block.start])
            out[..., k] = rng.integers(0, room + 1, size=count) * g.steps[k]
        return out

    # ---- I/O: opened lazily in the process that iterates ----
    def _open(self) -> list[tuple[list[Any], np.ndarray | None]]:
        import zarr

        store = Location(self._url, self.storage_options).zarr_store(read_only=True)
        cfg = {"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"} if (
            self.codec_pipeline == "zarrs") else {}
        opened = []
        with zarr.config.set(cfg), warnings.catch_warnings():  # pipeline binds at open
            # zarrs rebuilds the obstore store on its side; it says so once per array
            warnings.filterwarnings("ignore", message="Successfully reconstructed a store")
            for g in self._groups:
                zg = zarr.open_group(store, mode="r", path=g.path, zarr_format=3)
                stems = zg["sample"][:] if g.stacked and "sample" in zg else None
                coords = {c: zg[c][:] for c in self.coords}  # 1-D, small: read whole
                opened.append(([zg[self.paths[p.name]] for p in g.plans], stems, coords))
        return opened

    def _key(self, g: _Group, stems: np.ndarray | None, i: int, p: int, n: int) -> str:
        base = f"{g.path}/{stems[i]}" if stems is not None else (
            f"{g.path}/{i}" if g.stacked else g.path)
        return base if n == 1 else f"{base}#{p}"

    def _fetch(self, opened: list, bi: int) -> list[np.ndarray]:
        """The block's decoded arrays: the only step that touches the store (or the cache)."""
        block = self._blocks[bi]
        g = self._groups[block.group]
        arrays = opened[block.group][0]
        cache = self._cache()
        out = []
        for plan, a in zip(g.plans, arrays, strict=True):
            key = f"{self._url}|{g.path}/{self.paths[plan.name]}|{block.start}:{block.stop}"
            hit = cache.get(key) if cache else None
            if hit is None:
                hit = a[block.start:block.stop] if g.stacked else a[...][None]
                if cache:
                    cache.put(key, hit)
            out.append(hit)
        return out

    def _cache(self) -> Any:
        if self.cache_dir is None:
            return None
        from cloudmic.client.cache import BlockCache

        return BlockCache(self.cache_dir, self.cache_bytes)

    def _cut(self, opened: list, bi: int, epoch: int,
             data: list[np.ndarray]) -> list[dict[str, Any]]:
        """Every item of a block, cut from its decoded arrays."""
        block = self._blocks[bi]
        g = self._groups[block.group]
        _, stems, coords = opened[block.group]
        origins = self.origins(epoch, block)
        items = []
        for j in range(block.stop - block.start):
            for p in range(self._pps[block.group]):
                o = origins[j, p]
                item: dict[str, Any] = {
                    "__key__": self._key(g, stems, block.start + j, p, self._pps[block.group]),
                    "group": g.path,
                    "position": int(self._offsets[bi] + j * self._pps[block.group] + p),
                    **{c: _scalar(v[block.start + j]) for c, v in coords.items()},
                    "index": block.start + j, "origin": dict(zip(self.patch, o.tolist(),
                                                                 strict=True))}
                for plan, arr in zip(g.plans, data, strict=True):
                    window = [slice(None)] * (arr.ndim - 1)
                    shift = 1 if g.stacked else 0
                    for k, (d, a) in enumerate(zip(self.patch, plan.axes, strict=True)):
                        lo = int(o[k] * plan.scale[k])
                        window[a - shift] = slice(lo, lo + int(self.patch[d] * plan.scale[k]))
                    item[plan.name] = np.ascontiguousarray(arr[j][tuple(window)])
                items.append(item)
        return items

    def _iter_on_cluster(self, epoch: int, mine: list[int],
                         rng: np.random.Generator) -> Iterator[dict[str, Any]]:
        """Blocks read and cut by dask workers (``scheduler=``); same order, same shuffle."""
        from distributed import Client

        local = copy.copy(self)
        local.scheduler = None  # what the cluster runs: read and cut one block
        with Client(self.scheduler, set_as_default=False) as client:
            remote = client.scatter(local, broadcast=True)
            yield from self._buffered(
                lambda b: client.submit(_cluster_block, remote, b, epoch, pure=False),
                mine, rng)

    def _buffered(self, submit: Any, mine: list[int],
                  rng: np.random.Generator) -> Iterator[dict[str, Any]]:
        """Read blocks ahead (``submit(block)`` returns a future of its items) into a rolling
        shuffle pool of about ``buffer_blocks`` blocks: each item drawn is replaced by the
        next block's items as soon as the pool runs one block short, so neighbours in the
        output rarely share a block. Memory stays bounded: the pool plus ``prefetch``
        blocks in flight."""
        in_main = get_worker_info() is None
        pending = deque(submit(b) for b in mine[:self.buffer_blocks + self.prefetch])
        nxt = len(pending)
        sizes = [(self._blocks[b].stop - self._blocks[b].start) * self._pps[self._blocks[b].group]
                 for b in mine]
        low = (self.buffer_blocks - 1) * (max(sizes) if sizes else 0)
        pool: list[dict[str, Any]] = []

        def refill() -> None:
            nonlocal nxt
            pool.extend(it for it in pending.popleft().result()
                        if not self._consumed[it["position"]])
            if nxt < len(mine):
                pending.append(submit(mine[nxt]))
                nxt += 1

        for _ in range(min(self.buffer_blocks, len(pending))):
            refill()
        while pool or pending:
            while pending and (len(pool) <= low or not pool):
                refill()
            if not pool:
                continue
            if self.shuffle:  # draw one at random; the last item takes its place
                k = int(rng.integers(len(pool)))
                pool[k], pool[-1] = pool[-1], pool[k]
            item = pool.pop() if self.shuffle else pool.pop(0)
            if in_main:  # without loader workers, what is yielded is consumed
                self._consumed[item["position"]] = True
            yield item
        self._finished = in_main

    # ---- faults: retry what is transient, apply on_error to bad data ----
    def _retrying(self, fn: Any, what: str, *args: Any) -> Any:
        """``fn(*args)``, retried with backoff while the store is unreachable, for at most
        ``retry_seconds`` (an S3 server restart mid-epoch costs time, never samples)."""
        deadline, delay = time.monotonic() + self.retry_seconds, 0.25
        while True:
            try:
                return fn(*args)
            except Exception as exc:
                if not is_transient(exc) or time.monotonic() + delay > deadline:
                    raise
                log.warning("%s: cannot %s (%s); retrying in %.1f s", self.url, what,
                            str(exc).splitlines()[0][:200], delay)
                time.sleep(delay)
                delay = min(delay * 2, 4.0)

    def _read_checked(self, opened: list, bi: int, epoch: int) -> list[dict[str, Any]]:
        block = self._blocks[bi]
        g = self._groups[block.group]
        where = (f"{self.url}: group {g.path!r}, samples {block.start}..{block.stop - 1} "
                 f"({', '.join(p.name for p in g.plans)})")
        try:
            data = self._retrying(self._fetch, f"read {where}", opened, bi)
        except Exception as exc:
            if is_transient(exc):
                raise StoreError(f"{where}: the store did not answer for {self.retry_seconds:.0f}"
                                 f" s ({str(exc).splitlines()[0][:200]}); check that it runs, "
                                 "or raise retry_seconds") from exc
            if self.on_error == "skip":
                warnings.warn(f"{where}: skipped, unreadable ({type(exc).__name__}: "
                              f"{str(exc)[:200]}); run cloudmic verify on the dataset",
                              RuntimeWarning, stacklevel=2)
                return []
            raise StoreError(f"{where}: unreadable ({type(exc).__name__}: {str(exc)[:200]}). "
                             "The stored bytes are damaged: run cloudmic verify on the dataset "
                             "and ingest it again, or pass on_error='skip' to skip such blocks "
                             "with a warning") from exc
        return self._cut(opened, bi, epoch, data)

    # ---- distribution: consumers split the blocks that still hold unconsumed items ----
    def _dist(self) -> tuple[int, int]:
        """(rank, world size): explicit, else torch.distributed, else RANK/WORLD_SIZE."""
        if self.rank is not None or self.world_size is not None:
            return int(self.rank or 0), int(self.world_size or 1)
        try:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                return dist.get_rank(), dist.get_world_size()
        except ImportError:  # pragma: no cover - torch is optional
            pass
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))

    def consumer(self) -> tuple[int, int]:
        """(this consumer's index, consumers in total), worker-major: when blocks are few,
        every rank gets one before any rank's second worker does."""
        rank, world = self._dist()
        info = get_worker_info()
        workers, wid = (1, 0) if info is None else (info.num_workers, info.id)
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is outside a world of {world}")
        return wid * world + rank, world * workers

    def assignment(self, epoch: int, consumer: int, consumers: int) -> list[int]:
        """The block indices one consumer reads in ``epoch``: a pure function of (seed,
        epoch, what was consumed, consumer, consumers)."""
        order = self.block_order(epoch)
        done = np.logical_and.reduceat(self._consumed, self._offsets[:-1]) if self.length \
            else np.zeros(0, bool)
        open_blocks = [int(b) for b in order if not done[b]]
        return open_blocks[consumer::consumers]

    def _begin_epoch(self, epoch: int) -> None:
        """Consumption is tracked per epoch: a new epoch, or a finished one run again, starts
        with nothing consumed; a resumed one keeps what ``load_state_dict`` gave it."""
        if self._consumed_epoch != epoch or self._finished:
            self._consumed[:] = False
            self._consumed_epoch, self._finished = epoch, False

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch = self.epoch + self._passes
        self._passes += 1
        self._begin_epoch(epoch)
        me, consumers = self.consumer()
        mine = self.assignment(epoch, me, consumers)
        rng = np.random.default_rng([self.seed, epoch, 2, me, consumers])
        if self.scheduler:
            yield from self._iter_on_cluster(epoch, mine, rng)
            return
        opened = self._retrying(self._open, "open the store")
        with ThreadPoolExecutor(self.prefetch) as pool:
            yield from self._buffered(
                lambda b: pool.submit(self._read_checked, opened, b, epoch), mine, rng)

    # ---- resume: which positions of the epoch were consumed ----
    def mark_consumed(self, positions: Any) -> None:
        """Record items the training loop received (``batch["position"]``); the loader
        from :meth:`loader` calls this for you."""
        pos = np.asarray(positions, dtype=np.int64).ravel()
        self._consumed[pos] = True

    # hooks of the tracking loader (see _TrackingLoader)
    def _start_pass(self) -> None:
        self._begin_epoch(self.epoch + self._passes)

    def _advance_pass(self) -> None:
        self._passes += 1

    def _mark_batch(self, batch: Mapping[str, Any]) -> None:
        self.mark_consumed(batch["position"])

    def _end_pass(self) -> None:
        self._finished = True

    def state_dict(self, *, gather: bool = True) -> dict[str, Any]:
        """Where this epoch stands: the consumed positions of every rank (gathered with
        ``torch.distributed`` when it is initialized and ``gather``) plus what the positions
        mean (seed, epoch, length). Save it from any rank; all ranks return the same."""
        consumed = self._consumed.copy()
        if gather:
            consumed = _gather_or(consumed)
        packed = zlib.compress(np.packbits(consumed).tobytes())
        epoch = self._consumed_epoch if self._consumed_epoch is not None else (
            self.epoch + self._passes)
        return {"version": 1, "seed": self.seed, "epoch": epoch,
                "length": self.length, "patches_per_sample": self.patches_per_sample,
                "consumed": base64.b64encode(packed).decode(), "count": int(consumed.sum())}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue the epoch of ``state``: the next pass yields only what was not consumed,
        split over however many ranks and workers run now."""
        for key in ("seed", "length", "patches_per_sample"):
            if state[key] != getattr(self, key):
                raise ValueError(f"state_dict is for {key}={state[key]!r}, this stream has "
                                 f"{getattr(self, key)!r}: build the stream as it was built")
        bits = np.frombuffer(zlib.decompress(base64.b64decode(state["consumed"])), np.uint8)
        self._consumed = np.unpackbits(bits, count=self.length).astype(bool)
        self.epoch, self._passes = int(state["epoch"]), 0
        self._consumed_epoch, self._finished = self.epoch, False

    def loader(self, batch_size: int, num_workers: int = 0, **kwargs: Any) -> _TrackingLoader:
        """A ``torch.utils.data.DataLoader`` over this stream (spawned workers) that marks
        every batch it hands out as consumed, so :meth:`state_dict` is exact."""
        return _TrackingLoader(self, batch_size, num_workers, **kwargs)


class _TrackingLoader:
    """A DataLoader that tells its stream which items the training loop received."""

    def __init__(self, stream: Any, batch_size: int, num_workers: int,
                 **kwargs: Any) -> None:
        from torch.utils.data import DataLoader

        if num_workers:
            kwargs.setdefault("multiprocessing_context", "spawn")
        self.stream, self.workers = stream, num_workers
        self.loader = DataLoader(stream, batch_size=batch_size, num_workers=num_workers,
                                 **kwargs)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        s = self.stream
        if self.workers:  # the workers' copies run this epoch; keep the main copy in step
            s._start_pass()
            it = iter(self.loader)  # workers take their copy of the stream here
            s._advance_pass()
        else:  # the stream iterates in this process and counts its own passes
            it = iter(self.loader)
        for batch in it:
            s._mark_batch(batch)
            yield batch
        s._end_pass()


# unit -> (quantity, factor to the base unit: nm for lengths, s for time)
_UNITS = {"nm": ("length", 1.0), "um": ("length", 1e3), "µm": ("length", 1e3),
          "mm": ("length", 1e6), "s": ("time", 1.0), "ms": ("time", 1e-3)}


def _cluster_block(stream: PatchStream, bi: int, epoch: int) -> list[dict[str, Any]]:
    """Run on a dask worker: open the store there (once per worker) and cut one block."""
    opened = getattr(stream, "_opened_here", None)
    if opened is None:
        opened = stream._retrying(stream._open, "open the store")
        stream._opened_here = opened
    return stream._read_checked(opened, bi, epoch)


def _scalar(value: Any) -> Any:
    """A plain Python value (numpy scalars to int/float/str) that collates and pickles."""
    return value.item() if isinstance(value, np.generic) else value


def _glob(path: str, pattern: str) -> bool:
    """Glob per path segment: ``*`` never crosses a ``/`` (``*/cell*`` is one level down)."""
    parts, pats = path.split("/"), pattern.split("/")
    return len(parts) == len(pats) and all(
        fnmatch.fnmatchcase(a, b) for a, b in zip(parts, pats, strict=True))


def merge_states(states: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One state from the ``state_dict(gather=False)`` of every rank (for runs that do not
    use ``torch.distributed``): the union of what each consumed."""
    first = states[0]
    for st in states[1:]:
        for key in ("seed", "epoch", "length", "patches_per_sample"):
            if st[key] != first[key]:
                raise ValueError(f"cannot merge states of different {key}: "
                                 f"{first[key]!r} and {st[key]!r}")
    bits = [np.frombuffer(zlib.decompress(base64.b64decode(st["consumed"])), np.uint8)
            for st in states]
    merged = np.bitwise_or.reduce(np.stack(bits))
    count = int(np.unpackbits(merged, count=first["length"]).sum())
    return {**first, "consumed": base64.b64encode(zlib.compress(merged.tobytes())).decode(),
            "count": count}


def _gather_or(consumed: np.ndarray) -> np.ndarray:
    """OR of every rank's consumed bitmap (no-op without an initialized process group)."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return consumed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return consumed
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, np.packbits(consumed))
    merged = np.bitwise_or.reduce(np.stack(parts))
    return np.unpackbits(merged, count=len(consumed)).astype(bool)
