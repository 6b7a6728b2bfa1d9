"""Synthetic DL-SMLM (Zhao et al., Sci Data 2025) in its published per-structure layout.

Writes the tree of the figshare zips (``shared/datasets.md`` section 1)::

    <Structure>/cell<N>/WF_raw.tif     uint16 (frames, size, size), plain multipage, >= 100
    <Structure>/cell<N>/WF<N>.tif      float32 (size, size): the sum of the WF_raw frames
    <Structure>/cell<N>/SR<N>.tif      float32 (8*size, 8*size): render of SR_locs.csv
    <Structure>/cell<N>/SR_locs.csv    ThunderSTORM CSV, quoted header, ids 1-based with gaps

for the six structures ``CCPs``, ``ER-sec61β`` (Greek beta, U+03B2; ``ER-sec61b`` with
``ascii_names=True``), ``ER-KDEL``, ``Microtubules``, ``OMM-tomm20`` and ``IMM-cox8a``.

What the images model. Each cell has a fixed set of labelled sites laid out like the
structure (clathrin-coated pits as ~80-180 nm hollow caps; ER as a network of curved
tubules with a few sheets, labelled on the membrane for sec61β and in the lumen for KDEL;
microtubules as long stiff hollow filaments; mitochondria as curved tubes, labelled on the
outer surface for TOM20 and on the inner membrane and its transverse cristae for COX8A),
inside a cell outline. The camera records blinking: in every 50 ms frame a sparse random
subset of the sites is on (some stay on for consecutive frames), each emitting a
log-normally distributed number of photons through a Gaussian PSF of sigma 1.0-1.3 camera
pixels, over a cell-shaped background with out-of-focus haze; then shot noise, sCMOS read
noise and the camera's gain and offset (``counts = electrons / 0.23 + 100``, clipped to
100..65535, so ``photons ~ (counts - 100) * 0.23`` as in the dataset notes). The CSV lists
the detected on-events (bright enough, inside the field), as ThunderSTORM would: true
position plus a localisation error drawn from the Thompson/Mortensen precision of that
event (typically 10-20 nm), with fitted sigma, intensity, offset, bkgstd, chi2 and
uncertainty columns; about 0.1-1 % of the ids are then dropped, as ThunderSTORM's
filtering leaves gaps. SR<N> is rendered from exactly the CSV values (see ``render_sr``).

Coordinates. ``x [nm]``/``y [nm]`` are measured from the top-left corner of the raw image:
camera pixel ``i`` covers ``[i*130, (i+1)*130)`` nm (ImageJ convention, the one
ThunderSTORM writes). SR pixel ``k`` covers ``[k*16.25, (k+1)*16.25)`` nm.

SR render rule (``SR_RENDER_RULE``, implemented by ``render_sr``), exact enough for an
ingest to re-render and compare with ``numpy.allclose``:

1. every CSV row adds 1.0 to ``H[floor(y_nm / 16.25), floor(x_nm / 16.25)]`` (float64,
   ``8*size`` square; rows outside are ignored);
2. ``H`` is convolved with the normalised 7-tap Gaussian ``k[t] = exp(-t**2 / 2)`` for
   ``t = -3..3`` (sigma 1 SR pixel = 16.25 nm), divided by its sum, with zeros beyond the
   edges, first along x (axis 1), then along y (axis 0);
3. the result is cast to float32.

That is ``cloudmic.render(locs, 16.25, shape=(8*size, 8*size), method="gaussian")`` (sigma
one pixel, cut at 3 sigma) cast to float32; the tests check that they agree.

Each cell draws from its own random streams keyed by (seed, structure, cell number), so
its bytes do not depend on which other structures or cells are written, nor on the
folder spelling or CSV variant (only the CSV's columns change with those).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import tifffile
from numpy.typing import ArrayLike, NDArray

from cloudmic.synth.optics import (
    gaussian_blur,
    gaussian_spots,
    random_filaments,
    sample_path,
    splat,
    tube_points,
)

__all__ = [
    "ASCII_NAMES",
    "CAMERA_OFFSET",
    "E_PER_COUNT",
    "SR_PIXEL_NM",
    "SR_RENDER_RULE",
    "SR_RENDER_SIGMA_PX",
    "SR_RENDER_TAPS",
    "SR_SCALE",
    "STRUCTURES",
    "WF_PIXEL_NM",
    "csv_columns",
    "render_sr",
    "synth_dl_smlm",
]

log = logging.getLogger(__name__)

STRUCTURES: tuple[str, ...] = (
    "CCPs",
    "ER-sec61\u03b2",
    "ER-KDEL",
    "Microtubules",
    "OMM-tomm20",
    "IMM-cox8a",
)
ASCII_NAMES: dict[str, str] = {"ER-sec61\u03b2": "ER-sec61b"}
_ALIASES = {v: k for k, v in ASCII_NAMES.items()}

# Camera (Hamamatsu ORCA-Fusion BT, bin 2) and sampling.
WF_PIXEL_NM = 130.0
SR_SCALE = 8
SR_PIXEL_NM = WF_PIXEL_NM / SR_SCALE  # 16.25
CAMERA_OFFSET = 100  # counts
E_PER_COUNT = 0.23  # electrons per count
READ_NOISE_E = 1.0  # rms, per pixel and frame

# SR render (module docstring, "SR render rule").
SR_RENDER_SIGMA_PX = 1.0
SR_RENDER_TAPS = 7
SR_RENDER_RULE = (
    "H[floor(y_nm/16.25), floor(x_nm/16.25)] += 1 per CSV row (float64, rows outside the "
    "8*size square ignored); convolve with the normalised 7-tap Gaussian exp(-t^2/2), "
    "t=-3..3 (sigma 1 SR px), zero beyond the edges, along x (axis 1) then y (axis 0); "
    "cast to float32"
)

# Blinking and photons.
PSF_SIGMA_PX = (1.0, 1.3)  # per cell, camera pixels
ON_DENSITY_PER_UM2 = (0.4, 0.8)  # on-events per um^2 of cell per frame
P_STAY_ON = 0.3  # chance an on-emitter is still on in the next frame
PHOTONS_MEDIAN = (350.0, 800.0)  # per cell; per event log-normal around it
PHOTONS_LOG_SD = 0.6
DETECT_PHOTONS = 150.0  # dimmer events are not found by the detector
BACKGROUND_PHOTONS = (30.0, 90.0)  # per pixel and frame inside the cell
OUTSIDE_BACKGROUND = 0.3  # relative background outside the cell
HAZE_FRACTION = 0.4  # out-of-focus light from the structure, relative to the background
FIT_WINDOW_PX = 11  # ThunderSTORM default fitting radius 5 -> 11x11 pixels
MARGIN_PX = 6  # emitters this far outside the field still shine into it

MAX_SIZE = 512
MAX_FRAMES = 10_000
MAX_CELLS = 9_999

UncertaintyName = Literal["uncertainty_xy", "uncertainty"]
_UNCERTAINTY_NAMES = ("uncertainty_xy", "uncertainty")
_FILES_PER_CELL = 4


@dataclass(frozen=True, slots=True)
class _Cell:
    """One cell's scene: label sites (nm, ``(y, x)``) and acquisition parameters."""

    sites: NDArray[np.float64]
    psf_sigma_px: float
    background: NDArray[np.float64]  # photons per pixel and frame, (size, size)
    photons_median: float
    on_per_frame: float


