"""The shuffle pool and batch assembly.

Blocks arrive in order (read ahead by a thread pool or a dask cluster) as ``Cut``s. Items
are drawn at random from a rolling pool of about ``buffer_blocks`` blocks: each draw is
replaced by the next block's items as soon as the pool runs one block short, so neighbours
in the output rarely share a block. At the start of a pass the pool ramps up (it is
allowed one more block per ``block/buffer_blocks`` draws), so the first batch waits for
one block, not for the whole buffer. Every rule depends on counts only, never on timing:
the order is a pure function of (seed, epoch, consumer).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from cloudmic.client.stream.reader import Cut

Draw = tuple[Cut, int]  # a row of a cut block


def draws(submit: Callable[[int], Any], count: int, sizes: Sequence[int], buffer_blocks: int,
          prefetch: int, rng: np.random.Generator | None) -> Iterator[Draw]:
    """Rows of the ``count`` blocks ``submit(k)`` reads (a future of a ``Cut`` or None),
    shuffled over the rolling pool when ``rng`` is given, in block order otherwise."""
    depth = buffer_blocks + prefetch  # reads in flight once the pass runs
    pending = deque([submit(0)] if count else [])  # alone: the first batch needs one block
    nxt = len(pending)
    biggest = max(sizes, default=1)
    ramp = max(1, biggest // max(1, buffer_blocks))
    pool: list[Draw] = []
    taken = 0
    randoms = np.empty(0)

    def refill() -> None:
        nonlocal nxt
        cut = pending.popleft().result()
        if cut is not None:
            pool.extend((cut, r) for r in range(len(cut)))
        while nxt < count and len(pending) < depth:
            pending.append(submit(nxt))
            nxt += 1

    while pool or pending:
        blocks = min(buffer_blocks, 1 + taken // ramp)
        while pending and (len(pool) <= (blocks - 1) * biggest or not pool):
            refill()
        if not pool:
            continue
        if rng is None:
            yield pool.pop(0)
        else:
            if not len(randoms):
                randoms = rng.random(1024)
            k = int(randoms[0] * len(pool))
            randoms = randoms[1:]
            pool[k], pool[-1] = pool[-1], pool[k]  # draw one at random; the last takes its place
            yield pool.pop()
        taken += 1


def item(d: Draw) -> dict[str, Any]:
    """One row as a per-item dict (what a DataLoader with ``batch_size`` collates)."""
    cut, r = d
    out: dict[str, Any] = {name: a[r].copy() for name, a in cut.arrays.items()}
    out.update({"__key__": cut.keys[r], "group": cut.group, "index": int(cut.index[r]),
                "position": int(cut.position[r]), "pad": bool(cut.pad[r]),
                "origin": {d: int(cut.origin[r, k]) for k, d in enumerate(cut.dims)},
                **{c: _scalar(v[r]) for c, v in cut.coords.items()}})
    return out


def collate(rows: Sequence[Draw]) -> dict[str, Any]:
    """One batch: a contiguous array per variable, arrays of the per-item numbers, lists of
    the strings; the same keys a DataLoader's ``default_collate`` makes from items."""
    first = rows[0][0]
    _check_alike(first, rows)
    out: dict[str, Any] = {
        name: np.stack([c.arrays[name][r] for c, r in rows]) for name in first.arrays}
    out["__key__"] = [c.keys[r] for c, r in rows]
    out["group"] = [c.group for c, _ in rows]
    for name in ("index", "position", "pad"):
        out[name] = np.array([getattr(c, name)[r] for c, r in rows])
    origin = np.stack([c.origin[r] for c, r in rows])
    out["origin"] = {d: origin[:, k] for k, d in enumerate(first.dims)}
    for name in first.coords:
        values = [c.coords[name][r] for c, r in rows]
        out[name] = np.array(values) if np.asarray(values).dtype.kind in "biuf" else [
            _scalar(v) for v in values]
    return out


def _check_alike(first: Cut, rows: Sequence[Draw]) -> None:
    """Items batch together only with the same variables, item shapes and dtypes (numpy
    would raise a bare shape error, or silently cast mixed dtypes). Checked once per block
    in the batch, not per item."""
    want = {n: (a.shape[1:], a.dtype) for n, a in first.arrays.items()}
    for cut in {id(c): c for c, _ in rows if c is not first}.values():
        have = {n: (a.shape[1:], a.dtype) for n, a in cut.arrays.items()}
        if have == want:
            continue
        diff = "; ".join(f"{n!r}: {_desc(want.get(n))} in {first.group!r}, {_desc(have.get(n))}"
                         f" in {cut.group!r}" for n in sorted(want.keys() | have.keys())
                         if want.get(n) != have.get(n))
        raise ValueError(
            f"cannot batch items of groups {first.group!r} and {cut.group!r} together: {diff}. "
            "Batch together only what has the same variables and patch (a Mix's streams, a "
            "stream's groups), or iterate without batching (batch_size=None) and collate "
            "the items yourself")


def _desc(sig: tuple[tuple[int, ...], np.dtype] | None) -> str:
    return "absent" if sig is None else f"{sig[0]} {sig[1]}"


def batched(rows: Iterator[Any], size: int, drop_partial: bool = False,
            make: Callable[[list[Any]], dict[str, Any]] = collate) -> Iterator[dict[str, Any]]:
    """Batches of ``size`` (the last one shorter unless ``drop_partial``), each made by
    ``make`` from its rows (``collate`` by default; ``shards`` and ``Mix`` bring their own)."""
    buf: list[Any] = []
    for d in rows:
        buf.append(d)
        if len(buf) == size:
            yield make(buf)
            buf = []
    if buf and not drop_partial:
        yield make(buf)


def _scalar(value: Any) -> Any:
    """A plain Python value (numpy scalars to int/float/str) that collates and pickles."""
    return value.item() if isinstance(value, np.generic) else value
