"""Synthetic platelet-em: published tree, dtypes, shapes, label consistency, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cloudmic.formats.label_palette import (
    JET_RGBA_SEMANTIC,
    decode_palette_labels,
    encode_palette_labels,
    jet_palette,
)
from cloudmic.formats.label_rle import decode_rle
from cloudmic.synth import get_generator
from cloudmic.synth.platelet_em import synth_platelet_em

STEMS = ["semantic", "instance-cell", "instance-organelle"]
EXPECTED_FILES = sorted(
    [f"images/{v}-images.tif" for v in ("50", "24")]
    + [
        f"labels-{'semantic' if s == 'semantic' else 'instance'}/{v}-{s}.{ext}"
        for v in ("50", "24")
        for s in STEMS
        for ext in ("tif", "json")
    ]
)


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _canonical_ids(palette: dict, max_label: int) -> np.ndarray:
    colours = encode_palette_labels(np.arange(max_label + 1), max_label=max_label)
    return np.array([palette[tuple(c)] for c in colours.tolist()])


@pytest.fixture(scope="module", params=["uint16", "float32"])
def tree(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"pem_{request.param}")
    calls: list[int] = []
    summary = synth_platelet_em(
        out, slices=10, size=96, seed=3, image_dtype=request.param, progress=calls.append
    )
    return request.param, out / "platelet-em", summary, calls


def test_tree(tree) -> None:
    _, root, summary, calls = tree
    files = _files(root)
    assert sorted(files) == EXPECTED_FILES  # no temp files left
    assert summary["root"] == str(root)
    assert summary["files"] == len(files) == sum(calls) == 14
    assert summary["bytes"] == sum(len(b) for b in files.values())
    assert summary["shapes"] == {"50": (10, 96, 96), "24": (5, 96, 96)}


def test_images(tree) -> None:
    dtype, root, summary, _ = tree
    for vol, shape in summary["shapes"].items():
        with tifffile.TiffFile(root / "images" / f"{vol}-images.tif") as tif:
            assert len(tif.pages) == shape[0]  # multipage: one page per z
            img = tif.asarray()
        assert img.shape == shape and img.dtype == np.dtype(dtype)
        assert img.min() == 0 and img.max() == 65535
        if dtype == "float32":
            assert np.isfinite(img).all()


def test_labels_json_and_tif_agree(tree) -> None:
    _, root, summary, _ = tree
    for vol, shape in summary["shapes"].items():
        decoded = {}
        for stem in STEMS:
            folder = root / ("labels-semantic" if stem == "semantic" else "labels-instance")
            doc = json.loads((folder / f"{vol}-{stem}.json").read_text())
            assert list(doc)[-1] == ".info"
            assert doc[".info"] == {"shape": list(shape), "dtype": "uint16"}
            lab = decode_rle(folder / f"{vol}-{stem}.json", expected_shape=shape)
            rgba = tifffile.imread(folder / f"{vol}-{stem}.tif")
            assert rgba.shape == (*shape, 4) and rgba.dtype == np.uint8
            if stem == "semantic":
                np.testing.assert_array_equal(decode_palette_labels(rgba, JET_RGBA_SEMANTIC), lab)
            else:
                # Instance colours can collide (jet's 256-entry LUT): the TIF gives, for each
                # id, the smallest id sharing its colour.
                palette = jet_palette(int(lab.max()))
                canon = _canonical_ids(palette, int(lab.max()))
                got = decode_palette_labels(rgba, palette, instance=True)
                np.testing.assert_array_equal(got, canon[lab])
            decoded[stem] = lab
        sem, cell, org = (
            decoded["semantic"],
            decoded["instance-cell"],
            decoded["instance-organelle"],
        )
        assert set(np.unique(sem).tolist()) == set(range(7))
        # Cells: ids 1..K, exactly the voxels of semantic >= 1.
        assert np.unique(cell).tolist() == list(range(summary["cells"][vol] + 1))
        np.testing.assert_array_equal(cell > 0, sem > 0)
        # Organelles: ids 1..M, exactly the voxels of classes 2..6, each inside one cell and
        # of one kind (a dense granule's body 5 and core 6 share an id).
        assert np.unique(org).tolist() == list(range(summary["organelles"][vol] + 1))
        np.testing.assert_array_equal(org > 0, sem >= 2)
        for oid in range(1, int(org.max()) + 1):
            where = org == oid
            assert len(np.unique(cell[where])) == 1
            kinds = set(np.unique(sem[where]).tolist())
            assert kinds in ({2}, {3}, {4}, {5}, {5, 6}, {6}), (oid, kinds)


def test_contrast_looks_like_sbf_sem(tree) -> None:
    _, root, _, _ = tree
    img = tifffile.imread(root / "images" / "50-images.tif").astype(np.float64)
    sem = decode_rle(root / "labels-semantic" / "50-semantic.json")
    mean = {c: img[sem == c].mean() for c in range(7)}
    assert mean[6] < mean[5] < mean[1] < mean[0]  # dense cores darkest, resin brightest
    assert mean[4] > mean[1]  # canalicular lumen is pale


def test_deterministic(tmp_path) -> None:
    a = synth_platelet_em(tmp_path / "a", slices=4, size=64, seed=11)
    b = synth_platelet_em(tmp_path / "b", slices=4, size=64, seed=11)
    c = synth_platelet_em(tmp_path / "c", slices=4, size=64, seed=12)
    fa, fb, fc = (_files(Path(s["root"])) for s in (a, b, c))
    assert fa == fb
    assert fa != fc
    # Rewriting in place gives the same bytes again.
    synth_platelet_em(tmp_path / "a", slices=4, size=64, seed=11)
    assert _files(Path(a["root"])) == fa


def test_registered() -> None:
    assert get_generator("platelet-em") is synth_platelet_em


@pytest.mark.parametrize(
    "kwargs",
    [{"slices": 1}, {"size": 16}, {"seed": -1}, {"image_dtype": "float64"}, {"slices": 2.5}],
)
def test_bad_args(tmp_path, kwargs) -> None:
    with pytest.raises(ValueError):
        synth_platelet_em(tmp_path, **kwargs)
