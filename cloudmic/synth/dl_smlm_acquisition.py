"""What DL-SMLM's camera records of a cell, and what ThunderSTORM finds in it.

A cell is its label sites (``dl_smlm_structures``) inside a wobbly outline, over a
cell-shaped background with out-of-focus haze. In every 50 ms frame a sparse random subset
of the sites is on (some stay on for consecutive frames), each emitting a log-normally
distributed number of photons through a Gaussian PSF of sigma 1.0-1.3 camera pixels; then
shot noise, sCMOS read noise and the camera's gain and offset (``counts = electrons / 0.23
+ 100``, clipped to 100..65535, so ``photons ~ (counts - 100) * 0.23`` as in the dataset
notes). The localisation table lists the detected on-events (bright enough, inside the
field), as ThunderSTORM would: true position plus a localisation error drawn from the
Thompson/Mortensen precision of that event (typically 10-20 nm), with fitted sigma,
intensity, offset, bkgstd, chi2 and uncertainty columns; about 0.1-1 % of the ids are then
dropped, as ThunderSTORM's filtering leaves gaps. Coordinates are nm from the top-left
corner of the raw image: camera pixel ``i`` covers ``[i*130, (i+1)*130)`` nm (ImageJ
convention, the one ThunderSTORM writes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from cloudmic.synth.dl_smlm_structures import SITES
from cloudmic.synth.optics import gaussian_blur, gaussian_spots, splat

__all__ = [
    "CAMERA_OFFSET",
    "E_PER_COUNT",
    "WF_PIXEL_NM",
    "Cell",
    "Events",
    "blink",
    "camera_frame",
    "draw_cell",
    "localize",
]

# Camera (Hamamatsu ORCA-Fusion BT, bin 2).
WF_PIXEL_NM = 130.0
CAMERA_OFFSET = 100  # counts
E_PER_COUNT = 0.23  # electrons per count
READ_NOISE_E = 1.0  # rms, per pixel and frame

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


@dataclass(frozen=True, slots=True)
class Cell:
    """One cell's scene: label sites (nm, ``(y, x)``) and acquisition parameters."""

    sites: NDArray[np.float64]
    psf_sigma_px: float
    background: NDArray[np.float64]  # photons per pixel and frame, (size, size)
    photons_median: float
    on_per_frame: float


@dataclass(frozen=True, slots=True)
class Events:
    """Every on-event of the stack, in frame order."""

    frame: NDArray[np.int64]  # 1-based
    site: NDArray[np.int64]
    photons: NDArray[np.float64]



def draw_cell(rng: np.random.Generator, name: str, size: int) -> Cell:
    """Structure ``name`` in a ``size``-pixel field: sites, background, PSF, photons."""
    width = size * WF_PIXEL_NM
    inside = _cell_outline(rng, width)
    sites = SITES[name](rng, width)
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
    return Cell(
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


def blink(rng: np.random.Generator, cell: Cell, frames: int) -> Events:
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
    return Events(
        frame=np.concatenate(frame_ids),
        site=np.concatenate(site_ids).astype(np.int64),
        photons=np.concatenate(photons),
    )


def camera_frame(
    rng: np.random.Generator,
    cell: Cell,
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


def localize(
    rng: np.random.Generator, cell: Cell, events: Events, size: int
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
