"""``cloudmic.Mix``: several patch streams (datasets, groups) interleaved with weights.

Each draw picks a source with probability proportional to its weight among the sources not
yet exhausted; the draws are a pure function of (seed, epoch, consumer). Every source keeps
its own exact-once split over ranks and workers and its own consumed positions, so
``state_dict()`` resumes each source exactly (the interleaving restarts from the resume
point with the same weights).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from cloudmic.client.patches import PatchStream, _Base, _TrackingLoader, get_worker_info


class Mix(_Base):  # type: ignore[misc,valid-type]
    """Items of ``streams`` interleaved by ``weights``; each item gets a ``source`` index.

    ``until="first"`` ends the epoch when one source runs out (weights hold all epoch);
    ``"all"`` drains every source (the mix shifts to the others once one is done). To batch
    items together the sources must yield the same variables and patch shapes.
    """

    def __init__(self, streams: Sequence[PatchStream], weights: Sequence[float] | None = None,
                 *, seed: int = 0, until: str = "all") -> None:
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

    def __len__(self) -> int:
        return sum(len(s) for s in self.streams)

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self._passes = int(epoch), 0
        for s in self.streams:
            s.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch = self.epoch + self._passes
        self._passes += 1
        info = get_worker_info()
        rng = np.random.default_rng([self.seed, epoch, 4, 0 if info is None else info.id])
        iters = [iter(s) for s in self.streams]
        active = [k for k in range(len(iters)) if self.weights[k] > 0]
        while active:
            p = self.weights[active] / self.weights[active].sum()
            k = active[int(rng.choice(len(active), p=p))]
            try:
                item = next(iters[k])
            except StopIteration:
                if self.until == "first":
                    return
                active.remove(k)
                continue
            item["source"] = k
            yield item

    # ---- resume: per source ----
    def mark_consumed(self, sources: Any, positions: Any) -> None:
        src = np.asarray(sources).ravel()
        pos = np.asarray(positions).ravel()
        for k, s in enumerate(self.streams):
            s.mark_consumed(pos[src == k])

    def state_dict(self, *, gather: bool = True) -> dict[str, Any]:
        return {"version": 1, "mix": len(self.streams), "seed": self.seed,
                "epoch": self.epoch + max(self._passes - 1, 0),
                "sources": [s.state_dict(gather=gather) for s in self.streams]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("mix") != len(self.streams):
            raise ValueError(f"state_dict is for a mix of {state.get('mix')} streams, this one "
                             f"has {len(self.streams)}")
        for s, st in zip(self.streams, state["sources"], strict=True):
            s.load_state_dict(st)
        self.epoch, self._passes = int(state["epoch"]), 0

    def loader(self, batch_size: int, num_workers: int = 0, **kwargs: Any) -> _TrackingLoader:
        """Like :meth:`PatchStream.loader`: batches are marked consumed as they arrive."""
        return _TrackingLoader(self, batch_size, num_workers, **kwargs)

    # hooks of the tracking loader
    def _start_pass(self) -> None:
        for s in self.streams:
            s._start_pass()

    def _advance_pass(self) -> None:
        self._passes += 1
        for s in self.streams:
            s._advance_pass()

    def _mark_batch(self, batch: Mapping[str, Any]) -> None:
        self.mark_consumed(batch["source"], batch["position"])

    def _end_pass(self) -> None:
        for s in self.streams:
            s._end_pass()
