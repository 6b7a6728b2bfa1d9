"""Ingest BioSR into a local folder and into the real S3 server; read it back losslessly."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import xarray as xr

import cloudmic
from cloudmic.ingest import ingest
from cloudmic.storage.location import Location
from cloudmic.storage.versions import resolve
from fixtures_biosr import snapshot


def _tree(src: Path) -> Path:
    return src / "BioSR" / "Microtubules"


def _open_plain(url: str) -> xr.DataTree:
    """Plain xarray, no cloudmic: what a notebook user types."""
    loc = Location.parse(url)
    return xr.open_datatree(url, engine="zarr", storage_options=loc.xarray_storage_options())


@pytest.mark.parametrize("variant", ["uint16", "float32"])
def test_ingest_is_lossless_and_opens_in_plain_xarray(root_url, variant, biosr_sources,
                                                      small_manifest):
    src = biosr_sources[variant]
    report = ingest(str(small_manifest), src, root_url)
    assert report.groups == {"train": 40, "validate": 6, "test": 2}
    assert report.units == 3 + 1 + 1  # 40 train samples in 16-sample units
    # its profile: every phase lapped in order, the units' stages summed
    assert list(report.phases) == ["scan", "start", "units", "seal", "verify", "previews",
                                   "publish"]
    assert sum(report.phases.values()) <= report.seconds + 0.01  # laps rounded to 1 ms
    assert set(report.unit_seconds) == {"read", "zarr", "shard", "upload"}
    assert report.unit_seconds["read"] > 0 and report.unit_seconds["zarr"] > 0
    assert (report.unit_seconds["upload"] > 0) is (not root_url.startswith("/"))

    tree = _open_plain(report.url)  # the version's URL, as `cloudmic ingest` prints it
    mt = _tree(src)
    for split, folder in (("train", "training"), ("validate", "validate")):
        ds = tree[split].ds
        stems = sorted(p.stem for p in (mt / f"{folder}_gt").glob("*.tif"))
        assert list(ds["sample"].values) == stems
        for i, stem in enumerate(stems):
            for var in ("wf", "gt"):
                src_arr = tifffile.imread(mt / f"{folder}_{var}" / f"{stem}.tif")
                stored = ds[var].isel(sample=i).values
                assert stored.dtype == src_arr.dtype == np.dtype(variant)
                assert np.array_equal(stored, src_arr), (split, var, stem)
    test = tree["test"].ds
    assert test["wf"].dims == ("sample", "level", "y", "x")
    assert list(test["level"].values) == list(range(1, 10))
    for i, stem in enumerate(test["sample"].values):
        for k in range(9):
            src_arr = tifffile.imread(mt / "test_wf" / f"level_{k + 1:02d}" / f"{stem}.tif")
            assert np.array_equal(test["wf"].isel(sample=i, level=k).values, src_arr)
        assert np.array_equal(test["gt"].isel(sample=i).values,
                              tifffile.imread(mt / "test_gt" / f"{stem}.tif"))
    gt_dims = ("sample", "y_gt", "x_gt") if variant == "uint16" else ("sample", "y", "x")
    assert tree["train"].ds["gt"].dims == gt_dims
    if variant == "uint16":  # the 2x grid shares the WF coordinate system
        assert float(tree["train"].ds["y_gt"][1] - tree["train"].ds["y_gt"][0]) == 0.5
    prov = tree.attrs["cloudmic"]
    assert prov["dataset"] == "biosr" and prov["source"]["files"] == report.source_files


def test_webdataset_shards_and_index(root_url, biosr_sources, small_manifest):
    ingest(str(small_manifest), biosr_sources["uint16"], root_url)
    index = json.loads(resolve(f"{root_url}/biosr.zarr").wds.child("index.json").read_bytes())
    train = index["splits"]["train"]
    assert train["records"] == 40 and len(train["shards"]) == 3
    assert index["splits"]["test"]["records"] == 2 * 9
    tree = cloudmic.open(f"{root_url}/biosr.zarr")
    records = list(cloudmic.shards(f"{root_url}/biosr.wds", "train"))
    assert sorted(r["__key__"] for r in records) == list(tree["train"].ds["sample"].values)
    for r in records[:5]:
        i = r["json"]["zarr"]["sample"]
        assert np.array_equal(r["wf"], tree["train"].ds["wf"][i].values)
        assert np.array_equal(r["gt"], tree["train"].ds["gt"][i].values)
    test_keys = {r["__key__"] for r in cloudmic.shards(f"{root_url}/biosr.zarr", "test")}
    assert "001-level_01" in test_keys and len(test_keys) == 18


def test_catalog_is_written_last_and_lists_dataset(root_url, biosr_sources, small_manifest):
    ingest(str(small_manifest), biosr_sources["float32"], root_url)
    root = Location.parse(root_url)
    catalog = json.loads(root.child("catalog.json").read_bytes())
    entry = catalog["datasets"]["biosr"]
    assert entry["groups"] == {"train": 40, "validate": 6, "test": 2}
    assert entry["zarr_bytes"] > 0 and entry["array_bytes"] > entry["zarr_bytes"] * 0.5
    # nothing is left in staging once published
    staging = root.child(".cloudmic", "staging")
    # (SeaweedFS lists a deleted prefix as an empty directory marker for a while)
    leftovers = [p for p, d in root.fs.find(staging.path, detail=True).items()
                 if d["type"] == "file" and p.rstrip("/") != staging.path]
    assert not leftovers


def test_rerun_rewrites_the_same_bytes(tmp_path, biosr_sources, small_manifest):
    """Through the API as DESIGN names it, twice in one process: ``cloudmic.ingest`` is
    also the name of the package, which Python binds there once it is imported."""
    assert list(inspect.signature(cloudmic.ingest).parameters)[:3] == ["dataset", "source",
                                                                       "dest"]  # help()
    root = str(tmp_path / "root")
    cloudmic.ingest(str(small_manifest), biosr_sources["uint16"], root)
    first = snapshot(root)
    cloudmic.ingest(str(small_manifest), biosr_sources["uint16"], root)
    second = snapshot(root)
    # only the root metadata (run id, time) and the catalog's timestamps may differ
    volatile = {"/biosr.zarr/zarr.json", "/catalog.json", "/biosr.releases/current.json",
                "/biosr.releases/version.json"}
    assert first.keys() == second.keys()
    assert {k for k in first if first[k] != second[k]} <= volatile


def test_republish_replaces_old_version(root_url, biosr_sources, small_manifest):
    """A second variant published over the first leaves no stale object behind."""
    root = root_url
    ingest(str(small_manifest), biosr_sources["uint16"], root)
    ingest(str(small_manifest), biosr_sources["float32"], root)
    tree = cloudmic.open(f"{root}/biosr.zarr")
    assert tree["train"].ds["gt"].dtype == np.float32
    assert "y_gt" not in tree["train"].ds.dims
    assert not any("y_gt" in k for k in snapshot(root))


def test_empty_splits_are_skipped(tmp_path, caplog):
    """A copy with only training pairs (empty validate/test folders) publishes train."""
    from cloudmic.synth.biosr import synth_biosr

    synth_biosr(tmp_path / "src", train=5, validate=0, test=0, seed=2)
    report = ingest("biosr", tmp_path / "src", str(tmp_path / "root"))
    assert report.groups == {"train": 5}
    assert "split 'validate' is empty" in caplog.text
