"""BioSR copies written by someone else's generator, straight from datasets.md §3, with
the writer choices found in the wild: MATLAB's PackBits, PIL's LZW, ImageJ metadata,
.tiff extensions, float32 1x and uint16 2x GT. All must ingest losslessly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import xarray as xr

from cloudmic.ingest import ingest

WRITERS = {
    "plain": {},
    "packbits": {"compression": "packbits"},
    "lzw": {"compression": "lzw"},
    "zlib": {"compression": "zlib"},
    "imagej": {"imagej": True},
}


def _write_tree(root: Path, dtype: str, gt_factor: int, writer: dict, ext: str) -> dict:
    rng = np.random.default_rng(7)
    mt = root / "BioSR" / "Microtubules"
    made: dict[Path, np.ndarray] = {}

    def put(rel: str, shape: tuple[int, int]) -> None:
        if dtype == "uint16":
            a = rng.integers(0, 65536, shape, dtype=np.uint16)
        else:
            a = rng.random(shape, dtype=np.float32)
        p = mt / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(p, a, **writer)
        made[p] = a

    g = (128 * gt_factor, 128 * gt_factor)
    for split, n in (("training", 5), ("validate", 2)):
        for i in range(1, n + 1):
            put(f"{split}_wf/{i:08d}{ext}", (128, 128))
            put(f"{split}_gt/{i:08d}{ext}", g)
    for i in range(1, 3):
        put(f"test_gt/{i:03d}{ext}", g)
        for lv in range(1, 10):
            put(f"test_wf/level_{lv:02d}/{i:03d}{ext}", (128, 128))
    return made


@pytest.mark.parametrize("writer", sorted(WRITERS))
@pytest.mark.parametrize(("dtype", "factor"), [("float32", 1), ("uint16", 2)])
def test_foreign_copy_ingests_losslessly(tmp_path, writer, dtype, factor):
    ext = ".tiff" if writer == "zlib" else ".tif"  # both extensions occur
    made = _write_tree(tmp_path / "src", dtype, factor, WRITERS[writer], ext)
    ingest("biosr", tmp_path / "src", str(tmp_path / "root"))
    tree = xr.open_datatree(tmp_path / "root" / "biosr.zarr", engine="zarr")
    for path, arr in made.items():
        split_dir = path.parent.name if not path.parent.name.startswith("level_") \
            else path.parent.parent.name
        group = {"training": "train", "validate": "validate", "test": "test"}[
            split_dir.split("_")[0]]
        var = split_dir.split("_")[1]
        ds = tree[group].ds
        sel = {"sample": path.stem}
        if path.parent.name.startswith("level_"):
            sel["level"] = int(path.parent.name[-2:])
        stored = ds[var].sel(sel).values
        assert stored.dtype == arr.dtype and np.array_equal(stored, arr), path
