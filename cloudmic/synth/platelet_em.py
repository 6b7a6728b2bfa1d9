"""Synthetic platelet-em (SBF-SEM volumes of human platelets with labels), published layout.

Writes the tree of ``shared/datasets.md`` section 5 (the JSON and RGBA zips unpacked into one
folder)::

    platelet-em/images/50-images.tif, 24-images.tif
    platelet-em/labels-semantic/{50,24}-semantic.{tif,json}
    platelet-em/labels-instance/{50,24}-instance-{cell,organelle}.{tif,json}

Shapes: the "50" volume is ``(slices, size, size)``, the "24" one has ``round(slices * 24 /
50)`` slices, so ``slices=50, size=800`` gives the published (50|24, 800, 800).

- Images: multipage grayscale TIFF, uint16 (the site) or float32 with values 0..65535 (the
  example notebook; **CONFLICT** in ``datasets.md``), min 0 and max 65535 exactly.
- JSON labels (the truth): :func:`cloudmic.formats.label_rle.encode_rle`, dtype uint16.
- TIF labels: the RGBA release, ``(255 * jet(label / label.max())).astype(uint8)`` with an
  RGBA (0, 0, 0, 0) background, via :mod:`cloudmic.formats.label_palette`. Every volume holds
  all 7 semantic classes, so its semantic max is 6 and the fixed class colours apply.

Content: platelets are ellipsoids (40 nm z, 10 nm y/x voxels, so flat in voxel units along z)
with a dark plasma membrane; inside them mitochondria (2), alpha granules (3), canalicular
vessels (4, pale lumen with a dark rim), and dense granules: a body (5) around an almost
black core (6). Cell instance ids are 1..K and organelle ids 1..M, each unique in its
volume; a dense granule's body and core share one organelle id. The image is a per-class
grey level with a dark rim at every boundary, smooth texture, a slight beam blur and
shot-like noise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from cloudmic.formats.label_palette import encode_palette_labels
from cloudmic.formats.label_rle import encode_rle
from cloudmic.synth.common import check_seed, is_int, stream_rng, write_bytes, write_tiff
from cloudmic.synth.optics import gaussian_blur, percentile_normalize, poisson_noise

__all__ = ["IMAGE_DTYPES", "VOLUMES", "synth_platelet_em"]

log = logging.getLogger(__name__)

ImageDtype = Literal["uint16", "float32"]
IMAGE_DTYPES: tuple[ImageDtype, ...] = ("uint16", "float32")
VOLUMES = ("50", "24")
LABEL_DTYPE = "uint16"
Z_ANISOTROPY = 4.0  # 40 nm / 10 nm

# Grey level of each semantic class (0..1, SBF-SEM backscatter, contrast as published).
_GREY = np.array([0.78, 0.55, 0.33, 0.40, 0.72, 0.30, 0.06])
_RIM = 0.22  # grey of membranes at class boundaries
_PHOTONS = 40.0  # counts per unit grey: sets the noise level
# Organelles per cell: class -> (min, max) count and radius range as a fraction of the cell's.
_ORGANELLES = {
    2: ((1, 3), (0.10, 0.16), 2.2),  # mitochondria: elongated
    3: ((2, 6), (0.08, 0.13), 1.2),  # alpha granules: round
    4: ((1, 2), (0.08, 0.12), 3.0),  # canalicular vessel segments: tubes
    5: ((1, 3), (0.07, 0.10), 1.0),  # dense granules (core 6 inside)
}


def synth_platelet_em(
    out: Path | str,
    *,
    slices: int = 8,
    size: int = 128,
    seed: int = 0,
    image_dtype: ImageDtype = "uint16",
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Write a synthetic platelet-em tree under ``out/platelet-em/``.

    Args:
        out: parent folder; created if missing.
        slices: z pages of the "50" volume (the "24" one gets ``round(slices * 24 / 50)``).
        size: y and x side of every volume (the published one is 800).
        seed: same seed, same bytes.
        image_dtype: ``"uint16"`` or ``"float32"`` (values 0..65535 either way).
        progress: called with the number of files written since its previous call.

    Returns:
        ``{"root", "files", "bytes", "image_dtype", "shapes": {"50": (z, y, x), "24": ...},
        "cells": {...}, "organelles": {...}}``.
    """
    _check_args(slices, size, seed, image_dtype)
    root = Path(out) / "platelet-em"
    for sub in ("images", "labels-semantic", "labels-instance"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    files = nbytes = 0
    shapes, cells, organelles = {}, {}, {}
    for code, vol in enumerate(VOLUMES):
        z = slices if vol == "50" else max(1, round(slices * 24 / 50))
        shape = (z, size, size)
        semantic, cell, organelle = _labels(stream_rng(seed, code, 0), shape)
        image = _image(stream_rng(seed, code, 1), semantic, cell, organelle, image_dtype)
        written = [_write_volume(root / "images" / f"{vol}-images.tif", image)]
        for folder, stem, lab in (
            ("labels-semantic", f"{vol}-semantic", semantic),
            ("labels-instance", f"{vol}-instance-cell", cell),
            ("labels-instance", f"{vol}-instance-organelle", organelle),
        ):
            written.append(write_bytes(root / folder / f"{stem}.json", encode_rle(lab)))
            written.append(_write_volume(root / folder / f"{stem}.tif", encode_palette_labels(lab)))
        files += len(written)
        nbytes += sum(written)
        shapes[vol], cells[vol], organelles[vol] = shape, int(cell.max()), int(organelle.max())
        if progress is not None:
            progress(len(written))
    log.info("wrote %d files (%d bytes) of synthetic platelet-em to %s", files, nbytes, root)
    return {
        "root": str(root),
        "files": files,
        "bytes": nbytes,
        "image_dtype": image_dtype,
        "shapes": shapes,
        "cells": cells,
        "organelles": organelles,
    }


def _check_args(slices: object, size: object, seed: object, image_dtype: object) -> None:
    if not is_int(slices) or not 2 <= slices <= 1000:
        raise ValueError(f"slices must be a whole number from 2 to 1000, got {slices!r}")
    if not is_int(size) or not 48 <= size <= 4096:
        raise ValueError(
            f"size must be a whole number from 48 to 4096 (room for cells with organelles), "
            f"got {size!r}"
        )
    check_seed(seed)
    if image_dtype not in IMAGE_DTYPES:
        raise ValueError(
            f"image_dtype must be 'uint16' (the site) or 'float32' (values 0..65535, the "
            f"example notebook), got {image_dtype!r}"
        )


def _ellipsoid(
    shape: tuple[int, int, int],
    centre: NDArray[np.float64],
    radii: NDArray[np.float64],
    rotation: NDArray[np.float64],
) -> tuple[tuple[slice, ...], NDArray[np.bool_]]:
    """Mask of a rotated ellipsoid (z, y, x voxels) inside its bounding box, and the box."""
    reach = float(radii.max())
    box = []
    for c, n, scale in zip(centre, shape, (Z_ANISOTROPY, 1.0, 1.0), strict=True):
        r = reach / scale
        lo = min(max(int(np.floor(c - r)), 0), n)
        box.append(slice(lo, min(max(int(np.ceil(c + r)) + 1, lo), n)))
    if any(s.start >= s.stop for s in box):
        return tuple(box), np.zeros(tuple(max(s.stop - s.start, 0) for s in box), bool)
    grids = np.meshgrid(*(np.arange(s.start, s.stop) for s in box), indexing="ij")
    # Physical offsets in xy-voxel units (z stretched by the anisotropy).
    d = np.stack(
        [(grids[0] - centre[0]) * Z_ANISOTROPY, grids[1] - centre[1], grids[2] - centre[2]], axis=-1
    )
    local = d @ rotation  # columns of rotation are the ellipsoid's axes
    return tuple(box), ((local / radii) ** 2).sum(axis=-1) <= 1.0


def _rotation(rng: np.random.Generator) -> NDArray[np.float64]:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


def _labels(
    rng: np.random.Generator, shape: tuple[int, int, int]
) -> tuple[NDArray[np.uint16], NDArray[np.uint16], NDArray[np.uint16]]:
    """(semantic, cell, organelle) volumes; retries until all 7 classes are present."""
    for _ in range(50):
        semantic, cell, organelle = _try_labels(rng, shape)
        if len(np.unique(semantic)) == 7:
            return semantic, cell, organelle
    raise RuntimeError(f"could not place all 7 classes in a volume of shape {shape}")


def _try_labels(
    rng: np.random.Generator, shape: tuple[int, int, int]
) -> tuple[NDArray[np.uint16], NDArray[np.uint16], NDArray[np.uint16]]:
    z, h, w = shape
    semantic = np.zeros(shape, np.uint16)
    cell = np.zeros(shape, np.uint16)
    organelle = np.zeros(shape, np.uint16)
    n_cells = int(rng.integers(3, 7))
    next_cell = next_org = 1
    for _ in range(n_cells):
        r_xy = rng.uniform(0.16, 0.26) * h
        radii = np.array([r_xy * rng.uniform(0.5, 0.8), r_xy, r_xy * rng.uniform(0.55, 0.9)])
        rot = _rotation(rng)
        centre = np.array([rng.uniform(0, z - 1), rng.uniform(0, h - 1), rng.uniform(0, w - 1)])
        box, mask = _ellipsoid(shape, centre, radii, rot)
        mask &= cell[box] == 0  # cells do not overlap: earlier ones keep their voxels
        if mask.sum() < 0.02 * h * w:
            continue
        cell[box][mask] = next_cell
        semantic[box][mask] = 1
        for cls, ((lo, hi), (rlo, rhi), elong) in _ORGANELLES.items():
            for _ in range(int(rng.integers(lo, hi + 1))):
                r = rng.uniform(rlo, rhi) * r_xy
                o_radii = np.array([r * elong, r, r / max(elong, 1.0) ** 0.5])
                # Inside the cell: a point at up to 60 % of its radii, in its own frame.
                u = rng.uniform(-0.6, 0.6, 3)
                off = rot @ (u * radii)
                o_centre = centre + off / np.array([Z_ANISOTROPY, 1.0, 1.0])
                o_rot = _rotation(rng)
                obox, omask = _ellipsoid(shape, o_centre, o_radii, o_rot)
                omask &= (cell[obox] == next_cell) & (organelle[obox] == 0)
                if not omask.any():
                    continue
                organelle[obox][omask] = next_org
                semantic[obox][omask] = cls
                if cls == 5:
                    cbox, cmask = _ellipsoid(shape, o_centre, 0.55 * o_radii, o_rot)
                    cmask &= organelle[cbox] == next_org
                    semantic[cbox][cmask] = 6
                next_org += 1
        next_cell += 1
    return semantic, cell, organelle


def _boundaries(*labels: NDArray) -> NDArray[np.bool_]:
    """Voxels with a 4-neighbour in their slice (y or x) whose label differs, in any volume."""
    edge = np.zeros(labels[0].shape, bool)
    for lab in labels:
        for axis in (1, 2):
            diff = np.diff(lab, axis=axis) != 0
            lo = [slice(None)] * 3
            hi = [slice(None)] * 3
            lo[axis], hi[axis] = slice(None, -1), slice(1, None)
            edge[tuple(lo)] |= diff
            edge[tuple(hi)] |= diff
    return edge


def _image(
    rng: np.random.Generator,
    semantic: NDArray,
    cell: NDArray,
    organelle: NDArray,
    image_dtype: ImageDtype,
) -> NDArray:
    grey = _GREY[semantic]
    # Membranes: the cell's outermost voxels, and the cytoplasm voxels around organelles
    # (organelle interiors keep their own grey, however small they are).
    rim = (_boundaries(cell) & (cell > 0)) | (_boundaries(organelle) & (semantic == 1))
    grey = np.where(rim, _RIM, grey)
    # Texture: smooth multiplicative fluctuations (cytoplasm granularity, staining).
    texture = gaussian_blur(rng.standard_normal(semantic.shape), 1.5, mode="reflect")
    texture /= max(float(texture.std()), 1e-12)
    clean = gaussian_blur(grey * (1.0 + 0.08 * texture), 0.7, mode="reflect")
    counts = poisson_noise(rng, _PHOTONS * np.clip(clean, 0.0, None))
    norm = percentile_normalize(counts, 0, 100)
    if image_dtype == "uint16":
        return np.round(norm * 65535).astype(np.uint16)
    return (norm * 65535).astype(np.float32)


def _write_volume(path: Path, data: NDArray) -> int:
    """Multipage TIFF, one page per z; (z, y, x, 4) label colours become RGBA pages."""
    if data.ndim == 4:
        return write_tiff(path, data, photometric="rgb", extrasamples=["unassalpha"])
    return write_tiff(path, data)
