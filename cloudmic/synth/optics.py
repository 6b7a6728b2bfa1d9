"""Small, pure numpy building blocks for synthetic fluorescence images.

Shared by the dataset generators (BioSR, DL-SMLM widefield/SR, DeepCAD movies):
smooth curved filaments, their anti-aliased rasterisation, Gaussian PSF blurs, shot noise,
BioSR-style percentile normalisation and block-mean binning. Nothing here knows about files.

Coordinates are ``(y, x)`` in pixels of the output grid, with pixel ``i`` centred on ``i``
(it covers ``[i - 0.5, i + 0.5)``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "downsample",
    "draw_paths",
    "gaussian_blur",
    "gaussian_spots",
    "percentile_normalize",
    "poisson_noise",
    "random_filaments",
    "sample_path",
    "smooth_noise",
    "splat",
    "tube_points",
]

Float = NDArray[np.floating]


def smooth_noise(rng: np.random.Generator, n: int, sigma: float) -> NDArray[np.float64]:
    """``n`` samples of white Gaussian noise smoothed by a Gaussian of ``sigma`` samples.

    The kernel sums to one, so sums over many samples keep the variance of the white noise
    (a random walk built from it diffuses as fast as an unsmoothed one) while the samples
    themselves vary smoothly.
    """
    white = rng.standard_normal(n)
    if sigma <= 0 or n == 0:
        return white
    half = int(math.ceil(3 * sigma))
    t = np.arange(-half, half + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (t / sigma) ** 2)
    return np.convolve(white, kernel / kernel.sum(), mode="full")[half : half + n]


def random_filaments(
    rng: np.random.Generator,
    shape: tuple[int, int],
    count: int,
    *,
    persistence_px: float | tuple[float, float],
    length_px: float | tuple[float, float],
    step_px: float = 0.5,
    smooth_px: float = 10.0,
) -> list[NDArray[np.float64]]:
    """Random smooth curved filaments (worm-like chains) that pass through a field.

    Each filament is a polyline of ``(y, x)`` points ``step_px`` apart. Its heading diffuses
    with persistence length ``persistence_px`` (tangents decorrelate over that arc length),
    with the curvature smoothed over ``smooth_px`` so filaments bend in arcs, not kinks. A
    random point of each filament lies inside ``shape``; the rest may leave the field, as
    long microtubules do. Tuples are ``(low, high)`` ranges drawn uniformly per filament.
    """
    paths = []
    for _ in range(count):
        persistence = _draw(rng, persistence_px)
        length = _draw(rng, length_px)
        n = max(int(math.ceil(length / step_px)), 1) + 1
        turns = smooth_noise(rng, n - 1, smooth_px / step_px) * math.sqrt(step_px / persistence)
        heading = rng.uniform(0.0, 2 * math.pi) + np.concatenate(([0.0], np.cumsum(turns[:-1])))
        steps = step_px * np.stack([np.sin(heading), np.cos(heading)], axis=1)
        points = np.concatenate([np.zeros((1, 2)), np.cumsum(steps, axis=0)])
        anchor = rng.uniform((-0.5, -0.5), (shape[0] - 0.5, shape[1] - 0.5))
        paths.append(points - points[rng.integers(n)] + anchor)
    return paths


def draw_paths(
    paths: Sequence[NDArray[np.floating]],
    shape: tuple[int, int],
    *,
    weights: Sequence[float | NDArray[np.floating]] | None = None,
    supersample: int = 1,
) -> NDArray[np.float64]:
    """Rasterise polylines as anti-aliased lines of density (arc length per pixel).

    A straight line of weight 1 crossing a pixel adds about the pixel's width to it, so the
    image integrates to ``sum(weight * length)`` for the parts inside ``shape``. ``weights``
    gives one scalar or one value per point for each path (labelling density along a
    filament). Lines are splatted bilinearly at sub-pixel steps on a grid ``supersample``
    times finer, then binned back to ``shape``.
    """
    s = int(supersample)
    if s < 1:
        raise ValueError(f"supersample must be an integer >= 1, got {supersample!r}")
    fine = (shape[0] * s, shape[1] * s)
    samples, masses = [], []
    for i, path in enumerate(paths):
        w = 1.0 if weights is None else weights[i]
        pts, mass = _resample(
            np.asarray(path, dtype=np.float64), np.broadcast_to(w, len(path)), 0.5 / s
        )
        samples.append((pts + 0.5) * s - 0.5)
        masses.append(mass * s * s)  # block-mean binning divides by s*s again
    if not samples:
        return np.zeros(shape)
    canvas = _splat(np.concatenate(samples), np.concatenate(masses), fine)
    return downsample(canvas, s) if s > 1 else canvas


def sample_path(
    path: ArrayLike, spacing: float
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Points evenly spread along a polyline, with their unit normals and arc lengths.

    The polyline is cut into ``ceil(length / spacing)`` equal pieces and the midpoint of each
    is returned, so ``spacing`` is an upper bound. Normals are the tangents turned by +90
    degrees (``(y, x)`` coordinates, like the points); labels placed at ``point + r * normal``
    sit a distance ``r`` to one side of the line (a tube wall, a transverse ring). Works in
    any unit (pixels, nm). A path of fewer than two points, or of zero length, gives empty
    arrays.
    """
    if spacing <= 0:
        raise ValueError(f"spacing must be > 0, got {spacing!r}")
    p = np.asarray(path, dtype=np.float64)
    empty = np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0)
    if len(p) < 2:
        return empty
    seg = np.hypot(*np.diff(p, axis=0).T)
    arc = np.concatenate(([0.0], np.cumsum(seg)))
    if arc[-1] <= 0:
        return empty
    n = max(int(math.ceil(arc[-1] / spacing)), 1)
    t = (np.arange(n) + 0.5) * (arc[-1] / n)
    pts = np.stack([np.interp(t, arc, p[:, 0]), np.interp(t, arc, p[:, 1])], axis=1)
    # Tangent of the segment each sample falls on (zero-length segments borrow a neighbour's).
    k = np.clip(np.searchsorted(arc, t, side="right") - 1, 0, len(seg) - 1)
    d = np.diff(p, axis=0)
    tangent = d[k] / np.where(seg[k] > 0, seg[k], 1.0)[:, None]
    bad = seg[k] <= 0
    if bad.any():
        fallback = (p[-1] - p[0]) / max(float(np.hypot(*(p[-1] - p[0]))), 1e-12)
        tangent[bad] = fallback
    normal = np.stack([tangent[:, 1], -tangent[:, 0]], axis=1)
    return pts, normal, t


