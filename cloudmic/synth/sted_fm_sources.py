"""STED-FM's made-up original images: per-class metadata entries and the optics.

A source image is drawn per (seed, class, number): its metadata entry (``chan-id``,
``image-id``, ``image-type``, ``user-id``, ``protein-id``), with per-class users, file
types (msr/tif/tiff/npz/md/swp) and channel ids (an int, a str like ``"STED_594 {6}"``, or
``"arr_0"``) like those of the real ``datasets/metadata.json``, and ``image-id`` the
``str(uuid3(NAMESPACE_DNS, path))`` of a made-up original path; and its raw counts: the
class's scene (``sted_fm_scenes``) seen by STED microscopy of neurons at 15-25 nm pixels
and 30-60 nm resolution, with Poisson (photon counting) noise, a little background and a
faint confocal haze (incomplete depletion). Live-cell classes get fewer photons. Source
images are 1 to 3 crops high and wide; the larger ones are no whole number of crops, so
the writer's crop grid meets edge crops, as on the real images.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from cloudmic.synth.sted_fm_scenes import MORPHOLOGY, SCENES, blur
from cloudmic.synth.sted_fm_writer import CROP

__all__ = ["IMAGE_TYPES", "STED_FM_CLASSES", "Source", "draw_source"]

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

IMAGE_TYPES: tuple[str, ...] = ("msr", "tif", "tiff", "npz", "md", "swp")

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
class Source:
    """One made-up original image: its raw counts and its metadata entry."""

    counts: NDArray[np.uint16]
    px_nm: float
    info: dict[str, int | str]


def draw_source(
    rng: np.random.Generator, seed: int, protein: str, number: int, *, labelled: bool
) -> Source:
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
    clean = SCENES[MORPHOLOGY[protein]](rng, shape, px_nm, protein)
    sigma_px = float(rng.uniform(*FWHM_NM)) / 2.3548 / px_nm
    # FFT blurs leave ~1e-16 ringing around zero: clip it, or an empty scene would be
    # scaled up to noise of either sign.
    image = np.clip(blur(clean, sigma_px), 0, None)
    haze = np.clip(blur(clean, CONFOCAL_SIGMA_NM / px_nm), 0, None)
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
    return Source(counts=counts, px_nm=px_nm, info=info)
