"""Synthetic STED-FM crops in the published npz-in-tar layout (FLClab/STED-FM).

Writes one tar archive in ``out/``, as STED-FM's writer (``dataset.py::from_tarfile``,
``shared/datasets.md`` section 2) does:

- ``variant="uint8"``: ``STED-FM-dataset-crop.tar``; every member is the bytes of
  ``numpy.savez(buf, image=crop, metadata=info)`` with ``crop`` uint8 (224, 224), the source
  image scaled by its own 0.001/0.999 quantiles: ``clip((x - m) / (M - m), 0, 1) * 255``,
  truncated to uint8;
- ``variant="uint16"``: ``STED-FM-dataset-crops-raw.tar``; the same members with the raw
  counts, ``image.astype(uint16) - image.min()``;
- ``variant="tiff"``: ``STED-FM-dataset-crops-tiff-raw.tar``; member ``name + ".tif"``, the
  bytes of ``tifffile.imwrite(buf, crop, imagej=True)`` of the raw uint16 crop (no metadata).

Members have no folders and no extension (but ``.tif``), named
``f"{protein-id}-{image-id}-{j}-{i}"`` (``legacy_names``: ``f"{image-id}-{j}-{i}"``) where
``(j, i)`` is the crop's grid position in its source image. ``info`` is the source's
metadata entry (``sted_fm_sources``); ``protein-id`` is one of ``STED_FM_CLASSES``. Crops
are kept only if their Otsu foreground (on the uint8 source) exceeds 0.1 % of the crop, as
the writer does (``sted_fm_writer``). ``unlabelled`` more crops of random classes follow,
written as ``numpy.savez(buf, image=crop)`` with no ``metadata`` key at all, named
``f"{image-id}-{j}-{i}"`` (no protein is known). ``metadata_variants`` adds the other keys
datasets.md names: ``msr-metadata`` (``PhysicalSizeX`` in um, ``PhysicalSizeXUnit``) on msr
sources, and ``{"condition": ...}`` as the whole metadata of every other unlabelled crop.
This module holds the archive: arguments, member order and names, and these variants; the
pictures are ``sted_fm_scenes`` and ``sted_fm_sources``. Their public names are re-exported
here.

Each source image draws from its own random stream keyed by (seed, class, source number),
so the variants hold the same pictures (uint8 vs raw) and a member's bytes do not depend
on how many others are written; with the writer's fixed tar headers, the same seed gives
the same archive bytes.
"""

from __future__ import annotations

import itertools
import logging
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from cloudmic.synth.common import check_flag, check_seed, check_whole, replacing, stream_rng
from cloudmic.synth.sted_fm_sources import IMAGE_TYPES, STED_FM_CLASSES, Source, draw_source
from cloudmic.synth.sted_fm_writer import (
    ARCHIVES,
    CROP,
    QUANTILES,
    VARIANTS,
    Variant,
    add_member,
    crop_grid,
    encode,
    otsu_threshold,
    quantile_uint8,
)

__all__ = [
    "ARCHIVES",
    "CROP",
    "IMAGE_TYPES",
    "STED_FM_CLASSES",
    "VARIANTS",
    "Variant",
    "otsu_threshold",
    "quantile_uint8",
    "synth_sted_fm",
]

log = logging.getLogger(__name__)

CONDITIONS = ("control", "treated")  # made up: evaluation tars name their own
MAX_CROPS = 1_000_000
MAX_BARREN = 50  # source images in a row without a kept crop before giving up (a bug)

_STREAM_LABELLED = 1
_STREAM_UNLABELLED = 2


