"""Pictures from array values: 8-bit scaling, block-averaged shrinking, bounded plane
reads, strips, label overlays and PNG bytes. A pure function of the values: the same
array gives the same bytes (re-ingesting rewrites the same previews)."""

from __future__ import annotations

from typing import Any

import imagecodecs
import numpy as np

from cloudmic.storage.requests import at_once

MAX_SIDE = 512  # pixels a side of a preview PNG (larger planes are block-averaged down)
MAX_READ = 2048  # pixels a side read from one plane; beyond that a centre crop is read
PERCENTILES = (0.5, 99.8)
GAP = 2  # pixels between the tiles of a strip
PNG_LEVEL = 6  # zlib's default: level 9 took 40 ms on a sparse crop, 15x level 6, for 8% less


def to_uint8(a: np.ndarray, lo: float = PERCENTILES[0], hi: float = PERCENTILES[1]) -> np.ndarray:
    """Percentile-scale to 0..255 (NaNs and infinities map to 0)."""
    a = np.asarray(a, dtype=np.float64)
    finite = np.isfinite(a)
    if not finite.any():
        return np.zeros(a.shape, np.uint8)
    values = a[finite]
    vlo, vhi = np.percentile(values, [lo, hi])
    above = values[values > values.min()]
    if above.size < values.size // 2 and above.size:  # sparse (an SMLM render): scale the signal
        vhi = max(vhi, float(np.percentile(above, hi)))
    if vhi <= vlo:  # flat or almost: use the full range instead
        vlo, vhi = float(a[finite].min()), float(a[finite].max())
    if vhi <= vlo:
        return np.zeros(a.shape, np.uint8)
    out = (np.where(finite, a, vlo) - vlo) * (255.0 / (vhi - vlo))
    return np.rint(np.clip(out, 0, 255)).astype(np.uint8)


def shrink(a: np.ndarray, max_side: int = MAX_SIDE) -> np.ndarray:
    """Block-mean the last two axes by the smallest integer factor that fits ``max_side``."""
    h, w = a.shape[-2:]
    f = max(1, -(-max(h, w) // max_side))
    if f == 1:
        return a
    h2, w2 = h // f * f, w // f * f
    a = np.asarray(a[..., :h2, :w2], dtype=np.float64)
    return a.reshape(*a.shape[:-2], h2 // f, f, w2 // f, f).mean(axis=(-3, -1))


def plane_window(shape: tuple[int, ...]) -> tuple[slice, slice]:
    """The (y, x) window of a plane that is read: all of it, or a centre crop of MAX_READ."""
    out = []
    for n in shape[-2:]:
        m = min(n, MAX_READ)
        start = (n - m) // 2
        out.append(slice(start, start + m))
    return out[0], out[1]


def read_plane(arr: Any, lead: tuple[int, ...]) -> np.ndarray:
    """One 2-D plane ``arr[lead..., y, x]`` (centre crop when huge), shrunk to MAX_SIDE."""
    ys, xs = plane_window(arr.shape)
    return shrink(np.asarray(arr[(*lead, ys, xs)]))


def read_planes(arr: Any, leads: list[tuple[int, ...]]) -> list[np.ndarray]:
    """:func:`read_plane` of each lead index, read concurrently."""
    return at_once(lambda lead: read_plane(arr, lead), leads)


def strip(tiles: list[np.ndarray], gap: int = GAP) -> np.ndarray:
    """uint8 tiles of one height side by side, separated by white gaps."""
    h = max(t.shape[0] for t in tiles)
    parts = []
    for i, t in enumerate(tiles):
        if i:
            parts.append(np.full((h, gap), 255, np.uint8))
        parts.append(np.pad(t, ((0, h - t.shape[0]), (0, 0))))
    return np.concatenate(parts, axis=1)


def overlay(gray: np.ndarray, labels: np.ndarray, colors: dict[int, tuple[int, ...]],
            alpha: float = 0.45) -> np.ndarray:
    """RGB: the uint8 image with each labelled pixel blended with its class colour."""
    rgb = np.repeat(gray[..., None].astype(np.float64), 3, axis=-1)
    for value, rgba in colors.items():
        a = alpha * (rgba[3] / 255.0 if len(rgba) > 3 else 1.0)
        mask = labels == value
        if a <= 0 or not mask.any():
            continue
        rgb[mask] = (1 - a) * rgb[mask] + a * np.asarray(rgba[:3], dtype=np.float64)
    return np.rint(rgb).astype(np.uint8)


def png(image: np.ndarray) -> bytes:
    return bytes(imagecodecs.png_encode(np.ascontiguousarray(image), level=PNG_LEVEL))
