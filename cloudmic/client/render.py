"""``cloudmic.render``: a super-resolution image from stored localizations, at any
pixel size, on the grid convention of the stored SR image.

Convention (ThunderSTORM's): x and y are nm from the top-left corner of the raw image,
so pixel (r, c) of a render with pixel size p covers y in [r*p, (r+1)*p) and x in
[c*p, (c+1)*p); its centre is ((r+0.5)*p, (c+0.5)*p), which is exactly the ``y_sr``,
``x_sr`` coordinates of the store at p = 16.25 nm.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np

from cloudmic.errors import VariableNotFoundError


def _columns(locs: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """x, y (nm) and intensity from a cell group (``loc_x``...), a dict or a record array."""
    for xk, yk, ik in (("loc_x", "loc_y", "loc_intensity"), ("x", "y", "intensity")):
        try:
            x, y = np.asarray(locs[xk], dtype="float64"), np.asarray(locs[yk], dtype="float64")
        except (KeyError, ValueError, IndexError):
            continue
        try:
            inten = np.asarray(locs[ik], dtype="float64")
        except (KeyError, ValueError, IndexError):
            inten = None
        return x, y, inten
    raise VariableNotFoundError("locs needs x and y columns in nm: a DL-SMLM cell group "
                                "(loc_x, loc_y), a dict or a structured array with 'x' and 'y'")


def _gaussian_1d(sigma_px: float) -> np.ndarray:
    half = max(1, int(math.ceil(3 * sigma_px)))
    t = np.arange(-half, half + 1, dtype="float64")
    k = np.exp(-0.5 * (t / sigma_px) ** 2)
    return k / k.sum()


def _convolve_separable(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Zero beyond the edges, along x (axis 1) then y (axis 0)."""
    out = np.apply_along_axis(np.convolve, 1, img, kernel, mode="same")
    return np.apply_along_axis(np.convolve, 0, out, kernel, mode="same")


def render(
    locs: Any,
    pixel_size: float,
    *,
    shape: tuple[int, int] | None = None,
    field_of_view: tuple[float, float] | None = None,
    method: Literal["histogram", "gaussian"] = "histogram",
    sigma: float | None = None,
    weights: Literal["count", "intensity"] = "count",
) -> np.ndarray:
    """Render localizations (nm) to an image with ``pixel_size`` nm pixels.

    ``shape`` (rows, cols) or ``field_of_view`` (height, width in nm) fix the canvas; for a
    DL-SMLM cell group the default is the widefield field of view. ``method="gaussian"``
    spreads each localization with a Gaussian of ``sigma`` nm (default: one pixel),
    truncated at 3 sigma and zero beyond the edges (the rule of the stored SR images).
    Localizations outside the canvas are ignored.
    """
    if pixel_size <= 0:
        raise ValueError(f"pixel_size must be > 0 nm, got {pixel_size}")
    x, y, inten = _columns(locs)
    if shape is None:
        if field_of_view is None:
            field_of_view = _default_fov(locs, x, y)
        shape = (math.ceil(field_of_view[0] / pixel_size - 1e-9),
                 math.ceil(field_of_view[1] / pixel_size - 1e-9))
    rows, cols = np.floor(y / pixel_size).astype(np.int64), np.floor(x / pixel_size).astype(
        np.int64)
    inside = (rows >= 0) & (rows < shape[0]) & (cols >= 0) & (cols < shape[1])
    w = None
    if weights == "intensity":
        if inten is None:
            raise VariableNotFoundError("weights='intensity' needs an intensity column")
        w = inten[inside]
    img = np.zeros(shape, dtype="float64")
    np.add.at(img, (rows[inside], cols[inside]), 1.0 if w is None else w)
    if method == "gaussian":
        img = _convolve_separable(img, _gaussian_1d((sigma or pixel_size) / pixel_size))
    elif method != "histogram":
        raise ValueError(f"method must be 'histogram' or 'gaussian', got {method!r}")
    return img


def _default_fov(locs: Any, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """The widefield field of view of a cell group; else just past the last localization."""
    sizes, attrs = getattr(locs, "sizes", {}), getattr(locs, "attrs", {})
    px = float(attrs.get("wf_pixel_nm", 0) or 0)
    if px and "y" in sizes and "x" in sizes:
        return (sizes["y"] * px, sizes["x"] * px)
    return (float(y.max(initial=0.0)) + 1e-6, float(x.max(initial=0.0)) + 1e-6)
