"""PatchStream under distribution: ranks x workers cover an epoch exactly once with no
communication, and state_dict() resumes mid-epoch on another number of ranks and workers
with no item skipped or repeated."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import cloudmic
from cloudmic.client.stream import merge_states
from cloudmic.ingest import ingest
from fixtures_biosr import new_bucket

PATCH = {"y": 16, "x": 16}
PPS = 3  # patches per sample: 40 samples -> 120 items, in 5 blocks of 8 samples


@pytest.fixture(scope="module")
def url(biosr_sources, small_manifest, tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("dist-root")
    ingest(str(small_manifest), biosr_sources["uint16"], str(root))
    return f"{root}/biosr.zarr"


@pytest.fixture(scope="module", params=["local", "s3", "az"])
def store_url(request, url, biosr_sources, small_manifest) -> str:
    """The same dataset on each kind of store: local, SeaweedFS (S3), Azurite (Azure)."""
    if request.param == "local":
        return url
    bucket = new_bucket(request, request.param)
    ingest(str(small_manifest), biosr_sources["uint16"], bucket)
    return f"{bucket}/biosr.zarr"


def _stream(url: str, **kw) -> cloudmic.PatchStream:
    return cloudmic.PatchStream(url, "train", ["wf"], PATCH, seed=7, patches_per_sample=PPS,
                                **kw)


def _all_keys(url: str, epoch: int = 0) -> list[str]:
    s = _stream(url)
    s.set_epoch(epoch)
    return sorted(it["__key__"] for it in s)


def test_ranks_cover_the_epoch_exactly_once_in_equal_shares_without_talking(store_url):
    url = store_url
    everything = _all_keys(url)
    assert len(everything) == len(set(everything)) == 120
    for world in (2, 3, 7, 200):  # 7 does not divide 120; 200 ranks for 120 items
        keys, counts, pads = Counter(), set(), 0
        for rank in range(world):
            items = list(_stream(url, rank=rank, world_size=world))
            counts.add(len(items))
            pads += sum(it["pad"] for it in items)
            keys.update(it["__key__"] for it in items if not it["pad"])
        assert sorted(keys.elements()) == everything, world
        assert counts == {-(-120 // world)}, world  # every rank the same, like DistributedSampler
        assert pads == world * -(-120 // world) - 120
        dropped = Counter()
        for rank in range(world):  # drop_last: the same count, the remainder left out
            items = list(_stream(url, rank=rank, world_size=world, drop_last=True))
            assert len(items) == 120 // world and not any(it["pad"] for it in items)
            dropped.update(it["__key__"] for it in items)
        assert max(dropped.values(), default=1) == 1 and sum(dropped.values()) == (
            120 // world * world)


def test_resume_on_another_world_size_skips_and_repeats_nothing(url):
    states, seen = [], Counter()
    for rank, stop in ((0, 17), (1, 40)):  # ranks stop at different points: no barrier
        s = _stream(url, rank=rank, world_size=2)
        for n, it in enumerate(s, 1):
            seen[it["__key__"]] += 1
            if n == stop:
                break
        states.append(s.state_dict(gather=False))
    state = merge_states(states)
    assert state["count"] == 57 and json.loads(json.dumps(state)) == state  # JSON-safe
    for rank in range(3):
        s = _stream(url, rank=rank, world_size=3)
        s.load_state_dict(state)
        seen.update(it["__key__"] for it in s)
    assert sorted(seen.elements()) == _all_keys(url)
    # the resumed epoch is over: the next pass is a full new epoch
    s = _stream(url)
    s.load_state_dict(state)
    list(s)
    assert len(list(s)) == 120


def test_state_must_match_the_stream(url):
    state = _stream(url).state_dict()
    other = cloudmic.PatchStream(url, "train", ["wf"], PATCH, seed=8, patches_per_sample=PPS)
    with pytest.raises(ValueError, match="seed"):
        other.load_state_dict(state)


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_loader_workers_stop_and_resume_on_more_workers(url):
    pytest.importorskip("torch")
    s = _stream(url)
    seen = Counter()
    for n, batch in enumerate(s.loader(batch_size=5, num_workers=2), 1):
        seen.update(batch["__key__"])
        if n == 9:
            break
    state = s.state_dict()
    assert state["count"] == 45
    r = _stream(url)
    r.load_state_dict(state)
    for batch in r.loader(batch_size=4, num_workers=3):
        seen.update(batch["__key__"])
    assert sorted(seen.elements()) == _all_keys(url)


SCRIPT = Path(__file__).with_name("torchrun_epoch.py")


def _torchrun(nproc: int, *args: str) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", str(SCRIPT), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.e2e
def test_torchrun_two_ranks_two_workers_then_resume_on_one_rank_three_workers(url, tmp_path):
    """The issue's test: gloo on CPU, 2 ranks x 2 workers collect one epoch's keys (exactly
    once); a second run stops half-way, and 1 rank x 3 workers finish it (still exactly
    once)."""
    pytest.importorskip("torch")
    everything = _all_keys(url)
    full = tmp_path / "full"
    _torchrun(2, url, str(full), "--workers", "2")
    keys = [k for r in range(2) for k in json.loads((full / f"keys-{r}.json").read_text())]
    assert sorted(keys) == everything

    half = tmp_path / "half"
    _torchrun(2, url, str(half), "--workers", "2", "--stop-after", "6")
    state = json.loads((half / "state.json").read_text())
    first = [k for r in range(2) for k in json.loads((half / f"keys-{r}.json").read_text())]
    assert state["count"] == len(first) == 2 * 6 * 5
    _torchrun(1, url, str(tmp_path / "resumed"), "--workers", "3", "--resume",
              str(half / "state.json"))
    rest = json.loads((tmp_path / "resumed" / "keys-0.json").read_text())
    assert sorted(first + rest) == everything


def _mix(url: str, until: str = "all") -> cloudmic.Mix:
    train = cloudmic.PatchStream(url, "train", ["wf"], PATCH, seed=1)
    val = cloudmic.PatchStream(url, "validate", ["wf"], PATCH, seed=2)
    return cloudmic.Mix([train, val], [3, 1], seed=5, until=until)


def test_mix_draws_by_weight_and_resumes_each_source_exactly(url):
    full = [it["__key__"] for it in _mix(url)]
    n_train = sum(k.startswith("train/") for k in full)
    assert len(full) == len(set(full)) == n_train + sum(k.startswith("validate/") for k in full)
    head = [it["source"] for it in _mix(url)][:20]
    assert 10 <= head.count(0) <= 19  # about 3 in 4 from the first source while both last
    assert [it["__key__"] for it in _mix(url)] == full  # seeded
    firsts = [it["source"] for it in _mix(url, until="first")]
    assert len(firsts) < len(full)  # stops when one source runs out

    m, seen = _mix(url), []
    for n, batch in enumerate(m.loader(batch_size=4), 1):
        seen += batch["__key__"]
        if n == 5:
            break
    r = _mix(url)
    r.load_state_dict(json.loads(json.dumps(m.state_dict())))
    seen += [k for b in r.loader(batch_size=4, num_workers=2) for k in b["__key__"]]
    assert sorted(seen) == sorted(full)


def test_a_mix_of_unlike_streams_batches_with_an_error_that_says_why(url):
    """Items of different shapes or variables are refused at the first batch with what
    differs where, not numpy's bare shape error; unbatched they still come one by one."""
    train = cloudmic.PatchStream(url, "train", ["wf", "gt"], PATCH, seed=1)
    val = cloudmic.PatchStream(url, "validate", ["wf"], {"y": 8, "x": 8}, seed=2)
    mix = cloudmic.Mix([train, val], [1, 1], seed=5)
    assert {it["wf"].shape for it in mix} == {(16, 16), (8, 8)}
    with pytest.raises(ValueError, match="cannot batch items of groups") as err:
        next(iter(mix.loader(batch_size=8)))
    for part in ("absent in 'validate'", "(32, 32) uint16 in 'train'",
                 "(16, 16) uint16 in 'train'", "(8, 8) uint16 in 'validate'", "batch_size=None"):
        assert part in str(err.value)