@dataclass(frozen=True, slots=True)
class _Events:
    """Every on-event of the stack, in frame order."""

    frame: NDArray[np.int64]  # 1-based
    site: NDArray[np.int64]
    photons: NDArray[np.float64]


def csv_columns(
    uncertainty_name: UncertaintyName = "uncertainty_xy", chi2: bool = True
) -> list[str]:
    """The SR_locs.csv header, unquoted: ThunderSTORM's 2-D MLE export, or the variant."""
    cols = ["id", "frame", "x [nm]", "y [nm]", "sigma [nm]", "intensity [photon]"]
    cols += ["offset [photon]", "bkgstd [photon]"]
    if chi2:
        cols.append("chi2")
    cols.append(f"{uncertainty_name} [nm]")
    return cols


def render_sr(x_nm: ArrayLike, y_nm: ArrayLike, size: int) -> NDArray[np.float32]:
    """The SR<N> image of localisations at ``x_nm``, ``y_nm``: ``SR_RENDER_RULE``.

    ``size`` is the widefield side in camera pixels; the result is ``(8*size, 8*size)``.
    Adding the 7x7 kernel ``outer(k, k)`` at each localisation's pixel is the same sum as
    convolving the histogram separably; this does the former (the histogram is sparse).
    """
    side = int(size) * SR_SCALE
    x = np.asarray(x_nm, dtype=np.float64).ravel()
    y = np.asarray(y_nm, dtype=np.float64).ravel()
    col = np.floor(x / SR_PIXEL_NM)
    row = np.floor(y / SR_PIXEL_NM)
    inside = (col >= 0) & (col < side) & (row >= 0) & (row < side)
    row = row[inside].astype(np.int64)
    col = col[inside].astype(np.int64)
    half = SR_RENDER_TAPS // 2
    t = np.arange(-half, half + 1)
    kernel = np.exp(-0.5 * (t / SR_RENDER_SIGMA_PX) ** 2)
    kernel /= kernel.sum()
    rr = row[:, None, None] + t[None, :, None]
    cc = col[:, None, None] + t[None, None, :]
    ok = (rr >= 0) & (rr < side) & (cc >= 0) & (cc < side)
    weights = np.broadcast_to(np.outer(kernel, kernel), ok.shape)[ok]
    image = np.bincount((rr * side + cc)[ok], weights, minlength=side * side)
    return image.reshape(side, side).astype(np.float32)


