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
``(j, i)`` is the crop's grid position in its source image (multiples of 224; edge crops are
shifted inwards, their name is not) and ``image-id`` is ``str(uuid3(NAMESPACE_DNS, path))``
of a made-up original path. ``info`` is ``{"chan-id", "image-id", "image-type", "user-id",
"protein-id"}`` in that order, with per-class users, file types (msr/tif/tiff/npz/md/swp)
and channel ids (an int, a str like ``"STED_594 {6}"``, or ``"arr_0"``) like those of the
real ``datasets/metadata.json``; ``protein-id`` is one of ``STED_FM_CLASSES``. Crops are
kept only if their Otsu foreground (on the uint8 source) exceeds 0.1 % of the crop, as the
writer does. ``unlabelled`` more crops of random classes follow, written as
``numpy.savez(buf, image=crop)`` with no ``metadata`` key at all, named
``f"{image-id}-{j}-{i}"`` (no protein is known). ``metadata_variants`` adds the other keys
datasets.md names: ``msr-metadata`` (``PhysicalSizeX`` in um, ``PhysicalSizeXUnit``) on msr
sources, and ``{"condition": ...}`` as the whole metadata of every other unlabelled crop.

What the images model: STED microscopy of neurons at 15-25 nm pixels and 30-60 nm
resolution, with Poisson (photon counting) noise, a little background and a faint
confocal haze (incomplete depletion). Each class has its own morphology: microtubule
bundles (tubulin, live/sir-tubulin), curly networks (vimentin), the ~190 nm periodic
rings of the axonal membrane skeleton (beta2-spectrin, adducin, and some f-actin and
sir-actin images), dendritic actin with spines (f-actin, lifeact, sir-actin), synaptic
nanocluster puncta along dendrites (psd95, homer, gephyrin, glur1, bassoon, rim),
vesicle clusters (vglut1, vglut2, vgat), diffuse dendrites with spines (camkii,
beta-camkii, map2), hollow mitochondria (tom20), granules (FUS) and dotted membranes
(nkcc2). Live-cell classes get fewer photons.

