"""PatchStream: aligned patches across grids, one per sample, deterministic order."""

from __future__ import annotations

import numpy as np
import pytest

import cloudmic
from cloudmic.ingest import ingest


@pytest.fixture(scope="module", params=["uint16", "float32"])
def published(request, biosr_sources, small_manifest, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"root-{request.param}")
    ingest(str(small_manifest), biosr_sources[request.param], str(root))
    return f"{root}/biosr.zarr", request.param


def test_patches_are_aligned_and_cover_each_sample_once(published):
    url, variant = published
    stream = cloudmic.PatchStream(url, "train", ["wf", "gt"], {"y": 32, "x": 48})
    items = list(stream)
    assert len(items) == len(stream) == 40
    assert len({it["__key__"] for it in items}) == 40
    ds = cloudmic.open(url)["train"].ds
    f = 2 if variant == "uint16" else 1
    for it in items[:10]:
        i, (y, x) = it["index"], (it["origin"]["y"], it["origin"]["x"])
        assert it["__key__"] == f"train/{ds['sample'].values[i]}"
        assert it["wf"].shape == (32, 48) and it["gt"].shape == (32 * f, 48 * f)
        assert np.array_equal(it["wf"], ds["wf"][i, y:y + 32, x:x + 48].values)
        assert np.array_equal(it["gt"], ds["gt"][i, f * y:f * (y + 32), f * x:f * (x + 48)].values)
        # same field of view in the shared (WF pixel) coordinate system
        gy = ds["gt"].dims[1]
        assert float(ds[gy][f * y]) == pytest.approx(y - (f - 1) / (2 * f))


def test_order_is_a_function_of_seed_and_epoch(published):
    url, _ = published
    keys = lambda s: [(it["__key__"], tuple(it["origin"].values())) for it in s]  # noqa: E731
    a = cloudmic.PatchStream(url, "train", ["wf"], {"y": 16, "x": 16}, seed=3)
    b = cloudmic.PatchStream(url, "train", ["wf"], {"y": 16, "x": 16}, seed=3)
    first = keys(a)
    assert first == keys(b)
    a.set_epoch(0)
    assert keys(a) == first  # the same (seed, epoch), the same order and positions
    second = keys(a)  # a further pass without set_epoch is the next epoch
    b.set_epoch(1)
    assert keys(b) == second != first
    assert sorted(k for k, _ in first) == sorted(k for k, _ in second)
    c = cloudmic.PatchStream(url, "train", ["wf"], {"y": 16, "x": 16}, shuffle=False)
    assert [it["index"] for it in c] == list(range(40))


def test_test_split_keeps_the_level_axis(published):
    url, _ = published
    it = next(iter(cloudmic.PatchStream(url, "test", ["wf", "gt"], {"y": 64, "x": 64})))
    assert it["wf"].shape == (9, 64, 64)


def test_patch_larger_than_array(published):
    url, _ = published
    with pytest.raises(ValueError, match="does not fit 'wf' of 'train', which is 128 along 'y'"):
        cloudmic.PatchStream(url, "train", ["wf", "gt"], {"y": 256, "x": 64})


def test_unknown_variable_lists_the_real_ones(published):
    url, _ = published
    with pytest.raises(KeyError, match="no variable 'sr'; variables: gt, wf"):
        cloudmic.PatchStream(url, "train", ["wf", "sr"], {"y": 64, "x": 64})


def test_unknown_group_lists_groups(published):
    url, _ = published
    with pytest.raises(KeyError, match="groups: test, train, validate"):
        cloudmic.PatchStream(url, "training", ["wf"], {"y": 64, "x": 64})


def test_wrong_patch_dims(published):
    url, _ = published
    with pytest.raises(ValueError, match="do not match the spatial dims"):
        cloudmic.PatchStream(url, "train", ["wf"], {"row": 64, "col": 64})


def test_missing_store_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="cloudmic ls ROOT"):
        cloudmic.PatchStream(str(tmp_path / "nothing.zarr"), "train", ["wf"], {"y": 8, "x": 8})
    with pytest.raises(FileNotFoundError, match="cloudmic ls ROOT"):
        cloudmic.open(str(tmp_path / "nothing.zarr"))


def test_dataloader_workers_split_the_epoch(published):
    """Two spawned DataLoader workers: disjoint shares that cover the epoch exactly once."""
    torch = pytest.importorskip("torch")
    url, _ = published
    stream = cloudmic.PatchStream(url, "train", ["wf", "gt"], {"y": 32, "x": 32})
    assert isinstance(stream, torch.utils.data.IterableDataset)
    loader = torch.utils.data.DataLoader(stream, batch_size=8, num_workers=2,
                                         multiprocessing_context="spawn")
    batches = list(loader)
    keys = [k for batch in batches for k in batch["__key__"]]
    assert sorted(keys) == sorted(f"train/{i:08d}" for i in range(1, 41))
    assert tuple(batches[0]["wf"].shape[1:]) == (32, 32)


def test_persistent_workers_move_to_the_next_epoch(published):
    """set_epoch in the parent never reaches persistent workers; their passes still do."""
    torch = pytest.importorskip("torch")
    url, _ = published
    stream = cloudmic.PatchStream(url, "train", ["wf"], {"y": 16, "x": 16}, seed=1)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2,
                                         multiprocessing_context="spawn",
                                         persistent_workers=True)
    epochs = [[it["__key__"] for it in loader] for _ in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) and len(set(epochs[0])) == 40
    assert epochs[0] != epochs[1]
    reference = cloudmic.PatchStream(url, "train", ["wf"], {"y": 16, "x": 16}, seed=1)
    reference.set_epoch(1)
    assert sorted(epochs[1]) == sorted(it["__key__"] for it in reference)


def test_shards_pipeline_goes_to_spawned_workers(published):
    torch = pytest.importorskip("torch")
    url, _ = published
    loader = torch.utils.data.DataLoader(cloudmic.shards(url, "train"), batch_size=None,
                                         num_workers=2, multiprocessing_context="spawn")
    keys = [r["__key__"] for r in loader]
    assert len(keys) == len(set(keys)) == 40
