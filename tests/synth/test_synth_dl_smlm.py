"""Synthetic DL-SMLM: published tree, dtypes, WF sum, ThunderSTORM CSV, SR render, determinism."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cloudmic.synth import get_generator
from cloudmic.synth.dl_smlm import (
    SR_PIXEL_NM,
    STRUCTURES,
    WF_PIXEL_NM,
    csv_columns,
    render_sr,
    synth_dl_smlm,
)
from cloudmic.synth.optics import gaussian_spots, sample_path, splat

SIZE = 48
FRAMES = 12
TREE = {"frames": FRAMES, "size": SIZE, "seed": 5}  # the ``tree`` fixture's run, for variants
BETA = "ER-sec61\u03b2"
HEADER = (
    '"id","frame","x [nm]","y [nm]","sigma [nm]","intensity [photon]","offset [photon]",'
    '"bkgstd [photon]","chi2","uncertainty_xy [nm]"'
)


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _read_csv(path: Path) -> tuple[list[str], np.ndarray]:
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    return rows[0], np.array(rows[1:], dtype=np.float64).reshape(-1, len(rows[0]))


def _cells(root: Path):
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for cell in sorted(folder.iterdir()):
            yield folder.name, cell, int(cell.name[4:])


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("dl_smlm")
    calls: list[int] = []
    summary = synth_dl_smlm(out, cells=2, progress=calls.append, **TREE)
    return out, summary, calls


def test_registry() -> None:
    assert get_generator("dl-smlm") is synth_dl_smlm


def test_tree_and_names(tree) -> None:
    out, summary, calls = tree
    assert summary["root"] == str(out)
    assert sorted(p.name for p in out.iterdir()) == sorted(STRUCTURES)
    assert (out / BETA).is_dir()  # the Greek letter, U+03B2
    assert summary["structures"] == dict.fromkeys(STRUCTURES, 2)
    for folder in STRUCTURES:
        assert sorted(p.name for p in (out / folder).iterdir()) == ["cell1", "cell2"]
        for n in (1, 2):
            names = sorted(p.name for p in (out / folder / f"cell{n}").iterdir())
            assert names == sorted(["WF_raw.tif", f"WF{n}.tif", f"SR{n}.tif", "SR_locs.csv"])
    files = [p for p in out.rglob("*") if p.is_file()]
    assert [p for p in out.rglob(".*")] == []  # no temp files left
    assert summary["files"] == len(files) == 6 * 2 * 4
    assert summary["bytes"] == sum(p.stat().st_size for p in files)
    assert sum(calls) == summary["files"] and all(n > 0 for n in calls)
    assert summary["cells"] == 12 and summary["frames"] == FRAMES and summary["size"] == SIZE


def test_ascii_names_write_the_same_cells(tree, tmp_path: Path) -> None:
    out, _, _ = tree
    summary = synth_dl_smlm(tmp_path, structures=("ER-sec61b",), cells=2, ascii_names=True, **TREE)
    assert [p.name for p in tmp_path.iterdir()] == ["ER-sec61b"]
    assert summary["structures"] == {"ER-sec61b": 2}
    assert _files(tmp_path / "ER-sec61b") == _files(out / BETA)


def test_dtypes_shapes_plain_multipage(tree) -> None:
    out, _, _ = tree
    for _, cell, n in _cells(out):
        with tifffile.TiffFile(cell / "WF_raw.tif") as tif:
            assert len(tif.pages) == FRAMES
            assert all(p.compression == tifffile.COMPRESSION.NONE for p in tif.pages)
            assert not tif.is_imagej and not tif.is_shaped
            raw = tif.asarray()
        assert raw.dtype == np.uint16 and raw.shape == (FRAMES, SIZE, SIZE)
        wf = tifffile.imread(cell / f"WF{n}.tif")
        assert wf.dtype == np.float32 and wf.shape == (SIZE, SIZE)
        sr = tifffile.imread(cell / f"SR{n}.tif")
        assert sr.dtype == np.float32 and sr.shape == (8 * SIZE, 8 * SIZE)


def test_wf_is_the_exact_sum_of_the_raw_frames(tree) -> None:
    out, _, _ = tree
    for _, cell, n in _cells(out):
        raw = tifffile.imread(cell / "WF_raw.tif")
        wf = tifffile.imread(cell / f"WF{n}.tif")
        np.testing.assert_array_equal(wf, raw.sum(axis=0, dtype=np.uint64).astype(np.float32))


def test_raw_counts_follow_the_camera_model(tree) -> None:
    out, _, _ = tree
    for _, cell, _ in _cells(out):
        raw = tifffile.imread(cell / "WF_raw.tif")
        assert raw.min() >= 100  # the dark offset
        photons = (raw.astype(np.float64) - 100) * 0.23
        # A background of tens of photons per pixel and frame, and bright single emitters.
        assert 5 < np.median(photons) < 150
        assert photons.max() > np.median(photons) + 30


def test_csv_header_and_columns(tree) -> None:
    out, _, _ = tree
    for _, cell, _ in _cells(out):
        text = (cell / "SR_locs.csv").read_text(encoding="utf-8")
        assert text.splitlines()[0] == HEADER
        assert "\r" not in text and text.endswith("\n")
        header, table = _read_csv(cell / "SR_locs.csv")
        assert header == csv_columns() and len(header) == 10
        assert len(table) > 20
        # id and frame are written as integers.
        first = text.splitlines()[1].split(",")
        assert first[0].isdigit() and first[1].isdigit()


def test_csv_ids_frames_and_coordinates(tree) -> None:
    out, summary, _ = tree
    gaps = rows = 0
    for _, cell, _ in _cells(out):
        _, t = _read_csv(cell / "SR_locs.csv")
        ids, frames, x, y = t[:, 0], t[:, 1], t[:, 2], t[:, 3]
        assert np.all(ids == np.round(ids)) and ids.min() >= 1
        assert np.all(np.diff(ids) > 0)  # increasing, 1-based ...
        assert ids.max() > len(ids)  # ... with gaps left by ThunderSTORM's filtering
        gaps += int(ids.max()) - len(ids)
        rows += len(ids)
        assert frames.min() >= 1 and frames.max() <= FRAMES
        assert np.all(np.diff(frames) >= 0)  # in frame order
        assert np.all((x >= 0) & (x < SIZE * WF_PIXEL_NM))
        assert np.all((y >= 0) & (y < SIZE * WF_PIXEL_NM))
        sigma, intensity, offset, bkgstd, chi2, unc = t[:, 4:].T
        assert np.all((sigma > 80) & (sigma < 260))  # PSF sigma 1.0-1.3 px of 130 nm
        assert np.all(intensity > 50) and np.all(offset >= 0) and np.all(bkgstd > 0)
        assert np.all(chi2 > 0)
        assert 5 < np.median(unc) < 25 and np.all(unc > 0)
    assert summary["localizations"] == rows
    assert 0.001 * rows <= gaps <= 0.03 * rows + 12


def test_csv_coordinates_are_written_at_full_precision(tree) -> None:
    out, _, _ = tree
    decimals = []
    for line in (out / "CCPs" / "cell1" / "SR_locs.csv").read_text().splitlines()[1:]:
        fields = line.split(",")
        for text in fields[2:4]:
            # Python's shortest round-trip text: parsing gives back exactly the generator's
            # float, and the SR image was rendered from those same floats.
            assert text == repr(float(text)) and "e" not in text
            decimals.append(len(text.partition(".")[2]))
        # Other columns carry at most 3 decimals, as ThunderSTORM prints them.
        assert all(len(f.partition(".")[2]) <= 3 for f in fields[4:])
    assert np.mean(decimals) > 8  # not rounded


def test_localizations_sit_on_bright_emitters_of_their_frame(tree) -> None:
    out, _, _ = tree
    for _, cell, _ in _cells(out):
        raw = tifffile.imread(cell / "WF_raw.tif").astype(np.float64)
        _, t = _read_csv(cell / "SR_locs.csv")
        f = t[:, 1].astype(int) - 1
        row = (t[:, 3] // WF_PIXEL_NM).astype(int)
        col = (t[:, 2] // WF_PIXEL_NM).astype(int)
        p75 = np.percentile(raw, 75, axis=(1, 2))
        assert np.mean(raw[f, row, col] > p75[f]) > 0.8


def test_sr_is_rendered_from_the_csv(tree) -> None:
    out, _, _ = tree
    for _, cell, n in _cells(out):
        _, t = _read_csv(cell / "SR_locs.csv")
        x, y = t[:, 2], t[:, 3]
        sr = tifffile.imread(cell / f"SR{n}.tif")
        # The documented rule, from the CSV's own values, gives the file bit for bit.
        np.testing.assert_array_equal(render_sr(x, y, SIZE), sr)
        # Mass: one unit per localisation, minus what the kernel puts beyond the edges.
        assert len(x) * 0.97 <= sr.sum() <= len(x) * 1.0001
        # The image is concentrated where the localisations are (16.25 nm grid, 4x binned).
        side = 8 * SIZE
        hist = np.zeros((side, side))
        np.add.at(hist, ((y // SR_PIXEL_NM).astype(int), (x // SR_PIXEL_NM).astype(int)), 1)
        h4 = hist.reshape(side // 4, 4, side // 4, 4).sum(axis=(1, 3))
        s4 = sr.reshape(side // 4, 4, side // 4, 4).sum(axis=(1, 3))
        assert np.corrcoef(h4.ravel(), s4.ravel())[0, 1] > 0.9


def test_readable_by_cloudmic_formats_and_render(tree) -> None:
    """The ingest's CSV reader parses the tables and ``cloudmic.render`` redraws SR<N>."""
    from cloudmic import render
    from cloudmic.formats.thunderstorm import read_thunderstorm

    out, _, _ = tree
    for _, cell, n in _cells(out):
        table = read_thunderstorm(cell / "SR_locs.csv")
        _, raw = _read_csv(cell / "SR_locs.csv")
        np.testing.assert_array_equal(table["id"], raw[:, 0])
        np.testing.assert_array_equal(table["x"], raw[:, 2])
        sr = tifffile.imread(cell / f"SR{n}.tif")
        again = render(
            {"x": table["x"], "y": table["y"]}, SR_PIXEL_NM, shape=sr.shape, method="gaussian"
        )
        np.testing.assert_allclose(again, sr, rtol=1e-6, atol=1e-9)


