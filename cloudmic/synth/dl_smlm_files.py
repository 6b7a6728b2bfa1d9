"""DL-SMLM's derived files: the ThunderSTORM CSV, the SR render rule, the figshare zips.

``SR_locs.csv`` is ThunderSTORM's 2-D MLE export: quoted header, ``,`` separated, no index
column, LF endings, fitted values with 3 decimals and coordinates at full precision.
``SR<N>.tif`` is rendered from exactly the CSV values, by a rule exact enough for an ingest
to re-render and compare with ``numpy.allclose``:

1. every CSV row adds 1.0 to ``H[floor(y_nm / 16.25), floor(x_nm / 16.25)]`` (float64,
   ``8*size`` square; rows outside are ignored);
2. ``H`` is convolved with the normalised 7-tap Gaussian ``k[t] = exp(-t**2 / 2)`` for
   ``t = -3..3`` (sigma 1 SR pixel = 16.25 nm), divided by its sum, with zeros beyond the
   edges, first along x (axis 1), then along y (axis 0);
3. the result is cast to float32.

That is ``cloudmic.render(locs, 16.25, shape=(8*size, 8*size), method="gaussian")`` (sigma
one pixel, cut at 3 sigma) cast to float32; the tests check that they agree. SR pixel ``k``
covers ``[k*16.25, (k+1)*16.25)`` nm.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from cloudmic.synth.common import replacing, write_bytes
from cloudmic.synth.dl_smlm_acquisition import WF_PIXEL_NM

__all__ = [
    "SR_PIXEL_NM",
    "SR_RENDER_RULE",
    "SR_RENDER_SIGMA_PX",
    "SR_RENDER_TAPS",
    "SR_SCALE",
    "UNCERTAINTY_NAMES",
    "UncertaintyName",
    "csv_columns",
    "render_sr",
    "write_csv",
    "zip_folder",
]

SR_SCALE = 8
SR_PIXEL_NM = WF_PIXEL_NM / SR_SCALE  # 16.25

# The SR render rule of the module docstring, in numbers and in words (for the manifest).
SR_RENDER_SIGMA_PX = 1.0
SR_RENDER_TAPS = 7
SR_RENDER_RULE = (
    "H[floor(y_nm/16.25), floor(x_nm/16.25)] += 1 per CSV row (float64, rows outside the "
    "8*size square ignored); convolve with the normalised 7-tap Gaussian exp(-t^2/2), "
    "t=-3..3 (sigma 1 SR px), zero beyond the edges, along x (axis 1) then y (axis 0); "
    "cast to float32"
)

# The last CSV column: ThunderSTORM >= 1.3 writes uncertainty_xy, older ones uncertainty.
UncertaintyName = Literal["uncertainty_xy", "uncertainty"]
UNCERTAINTY_NAMES = ("uncertainty_xy", "uncertainty")


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


def zip_folder(folder: Path) -> Path:
    """``folder`` -> ``folder.zip`` with members under ``<folder name>/``, then no folder.
    Members are sorted and dated 1980-01-01, so the same tree gives the same bytes."""
    path = folder.with_name(f"{folder.name}.zip")
    with replacing(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(p for p in folder.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(f.relative_to(folder.parent).as_posix())
            info.compress_type = zipfile.ZIP_DEFLATED
            with open(f, "rb") as src, zf.open(info, "w") as dst:
                shutil.copyfileobj(src, dst)
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


def write_csv(path: Path, table: dict[str, NDArray], columns: list[str]) -> int:
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
    return write_bytes(path, text.encode("utf-8"))
