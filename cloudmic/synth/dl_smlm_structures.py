"""Where the labels sit in each of DL-SMLM's six structures (label sites in nm, ``(y, x)``).

One function per structure draws the fixed set of labelled sites of a cell's field of
view: clathrin-coated pits as ~80-180 nm hollow caps; ER as a network of curved tubules
with a few sheets, labelled on the membrane for sec61β and in the lumen for KDEL;
microtubules as long stiff hollow filaments; mitochondria as curved tubes, labelled on the
outer surface for TOM20 and on the inner membrane and its transverse cristae for COX8A.
The camera model (``dl_smlm_acquisition``) then makes them blink; nothing here knows
about photons, pixels or files.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from cloudmic.synth.optics import random_filaments, sample_path, tube_points

__all__ = ["SITES", "STRUCTURES"]


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


def _filaments(
    rng: np.random.Generator,
    width: float,
    count: int,
    persistence_nm: tuple[float, float],
    length_nm: tuple[float, float],
    smooth_nm: float,
) -> list[NDArray[np.float64]]:
    """Worm-like paths (nm) across the field, traced in 20 nm steps (they bend over
    microns); ``_tube_sites`` resamples them every 5 nm to place the labels."""
    return random_filaments(
        rng,
        (width, width),
        count,
        persistence_px=persistence_nm,
        length_px=length_nm,
        step_px=20.0,
        smooth_px=smooth_nm,
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
    paths = _filaments(rng, width, count, (5_000.0, 20_000.0), (5_000.0, 25_000.0), 400.0)
    return _tube_sites(rng, paths, 25.0, 0.1, jitter=5.0)


def _mitochondria(
    rng: np.random.Generator, width: float
) -> tuple[list[NDArray[np.float64]], NDArray[np.float64]]:
    area = (width / 1000) ** 2
    count = max(int(rng.poisson(0.12 * area)), 1)
    paths = _filaments(rng, width, count, (1_500.0, 5_000.0), (800.0, 5_000.0), 300.0)
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


# Keyed by the published folder names (Greek beta included); their order is STRUCTURES.
SITES: dict[str, Callable[[np.random.Generator, float], NDArray[np.float64]]] = {
    "CCPs": _ccps,
    "ER-sec61\u03b2": lambda rng, w: _er(rng, w, lumen=False),
    "ER-KDEL": lambda rng, w: _er(rng, w, lumen=True),
    "Microtubules": _microtubules,
    "OMM-tomm20": _omm,
    "IMM-cox8a": _imm,
}

# The order numbers the structures' random streams: appending one keeps the others' bytes.
STRUCTURES: tuple[str, ...] = tuple(SITES)
