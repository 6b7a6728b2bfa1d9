"""Synthetic DeepCAD recordings: paired low-SNR / 10x high-SNR two-photon movies.

Layout (``shared/datasets.md`` section 4, seed ``seeds/003``): one folder per Zenodo zip,
named after the zip (``1_ZOOM1.3_550Vx575H_FOV_30Hz_80umdepth_0.2power_1AMP``), holding a
multipage uint16 TIFF movie (T, Y, X) per detection path::

    DeepCAD/<zip stem>/<zip stem>_lowSNR.tif
    DeepCAD/<zip stem>/<zip stem>_highSNR.tif

The file names inside the zips are **unverified** (datasets.md: "The file names inside the
zips are unverified"); the ``_lowSNR`` / ``_highSNR`` suffixes follow the DeepCAD-RT example
``1_GCaMP6f_zoom4.5_50mWpower_40umdepth_30Hz_978x492x6500_lowSNR.tif``.

Content: GCaMP-like neurons (ring-shaped somata with a dark nucleus, or dendrite segments,
after the recording's "structure"), each with calcium transients (Poisson spikes through a
rise/decay kernel at the recording's frame rate) over a smooth, slowly fluctuating neuropil.
Both paths see the same underlying signal, frame by frame; the high-SNR path collects 10x
the photons of the low one, and each has its own shot noise. Photons scale with the square
of the excitation power (two-photon). Each frame spans the whole stated field of view
(550 um vertical x 575 um horizontal), as the real movies do, so a ``size`` x ``size`` frame
samples 550/size um along y and 575/size um along x: the pitch the ingest derives. The scene
is drawn on the y pitch (the 4.5% wider x pitch is not drawn).
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from numpy.typing import NDArray

from cloudmic.synth.common import is_int, stream_rng
from cloudmic.synth.optics import draw_paths, gaussian_blur, random_filaments

__all__ = [
    "HIGH_TO_LOW",
    "RECORDINGS",
    "movie_names",
    "synth_deepcad",
    "write_big_movie",
]

log = logging.getLogger(__name__)

_ZENODO = {range(1, 6): 8079069, range(6, 11): 8080615, range(11, 15): 8079117}


def _rec(no: int, zip_name: str, power_mw: int, depth: int, amp: int, structure: str) -> dict:
    record = next(r for k, r in _ZENODO.items() if no in k)
    return {
        "no": no,
        "zip": zip_name,
        "zenodo_record": record,
        "url": f"https://zenodo.org/record/{record}/files/{zip_name}?download=1",
        "structure": structure,
        "fov_um": (550.0, 575.0),  # (V, H)
        "frame_rate_hz": 30.0,
        "depth_um": float(depth),
        "power_mw": float(power_mw),
        "power_setting": float(re.search(r"_([0-9.]+)power_", zip_name).group(1)),
        "amp_gain": amp,
        "zoom": 1.3,
        "frames": None,  # not in the seed
        "frame_shape": None,  # not in the seed (datasets.md's example: 490 x 490)
        "dtype": None,  # not in the seed ("whatever the microscope wrote")
        "file_names": None,  # not in the seed: the zips' contents are unverified
    }


def _rows() -> list[dict]:
    # (No., depth um, [(power mW, power setting)], AMP, structure, extra name tag), seed 003
    table = [
        (1, 80, [(66, "0.2"), (99, "0.3")], 1, "Dendrite", ""),
        (2, 100, [(66, "0.2"), (99, "0.3")], 1, "Soma and dendrite", ""),
        (3, 120, [(66, "0.2"), (99, "0.3")], 1, "Soma", ""),
        (4, 140, [(66, "0.2"), (99, "0.3")], 1, "Soma", ""),
        (5, 160, [(66, "0.2"), (99, "0.3")], 1, "Soma", ""),
        (6, 180, [(99, "0.3"), (132, "0.4")], 1, "Soma", ""),
        (7, 200, [(99, "0.3"), (132, "0.4")], 10, "Soma", ""),
        (8, 200, [(99, "0.3"), (132, "0.4")], 10, "Soma", ""),
        (9, 150, [(66, "0.2"), (99, "0.3")], 10, "Soma", ""),
        (10, 170, [(99, "0.3")], 10, "Soma", ""),
        (11, 80, [(66, "0.2"), (99, "0.3")], 10, "Dendrite", "dendrite_"),
        (12, 110, [(66, "0.2"), (99, "0.3")], 10, "Soma and dendrite", "somadendrite_"),
        (13, 185, [(99, "0.3"), (132, "0.4")], 10, "Soma", "soma_"),
        (14, 210, [(99, "0.3"), (132, "0.4")], 10, "Soma", "soma_"),
    ]
    rows = []
    for no, depth, powers, amp, structure, tag in table:
        for mw, setting in powers:
            name = (
                f"{no}_ZOOM1.3_550Vx575H_FOV_30Hz_{depth}umdepth_{tag}{setting}power_{amp}AMP.zip"
            )
            rows.append(_rec(no, name, mw, depth, amp, structure))
    return rows


#: One dict per Zenodo zip of the seed table (27 zips: row 10 has one power only).
RECORDINGS: tuple[dict, ...] = tuple(_rows())

HIGH_TO_LOW = 10.0  # photon ratio of the two detection paths
FOV_UM = (550.0, 575.0)  # stated field of view (vertical, horizontal): seed 003's zip names
SOMA_RADIUS_UM = (5.0, 7.5)
NUCLEUS_FRACTION = 0.55  # nucleus radius / soma radius (GCaMP is excluded from the nucleus)
SOMA_DENSITY_PER_UM2 = 1.0 / 30.0**2
DENDRITES_PER_UM2 = 1.0 / 40.0**2
PSF_SIGMA_UM = 0.6  # lateral two-photon PSF
SPIKE_RATE_HZ = (0.05, 0.6)
SPIKE_DFF = (0.3, 1.2)  # dF/F per event (GCaMP6f, small bursts)
RISE_S, DECAY_S = 0.05, 0.4
HIGH_PHOTONS = 200.0  # high path: photons per frame at a soma's resting brightness, 0.3 power
NEUROPIL = 0.35  # neuropil brightness relative to resting somata
ADU_PER_PHOTON = {1: 2.0, 10: 20.0}  # by PMT amplifier gain (AMP 1 vs 10)
OFFSET_ADU = 100.0


@dataclass(frozen=True, slots=True)
class _Scene:
    """Clean movie description: frame t = background * drift[t] + weight * (1 + dff[label, t])."""

    background: NDArray[np.float64]  # (Y, X) neuropil, resting units
    weight: NDArray[np.float64]  # (Y, X) resting brightness of the owning neuron
    label: NDArray[np.intp]  # (Y, X) index of the owning neuron (0 = none; row 0 of dff is 0)
    dff: NDArray[np.float64]  # (neurons + 1, T)
    drift: NDArray[np.float64]  # (T,) slow neuropil fluctuation

    def frame(self, t: int) -> NDArray[np.float64]:
        return self.background * self.drift[t] + self.weight * (1.0 + self.dff[self.label, t])


def movie_names(zip_name: str) -> tuple[str, str, str]:
    """(folder, low-SNR file, high-SNR file) of one recording, from its Zenodo zip name."""
    stem = zip_name.removesuffix(".zip")
    return stem, f"{stem}_lowSNR.tif", f"{stem}_highSNR.tif"


def synth_deepcad(
    out: Path | str,
    *,
    recordings: int = 2,
    frames: int = 64,
    size: int = 128,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
    hyperstack: bool = True,
) -> dict:
    """Write ``recordings`` low/high movie pairs under ``out/DeepCAD/<zip stem>/``.

    Args:
        out: parent folder; created if missing.
        recordings: how many of :data:`RECORDINGS` to write, in table order (1..27).
        frames, size: movie shape (frames, size, size).
        seed: same seed, same bytes.
        progress: called with the number of files written since its previous call.
        hyperstack: write the second recording as an ImageJ hyperstack ``(T, Z=1, C=1, Y,
            X)``, as the DeepCAD code warns some are, to exercise axis squeezing.

    Returns:
        ``{"root", "files", "bytes", "recordings": [{"zip", "low", "high", "shape",
        "imagej"}, ...]}`` (paths relative to ``root``).
    """
    for name, value, lo, hi in (
        ("recordings", recordings, 1, len(RECORDINGS)),
        ("frames", frames, 1, 10**7),
        ("size", size, 8, 65536),
        ("seed", seed, 0, 2**63 - 1),
    ):
        if not is_int(value) or not lo <= value <= hi:
            raise ValueError(f"{name} must be a whole number from {lo} to {hi}, got {value!r}")
    root = Path(out) / "DeepCAD"
    files = nbytes = 0
    written = []
    for k, rec in enumerate(RECORDINGS[:recordings]):
        folder, low_name, high_name = movie_names(rec["zip"])
        (root / folder).mkdir(parents=True, exist_ok=True)
        scene = _scene(stream_rng(seed, k, 0), rec, frames, size)
        imagej = hyperstack and k == 1
        for path_name, ratio, stream in ((low_name, 1.0 / HIGH_TO_LOW, 1), (high_name, 1.0, 2)):
            movie = _acquire(stream_rng(seed, k, stream), scene, rec, ratio, frames)
            nbytes += _write_movie(root / folder / path_name, movie, frames, size, imagej)
            files += 1
            if progress is not None:
                progress(1)
        written.append(
            {
                "zip": rec["zip"],
                "low": f"{folder}/{low_name}",
                "high": f"{folder}/{high_name}",
                "shape": (frames, size, size),
                "imagej": imagej,
            }
        )
    log.info("wrote %d files (%d bytes) of synthetic DeepCAD to %s", files, nbytes, root)
    return {"root": str(root), "files": files, "bytes": nbytes, "recordings": written}


def write_big_movie(
    path: Path | str, frames: int, size: int, seed: int = 0, *, high: bool = False
) -> int:
    """Stream a (frames, size, size) uint16 movie to ``path`` frame by frame; return its bytes.

    Memory stays at a few frames plus the per-neuron traces (neurons x frames floats), so
    multi-GB benchmark movies need no multi-GB RAM. BigTIFF is used when the file would not
    fit a classic TIFF's 4 GB offsets. The first recording of :data:`RECORDINGS` sets the
    content (``high`` picks the 10x path).
    """
    rec = RECORDINGS[0]
    scene = _scene(stream_rng(seed, 0, 0), rec, frames, size)
    ratio = 1.0 if high else 1.0 / HIGH_TO_LOW
    movie = _acquire(stream_rng(seed, 0, 2 if high else 1), scene, rec, ratio, frames)
    return _write_movie(Path(path), movie, frames, size, imagej=False)


def _scene(rng: np.random.Generator, rec: dict, frames: int, size: int) -> _Scene:
    shape = (size, size)
    pixel_um = FOV_UM[0] / size  # the frame is the whole field of view
    area_um2 = FOV_UM[0] * FOV_UM[1]
    weight = np.zeros(shape)
    label = np.zeros(shape, dtype=np.intp)
    structure = rec["structure"].lower()
    n = 0
    if "soma" in structure:
        count = max(1, int(rng.poisson(area_um2 * SOMA_DENSITY_PER_UM2)))
        yy, xx = np.mgrid[0:size, 0:size]
        for _ in range(count):
            cy, cx = rng.uniform(-4, size + 4, 2)
            r = rng.uniform(*SOMA_RADIUS_UM) / pixel_um
            d = np.hypot(yy - cy, xx - cx)
            body = _soft_disk(d, r) - 0.7 * _soft_disk(d, NUCLEUS_FRACTION * r)
            body *= rng.uniform(0.6, 1.4)
            n += 1
            own = body > weight
            weight[own], label[own] = body[own], n
    if "dendrite" in structure:
        count = max(1, int(rng.poisson(area_um2 * DENDRITES_PER_UM2)))
        paths = random_filaments(
            rng,
            shape,
            count,
            persistence_px=(60 / pixel_um, 200 / pixel_um),
            length_px=(20 / pixel_um, 120 / pixel_um),
            step_px=0.5,
        )
        for path in paths:
            line = draw_paths([path], shape) * rng.uniform(0.5, 1.2)
            n += 1
            own = line > np.maximum(weight, 0.05)
            weight[own], label[own] = line[own], n
    sigma = PSF_SIGMA_UM / pixel_um
    weight = np.clip(gaussian_blur(weight, sigma), 0.0, None)
    noise = gaussian_blur(rng.standard_normal(shape), 6.0 / pixel_um)
    background = NEUROPIL * np.clip(1.0 + noise / max(float(noise.std()), 1e-12) * 0.3, 0.2, None)
    dff = np.zeros((n + 1, frames))
    dff[1:] = _calcium(rng, n, frames, rec["frame_rate_hz"])
    t = np.arange(frames) / rec["frame_rate_hz"]
    drift = 1.0 + 0.05 * np.sin(2 * math.pi * (t / 20.0 + rng.uniform()))
    return _Scene(background, weight, label, dff, drift)


def _soft_disk(d: NDArray[np.float64], r: float) -> NDArray[np.float64]:
    return np.clip(r + 0.5 - d, 0.0, 1.0)


def _calcium(rng: np.random.Generator, n: int, frames: int, rate_hz: float) -> NDArray:
    """dF/F traces (n, frames): Poisson spikes through a difference-of-exponentials kernel."""
    dt = 1.0 / rate_hz
    rates = rng.uniform(*SPIKE_RATE_HZ, (n, 1))
    events = rng.poisson(rates * dt, (n, frames)) * rng.uniform(*SPIKE_DFF, (n, frames))
    k = np.arange(int(math.ceil(6 * DECAY_S / dt))) * dt
    kernel = np.exp(-k / DECAY_S) - np.exp(-k / RISE_S)
    kernel /= kernel.max()
    out = np.empty((n, frames))
    for i in range(n):
        out[i] = np.convolve(events[i], kernel)[:frames]
    return out


def _acquire(
    rng: np.random.Generator, scene: _Scene, rec: dict, ratio: float, frames: int
) -> Iterator[NDArray[np.uint16]]:
    """uint16 frames of one detection path collecting ``ratio`` x the high path's photons."""
    photons = HIGH_PHOTONS * ratio * (rec["power_setting"] / 0.3) ** 2
    adu = ADU_PER_PHOTON.get(rec["amp_gain"], 6.0)
    for t in range(frames):
        counts = rng.poisson(scene.frame(t) * photons)
        yield np.clip(counts * adu + OFFSET_ADU, 0, 65535).astype(np.uint16)


def _write_movie(
    path: Path, movie: Iterator[NDArray[np.uint16]], frames: int, size: int, imagej: bool
) -> int:
    """Write frames as one contiguous uncompressed series, atomically; return file bytes."""
    tmp = path.with_name(f".{path.name}.tmp")
    nbytes = frames * size * size * 2
    bigtiff = nbytes > 2**32 - 2**25 and not imagej
    if imagej:
        shape = (frames, 1, 1, size, size)
        kwargs = {"imagej": True, "metadata": {"axes": "TZCYX"}}
    else:
        shape = (frames, size, size)
        kwargs = {"bigtiff": bigtiff, "metadata": {}}
    imagej_kw = kwargs.pop("imagej", False)
    with tifffile.TiffWriter(tmp, bigtiff=kwargs.pop("bigtiff", False), imagej=imagej_kw) as tw:
        tw.write(
            movie,
            shape=shape,
            dtype=np.uint16,
            photometric="minisblack",
            contiguous=True,
            software=False,
            **kwargs,
        )
    os.replace(tmp, path)
    return path.stat().st_size
