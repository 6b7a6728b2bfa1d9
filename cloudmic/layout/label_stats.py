"""Per-chunk label statistics, computed at ingest and stored with the label array, so that
label-aware sampling (minimum foreground, class balance) never reads pixels to choose."""

from __future__ import annotations

from typing import Any

import numpy as np

ATTR = "chunk_stats"


def chunk_class_counts(labels: np.ndarray, chunks: tuple[int, ...], n_values: int) -> np.ndarray:
    """Voxels of each value 0..n_values-1 in each chunk: shape ``(*grid, n_values)``.

    One slab of chunks along the first axis at a time keeps the temporaries small."""
    grid = tuple(-(-n // c) for n, c in zip(labels.shape, chunks, strict=True))
    out = np.zeros((*grid, n_values), dtype=np.int64)
    rest = grid[1:]
    idx = np.indices(labels.shape[1:], sparse=True)
    cell = np.zeros(labels.shape[1:], dtype=np.int64)  # chunk index within a slab
    for axis, (i, c) in enumerate(zip(idx, chunks[1:], strict=True)):
        cell = cell + (i // c) * int(np.prod(rest[axis + 1:], dtype=np.int64))
    for k in range(grid[0]):
        slab = labels[k * chunks[0]:(k + 1) * chunks[0]].astype(np.int64)
        codes = (cell[None] * n_values + slab).ravel()
        counts = np.bincount(codes, minlength=int(np.prod(rest, dtype=np.int64)) * n_values)
        out[k] = counts.reshape(*rest, n_values)
    return out


def stats_attr(labels: np.ndarray, chunks: tuple[int, ...], names: list[str]) -> dict[str, Any]:
    """The attribute stored on a class-label array: chunk shape, grid and counts per class."""
    counts = chunk_class_counts(labels, chunks, len(names))
    return {ATTR: {"chunk": list(chunks), "grid": list(counts.shape[:-1]), "classes": names,
                   "counts": counts.ravel().tolist()}}


def read_stats(attrs: dict[str, Any]) -> tuple[tuple[int, ...], np.ndarray] | None:
    """(chunk shape, counts of shape ``(*grid, classes)``) from an array's attributes."""
    st = attrs.get(ATTR)
    if not st:
        return None
    counts = np.asarray(st["counts"], dtype=np.int64).reshape(*st["grid"], len(st["classes"]))
    return tuple(st["chunk"]), counts
