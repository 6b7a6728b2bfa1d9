"""Sharded writes through zarrs: the same bytes every run, as zarr-python lays them out, and
readable by zarr's own pipeline and by xarray."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, BytesCodec, ShardingCodec

from cloudmic.layout import shard_writer as sw
from cloudmic.layout.shard_writer import ShardLayout, canonical_shard, write_region

pytest.importorskip("zarrs")

BLOSC = (BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"),)
# (shape, inner chunk, shard): a DeepCAD-like movie whose shards hold a 4x2x2 grid of inner
# chunks (Morton order differs from C order there), a BioSR-like stack with an edge shard,
# and a volume whose last shard along every axis is cut by the array's edge
CASES = {
    "movie": ((128, 256, 256), (16, 128, 128), (64, 256, 256)),
    "stack": ((40, 64, 64), (1, 64, 64), (16, 64, 64)),
    "edges": ((20, 90, 70), (4, 32, 32), (8, 64, 64)),
}


def _data(shape, dtype="uint16", seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = rng.poisson(300, shape).astype(dtype)
    data[: shape[0] // 4, : shape[1] // 2] = 0  # some inner chunks hold only the fill value
    return data


def _create(folder: Path, shape, chunks, shards, dtype="uint16", **kw) -> zarr.Array:
    return zarr.create_array(zarr.storage.LocalStore(folder), shape=shape, dtype=dtype,
                             chunks=chunks, shards=shards, compressors=BLOSC, fill_value=0,
                             dimension_names=[f"d{k}" for k in range(len(shape))], **kw)


def _objects(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _write_units(arr: zarr.Array, data: np.ndarray, step: int) -> None:
    """One region per shard row along the first axis, as the ingest's units write them."""
    for start in range(0, data.shape[0], step):
        write_region(arr, slice(start, start + step), data[start:start + step])


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_bytes_as_zarr_python_whatever_the_threads(case, tmp_path):
    shape, chunks, shards = CASES[case]
    data = _data(shape)
    ref = _create(tmp_path / "ref", shape, chunks, shards)
    ref[...] = data  # zarr's own pipeline: inner chunks in Morton order
    want = _objects(tmp_path / "ref")
    assert sum("/c/" in k or k.startswith("c/") for k in want) > 1
    for threads in (1, 2, 8):
        folder = tmp_path / f"zarrs-{threads}"
        with zarr.config.set({"threading.max_workers": threads}):
            _write_units(_create(folder, shape, chunks, shards), data, shards[0])
        assert _objects(folder) == want, f"{threads} threads"


def test_the_fast_path_encodes_with_zarrs(tmp_path):
    from zarrs import ZarrsCodecPipeline

    shape, chunks, shards = CASES["movie"]
    arr = _create(tmp_path / "a", shape, chunks, shards)
    assert sw.fast_path(arr) is not None
    scratch = sw._scratch_array(arr, str(tmp_path / "scratch"))
    assert isinstance(scratch.async_array.codec_pipeline, ZarrsCodecPipeline)
    assert scratch.async_array.codec_pipeline.impl is not None
    # and it leaves zarr's process-wide choice alone
    assert zarr.config.get("codec_pipeline.path").endswith("BatchedCodecPipeline")


def test_plain_zarr_and_xarray_read_back_exactly(tmp_path):
    import xarray as xr

    shape, chunks, shards = CASES["edges"]
    data = _data(shape, "float32", seed=3)
    arr = _create(tmp_path / "s.zarr", shape, chunks, shards, dtype="float32")
    _write_units(arr, data, shards[0])
    back = zarr.open_array(zarr.storage.LocalStore(tmp_path / "s.zarr"), mode="r")
    assert back[...].dtype == np.float32 and np.array_equal(back[...], data)
    # a shard read in part (one inner chunk at a time) through the index
    assert np.array_equal(back[5:7, 33:40, 60:70], data[5:7, 33:40, 60:70])
    g = zarr.open_group(zarr.storage.LocalStore(tmp_path / "g"), mode="w")
    a = g.create_array("v", shape=shape, dtype="float32", chunks=chunks, shards=shards,
                       compressors=BLOSC, fill_value=0, dimension_names=["z", "y", "x"])
    _write_units(a, data, shards[0])
    zarr.consolidate_metadata(zarr.storage.LocalStore(tmp_path / "g"))
    ds = xr.open_zarr(tmp_path / "g")
    assert np.array_equal(ds["v"].values, data)


def test_a_shard_of_fill_values_leaves_no_object_and_removes_a_stale_one(tmp_path):
    shape, chunks, shards = CASES["stack"]
    arr = _create(tmp_path / "a", shape, chunks, shards)
    write_region(arr, slice(0, 16), _data((16, 64, 64), seed=1) + 1)
    assert (tmp_path / "a" / "c" / "0" / "0" / "0").is_file()
    write_region(arr, slice(0, 16), np.zeros((16, 64, 64), "uint16"))  # a re-run's write
    assert not (tmp_path / "a" / "c" / "0" / "0" / "0").exists()
    assert not arr[0:16].any()


