"""The torch side of a stream: its base class, worker detection and the loader that keeps
the stream's bookkeeping in step with what the training loop received.

torch is optional: without it a stream is a plain iterable. Anything that implements
:class:`Consumable` (``PatchStream``, ``Mix``, ``shards``) gets a :class:`TrackingLoader`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from cloudmic.client.stream.workers import forkserver, with_parent_environment

try:  # a torch IterableDataset when torch is installed, a plain iterable otherwise
    from torch.utils.data import IterableDataset as StreamBase
    from torch.utils.data import get_worker_info
except ImportError:  # pragma: no cover - exercised in environments without torch
    StreamBase = object  # type: ignore[assignment,misc]

    def get_worker_info() -> None:  # type: ignore[misc]
        return None


def worker() -> tuple[int, int]:
    """(this DataLoader worker's id, workers), (0, 1) outside a worker."""
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


class Consumable(Protocol):
    """What a :class:`TrackingLoader` needs from a stream.

    ``batch_size``/``drop_partial`` make the stream yield whole batches (one array per
    variable) instead of items; the hooks keep the parent's copy of the stream, whose
    iteration runs in the workers, in step with the epochs and batches the loop received.
    """

    batch_size: int | None
    drop_partial: bool

    def start_pass(self) -> None:
        """A pass is about to start in the workers (reset consumption if a new epoch)."""

    def advance_pass(self) -> None:
        """The workers took their copies: the next pass is the next epoch."""

    def mark_batch(self, batch: Mapping[str, Any]) -> None:
        """The loop received ``batch``: mark its items consumed (padding excluded)."""

    def end_pass(self) -> None:
        """The pass ran to its end."""

    def batches(self, workers: int) -> int:
        """Batches one rank yields in the coming pass with ``workers`` loader workers."""


class TrackingLoader:
    """A ``torch.utils.data.DataLoader`` over a stream that assembles its own batches
    (``batch_size=None`` for the DataLoader: one contiguous array per variable crosses the
    process boundary, through shared memory, instead of a dict per item) and tells the
    stream which items the training loop received, so ``state_dict()`` is exact.

    Workers start with ``forkserver``: forked from a clean server process, never from the
    training process (whose store clients and threads a fork would copy, STACK-NOTES); the
    server started when the stream class was first used (:mod:`.workers`), and each
    worker takes this process's environment as it is when the loader is made.
    ``drop_last=True`` drops each worker's last, partial batch. The loader sets the
    stream's ``batch_size``: make one loader per stream (two loaders over one stream share
    the last one's batch size).
    """

    def __init__(self, stream: Consumable, batch_size: int, num_workers: int = 0,
                 **kwargs: Any) -> None:
        from torch.utils.data import DataLoader

        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size!r}")
        if num_workers:
            if "multiprocessing_context" not in kwargs:  # the caller's own, if given
                kwargs["multiprocessing_context"] = forkserver()
            kwargs["worker_init_fn"] = with_parent_environment(kwargs.get("worker_init_fn"))
            # big arrays cross in one shared-memory segment per batch, small ones inline
            kwargs.setdefault("collate_fn", functools.partial(shared_tensors,
                                                              min_bytes=SHARED_MIN_BYTES))
        else:
            kwargs.setdefault("collate_fn", as_tensors)
        stream.batch_size, stream.drop_partial = int(batch_size), bool(
            kwargs.pop("drop_last", False))
        self.stream, self.workers = stream, num_workers
        self.loader = DataLoader(stream, batch_size=None, num_workers=num_workers, **kwargs)

    def __len__(self) -> int:
        """Batches this rank receives in the epoch (the same on every rank)."""
        return self.stream.batches(max(1, self.workers))

    def __iter__(self) -> Iterator[Any]:
        s = self.stream
        if self.workers:  # the workers' copies run this epoch; keep the main copy in step
            s.start_pass()
            it = iter(self.loader)  # workers take their copy of the stream here
            s.advance_pass()
        else:  # the stream iterates in this process and counts its own passes
            it = iter(self.loader)
        for batch in it:
            s.mark_batch(batch)
            yield as_tensors(batch)
        s.end_pass()


