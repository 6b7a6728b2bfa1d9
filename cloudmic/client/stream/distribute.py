"""Who reads what: equal shares of an epoch for every consumer, and the consumed bitmap.

A *consumer* is one iterator of the epoch: a rank, or one DataLoader worker of a rank.
The items of an epoch have fixed *positions* (a block's offset plus the item's index in
the block). The items not yet consumed, taken in the epoch's block order, are cut into
as many contiguous runs as there are consumers, run sizes differing by at most one.
Every consumer then yields the same number of items, so every rank yields the same number
of batches and a DDP loop never waits at the epoch's end for a rank that ran dry:

- ``drop_last=False`` (the default, like ``DistributedSampler``): short runs are padded
  to ``ceil(open / consumers)`` by repeating their own first items; repeats are flagged
  ``pad`` and never marked consumed, so a saved state still counts each item once;
- ``drop_last=True``: long runs are cut to ``floor(open / consumers)``; the dropped items
  (fewer than the consumers) stay unconsumed.

No consumer talks to another: the split is a pure function of (block order, consumed
bitmap, consumer, consumers), and ``state_dict`` stores the bitmap compressed.
"""

from __future__ import annotations

import base64
import os
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True, slots=True)
class Take:
    """What one consumer reads from one block: the indices of its items within the block,
    the last ``npad`` of them padding repeats. ``span`` is a ``range`` when the items are
    contiguous (the usual case: O(1) memory however big the share), else an array."""

    block: int
    span: range | np.ndarray
    npad: int = 0

    def __len__(self) -> int:
        return len(self.span)

    @property
    def rows(self) -> np.ndarray:
        s = self.span
        return np.arange(s.start, s.stop, dtype=np.int64) if isinstance(s, range) else s

    @property
    def pad(self) -> np.ndarray:
        return np.arange(len(self.span)) >= len(self.span) - self.npad


def world() -> tuple[int, int]:
    """(rank, world size) from ``torch.distributed`` when it is initialized, else from the
    ``RANK``/``WORLD_SIZE`` environment ``torchrun`` sets, else (0, 1)."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except ImportError:  # pragma: no cover - torch is optional
        pass
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def consumer_index(rank: int, world_size: int, worker: int, workers: int) -> tuple[int, int]:
    """(this consumer's index, consumers in total), worker-major: with few items, every
    rank's first worker gets a run before any rank's second worker does."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside a world of {world_size}; pass world_size= "
                         "with rank= (or neither, under torchrun)")
    return worker * world_size + rank, world_size * workers


def open_counts(consumed: np.ndarray | None, offsets: np.ndarray) -> np.ndarray:
    """Unconsumed items per block (``offsets``: block starts plus the total at the end;
    ``consumed`` None: nothing consumed yet)."""
    if consumed is None:
        return np.diff(offsets)
    done = np.concatenate(([0], np.cumsum(consumed, dtype=np.int64)))
    return np.diff(offsets) - (done[offsets[1:]] - done[offsets[:-1]])


def quota(open_items: int, consumers: int, drop_last: bool) -> int:
    """Items every consumer yields this epoch."""
    return open_items // consumers if drop_last else -(-open_items // consumers)


def share(order: np.ndarray, offsets: np.ndarray, consumed: np.ndarray | None, consumer: int,
          consumers: int, *, drop_last: bool = False) -> list[Take]:
    """The blocks one consumer reads in this epoch, in order, with the rows it yields.

    O(blocks) work and memory plus the rows of this consumer's own blocks: opening a
    stream of millions of items costs the same per consumer as one of thousands.
    """
    counts = open_counts(consumed, offsets)[order]
    ends = np.cumsum(counts)
    total = int(ends[-1]) if len(ends) else 0
    if total == 0:
        return []
    lo, hi = consumer * total // consumers, (consumer + 1) * total // consumers
    q = quota(total, consumers, drop_last)
    hi = min(hi, lo + q)
    takes = _run(order, offsets, consumed, ends, lo, hi)
    missing = q - (hi - lo)
    if missing > 0:  # pad: repeat this run's first items, or one item of the epoch if none
        takes = _pad(takes, missing) if takes else [
            _flag(t) for t in _run(order, offsets, consumed, ends, consumer % total,
                                   consumer % total + 1)]
    return takes


def _run(order: np.ndarray, offsets: np.ndarray, consumed: np.ndarray | None, ends: np.ndarray,
         lo: int, hi: int) -> list[Take]:
    """The open items with ranks [lo, hi) in the epoch's sequence, grouped by block."""
    out = []
    k = int(np.searchsorted(ends, lo, side="right"))
    while k < len(order) and lo < hi:
        b = int(order[k])
        first = int(ends[k - 1]) if k else 0
        rows = (range(int(offsets[b + 1] - offsets[b])) if consumed is None
                else np.flatnonzero(~consumed[offsets[b]:offsets[b + 1]]))
        part = rows[lo - first:min(hi, int(ends[k])) - first]
        if len(part):
            out.append(Take(b, part))
        lo = int(ends[k])
        k += 1
    return out


def _flag(t: Take) -> Take:
    return Take(t.block, t.span, len(t))


def _pad(takes: list[Take], missing: int) -> list[Take]:
    """Repeat the run's items from its start, cyclically, as flagged rows of their blocks."""
    out = list(takes)
    while missing > 0:
        for i, t in enumerate(takes):
            n = min(missing, len(t))
            if n == 0:
                break
            cur = out[i]
            out[i] = Take(cur.block, np.concatenate((cur.rows, t.rows[:n])), cur.npad + n)
            missing -= n
    return out


# ---- the consumed bitmap: saved compressed, merged over ranks ----
def encode_bitmap(bits: np.ndarray) -> str:
    return base64.b64encode(zlib.compress(np.packbits(bits).tobytes())).decode()


def decode_bitmap(text: str, length: int) -> np.ndarray:
    packed = np.frombuffer(zlib.decompress(base64.b64decode(text)), np.uint8)
    return np.unpackbits(packed, count=length).astype(bool)


def gather_or(consumed: np.ndarray) -> np.ndarray:
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


def merge_states(states: Sequence[Mapping[str, Any]],
                 same: Sequence[str] = ("seed", "epoch", "length")) -> dict[str, Any]:
    """One state from the ``state_dict(gather=False)`` of every rank (for runs that do not
    use ``torch.distributed``): the union of what each consumed."""
    first = states[0]
    for st in states[1:]:
        for key in same:
            if st.get(key) != first.get(key):
                raise ValueError(f"cannot merge states of different {key}: "
                                 f"{first.get(key)!r} and {st.get(key)!r}")
    bits = np.logical_or.reduce([decode_bitmap(st["consumed"], first["length"])
                                 for st in states])
    return {**first, "consumed": encode_bitmap(bits), "count": int(bits.sum())}