def synth_dl_smlm(
    out: Path | str,
    *,
    structures: Iterable[str] = STRUCTURES,
    cells: int = 2,
    frames: int = 100,
    size: int = 256,
    seed: int = 0,
    ascii_names: bool = False,
    uncertainty_name: UncertaintyName = "uncertainty_xy",
    chi2: bool = True,
    zipped: bool = False,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Write a synthetic DL-SMLM tree: ``out/<Structure>/cell<N>/`` for N in 1..cells.

    Args:
        out: the dataset root (the folder the structure zips unpack into); created if
            missing.
        structures: which of the six structures to write (``STRUCTURES``; ``ER-sec61b`` is
            accepted for ``ER-sec61β``).
        cells: cells per structure (``cell1`` .. ``cell<cells>``).
        frames: raw frames per cell (published: 100).
        size: widefield side in 130 nm pixels (published: 256); SR is ``8*size``.
        seed: same seed, same bytes.
        ascii_names: name the ER-sec61β folder ``ER-sec61b``.
        uncertainty_name: last CSV column, ``"uncertainty_xy"`` (``[nm]`` is appended) or
            ``"uncertainty"`` (older ThunderSTORM).
        chi2: write the ``chi2`` column.
        zipped: publish each structure as figshare does, ``out/<Structure>.zip`` holding
            ``<Structure>/cell<N>/...``, with no unpacked folder left.
        progress: called with the number of files written since its previous call.

    Returns:
        ``{"root", "files", "bytes", "structures": {folder: cells}, "cells", "frames",
        "size", "localizations", "columns"}``.

    Raises:
        ValueError: a bad argument (the message says what to pass).
        FileExistsError: a structure folder holds cell folders this run would not write.
    """
    names = _check_args(
        structures=structures,
        cells=cells,
        frames=frames,
        size=size,
        seed=seed,
        ascii_names=ascii_names,
        uncertainty_name=uncertainty_name,
        chi2=chi2,
    )
    root = Path(out)
    folders = {
        name: root / (ASCII_NAMES.get(name, name) if ascii_names else name) for name in names
    }
    for folder in folders.values():
        _refuse_stale(folder, cells)
    columns = csv_columns(uncertainty_name, chi2)

    files = nbytes = locs = 0
    for name, folder in folders.items():
        code = STRUCTURES.index(name) + 1
        for n in range(1, cells + 1):
            cell_dir = folder / f"cell{n}"
            cell_dir.mkdir(parents=True, exist_ok=True)
            written, count = _write_cell(cell_dir, n, code, name, seed, frames, size, columns)
            for size_bytes in written:
                nbytes += size_bytes
                files += 1
                if progress is not None:
                    progress(1)
            locs += count
    log.info("wrote %d files (%d bytes) of synthetic DL-SMLM to %s", files, nbytes, root)
    zips = [str(_zip_folder(folder)) for folder in folders.values()] if zipped else []
    return {
        "zips": zips,
        "root": str(root),
        "files": files,
        "bytes": nbytes,
        "structures": {folder.name: cells for folder in folders.values()},
        "cells": cells * len(folders),
        "frames": frames,
        "size": size,
        "localizations": locs,
        "columns": columns,
    }


def _check_args(
    *,
    structures: object,
    cells: object,
    frames: object,
    size: object,
    seed: object,
    ascii_names: object,
    uncertainty_name: object,
    chi2: object,
) -> list[str]:
    known = ", ".join(STRUCTURES)
    if isinstance(structures, str | bytes) or not isinstance(structures, Iterable):
        raise ValueError(
            f"structures must be a list or tuple of structure names (some of: {known}), "
            f"e.g. ('CCPs',), got {structures!r}"
        )
    names: list[str] = []
    for s in structures:
        name = _ALIASES.get(s, s) if isinstance(s, str) else s
        if name not in STRUCTURES:
            raise ValueError(
                f"unknown DL-SMLM structure {s!r}; pass some of: {known} "
                f"(ER-sec61b is accepted for ER-sec61\u03b2)"
            )
        if name in names:
            raise ValueError(f"structure {s!r} is listed twice; list each structure once")
        names.append(name)
    if not names:
        raise ValueError(f"structures is empty; pass at least one of: {known}")
    for arg, value, low, high, why in (
        ("cells", cells, 0, MAX_CELLS, "cells per structure"),
        ("frames", frames, 1, MAX_FRAMES, "raw frames per cell; the published stacks have 100"),
        ("size", size, 16, MAX_SIZE, "widefield pixels per side; the published images have 256"),
    ):
        if not _is_int(value) or not low <= value <= high:
            raise ValueError(
                f"{arg} must be a whole number from {low} to {high:_} ({why}), got {value!r}"
            )
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    for arg, value in (("ascii_names", ascii_names), ("chi2", chi2)):
        if not isinstance(value, bool | np.bool_):
            raise ValueError(f"{arg} must be True or False, got {value!r}")
    if uncertainty_name not in _UNCERTAINTY_NAMES:
        raise ValueError(
            "uncertainty_name must be 'uncertainty_xy' (ThunderSTORM >= 1.3 MLE export, "
            f"column 'uncertainty_xy [nm]') or 'uncertainty' (column 'uncertainty [nm]'), "
            f"got {uncertainty_name!r}"
        )
    return names


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _refuse_stale(folder: Path, cells: int) -> None:
    if not folder.is_dir():
        return
    stale = sorted(
        p.name
        for p in folder.iterdir()
        if p.is_dir()
        and p.name.startswith("cell")
        and not (p.name[4:].isdigit() and 1 <= int(p.name[4:]) <= cells)
    )
    if stale:
        raise FileExistsError(
            f"{folder}: holds cell folder(s) this run would not write (e.g. {stale[0]}), left "
            f"by a run with more cells. Mixing them would give a tree with inconsistent "
            f"contents; write to an empty folder or delete {folder} first."
        )


def _rng(seed: int, code: int, cell: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(code, cell, stream)))


# ---- one cell ----------------------------------------------------------------------------


def _write_cell(
    cell_dir: Path,
    n: int,
    code: int,
    name: str,
    seed: int,
    frames: int,
    size: int,
    columns: list[str],
) -> tuple[list[int], int]:
    """Write the four files of one cell; return their sizes and the number of CSV rows."""
    cell = _scene(_rng(seed, code, n, 0), name, size)
    events = _blink(_rng(seed, code, n, 1), cell, frames)
    table = _localize(_rng(seed, code, n, 2), cell, events, size)

    wf_sum = np.zeros((size, size), dtype=np.float64)

    def raw_frames() -> Iterator[NDArray[np.uint16]]:
        px = cell.sites[events.site] / WF_PIXEL_NM - 0.5  # pixel i is centred on i
        bounds = np.searchsorted(events.frame, np.arange(1, frames + 2))
        for t in range(1, frames + 1):
            on = slice(bounds[t - 1], bounds[t])
            # One noise stream per frame: a frame's bytes do not depend on the others.
            frame = _frame(_rng(seed, code, n, 1000 + t), cell, px[on], events.photons[on], size)
            wf_sum[...] += frame  # integers: exact in float64
            yield frame

    sizes = [
        _write_tiff(
            cell_dir / "WF_raw.tif", raw_frames(), shape=(frames, size, size), dtype=np.uint16
        ),
        _write_tiff(cell_dir / f"WF{n}.tif", wf_sum.astype(np.float32)),
        _write_tiff(cell_dir / f"SR{n}.tif", render_sr(table["x"], table["y"], size)),
        _write_csv(cell_dir / "SR_locs.csv", table, columns),
    ]
    return sizes, len(table["id"])


def _scene(rng: np.random.Generator, name: str, size: int) -> _Cell:
    width = size * WF_PIXEL_NM
    inside = _cell_outline(rng, width)
    sites = _SITES[name](rng, width)
    margin = MARGIN_PX * WF_PIXEL_NM
    keep = inside(sites) & np.all((sites >= -margin) & (sites < width + margin), axis=1)
    sites = sites[keep]

    # Background: brighter inside the cell (soft edge, slow ripples), plus haze from the
    # out-of-focus parts of the structure itself.
    yy, xx = np.mgrid[0:size, 0:size]
    centres = (np.stack([yy.ravel(), xx.ravel()], axis=1) + 0.5) * WF_PIXEL_NM
    mask = inside(centres).reshape(size, size).astype(np.float64)
    soft = gaussian_blur(OUTSIDE_BACKGROUND + (1 - OUTSIDE_BACKGROUND) * mask, 6.0)
    ripple = gaussian_blur(rng.standard_normal((size, size)), size / 8, mode="wrap")
    ripple /= max(float(ripple.std()), 1e-12)
    level = rng.uniform(*BACKGROUND_PHOTONS)
    background = level * soft * np.clip(1 + 0.15 * ripple, 0.5, None)
    density = splat(sites / WF_PIXEL_NM - 0.5, 1.0, (size, size))
    haze = gaussian_blur(density, 6.0)
    top = float(np.percentile(haze, 99.5)) if haze.any() else 0.0
    if top > 0:
        background = background + HAZE_FRACTION * level * np.clip(haze / top, 0, 1.5)

    cell_area_um2 = float(mask.mean()) * (width / 1000) ** 2
    return _Cell(
        sites=sites,
        psf_sigma_px=float(rng.uniform(*PSF_SIGMA_PX)),
        background=background,
        photons_median=float(rng.uniform(*PHOTONS_MEDIAN)),
        on_per_frame=float(rng.uniform(*ON_DENSITY_PER_UM2)) * cell_area_um2,
    )


def _cell_outline(rng: np.random.Generator, width: float):
    """A wobbly round cell outline around the field; returns ``inside((y, x) nm) -> bool``."""
    cy, cx = width / 2 + rng.normal(0, 0.1 * width, 2)
    radius = rng.uniform(0.45, 0.75) * width
    harmonics = [(k, rng.normal(0, 0.08 / k), rng.uniform(0, 2 * math.pi)) for k in range(2, 6)]

    def inside(points: NDArray[np.float64]) -> NDArray[np.bool_]:
        dy, dx = points[:, 0] - cy, points[:, 1] - cx
        theta = np.arctan2(dy, dx)
        edge = radius * (1 + sum(a * np.cos(k * theta + p) for k, a, p in harmonics))
        return np.hypot(dy, dx) < edge

    return inside


def _blink(rng: np.random.Generator, cell: _Cell, frames: int) -> _Events:
    """Which sites are on in each frame, and how many photons each on-event gives."""
    n_sites = len(cell.sites)
    frame_ids, site_ids, photons = [], [], []
    on = np.zeros(0, dtype=np.int64)
    for t in range(1, frames + 1):
        stay = on[rng.random(len(on)) < P_STAY_ON]
        fresh = rng.poisson(cell.on_per_frame * (1 - P_STAY_ON)) if n_sites else 0
        new = rng.integers(0, max(n_sites, 1), fresh)
        on = np.unique(np.concatenate([stay, new]))
        frame_ids.append(np.full(len(on), t, dtype=np.int64))
        site_ids.append(on)
        photons.append(rng.lognormal(math.log(cell.photons_median), PHOTONS_LOG_SD, len(on)))
    return _Events(
        frame=np.concatenate(frame_ids),
        site=np.concatenate(site_ids).astype(np.int64),
        photons=np.concatenate(photons),
    )


def _frame(
    rng: np.random.Generator,
    cell: _Cell,
    px: NDArray[np.float64],
    photons: NDArray[np.float64],
    size: int,
) -> NDArray[np.uint16]:
    """One raw frame: the on-emitters at ``px`` (camera pixels) over the background."""
    spots = gaussian_spots(px, photons, cell.psf_sigma_px, (size, size))
    electrons = rng.poisson(spots + cell.background)
    read = rng.normal(0.0, READ_NOISE_E, (size, size))
    counts = np.round((electrons + read) / E_PER_COUNT) + CAMERA_OFFSET
    return np.clip(counts, CAMERA_OFFSET, 65535).astype(np.uint16)


def _precision_nm(photons, sigma_nm, bkgstd):
    """Lateral localisation precision (nm) of a 2-D Gaussian MLE fit on an sCMOS camera.

    Thompson et al. 2002 with Mortensen et al. 2010's pixelation term, the formula
    ThunderSTORM reports as ``uncertainty_xy`` (no EM excess-noise factor).
    """
    a = WF_PIXEL_NM
    s2 = sigma_nm**2 + a**2 / 12
    n = np.maximum(photons, 1.0)
    return np.sqrt(s2 / n * (1 + 8 * math.pi * s2 * bkgstd**2 / (n * a**2)))


def _localize(
    rng: np.random.Generator, cell: _Cell, events: _Events, size: int
) -> dict[str, NDArray]:
    """ThunderSTORM's table for the detected events: fitted values, ids with gaps."""
    width = size * WF_PIXEL_NM
    bright = events.photons >= DETECT_PHOTONS
    frame = events.frame[bright]
    truth = cell.sites[events.site[bright]]
    photons = events.photons[bright]
    n = len(frame)

    row = np.clip((truth[:, 0] / WF_PIXEL_NM).astype(np.int64), 0, size - 1)
    col = np.clip((truth[:, 1] / WF_PIXEL_NM).astype(np.int64), 0, size - 1)
    bg = cell.background[row, col]
    sigma_nm = cell.psf_sigma_px * WF_PIXEL_NM
    true_std = np.sqrt(bg + READ_NOISE_E**2)
    error = _precision_nm(photons, sigma_nm, true_std)
    y = truth[:, 0] + rng.normal(0, 1, n) * error
    x = truth[:, 1] + rng.normal(0, 1, n) * error

    sigma_fit = sigma_nm * np.exp(rng.normal(0, 0.06, n))
    intensity = photons * np.exp(rng.normal(0, 0.08, n))
    offset = np.clip(bg + rng.normal(0, 0.05, n) * bg, 0, None)
    bkgstd = true_std * np.exp(rng.normal(0, 0.1, n))
    chi2 = rng.chisquare(FIT_WINDOW_PX**2, n) * np.exp(rng.normal(0, 0.15, n))
    uncertainty = _precision_nm(intensity, sigma_fit, bkgstd)

    inside = (x >= 0) & (x < width) & (y >= 0) & (y < width)
    order = np.lexsort((x[inside], frame[inside]))  # by frame, then x: ThunderSTORM's order

    def take(a: NDArray) -> NDArray:
        return a[inside][order]

    table = {
        "frame": take(frame),
        "x": take(x),
        "y": take(y),
        "sigma": _rounded(take(sigma_fit)),
        "intensity": _rounded(take(intensity)),
        "offset": _rounded(take(offset)),
        "bkgstd": _rounded(take(bkgstd)),
        "chi2": _rounded(take(chi2)),
        "uncertainty": _rounded(take(uncertainty)),
    }
    # ThunderSTORM numbers every fit, then filtering removes some rows: ids keep gaps.
    total = len(table["frame"])
    ids = np.arange(1, total + 1, dtype=np.int64)
    drop = 0
    if total >= 2:
        drop = max(1, int(round(rng.uniform(0.001, 0.01) * total)))
    keep = np.ones(total, dtype=bool)
    keep[rng.choice(total, size=drop, replace=False)] = False
    table = {k: v[keep] for k, v in table.items()}
    table["id"] = ids[keep]
    return table


def _rounded(a: NDArray[np.float64]) -> NDArray[np.float64]:
    """Values as written with 3 decimals (so the arrays equal what the CSV parses back to)."""
    return np.round(a, 3)


# ---- structures (label sites in nm, (y, x)) ------------------------------------------------


def _ccps(rng: np.random.Generator, width: float) -> NDArray[np.float64]:
    """Clathrin-coated pits: hollow spherical caps 80-180 nm across, plus small clusters."""
    area = (width / 1000) ** 2
    count = rng.poisson(rng.uniform(0.6, 1.4) * area)
    centres = rng.uniform(0, width, (count, 2))
    radius = rng.uniform(40, 90, count)
    # Uniform on a spherical cap z >= cap: z is uniform there (Archimedes), the azimuth too.
    cap = rng.uniform(-0.6, 0.6, count)  # from shallow pits to nearly closed vesicles
    per_pit = rng.poisson(35 * (radius / 65) ** 2) + 4
    pit = np.repeat(np.arange(count), per_pit)
    z = rng.uniform(cap[pit], 1.0)
    phi = rng.uniform(0, 2 * math.pi, len(pit))
    ring = np.sqrt(1 - z**2)[:, None] * np.stack([np.sin(phi), np.cos(phi)], axis=1)
    pits = centres[pit] + ring * radius[pit, None]
    pits += rng.normal(0, 8, pits.shape)  # antibody linkage
    small = rng.uniform(0, width, (rng.poisson(0.8 * area), 2))
    blobs = np.repeat(small, 6, axis=0) + rng.normal(0, 25, (len(small) * 6, 2))
    return np.concatenate([pits, blobs])


def _tube_sites(
    rng: np.random.Generator,
    paths: list[NDArray[np.float64]],
    radius: float | NDArray[np.float64],
    per_nm: float,
    *,
    lumen: bool = False,
    taper: bool = False,
    jitter: float = 6.0,
) -> NDArray[np.float64]:
    """Label sites (nm) on tube walls or lumens along paths, sampled every 5 nm."""
    return tube_points(
        rng, paths, radius, per_nm, step=5.0, lumen=lumen, taper=taper, jitter=jitter
    )


def _er_network(rng: np.random.Generator, width: float) -> list[NDArray[np.float64]]:
    """ER tubules: junctions joined to their nearest neighbours by gently curved arcs."""
    pad = 1500.0
    span = width + 2 * pad
    nodes = rng.uniform(-pad, width + pad, (rng.poisson(0.7 * (span / 1000) ** 2), 2))
    if len(nodes) < 4:
        return []
    edges: set[tuple[int, int]] = set()
    for lo in range(0, len(nodes), 512):
        d = np.linalg.norm(nodes[lo : lo + 512, None, :] - nodes[None, :, :], axis=2)
        d[np.arange(d.shape[0]), np.arange(lo, lo + d.shape[0])] = np.inf
        near = np.argpartition(d, 3, axis=1)[:, :3]
        for i, row in enumerate(near):
            for j in row:
                if d[i, j] < 3000 and rng.random() < 0.9:
                    edges.add((min(lo + i, int(j)), max(lo + i, int(j))))
    paths = []
    s = np.linspace(0, 1, 24)[:, None]
    for i, j in sorted(edges):
        a, b = nodes[i], nodes[j]
        chord = b - a
        bend = np.array([chord[1], -chord[0]]) * rng.normal(0, 0.18)
        ctrl = (a + b) / 2 + bend
        paths.append((1 - s) ** 2 * a + 2 * (1 - s) * s * ctrl + s**2 * b)
    return paths


def _er(rng: np.random.Generator, width: float, *, lumen: bool) -> NDArray[np.float64]:
    paths = _er_network(rng, width)
    tubes = _tube_sites(rng, paths, rng.uniform(30, 50), 0.12, lumen=lumen)
    # A few sheets (perinuclear cisternae): filled patches, denser for the lumen marker.
    sheets = []
    for _ in range(rng.integers(1, 4)):
        c = rng.uniform(0.2 * width, 0.8 * width, 2)
        ry, rx = rng.uniform(800, 2500, 2)
        count = rng.poisson((1.0 if lumen else 0.6) * ry * rx / 1000)
        r = np.sqrt(rng.random(count))
        theta = rng.uniform(0, 2 * math.pi, count)
        sheets.append(c + np.stack([ry * r * np.sin(theta), rx * r * np.cos(theta)], axis=1))
    return np.concatenate([tubes, *sheets])


def _microtubules(rng: np.random.Generator, width: float) -> NDArray[np.float64]:
    """Long stiff hollow filaments (~25 nm tube plus antibodies: walls ~25 nm off-axis)."""
    area = (width / 1000) ** 2
    mean_length = 15_000.0
    count = max(int(rng.poisson(1.2 * area * 1000 / mean_length)), 1)
    paths = random_filaments(
        rng,
        (width, width),
        count,
        persistence_px=(5_000.0, 20_000.0),
        length_px=(5_000.0, 25_000.0),
        step_px=20.0,
        smooth_px=400.0,
    )
    return _tube_sites(rng, paths, 25.0, 0.1, jitter=5.0)


def _mitochondria(
    rng: np.random.Generator, width: float
) -> tuple[list[NDArray[np.float64]], NDArray[np.float64]]:
    area = (width / 1000) ** 2
    count = max(int(rng.poisson(0.12 * area)), 1)
    paths = random_filaments(
        rng,
        (width, width),
        count,
        persistence_px=(1_500.0, 5_000.0),
        length_px=(800.0, 5_000.0),
        step_px=20.0,
        smooth_px=300.0,
    )
    return paths, rng.uniform(120, 250, count)


def _omm(rng: np.random.Generator, width: float) -> NDArray[np.float64]:
    """Outer mitochondrial membrane (TOM20): the surface of curved tubes, rounded ends."""
    paths, radii = _mitochondria(rng, width)
    return _tube_sites(rng, paths, radii, 0.006 * radii.mean(), taper=True, jitter=10.0)


def _imm(rng: np.random.Generator, width: float) -> NDArray[np.float64]:
    """Inner membrane (COX8A): an inner wall plus transverse cristae ~80-150 nm apart."""
    paths, radii = _mitochondria(rng, width)
    inner = 0.85 * radii
    wall = _tube_sites(rng, paths, inner, 0.003 * inner.mean(), taper=True, jitter=8.0)
    cristae = []
    for path, r in zip(paths, inner, strict=True):
        pts, normal, arc = sample_path(path, 5.0)
        if not len(pts):
            continue
        spacing = rng.uniform(80, 150)
        for s in np.arange(rng.uniform(0, spacing), arc[-1], spacing):
            k = int(np.searchsorted(arc, s).clip(0, len(pts) - 1))
            u = s / max(arc[-1], 1e-9)
            half = r * math.sqrt(max(1 - (2 * u - 1) ** 8, 0.0)) * rng.uniform(0.6, 1.0)
            count = rng.poisson(half / 8)
            lateral = rng.uniform(-half, half, count)
            tilt = rng.normal(0, 0.2)
            along = np.array([-normal[k, 1], normal[k, 0]])  # the tangent
            cristae.append(
                pts[k]
                + normal[k] * lateral[:, None]
                + along * (tilt * lateral)[:, None]
                + rng.normal(0, 8, (count, 2))
            )
    return np.concatenate([wall, *cristae])


_SITES: dict[str, Callable[[np.random.Generator, float], NDArray[np.float64]]] = {
    "CCPs": _ccps,
    "ER-sec61\u03b2": lambda rng, w: _er(rng, w, lumen=False),
    "ER-KDEL": lambda rng, w: _er(rng, w, lumen=True),
    "Microtubules": _microtubules,
    "OMM-tomm20": _omm,
    "IMM-cox8a": _imm,
}


# ---- writers -----------------------------------------------------------------------------


def _write_tiff(path: Path, data, **kwargs) -> int:
    """Write a plain (uncompressed, no ImageJ/shaped metadata) TIFF atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tifffile.imwrite(
            tmp, data, photometric="minisblack", metadata=None, software=False, **kwargs
        )
    except BaseException:
        tmp.unlink(missing_ok=True)  # nothing half-written is left behind
        raise
    os.replace(tmp, path)
    return path.stat().st_size


def _zip_folder(folder: Path) -> Path:
    """``folder`` -> ``folder.zip`` with members under ``<folder name>/``, then no folder.
    Members are sorted and dated 1980-01-01, so the same tree gives the same bytes."""
    path = folder.with_name(f"{folder.name}.zip")
    tmp = path.with_name(f".{path.name}.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(p for p in folder.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(f.relative_to(folder.parent).as_posix())
            info.compress_type = zipfile.ZIP_DEFLATED
            with open(f, "rb") as src, zf.open(info, "w") as dst:
                shutil.copyfileobj(src, dst)
    os.replace(tmp, path)
    shutil.rmtree(folder)
    return path


def _number(v: float) -> str:
    """A 3-decimal value as ThunderSTORM prints it: ``5.313``, ``105.11``, ``0``."""
    text = repr(v)  # shortest round-trip text; v is already rounded to 3 decimals
    return text[:-2] if text.endswith(".0") else text


def _coordinate(v: float) -> str:
    """Shortest text that parses back to exactly ``v``, never in exponent notation."""
    text = repr(v)
    return np.format_float_positional(v, unique=True, trim="-") if "e" in text else text


def _write_csv(path: Path, table: dict[str, NDArray], columns: list[str]) -> int:
    """ThunderSTORM's CSV: quoted header, ``,`` separated, no index column, LF endings."""
    keys = ["sigma", "intensity", "offset", "bkgstd"]
    keys += ["chi2"] if "chi2" in columns else []
    keys += ["uncertainty"]
    cells = [
        list(map(str, table["id"].tolist())),
        list(map(str, table["frame"].tolist())),
        list(map(_coordinate, table["x"].tolist())),
        list(map(_coordinate, table["y"].tolist())),
        *(list(map(_number, table[k].tolist())) for k in keys),
    ]
    header = ",".join(f'"{c}"' for c in columns)
    text = "\n".join([header, *map(",".join, zip(*cells, strict=True))]) + "\n"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(text.encode("utf-8"))
    os.replace(tmp, path)
    return path.stat().st_size