def synth_sted_fm(
    out: Path | str,
    *,
    crops: int = 48,
    variant: Variant = "uint8",
    unlabelled: int = 4,
    seed: int = 0,
    legacy_names: bool = False,
    metadata_variants: bool = False,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Write a synthetic STED-FM crop archive ``out/<ARCHIVES[variant]>``.

    Args:
        out: folder for the archive; created if missing.
        crops: labelled crops, spread evenly over the 24 classes (in ``STED_FM_CLASSES``
            order: with 48, two per class).
        variant: ``"uint8"`` (normalised npz), ``"uint16"`` (raw npz) or ``"tiff"`` (raw
            ImageJ TIFF members, no metadata).
        unlabelled: crops of random classes written without a ``metadata`` key.
        seed: same seed, same bytes.
        legacy_names: name members ``f"{image-id}-{j}-{i}"`` (older writers) instead of
            ``f"{protein-id}-{image-id}-{j}-{i}"``.
        metadata_variants: also write ``msr-metadata`` and ``condition`` metadata (above).
        progress: called with the number of archive members written since its previous
            call (the archive itself is one file).

    Returns:
        ``{"root", "archive", "variant", "files", "bytes", "members", "crops",
        "unlabelled", "classes": {protein: crops}}``; ``files`` is 1 (the tar).

    Raises:
        ValueError: a bad argument (the message says what to pass).
        RuntimeError: 50 source images in a row gave no usable crop (a scene bug); no
            archive is written.
    """
    _check_args(
        crops=crops, variant=variant, unlabelled=unlabelled, seed=seed, legacy_names=legacy_names
    )
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    path = root / ARCHIVES[variant]
    classes: dict[str, int] = {}
    entries = _members(
        seed, crops, unlabelled, variant, legacy_names, classes, bool(metadata_variants)
    )
    members = 0
    with replacing(path) as tmp, tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in entries:
            add_member(tar, name, data)
            members += 1
            if progress is not None:
                progress(1)
    nbytes = path.stat().st_size
    log.info("wrote %d members (%d bytes) of synthetic STED-FM to %s", members, nbytes, path)
    return {
        "root": str(root),
        "archive": str(path),
        "variant": variant,
        "files": 1,
        "bytes": nbytes,
        "members": members,
        "crops": crops,
        "unlabelled": unlabelled,
        "classes": classes,
    }


def _check_args(
    *, crops: object, variant: object, unlabelled: object, seed: object, legacy_names: object
) -> None:
    for arg, value, what in (
        ("crops", crops, "labelled crops, spread over the 24 classes"),
        ("unlabelled", unlabelled, "crops written without metadata"),
    ):
        check_whole(arg, value, 0, MAX_CROPS, what)
    if variant not in VARIANTS:
        raise ValueError(
            "variant must be 'uint8' (STED-FM-dataset-crop.tar, normalised npz), 'uint16' "
            "(STED-FM-dataset-crops-raw.tar, raw npz) or 'tiff' "
            f"(STED-FM-dataset-crops-tiff-raw.tar, raw ImageJ TIFFs), got {variant!r}"
        )
    check_seed(seed)
    check_flag("legacy_names", legacy_names)


def _members(
    seed: int,
    crops: int,
    unlabelled: int,
    variant: Variant,
    legacy_names: bool,
    classes: dict[str, int],
    variants: bool = False,
) -> Iterator[tuple[str, bytes]]:
    """(member name, member bytes) in writing order: class by class, then unlabelled."""
    suffix = ".tif" if variant == "tiff" else ""
    per_class, extra = divmod(crops, len(STED_FM_CLASSES))
    for k, protein in enumerate(STED_FM_CLASSES):
        quota = per_class + (k < extra)
        if quota:
            classes[protein] = quota
        for source, j, i, crop8, raw in _take(seed, _STREAM_LABELLED, k, quota, protein):
            info = _with_msr(source) if variants else source.info
            prefix = "" if legacy_names else f"{protein}-"
            name = f"{prefix}{info['image-id']}-{j}-{i}{suffix}"
            yield name, encode(crop8, raw, info, variant)
    for n, (source, j, i, crop8, raw) in enumerate(
        _take(seed, _STREAM_UNLABELLED, 0, unlabelled, None)
    ):
        info = {"condition": CONDITIONS[n // 2 % 2]} if variants and n % 2 else None
        yield f"{source.info['image-id']}-{j}-{i}{suffix}", encode(crop8, raw, info, variant)


def _with_msr(source: Source) -> dict:
    """The entry plus the ``msr-metadata`` an msr source carries (its true pixel size)."""
    if source.info["image-type"] != "msr":
        return source.info
    size = {"PhysicalSizeX": round(source.px_nm / 1000, 6), "PhysicalSizeXUnit": "µm"}
    return {**source.info, "msr-metadata": size}


def _take(
    seed: int, stream: int, klass: int, quota: int, protein: str | None
) -> Iterator[tuple[Source, int, int, NDArray[np.uint8], NDArray[np.uint16]]]:
    """The first ``quota`` kept crops of consecutive source images of one class."""
    left = quota
    barren = 0  # consecutive source images without a kept crop
    for s in itertools.count():
        if left <= 0:
            return
        if barren >= MAX_BARREN:
            raise RuntimeError(f"no usable crop in {MAX_BARREN} synthetic {protein} images")
        rng = stream_rng(seed, stream, klass, s)
        name = protein or STED_FM_CLASSES[int(rng.integers(len(STED_FM_CLASSES)))]
        source = draw_source(rng, seed, name, s, labelled=protein is not None)
        barren += 1
        m, big_m = np.quantile(source.counts, QUANTILES)
        if big_m <= m:  # the writer skips images it cannot normalise (a blank field)
            continue
        image8 = quantile_uint8(source.counts)
        raw = source.counts
        if raw.min() != 0:
            raw = raw - raw.min()
        for j, i, slc in crop_grid(image8):
            barren = 0
            yield source, j, i, image8[slc], raw[slc]
            left -= 1
            if left <= 0:
                return