def as_tensors(obj: Any, min_bytes: int = 0, views: dict[int, Any] | None = None) -> Any:
    """Numeric numpy arrays of at least ``min_bytes`` as tensors (zero-copy), through dicts
    and lists; strings and everything else unchanged. ``views``: tensors to put in place of
    given arrays (by ``id``), as :func:`shared_tensors` makes them."""
    import numpy as np
    import torch

    if isinstance(obj, np.ndarray):
        if views and id(obj) in views:
            return views[id(obj)]
        if obj.nbytes >= min_bytes and _torch_dtype(obj.dtype) is not None:
            return torch.from_numpy(obj)
        return obj
    if isinstance(obj, dict):
        return {k: as_tensors(v, min_bytes, views) for k, v in obj.items()}
    if isinstance(obj, list):
        return [as_tensors(v, min_bytes, views) for v in obj]
    return obj


SHARED_MIN_BYTES = 64 << 10  # smaller arrays cost less inline in the pickle than a segment
_ALIGN = 64  # each array starts on a cache line (and on its dtype's alignment)


def shared_tensors(batch: Any, min_bytes: int = SHARED_MIN_BYTES) -> Any:
    """A worker's batch for the trip to the training process: numeric arrays of at least
    ``min_bytes`` copied into ONE new shared-memory segment, as tensor views of it.

    torch moves each tensor it sends into a segment of its own (a copy, a new segment and a
    file descriptor handed over a socket, per tensor). One segment per batch, filled in
    place, cut that cost by about a third: 2 workers sending 32 x 2 x 64x64 float32
    batches and doing nothing else delivered 294-355 batches/s as one tensor per array,
    449-530 this way (the training process's CPU per batch 1.3-1.5 -> 0.85-0.92 ms).
    Everything else as :func:`as_tensors`.
    """
    import torch

    big = _collect(batch, min_bytes, {})  # by id: an array listed twice is copied once
    if not big:
        return as_tensors(batch, min_bytes)
    offsets, total = [], 0
    for a in big.values():
        offsets.append(total)
        total += -(-a.nbytes // _ALIGN) * _ALIGN
    new_shared = getattr(torch.UntypedStorage, "_new_shared", None)  # no fill, no copy
    buf = (torch.empty(0, dtype=torch.uint8).set_(new_shared(total)) if new_shared
           else torch.empty(total, dtype=torch.uint8).share_memory_())
    raw = buf.numpy()
    views: dict[int, Any] = {}
    for (key, a), off in zip(big.items(), offsets, strict=True):
        raw[off:off + a.nbytes].view(a.dtype).reshape(a.shape)[...] = a
        views[key] = buf[off:off + a.nbytes].view(_torch_dtype(a.dtype)).view(a.shape)
    return as_tensors(batch, min_bytes, views)


def _collect(obj: Any, min_bytes: int, into: dict[int, Any]) -> dict[int, Any]:
    """The arrays of ``obj`` (through dicts and lists) that go into the shared segment."""
    import numpy as np

    if isinstance(obj, np.ndarray):
        if obj.nbytes >= min_bytes and obj.nbytes and _torch_dtype(obj.dtype) is not None:
            into[id(obj)] = obj
    elif isinstance(obj, dict | list):
        for v in obj.values() if isinstance(obj, dict) else obj:
            _collect(v, min_bytes, into)
    return into


@functools.lru_cache(maxsize=64)
def _torch_dtype(dtype: Any) -> Any:
    """The torch dtype of a numeric numpy dtype, or None (strings, objects, big-endian).
    Cached: asked for every array of every batch (uncached, 6% of the loop's time)."""
    import numpy as np
    import torch

    if dtype.kind not in "biufc":
        return None
    try:
        return torch.from_numpy(np.empty(0, dtype)).dtype
    except (TypeError, ValueError):
        return None