def tube_points(
    rng: np.random.Generator,
    paths: Sequence[NDArray[np.floating]],
    radius: float | ArrayLike,
    density: float,
    *,
    step: float,
    lumen: bool = False,
    taper: bool = False,
    jitter: float = 0.0,
) -> NDArray[np.float64]:
    """Random label positions on the wall of (or, with ``lumen``, inside) tubes along paths.

    A tube seen from above: a label at angle phi around its wall projects to
    ``r cos(phi)`` from the axis, so membrane labels look brighter at the edges while lumen
    labels fill the width. ``density`` is the mean number of labels per unit of path length
    (Poisson), ``radius`` one value or one per path, ``taper`` rounds the tube's ends,
    ``jitter`` adds isotropic Gaussian scatter (antibody linkage). Units are the paths'.
    """
    radii = np.broadcast_to(np.asarray(radius, dtype=np.float64), (len(paths),))
    out = []
    for path, r in zip(paths, radii, strict=True):
        pts, normal, arc = sample_path(path, step)
        if not len(pts):
            continue
        length = float(np.hypot(*np.diff(np.asarray(path, dtype=np.float64), axis=0).T).sum())
        count = rng.poisson(density * length)
        if count == 0:
            continue
        k = rng.integers(0, len(pts), count)
        local = np.full(count, r)
        if taper:
            u = arc[k] / max(length, 1e-9)
            local = r * np.sqrt(np.clip(1 - (2 * u - 1) ** 8, 0, 1))
        phi = rng.uniform(0, 2 * math.pi, count)
        lateral = local * (np.sqrt(rng.random(count)) if lumen else 1.0) * np.cos(phi)
        out.append(pts[k] + normal[k] * lateral[:, None] + rng.normal(0, jitter, (count, 2)))
    return np.concatenate(out) if out else np.zeros((0, 2))


