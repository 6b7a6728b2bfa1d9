"""DL-SMLM: cells ingest losslessly with nm coordinates, localizations as columns, the
real ThunderSTORM exports parse exactly, renders match the stored SR, patches align."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

import cloudmic
from cloudmic.errors import SourceError
from cloudmic.ingest import ingest
from cloudmic.ingest.verify import verify_dataset
from cloudmic.storage.location import Location
from cloudmic.synth.dl_smlm import synth_dl_smlm
from realdata import COLICOORDS, real_path

SMALL = {"cells": 1, "frames": 12, "size": 64}


@pytest.fixture(scope="module")
def dl_source(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dl-smlm")
    synth_dl_smlm(out, structures=("CCPs", "ER-sec61β"), seed=3, **SMALL)
    return out


@pytest.fixture(scope="module")
def dl_root(dl_source, tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("dl-root"))
    ingest("dl-smlm", dl_source, root)
    return root


def _csv_columns(path: Path) -> dict[str, list[float]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return {h: [float(r[k]) for r in rows[1:]] for k, h in enumerate(rows[0])}


def test_cells_are_lossless_with_physical_coordinates(dl_source, dl_root):
    tree = cloudmic.open(f"{dl_root}/dl-smlm.zarr")
    assert sorted(c.path for c in tree.subtree if c.path.count("/") == 2) == [
        "/CCPs/cell1", "/ER-sec61b/cell1"]  # the Greek folder gets its ASCII name
    cell = tree["ER-sec61b/cell1"].ds
    src = dl_source / "ER-sec61β" / "cell1"
    for var, name in (("wf_raw", "WF_raw.tif"), ("wf", "WF1.tif"), ("sr", "SR1.tif")):
        a = tifffile.imread(src / name)
        assert cell[var].dtype == a.dtype and np.array_equal(cell[var].values, a)
    assert cell["wf_raw"].dims == ("t", "y", "x") and cell["sr"].dims == ("y_sr", "x_sr")
    assert cell["x"].attrs["units"] == "nm" and float(cell["x"][0]) == 65.0
    assert float(cell["x_sr"][0]) == 8.125
    # no frame interval is published: t is the frame index, the 50 ms exposure an attribute
    assert cell["t"].dtype == np.int64 and list(cell["t"][:3].values) == [0, 1, 2]
    assert cell["t"].attrs["exposure_s"] == 0.05 and "units" not in cell["t"].attrs
    assert cell["wf_raw"].attrs["e_per_count"] == 0.23
    assert cell["wf_raw"].attrs["offset_counts"] == 100
    cols = _csv_columns(src / "SR_locs.csv")
    assert np.array_equal(cell["loc_x"].values, cols["x [nm]"])
    assert np.array_equal(cell["loc_uncertainty"].values, cols["uncertainty_xy [nm]"])
    assert cell["loc_id"].dtype == np.int64 and cell["loc_x"].attrs["units"] == "nm"


def test_render_matches_the_stored_sr_grid(dl_root):
    cell = cloudmic.open(f"{dl_root}/dl-smlm.zarr")["CCPs/cell1"].ds.load()
    sr = cloudmic.render(cell, 16.25, method="gaussian")
    assert sr.shape == cell["sr"].shape
    assert np.allclose(sr, cell["sr"].values, atol=1e-5)
    coarse = cloudmic.render(cell, 130.0)
    assert coarse.shape == cell["wf"].shape and coarse.sum() == cell.sizes["loc"]
    fine = cloudmic.render(cell, 5.0, method="histogram")
    assert fine.shape == (64 * 26, 64 * 26)


def test_wf_and_sr_patches_cover_the_same_nanometres(dl_root):
    url = f"{dl_root}/dl-smlm.zarr"
    stream = cloudmic.PatchStream(url, "*/cell*", ["wf", "sr"], {"y": 32, "x": 32},
                                  patches_per_sample=3)
    items = list(stream)
    assert len(items) == len(stream) == 6
    tree = cloudmic.open(url)
    for it in items:
        cell = tree[it["group"]].ds
        y0, x0 = it["origin"]["y"], it["origin"]["x"]
        assert it["wf"].shape == (32, 32) and it["sr"].shape == (256, 256)
        wf_y = cell["y"].values[y0:y0 + 32]
        sr_y = cell["y_sr"].values[8 * y0:8 * y0 + 256]
        # same field of view: [first edge, last edge] in nm
        assert wf_y[0] - 65 == sr_y[0] - 8.125 and wf_y[-1] + 65 == sr_y[-1] + 8.125
        assert np.array_equal(it["sr"], cell["sr"].values[8 * y0:8 * y0 + 256,
                                                          8 * x0:8 * x0 + 256])


def test_real_thunderstorm_export_ingests_exactly(tmp_path, dl_source):
    """The real ColiCoords export as a cell's SR_locs.csv: every value survives."""
    real = real_path(COLICOORDS / "examples" / "data" / "06" / "03_storm.csv")
    src = tmp_path / "src"
    shutil.copytree(dl_source / "CCPs", src / "CCPs")
    shutil.copy(real, src / "CCPs" / "cell1" / "SR_locs.csv")
    root = tmp_path / "root"
    ingest("dl-smlm", src, str(root))
    cell = cloudmic.open(f"{root}/dl-smlm.zarr")["CCPs/cell1"].ds
    cols = _csv_columns(real)
    assert cell.sizes["loc"] == 17_361
    for name, canon in (("id", "id"), ("frame", "frame"), ("x [nm]", "x"), ("y [nm]", "y"),
                        ("chi2", "chi2"), ("uncertainty_xy [nm]", "uncertainty")):
        assert np.array_equal(cell[f"loc_{canon}"].values, cols[name]), name
    assert int(cell["loc_id"].max()) == 17_365  # gaps kept
    report = verify_dataset(Location.parse(str(root)), "dl-smlm")
    assert report.ok  # warnings are not failures
    assert any("outside the" in w and "field of view" in w for w in report.warnings)


