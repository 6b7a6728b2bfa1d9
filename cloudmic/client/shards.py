"""``cloudmic.shards``: a split's WebDataset records, decoded to numpy, with the
distribution guarantees of ``PatchStream`` (DESIGN "Guarantees > Client").

A *block* of ``distribute.share`` is here one tar shard, its items are its records (counted
in index.json). A consumer reads each of its shards with one GET, decoding records as the
body arrives (the next shard comes in while this one is decoded), and keeps only its own
records. Credentials stay in the storage options (never in a URL or a ``pipe:`` command
line, where the process list would show them); only index.json is read up front, so the
stream pickles to spawn/forkserver DataLoader workers.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any

import numpy as np

from cloudmic.client.stream import distribute, pool
from cloudmic.client.stream.epochs import Epochs, layout_fingerprint
from cloudmic.client.stream.patch_stream import check_choice
from cloudmic.client.stream.reader import is_transient, unreadable
from cloudmic.client.stream.sampling import rng
from cloudmic.client.stream.torch_adapter import StreamBase, get_worker_info
from cloudmic.client.stream.workers import workers_ahead
from cloudmic.errors import CloudmicError, GroupNotFoundError, StoreError, StoreNotFoundError
from cloudmic.formats import wds_tar
from cloudmic.storage import root_layout as rl
from cloudmic.storage.location import Location
from cloudmic.storage.object_body import ObjectBody
from cloudmic.storage.versions import resolve, version_of

Record = dict[str, Any]


def decode_record(sample: Record) -> Record:
    """Decode ``*.npy`` (never with pickles; the arrays view the record's own buffers),
    ``json`` and ``cls``; keep the rest as is."""
    out: Record = {}
    for key, value in sample.items():
        if key.endswith("npy") and isinstance(value, bytearray):
            out[key.removesuffix(".npy")] = wds_tar.load_npy(value)
        elif key == "json" and isinstance(value, bytearray):
            out[key] = json.loads(value)
        elif key == "cls" and isinstance(value, bytearray):
            out[key] = int(value)
        else:  # other fields as webdataset gives them: bytes
            out[key] = bytes(value) if isinstance(value, bytearray) else value
    return out


def shard_index(url: str, version: str | None = None, **storage_options: Any,
                ) -> tuple[Location, dict[str, Any]]:
    """(the ``<dataset>.wds`` location of the pinned version, its index.json). ``url`` may
    name the ``.zarr`` or the ``index.json`` too; see :func:`cloudmic.storage.versions.resolve`."""
    loc = Location.parse(url, **storage_options)
    if loc.name == rl.INDEX:
        loc = loc.parent
    if rl.split_part(loc.name):  # a dataset URL: resolve its version
        loc = resolve(loc, version).wds
    try:
        data = loc.child(rl.INDEX).read_bytes()  # one GET, no HEAD
    except FileNotFoundError:
        raise StoreNotFoundError(f"{loc.url}: no index.json; pass ROOT/<dataset>.wds "
                                 "(`cloudmic ls ROOT` lists what is published)") from None
    try:
        index = json.loads(data)
    except ValueError as exc:
        raise StoreError(f"{loc.child(rl.INDEX).url}: not valid JSON ({exc}); re-publish the "
                         "dataset") from None
    if not isinstance(index, dict) or not isinstance(index.get("splits"), dict):
        raise StoreError(f"{loc.child(rl.INDEX).url}: no 'splits' object; this index.json "
                         "was not written by cloudmic or was altered: re-publish the dataset")
    return loc, index


def split_shards(loc: Location, index: Mapping[str, Any], split: str,
                 ) -> tuple[list[str], np.ndarray]:
    """(shard paths inside the ``.wds`` folder, record offsets: shard starts plus the total)."""
    where = loc.child(rl.INDEX).url
    splits = index.get("splits") if isinstance(index, Mapping) else None
    if not isinstance(splits, Mapping):
        raise StoreError(f"{where}: no 'splits' object; re-publish the dataset")
    if split not in splits:
        raise GroupNotFoundError(f"{loc.url}: no split {split!r}; splits: "
                                 f"{', '.join(map(str, splits))}")
    try:
        entries = splits[split]["shards"]
        paths = [inside(loc, s["url"]) for s in entries]
        counts = [int(s["samples"]) for s in entries]
        records = int(splits[split]["records"])
    except (TypeError, KeyError, ValueError, AttributeError) as exc:  # not written by us
        raise StoreError(f"{where}: split {split!r} is malformed ({type(exc).__name__}: "
                         f"{exc}); re-publish the dataset") from None
    if any(n < 0 for n in counts):
        raise StoreError(f"{where}: split {split!r} lists a negative record count; "
                         "re-publish the dataset")
    offsets = np.concatenate(([0], np.cumsum(counts, dtype=np.int64)))
    if int(offsets[-1]) != records:
        raise StoreError(f"{where}: split {split!r} lists "
                         f"{records} records but its shards hold "
                         f"{int(offsets[-1])}; run cloudmic verify on the dataset")
    return paths, offsets.astype(np.int64)


def inside(loc: Location, rel: str) -> str:
    """``rel`` normalized, if it names a file inside the ``.wds`` folder."""
    return loc.inside(rel, loc.child(rl.INDEX).url).url[len(loc.url) + 1:]


class ShardStream(Epochs, StreamBase):  # type: ignore[misc,valid-type]
    """The records of one split; see :func:`shards`."""

    def __init__(self, url: str, split: str, *, shuffle: bool = False, seed: int = 0,
                 epoch: int = 0, buffer: int = 0, batch_size: int | None = None,
                 drop_last: bool = False, rank: int | None = None,
                 world_size: int | None = None, version: str | None = None,
                 on_error: str = "raise",
                 storage_options: dict[str, Any] | None = None) -> None:
        super().__init__()
        check_choice("on_error", on_error, ("raise", "skip"))
        with workers_ahead():  # its imports overlap the index read below
            self.on_error = on_error
            loc, index = shard_index(url, version, **(storage_options or {}))
            self.version = version_of(loc)
            self.root, self.storage_options, self.split = loc.url, loc.storage_options, split
            self.paths, self.offsets = split_shards(loc, index, split)
            self.length = int(self.offsets[-1])
            self.shuffle, self.seed, self.buffer = bool(shuffle), int(seed), max(0, int(buffer))
            self.batch_size, self.drop_last, self.drop_partial = batch_size, drop_last, False
            self.rank, self.world_size = rank, world_size
            self._init_epochs(epoch)

    def identity(self) -> dict[str, Any]:
        """What a saved state must match to resume this stream."""
        return {"split": self.split, "seed": self.seed, "length": self.length,
                "layout": layout_fingerprint(self.paths), "dataset_version": self.version}

    def block_order(self, epoch: int) -> np.ndarray:
        n = len(self.paths)
        return rng(self.seed, epoch, "shard-order").permutation(n) if self.shuffle else np.arange(n)

    def assignment(self, epoch: int, consumer: int, consumers: int) -> list[distribute.Take]:
        """The shards and records one consumer reads in ``epoch``."""
        return distribute.share(self.block_order(epoch), self.offsets, self._consumed,
                                consumer, consumers, drop_last=self.drop_last)

    def __iter__(self) -> Iterator[Record]:
        epoch = self._next_pass()
        me, consumers = self.consumer()
        records = self._read(self.assignment(epoch, me, consumers))
        if self.shuffle and self.buffer > 0:
            records = shuffled(records, self.buffer,
                               rng(self.seed, epoch, "record-shuffle", me, consumers))
        out = pool.batched(records, self.batch_size, self.drop_partial, collate) if (
            self.batch_size) else records
        in_main = get_worker_info() is None  # without loader workers, yielded = consumed
        for x in out:
            if in_main:
                self.mark_consumed(x["position"], x["pad"])
            yield x
        self._finished = in_main

    def _read(self, takes: Sequence[distribute.Take]) -> Iterator[Record]:
        """The records of ``takes`` in order, each shard read with one GET. A thread drains
        the bodies, one after the other: records are decoded as soon as their bytes
        arrive, and the next shard comes in while this one is decoded."""
        ex = ThreadPoolExecutor(1, thread_name_prefix="cloudmic-shard")
        this: ObjectBody | None = None
        ahead: ObjectBody | None = None
        try:
            for k, take in enumerate(takes):
                this = ahead or self._fetch(ex, take.block)
                ahead = self._fetch(ex, takes[k + 1].block) if k + 1 < len(takes) else None
                try:
                    with this:
                        yield from self._take(take, this)
                except Exception as exc:
                    self._damaged(take.block, exc)  # raises, or warns and skips it
        finally:  # also when stopped early: a closed body's drain stops at its next piece
            for body in (this, ahead):
                if body is not None:
                    body.close()
            ex.shutdown(wait=False, cancel_futures=True)

    def _damaged(self, block: int, exc: Exception) -> None:
        """A shard that cannot be read: the store not answering raises as it is; a missing
        shard, a short one and damaged bytes raise, or with ``on_error="skip"`` warn and
        are skipped."""
        if isinstance(exc, FileNotFoundError):
            missing = StoreNotFoundError(f"{self._url(block)}: shard listed in index.json "
                                         "is missing; run cloudmic verify on the dataset")
            missing.__cause__, exc = exc, missing
        if is_transient(exc) or (isinstance(exc, CloudmicError) and self.on_error == "raise"):
            raise exc
        unreadable(self._url(block), exc, self.on_error, "shards")

    def _url(self, block: int) -> str:
        return posixpath.join(self.root, self.paths[block])

    def _fetch(self, ex: ThreadPoolExecutor, block: int) -> ObjectBody:
        """Shard ``block``, readable as its bytes arrive: its whole body in one GET (no
        HEAD, no ranged parts), drained on ``ex``'s thread as fast as it comes, so no
        streamed body sits idle behind a slow training loop until a timeout cuts it."""
        loc = Location(self._url(block), self.storage_options)
        body = loc.open_body()
        ex.submit(loc.drain_into, body, self._store(), self.paths[block])
        return body

    def _store(self) -> Any:
        """This process's obstore store at the ``.wds`` folder (None on a local disk): one
        client for all its GETs, so they share its connections. Made where it is used:
        never pickled, and a forked process makes its own."""
        pid, store = self.__dict__.get("_objects", (None, None))
        if pid != os.getpid():
            root = Location(self.root, self.storage_options)
            store = None if root.is_local else root.object_store()
            self._objects = (os.getpid(), store)
        return store

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_objects", None)  # a live client: each process makes its own
        return state

    def _take(self, take: distribute.Take, stream: IO[bytes]) -> Iterator[Record]:
        """``take``'s records from its shard: each kept row decoded once, its padding
        repeats (flagged ``pad``) right after it; stops after the last row needed."""
        start, n = int(self.offsets[take.block]), int(np.diff(self.offsets)[take.block])
        keep = np.bincount(take.rows[~take.pad], minlength=n)
        pads = np.bincount(take.rows[take.pad], minlength=n)
        last, seen = int(take.rows.max(initial=-1)), 0
        url = self._url(take.block)
        for i, sample in enumerate(wds_tar.records(stream, url)):
            if i > last:
                break
            seen = i + 1
            if keep[i] or pads[i]:
                rec = decode_record(sample)
                rec["position"] = start + i
                yield from _copies(rec, int(keep[i]), int(pads[i]))
        if seen <= last:
            raise StoreError(f"{url}: holds {seen} records, index.json lists {n}; "
                             "run cloudmic verify on the dataset")

def _copies(rec: Record, kept: int, pads: int) -> Iterator[Record]:
    """The record ``kept`` times, then ``pads`` flagged repeats with arrays of their own
    (a loop that edits a batch in place must not change another item)."""
    yield {**rec, "pad": kept == 0}
    for k in range(1, kept + pads):
        yield {**{f: v.copy() if isinstance(v, np.ndarray) else v for f, v in rec.items()},
               "pad": k >= kept}


def shuffled(items: Iterator[Record], size: int, r: np.random.Generator) -> Iterator[Record]:
    """Items drawn at random from a buffer of ``size``, filled first (webdataset's
    ``shuffle(size, initial=size)``); the order is a pure function of ``r``."""
    buf: list[Record] = []
    for x in items:
        buf.append(x)
        if len(buf) >= size:
            k = int(r.integers(len(buf)))
            buf[k], buf[-1] = buf[-1], buf[k]
            yield buf.pop()
    r.shuffle(buf)
    yield from buf


def collate(items: Sequence[Record]) -> Record:
    """One batch, as ``pool.collate`` makes them: a stacked array per ``*.npy`` field,
    arrays of the per-record numbers (``position``, ``pad``, ``cls``), lists of the rest
    (``__key__``, ``json``)."""
    out: Record = {}
    for name, first in items[0].items():
        values = [x[name] for x in items]
        if isinstance(first, np.ndarray):
            if len({v.shape for v in values}) > 1:
                raise ValueError(f"field {name!r} has records of different shapes "
                                 f"{sorted({v.shape for v in values})}: they cannot be "
                                 "stacked into a batch; iterate records (batch_size=None)")
            out[name] = np.stack(values)
        elif isinstance(first, bool | int | float | np.number | np.bool_):
            out[name] = np.array(values)
        else:
            out[name] = values
    return out


def shards(url: str, split: str, *, shuffle: bool = False, seed: int = 0, epoch: int = 0,
           buffer: int = 0, batch_size: int | None = None, drop_last: bool = False,
           rank: int | None = None, world_size: int | None = None,
           version: str | None = None, on_error: str = "raise",
           storage_options: dict[str, Any] | None = None) -> ShardStream:
    """The records of ``split``'s WebDataset shards, ``*.npy`` decoded to numpy (never
    unpickled), ``json`` parsed; every record also has ``position`` (its place in the
    split) and ``pad``. ``len()`` is the split's exact record count. A ``torch``
    ``IterableDataset`` when torch is installed; it pickles to DataLoader workers.

    Distribution as in :class:`cloudmic.PatchStream`: ranks (``torch.distributed``, else
    ``RANK``/``WORLD_SIZE``; ``rank=``/``world_size=`` override) and DataLoader workers take
    disjoint contiguous runs of the epoch that cover it exactly once, and every one gets the
    same number of records: short runs are padded by repeating records (``pad`` True, never
    counted as consumed) or, with ``drop_last``, the remainder is left out. Use
    :meth:`ShardStream.loader` (or call ``mark_consumed``) so that ``state_dict()`` is exact;
    ``load_state_dict()`` resumes on any number of ranks and workers.

    ``epoch`` is the first epoch; each further pass is the next one, or call ``set_epoch``.
    With ``shuffle`` the shard order is a permutation of ``(seed, epoch)`` and, with
    ``buffer`` > 0, records are shuffled in a buffer of that many. ``batch_size`` makes the
    stream yield batches: one stacked array per ``*.npy`` field, lists of keys and json.

    The dataset's current version is resolved once, here (``version=`` pins another): a
    republish never changes what the stream reads, and ``state_dict()`` records the version.

    ``on_error`` as in :class:`cloudmic.PatchStream`: a shard whose bytes are damaged raises
    a ``StoreError`` naming it (``"raise"``), or is skipped from the damage on with a
    warning (``"skip"``); a store that does not answer always raises.
    """
    return ShardStream(url, split, shuffle=shuffle, seed=seed, epoch=epoch, buffer=buffer,
                       batch_size=batch_size, drop_last=drop_last, rank=rank,
                       world_size=world_size, version=version, on_error=on_error,
                       storage_options=storage_options)
