"""Sharded region writes encoded by ``zarrs``, laid out byte for byte as zarr-python lays them.

Why not plain ``zarrs``: its sharding codec (zarrs 0.23, inside the ``zarrs`` 0.2.3 wheel)
encodes the inner chunks of a shard on several threads and appends each one at an atomic
offset the moment it is encoded (``SubchunkWriteOrder::Random``, its default, which
zarrs-python does not let us change). The order of the chunks inside a shard object, and so
its shard index and its bytes, follow thread completion and vary run to run, while re-runs
of an ingest must publish byte-identical stores.

What this does instead: ``zarrs`` encodes the region into a scratch ``LocalStore`` that holds
the same array; each shard object it wrote is then put into canonical order (inner chunks in
Morton order, a fresh index with its checksum: what zarr-python's own sharding codec writes)
and stored at its key in the destination, and a shard it did not write (all fill value) is
deleted there, as zarr's pipeline does. The canonical form is a pure function of the encoded
chunks, so it does not depend on the number of threads either. The scratch round-trip costs
one local write and read of the compressed bytes; zarrs never talks to the destination
store (nor sees its credentials).

Only whole, shard-aligned regions of numeric arrays whose sharding codec we can rewrite take
this path; anything else is written by zarr's own pipeline, which is deterministic already.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np
import zarr

log = logging.getLogger(__name__)

MISSING = np.uint64(2**64 - 1)  # offset and length of an inner chunk the shard leaves out
_CRC_BYTES = 4
_PUT_CONCURRENCY = 8  # shard objects in flight to the destination store at once

Region = tuple[slice, ...]


def zarrs_available() -> bool:
    try:
        import zarrs  # noqa: F401
    except ImportError:
        return False
    return True


class ShardLayout:
    """What of an array's sharding codec the rewrite needs (from its metadata)."""

    __slots__ = ("chunks_per_shard", "checksum", "endian", "index_at_start", "shard_shape")

    def __init__(self, shard_shape: tuple[int, ...], chunks_per_shard: tuple[int, ...],
                 index_at_start: bool, endian: str, checksum: bool) -> None:
        self.shard_shape = shard_shape
        self.chunks_per_shard = chunks_per_shard
        self.index_at_start = index_at_start
        self.endian = endian  # "<" or ">": the byte order of the index's uint64s
        self.checksum = checksum  # a crc32c of the index follows it

    @property
    def index_nbytes(self) -> int:
        return 16 * int(np.prod(self.chunks_per_shard)) + (_CRC_BYTES if self.checksum else 0)

    @classmethod
    def of(cls, arr: zarr.Array) -> ShardLayout | None:
        """The layout of ``arr``'s shards, or None when the fast path cannot rewrite them:
        no sharding, sharding wrapped in other codecs, or index codecs other than
        ``bytes`` (+ ``crc32c``)."""
        from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec
        from zarr.codecs.sharding import ShardingCodecIndexLocation

        meta = arr.metadata
        codecs = getattr(meta, "codecs", ())
        if arr.shards is None or len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
            return None
        sharding = codecs[0]
        index_codecs = list(sharding.index_codecs)
        checksum = bool(index_codecs) and isinstance(index_codecs[-1], Crc32cCodec)
        if checksum:
            index_codecs.pop()
        if len(index_codecs) != 1 or not isinstance(index_codecs[0], BytesCodec):
            return None
        endian = ">" if getattr(index_codecs[0].endian, "value", "little") == "big" else "<"
        shard = tuple(int(s) for s in arr.shards)
        inner = tuple(int(c) for c in sharding.chunk_shape)
        if any(s % c for s, c in zip(shard, inner, strict=True)):
            return None
        return cls(shard, tuple(s // c for s, c in zip(shard, inner, strict=True)),
                   sharding.index_location == ShardingCodecIndexLocation.start, endian,
                   checksum)


@functools.lru_cache(maxsize=64)
def _morton_order(chunks_per_shard: tuple[int, ...]) -> np.ndarray:
    """Flat (C-order) index of each inner chunk, in the order zarr-python writes them."""
    from zarr.core.indexing import morton_order_iter

    coords = np.array(list(morton_order_iter(chunks_per_shard)), dtype=np.intp)
    return np.ravel_multi_index(coords.T, chunks_per_shard)


def _crc32c(data: bytes | memoryview | np.ndarray) -> bytes:
    import google_crc32c  # zarr's own crc32c codec uses it

    return np.uint32(google_crc32c.value(bytes(data))).tobytes()


def canonical_shard(data: bytes, layout: ShardLayout, where: str = "shard") -> bytes | None:
    """``data`` (one encoded shard) with its inner chunks in Morton order and a fresh index:
    the bytes zarr-python writes for the same chunks. None when the shard holds no chunk.

    Raises ``ValueError`` naming ``where`` when the index is corrupt (bad checksum, a chunk
    outside the object)."""
    n_index = layout.index_nbytes
    if len(data) < n_index:
        raise ValueError(f"{where}: {len(data)} bytes cannot hold a {n_index}-byte shard index")
    raw = data[:n_index] if layout.index_at_start else data[len(data) - n_index:]
    body = raw[:-_CRC_BYTES] if layout.checksum else raw
    if layout.checksum and _crc32c(body) != raw[-_CRC_BYTES:]:
        raise ValueError(f"{where}: the shard index fails its crc32c checksum")
    index = np.frombuffer(body, dtype=f"{layout.endian}u8").reshape(-1, 2).astype(np.uint64)
    present = ~((index[:, 0] == MISSING) & (index[:, 1] == MISSING))
    lo, hi = (n_index, len(data)) if layout.index_at_start else (0, len(data) - n_index)
    starts, lengths = index[present, 0], index[present, 1]
    ends_room = np.uint64(hi) - np.minimum(starts, np.uint64(hi))  # no uint64 wrap-around
    if ((starts < lo) | (starts > hi) | (lengths > ends_room)).any():
        raise ValueError(f"{where}: the shard index points outside the chunk bytes of the "
                         f"{len(data)}-byte object")
    order = [int(k) for k in _morton_order(layout.chunks_per_shard)
             if present[k] and index[k, 1] > 0]  # zarr-python leaves empty chunks out too
    if not order:
        return None
    new = np.full_like(index, MISSING)
    parts: list[memoryview] = []
    offset = n_index if layout.index_at_start else 0
    view = memoryview(data)
    for k in order:
        start, length = int(index[k, 0]), int(index[k, 1])
        parts.append(view[start:start + length])
        new[k] = (offset, length)
        offset += length
    if np.array_equal(new, index) and offset + (0 if layout.index_at_start else n_index) \
            == len(data):
        return data  # already canonical (one inner chunk, or the threads finished in order)
    body = new.astype(f"{layout.endian}u8").tobytes()
    encoded_index = body + (_crc32c(body) if layout.checksum else b"")
    return b"".join([encoded_index, *parts] if layout.index_at_start
                    else [*parts, encoded_index])


def shard_keys(arr: zarr.Array, region: Region) -> list[str]:
    """The keys of the shard objects a region touches, in C order of the shard grid."""
    import itertools

    grid = [range(sl.start // s, -(-sl.stop // s)) for sl, s in zip(region, arr.shards,
                                                                    strict=True)]
    return [arr.metadata.encode_chunk_key(c) for c in itertools.product(*grid)]


def _normalise(arr: zarr.Array, region: Any) -> Region:
    if region is Ellipsis:
        region = ()
    region = tuple(region) if isinstance(region, tuple) else (region,)
    region = region + (slice(None),) * (arr.ndim - len(region))
    out = []
    for sl, n in zip(region, arr.shape, strict=True):
        if not isinstance(sl, slice) or sl.step not in (None, 1):
            raise TypeError(f"{arr.path}: a shard write takes contiguous slices, not {sl!r}")
        start, stop, _ = sl.indices(n)
        out.append(slice(start, stop))
    return tuple(out)


def covers_whole_shards(arr: zarr.Array, region: Region) -> bool:
    """Every shard the region touches is covered entirely (up to the array's edge)."""
    return all(sl.start % s == 0 and (sl.stop % s == 0 or sl.stop == n)
               for sl, s, n in zip(region, arr.shards, arr.shape, strict=True))


def fast_path(arr: zarr.Array) -> ShardLayout | None:
    """The shard layout when ``arr`` can be written through zarrs here, else None."""
    if not zarrs_available() or arr.ndim == 0 or arr.dtype.kind not in "biuf":
        return None
    return ShardLayout.of(arr)


def write_region(arr: zarr.Array, region: Any, block: np.ndarray) -> None:
    """``arr[region] = block``: encoded by zarrs, stored in zarr-python's byte layout.

    The region must cover whole shards (a unit owns its shards; a shard written in part
    would need the rest of it, and two writers of one shard lose data). Arrays or regions
    the fast path cannot take are written by zarr's own pipeline."""
    layout = fast_path(arr)
    norm = _normalise(arr, region)
    if layout is None or not covers_whole_shards(arr, norm):
        arr[region] = block
        return
    block = np.asarray(block, dtype=arr.dtype)
    with tempfile.TemporaryDirectory(prefix="cloudmic-shards-") as scratch:
        _scratch_array(arr, scratch)[norm] = block
        keys = shard_keys(arr, norm)
        _store_canonical(arr, layout, scratch, keys)


def _scratch_array(arr: zarr.Array, folder: str) -> zarr.Array:
    """``arr``'s metadata over an empty local folder, with the zarrs codec pipeline bound.

    The pipeline is bound on this array alone: zarr's ``codec_pipeline.path`` setting is
    process-global, and flipping it would race with readers opening arrays on other
    threads (see ``cloudmic.client.stream.reader.codec_pipeline``)."""
    from zarr.core.array import Array, AsyncArray
    from zarr.storage import LocalStore, StorePath
    from zarrs import ZarrsCodecPipeline

    store = LocalStore(folder)
    async_arr = AsyncArray(metadata=arr.metadata, store_path=StorePath(store),
                           config=arr.config)
    pipeline = ZarrsCodecPipeline.from_array_metadata_and_store(arr.metadata, store)
    if pipeline.impl is None:  # zarrs refused the metadata: it warned; zarr encodes it
        return Array(async_arr)
    object.__setattr__(async_arr, "codec_pipeline", pipeline)  # a frozen dataclass
    return Array(async_arr)


def _store_canonical(arr: zarr.Array, layout: ShardLayout, scratch: str,
                     keys: Sequence[str]) -> None:
    """Put each scratch shard, in canonical order, at its key in ``arr``'s store."""
    from pathlib import Path

    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    proto = default_buffer_prototype()
    dest = arr.store_path

    async def put(key: str) -> None:
        path = Path(scratch, *key.split("/"))
        target = dest / key
        data = path.read_bytes() if path.exists() else None
        shard = None if data is None else canonical_shard(data, layout, f"{arr.path}/{key}")
        if shard is None:
            await target.delete()  # all fill value: no object, as zarr's pipeline leaves
        else:
            await target.set(proto.buffer.from_bytes(shard))

    async def put_all() -> None:
        gate = asyncio.Semaphore(_PUT_CONCURRENCY)

        async def one(key: str) -> None:
            async with gate:
                await put(key)

        await asyncio.gather(*(one(k) for k in keys))

    sync(put_all())
