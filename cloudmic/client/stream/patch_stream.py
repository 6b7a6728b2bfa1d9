"""``cloudmic.PatchStream``: aligned random patches, read block by block.

Reading one patch at a time from a sharded store costs several GETs per patch (~60
samples/s, STACK-NOTES "Reading patterns"). So the stream reads whole shard-aligned blocks
(a few ahead, concurrently), cuts every patch it needs from the decoded block at once, and
shuffles over a pool of blocks. The class only wires the parts together:

- ``plan``: groups, variables and blocks (from the consolidated metadata);
- ``sampling``: where patches are cut and the block order, pure functions of (seed, epoch);
- ``distribute``: equal shares for every rank and worker, and the consumed bitmap;
- ``epochs``: passes, epochs, consumption and resume (shared with ``shards``);
- ``reader``: block reads with cache, retries and error policy, cut into arrays;
- ``pool``: the rolling shuffle pool and batch assembly;
- ``torch_adapter``: the DataLoader that keeps the bookkeeping in step;
- ``cluster``: the same reads run on a dask cluster.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import numpy as np

from cloudmic.client.metadata import read_store_metadata
from cloudmic.client.stream import distribute, plan, pool
from cloudmic.client.stream.epochs import Epochs, layout_fingerprint
from cloudmic.client.stream.reader import BlockReader, Cut, ReadSpec
from cloudmic.client.stream.sampling import Sampler, block_order, label_pick, rng, tiles
from cloudmic.client.stream.torch_adapter import StreamBase, get_worker_info
from cloudmic.client.stream.workers import workers_ahead
from cloudmic.errors import StoreError
from cloudmic.storage.location import Location
from cloudmic.storage.versions import resolve


class PatchStream(Epochs, StreamBase):  # type: ignore[misc,valid-type]
    """Aligned patches of several variables, ``patches_per_sample`` per sample per epoch.

    ``group`` is a group path (``"train"``), a glob (``"CCPs/*"``) or a list of them.
    ``patch`` gives the window in pixels (or physical units, ``"2.5um"``) of the first
    (reference) variable, e.g. ``{"y": 64, "x": 64}``; the other variables get the window
    covering the same field of view on their own grid (a 2x GT gets 128x128, an 8x SR
    image 512x512).

    Iterating yields items, ``{variable: ndarray, "__key__", "group", "index", "origin",
    "position", "pad"}``; with ``batch_size`` (or through :meth:`loader`) it yields batches
    of the same keys, one contiguous array per variable, which is much cheaper to move
    between processes.

    Distribution: under ``torchrun`` the rank and world size come from
    ``torch.distributed`` (or ``RANK``/``WORLD_SIZE``; ``rank=``/``world_size=``
    override) and DataLoader workers are detected. Every rank and worker gets the same
    number of items, so DDP never waits at the end of an epoch: the shares are padded by
    repeating items (``pad`` is True; never counted as consumed), or with
    ``drop_last=True`` the remainder (fewer items than consumers) is left out. Iterate
    :meth:`loader` (or call :meth:`mark_consumed` with each batch) and :meth:`state_dict`
    says exactly what was consumed; :meth:`load_state_dict` resumes, on any number of
    ranks and workers.

    Versions: the dataset's current version is resolved once, when the stream is built
    (``version=`` pins another, as does a version URL): a republish never changes what a
    training run reads, and :meth:`state_dict` records the version.

    Faults: reads failing because the store is unreachable are retried for
    ``retry_seconds``; damaged data raises, or with ``on_error="skip"`` its block is
    skipped with a warning. ``cache_dir`` keeps decoded blocks on local disk for later
    epochs; ``scheduler`` (a dask scheduler address) reads and cuts blocks on a cluster.
    """

    def __init__(
        self,
        url: str,
        group: str | Sequence[str],
        variables: Sequence[str] | Mapping[str, str],
        patch: Mapping[str, int | str],
        *,
        seed: int = 0,
        shuffle: bool = True,
        patches_per_sample: int = 1,
        batch_size: int | None = None,
        drop_last: bool = False,
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
        version: str | None = None,
    ) -> None:
        super().__init__()
        check_choice("sampling", sampling, ("random", "grid"))
        check_choice("on_error", on_error, ("raise", "skip"))
        if not variables:
            raise ValueError("PatchStream needs at least one variable, e.g. ['wf', 'gt']")
        if patches_per_sample < 1:
            raise ValueError("patches_per_sample must be at least 1")
        with workers_ahead():  # its imports overlap the metadata reads below
            self.url, self.variables = url, list(variables)
            self.seed, self.shuffle, self.patches_per_sample = seed, shuffle, patches_per_sample
            self.batch_size, self.drop_last, self.drop_partial = batch_size, drop_last, False
            self.buffer_blocks, self.prefetch = max(1, buffer_blocks), max(1, prefetch)
            self.rank, self.world_size, self.scheduler = rank, world_size, scheduler
            dataset = resolve(url, version, **dict(storage_options or {}))
            loc, self.version = dataset.zarr, dataset.version
            attrs, arrays = read_store_metadata(loc)
            paths = dict(variables) if isinstance(variables, Mapping) else {v: v for v in variables}
            patterns = [group] if isinstance(group, str) else list(group)
            matched = plan.match_groups(url, arrays, patterns)
            if any(isinstance(v, str) for v in patch.values()):
                patch = plan.physical_patch(url, arrays, f"{matched[0]}/{paths[self.variables[0]]}",
                                            patch, _coord_reader(loc))
            planner = plan.Planner(url, paths, patch)
            dims = {g: d.get("dim") for g, d in attrs.get("cloudmic", {}).get("groups", {}).items()}
            groups = [planner.group(p, arrays, dims.get(p)) for p in matched]
            self.patch = planner.patch
            plan.check_coords(url, groups, arrays, coords)
            grid = [tiles(g, self.patch) if sampling == "grid" else None for g in groups]
            per_sample = [len(t) if t is not None else patches_per_sample for t in grid]
            picks = [label_pick(url, g, labels, self.variables, min_foreground, class_weights)
                     if labels else None for g in groups]
            self.sampler = Sampler(seed, self.patch, groups, per_sample, grid, picks)
            self.spec = ReadSpec(loc.url, loc.storage_options, tuple(groups),
                                 tuple(per_sample), tuple(self.patch.values()),
                                 tuple(self.patch), tuple(coords), codec_pipeline, cache_dir,
                                 cache_bytes, on_error, float(retry_seconds))
            self.length = int(self.spec.offsets[-1])
            self.reader = BlockReader(self.spec, self.sampler)
            self._init_epochs()

    def identity(self) -> dict[str, Any]:
        """What a saved state must match to resume this stream."""
        return {"seed": self.seed, "length": self.length,
                "patches_per_sample": self.patches_per_sample,
                "layout": layout_fingerprint(f"{g.path}:{g.length}:{g.block}"
                                             for g in self.spec.groups),
                "dataset_version": self.version}

    # ---- who reads what ----
    def block_order(self, epoch: int) -> np.ndarray:
        return block_order(self.seed, epoch, len(self.spec.blocks), self.shuffle)

    def assignment(self, epoch: int, consumer: int, consumers: int) -> list[distribute.Take]:
        """What one consumer reads in ``epoch``: a pure function of (seed, epoch, what was
        consumed, consumer, consumers), the same number of items for every consumer."""
        return distribute.share(self.block_order(epoch), self.spec.offsets, self._consumed,
                                consumer, consumers, drop_last=self.drop_last)

    # ---- iteration ----
    def __iter__(self) -> Iterator[dict[str, Any]]:
        rows = self.pass_rows()
        in_main = get_worker_info() is None  # without loader workers, yielded = consumed
        if self.batch_size:
            for batch in pool.batched(rows, self.batch_size, self.drop_partial):
                if in_main:
                    self.mark_consumed(batch["position"], batch["pad"])
                yield batch
        else:
            for d in rows:
                it = pool.item(d)
                if in_main:
                    self.mark_consumed(it["position"], it["pad"])
                yield it
        self._finished = in_main

    def pass_rows(self) -> Iterator[pool.Draw]:
        """Start the next pass (the next epoch, or the resumed one) and return this
        consumer's rows of it, in order; ``Mix`` draws from these."""
        epoch = self._next_pass()
        me, consumers = self.consumer()
        takes = self.assignment(epoch, me, consumers)
        shuffle = rng(self.seed, epoch, "shuffle", me, consumers) if self.shuffle else None
        return self._rows(takes, epoch, shuffle)

    def _rows(self, takes: list[distribute.Take], epoch: int,
              shuffle: np.random.Generator | None) -> Iterator[pool.Draw]:
        """This consumer's rows, read ahead (threads here, or a dask cluster) and shuffled;
        a block skipped as damaged is made up for with padding, so the count holds."""
        sizes = [len(t) for t in takes]
        want, got, last = sum(sizes), 0, None
        if self.scheduler:
            from cloudmic.client.stream.cluster import cluster_reads

            source = cluster_reads(self.scheduler, self.reader, takes, epoch)
        else:
            source = thread_reads(self.reader, takes, epoch, self.prefetch)
        with source as submit:
            for d in pool.draws(submit, len(takes), sizes, self.buffer_blocks, self.prefetch,
                                shuffle):
                got, last = got + 1, d
                yield d
        if want > got and last is None:  # nothing to repeat: a short rank would hang DDP
            raise StoreError(f"{self.url}: every block of this consumer's share was skipped as "
                             "unreadable, so its share cannot be made up with padding; run "
                             "cloudmic verify on the dataset and ingest it again")
        if last is not None:
            cut = last[0]
            for k in range(want - got):
                yield _as_pad(cut), k % len(cut)


