"""``cloudmic.Mix``: several patch streams (datasets, groups) interleaved with weights.

Each draw picks a source with probability proportional to its weight among the sources not
yet exhausted. The draws are a pure function of (seed, epoch) and the same on every rank
and worker: each source gives every consumer the same number of items, so the same draws
give every consumer the same count, also with ``until="first"``, and DDP never waits.
Every source keeps its own exact-once split and consumed positions, so ``state_dict()``
resumes each source exactly (the interleaving restarts from the resume point).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from cloudmic.client.stream import pool
from cloudmic.client.stream.patch_stream import PatchStream
from cloudmic.client.stream.sampling import rng
from cloudmic.client.stream.torch_adapter import StreamBase, TrackingLoader, get_worker_info


class Mix(StreamBase):  # type: ignore[misc,valid-type]
    """Items of ``streams`` interleaved by ``weights``; each item gets a ``source`` index.

    ``until="first"`` ends the epoch when one source runs out (weights hold all epoch);
    ``"all"`` drains every source (the mix shifts to the others once one is done). To batch
    items together the sources must yield the same variables and patch shapes.
    """

    def __init__(self, streams: Sequence[PatchStream], weights: Sequence[float] | None = None,
                 *, seed: int = 0, until: str = "all", batch_size: int | None = None) -> None:
        super().__init__()
        if not streams:
            raise ValueError("Mix needs at least one stream")
        w = np.ones(len(streams)) if weights is None else np.asarray(weights, dtype=float)
        if w.shape != (len(streams),) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"weights must be {len(streams)} non-negative numbers, not all 0; "
                             f"got {weights!r}")
        if until not in ("first", "all"):
            raise ValueError(f"until must be 'first' or 'all', got {until!r}")
        self.streams, self.weights = list(streams), w / w.sum()
        self.seed, self.until, self.epoch, self._passes = seed, until, 0, 0
        self.batch_size, self.drop_partial = batch_size, False

    def __len__(self) -> int:
        return sum(len(s) for s in self.streams)

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self._passes = int(epoch), 0
        for s in self.streams:
            s.set_epoch(epoch)

    def _picks(self, epoch: int, counts: Sequence[int]) -> Iterator[int]:
        """The source of each draw, given how many items each source holds."""
        r = rng(self.seed, epoch, "mix")
        left = list(counts)
        active = [k for k in range(len(left)) if self.weights[k] > 0]
        while active:
            p = self.weights[active] / self.weights[active].sum()
            k = active[int(r.choice(len(active), p=p))]
            if left[k] == 0:
                if self.until == "first":
                    return
                active.remove(k)
                continue
            left[k] -= 1
            yield k

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch = self.epoch + self._passes
        self._passes += 1
        quotas = [s.quota() for s in self.streams]  # before the passes start
        rows = [s.pass_rows() for s in self.streams]
        drawn = self._drawn(rows, self._picks(epoch, quotas))
        in_main = get_worker_info() is None
        if self.batch_size:
            yield from pool.batched(drawn, self.batch_size, self.drop_partial,
                                    lambda buf: self._batch(buf, in_main))
        else:
            for d, k in drawn:
                it = pool.item(d)
                it["source"] = k
                if in_main:
                    self.streams[k].mark_consumed(it["position"], it["pad"])
                yield it
        for r in rows:  # until="first" leaves sources unfinished: stop their reads
            r.close()
        if in_main:
            self.end_pass()

    @staticmethod
    def _drawn(rows: list[Iterator[pool.Draw]],
               picks: Iterator[int]) -> Iterator[tuple[pool.Draw, int]]:
        for k in picks:
            d = next(rows[k], None)
            if d is None:  # cannot happen: every source yields exactly its quota
                return
            yield d, k

    def _batch(self, buf: list[tuple[pool.Draw, int]], in_main: bool) -> dict[str, Any]:
        batch = pool.collate([d for d, _ in buf])
        batch["source"] = np.array([k for _, k in buf])
        if in_main:
            self.mark_batch(batch)
        return batch

    def batches(self, workers: int = 1) -> int:
        """Batches one rank yields in the coming pass with ``workers`` loader workers."""
        quotas = [s.quota(workers) for s in self.streams]
        n = sum(q for q, w in zip(quotas, self.weights, strict=True) if w > 0) if (
            self.until == "all") else sum(1 for _ in self._picks(self.epoch + self._passes, quotas))
        size = self.batch_size or 1
        return max(1, workers) * (n // size if self.drop_partial else -(-n // size))

    # ---- resume: per source ----
    def mark_consumed(self, sources: Any, positions: Any, pad: Any = None) -> None:
        src = np.asarray(sources).ravel()
        pos = np.asarray(positions).ravel()
        pad = np.zeros(len(pos), bool) if pad is None else np.asarray(pad).ravel()
        for k, s in enumerate(self.streams):
            s.mark_consumed(pos[src == k], pad[src == k])

    def state_dict(self, *, gather: bool = True) -> dict[str, Any]:
        sources = [s.state_dict(gather=gather) for s in self.streams]
        return {"version": 1, "mix": len(self.streams), "seed": self.seed,
                "epoch": sources[0]["epoch"], "sources": sources}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("mix") != len(self.streams):
            raise ValueError(f"state_dict is for a mix of {state.get('mix')} streams, this one "
                             f"has {len(self.streams)}")
        for s, st in zip(self.streams, state["sources"], strict=True):
            s.load_state_dict(st)
        self.epoch, self._passes = int(state["epoch"]), 0

    def loader(self, batch_size: int, num_workers: int = 0, **kwargs: Any) -> TrackingLoader:
        """Like :meth:`PatchStream.loader`: batches are marked consumed as they arrive."""
        return TrackingLoader(self, batch_size, num_workers, **kwargs)

    # ---- hooks of the tracking loader (torch_adapter.Consumable) ----
    def start_pass(self) -> None:
        for s in self.streams:
            s.start_pass()

    def advance_pass(self) -> None:
        self._passes += 1
        for s in self.streams:
            s.advance_pass()

    def mark_batch(self, batch: Mapping[str, Any]) -> None:
        self.mark_consumed(batch["source"], batch["position"], batch["pad"])

    def end_pass(self) -> None:
        for s in self.streams:
            s.end_pass()

