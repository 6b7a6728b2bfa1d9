"""Synthetic BioSR: published tree, encodings, determinism, optics, and the numpy helpers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from cloudmic.synth import get_generator
from cloudmic.synth.biosr import (
    LEVEL_PHOTONS,
    PSF_SIGMA_GT_NM,
    PSF_SIGMA_WF_NM,
    synth_biosr,
)
from cloudmic.synth.optics import (
    downsample,
    draw_paths,
    gaussian_blur,
    percentile_normalize,
    random_filaments,
)

LEVELS = [f"level_{k:02d}" for k in range(1, 10)]
EXPECTED = {
    # variant: (dtype, WF shape, GT shape)
    "uint16": (np.uint16, (128, 128), (256, 256)),
    "float32": (np.float32, (128, 128), (128, 128)),
}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.tif"))}


@pytest.fixture(scope="module", params=["uint16", "float32"])
def tree(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    variant = request.param
    out = tmp_path_factory.mktemp(f"biosr_{variant}")
    calls: list[int] = []
    summary = synth_biosr(
        out, train=5, validate=2, test=3, variant=variant, seed=7, progress=calls.append
    )
    return variant, out, summary, calls


def test_tree_and_names(tree) -> None:
    variant, out, summary, _ = tree
    root = out / "BioSR" / "Microtubules"
    assert summary["root"] == str(root)
    assert summary["variant"] == variant
    assert summary["pairs"] == {"train": 5, "validate": 2, "test": 3}
    assert sorted(p.name for p in root.iterdir()) == [
        "test_gt",
        "test_wf",
        "training_gt",
        "training_wf",
        "validate_gt",
        "validate_wf",
    ]
    train = [f"{i:08d}.tif" for i in range(1, 6)]
    assert sorted(p.name for p in (root / "training_wf").iterdir()) == train
    assert sorted(p.name for p in (root / "training_gt").iterdir()) == train
    validate = ["00000001.tif", "00000002.tif"]
    assert sorted(p.name for p in (root / "validate_wf").iterdir()) == validate
    assert sorted(p.name for p in (root / "validate_gt").iterdir()) == validate
    test = ["001.tif", "002.tif", "003.tif"]
    assert sorted(p.name for p in (root / "test_gt").iterdir()) == test
    assert sorted(p.name for p in (root / "test_wf").iterdir()) == LEVELS
    for level in LEVELS:
        assert sorted(p.name for p in (root / "test_wf" / level).iterdir()) == test
    files = list(root.rglob("*"))
    assert [p for p in files if p.name.startswith(".")] == []  # no temp files left
    tifs = [p for p in files if p.is_file()]
    assert summary["files"] == len(tifs) == 2 * 5 + 2 * 2 + 3 * 10
    assert summary["bytes"] == sum(p.stat().st_size for p in tifs)


def test_progress_counts_every_file(tree) -> None:
    _, _, summary, calls = tree
    assert sum(calls) == summary["files"]
    assert all(n > 0 for n in calls)


def test_dtypes_shapes_single_page_uncompressed(tree) -> None:
    variant, out, _, _ = tree
    dtype, wf_shape, gt_shape = EXPECTED[variant]
    root = out / "BioSR" / "Microtubules"
    for path in sorted(root.rglob("*.tif")):
        with tifffile.TiffFile(path) as tif:
            assert len(tif.pages) == 1
            page = tif.pages[0]
            assert page.compression == tifffile.COMPRESSION.NONE
            image = page.asarray()
        assert image.dtype == dtype, path
        assert image.shape == (gt_shape if "_gt" in str(path) else wf_shape), path
        # Percentile-normalised over the full range: 0..65535 or 0..1.
        top = 65535 if variant == "uint16" else 1.0
        assert image.min() == 0
        assert image.max() == pytest.approx(top, rel=1e-6)


def test_same_seed_same_bytes_other_seed_other_bytes(check_seeded_tree) -> None:
    check_seeded_tree(synth_biosr, train=2, validate=1, test=1, variant="uint16")


def test_sample_bytes_do_not_depend_on_counts(tmp_path: Path) -> None:
    small = _files(Path(synth_biosr(tmp_path / "s", train=1, validate=0, test=0)["root"]))
    large = _files(Path(synth_biosr(tmp_path / "l", train=3, validate=1, test=1)["root"]))
    assert small.items() <= large.items()


def test_variants_show_the_same_scene(tmp_path: Path) -> None:
    u = synth_biosr(tmp_path / "u", train=1, validate=0, test=0, variant="uint16")["root"]
    f = synth_biosr(tmp_path / "f", train=1, validate=0, test=0, variant="float32")["root"]
    wf_u = tifffile.imread(Path(u) / "training_wf" / "00000001.tif") / 65535
    wf_f = tifffile.imread(Path(f) / "training_wf" / "00000001.tif")
    np.testing.assert_allclose(wf_u, wf_f, atol=1e-4)


def _high_frequency_fraction(image: np.ndarray) -> float:
    """Share of the spectral energy above 0.15 cycles/pixel (DC removed)."""
    x = percentile_normalize(image)
    power = np.abs(np.fft.fft2(x - x.mean())) ** 2
    f = np.hypot(np.fft.fftfreq(x.shape[0])[:, None], np.fft.fftfreq(x.shape[1])[None, :])
    return float(power[f > 0.15].sum() / power.sum())


def _on_wf_grid(gt: np.ndarray) -> np.ndarray:
    return downsample(gt.astype(np.float64), gt.shape[0] // 128)


def test_gt_is_sharper_than_wf(tree) -> None:
    _, out, _, _ = tree
    root = out / "BioSR" / "Microtubules"
    pairs = [(root / "training_wf" / p.name, p) for p in (root / "training_gt").iterdir()]
    pairs += [(root / "test_wf" / "level_09" / p.name, p) for p in (root / "test_gt").iterdir()]
    for wf_path, gt_path in pairs:
        wf = tifffile.imread(wf_path).astype(np.float64)
        gt = _on_wf_grid(tifffile.imread(gt_path))  # same field of view, same pixels
        assert _high_frequency_fraction(gt) > 2 * _high_frequency_fraction(wf), gt_path


def test_snr_rises_with_test_level(tree) -> None:
    variant, out, _, _ = tree
    root = out / "BioSR" / "Microtubules"
    gt_pixel_nm = 31.3 if variant == "uint16" else 62.6
    extra = math.sqrt(PSF_SIGMA_WF_NM**2 - PSF_SIGMA_GT_NM**2) / gt_pixel_nm
    for gt_path in sorted((root / "test_gt").iterdir()):
        # The clean widefield image the GT predicts: GT through the rest of the WF PSF.
        gt = tifffile.imread(gt_path).astype(np.float64)
        clean = _on_wf_grid(gaussian_blur(gt, extra)).ravel()
        corr = [
            np.corrcoef(tifffile.imread(root / "test_wf" / lv / gt_path.name).ravel(), clean)[0, 1]
            for lv in LEVELS
        ]
        assert corr[0] > 0.8, "level_01 must still show the same scene as test_gt"
        assert corr[0] < corr[2] < corr[4] < corr[8], corr
        assert (1 - corr[0]) > 3 * (1 - corr[8]), corr


def test_levels_are_geometric_15_to_600() -> None:
    assert len(LEVEL_PHOTONS) == 9
    assert LEVEL_PHOTONS[0] == pytest.approx(15)
    assert LEVEL_PHOTONS[-1] == pytest.approx(600)
    ratios = np.diff(np.log(LEVEL_PHOTONS))
    np.testing.assert_allclose(ratios, ratios[0])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"train": -1}, "train must be a whole number of samples from 0 to 99_999_999"),
        ({"validate": 1.5}, "validate must be a whole number"),
        ({"train": True}, "train must be a whole number"),
        ({"test": 1000}, "test must be a whole number of samples from 0 to 999"),
        ({"train": 100_000_000}, "99_999_999"),
        ({"variant": "uint8"}, "variant must be 'uint16' .* or 'float32'"),
        ({"seed": -1}, "seed must be a non-negative integer"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        synth_biosr(tmp_path, **kwargs)
    assert not (tmp_path / "BioSR").exists()  # validated before anything is written


def test_refuses_to_mix_with_a_larger_previous_run(tmp_path: Path) -> None:
    synth_biosr(tmp_path, train=3, validate=0, test=0)
    with pytest.raises(FileExistsError, match=r"00000003\.tif.*empty --out folder"):
        synth_biosr(tmp_path, train=2, validate=0, test=0)


def test_registry() -> None:
    assert get_generator("biosr") is synth_biosr
    with pytest.raises(ValueError, match="known datasets: biosr"):
        get_generator("nope")


# --- optics helpers -------------------------------------------------------------------------


def test_draw_paths_integrates_arc_length() -> None:
    line = np.array([[20.0, 10.0], [20.0, 50.0]])  # 40 px, well inside
    for s in (1, 3):
        img = draw_paths([line], (40, 64), weights=[2.0], supersample=s)
        assert img.sum() == pytest.approx(80.0, rel=1e-9)
        assert img[20, 30] == pytest.approx(2.0, rel=1e-6)  # centred on a pixel row


def test_random_filaments_are_smooth_and_cross_the_field() -> None:
    rng = np.random.default_rng(0)
    paths = random_filaments(rng, (64, 64), 20, persistence_px=200.0, length_px=(50, 100))
    for p in paths:
        steps = np.diff(p, axis=0)
        np.testing.assert_allclose(np.hypot(*steps.T), 0.5)
        inside = (p >= -0.5) & (p < 63.5)
        assert inside.all(axis=1).any()
        heading = np.unwrap(np.arctan2(steps[:, 0], steps[:, 1]))
        assert np.abs(np.diff(heading)).max() < 0.05  # no kinks


def test_gaussian_blur_keeps_mass_and_constants() -> None:
    img = np.zeros((33, 40))
    img[16, 20] = 1.0
    for mode in ("constant", "wrap", "reflect"):
        out = gaussian_blur(img, 2.0, mode=mode)
        assert out.sum() == pytest.approx(1.0, abs=1e-9)
        assert out.shape == img.shape
    flat = gaussian_blur(np.full((10, 12), 3.0), 5.0)
    np.testing.assert_allclose(flat, 3.0)
    peak = gaussian_blur(img, 2.0, mode="constant")
    assert peak[16, 20] == pytest.approx(1 / (2 * math.pi * 4), rel=0.01)


images = arrays(
    np.float64,
    st.tuples(st.integers(1, 4).map(lambda k: 4 * k), st.integers(1, 4).map(lambda k: 4 * k)),
    elements=st.floats(0, 1000, allow_nan=False),
)


@settings(max_examples=60, deadline=None)
@given(img=images, factor=st.sampled_from([1, 2, 4]))
def test_downsample_invariants(img: np.ndarray, factor: int) -> None:
    small = downsample(img, factor)
    assert small.shape == (img.shape[0] // factor, img.shape[1] // factor)
    assert small.mean() == pytest.approx(img.mean(), rel=1e-9, abs=1e-9)
    np.testing.assert_allclose(
        downsample(np.kron(small, np.ones((factor, factor))), factor), small, rtol=1e-12, atol=1e-9
    )
    assert img.min() - 1e-9 <= small.min() and small.max() <= img.max() + 1e-9


def test_downsample_rejects_ragged_shapes() -> None:
    with pytest.raises(ValueError, match="multiple of 3"):
        downsample(np.zeros((10, 9)), 3)


@settings(max_examples=60, deadline=None)
@given(img=images, gain=st.floats(0.5, 100), offset=st.floats(-1000, 1000))
def test_percentile_normalize_invariants(img: np.ndarray, gain: float, offset: float) -> None:
    y = percentile_normalize(img)
    assert y.min() >= 0 and y.max() <= 1
    if np.ptp(img) >= 1:
        assert y.min() == 0 and y.max() == pytest.approx(1, abs=1e-6)
        # Like prctile_norm, blind to the camera's gain and offset.
        np.testing.assert_allclose(percentile_normalize(gain * img + offset), y, atol=1e-6)
    clipped = percentile_normalize(img, 5, 95)
    assert clipped.min() >= 0 and clipped.max() <= 1
