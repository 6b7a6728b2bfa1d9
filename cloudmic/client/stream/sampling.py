"""Where patches are cut, and in which order blocks are read: pure functions of
(seed, epoch), each drawn from its own named random stream.

Streams are named, not numbered: ``rng(seed, epoch, "origins", ...)`` and
``rng(seed, epoch, "block-order")`` can never collide, and adding a stream never shifts
another one.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cloudmic.client.stream.plan import Block, GroupPlan, VarPlan


def rng(seed: int, epoch: int, name: str, *more: int) -> np.random.Generator:
    """The random stream ``name`` of (seed, epoch), optionally split further by ``more``."""
    return np.random.default_rng([int(seed), int(epoch), zlib.crc32(name.encode()),
                                  *map(int, more)])


def block_order(seed: int, epoch: int, blocks: int, shuffle: bool) -> np.ndarray:
    if not shuffle:
        return np.arange(blocks)
    return rng(seed, epoch, "block-order").permutation(blocks)


def tiles(g: GroupPlan, patch: Mapping[str, int]) -> np.ndarray:
    """Grid origins covering every pixel once (the last tile flush with the edge)."""
    ref = g.plans[0]
    axes = []
    for k, (d, a) in enumerate(zip(patch, ref.axes, strict=True)):
        top = ref.meta.shape[a] - patch[d]
        starts = list(range(0, top + 1, patch[d]))
        if starts[-1] != top:
            starts.append(top - top % g.steps[k])
        axes.append(starts)
    return np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(axes))


class Sampler:
    """Patch origins of a block's samples: random windows, grid tiles, or label-aware
    windows centred in chunks chosen by their stored class statistics."""

    def __init__(self, seed: int, patch: Mapping[str, int], groups: Sequence[GroupPlan],
                 per_sample: Sequence[int], grid: Sequence[np.ndarray | None],
                 label_pick: Sequence[tuple[np.ndarray, np.ndarray] | None]) -> None:
        self.seed, self.patch, self.groups = seed, dict(patch), list(groups)
        self.per_sample, self.grid, self.label_pick = list(per_sample), list(grid), list(label_pick)

    def origins(self, epoch: int, block: Block) -> np.ndarray:
        """Patch origins (reference pixels): shape (samples, patches per sample, dims)."""
        g = self.groups[block.group]
        ref = g.plans[0]
        count = (block.stop - block.start, self.per_sample[block.group])
        if self.grid[block.group] is not None:
            return np.broadcast_to(self.grid[block.group], (*count, len(self.patch))).copy()
        pick = self.label_pick[block.group]
        if pick is not None:  # label-aware: a chunk by its stored statistics, then a window
            r = rng(self.seed, epoch, "label-origins", block.group, block.start)
            probs, centres = pick
            chosen = centres[r.choice(len(probs), size=count, p=probs)]
            size = np.array(list(self.patch.values()))
            top = np.array([ref.meta.shape[a] for a in ref.axes]) - size
            o = np.floor(chosen - r.random(chosen.shape) * size).clip(0, top)
            steps = np.array(g.steps)
            return ((o // steps) * steps).astype(np.int64)
        out = np.empty((*count, len(self.patch)), dtype=np.int64)
        for k, (d, a) in enumerate(zip(self.patch, ref.axes, strict=True)):
            room = (ref.meta.shape[a] - self.patch[d]) // g.steps[k]
            r = rng(self.seed, epoch, "origins", k, block.group, block.start)
            out[..., k] = r.integers(0, room + 1, size=count) * g.steps[k]
        return out


def label_pick(url: str, g: GroupPlan, labels: str, variables: Sequence[str],
               min_foreground: float, class_weights: Mapping[Any, float] | str | None,
               ) -> tuple[np.ndarray, np.ndarray]:
    """(probability of each label chunk, its centre in reference pixels), from the chunk
    statistics stored at ingest: no pixel is read to choose."""
    from cloudmic.layout.label_stats import read_stats

    plan = next((p for p in g.plans if p.name == labels), None)
    if plan is None:
        raise ValueError(f"labels={labels!r} is not one of the variables {list(variables)}")
    stats = read_stats(plan.meta.attrs)
    if stats is None or g.stacked:
        raise ValueError(f"{url}: {plan.path!r} of group {g.path!r} has no per-chunk label "
                         "statistics; label-aware sampling needs a label volume ingested by "
                         "cloudmic (e.g. platelet-em semantic)")
    chunk, counts = stats
    total = counts.sum(-1).astype(float)
    fg = 1.0 - counts[..., 0] / np.maximum(total, 1)
    weight = np.ones(total.shape)
    if class_weights is not None:
        w = _class_vector(plan, counts, class_weights)
        weight = (counts * w).sum(-1) / np.maximum(total, 1)
    p = np.where((fg >= min_foreground) & (total > 0), weight, 0.0).ravel()
    if p.sum() <= 0:
        raise ValueError(f"{url}: no chunk of group {g.path!r} has foreground >= "
                         f"{min_foreground} (best: {fg.max():.3f}); lower min_foreground")
    grid = np.indices(counts.shape[:-1]).reshape(len(chunk), -1).T
    shape = np.array(plan.meta.shape)
    centres = np.minimum((grid + 0.5) * np.array(chunk), shape - 0.5)
    ref = centres[:, list(plan.axes)] / np.array([float(s) for s in plan.scale])
    return p / p.sum(), ref


def _class_vector(plan: VarPlan, counts: np.ndarray,
                  class_weights: Mapping[Any, float] | str) -> np.ndarray:
    names = plan.meta.attrs["chunk_stats"]["classes"]
    if class_weights == "balanced":  # every class present equally likely
        per_class = counts.reshape(-1, counts.shape[-1]).sum(0).astype(float)
        return np.where(per_class > 0, 1.0 / np.maximum(per_class, 1), 0.0)
    if not isinstance(class_weights, Mapping):
        raise ValueError(f"class_weights must be 'balanced' or a mapping, got {class_weights!r}")
    w = np.zeros(len(names))
    for key, value in class_weights.items():
        k = names.index(key) if isinstance(key, str) and key in names else key
        if not isinstance(k, int | np.integer) or not 0 <= k < len(names):
            raise ValueError(f"class_weights key {key!r} is not a class: {names}")
        w[k] = float(value)
    return w