Each source image draws from its own random stream keyed by (seed, class, source number),
so the variants hold the same pictures (uint8 vs raw) and a member's bytes do not depend
on how many others are written. The tar headers are fixed (mtime 0, uid/gid 0, mode
0o644, no user names), so the same seed gives the same archive bytes.
"""

from __future__ import annotations

import io
import itertools
import logging
import math
import os
import tarfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import tifffile
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

# The keys of FLClab/STED-FM datasets/metadata.json, in its order (FUS upper-case).
STED_FM_CLASSES: tuple[str, ...] = (
    "FUS",
    "adducin",
    "bassoon",
    "beta-camkii",
    "beta2-spectrin",
    "camkii",
    "f-actin",
    "gephyrin",
    "glur1",
    "homer",
    "lifeact",
    "live-tubulin",
    "map2",
    "nkcc2",
    "psd95",
    "rim",
    "sir-actin",
    "sir-tubulin",
    "tom20",
    "tubulin",
    "vgat",
    "vglut1",
    "vglut2",
    "vimentin",
)

Variant = Literal["uint8", "uint16", "tiff"]
VARIANTS: tuple[Variant, ...] = ("uint8", "uint16", "tiff")
ARCHIVES: dict[str, str] = {
    "uint8": "STED-FM-dataset-crop.tar",
    "uint16": "STED-FM-dataset-crops-raw.tar",
    "tiff": "STED-FM-dataset-crops-tiff-raw.tar",
}
CONDITIONS = ("control", "treated")  # made up: evaluation tars name their own
IMAGE_TYPES: tuple[str, ...] = ("msr", "tif", "tiff", "npz", "md", "swp")

CROP = 224
QUANTILES = (0.001, 0.999)
MIN_FOREGROUND = 0.001  # of the crop's pixels, above the Otsu threshold
TAR_MTIME = 0
MAX_CROPS = 1_000_000
MAX_BARREN = 50  # source images in a row without a kept crop before giving up (a bug)

# Optics (per source image).
PIXEL_NM = (15.0, 25.0)
FWHM_NM = (30.0, 60.0)
CONFOCAL_SIGMA_NM = 100.0
CONFOCAL_FRACTION = 0.05
PEAK_PHOTONS = (15.0, 150.0)  # fixed samples; log-uniform
LIVE_PEAK_PHOTONS = (5.0, 30.0)
BACKGROUND_PHOTONS = (0.05, 1.5)
GRID_WEIGHTS = (0.55, 0.3, 0.15)  # source images 1, 2 or 3 crops high (and wide)

_LIVE = {"lifeact", "live-tubulin", "sir-actin", "sir-tubulin"}
_STREAM_LABELLED = 1
_STREAM_UNLABELLED = 2

# Per class: (weight, user-id, image-type, chan-id, folder of the made-up original path),
# after the most common combinations in the real metadata.json.
_SOURCES: dict[str, tuple[tuple[float, str, str, int | str, str], ...]] = {
    "FUS": ((1, "jmbellavance", "msr", "STED_594 {6}", "ALS_FUS_and_PSD95"),),
    "adducin": ((1, "jchabbert", "msr", "STED_561 {4}", "Tests-Abs-ABPs"),),
    "bassoon": (
        (0.45, "twiesner", "tif", 1, "synaptic-protein-paper/Basson-Homer"),
        (0.35, "twiesner", "tif", 0, "synaptic-protein-paper/PSD95-Basson"),
        (0.2, "jgsantiague", "msr", "STED_594 {12}", "synaptic"),
    ),
    "beta-camkii": (
        (0.85, "jchabbert", "msr", "STED_594 {2}", "STED-Actin-shRNA-BCaMKII"),
        (0.15, "braulier", "tiff", 1, "2-Color STED CaMKII-ACTIN"),
    ),
    "beta2-spectrin": (
        (0.5, "jchabbert", "msr", "STED_561 {2}", "spectrin"),
        (0.5, "jchabbert", "msr", "STED594 {10}", "spectrin"),
    ),
    "camkii": ((1, "flavoiecardinal", "npz", "arr_0", "optim-lavoiecardinal/CaMKII_Neuron"),),
    "f-actin": (
        (0.5, "flavoiecardinal", "npz", "arr_0", "optim-lavoiecardinal/Actin"),
        (0.2, "flavoiecardinal", "tif", 0, "factin-dendrite-lavoiecardinal"),
        (0.15, "jchabbert", "msr", "STED_635P {2}", "Actin"),
        (0.1, "jchabbert", "msr", "STED_640 {12}", "Actin"),
        (0.05, "braulier", "tiff", 0, "2-Color STED CaMKII-ACTIN"),
    ),
    "gephyrin": ((1, "apelletierrioux", "msr", "STED_640 {12}", "Maitrise"),),
    "glur1": ((1, "apelletierrioux", "msr", "STED_640 {12}", "Maitrise"),),
    "homer": ((1, "twiesner", "tif", 1, "synaptic-protein-paper/Basson-Homer"),),
    "lifeact": ((1, "flavoiecardinal", "npz", "arr_0", "optim-lavoiecardinal/LifeAct_Neuron"),),
    "live-tubulin": ((1, "jchabbert", "msr", "STED640 {0}", "SNAP-Tubulin"),),
    "map2": ((1, "apelletierrioux", "msr", "STED 635 {12}", "Maitrise"),),
    "nkcc2": ((1, "twiesner", "tif", 1, "synaptic-protein-paper/Basson-NKCC2"),),
    "psd95": (
        (0.4, "jmbellavance", "msr", "STED_635P {6}", "ALS_FUS_and_PSD95"),
        (0.25, "flavoiecardinal", "npz", "arr_0", "optim-lavoiecardinal/PSD95_Neuron"),
        (0.2, "twiesner", "tif", 0, "synaptic-protein-paper/PSD95-Basson"),
        (0.1, "sbaker", "msr", "STED_635P {6}", "P6FinalP7"),
        (0.05, "oferguson", "md", 1, "synaptic_proteins"),
    ),
    "rim": ((1, "twiesner", "tif", 1, "synaptic-protein-paper/Basson-Rim"),),
    "sir-actin": (
        (0.5, "jchabbert", "msr", "STED640 {0}", "SiR-actin"),
        (0.5, "jchabbert", "msr", "STED640 {10}", "SiR-actin"),
    ),
    "sir-tubulin": ((1, "jchabbert", "msr", "STED640 {0}", "SNAP-Tubulin-SiR"),),
    "tom20": (
        (0.75, "oferguson", "tif", 2, "Inserts_Images_and_Masks"),
        (0.25, "oferguson", "tif", 1, "Inserts_Images_and_Masks"),
    ),
    "tubulin": ((1, "flavoiecardinal", "npz", "arr_0", "optim-lavoiecardinal/tubulin"),),
    "vgat": (
        (0.5, "apelletierrioux", "msr", "STED_LSS {12}", "Maitrise"),
        (0.5, "apelletierrioux", "msr", "STED_594 {12}", "Maitrise"),
    ),
    "vglut1": ((1, "apelletierrioux", "msr", "STED_594 {12}", "Maitrise"),),
    "vglut2": (
        (0.7, "sbaker", "msr", "STED_594 {6}", "P6FinalP7"),
        (0.25, "oferguson", "tif", 0, "synaptic_proteins"),
        (0.05, "oferguson", "swp", 0, "synaptic_proteins"),
    ),
    "vimentin": ((1, "adeschenes", "msr", "STED_561 {12}", "Vimentin"),),
}


@dataclass(frozen=True, slots=True)
class _Source:
    """One made-up original image: its raw counts and its metadata entry."""

    counts: NDArray[np.uint16]
    px_nm: float
    info: dict[str, int | str]


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
    tmp = path.with_name(f".{path.name}.tmp")
    classes: dict[str, int] = {}
    members = 0
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            for name, data in _members(seed, crops, unlabelled, variant, legacy_names, classes,
                                     bool(metadata_variants)):
                header = tarfile.TarInfo(name)
                header.size = len(data)
                header.mtime = TAR_MTIME
                header.mode = 0o644
                header.uid = header.gid = 0
                header.uname = header.gname = ""
                tar.addfile(header, io.BytesIO(data))
                members += 1
                if progress is not None:
                    progress(1)
    except BaseException:
        tmp.unlink(missing_ok=True)  # nothing half-written is left behind
        raise
    os.replace(tmp, path)
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
        if not _is_int(value) or not 0 <= value <= MAX_CROPS:
            raise ValueError(
                f"{arg} must be a whole number from 0 to {MAX_CROPS:_} ({what}), got {value!r}"
            )
    if variant not in VARIANTS:
        raise ValueError(
            "variant must be 'uint8' (STED-FM-dataset-crop.tar, normalised npz), 'uint16' "
            "(STED-FM-dataset-crops-raw.tar, raw npz) or 'tiff' "
            f"(STED-FM-dataset-crops-tiff-raw.tar, raw ImageJ TIFFs), got {variant!r}"
        )
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(legacy_names, bool | np.bool_):
        raise ValueError(f"legacy_names must be True or False, got {legacy_names!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _rng(seed: int, stream: int, klass: int, source: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream, klass, source)))


# ---- the writer's rules --------------------------------------------------------------------


def quantile_uint8(image: NDArray) -> NDArray[np.uint8]:
    """STED-FM's normalisation: ``clip((x - m) / (M - m), 0, 1) * 255`` truncated to uint8.

    ``m, M`` are the 0.001 and 0.999 quantiles of the whole source image (not of a crop).
    """
    m, big_m = np.quantile(image, QUANTILES)
    if big_m <= m:  # the writer skips such images; ours always have signal
        raise ValueError("image has no contrast between its 0.001 and 0.999 quantiles")
    return (np.clip((image - m) / (big_m - m), 0, 1) * 255).astype(np.uint8)


def otsu_threshold(image: NDArray[np.uint8]) -> int:
    """Otsu's threshold of an integer image, as ``skimage.filters.threshold_otsu`` computes
    it (one histogram bin per integer value between the image's min and max)."""
    lo, hi = int(image.min()), int(image.max())
    if lo == hi:
        return lo
    counts = np.bincount(image.ravel().astype(np.int64) - lo, minlength=hi - lo + 1)
    centers = np.arange(lo, hi + 1, dtype=np.float64)
    w1 = np.cumsum(counts)
    w2 = np.cumsum(counts[::-1])[::-1]
    m1 = np.cumsum(counts * centers) / np.maximum(w1, 1)
    m2 = (np.cumsum((counts * centers)[::-1]) / np.maximum(w2[::-1], 1))[::-1]
    between = w1[:-1] * w2[1:] * (m1[:-1] - m2[1:]) ** 2
    return int(centers[int(np.argmax(between))])


def _crops(
    image8: NDArray[np.uint8],
) -> Iterator[tuple[int, int, tuple[slice, slice]]]:
    """Grid positions ``(j, i)`` and slices of the crops the writer keeps."""
    h, w = image8.shape
    foreground = image8 > otsu_threshold(image8)
    for j in range(0, h, CROP):
        for i in range(0, w, CROP):
            # Edge crops are shifted inwards; the name keeps the grid position.
            slc = (
                slice(j, j + CROP) if j + CROP < h else slice(h - CROP, h),
                slice(i, i + CROP) if i + CROP < w else slice(w - CROP, w),
            )
            if foreground[slc].sum() > MIN_FOREGROUND * CROP * CROP:
                yield j, i, slc


def _encode(
    crop8: NDArray[np.uint8],
    raw: NDArray[np.uint16],
    info: dict | None,
    variant: Variant,
) -> bytes:
    buffer = io.BytesIO()
    if variant == "tiff":
        tifffile.imwrite(buffer, np.ascontiguousarray(raw), imagej=True)
        return buffer.getvalue()
    crop = np.ascontiguousarray(crop8 if variant == "uint8" else raw)
    if info is None:
        np.savez(buffer, image=crop)
    else:
        np.savez(buffer, image=crop, metadata=info)
    return buffer.getvalue()


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
            yield name, _encode(crop8, raw, info, variant)
    for n, (source, j, i, crop8, raw) in enumerate(
        _take(seed, _STREAM_UNLABELLED, 0, unlabelled, None)
    ):
        info = {"condition": CONDITIONS[n // 2 % 2]} if variants and n % 2 else None
        yield f"{source.info['image-id']}-{j}-{i}{suffix}", _encode(crop8, raw, info, variant)


def _with_msr(source: _Source) -> dict:
    """The entry plus the ``msr-metadata`` an msr source carries (its true pixel size)."""
    if source.info["image-type"] != "msr":
        return source.info
    size = {"PhysicalSizeX": round(source.px_nm / 1000, 6), "PhysicalSizeXUnit": "µm"}
    return {**source.info, "msr-metadata": size}


def _take(
    seed: int, stream: int, klass: int, quota: int, protein: str | None
) -> Iterator[tuple[_Source, int, int, NDArray[np.uint8], NDArray[np.uint16]]]:
    """The first ``quota`` kept crops of consecutive source images of one class."""
    left = quota
    barren = 0  # consecutive source images without a kept crop
    for s in itertools.count():
        if left <= 0:
            return
        if barren >= MAX_BARREN:
            raise RuntimeError(f"no usable crop in {MAX_BARREN} synthetic {protein} images")
        rng = _rng(seed, stream, klass, s)
        name = protein or STED_FM_CLASSES[int(rng.integers(len(STED_FM_CLASSES)))]
        source = _source(rng, seed, name, s, labelled=protein is not None)
        barren += 1
        m, big_m = np.quantile(source.counts, QUANTILES)
        if big_m <= m:  # the writer skips images it cannot normalise (a blank field)
            continue
        image8 = quantile_uint8(source.counts)
        raw = source.counts
        if raw.min() != 0:
            raw = raw - raw.min()
        for j, i, slc in _crops(image8):
            barren = 0
            yield source, j, i, image8[slc], raw[slc]
            left -= 1
            if left <= 0:
                return


def _source(
    rng: np.random.Generator, seed: int, protein: str, number: int, *, labelled: bool
) -> _Source:
    """Draw one source image (shape, optics, photons, scene) and its metadata entry."""
    weights = np.array([e[0] for e in _SOURCES[protein]], dtype=np.float64)
    _, user, kind, chan, folder = _SOURCES[protein][
        int(rng.choice(len(weights), p=weights / weights.sum()))
    ]
    ny, nx = (int(rng.choice(3, p=GRID_WEIGHTS)) + 1 for _ in range(2))
    shape = tuple(
        CROP if n == 1 else int(rng.integers(CROP * (n - 1) + 1, CROP * n + 1)) for n in (ny, nx)
    )
    px_nm = float(rng.uniform(*PIXEL_NM))
    clean = _SCENES[_MORPHOLOGY[protein]](rng, shape, px_nm, protein)
    sigma_px = float(rng.uniform(*FWHM_NM)) / 2.3548 / px_nm
    # FFT blurs leave ~1e-16 ringing around zero: clip it, or an empty scene would be
    # scaled up to noise of either sign.
    image = np.clip(_blur(clean, sigma_px), 0, None)
    haze = np.clip(_blur(clean, CONFOCAL_SIGMA_NM / px_nm), 0, None)
    if haze.max() > 0:
        image = image + CONFOCAL_FRACTION * haze * (image.max() / haze.max())
    peak = math.exp(rng.uniform(*np.log(LIVE_PEAK_PHOTONS if protein in _LIVE else PEAK_PHOTONS)))
    # Brightest labels at ``peak`` photons; a near-empty field is not blown up to noise.
    top = max(float(np.percentile(image, 99.9)), 1e-3 * float(image.max()))
    scale = peak / top if clean.max() > 0 and top > 0 else 0.0
    expected = image * scale + rng.uniform(*BACKGROUND_PHOTONS)
    counts = np.clip(rng.poisson(expected), 0, 65535).astype(np.uint16)

    ext = {"md": "README.md", "swp": ".README.md.swp"}.get(kind)
    stem = f"synthetic-{seed}/{protein if labelled else 'scraped'}/{folder}/{number:05d}"
    original = f"{user}/{stem}/{ext}" if ext else f"{user}/{stem}_{protein}.{kind}"
    info: dict[str, int | str] = {
        "chan-id": chan,
        "image-id": str(uuid.uuid3(uuid.NAMESPACE_DNS, original)),
        "image-type": kind,
        "user-id": user,
        "protein-id": protein,
    }
    return _Source(counts=counts, px_nm=px_nm, info=info)


# ---- scenes: clean label density on the source grid ----------------------------------------
#
# Every scene returns an (h, w) float image of label density (arbitrary units) that the
# optics then blur; lengths below are in nm and converted with the pixel size.


def _blur(image: NDArray[np.float64], sigma_px: float) -> NDArray[np.float64]:
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


def _field_um2(shape: tuple[int, int], px_nm: float) -> float:
    return shape[0] * shape[1] * (px_nm / 1000.0) ** 2


def _backbones(
    rng: np.random.Generator,
    shape: tuple[int, int],
    px_nm: float,
    count: int,
    persistence_um: tuple[float, float] = (8.0, 30.0),
) -> list[NDArray[np.float64]]:
    """Long, gently curved neurites crossing the field."""
    span = math.hypot(*shape)
    return random_filaments(
        rng,
        shape,
        count,
        persistence_px=(_um(px_nm, persistence_um[0]), _um(px_nm, persistence_um[1])),
        length_px=(2.5 * span, 3.5 * span),
        step_px=1.0,
        smooth_px=_um(px_nm, 0.5),
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
    return _blur(draw_paths(paths, shape), width_px / 2.5)


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
    free = random_filaments(
        rng,
        shape,
        int(rng.integers(0, 5)),
        persistence_px=_um(px_nm, 5.0),
        length_px=(_um(px_nm, 1.0), _um(px_nm, 6.0)),
        step_px=1.0,
        smooth_px=_um(px_nm, 0.3),
    )
    paths += free
    weights = [_labelling(rng, len(p), px_nm) for p in paths]
    return draw_paths(paths, shape, weights=weights)


def _scene_vimentin(rng, shape, px_nm, protein):
    """Intermediate filaments: a dense, curly, crossing network."""
    count = max(int(rng.poisson(1.5 * _field_um2(shape, px_nm))), 3)
    paths = random_filaments(
        rng,
        shape,
        count,
        persistence_px=(_um(px_nm, 0.8), _um(px_nm, 2.5)),
        length_px=(_um(px_nm, 2.0), _um(px_nm, 8.0)),
        step_px=1.0,
        smooth_px=_um(px_nm, 0.15),
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
    paths = random_filaments(
        rng,
        shape,
        count,
        persistence_px=(_um(px_nm, 1.5), _um(px_nm, 5.0)),
        length_px=(_um(px_nm, 0.5), _um(px_nm, 3.0)),
        step_px=1.0,
        smooth_px=_um(px_nm, 0.3),
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
    nucleus = _blur((((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1) * 1.0, 8.0)
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


_SCENES: dict[str, Callable[..., NDArray[np.float64]]] = {
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

_MORPHOLOGY: dict[str, str] = {
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
