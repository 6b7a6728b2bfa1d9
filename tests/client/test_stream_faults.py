"""PatchStream faults: damaged shards (on_error raise or skip) and an S3 server that restarts
in the middle of an epoch (retries: no sample lost, none repeated)."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import cloudmic
from cloudmic.errors import StoreError
from cloudmic.ingest import ingest
from cloudmic.storage import seaweed

PATCH = {"y": 16, "x": 16}


@pytest.fixture(scope="module")
def local_root(biosr_sources, small_manifest, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults-root")
    ingest(str(small_manifest), biosr_sources["uint16"], str(root))
    return root


@pytest.fixture
def damaged(local_root, tmp_path) -> str:
    """A copy whose second wf shard has a flipped byte in its checksummed index."""
    shutil.copytree(local_root, tmp_path / "root", symlinks=True)  # keep the version links
    shard = tmp_path / "root" / "biosr.zarr" / "train" / "wf" / "c" / "1" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF
    shard.write_bytes(bytes(data))
    return str(tmp_path / "root" / "biosr.zarr")


def test_a_damaged_shard_raises_a_clear_error_by_default(damaged):
    stream = cloudmic.PatchStream(damaged, "train", ["wf"], PATCH)
    with pytest.raises(StoreError, match=r"group 'train', samples 8\.\.15 \(wf\): unreadable"
                       r".*cloudmic verify.*on_error='skip'"):
        list(stream)


def test_on_error_skip_warns_and_streams_the_rest(damaged):
    stream = cloudmic.PatchStream(damaged, "train", ["wf"], PATCH, on_error="skip")
    with pytest.warns(RuntimeWarning, match="samples 8..15.*skipped"):
        items = list(stream)
    real = [it["index"] for it in items if not it["pad"]]
    assert sorted(real) == [i for i in range(40) if not 8 <= i < 16]
    assert len(items) == 40  # the skipped block is made up with flagged repeats: DDP holds


def test_a_share_that_is_all_damaged_raises_instead_of_hanging_ddp(damaged):
    """Rank 1 of 5 holds exactly the damaged block: it has nothing to pad with, and a rank
    that yields fewer batches than the others would hang DDP, so it says so."""
    stream = cloudmic.PatchStream(damaged, "train", ["wf"], PATCH, on_error="skip",
                                  shuffle=False, rank=1, world_size=5)
    with pytest.warns(RuntimeWarning, match="skipped"), \
            pytest.raises(StoreError, match="every block of this consumer's share"):
        list(stream)
    ok = cloudmic.PatchStream(damaged, "train", ["wf"], PATCH, on_error="skip", shuffle=False,
                              rank=0, world_size=5)
    assert len(list(ok)) == 8


def test_unknown_on_error_policy(local_root):
    with pytest.raises(ValueError, match="on_error"):
        cloudmic.PatchStream(str(local_root / "biosr.zarr"), "train", ["wf"], PATCH,
                             on_error="ignore")


@pytest.mark.e2e
def test_s3_server_restart_mid_epoch_loses_no_sample(biosr_sources, small_manifest, tmp_path,
                                                     monkeypatch):
    """The store goes down after a few items and comes back 3 s later on the same port with
    the same keys: the epoch completes with every item exactly once."""
    data = tmp_path / "store"
    info = seaweed.up(data)
    try:
        for k, v in info.env().items():
            monkeypatch.setenv(k, v)
        ingest(str(small_manifest), biosr_sources["uint16"], "s3://restart")
        stream = cloudmic.PatchStream("s3://restart/biosr.zarr", "train", ["wf"], PATCH,
                                      buffer_blocks=1, prefetch=1, retry_seconds=90)
        keys, down, restarted = [], threading.Event(), threading.Event()

        def restart() -> None:
            seaweed.down(data)
            down.set()
            time.sleep(3)
            seaweed.up(data, port=info.s3_port)
            restarted.set()

        worker = threading.Thread(target=restart)
        for item in stream:
            keys.append(item["__key__"])
            if len(keys) == 5:  # one block of 8 in hand, the rest still to read
                worker.start()
                assert down.wait(60)  # the next reads hit a dead server and retry
        worker.join(60)
        assert restarted.is_set() and len(keys) == 40
        assert sorted(keys) == sorted(f"train/{i:08d}" for i in range(1, 41))
    finally:
        seaweed.down(data)


def test_node_local_cache_serves_later_epochs_within_its_byte_limit(local_root, tmp_path):
    shutil.copytree(local_root, tmp_path / "root", symlinks=True)  # keep the version links
    url = str(tmp_path / "root" / "biosr.zarr")
    cache = tmp_path / "cache"
    first = cloudmic.PatchStream(url, "train", ["wf", "gt"], PATCH, cache_dir=str(cache))
    one = {it["__key__"]: it["gt"] for it in first}
    cached = sum(p.stat().st_size for p in cache.glob("*.npy"))
    assert cached > 0
    shutil.rmtree(tmp_path / "root" / "biosr.zarr" / "train" / "gt" / "c")  # chunks gone
    again = cloudmic.PatchStream(url, "train", ["wf", "gt"], PATCH, cache_dir=str(cache))
    for it in again:  # every block comes from the cache: same pixels as the first epoch
        assert np.array_equal(it["gt"], one[it["__key__"]])
    small = cloudmic.PatchStream(str(local_root / "biosr.zarr"), "train", ["wf"], PATCH,
                                 cache_dir=str(tmp_path / "small"), cache_bytes=cached // 8)
    list(small)
    assert 0 < sum(p.stat().st_size for p in (tmp_path / "small").glob("*.npy")) <= cached // 8


@pytest.mark.e2e
def test_patches_cut_on_a_dask_cluster_equal_local_ones(local_root):
    from distributed import LocalCluster

    url = str(local_root / "biosr.zarr")
    here = [(it["__key__"], it["wf"].tobytes()) for it in
            cloudmic.PatchStream(url, "train", ["wf"], PATCH, seed=4)]
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True,
                      dashboard_address=None) as cluster:
        there = [(it["__key__"], it["wf"].tobytes()) for it in
                 cloudmic.PatchStream(url, "train", ["wf"], PATCH, seed=4,
                                      scheduler=cluster.scheduler_address)]
    assert there == here


def test_a_pass_left_unfinished_closes_without_waiting_for_its_reads(local_root):
    """A pass abandoned mid-epoch (a break, an error in the loop) is closed whenever its
    generator is collected, which can be on zarr's event-loop thread. Every read here also
    needs that loop (as zarr's reads do), so waiting there for the reads in flight would
    never end: that hung a test process at exit for good."""
    import asyncio

    from zarr.core.sync import _get_loop, sync

    stream = cloudmic.PatchStream(f"{local_root}/biosr.zarr", "train", ["wf"], PATCH, seed=3)
    read = stream.reader.read

    def read_on_the_loop(*args):
        sync(asyncio.sleep(0.3))  # in flight when the pass is closed below
        return read(*args)

    stream.reader.read = read_on_the_loop
    items = iter(stream)
    next(items)

    async def close() -> None:
        items.close()  # blocks the loop thread for as long as the close takes

    started = time.perf_counter()
    asyncio.run_coroutine_threadsafe(close(), _get_loop()).result(timeout=20)
    assert time.perf_counter() - started < 5
