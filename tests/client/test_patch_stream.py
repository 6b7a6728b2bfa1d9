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
    assert keys(a) == keys(b)
    b.set_epoch(1)
    assert keys(a) != keys(b)
    assert sorted(k for k, _ in keys(a)) == sorted(k for k, _ in keys(b))
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
