"""Re-runs publish the same bytes with the zarrs write path: every object of the ``.zarr``,
its shard objects named one by one, also for arrays that several units write in parallel
(threads here, processes on a dask cluster); zarr's own pipeline reads back exactly what
zarr's own pipeline would have written."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import zarr

import cloudmic.layout.zarr_layout as zarr_layout
from cloudmic.ingest import ingest
from cloudmic.layout.shard_writer import ShardLayout, canonical_shard
from cloudmic.synth.deepcad import synth_deepcad

pytest.importorskip("zarrs")


def _objects(store: Path) -> dict[str, str]:
    return {str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(store.rglob("*")) if p.is_file()}


def _shards(store: Path) -> dict[str, tuple[zarr.Array, list[Path]]]:
    """Every sharded array of a store, with its shard objects."""
    root = zarr.open_group(zarr.storage.LocalStore(store), mode="r")
    out = {}
    for path, arr in root.members(max_depth=None):
        if isinstance(arr, zarr.Array) and arr.shards is not None:
            files = sorted(p for p in (store / path / "c").rglob("*") if p.is_file())
            out[path] = (arr, files)
    return out


def _ingest(dataset: str, source: Path, root: Path, *, python_pipeline: bool = False,
            monkeypatch: pytest.MonkeyPatch | None = None, **kw) -> Path:
    """Ingest and return the published version's Zarr store; ``python_pipeline`` writes
    every unit with zarr's own codec pipeline instead (the path before zarrs)."""
    if python_pipeline:
        assert monkeypatch is not None

        def plain(arr, region, block):
            arr[region] = block

        with monkeypatch.context() as m:
            m.setattr(zarr_layout, "write_region", plain)
            return Path(ingest(dataset, source, str(root), **kw).url)
    return Path(ingest(dataset, source, str(root), **kw).url)


def _check_canonical(store: Path) -> int:
    """Every shard object is in canonical (zarr-python) order; returns how many there are."""
    n = 0
    for path, (arr, files) in _shards(store).items():
        layout = ShardLayout.of(arr)
        assert layout is not None, path
        for f in files:
            raw = f.read_bytes()
            assert canonical_shard(raw, layout, str(f)) == raw, f"{f} is not in canonical order"
            n += 1
    return n


# --- BioSR: three units write each train array in parallel -----------------------------------
@pytest.fixture(scope="module")
def biosr_runs(biosr_sources, small_manifest, tmp_path_factory) -> list[Path]:
    return [_ingest(str(small_manifest), biosr_sources["uint16"],
                    tmp_path_factory.mktemp(f"det-{k}"), workers=2) for k in range(2)]


def test_two_ingests_write_identical_objects_shards_included(biosr_runs):
    first, second = (_objects(s) for s in biosr_runs)
    assert first == second
    shards = _shards(biosr_runs[0])
    # the train arrays span 5 shards of 8 samples, written by 3 units of 16 samples
    arr, files = shards["train/wf"]
    assert arr.shape[0] == 40 and arr.shards[0] == 8 and len(files) == 5
    for _, files in shards.values():
        for f in files:
            rel = str(f.relative_to(biosr_runs[0]))
            assert first[rel] == second[rel], rel
    assert _check_canonical(biosr_runs[0]) >= 10


def test_a_dask_cluster_writes_the_same_bytes(biosr_runs, biosr_sources, small_manifest,
                                              tmp_path):
    """Units in two worker processes, each encoding with its own zarrs threads."""
    store = _ingest(str(small_manifest), biosr_sources["uint16"], tmp_path / "root",
                    cluster=True, workers=2)
    assert _objects(store) == _objects(biosr_runs[0])


def test_same_bytes_as_zarr_python_and_read_back_by_it(biosr_runs, biosr_sources,
                                                       small_manifest, tmp_path, monkeypatch):
    before = _ingest(str(small_manifest), biosr_sources["uint16"], tmp_path / "root",
                     python_pipeline=True, monkeypatch=monkeypatch)
    assert _objects(before) == _objects(biosr_runs[0])
    fast = zarr.open_group(zarr.storage.LocalStore(biosr_runs[0]), mode="r")
    slow = zarr.open_group(zarr.storage.LocalStore(before), mode="r")
    assert zarr.config.get("codec_pipeline.path").endswith("BatchedCodecPipeline")
    arrays = [(p, a) for p, a in fast.members(max_depth=None) if isinstance(a, zarr.Array)]
    assert len(arrays) > 10
    for path, arr in arrays:
        want = slow[path][...]
        assert arr[...].dtype == want.dtype and np.array_equal(arr[...], want), path


# --- DeepCAD: inner chunks on a 4x2x2 grid per shard (Morton order is not C order) ------------
@pytest.fixture(scope="module")
def deepcad_source(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("deepcad-det-src")
    synth_deepcad(out, recordings=1, frames=130, size=256, seed=2)
    return out


def test_movies_rewrite_the_same_shards(deepcad_source, tmp_path, monkeypatch):
    a = _ingest("deepcad", deepcad_source, tmp_path / "a", workers=2)
    b = _ingest("deepcad", deepcad_source, tmp_path / "b", workers=1)
    objects = _objects(a)
    assert objects == _objects(b)
    movie, files = _shards(a)["n01_p66/low/0/low"]
    assert movie.shards == (64, 256, 256) and movie.chunks == (16, 128, 128)
    assert len(files) == 3  # 130 frames: two whole shards and one cut by the movie's end
    assert _check_canonical(a) >= 6
    before = _ingest("deepcad", deepcad_source, tmp_path / "py", python_pipeline=True,
                     monkeypatch=monkeypatch)
    assert _objects(before) == objects
