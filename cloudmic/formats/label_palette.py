"""Colour-coded (RGB/RGBA) platelet-em label TIFFs, decoded to ids through a palette.

Only for label volumes that come without their RLE JSON (the JSON is the truth: see
``label_rle``). Two palettes are documented (``shared/datasets.md`` section 5):

- the old RGB release (``bio3d_vision/__old_rgb_to_index.py``): :data:`OLD_RGB_SEMANTIC`;
- the RGBA release, written by ``convert.json_to_rgb_tif``: each voxel is
  ``(255 * jet(label / label.max())).astype(uint8)`` with matplotlib's 256-entry ``jet`` and
  the first entry replaced by the background colour (RGBA ``(0, 0, 0, 0)``).
  :func:`jet_palette` rebuilds that mapping for a given ``label.max()``;
  :data:`JET_RGBA_SEMANTIC` is it for the 7 semantic classes (max 6).
  **CONFLICT** (unverified without the file): fastestimator's table swaps classes 4 and 6.

Instance colours come from the same 256-entry LUT, so two ids whose ``id / max * 256``
truncate to one entry get one colour, and ids below ``max / 256`` get the background's.
Decoding them gives *some* id per colour, not necessarily the original, and never splits
merged objects; a warning says so.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

from cloudmic.errors import SourceError

__all__ = [
    "JET_RGBA_SEMANTIC",
    "OLD_RGB_SEMANTIC",
    "SEMANTIC_CLASSES",
    "decode_palette_labels",
    "encode_palette_labels",
    "jet_colours",
    "jet_lut",
    "jet_palette",
]

log = logging.getLogger(__name__)

SEMANTIC_CLASSES: tuple[str, ...] = (
    "background",
    "cell",
    "mitochondrion",
    "alpha granule",
    "canalicular vessel",
    "dense granule body",
    "dense granule core",
)

OLD_RGB_SEMANTIC: dict[tuple[int, ...], int] = {
    (0, 0, 0): 0,
    (1, 1, 224): 1,
    (1, 171, 254): 2,
    (1, 254, 1): 3,
    (255, 224, 0): 4,
    (250, 94, 0): 5,
    (245, 0, 203): 6,
}

BACKGROUND_RGBA = (0, 0, 0, 0)

# matplotlib's `jet` segment data (_cm.py): (x, y0, y1) per channel.
_JET = {
    "red": ((0.0, 0, 0), (0.35, 0, 0), (0.66, 1, 1), (0.89, 1, 1), (1, 0.5, 0.5)),
    "green": (
        (0.0, 0, 0), (0.125, 0, 0), (0.375, 1, 1), (0.64, 1, 1), (0.91, 0, 0), (1, 0, 0),
    ),
    "blue": ((0.0, 0.5, 0.5), (0.11, 1, 1), (0.34, 1, 1), (0.65, 0, 0), (1, 0, 0)),
}  # fmt: skip
_LUT_N = 256


def _lookup_table(n: int, data: tuple[tuple[float, float, float], ...]) -> np.ndarray:
    """matplotlib ``colors._create_lookup_table`` for array segment data, gamma 1."""
    a = np.asarray(data, dtype=np.float64)
    x, y0, y1 = a[:, 0] * (n - 1), a[:, 1], a[:, 2]
    xind = (n - 1) * np.linspace(0, 1, n)
    ind = np.searchsorted(x, xind)[1:-1]
    distance = (xind[1:-1] - x[ind - 1]) / (x[ind] - x[ind - 1])
    lut = np.concatenate([[y1[0]], distance * (y0[ind] - y1[ind - 1]) + y1[ind - 1], [y0[-1]]])
    return np.clip(lut, 0.0, 1.0)


def jet_lut() -> np.ndarray:
    """matplotlib's ``jet`` as a (256, 4) float64 RGBA table in 0..1."""
    lut = np.ones((_LUT_N, 4))
    for c, channel in enumerate(("red", "green", "blue")):
        lut[:, c] = _lookup_table(_LUT_N, _JET[channel])
    return lut


def _jet_colours(labels: np.ndarray, max_label: int) -> np.ndarray:
    """``(255 * jet(labels / max_label)).astype(uint8)`` with entry 0 the background."""
    lut = (255 * jet_lut()).astype(np.uint8)
    lut[0] = BACKGROUND_RGBA
    x = np.asarray(labels, dtype=np.float64) / float(max_label) * _LUT_N
    x[x == _LUT_N] = _LUT_N - 1
    idx = np.clip(x, -1, _LUT_N).astype(np.int64).clip(0, _LUT_N - 1)
    return lut[idx]


def jet_colours(max_label: int) -> np.ndarray:
    """The RGBA release's colour of every id 0..max_label, as a (max_label + 1, 4) uint8
    table (id 0 is the transparent background)."""
    return _jet_colours(np.arange(max_label + 1), max(int(max_label), 1))