def splat(points: ArrayLike, masses: ArrayLike, shape: tuple[int, int]) -> NDArray[np.float64]:
    """Bilinear splatting of point masses (``(y, x)`` pixel coordinates) onto a grid.

    Each point's mass is shared between the four nearest pixel centres, which keeps its
    total and its centroid; mass falling outside ``shape`` is dropped.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    mass = np.broadcast_to(np.asarray(masses, dtype=np.float64), (len(pts),))
    if len(pts) == 0:
        return np.zeros(shape)
    return _splat(pts, np.ascontiguousarray(mass), shape)


def gaussian_spots(
    points: ArrayLike,
    masses: ArrayLike,
    sigma_px: float,
    shape: tuple[int, int],
) -> NDArray[np.float64]:
    """Point sources imaged through a Gaussian PSF, integrated over each pixel.

    Every point ``(y, x)`` (pixel coordinates, sub-pixel precise) spreads its mass over the
    pixels within ``4 * sigma_px`` of it, each receiving the PSF's integral over its area
    (separable: a product of erf differences), as a camera records a single emitter.
    Cheaper than splatting and blurring when the points are sparse, and without the
    splat's extra blur. Mass beyond the window or outside ``shape`` is dropped.
    """
    if sigma_px <= 0:
        raise ValueError(f"sigma_px must be > 0, got {sigma_px!r}")
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    mass = np.broadcast_to(np.asarray(masses, dtype=np.float64), (len(pts),))
    h, w = shape
    if len(pts) == 0:
        return np.zeros(shape)
    r = int(math.ceil(4 * sigma_px))
    taps = np.arange(-r, r + 1)
    scale = 1.0 / (sigma_px * math.sqrt(2.0))
    axes = []
    for c in (pts[:, 0], pts[:, 1]):
        centre = np.rint(c).astype(np.int64)
        idx = centre[:, None] + taps[None, :]
        edges = (idx - c[:, None] - 0.5) * scale
        frac = 0.5 * (_erf(edges + scale) - _erf(edges))
        axes.append((idx, frac))
    (iy, fy), (ix, fx) = axes
    ok = ((iy >= 0) & (iy < h))[:, :, None] & ((ix >= 0) & (ix < w))[:, None, :]
    flat = (iy[:, :, None] * w + ix[:, None, :])[ok]
    vals = (mass[:, None, None] * fy[:, :, None] * fx[:, None, :])[ok]
    return np.bincount(flat, vals, minlength=h * w).reshape(h, w)


def gaussian_blur(
    img: ArrayLike, sigma_px: float, *, mode: Literal["reflect", "constant", "wrap"] = "reflect"
) -> NDArray[np.float64]:
    """Blur the last two axes with a Gaussian PSF of standard deviation ``sigma_px``.

    Computed with real FFTs and the analytic Gaussian transfer function. ``mode`` says what
    lies beyond the edges: a mirror image (``reflect``), zeros (``constant``) or the opposite
    edge (``wrap``, no padding: fastest, for canvases that already carry a margin).
    """
    a = np.asarray(img, dtype=np.float64)
    if sigma_px < 0:
        raise ValueError(f"sigma_px must be >= 0, got {sigma_px!r}")
    if sigma_px == 0:
        return a.copy()
    h, w = a.shape[-2:]
    pad = 0 if mode == "wrap" else int(math.ceil(4 * sigma_px))
    if pad:
        widths = [(0, 0)] * (a.ndim - 2) + [(pad, pad), (pad, pad)]
        a = np.pad(a, widths, mode="symmetric" if mode == "reflect" else "constant")
    ny, nx = a.shape[-2:]
    fy = np.fft.fftfreq(ny)[:, None]
    fx = np.fft.rfftfreq(nx)[None, :]
    otf = np.exp(-2.0 * (math.pi * sigma_px) ** 2 * (fy**2 + fx**2))
    out = np.fft.irfft2(np.fft.rfft2(a) * otf, s=(ny, nx))
    return out[..., pad : pad + h, pad : pad + w]


def poisson_noise(rng: np.random.Generator, expected: ArrayLike) -> NDArray[np.float64]:
    """Photon counts drawn from Poisson distributions with the given (clipped >= 0) means."""
    lam = np.clip(np.asarray(expected, dtype=np.float64), 0.0, None)
    return rng.poisson(lam).astype(np.float64)


def percentile_normalize(img: ArrayLike, lo: float = 0, hi: float = 100) -> NDArray[np.float64]:
    """Min-max normalise between two percentiles and clip to ``[0, 1]``.

    Same arithmetic as BioSR's ``prctile_norm`` (DL-SR ``src/utils/utils.py``) and the MATLAB
    ``XxNorm`` used to write the dataset: ``(x - p_lo) / (p_hi - p_lo + 1e-7)``, clipped.
    """
    a = np.asarray(img, dtype=np.float64)
    p_lo, p_hi = np.percentile(a, [lo, hi])
    return np.clip((a - p_lo) / (p_hi - p_lo + 1e-7), 0.0, 1.0)


def downsample(img: ArrayLike, factor: int) -> NDArray[np.floating]:
    """Bin the last two axes by ``factor`` (block mean, as a camera with larger pixels).

    Both axes must be multiples of ``factor``. Float inputs keep their dtype; integer inputs
    give float64.
    """
    a = np.asarray(img)
    f = int(factor)
    if f < 1 or f != factor:
        raise ValueError(f"factor must be an integer >= 1, got {factor!r}")
    h, w = a.shape[-2:]
    if h % f or w % f:
        raise ValueError(
            f"cannot bin a {h}x{w} image by {f}: crop or pad it to a multiple of {f} first"
        )
    dtype = a.dtype if np.issubdtype(a.dtype, np.floating) else np.float64
    blocks = a.reshape(*a.shape[:-2], h // f, f, w // f, f)
    return blocks.mean(axis=(-3, -1), dtype=np.float64).astype(dtype, copy=False)


def _erf(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """The error function, to 1.5e-7 (Abramowitz & Stegun 7.1.26): numpy has none."""
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    return np.copysign(1.0 - poly * np.exp(-a * a), x)


def _draw(rng: np.random.Generator, value: float | tuple[float, float]) -> float:
    if isinstance(value, tuple):
        return float(rng.uniform(*value))
    return float(value)


def _resample(
    path: NDArray[np.float64], weight: NDArray[np.floating], spacing: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Points at most ``spacing`` apart along ``path`` and the line mass each one carries."""
    if len(path) < 2:
        return path, np.zeros(len(path))
    seg = np.hypot(*np.diff(path, axis=0).T)
    arc = np.concatenate(([0.0], np.cumsum(seg)))
    n = max(int(math.ceil(arc[-1] / spacing)), 1)
    # Midpoints of n equal pieces, each carrying its own length: no double-counted ends.
    t = (np.arange(n) + 0.5) * (arc[-1] / n)
    pts = np.stack([np.interp(t, arc, path[:, 0]), np.interp(t, arc, path[:, 1])], axis=1)
    return pts, np.interp(t, arc, weight) * (arc[-1] / n)


def _splat(
    pts: NDArray[np.float64], mass: NDArray[np.float64], shape: tuple[int, int]
) -> NDArray[np.float64]:
    """Bilinear splatting of point masses onto a grid; mass falling outside is dropped."""
    h, w = shape
    y0 = np.floor(pts[:, 0]).astype(np.int64)
    x0 = np.floor(pts[:, 1]).astype(np.int64)
    fy = pts[:, 0] - y0
    fx = pts[:, 1] - x0
    idx, val = [], []
    for dy, wy in ((0, 1.0 - fy), (1, fy)):
        for dx, wx in ((0, 1.0 - fx), (1, fx)):
            yy, xx = y0 + dy, x0 + dx
            inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            idx.append(yy[inside] * w + xx[inside])
            val.append((mass * wy * wx)[inside])
    flat = np.bincount(np.concatenate(idx), np.concatenate(val), minlength=h * w)
    return flat.reshape(h, w)