def test_render_rule_details() -> None:
    # One localisation in the middle of SR pixel (10, 20): a 7x7 normalised Gaussian there.
    x = np.array([20.5 * SR_PIXEL_NM])
    y = np.array([10.5 * SR_PIXEL_NM])
    sr = render_sr(x, y, 16)
    assert sr.shape == (128, 128) and sr.dtype == np.float32
    assert np.unravel_index(sr.argmax(), sr.shape) == (10, 20)
    assert sr.sum() == pytest.approx(1.0, rel=1e-6)
    assert np.count_nonzero(sr) == 49
    k = np.exp(-0.5 * np.arange(-3, 4) ** 2)
    k /= k.sum()
    np.testing.assert_allclose(sr[7:14, 17:24], np.outer(k, k), rtol=1e-6)
    # floor(x / 16.25): the pixel's left edge belongs to it, its right edge does not.
    edge = render_sr([20 * SR_PIXEL_NM], [10 * SR_PIXEL_NM], 16)
    assert np.unravel_index(edge.argmax(), edge.shape) == (10, 20)
    # Out of the field: ignored; at the border: the kernel is cut.
    assert render_sr([-1.0, 16 * 130.0], [5.0, 5.0], 16).sum() == 0
    assert render_sr([0.0], [0.0], 16).sum() == pytest.approx((k[3:].sum()) ** 2, rel=1e-6)


