"""The clean label density of a STED-FM source image, one morphology per protein class.

Each class has its own morphology (``MORPHOLOGY``): microtubule bundles (tubulin,
live/sir-tubulin), curly networks (vimentin), the ~190 nm periodic rings of the axonal
membrane skeleton (beta2-spectrin, adducin, and some f-actin and sir-actin images),
dendritic actin with spines (f-actin, lifeact, sir-actin), synaptic nanocluster puncta
along dendrites (psd95, homer, gephyrin, glur1, bassoon, rim), vesicle clusters (vglut1,
vglut2, vgat), diffuse dendrites with spines (camkii, beta-camkii, map2), hollow
mitochondria (tom20), granules (FUS) and dotted membranes (nkcc2). Every scene in
``SCENES`` returns an (h, w) float image of label density (arbitrary units) that the optics
of ``sted_fm_sources`` then blur; lengths are given in um (or nm) and converted with the
source image's pixel size.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import numpy as np
from numpy.typing import NDArray

from cloudmic.synth.optics import (
    draw_paths,
    gaussian_blur,
    gaussian_spots,
    random_filaments,
    sample_path,
    smooth_noise,
    tube_points,
)

__all__ = ["MORPHOLOGY", "SCENES", "blur"]


def blur(image: NDArray[np.float64], sigma_px: float) -> NDArray[np.float64]:
    """Gaussian blur with zeros beyond the edges, on an FFT-friendly padded canvas."""
    h, w = image.shape
    pad = int(math.ceil(4 * sigma_px))
    canvas = np.zeros((_fast_size(h + 2 * pad), _fast_size(w + 2 * pad)))
    canvas[pad : pad + h, pad : pad + w] = image
    return gaussian_blur(canvas, sigma_px, mode="wrap")[pad : pad + h, pad : pad + w]


def _fast_size(n: int) -> int:
    """The smallest 2^a 3^b 5^c >= n (pocketfft is fastest on such lengths)."""
    best = 2 * n
    p2 = 1
    while p2 < 2 * n:
        p3 = p2
        while p3 < 2 * n:
            p5 = p3
            while p5 < n:
                p5 *= 5
            best = min(best, p5)
            p3 *= 3
        p2 *= 2
    return best


def _um(px_nm: float, microns: float) -> float:
    return microns * 1000.0 / px_nm


def _um_range(px_nm: float, microns: float | tuple[float, float]) -> float | tuple[float, float]:
    """``_um`` of a fixed value or of a (low, high) range to draw from."""
    if isinstance(microns, tuple):
        return (_um(px_nm, microns[0]), _um(px_nm, microns[1]))
    return _um(px_nm, microns)


def _field_um2(shape: tuple[int, int], px_nm: float) -> float:
    return shape[0] * shape[1] * (px_nm / 1000.0) ** 2


# Filaments traced in 1 px steps: ``_labelling`` takes their points to be 1 px apart.
_filaments = partial(random_filaments, step_px=1.0)


def _backbones(
    rng: np.random.Generator,
    shape: tuple[int, int],
    px_nm: float,
    count: int,
    persistence_um: tuple[float, float] = (8.0, 30.0),
) -> list[NDArray[np.float64]]:
    """Long, gently curved neurites crossing the field."""
    span = math.hypot(*shape)
    persistence, length = _um_range(px_nm, persistence_um), (2.5 * span, 3.5 * span)
    return _filaments(
        rng, shape, count, persistence_px=persistence, length_px=length, smooth_px=_um(px_nm, 0.5)
    )


def _labelling(rng: np.random.Generator, n: int, px_nm: float, amount: float = 0.5):
    """Patchy antibody labelling along a path of ``n`` points 1 px apart."""
    wobble = smooth_noise(rng, n, _um(px_nm, 0.08))
    wobble /= max(float(wobble.std()), 1e-12)
    return np.clip(1.0 + amount * wobble, 0.05, None)


def _spots(
    rng: np.random.Generator,
    shape: tuple[int, int],
    centres: NDArray[np.float64],
    radius_px: NDArray[np.float64],
    per_cluster: float,
    brightness: NDArray[np.float64] | float = 1.0,
) -> NDArray[np.float64]:
    """Clusters of small label spots (nanoclusters): Gaussian clouds of point sources."""
    if len(centres) == 0:
        return np.zeros(shape)
    n = rng.poisson(per_cluster, len(centres)) + 1
    owner = np.repeat(np.arange(len(centres)), n)
    r = np.broadcast_to(radius_px, (len(centres),))[owner]
    pts = centres[owner] + rng.normal(0, 1, (len(owner), 2)) * r[:, None]
    mass = np.broadcast_to(brightness, (len(centres),))[owner] * rng.lognormal(0, 0.4, len(owner))
    return gaussian_spots(pts, mass, 0.6, shape)


def _along(
    rng: np.random.Generator,
    paths: list[NDArray[np.float64]],
    spacing_px: float,
    offset_px: tuple[float, float],
) -> NDArray[np.float64]:
    """Random points along paths (mean ``spacing_px`` apart), pushed sideways by an offset
    drawn from ``offset_px`` to either side."""
    out = []
    for path in paths:
        pts, normal, _ = sample_path(path, 1.0)
        count = rng.poisson(len(pts) / spacing_px)
        if not len(pts) or not count:
            continue
        k = rng.integers(0, len(pts), count)
        side = rng.choice([-1.0, 1.0], count) * rng.uniform(*offset_px, count)
        out.append(pts[k] + normal[k] * side[:, None])
    return np.concatenate(out) if out else np.zeros((0, 2))


def _dendrite_fill(
    paths: list[NDArray[np.float64]], shape: tuple[int, int], width_px: float
) -> NDArray[np.float64]:
    return blur(draw_paths(paths, shape), width_px / 2.5)


def _scene_filaments(rng, shape, px_nm, protein):
    """Microtubules: bundles running along neurites, plus a few free ones."""
    backbones = _backbones(rng, shape, px_nm, int(rng.integers(1, 4)))
    paths = []
    for b in backbones:
        pts, normal, _ = sample_path(b, 1.0)
        width = _um(px_nm, rng.uniform(0.4, 1.2))
        for _ in range(int(rng.integers(6, 16))):
            drift = smooth_noise(rng, len(pts), _um(px_nm, 1.0))
            drift = drift / max(float(np.abs(drift).max()), 1e-12) * 0.15 * width
            offset = rng.uniform(-width / 2, width / 2) + drift
            start, stop = sorted(rng.integers(0, len(pts), 2))
            if stop - start > 20:
                paths.append((pts + normal * offset[:, None])[start:stop])
    count = int(rng.integers(0, 5))
    persistence, length = _um(px_nm, 5.0), _um_range(px_nm, (1.0, 6.0))
    paths += _filaments(
        rng, shape, count, persistence_px=persistence, length_px=length, smooth_px=_um(px_nm, 0.3)
    )
    weights = [_labelling(rng, len(p), px_nm) for p in paths]
    return draw_paths(paths, shape, weights=weights)


def _scene_vimentin(rng, shape, px_nm, protein):
    """Intermediate filaments: a dense, curly, crossing network."""
    count = max(int(rng.poisson(1.5 * _field_um2(shape, px_nm))), 3)
    persistence, length = _um_range(px_nm, (0.8, 2.5)), _um_range(px_nm, (2.0, 8.0))
    paths = _filaments(
        rng, shape, count, persistence_px=persistence, length_px=length, smooth_px=_um(px_nm, 0.15)
    )
    weights = [_labelling(rng, len(p), px_nm, 0.6) for p in paths]
    return draw_paths(paths, shape, weights=weights)


def _rings(
    rng: np.random.Generator,
    shape: tuple[int, int],
    px_nm: float,
    backbones: list[NDArray[np.float64]],
) -> NDArray[np.float64]:
    """The axonal membrane-associated periodic skeleton: rings every ~190 nm."""
    rings: list[NDArray[np.float64]] = []
    for b in backbones:
        pts, normal, arc = sample_path(b, 1.0)
        if not len(pts):
            continue
        period = rng.normal(190.0, 5.0) / px_nm
        width = _um(px_nm, rng.uniform(0.25, 0.6))
        phase = rng.uniform(0, period)
        # Periodic stretches with gaps, as real axons are only partly resolved.
        on = smooth_noise(rng, len(pts), _um(px_nm, 0.6)) > -0.3
        for s in np.arange(phase, arc[-1], period * rng.normal(1.0, 0.01)):
            k = min(int(s), len(pts) - 1)
            if not on[k]:
                continue
            tilt = rng.normal(0, 0.1)
            along = np.array([-normal[k, 1], normal[k, 0]])
            half = width / 2 * rng.uniform(0.8, 1.0)
            a = pts[k] - normal[k] * half - along * tilt * half
            z = pts[k] + normal[k] * half + along * tilt * half
            # Each ring is a row of labelled spectrin/adducin tetramers, not a solid line.
            u = rng.random(rng.poisson(2 * half / 1.5) + 1)[:, None]
            rings.append(a + (z - a) * u)
    if not rings:
        return np.zeros(shape)
    labels = np.concatenate(rings)
    density = gaussian_spots(labels, rng.lognormal(0, 0.5, len(labels)), 0.6, shape)
    return density + 0.05 * density.mean() * _dendrite_fill(backbones, shape, 10.0)


def _scene_periodic(rng, shape, px_nm, protein):
    return _rings(rng, shape, px_nm, _backbones(rng, shape, px_nm, int(rng.integers(1, 4))))


def _scene_actin(rng, shape, px_nm, protein):
    """Actin: axonal rings in some images, otherwise dendrites with fibres and spines."""
    if protein in ("f-actin", "sir-actin") and rng.random() < 0.4:
        return _scene_periodic(rng, shape, px_nm, protein)
    backbones = _backbones(rng, shape, px_nm, int(rng.integers(1, 3)), (3.0, 12.0))
    width = _um(px_nm, rng.uniform(0.8, 1.6))
    fill = _dendrite_fill(backbones, shape, width)
    fibres = []
    for b in backbones:
        pts, normal, _ = sample_path(b, 1.0)
        for _ in range(int(rng.integers(3, 9))):
            start = int(rng.integers(0, max(len(pts) - 40, 1)))
            length = int(rng.integers(30, 200))
            seg = pts[start : start + length] + normal[start : start + length] * rng.uniform(
                -width / 2, width / 2
            )
            if len(seg) > 2:
                fibres.append(seg)
    heads = _along(rng, backbones, _um(px_nm, 1.2), (width / 2 + 10, width / 2 + _um(px_nm, 1)))
    spines = _spots(rng, shape, heads, rng.uniform(4, 12, len(heads)), 25, 3.0)
    lines = draw_paths(fibres, shape, weights=[_labelling(rng, len(f), px_nm) for f in fibres])
    amount = 0.1 if protein == "lifeact" else 0.04
    return spines + lines + amount * fill * spines.max() / max(float(fill.max()), 1e-12)


def _scene_puncta(rng, shape, px_nm, protein):
    """Synaptic proteins: nanocluster puncta (150-400 nm) along dendrites."""
    backbones = _backbones(rng, shape, px_nm, int(rng.integers(1, 4)), (3.0, 15.0))
    width = _um(px_nm, rng.uniform(0.6, 1.5))
    centres = _along(rng, backbones, _um(px_nm, 0.4), (0.0, width / 2 + _um(px_nm, 0.6)))
    scatter = rng.uniform(0, 1, (rng.poisson(1.0 * _field_um2(shape, px_nm)), 2)) * shape
    centres = np.concatenate([centres, scatter])
    radius = np.exp(rng.normal(math.log(_um(px_nm, 0.06)), 0.35, len(centres)))
    return _spots(rng, shape, centres, radius, 8, rng.lognormal(0, 0.5, len(centres)))


def _scene_vesicles(rng, shape, px_nm, protein):
    """Vesicular transporters: presynaptic vesicle clouds 300-800 nm across."""
    backbones = _backbones(rng, shape, px_nm, int(rng.integers(1, 4)), (3.0, 15.0))
    centres = _along(rng, backbones, _um(px_nm, 1.5), (0.0, _um(px_nm, 1.0)))
    radius = np.exp(rng.normal(math.log(_um(px_nm, 0.15)), 0.3, len(centres)))
    return _spots(rng, shape, centres, radius, 40, rng.lognormal(0, 0.4, len(centres)))


def _scene_dendrite(rng, shape, px_nm, protein):
    """CaMKII / MAP2: diffuse dendrites, fibrous for MAP2, enriched in spines for CaMKII."""
    backbones = _backbones(rng, shape, px_nm, int(rng.integers(1, 4)), (3.0, 15.0))
    width = _um(px_nm, rng.uniform(0.8, 2.0))
    fill = _dendrite_fill(backbones, shape, width)
    fill = fill / max(float(fill.max()), 1e-12)
    if protein == "map2":
        bundles = _scene_filaments(rng, shape, px_nm, protein)
        return bundles + 0.1 * float(bundles.max()) * fill
    heads = _along(rng, backbones, _um(px_nm, 1.0), (width / 2, width / 2 + _um(px_nm, 1.0)))
    spines = _spots(rng, shape, heads, rng.uniform(4, 10, len(heads)), 20)
    grain = _spots(rng, shape, _along(rng, backbones, 3.0, (0.0, width / 2)), 1.0, 1)
    top = max(float(spines.max()), 1e-12)
    return spines + 0.05 * top * fill + 0.3 * grain


def _scene_mitochondria(rng, shape, px_nm, protein):
    """TOM20: hollow outlines of mitochondria, labelled in clusters on the outer membrane."""
    count = max(int(rng.poisson(0.4 * _field_um2(shape, px_nm))), 2)
    persistence, length = _um_range(px_nm, (1.5, 5.0)), _um_range(px_nm, (0.5, 3.0))
    paths = _filaments(
        rng, shape, count, persistence_px=persistence, length_px=length, smooth_px=_um(px_nm, 0.3)
    )
    radii = _um(px_nm, 1.0) * rng.uniform(0.12, 0.25, count)
    sites = tube_points(rng, paths, radii, 0.8, step=0.5, taper=True, jitter=1.0)
    return _spots(rng, shape, sites, 1.0, 1)


def _scene_granules(rng, shape, px_nm, protein):
    """FUS: a nucleus-like diffuse region and granules of many sizes."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    ry, rx = _um(px_nm, rng.uniform(1.5, 3.5)), _um(px_nm, rng.uniform(1.5, 3.5))
    nucleus = blur((((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1) * 1.0, 8.0)
    count = rng.poisson(3.0 * _field_um2(shape, px_nm)) + 5
    centres = rng.uniform(0, 1, (count, 2)) * shape
    radius = np.exp(rng.normal(math.log(_um(px_nm, 0.08)), 0.5, count))
    granules = _spots(rng, shape, centres, radius, 15, rng.lognormal(0, 0.6, count))
    return granules + 0.04 * float(granules.max()) * nucleus


def _scene_membrane(rng, shape, px_nm, protein):
    """NKCC2: dotted clusters along cell membranes (long curved outlines)."""
    backbones = _backbones(rng, shape, px_nm, int(rng.integers(2, 5)), (2.0, 8.0))
    centres = _along(rng, backbones, _um(px_nm, 0.15), (0.0, _um(px_nm, 0.05)))
    return _spots(rng, shape, centres, _um(px_nm, 0.03), 4)


SCENES: dict[str, Callable[..., NDArray[np.float64]]] = {
    "filaments": _scene_filaments,
    "vimentin": _scene_vimentin,
    "periodic": _scene_periodic,
    "actin": _scene_actin,
    "puncta": _scene_puncta,
    "vesicles": _scene_vesicles,
    "dendrite": _scene_dendrite,
    "mitochondria": _scene_mitochondria,
    "granules": _scene_granules,
    "membrane": _scene_membrane,
}

# Which scene each class gets.
MORPHOLOGY: dict[str, str] = {
    "FUS": "granules",
    "adducin": "periodic",
    "bassoon": "puncta",
    "beta-camkii": "dendrite",
    "beta2-spectrin": "periodic",
    "camkii": "dendrite",
    "f-actin": "actin",
    "gephyrin": "puncta",
    "glur1": "puncta",
    "homer": "puncta",
    "lifeact": "actin",
    "live-tubulin": "filaments",
    "map2": "dendrite",
    "nkcc2": "membrane",
    "psd95": "puncta",
    "rim": "puncta",
    "sir-actin": "actin",
    "sir-tubulin": "filaments",
    "tom20": "mitochondria",
    "tubulin": "filaments",
    "vgat": "vesicles",
    "vglut1": "vesicles",
    "vglut2": "vesicles",
    "vimentin": "vimentin",
}
