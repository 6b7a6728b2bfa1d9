"""DL-SMLM and STED-FM copies written by someone else's generator, straight from
datasets.md §1-2 (not cloudmic.synth), with the writer choices seen in the wild."""

from __future__ import annotations

import io
import tarfile
import uuid
from pathlib import Path

import numpy as np
import pytest
import tifffile

import cloudmic
from cloudmic.datasets.sted_fm import metadata_from_json
from cloudmic.ingest import ingest

HEADERS = {
    "mle": ["id", "frame", "x [nm]", "y [nm]", "sigma [nm]", "intensity [photon]",
            "offset [photon]", "bkgstd [photon]", "chi2", "uncertainty_xy [nm]"],
    "lsq": ["id", "frame", "x [nm]", "y [nm]", "sigma [nm]", "intensity [photon]",
            "offset [photon]", "bkgstd [photon]", "uncertainty [nm]"],
    "3d": ["id", "frame", "x [nm]", "y [nm]", "z [nm]", "sigma1 [nm]", "sigma2 [nm]",
           "intensity [photon]", "offset [photon]", "bkgstd [photon]", "uncertainty_xy [nm]",
           "uncertainty_z [nm]"],
}


def _smlm_cell(cell: Path, n: int, header: list[str], rng: np.random.Generator,
               imagej: bool) -> dict:
    raw = (100 + rng.poisson(20, (5, 32, 32))).astype(np.uint16)
    wf = raw.sum(axis=0, dtype=np.float32)
    sr = rng.random((256, 256), dtype=np.float32)
    cell.mkdir(parents=True)
    tifffile.imwrite(cell / "WF_raw.tif", raw, imagej=imagej)
    tifffile.imwrite(cell / f"WF{n}.tif", wf)
    tifffile.imwrite(cell / f"SR{n}.tif", sr)
    rows = 40
    cols = {h: rng.random(rows) * 4000 for h in header}
    cols["id"] = np.sort(rng.choice(np.arange(1, 200), rows, replace=False))
    cols["frame"] = rng.integers(1, 6, rows)
    lines = [",".join(f'"{h}"' for h in header)]
    for r in range(rows):
        lines.append(",".join(repr(int(cols[h][r])) if h in ("id", "frame")
                              else repr(float(cols[h][r])) for h in header))
    (cell / "SR_locs.csv").write_text("\n".join(lines) + "\n")
    return {"wf_raw": raw, "wf": wf, "sr": sr, "x": cols["x [nm]"], "id": cols["id"]}


@pytest.mark.parametrize("header", sorted(HEADERS))
def test_foreign_dl_smlm_copy_ingests_losslessly(tmp_path, header):
    rng = np.random.default_rng(11)
    made = {
        ("ER-sec61β", 3): _smlm_cell(tmp_path / "src" / "ER-sec61β" / "cell3", 3,
                                     HEADERS[header], rng, imagej=True),
        ("Microtubules", 1): _smlm_cell(tmp_path / "src" / "Microtubules" / "cell1", 1,
                                        HEADERS[header], rng, imagej=False),
    }
    ingest("dl-smlm", tmp_path / "src", str(tmp_path / "root"))
    tree = cloudmic.open(f"{tmp_path}/root/dl-smlm.zarr")
    for (structure, n), arrays in made.items():
        cell = tree[f"{structure.replace('β', 'b')}/cell{n}"].ds
        for var in ("wf_raw", "wf", "sr"):
            assert cell[var].dtype == arrays[var].dtype
            assert np.array_equal(cell[var].values, arrays[var])
        assert np.array_equal(cell["loc_x"].values, arrays["x"])
        assert np.array_equal(cell["loc_id"].values, arrays["id"])
        if header == "3d":
            assert "loc_z" in cell and "loc_uncertainty_z" in cell


@pytest.mark.parametrize("names", ["current", "legacy"])
def test_foreign_sted_fm_archive_ingests_losslessly(tmp_path, names):
    """Written the way STED-FM's dataset.py writes: savez(image, metadata) members."""
    rng = np.random.default_rng(5)
    src = tmp_path / "src"
    src.mkdir()
    crops = {}
    with tarfile.open(src / "STED-FM-dataset-crops-raw.tar", "w") as tf:
        for k, protein in enumerate(["psd95", "f-actin", "beta2-spectrin", "FUS"]):
            crop = rng.integers(0, 4000, (224, 224)).astype(np.uint16)
            image_id = str(uuid.uuid3(uuid.NAMESPACE_DNS, f"img{k}"))
            info = {"chan-id": ["STED_594 {6}", 0, "arr_0", 1][k], "image-id": image_id,
                    "image-type": "msr", "user-id": "someone", "protein-id": protein}
            buf = io.BytesIO()
            np.savez(buf, image=crop, metadata=info)
            name = (f"{protein}-{image_id}-{k * 224}-0" if names == "current"
                    else f"{image_id}-{k * 224}-0")
            ti = tarfile.TarInfo(name)
            ti.size = len(buf.getvalue())
            tf.addfile(ti, io.BytesIO(buf.getvalue()))
            crops[name] = (crop, protein, str(info["chan-id"]), info)
    ingest("sted-fm", src, str(tmp_path / "root"))
    ds = cloudmic.open(f"{tmp_path}/root/sted-fm.zarr")["crops-raw"].ds
    for k, name in enumerate(ds["member"].values):
        crop, protein, chan, info = crops[str(name)]
        assert np.array_equal(ds["image"][k].values, crop)
        assert ds["protein"].values[k] == protein  # from metadata, even with legacy names
        assert ds["chan_id"].values[k] == chan
        meta = metadata_from_json(str(ds["metadata_json"].values[k]))  # typed: 0 stays int
        assert meta == info and type(meta["chan-id"]) is type(info["chan-id"])
        assert (int(ds["j"][k]), int(ds["i"][k])) == (int(str(name).split("-")[-2]), 0)