def test_items_of_two_dtypes_are_not_cast_into_one_batch():
    """numpy would stack uint16 and float32 items into float32 silently."""
    from cloudmic.client.stream import pool
    from cloudmic.client.stream.reader import Cut

    def cut(group: str, dtype: str) -> Cut:
        one = np.zeros(1, np.int64)
        return Cut(group, {"wf": np.zeros((1, 4, 4), dtype)}, one, np.zeros(1, bool), one,
                   np.zeros((1, 2), np.int64), ("y", "x"), [f"{group}/0"], {})

    a, b = cut("a", "uint16"), cut("b", "float32")
    assert pool.collate([(a, 0), (a, 0)])["wf"].dtype == np.uint16
    with pytest.raises(ValueError, match=r"'wf': \(4, 4\) uint16 in 'a', \(4, 4\) float32 in 'b'"):
        pool.collate([(a, 0), (b, 0)])


def test_shards_cover_the_split_exactly_once_over_ranks(store_url, monkeypatch):
    wds_url = store_url.removesuffix(".zarr") + ".wds"
    everything = sorted(r["__key__"] for r in cloudmic.shards(wds_url, "train"))
    assert len(cloudmic.shards(wds_url, "train")) == len(everything) == 40
    keys = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        keys += [r["__key__"] for r in cloudmic.shards(wds_url, "train", shuffle=True,
                                                       epoch=1, buffer=8)]
    assert sorted(keys) == everything
    for world in (3, 7):  # equal shares, the remainder padded with flagged repeats
        shares = [list(cloudmic.shards(wds_url, "train", rank=r, world_size=world))
                  for r in range(world)]
        assert {len(x) for x in shares} == {-(-40 // world)}, world
        assert sorted(it["__key__"] for x in shares for it in x if not it["pad"]) == everything
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    order = [r["__key__"] for r in cloudmic.shards(wds_url, "train", shuffle=True, epoch=1,
                                                   buffer=8)]
    assert order == [r["__key__"] for r in cloudmic.shards(wds_url, "train", shuffle=True,
                                                           epoch=1, buffer=8)]
    assert order != [r["__key__"] for r in cloudmic.shards(wds_url, "train", shuffle=True,
                                                           epoch=2, buffer=8)]


def test_streams_reading_in_threads_leave_zarrs_config_as_it_was(url):
    """Readers open arrays with the zarrs pipeline on several threads at once (a Mix: two
    streams, each reading ahead); zarr's global config must come out unchanged, or a later
    ingest in the same process writes through zarrs (not byte-reproducible)."""
    import zarr

    before = zarr.config.get("codec_pipeline.path")
    for seed in range(4):
        m = cloudmic.Mix([cloudmic.PatchStream(url, g, ["wf"], PATCH, seed=seed, prefetch=4)
                          for g in ("train", "validate", "train")], seed=seed)
        assert len(list(m)) == len(m)
    assert zarr.config.get("codec_pipeline.path") == before
