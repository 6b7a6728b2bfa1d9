"""Block reading: the only part of the stream that touches the store.

A block is read whole (one shard per variable: one GET each, decoded by ``zarrs`` off the
GIL), optionally through the node-local cache of decoded blocks, with transient store
errors retried and damaged data either raised or skipped. The items a consumer takes from
the block are then cut out at once into one contiguous array per variable (``Cut``), so
what travels on to the shuffle pool, and between processes, is a few arrays per block,
never a dict per patch.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from cloudmic.client.stream.distribute import Take
from cloudmic.client.stream.plan import Block, Blocks, GroupPlan
from cloudmic.client.stream.sampling import Sampler
from cloudmic.errors import StoreError
from cloudmic.storage.location import Location

log = logging.getLogger(__name__)

# What a store that is briefly down or overloaded says, through obstore, zarrs or s3fs
_TRANSIENT = re.compile(r"error sending request|connection|timed? ?out|service unavailable|"
                        r"slow ?down|broken pipe|reset by peer|status(?: code)?:? 5\d\d", re.I)


def unreadable(where: str, exc: Exception, on_error: str, what: str) -> None:
    """Damaged stored bytes at ``where`` (PatchStream's blocks, shards' tars): with
    ``on_error="skip"`` a warning and the caller skips them, else a StoreError with the fix."""
    why = f"{type(exc).__name__}: {str(exc)[:200]}"
    if on_error == "skip":
        warnings.warn(f"{where}: skipped, unreadable ({why}); run cloudmic verify on the "
                      "dataset", RuntimeWarning, stacklevel=3)
        return
    raise StoreError(f"{where}: unreadable ({why}). The stored bytes are damaged: run "
                     "cloudmic verify on the dataset and ingest it again, or pass "
                     f"on_error='skip' to skip such {what} with a warning") from exc


def is_transient(exc: BaseException) -> bool:
    """A read error worth retrying (the store is unreachable or overloaded), as opposed to
    bad data (a checksum or decode error), which fails the same way every time."""
    return isinstance(exc, ConnectionError | TimeoutError) or bool(_TRANSIENT.search(str(exc)))


@dataclass(slots=True)
class Cut:
    """The items one consumer takes from one block, one row each."""

    group: str
    arrays: dict[str, np.ndarray]  # variable -> (rows, *patch shape)
    position: np.ndarray  # int64: the item's fixed place in the epoch
    pad: np.ndarray  # bool: a repeat that evens out the shares (never marked consumed)
    index: np.ndarray  # int64: the sample's index in its group
    origin: np.ndarray  # int64 (rows, patch dims): the window's corner, reference pixels
    dims: tuple[str, ...]  # the patch dims, in origin's order
    keys: list[str]
    coords: dict[str, np.ndarray]  # per-sample coordinates asked for

    def __len__(self) -> int:
        return len(self.position)


@dataclass(frozen=True)
class ReadSpec:
    """Everything a reader needs; picklable (goes to workers and dask) and as small for a
    million samples as for a thousand: the blocks and their item offsets are derived from
    the groups, never pickled."""

    url: str
    storage_options: dict[str, Any]
    groups: tuple[GroupPlan, ...]
    per_sample: tuple[int, ...]
    patch: tuple[int, ...]
    dims: tuple[str, ...]
    coords: tuple[str, ...]
    codec_pipeline: str
    cache_dir: str | None
    cache_bytes: int
    on_error: str
    retry_seconds: float
    blocks: Blocks = field(init=False, repr=False, compare=False)
    offsets: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        blocks = Blocks(self.groups, self.per_sample)
        object.__setattr__(self, "blocks", blocks)
        object.__setattr__(self, "offsets", blocks.offsets)

    def __getstate__(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.init}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            object.__setattr__(self, k, v)
        self.__post_init__()


class BlockReader:
    """Reads and cuts blocks for one process; opens the store lazily, on first use, in the
    process (and thread pool) that reads: nothing opened is ever inherited by a fork."""

    def __init__(self, spec: ReadSpec, sampler: Sampler) -> None:
        self.spec, self.sampler = spec, sampler
        self._groups: dict[int, Any] = {}
        self._lock = threading.Lock()
        self._store: Any = None
        self._block_cache: Any = None  # one per process: it counts the bytes it wrote

    def __getstate__(self) -> dict[str, Any]:  # opened handles stay in their process
        return {"spec": self.spec, "sampler": self.sampler}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["spec"], state["sampler"])  # type: ignore[misc]

    # ---- opening ----
    def _group(self, gi: int) -> Any:
        with self._lock:
            if gi not in self._groups:
                self._groups[gi] = self._retrying(self._open_group, "open the store", gi)
            return self._groups[gi]

    def _open_group(self, gi: int) -> Any:
        import zarr

        blosc_thread_lock()
        if self._store is None:
            self._store = Location(self.spec.url, self.spec.storage_options).zarr_store(
                read_only=True)
        g = self.spec.groups[gi]
        with codec_pipeline(ZARRS if self.spec.codec_pipeline == "zarrs" else DEFAULT), \
                warnings.catch_warnings():  # the pipeline binds at open
            # zarrs rebuilds the obstore store on its side; it says so once per array
            warnings.filterwarnings("ignore", message="Successfully reconstructed a store")
            zg = zarr.open_group(self._store, mode="r", path=g.path, zarr_format=3)
            arrays = [zg[p.path] for p in g.plans]
            stems = zg["sample"] if g.has_stems else None
            coords = {c: zg[c] for c in self.spec.coords}
        return arrays, stems, coords

    # ---- reading ----
    def fetch(self, bi: int) -> list[np.ndarray]:
        """The block's decoded arrays, each with a leading sample axis."""
        block = self.spec.blocks[bi]
        g = self.spec.groups[block.group]
        arrays = self._group(block.group)[0]
        cache = self._cache()
        out = []
        for plan, a in zip(g.plans, arrays, strict=True):
            key = f"{self.spec.url}|{g.path}/{plan.path}|{block.start}:{block.stop}"
            hit = cache.get(key) if cache else None
            if hit is None:
                hit = read_whole_shards(a, block.start, block.stop) if g.stacked else (
                    read_whole_shards(a, 0, a.shape[0])[None] if a.ndim else a[...][None])
                if cache:
                    cache.put(key, hit)
            out.append(hit)
        return out

    def _cache(self) -> Any:
        if self.spec.cache_dir is None:
            return None
        if self._block_cache is None:
            from cloudmic.client.cache import BlockCache

            self._block_cache = BlockCache(self.spec.cache_dir, self.spec.cache_bytes)
        return self._block_cache

    def read(self, take: Take, epoch: int) -> Cut | None:
        """Read ``take``'s block and cut its rows; None when a damaged block is skipped."""
        block = self.spec.blocks[take.block]
        g = self.spec.groups[block.group]
        where = (f"{self.spec.url}: group {g.path!r}, samples {block.start}..{block.stop - 1} "
                 f"({', '.join(p.name for p in g.plans)})")
        try:
            data = self._retrying(self.fetch, f"read {where}", take.block)
            labels = self._retrying(self._labels, f"read {where}", block)
        except Exception as exc:
            if is_transient(exc):
                raise StoreError(f"{where}: the store did not answer for "
                                 f"{self.spec.retry_seconds:.0f} s "
                                 f"({str(exc).splitlines()[0][:200]}); check that it runs, "
                                 "or raise retry_seconds") from exc
            unreadable(where, exc, self.spec.on_error, "blocks")  # raises unless skipping
            return None
        return self.cut(take, epoch, data, *labels)

    def _labels(self, block: Block) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
        """The block's sample names and per-sample coordinates (1-D, one chunk per block)."""
        _, stems, coords = self._group(block.group)
        sl = slice(block.start, block.stop)
        return (stems[sl] if stems is not None else None,
                {c: a[sl] for c, a in coords.items()})

    def cut(self, take: Take, epoch: int, data: list[np.ndarray], stems: np.ndarray | None,
            coords: dict[str, np.ndarray]) -> Cut:
        """Every row of ``take``, cut from the block's decoded arrays."""
        block = self.spec.blocks[take.block]
        g = self.spec.groups[block.group]
        pps = self.spec.per_sample[block.group]
        j, p = take.rows // pps, take.rows % pps
        origin = self.sampler.origins(epoch, block)[j, p]
        arrays = {plan.name: plan.cut(arr, j, origin, self.spec.patch, g.stacked)
                  for plan, arr in zip(g.plans, data, strict=True)}
        index = block.start + j
        keys = [_key(g, stems, block.start, int(jk), int(pk), pps)
                for jk, pk in zip(j, p, strict=True)]
        return Cut(g.path, arrays, self.spec.offsets[take.block] + take.rows, take.pad,
                   index.astype(np.int64), origin, self.spec.dims, keys,
                   {c: v[j] for c, v in coords.items()})

    # ---- faults ----
    def _retrying(self, fn: Any, what: str, *args: Any) -> Any:
        """``fn(*args)``, retried with backoff while the store is unreachable, for at most
        ``retry_seconds`` (an S3 server restart mid-epoch costs time, never samples)."""
        deadline, delay = time.monotonic() + self.spec.retry_seconds, 0.25
        while True:
            try:
                return fn(*args)
            except Exception as exc:
                if not is_transient(exc) or time.monotonic() + delay > deadline:
                    raise
                log.warning("%s: cannot %s (%s); retrying in %.1f s", self.spec.url, what,
                            str(exc).splitlines()[0][:200], delay)
                time.sleep(delay)
                delay = min(delay * 2, 4.0)


