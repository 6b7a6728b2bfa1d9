"""Synthetic DeepCAD: seed table, tree and names, paired low/high movies, determinism."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from cloudmic.formats.tiff_pages import iter_frame_blocks, movie_info
from cloudmic.synth import get_generator
from cloudmic.synth.deepcad import RECORDINGS, movie_names, synth_deepcad


def _read(path: Path) -> np.ndarray:
    return np.concatenate([b for _, b in iter_frame_blocks(path, 16)])


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.tif"))}


def test_recordings_follow_the_seed_table():
    assert len(RECORDINGS) == 27  # 14 rows, two powers each except row 10
    first, last = RECORDINGS[0], RECORDINGS[-1]
    assert first["zip"] == "1_ZOOM1.3_550Vx575H_FOV_30Hz_80umdepth_0.2power_1AMP.zip"
    assert last["zip"] == "14_ZOOM1.3_550Vx575H_FOV_30Hz_210umdepth_soma_0.4power_10AMP.zip"
    assert (first["power_mw"], first["amp_gain"], first["structure"]) == (66.0, 1, "Dendrite")
    assert (last["power_mw"], last["depth_um"], last["amp_gain"]) == (132.0, 210.0, 10)
    assert all(r["fov_um"] == (550.0, 575.0) and r["frame_rate_hz"] == 30.0 for r in RECORDINGS)
    assert [r["zip"] for r in RECORDINGS if r["no"] == 10] == [
        "10_ZOOM1.3_550Vx575H_FOV_30Hz_170umdepth_0.3power_10AMP.zip"
    ]
    assert {r["zenodo_record"] for r in RECORDINGS} == {8079069, 8080615, 8079117}
    assert RECORDINGS[20]["zip"].startswith("11_") and "_dendrite_" in RECORDINGS[20]["zip"]
    assert all(r["frames"] is None and r["file_names"] is None for r in RECORDINGS)
    assert len({r["zip"] for r in RECORDINGS}) == 27


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    out = tmp_path_factory.mktemp("dc")
    summary = get_generator("deepcad")(out, recordings=3, frames=64, size=96, seed=3)
    return out, summary


def test_tree_names_dtypes_shapes(tree):
    out, summary = tree
    root = Path(summary["root"])
    assert root == out / "DeepCAD" and summary["files"] == 6
    for rec, meta in zip(summary["recordings"], RECORDINGS, strict=False):
        folder, low, high = movie_names(meta["zip"])
        assert folder == meta["zip"].removesuffix(".zip")
        assert rec["low"] == f"{folder}/{folder}_lowSNR.tif"
        assert rec["high"] == f"{folder}/{folder}_highSNR.tif"
        assert sorted(p.name for p in (root / folder).iterdir()) == sorted([low, high])
        for name in (low, high):
            info = movie_info(root / folder / name)
            assert (info.frames, info.shape, info.dtype) == (64, (96, 96), np.dtype("uint16"))
            assert info.contiguous
            assert info.squeezed_axes == ((1, 2) if rec["imagej"] else ())
    assert [r["imagej"] for r in summary["recordings"]] == [False, True, False]
    assert not list(root.rglob(".*.tmp"))
    assert summary["bytes"] == sum(p.stat().st_size for p in root.rglob("*.tif"))


def test_low_and_high_are_synchronous_and_10x(tree):
    _, summary = tree
    root = Path(summary["root"])
    for rec in summary["recordings"]:
        lo = _read(root / rec["low"]).astype(np.float64) - 100.0  # camera offset
        hi = _read(root / rec["high"]).astype(np.float64) - 100.0
        assert lo.shape == hi.shape
        ratio = hi.mean() / lo.mean()
        assert 8 < ratio < 12, ratio
        # Same frame, same scene: strongly correlated pixels.
        same = [np.corrcoef(lo[t].ravel(), hi[t].ravel())[0, 1] for t in range(len(lo))]
        assert min(same) > 0.3, min(same)  # low-SNR: a few photons per pixel
        # The calcium dynamics match frame by frame, not 8 frames off: each frame's change
        # from the mean image correlates across the paths at the same t. (The frame is the
        # whole 550 x 575 um field of view, so neurons are small and many: the correlation
        # is per frame over pixels, not of a summed trace.)
        dl = (lo - lo.mean(0)).reshape(len(lo), -1)
        dh = (hi - hi.mean(0)).reshape(len(hi), -1)
        same_t = np.mean([np.corrcoef(dl[t], dh[t])[0, 1] for t in range(len(lo))])
        shifted = np.mean([np.corrcoef(dl[t], dh[t + 8])[0, 1] for t in range(len(lo) - 8)])
        assert same_t > 0.1 and same_t > 2 * shifted, (same_t, shifted)
        # Low is noisier: relative frame-to-frame noise (10x fewer photons, ~sqrt(10)x SNR).
        snr_lo = lo.mean() / np.diff(lo, axis=0).std()
        snr_hi = hi.mean() / np.diff(hi, axis=0).std()
        assert snr_hi > 2 * snr_lo, (snr_lo, snr_hi)


def test_determinism(tmp_path, tree):
    out, _ = tree
    a = synth_deepcad(tmp_path / "a", recordings=3, frames=64, size=96, seed=3)
    assert _files(Path(a["root"])) == _files(out / "DeepCAD")
    b = synth_deepcad(tmp_path / "b", recordings=1, frames=64, size=96, seed=4)
    assert _files(Path(b["root"])) != {
        k: v for k, v in _files(out / "DeepCAD").items() if k.startswith("1_")
    }


def test_bad_arguments(tmp_path):
    for kwargs in ({"recordings": 0}, {"recordings": 28}, {"frames": 0}, {"seed": -1}):
        with pytest.raises(ValueError):
            synth_deepcad(tmp_path, **kwargs)


_BIG_PROBE = textwrap.dedent(
    """
    import resource, sys
    from cloudmic.synth.deepcad import write_big_movie
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    n = write_big_movie(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), seed=1)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(n, (after - before) / 1024)
    """
)


def test_big_movie_writer_streams(tmp_path):
    frames, size = 800, 256  # 105 MB of pixels
    p = tmp_path / "big.tif"
    res = subprocess.run(
        [sys.executable, "-c", _BIG_PROBE, str(p), str(frames), str(size)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    nbytes, growth_mb = res.stdout.split()
    assert int(nbytes) == p.stat().st_size > frames * size * size * 2
    assert float(growth_mb) < 40, f"RSS grew by {growth_mb} MB writing a {nbytes} B movie"
    info = movie_info(p)
    assert (info.frames, info.shape, info.contiguous) == (frames, (size, size), True)