def jet_palette(max_label: int) -> dict[tuple[int, ...], int]:
    """Colour -> id of the RGBA release for a volume whose largest label is ``max_label``.

    Where ids share a colour the smallest one wins (a debug log counts them).
    """
    if max_label < 1:
        raise ValueError(f"max_label must be >= 1, got {max_label!r}")
    colours = _jet_colours(np.arange(max_label + 1), max_label)
    palette: dict[tuple[int, ...], int] = {}
    for label, colour in enumerate(map(tuple, colours.tolist())):
        palette.setdefault(colour, label)
    lost = max_label + 1 - len(palette)
    if lost:
        log.debug(
            "jet palette for max %d: %d ids share a colour with a smaller id", max_label, lost
        )
    return palette


JET_RGBA_SEMANTIC: dict[tuple[int, ...], int] = jet_palette(len(SEMANTIC_CLASSES) - 1)


def encode_palette_labels(labels: np.ndarray, *, max_label: int | None = None) -> np.ndarray:
    """An integer label volume as the RGBA release colours it: shape ``labels.shape + (4,)``.

    ``max_label`` defaults to ``labels.max()``, as in ``convert.json_to_rgb_tif``.
    """
    lab = np.asarray(labels)
    top = int(lab.max()) if max_label is None and lab.size else (max_label or 1)
    return _jet_colours(lab, max(top, 1))


def _pack(colours: np.ndarray) -> np.ndarray:
    """(..., C) uint8 -> (...) uint32, one integer per colour."""
    c = colours.astype(np.uint32)
    out = np.zeros(c.shape[:-1], dtype=np.uint32)
    for k in range(c.shape[-1]):
        out = (out << np.uint32(8)) | c[..., k]
    return out


def decode_palette_labels(
    rgb: np.ndarray,
    palette: Mapping[tuple[int, ...], int],
    *,
    name: str = "<array>",
    instance: bool = False,
    dtype: np.dtype | str | None = None,
) -> np.ndarray:
    """Map each voxel's colour (last axis, 3 or 4 uint8 channels) to its id in ``palette``.

    Args:
        rgb: ``(Z, Y, X, C)`` (or any ``(..., C)``) uint8 array as tifffile reads it.
        palette: colour tuple (C values) -> id.
        name: the file, for errors.
        instance: the TIF holds instance ids: logs a warning that colour-coded ids can collide.
        dtype: of the result (default: the smallest unsigned type that holds the palette's ids).

    Raises:
        SourceError: a colour missing from the palette (named with its first voxel), a
            channel count the palette does not have, or a non-uint8 array.
    """
    a = np.asarray(rgb)
    channels = {len(c) for c in palette}
    if a.dtype != np.uint8 or a.ndim < 2 or channels != {a.shape[-1]}:
        raise SourceError(
            name,
            f"a colour label volume must be uint8 with {sorted(channels)} channels last, "
            f"got {a.dtype} with shape {a.shape}",
            "pass the RGB/RGBA label TIF of the platelet-em release (or use its JSON labels)",
        )
    if instance:
        log.warning(
            "%s: decoding instance ids from colours: the RGBA release colours ids through a "
            "256-entry LUT, so distinct ids can collide (merged objects, changed ids); use the "
            "JSON labels when they exist",
            name,
        )
    ids = np.array(list(palette.values()), dtype=np.int64)
    if dtype is None:
        top = int(ids.max()) if ids.size else 0
        dtype = next(
            t for t in (np.uint8, np.uint16, np.uint32, np.uint64) if top <= np.iinfo(t).max
        )
    keys = _pack(np.array(list(palette), dtype=np.uint8).reshape(-1, a.shape[-1]))
    order = np.argsort(keys)
    keys, ids = keys[order], ids[order]
    out = np.empty(a.shape[:-1], dtype=dtype)
    # One outer slice at a time: the packed colours cost 4 bytes per voxel of that slice only.
    for z in range(a.shape[0]):
        codes = _pack(a[z])
        uniq, inv = np.unique(codes, return_inverse=True)
        pos = np.searchsorted(keys, uniq).clip(0, max(len(keys) - 1, 0))
        known = (keys[pos] == uniq) if len(keys) else np.zeros(len(uniq), bool)
        if not known.all():
            missing = int(uniq[np.flatnonzero(~known)[0]])
            where = np.argwhere(codes == missing)[0]
            colour = tuple(int(a[(z, *where)][k]) for k in range(a.shape[-1]))
            raise SourceError(
                name,
                f"colour {colour} at voxel {(z, *map(int, where))} is not in the palette "
                f"(known colours: {sorted(palette)[:8]}{' ...' if len(palette) > 8 else ''})",
                "decode with the palette of the release the file comes from (old RGB or "
                "RGBA jet with the volume's max label), or use the JSON labels",
            )
        out[z] = ids[pos][inv].reshape(codes.shape)
    return out