def test_verify_warns_when_wf_is_not_the_sum_of_frames(tmp_path, dl_source):
    src = tmp_path / "src"
    shutil.copytree(dl_source / "CCPs", src / "CCPs")
    wf = src / "CCPs" / "cell1" / "WF1.tif"
    a = tifffile.imread(wf)
    a[:8] += 1000
    tifffile.imwrite(wf, a)
    ingest("dl-smlm", src, str(tmp_path / "root"))
    report = verify_dataset(Location.parse(str(tmp_path / "root")), "dl-smlm")
    assert any("differs from the sum of the wf_raw frames" in w and "max |diff| 1000" in w
               for w in report.warnings), report.warnings


def test_csv_variant_without_chi2_and_ascii_folder(tmp_path):
    synth_dl_smlm(tmp_path / "src", structures=("ER-sec61β",), ascii_names=True, seed=1,
                  uncertainty_name="uncertainty", chi2=False, **SMALL)
    assert (tmp_path / "src" / "ER-sec61b").is_dir()
    ingest("dl-smlm", tmp_path / "src", str(tmp_path / "root"))
    cell = cloudmic.open(f"{tmp_path}/root/dl-smlm.zarr")["ER-sec61b/cell1"].ds
    assert "loc_uncertainty" in cell and "loc_chi2" not in cell


@pytest.fixture
def dl_copy(dl_source, tmp_path) -> Path:
    shutil.copytree(dl_source, tmp_path / "src")
    return tmp_path / "src"


def test_csv_without_x_lists_the_columns(dl_copy, tmp_path):
    p = dl_copy / "CCPs" / "cell1" / "SR_locs.csv"
    lines = p.read_text().splitlines()
    lines[0] = lines[0].replace('"x [nm]"', '"xpos [nm]"')
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(SourceError, match=r"SR_locs.csv.*x \[nm\].*found.*xpos"):
        ingest("dl-smlm", dl_copy, str(tmp_path / "root"))
    assert not (tmp_path / "root" / "catalog.json").exists()


def test_cell_without_sr_image(dl_copy, tmp_path):
    (dl_copy / "CCPs" / "cell1" / "SR1.tif").unlink()
    with pytest.raises(SourceError, match="SR1.tif: missing: the cell has no super-resolution"):
        ingest("dl-smlm", dl_copy, str(tmp_path / "root"))