def test_csv_variant_without_chi2(tree, tmp_path: Path) -> None:
    out, _, _ = tree
    synth_dl_smlm(
        tmp_path, structures=("CCPs",), cells=1, uncertainty_name="uncertainty", chi2=False, **TREE
    )
    path = tmp_path / "CCPs" / "cell1" / "SR_locs.csv"
    header, table = _read_csv(path)
    assert header == [
        "id",
        "frame",
        "x [nm]",
        "y [nm]",
        "sigma [nm]",
        "intensity [photon]",
        "offset [photon]",
        "bkgstd [photon]",
        "uncertainty [nm]",
    ]
    assert path.read_text().splitlines()[0] == ",".join(f'"{c}"' for c in header)
    _, full = _read_csv(out / "CCPs" / "cell1" / "SR_locs.csv")
    np.testing.assert_array_equal(table[:, :8], full[:, :8])
    np.testing.assert_array_equal(table[:, 8], full[:, 9])
    # The images do not depend on the CSV variant.
    for name in ("WF_raw.tif", "WF1.tif", "SR1.tif"):
        assert (path.parent / name).read_bytes() == (out / "CCPs" / "cell1" / name).read_bytes()


def test_same_seed_same_bytes_other_seed_other_bytes(check_seeded_tree) -> None:
    check_seeded_tree(
        synth_dl_smlm, structures=("CCPs", "Microtubules"), cells=1, frames=5, size=32
    )


def test_cell_bytes_do_not_depend_on_what_else_is_written(tmp_path: Path) -> None:
    kw = {"frames": 4, "size": 32, "seed": 2}
    synth_dl_smlm(tmp_path / "s", structures=("OMM-tomm20",), cells=1, **kw)
    synth_dl_smlm(tmp_path / "l", structures=("IMM-cox8a", "OMM-tomm20"), cells=2, **kw)
    small = _files(tmp_path / "s")
    large = _files(tmp_path / "l")
    assert small.items() <= large.items()


