"""Epochs and consumption, the bookkeeping ``PatchStream`` and ``shards`` share.

A stream counts its passes: each pass is the next epoch unless ``set_epoch`` says
otherwise (persistent DataLoader workers never see the parent's ``set_epoch``, and still
move on). Items the training loop received are marked in a bitmap of the epoch's
positions (allocated on first use); ``state_dict`` saves it with what the positions mean,
and ``load_state_dict`` makes the next pass continue that epoch on any number of ranks and
workers. The shares themselves come from ``distribute.share``.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from cloudmic.client.stream import distribute
from cloudmic.client.stream.torch_adapter import TrackingLoader, get_worker_info, worker
from cloudmic.client.stream.workers import stop_ahead


def layout_fingerprint(parts: Any) -> str:
    """A short digest of what the positions of an epoch refer to (groups and block sizes, or
    shard paths): a state saved for another layout of the same length is refused."""
    return f"{zlib.crc32(chr(10).join(parts).encode()):08x}"


class Epochs:
    """Mixin. The stream sets ``length``, ``rank``, ``world_size``, ``drop_last``,
    ``batch_size``, ``drop_partial`` and calls :meth:`_init_epochs`; ``identity()`` names
    what a saved state must match (seed, length, ...)."""

    length: int
    rank: int | None
    world_size: int | None
    drop_last: bool
    batch_size: int | None
    drop_partial: bool

    def _init_epochs(self, epoch: int = 0) -> None:
        self.epoch, self._passes = int(epoch), 0
        self._consumed: np.ndarray | None = None  # positions of _consumed_epoch received
        self._consumed_epoch: int | None = None
        self._finished = False  # a pass over _consumed_epoch ran to its end here

    def identity(self) -> dict[str, Any]:
        raise NotImplementedError

    def __len__(self) -> int:
        return self.length

    def __getstate__(self) -> dict[str, Any]:
        """Pickled, for workers. They read this rank's share: its rank is pinned in the
        copy, as a worker cannot always find it (no process group of its own, and a
        forkserver's children see the environment of when the server started, maybe
        before ``RANK`` was set). Unless they are this stream's own loader's workers, a
        forkserver started ahead for them is not needed."""
        stop_ahead()
        state = dict(self.__dict__)
        rank, size = self._world()
        if self.rank is None and self.world_size is None and size > 1:
            state["rank"], state["world_size"] = rank, size
        return state

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` on the next pass; each further pass without a call counts
        as the next epoch."""
        self.epoch, self._passes = int(epoch), 0

    # ---- who reads what ----
    def _world(self) -> tuple[int, int]:
        """(rank, world size): explicit, else torch.distributed, else RANK/WORLD_SIZE."""
        if self.rank is not None or self.world_size is not None:
            return int(self.rank or 0), int(self.world_size or 1)
        return distribute.world()

    def consumer(self) -> tuple[int, int]:
        """(this consumer's index, consumers in total): ranks x DataLoader workers."""
        return distribute.consumer_index(*self._world(), *worker())

    def quota(self, workers: int | None = None) -> int:
        """Items every consumer yields in the coming pass (``workers``: loader workers per
        rank, by default as detected here)."""
        consumers = self._world()[1] * (workers or worker()[1])
        epoch = self.epoch + self._passes
        resumed = self._consumed_epoch == epoch and not self._finished
        done = int(self._consumed.sum()) if resumed and self._consumed is not None else 0
        return distribute.quota(self.length - done, consumers, self.drop_last)

    def batches(self, workers: int = 1) -> int:
        """Batches one rank yields in the coming pass with ``workers`` loader workers."""
        q, size = self.quota(max(1, workers)), self.batch_size or 1
        return max(1, workers) * (q // size if self.drop_partial else -(-q // size))

    def _next_pass(self) -> int:
        """Begin the next pass in this process; its epoch."""
        epoch = self.epoch + self._passes
        if get_worker_info() is None:
            stop_ahead()
        self.start_pass()
        self._passes += 1
        return epoch

    # ---- consumption and resume ----
    def mark_consumed(self, positions: Any, pad: Any = None) -> None:
        """Record items the training loop received (``batch["position"]``, and
        ``batch["pad"]`` to leave out the padding repeats); :meth:`loader` does it for you."""
        pos = np.asarray(positions, dtype=np.int64).ravel()
        if pad is not None:
            pos = pos[~np.asarray(pad, dtype=bool).ravel()]
        if self._consumed is None:
            self._consumed = np.zeros(self.length, dtype=bool)
        self._consumed[pos] = True

    def state_dict(self, *, gather: bool = True) -> dict[str, Any]:
        """Where this epoch stands (JSON-safe): the consumed positions of every rank
        (gathered with ``torch.distributed`` when it is initialized and ``gather``) and what
        they mean. With ``gather`` it is a collective: call it on every rank (all return the
        same), save the result from one."""
        consumed = self._consumed if self._consumed is not None else np.zeros(self.length, bool)
        consumed = distribute.gather_or(consumed) if gather else consumed
        epoch = self._consumed_epoch if self._consumed_epoch is not None else (
            self.epoch + self._passes)
        return {"version": 1, **self.identity(), "epoch": epoch,
                "consumed": distribute.encode_bitmap(consumed), "count": int(consumed.sum())}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue the epoch of ``state``: the next pass yields only what was not consumed,
        split over however many ranks and workers run now."""
        for key, value in self.identity().items():
            if key in ("layout", "dataset_version") and key not in state:  # older states
                continue
            if key == "dataset_version" and state[key] != value:
                raise ValueError(f"state_dict was saved reading version {state[key]} of the "
                                 f"dataset, this stream reads {value}: pass "
                                 f"version={state[key]!r} to resume on the same data")
            if state.get(key) != value:
                raise ValueError(f"state_dict is for {key}={state.get(key)!r}, this stream has "
                                 f"{value!r}: build the stream as it was built")
        self._consumed = distribute.decode_bitmap(state["consumed"], self.length)
        self.epoch, self._passes = int(state["epoch"]), 0
        self._consumed_epoch, self._finished = self.epoch, False

    def loader(self, batch_size: int, num_workers: int = 0, **kwargs: Any) -> TrackingLoader:
        """A ``torch.utils.data.DataLoader`` over this stream: batches assembled in the
        stream (or its workers), every batch marked consumed as the loop receives it, so
        :meth:`state_dict` is exact. ``kwargs`` go to the DataLoader (``pin_memory``,
        ``persistent_workers``, ``prefetch_factor``); ``drop_last`` drops partial batches."""
        return TrackingLoader(self, batch_size, num_workers, **kwargs)

    # ---- hooks of the tracking loader (torch_adapter.Consumable) ----
    def start_pass(self) -> None:
        """Consumption is tracked per epoch: a new epoch, or a finished one run again, starts
        with nothing consumed; a resumed one keeps what ``load_state_dict`` gave it."""
        epoch = self.epoch + self._passes
        if self._consumed_epoch != epoch or self._finished:
            self._consumed = None
            self._consumed_epoch, self._finished = epoch, False

    def advance_pass(self) -> None:
        self._passes += 1

    def mark_batch(self, batch: Mapping[str, Any]) -> None:
        self.mark_consumed(batch["position"], batch["pad"])

    def end_pass(self) -> None:
        self._finished = True
