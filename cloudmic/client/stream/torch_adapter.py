"""The torch side of a stream: its base class, worker detection and the loader that keeps
the stream's bookkeeping in step with what the training loop received.

torch is optional: without it a stream is a plain iterable. Anything that implements
:class:`Consumable` (``PatchStream``, ``Mix``, ``shards``) gets a :class:`TrackingLoader`.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

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
    stream started that server when it opened (:func:`prestart_workers`).
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
            # big arrays cross as tensors in shared memory, small ones inline in the pickle
            kwargs.setdefault("collate_fn", functools.partial(as_tensors, min_bytes=64 << 10))
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


def as_tensors(obj: Any, min_bytes: int = 0) -> Any:
    """Numeric numpy arrays of at least ``min_bytes`` as tensors (zero-copy), through dicts
    and lists; strings and everything else unchanged."""
    import numpy as np
    import torch

    if isinstance(obj, np.ndarray):
        if obj.dtype.kind in "biufc" and obj.nbytes >= min_bytes:
            return torch.from_numpy(obj)
        return obj
    if isinstance(obj, dict):
        return {k: as_tensors(v, min_bytes) for k, v in obj.items()}
    if isinstance(obj, list):
        return [as_tensors(v, min_bytes) for v in obj]
    return obj


PRELOAD = ["torch", "numpy", "zarr", "zarrs", "obstore", "cloudmic.client.stream.mix",
           "cloudmic.client.shards"]


def forkserver() -> Any:
    """forkserver with the stream's heavy modules preloaded: a worker starts in
    milliseconds instead of importing torch and zarr afresh (spawn); and, unlike a plain
    fork of the training process, it inherits no running store client or thread. The
    server starts in the background (if :func:`prestart_workers` has not started it yet)."""
    import multiprocessing as mp

    _ahead["wanted"] = True  # a loader with workers: never stop it now
    _start_in_background()
    return mp.get_context("forkserver")


# A stream starts the workers' forkserver when it opens, ahead of loader(): its imports
# (torch alone ~1.2 s on these cores) then overlap the stream's own metadata reads and the
# caller's set-up. If the process's first pass runs in-process instead, that server is
# stopped, and no later stream of the process starts one ahead again.
_ahead: dict[str, Any] = {"tried": False, "wanted": False, "thread": None}


def prestart_workers() -> bool:
    """Start the forkserver now, once per process, when torch is installed (and the
    platform has forkserver: not on Windows); True if this call started it."""
    if StreamBase is object or _ahead["tried"]:
        return False
    _ahead["tried"] = True
    with contextlib.suppress(ValueError):  # no forkserver here: a loader with workers says so
        _ahead["thread"] = _start_in_background()
    return _ahead["thread"] is not None


@contextlib.contextmanager
def workers_ahead() -> Iterator[None]:
    """Around a stream's opening: the forkserver starts ahead (:func:`prestart_workers`);
    if the opening fails (no such dataset, a bad argument), the server it started is
    stopped, and a later stream starts one again."""
    started = prestart_workers()
    try:
        yield
    except BaseException:
        if started:
            stop_ahead()
            _ahead["tried"] = False
        raise


def no_workers_ahead() -> None:
    """This process opens streams without loader workers (the catalog reads their metadata,
    the demo iterates in-process): start no forkserver ahead for them (and stop one a
    stream started before)."""
    _ahead["tried"] = True
    stop_ahead()


def stop_ahead() -> None:
    """The stream is used without this process's loader workers: a pass runs in-process, or
    it is pickled for other workers (a DataLoader of the caller's own, with spawn). A
    forkserver started ahead for workers that never came is then stopped, so its imports
    take no CPU from that pass and its memory goes (a loader with workers made later
    starts it again)."""
    thread, _ahead["thread"] = _ahead["thread"], None
    if thread is None or _ahead["wanted"]:
        return
    import multiprocessing as mp
    import multiprocessing.forkserver as fs
    import multiprocessing.popen_forkserver as pf
    import os
    import signal

    thread.join()
    if any(isinstance(getattr(p, "_popen", None), pf.Popen) for p in mp.active_children()):
        return  # the server is one per process: live workers of the caller's came from it
    server = fs._forkserver  # no public API stops it; Python's own tests use _stop()
    with contextlib.suppress(Exception):
        if server._forkserver_pid is not None:
            os.kill(server._forkserver_pid, signal.SIGKILL)
            server._stop()


def _start_in_background() -> threading.Thread:
    import multiprocessing as mp
    import multiprocessing.forkserver as fs

    mp.get_context("forkserver").set_forkserver_preload(PRELOAD)
    t = threading.Thread(target=fs.ensure_running, daemon=True, name="forkserver-start")
    t.start()
    return t
