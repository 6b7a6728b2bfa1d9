"""Request budget on a real S3 server, counted on the wire by a proxy in front of it.

One epoch of ``PatchStream`` costs one GET per shard object per block (one shard per
variable plus the block's chunk of the ``sample`` coordinate) plus metadata reads that do
not grow with the number of blocks; ``cloudmic.shards`` costs one GET per tar shard plus
``index.json``. zarrs reads through its own Rust client, which no Python store wrapper
sees: hence the proxy. The ``train`` split ends with a partial block (68 samples, shards
of 8), as most real splits do.
"""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict

import numpy as np
import pytest
import yaml

import cloudmic
from cloudmic.client.shards import shard_index
from cloudmic.ingest import ingest
from cloudmic.synth.biosr import synth_biosr
from counting_proxy import CountingProxy, Request

pytestmark = pytest.mark.e2e

VARIABLES = ["wf", "gt"]
PATCH = {"y": 32, "x": 32}
# 9 blocks of 8 samples (the last one of 4) and 2; tar shards of 64 records (~10.7 MB, more
# than one 8 MiB read block of s3fs, as the published 512-record shards are) + 4, and 16
SPLITS = {"train": 68, "validate": 16}


@pytest.fixture(scope="module")
def published(s3_server, small_manifest, tmp_path_factory) -> str:
    tmp = tmp_path_factory.mktemp("budget")
    manifest = yaml.safe_load(small_manifest.read_text())
    manifest["webdataset"]["samples_per_shard"] = 64
    (tmp / "biosr.yaml").write_text(yaml.safe_dump(manifest))
    synth_biosr(tmp / "src", **SPLITS, test=1, variant="uint16", seed=2)
    root = f"s3://budget-{uuid.uuid4().hex[:10]}"
    ingest(str(tmp / "biosr.yaml"), tmp / "src", root,
           storage_options=s3_server.storage_options())
    return root


@pytest.fixture(scope="module")
def proxy(s3_server):
    with CountingProxy(s3_server.endpoint) as p:
        yield p


def through(proxy: CountingProxy, s3_server) -> dict:
    return {**s3_server.storage_options(), "client_kwargs": {"endpoint_url": proxy.url}}


def show(requests: list[Request]) -> str:
    return "\n".join(f"  {r.method} {r.path}{'?' + r.query if r.query else ''} "
                     f"range={r.range} -> {r.status}, {r.nbytes} B" for r in requests)


@pytest.fixture(scope="module")
def epochs(published, proxy, s3_server) -> dict[str, tuple[int, list[Request]]]:
    """(blocks, requests) of one shuffled epoch of each split, read in this process."""
    out = {}
    for split, samples in SPLITS.items():
        proxy.reset()
        stream = cloudmic.PatchStream(f"{published}/biosr.zarr", split, VARIABLES, PATCH,
                                      shuffle=True, storage_options=through(proxy, s3_server))
        assert sum(1 for _ in stream) == samples
        out[split] = len(stream.spec.blocks), proxy.requests
        print(f"\n{split}: {out[split][0]} blocks, {len(out[split][1])} requests: "
              f"{dict(Counter(r.method for r in out[split][1]))}\n{show(out[split][1])}")
    return out


@pytest.mark.parametrize("split", SPLITS)
def test_patch_stream_reads_each_shard_object_once_per_block(epochs, split):
    blocks, reqs = epochs[split]
    assert all(r.status < 400 for r in reqs), show(reqs)
    by_block = defaultdict(list)  # chunk keys: <array>/c/<block>[/0/0]
    for r in reqs:
        if "/c/" in r.path:
            by_block[int(r.path.split("/c/")[1].split("/")[0])].append(r)
    assert sorted(by_block) == list(range(blocks))
    # one GET per shard object (and the sample chunk); zarrs asks a shard's size (HEAD)
    # before its ranged read, once per shard object
    over = {b: Counter(r.method for r in rs) for b, rs in by_block.items()
            if Counter(r.method for r in rs) - Counter(GET=len(VARIABLES) + 1,
                                                       HEAD=len(VARIABLES))}
    assert not over, "\n".join(f"block {b}: {dict(c)}\n{show(by_block[b])}"
                               for b, c in over.items())


def test_patch_stream_metadata_reads_do_not_grow_with_blocks(epochs):
    meta = {split: sorted((r.method, r.path.split("/", 2)[-1].replace(split, "SPLIT"), r.query)
                          for r in reqs if "/c/" not in r.path)
            for split, (_, reqs) in epochs.items()}
    assert epochs["train"][0] > 4 * epochs["validate"][0]
    assert meta["train"] == meta["validate"]
    assert len(meta["train"]) <= 8, meta["train"]


@pytest.mark.parametrize("split", SPLITS)
def test_shards_reads_each_tar_once(published, proxy, s3_server, split):
    _, index = shard_index(f"{published}/biosr.wds", **s3_server.storage_options())
    shards = len(index["splits"][split]["shards"])
    proxy.reset()
    pipe = cloudmic.shards(f"{published}/biosr.wds", split,
                           storage_options=through(proxy, s3_server))
    assert sum(1 for _ in pipe) == SPLITS[split]
    reqs = proxy.requests
    print(f"\n{split}: {shards} shards, {len(reqs)} requests\n{show(reqs)}")
    assert all(r.status < 400 for r in reqs), show(reqs)
    gets = [r for r in reqs if r.method == "GET"]
    tars = [r.path for r in gets if r.path.endswith(".tar")]
    assert len(tars) == len(set(tars)) == shards, show(reqs)
    # the version pointer (ADR 0007), then the version's index
    assert [r.path.rsplit("/", 1)[-1] for r in gets if not r.path.endswith(".tar")] == [
        "current.json", "index.json"], show(reqs)
    assert [r for r in reqs if r.method not in ("GET",)] == [], show(reqs)


def test_shards_resume_a_body_that_breaks_off(published, proxy, s3_server):
    """A tar's body cut off mid-way (headers sent, 1 MiB of ~10 MB, connection dropped) is
    asked for again from the byte where it broke, not re-read whole and not skipped: the
    same records, one extra ranged GET per cut shard."""
    wds, opts = f"{published}/biosr.wds", through(proxy, s3_server)
    whole = {r["position"]: r["wf"].copy() for r in cloudmic.shards(wds, "train",
                                                                     storage_options=opts)}
    proxy.reset()
    proxy.cut("GET", r"\.tar$", after=1 << 20)
    try:
        got = {r["position"]: r["wf"] for r in cloudmic.shards(wds, "train",
                                                               storage_options=opts)}
    finally:
        proxy.clear()
    assert sorted(got) == sorted(whole) == list(range(SPLITS["train"]))
    assert all(np.array_equal(got[p], whole[p]) for p in whole)
    tars = [r for r in proxy.requests if r.path.endswith(".tar")]
    cut = [r for r in tars if r.range is None and r.nbytes == 1 << 20]
    resumed = [r for r in tars if (r.range or "").startswith("bytes=1048576-")]
    small = [r for r in tars if r.range is None and r.nbytes < 1 << 20]  # whole, not cut
    assert cut and len(resumed) == len(cut), show(tars)
    assert len(tars) == len(cut) + len(resumed) + len(small), show(tars)