def test_what_the_fast_path_cannot_take_goes_through_zarr(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(sw, "_store_canonical", lambda *a: calls.append(a))
    store = zarr.storage.LocalStore(tmp_path / "g")
    g = zarr.open_group(store, mode="w")
    text = g.create_array("names", shape=(4,), dtype=str, chunks=(2,), shards=(4,))
    write_region(text, ..., np.array(["a", "bb", "", "d"]))
    plain = g.create_array("plain", shape=(8, 4), dtype="int32", chunks=(2, 4))
    write_region(plain, slice(0, 8), np.arange(32, dtype="int32").reshape(8, 4))
    sharded = g.create_array("part", shape=(16, 4), dtype="int32", chunks=(2, 4),
                             shards=(8, 4))
    write_region(sharded, slice(0, 4), np.ones((4, 4), "int32"))  # half a shard
    assert calls == []
    assert list(text[...]) == ["a", "bb", "", "d"]
    assert plain[7, 3] == 31 and sharded[:4].sum() == 16 and not sharded[4:].any()


# --- canonical_shard on shards built by hand -------------------------------------------------
def _shard(chunks: dict[int, bytes], n: int, order: list[int], *, start=False, endian="<",
           checksum=True) -> bytes:
    """An encoded shard of ``n`` inner chunks holding ``chunks``, laid out in ``order``."""
    index = np.full((n, 2), sw.MISSING, dtype=np.uint64)
    n_index = 16 * n + (4 if checksum else 0)
    offset, body = (n_index if start else 0), []
    for k in order:
        index[k] = (offset, len(chunks[k]))
        body.append(chunks[k])
        offset += len(chunks[k])
    raw = index.astype(f"{endian}u8").tobytes()
    raw += sw._crc32c(raw) if checksum else b""
    return b"".join([raw, *body] if start else [*body, raw])


@pytest.mark.parametrize("start", [False, True])
@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize("checksum", [True, False])
def test_canonical_shard_is_the_morton_layout_whatever_the_order(start, endian, checksum):
    grid = (4, 2, 2)  # Morton: 0,1,2,3 then 4.. differs from C order (0,1,2,3,4..)
    n = 16
    chunks = {k: bytes([k]) * (3 + k) for k in range(n) if k not in (5, 9)}
    layout = ShardLayout((4, 2, 2), grid, start, endian, checksum)
    morton = [k for k in sw._morton_order(grid).tolist() if k in chunks]
    want = _shard(chunks, n, morton, start=start, endian=endian, checksum=checksum)
    rng = np.random.default_rng(0)
    for _ in range(5):
        order = rng.permutation(sorted(chunks)).tolist()
        got = canonical_shard(_shard(chunks, n, order, start=start, endian=endian,
                                     checksum=checksum), layout)
        assert got == want
    assert sw._morton_order(grid).tolist() != list(range(n))


def test_canonical_shard_refuses_a_corrupt_index_and_drops_an_empty_shard():
    layout = ShardLayout((2,), (2,), False, "<", True)
    good = _shard({0: b"abc", 1: b"de"}, 2, [1, 0])
    with pytest.raises(ValueError, match="x/c/0: the shard index fails its crc32c"):
        canonical_shard(good[:-1] + bytes([good[-1] ^ 1]), layout, "x/c/0")
    bad = _shard({0: b"abc", 1: b"de"}, 2, [1, 0])[2:]  # chunk bytes cut: offsets run out
    with pytest.raises(ValueError, match="outside"):
        canonical_shard(bad, layout)
    assert canonical_shard(_shard({}, 2, []), layout) is None


def test_shard_layout_reads_the_array_metadata(tmp_path):
    arr = _create(tmp_path / "a", (32, 8), (4, 8), (16, 8))
    layout = ShardLayout.of(arr)
    assert layout is not None
    assert (layout.chunks_per_shard, layout.index_at_start, layout.checksum) == ((4, 1), False,
                                                                                 True)
    odd = zarr.create_array(zarr.storage.LocalStore(tmp_path / "b"), shape=(32,), dtype="u2",
                            chunks=(32,), fill_value=0, compressors=None,
                            serializer=ShardingCodec(chunk_shape=(4,),
                                                     index_codecs=[BytesCodec()],
                                                     index_location="start"))
    layout = ShardLayout.of(odd)
    assert layout is not None and layout.index_at_start and not layout.checksum
    data = np.arange(32, dtype="u2")
    write_region(odd, ..., data)
    assert np.array_equal(zarr.open_array(zarr.storage.LocalStore(tmp_path / "b"))[...], data)