def test_structures_look_different(tree) -> None:
    """Layouts differ by structure: CCP localisations gather in ~150 nm pits."""
    out, _, _ = tree

    def clustered(folder: str) -> float:
        fractions = []
        for n in (1, 2):
            _, t = _read_csv(out / folder / f"cell{n}" / "SR_locs.csv")
            xy = t[:, 2:4]
            d = np.hypot(*(xy[:, None, :] - xy[None, :, :]).transpose(2, 0, 1))
            np.fill_diagonal(d, np.inf)
            fractions.append(np.mean(np.sort(d, axis=1)[:, 2] < 150))
        return float(np.mean(fractions))

    assert clustered("CCPs") > 0.5


def test_refuses_a_tree_with_more_cells(tmp_path: Path) -> None:
    kw = {"structures": ("CCPs",), "frames": 2, "size": 16}
    synth_dl_smlm(tmp_path, cells=2, **kw)
    with pytest.raises(FileExistsError, match="cell2"):
        synth_dl_smlm(tmp_path, cells=1, **kw)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"structures": ("Actin",)}, "unknown DL-SMLM structure 'Actin'; pass some of: CCPs"),
        ({"structures": "CCPs"}, r"list or tuple of structure names .* e\.g\. \('CCPs',\)"),
        ({"structures": ()}, "at least one"),
        ({"structures": ("CCPs", "CCPs")}, "listed twice"),
        ({"structures": (BETA, "ER-sec61b")}, "listed twice"),
        ({"cells": -1}, "cells must be a whole number from 0"),
        ({"cells": 1.5}, "cells must be a whole number"),
        ({"frames": 0}, "frames must be a whole number from 1"),
        ({"size": 8}, "size must be a whole number from 16"),
        ({"size": True}, "size must be a whole number"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"ascii_names": "yes"}, "ascii_names must be True or False"),
        ({"chi2": 1}, "chi2 must be True or False"),
        ({"uncertainty_name": "uncertainty_xy [nm]"}, "uncertainty_name must be"),
    ],
)
def test_bad_arguments_say_what_to_pass(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        synth_dl_smlm(tmp_path, **kwargs)
    assert list(tmp_path.iterdir()) == []


# ---- the optics helpers added for this generator -------------------------------------------


def test_gaussian_spots_keep_mass_and_centroid() -> None:
    img = gaussian_spots([[10.3, 20.7]], [100.0], 1.2, (32, 40))
    yy, xx = np.mgrid[0:32, 0:40]
    assert img.sum() == pytest.approx(100.0, rel=1e-3)
    assert (img * xx).sum() / img.sum() == pytest.approx(20.7, abs=1e-3)
    assert (img * yy).sum() / img.sum() == pytest.approx(10.3, abs=1e-3)
    # Pixel-integrated: the variance is sigma^2 + 1/12 (a pixel's own width).
    var = (img * (xx - 20.7) ** 2).sum() / img.sum()
    assert var == pytest.approx(1.2**2 + 1 / 12, rel=1e-3)
    # Light of an emitter just outside the field still falls into it.
    assert 0 < gaussian_spots([[-1.0, 5.0]], [1.0], 1.0, (10, 10)).sum() < 0.5
    assert gaussian_spots(np.zeros((0, 2)), [], 1.0, (4, 4)).sum() == 0


def test_sample_path_spacing_and_normals() -> None:
    path = np.array([[0.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    pts, normal, arc = sample_path(path, 0.5)
    assert len(pts) == 40 and arc[0] == pytest.approx(0.25) and arc[-1] == pytest.approx(19.75)
    np.testing.assert_allclose(np.hypot(*normal.T), 1.0)
    first_tangent = np.array([0.0, 1.0])
    assert abs(normal[0] @ first_tangent) < 1e-12
    assert sample_path(np.zeros((1, 2)), 1.0)[0].shape == (0, 2)
    with pytest.raises(ValueError, match="spacing"):
        sample_path(path, 0)


def test_splat_keeps_mass_and_centroid() -> None:
    img = splat([[3.25, 4.75]], [2.0], (8, 8))
    yy, xx = np.mgrid[0:8, 0:8]
    assert img.sum() == pytest.approx(2.0)
    assert (img * yy).sum() / 2 == pytest.approx(3.25)
    assert (img * xx).sum() / 2 == pytest.approx(4.75)
    assert math.isclose(splat(np.zeros((0, 2)), [], (2, 2)).sum(), 0.0)