ZARRS = "zarrs.ZarrsCodecPipeline"
DEFAULT = "zarr.core.codec_pipeline.BatchedCodecPipeline"
_CONFIG = threading.Lock()


@contextmanager
def codec_pipeline(path: str) -> Iterator[None]:
    """Open arrays with this codec pipeline (an array binds it when opened). zarr's config
    is process-global and its ``set`` restores what it saw on entry: two threads setting it
    at once can leave it changed for good (and an ingest in the same process would then
    write through zarrs, whose inner-chunk order varies run to run). So every change here
    is serialized, and lasts only while the arrays open."""
    import zarr

    with _CONFIG, zarr.config.set({"codec_pipeline.path": path}):
        yield


_BLOSC = threading.Lock()  # serializes blosc_thread_lock


def blosc_thread_lock() -> None:
    """Give numcodecs' Blosc a thread lock before its first use in this process.

    Blosc guards its global state with a ``multiprocessing.Lock`` made on first use
    (numcodecs#230), a named semaphore that only a clean exit unlinks. Torch terminates
    persistent DataLoader workers when the training process exits, so every script that
    ended with its loader alive printed "resource_tracker: There appear to be 2 leaked
    semaphore objects" (one per worker: zarr's own pipeline decodes the edge shards, see
    read_whole_shards). Blosc's state is per process, so a thread lock guards it as well."""
    try:
        from numcodecs import blosc
    except ImportError:  # pragma: no cover - zarr requires numcodecs
        return
    with _BLOSC:  # two readers opening at once must not hand Blosc two different locks
        if getattr(blosc, "_MUTEX_IS_INIT", True) is False:
            blosc._MUTEX, blosc._MUTEX_IS_INIT = threading.Lock(), True