def merge_states(states: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One state from the ``state_dict(gather=False)`` of every rank (for runs that do not
    use ``torch.distributed``): the union of what each consumed."""
    return distribute.merge_states(states, ("seed", "epoch", "length", "patches_per_sample"))


@contextmanager
def thread_reads(reader: BlockReader, takes: list[distribute.Take], epoch: int,
                 prefetch: int) -> Iterator[Any]:
    """``submit(k)`` -> a future of ``takes[k]``'s cut block, read on ``prefetch`` threads
    (zarrs decodes off the GIL, so reads overlap the training loop).

    The end never waits for the reads in flight (they finish alone, their blocks dropped): a
    pass left unfinished (a ``break``, an error in the loop) is closed whenever its generator
    is collected, which may be on zarr's event-loop thread, where waiting for a read that
    needs that loop hung the process for good."""
    ex = ThreadPoolExecutor(prefetch, thread_name_prefix="cloudmic-read")
    try:
        yield lambda k: ex.submit(reader.read, takes[k], epoch)
    finally:
        ex.shutdown(wait=False, cancel_futures=True)


def _as_pad(cut: Cut) -> Cut:
    return dataclasses.replace(cut, pad=np.ones(len(cut), bool))


def _coord_reader(loc: Location) -> Any:
    def read(path: str) -> np.ndarray:
        import zarr

        root = zarr.open_group(loc.zarr_store(read_only=True), mode="r", zarr_format=3)
        return root[path][:2]

    return read


def check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be {' or '.join(map(repr, choices))}, got {value!r}")