def test_wf_raw_of_the_wrong_shape(dl_copy, tmp_path):
    p = dl_copy / "CCPs" / "cell1" / "WF_raw.tif"
    tifffile.imwrite(p, np.full((12, 64, 60), 100, "uint16"))
    with pytest.raises(SourceError, match=r"WF_raw.tif: shape \(12, 64, 60\), expected"):
        ingest("dl-smlm", dl_copy, str(tmp_path / "root"))


def test_unknown_structure_folder(dl_copy, tmp_path):
    (dl_copy / "Mitochondria").mkdir()
    with pytest.raises(SourceError, match="unknown structure folder"):
        ingest("dl-smlm", dl_copy, str(tmp_path / "root"))


# --- the published per-structure zips (datasets.md section 1) ---------------------------------
@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("CLOUDMIC_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_folder_of_structure_zips_ingests(dl_source, tmp_path, cache):
    src = tmp_path / "zips"
    made = synth_dl_smlm(src, structures=("CCPs", "ER-sec61β"), seed=3, zipped=True, **SMALL)
    assert sorted(p.name for p in src.iterdir()) == ["CCPs.zip", "ER-sec61β.zip"]
    assert len(made["zips"]) == 2
    ingest("dl-smlm", src, str(tmp_path / "root"))
    tree = cloudmic.open(f"{tmp_path}/root/dl-smlm.zarr")
    for group, folder in (("CCPs/cell1", "CCPs"), ("ER-sec61b/cell1", "ER-sec61β")):
        cell = tree[group].ds
        assert cell.attrs["source_archive"] == f"{folder}.zip"
        for var, name in (("wf_raw", "WF_raw.tif"), ("wf", "WF1.tif"), ("sr", "SR1.tif")):
            a = tifffile.imread(dl_source / folder / "cell1" / name)  # same seed, same bytes
            assert np.array_equal(cell[var].values, a), (group, var)
        cols = _csv_columns(dl_source / folder / "cell1" / "SR_locs.csv")
        assert np.array_equal(cell["loc_x"].values, cols["x [nm]"])
    assert (cache / "sources" / "dl-smlm" / "unzipped").is_dir()
    ingest("dl-smlm", src, str(tmp_path / "root"))  # a re-run reuses what was unpacked
    # --cache (cache_dir) is where the zips unpack, as it is where --fetch downloads
    ingest("dl-smlm", src, str(tmp_path / "root2"), cache_dir=tmp_path / "mine")
    assert len(list((tmp_path / "mine" / "unzipped").iterdir())) == 2


def test_a_folder_wins_over_its_zip(dl_copy, tmp_path, cache):
    (dl_copy / "CCPs.zip").write_bytes(b"not a zip")  # never opened: CCPs/ is there
    ingest("dl-smlm", dl_copy, str(tmp_path / "root"))
    assert "source_archive" not in cloudmic.open(f"{tmp_path}/root/dl-smlm.zarr")[
        "CCPs/cell1"].attrs


def test_structure_zip_with_path_traversal_is_refused(tmp_path, cache):
    import zipfile

    src = tmp_path / "src"
    src.mkdir()
    with zipfile.ZipFile(src / "CCPs.zip", "w") as zf:
        zf.writestr("CCPs/cell1/WF_raw.tif", b"x")
        zf.writestr("CCPs/../../evil.txt", b"x")
    with pytest.raises(SourceError, match=r"CCPs.zip.*path traversal"):
        ingest("dl-smlm", src, str(tmp_path / "root"))
    assert not list(tmp_path.rglob("evil.txt"))
    assert not (tmp_path / "root" / "catalog.json").exists()


def test_structure_zip_of_another_layout_names_its_members(tmp_path, cache):
    import zipfile

    src = tmp_path / "src"
    src.mkdir()
    with zipfile.ZipFile(src / "Microtubules.zip", "w") as zf:
        zf.writestr("Tubulin/cell1/WF_raw.tif", b"x")
    with pytest.raises(SourceError, match=r"Microtubules.zip: expected the Microtubules/cell<N>/"
                       r" folders of the published zip, found Tubulin"):
        ingest("dl-smlm", src, str(tmp_path / "root"))