def read_whole_shards(a: Any, start: int, stop: int) -> np.ndarray:
    """``a[start:stop]`` with one GET per shard object.

    zarrs reads a selection covering whole shards with one ranged GET per shard, but a
    shard cut by the array's edge (the last block of a split, or a frame smaller than the
    shard) counts as a partial read: an index GET and then one GET per inner chunk, while
    holding the GIL (21 requests instead of 5 for a 4-sample edge block). Such shards are
    fetched whole and decoded in memory instead.
    """
    shard = a.shards
    if shard is None or (start % shard[0] == 0 and stop % shard[0] == 0 and all(
            n % s == 0 for n, s in zip(a.shape[1:], shard[1:], strict=True))):
        return a[start:stop]  # unsharded chunks are read whole anyway
    import itertools

    import zarr
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync
    from zarr.storage import MemoryStore

    proto = default_buffer_prototype()
    objects = dict(a.metadata.to_buffer_dict(proto))
    sp = a.store_path
    grid = [range(start // shard[0], -(-stop // shard[0]))] + [
        range(-(-n // s)) for n, s in zip(a.shape[1:], shard[1:], strict=True)]
    for coords in itertools.product(*grid):
        key = a.metadata.encode_chunk_key(coords)
        buf = sync(sp.store.get(f"{sp.path}/{key}" if sp.path else key, prototype=proto))
        if buf is not None:  # a missing object holds only the fill value
            objects[key] = buf
    with codec_pipeline(DEFAULT):  # in memory: zarr's own pipeline
        arr = zarr.open_array(MemoryStore(objects), mode="r")
    return arr[start:stop]


def _key(g: GroupPlan, stems: np.ndarray | None, start: int, j: int, p: int, pps: int) -> str:
    """``group/stem`` (or ``group/index``, or the group of a one-sample group), with
    ``#patch`` when a sample gives several items."""
    base = f"{g.path}/{stems[j]}" if stems is not None else (
        f"{g.path}/{start + j}" if g.stacked else g.path)
    return base if pps == 1 else f"{base}#{p}"
