"""cloudmic.shards: the same distribution guarantees as PatchStream (equal shares with
flagged padding or drop_last, exactly-once coverage, resume on another number of ranks and
workers), a pure (seed, epoch) order, one GET per shard read, and index.json that cannot
send a reader outside the dataset."""

from __future__ import annotations

import json
import shutil
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import cloudmic
from cloudmic.errors import StoreError, StoreNotFoundError
from cloudmic.ingest import ingest
from cloudmic.storage.location import Location

RECORDS = 40  # the small BioSR train split: shards of 16, 16 and 8 records


@pytest.fixture(scope="module")
def wds(biosr_sources, small_manifest, tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("shards-root")
    ingest(str(small_manifest), biosr_sources["uint16"], str(root))
    return f"{root}/biosr.wds"


@pytest.fixture(scope="module")
def everything(wds) -> list[str]:
    keys = sorted(r["__key__"] for r in cloudmic.shards(wds, "train"))
    assert len(keys) == len(set(keys)) == RECORDS
    return keys


def _real(items) -> list[str]:
    return [it["__key__"] for it in items if not it["pad"]]


@pytest.mark.parametrize("world", [2, 3, 7, 50])  # 50 ranks for 40 records
def test_every_rank_gets_the_same_count_and_the_split_is_covered_once(wds, everything, world):
    q = -(-RECORDS // world)
    keys, positions, pads = Counter(), Counter(), 0
    for rank in range(world):
        items = list(cloudmic.shards(wds, "train", shuffle=True, seed=4, buffer=8,
                                     rank=rank, world_size=world))
        assert len(items) == q, rank  # like DistributedSampler
        pads += sum(it["pad"] for it in items)
        keys.update(_real(items))
        positions.update(it["position"] for it in items if not it["pad"])
        assert {it["__key__"] for it in items if it["pad"]} <= set(everything)
    assert sorted(keys.elements()) == everything
    assert sorted(positions.elements()) == list(range(RECORDS))
    assert pads == world * q - RECORDS

    dropped = Counter()
    for rank in range(world):  # drop_last: the same count, the remainder left out
        items = list(cloudmic.shards(wds, "train", drop_last=True, rank=rank,
                                     world_size=world))
        assert len(items) == RECORDS // world and not any(it["pad"] for it in items)
        dropped.update(it["__key__"] for it in items)
    assert max(dropped.values(), default=1) == 1
    assert sum(dropped.values()) == world * (RECORDS // world)


def test_order_is_a_function_of_seed_and_epoch(wds, everything):
    keys = lambda s: [r["__key__"] for r in s]  # noqa: E731
    s = cloudmic.shards(wds, "train", shuffle=True, seed=5, buffer=8)
    s.set_epoch(0)
    e0 = keys(s)
    s.set_epoch(1)
    e1 = keys(s)
    assert sorted(e0) == sorted(e1) == everything and e0 != e1
    assert keys(cloudmic.shards(wds, "train", shuffle=True, seed=5, buffer=8, epoch=1)) == e1
    again = cloudmic.shards(wds, "train", shuffle=True, seed=5, buffer=8)
    assert keys(again) == e0 and keys(again) == e1  # without set_epoch: the next epoch
    assert keys(cloudmic.shards(wds, "train", shuffle=True, seed=6, buffer=8)) != e0
    plain = [r["position"] for r in cloudmic.shards(wds, "train", seed=5, epoch=3)]
    assert plain == list(range(RECORDS))  # no shuffle: storage order, whatever the epoch


def test_batches_are_stacked_and_equal_in_number_on_every_rank(wds, everything):
    s = cloudmic.shards(wds, "train", batch_size=6)
    batches = list(s)
    assert [len(b["__key__"]) for b in batches] == [6] * 6 + [4] and s.batches() == 7
    b = batches[0]
    assert b["wf"].shape == (6, 128, 128) and b["gt"].shape == (6, 256, 256)
    assert b["position"].tolist() == list(range(6)) and b["pad"].dtype == bool
    assert isinstance(b["json"], list) and b["json"][0]["zarr"]["sample"] == 0
    assert sorted(k for b in batches for k in b["__key__"]) == everything
    assert s.state_dict()["count"] == RECORDS  # in-process: what was yielded is consumed
    for rank in range(3):  # 14 records each (2 of the 42 padding): 6 + 6 + 2
        r = cloudmic.shards(wds, "train", batch_size=6, rank=rank, world_size=3)
        assert [len(b["pad"]) for b in r] == [6, 6, 2] and r.batches() == 3


def test_resume_in_process_on_another_world(wds, everything):
    s = cloudmic.shards(wds, "train", shuffle=True, seed=2, buffer=8)
    seen = []
    for n, it in enumerate(s, 1):
        seen.append(it["__key__"])
        if n == 13:
            break
    state = json.loads(json.dumps(s.state_dict()))
    assert state["count"] == 13 and state["split"] == "train"
    rest = []
    for rank in range(2):
        r = cloudmic.shards(wds, "train", shuffle=True, seed=2, buffer=8, rank=rank,
                            world_size=2)
        r.load_state_dict(state)
        items = list(r)
        assert len(items) == 14  # 27 open records over 2 ranks, one padded
        rest += _real(items)
    assert sorted(seen + rest) == everything
    with pytest.raises(ValueError, match="split"):
        cloudmic.shards(wds, "validate").load_state_dict(state)


def test_resume_in_loader_workers_on_another_number_of_workers(wds, everything):
    pytest.importorskip("torch")
    s = cloudmic.shards(wds, "train", shuffle=True, seed=1, buffer=8)
    seen = []
    loader = s.loader(batch_size=5, num_workers=2)
    assert len(loader) == 8
    for n, batch in enumerate(loader, 1):
        seen += [k for k, p in zip(batch["__key__"], batch["pad"].tolist(), strict=True)
                 if not p]
        if n == 3:
            break
    state = json.loads(json.dumps(s.state_dict()))
    assert state["count"] == len(seen) == 15
    r = cloudmic.shards(wds, "train", shuffle=True, seed=1, buffer=8)
    r.load_state_dict(state)
    loader = r.loader(batch_size=5, num_workers=3)
    assert len(loader) == 6  # 25 open records over 3 workers: 9 each, in 5 + 4
    batches = list(loader)
    assert len(batches) == 6
    rest = [k for b in batches for k, p in zip(b["__key__"], b["pad"].tolist(), strict=True)
            if not p]
    assert sorted(seen + rest) == everything
    assert r.state_dict()["count"] == RECORDS


def test_ranks_with_workers_get_the_same_number_of_batches(wds, everything):
    pytest.importorskip("torch")
    keys, counts = [], set()
    for rank in range(3):  # 3 ranks x 2 workers = 6 consumers of 7 records (2 pads)
        loader = cloudmic.shards(wds, "train", rank=rank, world_size=3).loader(
            batch_size=4, num_workers=2)
        expected = len(loader)
        batches = list(loader)
        counts.add((len(batches), expected, sum(len(b["pad"]) for b in batches)))
        keys += [k for b in batches for k, p in zip(b["__key__"], b["pad"].tolist(),
                                                    strict=True) if not p]
    assert counts == {(4, 4, 14)}
    assert sorted(keys) == everything


@pytest.mark.parametrize("bad", ["../biosr.zarr/zarr.json", "/etc/passwd",
                                 "train/../../secret.tar", "s3://other-bucket/x.tar",
                                 "file:///etc/passwd", ""])
def test_index_json_cannot_point_outside_the_dataset(wds, tmp_path, bad):
    copy = tmp_path / "biosr.wds"
    shutil.copytree(wds, copy)
    index = json.loads((copy / "index.json").read_text())
    index["splits"]["train"]["shards"][1]["url"] = bad
    (copy / "index.json").write_text(json.dumps(index))
    with pytest.raises(StoreError, match="index.json.*refusing shard URL"):
        cloudmic.shards(str(copy), "train")


def test_errors_name_the_split_and_the_fix(wds, tmp_path):
    with pytest.raises(KeyError, match="splits: .*train"):
        cloudmic.shards(wds, "nope")
    copy = tmp_path / "biosr.wds"
    shutil.copytree(wds, copy)
    for tar in (copy / "train").glob("*000001.tar"):
        tar.unlink()
    with pytest.raises(StoreNotFoundError, match="cloudmic verify"):
        list(cloudmic.shards(str(copy), "train"))


def test_one_get_per_shard_read_on_s3(wds, everything, s3_env, monkeypatch):
    import obstore
    import s3fs

    bucket = f"t-{uuid.uuid4().hex[:12]}"
    fs = Location.parse(f"s3://{bucket}").fs
    fs.mkdir(bucket)
    fs.put(str(Path(wds)) + "/", f"{bucket}/biosr.wds", recursive=True)
    calls: list[str] = []
    real, real_get = s3fs.S3FileSystem._call_s3, obstore.get

    async def counted(self, method, *args, **kwargs):
        calls.append(method)
        return await real(self, method, *args, **kwargs)

    def counted_get(store, key, *args, **kwargs):  # shard bodies: obstore, in one GET
        calls.append(f"body {key}")
        return real_get(store, key, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", counted)
    monkeypatch.setattr(obstore, "get", counted_get)
    s = cloudmic.shards(f"s3://{bucket}/biosr.wds", "train")
    # the version pointer (absent: a root without versions) and index.json; nothing else
    # until iteration
    assert calls == ["get_object"] * 2
    assert sorted(_real(s)) == everything
    assert calls[2:] == [f"body {p}" for p in s.paths]  # one GET per shard
    for rank in range(7):  # a shard shared by two ranks is read by both, once each
        calls.clear()
        r = cloudmic.shards(f"s3://{bucket}/biosr.wds", "train", rank=rank, world_size=7)
        takes = r.assignment(0, rank, 7)
        items = list(r)
        assert len(items) == 6 and calls == ["get_object"] * 2 + [
            f"body {r.paths[t.block]}" for t in takes]
        assert np.all(np.diff([it["position"] for it in items if not it["pad"]]) == 1)


def test_a_damaged_shard_raises_naming_it_or_is_skipped_with_on_error(wds, tmp_path):
    copy = tmp_path / "biosr.wds"
    shutil.copytree(wds, copy)
    bad = next((copy / "train").glob("*000001.tar"))
    bad.write_bytes(b"\x00garbage" * 256)
    with pytest.raises(StoreError, match=rf"{bad.name}.*unreadable.*on_error='skip'"):
        list(cloudmic.shards(str(copy), "train"))
    with pytest.warns(RuntimeWarning, match=rf"{bad.name}: skipped"):
        got = list(cloudmic.shards(str(copy), "train", on_error="skip"))
    assert len(got) == RECORDS - 16  # shards 0 and 2 are read whole
    with pytest.raises(ValueError, match="on_error must be 'raise' or 'skip'"):
        cloudmic.shards(str(copy), "train", on_error="ignore")
