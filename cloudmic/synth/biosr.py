"""Synthetic BioSR Microtubules in the DeepTrackAI ``biosr_dataset`` layout.

Writes the published tree (``shared/datasets.md`` section 3)::

    BioSR/Microtubules/training_wf/00000001.tif ...   training_gt/00000001.tif ...
    BioSR/Microtubules/validate_wf/00000001.tif ...   validate_gt/00000001.tif ...
    BioSR/Microtubules/test_wf/level_01 .. level_09/001.tif ...   test_gt/001.tif ...

Two encodings, because the sources disagree (**CONFLICT** in ``datasets.md``):

- ``float32``: the DeepTrack README, WF and GT both float32 128x128, normalised to 0..1;
- ``uint16``: the DL-SR authors' MATLAB script, WF uint16 128x128 and GT uint16 256x256,
  both normalised to 0..65535.

The images model what the real ones show. Microtubules are worm-like filaments rendered on
the GT grid (31.3 nm pixels, BioSR's GT-SIM sampling) with a margin so that light from
outside the patch still blurs into it. GT = filaments through a SIM-like PSF (sigma 45 nm)
at high photon count. WF = the same filaments through a widefield PSF twice as wide plus a
little out-of-focus haze, binned to the 62.6 nm camera pixels, with shot noise, background,
camera offset and read noise. As in the authors' script, the WF is the sum of the 9 raw SIM
phases, each at the signal level's photon count. Every image is then percentile-normalised
(``XxNorm(x, 0, 100)``) before encoding.

Each sample draws from its own random stream, keyed by (seed, split, index), so a file's
bytes depend on the seed and its name only: not on how many others are written, nor on the
variant (both variants show the same scenes).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from cloudmic.synth.common import check_seed, is_int, stream_rng, write_tiff
from cloudmic.synth.optics import (
    downsample,
    draw_paths,
    gaussian_blur,
    percentile_normalize,
    poisson_noise,
    random_filaments,
    smooth_noise,
)

__all__ = ["LEVEL_PHOTONS", "VARIANTS", "Variant", "synth_biosr"]

log = logging.getLogger(__name__)

Variant = Literal["float32", "uint16"]
VARIANTS: tuple[Variant, ...] = ("float32", "uint16")

MAX_TRAIN = 99_999_999  # 8-digit names
MAX_TEST = 999  # 3-digit names

# Optics and sampling. BioSR: raw SIM frames at 62.6 nm/pixel, GT-SIM at 2x (31.3 nm).
PATCH = 128  # WF patch side (and GT side in the float32 variant)
SCALE = 2  # GT/WF size ratio of the uint16 variant
GT_PIXEL_NM = 31.3
PSF_SIGMA_GT_NM = 45.0  # linear SIM, FWHM ~105 nm
PSF_SIGMA_WF_NM = 90.0  # 1.49 NA widefield at ~520 nm emission, FWHM ~210 nm
HAZE_SIGMA_NM = 400.0  # out-of-focus light in widefield
HAZE_FRACTION = 0.15
MARGIN = 32  # GT pixels rendered around the patch (> 3 sigma of the haze)

# Photons. Test levels: ~15 .. ~600 average photons per signal pixel, geometric spacing.
LEVEL_PHOTONS: tuple[float, ...] = tuple(15.0 * 40.0 ** (k / 8) for k in range(9))
RAW_PHASES = 9  # the WF file is the sum of the 9 raw linear-SIM phases
GT_PHOTONS = 1500.0  # GT-SIM is acquired at high excitation: high SNR
BACKGROUND_FRACTION = 0.05  # background photons per pixel, relative to the signal level
DARK_PHOTONS = 1.0
READ_NOISE_E = 1.5  # sCMOS, per frame
CAMERA_OFFSET = 100.0  # per frame; removed again by the percentile normalisation

# Scene statistics (GT pixels).
FILAMENTS = (3, 12)  # inclusive range per patch
PERSISTENCE_PX = (150.0, 600.0)  # ~5-20 um: cellular microtubules bend gently
LENGTH_PX = (120.0, 700.0)
BRIGHTNESS = (0.5, 1.5)
LABEL_MODULATION = 0.25  # labelling density varies along a filament...
LABEL_SMOOTH_PX = 10.0  # ...over ~300 nm
STEP_PX = 0.5  # spacing of filament points

_SPLITS = {"train": ("training", 1, 8), "validate": ("validate", 2, 8)}
_TEST_CODE = 3


@dataclass(frozen=True, slots=True)
class _Scene:
    """Clean (noise-free) images of one field of view, in arbitrary linear units."""

    gt: NDArray[np.float64]  # (PATCH*SCALE,)*2, GT grid
    wf: NDArray[np.float64]  # (PATCH,)*2, camera grid


def synth_biosr(
    out: Path | str,
    *,
    train: int = 16,
    validate: int = 4,
    test: int = 3,
    variant: Variant = "uint16",
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Write a synthetic BioSR Microtubules tree under ``out/BioSR/Microtubules/``.

    Args:
        out: parent folder; created if missing.
        train, validate: number of WF/GT pairs in ``training_*`` and ``validate_*``.
        test: number of test GT images, each with a WF input at all 9 signal levels.
        variant: ``"uint16"`` (WF 128x128, GT 256x256, 0..65535) or ``"float32"`` (both
            128x128, 0..1).
        seed: same seed, same bytes.
        progress: called with the number of files written since its previous call.

    Returns:
        ``{"root", "variant", "files", "bytes", "pairs": {"train", "validate", "test"}}``;
        ``pairs["test"]`` counts test GT images (each has 9 WF inputs).

    Raises:
        ValueError: a bad count, variant or seed.
        FileExistsError: the tree already holds TIFFs this run would not write (a previous
            run with larger counts); mixing them would give a dataset nobody generated.
    """
    _check_args(train=train, validate=validate, test=test, variant=variant, seed=seed)
    root = Path(out) / "BioSR" / "Microtubules"
    plan = _plan(root, train, validate, test)
    _refuse_stale(root, plan)
    for folder in plan:
        folder.mkdir(parents=True, exist_ok=True)

    files = nbytes = 0
    for paths, images in _samples(root, seed, train, validate, test, variant):
        for path, image in zip(paths, images, strict=True):
            nbytes += write_tiff(path, image)
        files += len(paths)
        if progress is not None:
            progress(len(paths))
    log.info(
        "wrote %d files (%d bytes) of synthetic BioSR (%s) to %s", files, nbytes, variant, root
    )
    return {
        "root": str(root),
        "variant": variant,
        "files": files,
        "bytes": nbytes,
        "pairs": {"train": train, "validate": validate, "test": test},
    }


def _check_args(
    *, train: object, validate: object, test: object, variant: object, seed: object
) -> None:
    for name, value, limit in (
        ("train", train, MAX_TRAIN),
        ("validate", validate, MAX_TRAIN),
        ("test", test, MAX_TEST),
    ):
        if not is_int(value) or not 0 <= value <= limit:
            raise ValueError(
                f"{name} must be a whole number of samples from 0 to {limit:_} "
                f"(the published names have {len(str(limit))} digits), got {value!r}"
            )
    if variant not in VARIANTS:
        raise ValueError(
            f"variant must be 'uint16' (DL-SR script: WF uint16 128x128, GT uint16 256x256) "
            f"or 'float32' (DeepTrack README: WF and GT float32 128x128), got {variant!r}"
        )
    check_seed(seed)


def _plan(root: Path, train: int, validate: int, test: int) -> dict[Path, tuple[int, int]]:
    """Every folder of the tree -> (digits of its file names, how many this run writes)."""
    plan: dict[Path, tuple[int, int]] = {}
    for split, count in (("train", train), ("validate", validate)):
        folder, _, digits = _SPLITS[split]
        plan[root / f"{folder}_wf"] = plan[root / f"{folder}_gt"] = (digits, count)
    for level in range(1, len(LEVEL_PHOTONS) + 1):
        plan[root / "test_wf" / f"level_{level:02d}"] = (3, test)
    plan[root / "test_gt"] = (3, test)
    return plan


def _refuse_stale(root: Path, plan: dict[Path, tuple[int, int]]) -> None:
    for folder, (digits, count) in plan.items():
        if not folder.is_dir():
            continue
        stale = sorted(p.name for p in folder.glob("*.tif") if not _ours(p.stem, digits, count))
        if stale:
            raise FileExistsError(
                f"{folder}: holds {len(stale)} TIFF(s) this run would not write "
                f"(e.g. {stale[0]}), left by a run with larger counts. Mixing them would "
                f"give a tree with inconsistent contents; write to an empty --out folder "
                f"or delete {root} first."
            )


def _ours(stem: str, digits: int, count: int) -> bool:
    return len(stem) == digits and stem.isdigit() and 1 <= int(stem) <= count


def _samples(
    root: Path, seed: int, train: int, validate: int, test: int, variant: Variant
) -> Iterator[tuple[list[Path], list[NDArray]]]:
    """(paths, images) of one sample at a time, in file-name order."""
    for split, count in (("train", train), ("validate", validate)):
        folder, code, digits = _SPLITS[split]
        for i in range(1, count + 1):
            scene = _scene(stream_rng(seed, code, i, 0))
            noise = stream_rng(seed, code, i, 1)
            wf = _wf(noise, scene, _random_level(noise), variant)
            gt = _gt(noise, scene, variant)
            name = f"{i:0{digits}d}.tif"
            yield [root / f"{folder}_wf" / name, root / f"{folder}_gt" / name], [wf, gt]
    for i in range(1, test + 1):
        # One scene per test sample; the levels differ only in photons and noise draws.
        scene = _scene(stream_rng(seed, _TEST_CODE, i, 0))
        name = f"{i:03d}.tif"
        paths = [root / "test_gt" / name]
        images = [_gt(stream_rng(seed, _TEST_CODE, i, 1), scene, variant)]
        for level, photons in enumerate(LEVEL_PHOTONS, start=1):
            paths.append(root / "test_wf" / f"level_{level:02d}" / name)
            images.append(_wf(stream_rng(seed, _TEST_CODE, i, 1 + level), scene, photons, variant))
        yield paths, images


def _scene(rng: np.random.Generator) -> _Scene:
    """Microtubules in one field of view, clean, on the GT and on the camera grid."""
    side = PATCH * SCALE + 2 * MARGIN
    count = int(rng.integers(FILAMENTS[0], FILAMENTS[1] + 1))
    paths = random_filaments(
        rng,
        (PATCH * SCALE,) * 2,
        count,
        persistence_px=PERSISTENCE_PX,
        length_px=LENGTH_PX,
        step_px=STEP_PX,
    )
    weights = [rng.uniform(*BRIGHTNESS) * _labelling(rng, len(p)) for p in paths]
    density = draw_paths([p + MARGIN for p in paths], (side, side), weights=weights)
    crop = slice(MARGIN, MARGIN + PATCH * SCALE)
    gt = gaussian_blur(density, PSF_SIGMA_GT_NM / GT_PIXEL_NM, mode="wrap")[crop, crop]
    # Bin to camera pixels before adding the haze: it is smooth, so the coarse grid suffices.
    wf = downsample(gaussian_blur(density, PSF_SIGMA_WF_NM / GT_PIXEL_NM, mode="wrap"), SCALE)
    haze = gaussian_blur(wf, _extra_sigma(HAZE_SIGMA_NM, PSF_SIGMA_WF_NM) / SCALE, mode="wrap")
    crop = slice(MARGIN // SCALE, MARGIN // SCALE + PATCH)
    return _Scene(gt=gt, wf=(wf + HAZE_FRACTION * haze)[crop, crop])


def _labelling(rng: np.random.Generator, n: int) -> NDArray[np.float64]:
    """Relative labelling density along a filament of ``n`` points: smooth, mean ~1."""
    wobble = smooth_noise(rng, n, LABEL_SMOOTH_PX / STEP_PX)
    wobble /= max(float(wobble.std()), 1e-12)
    return np.clip(1.0 + LABEL_MODULATION * wobble, 0.2, None)


def _extra_sigma(total_nm: float, already_nm: float) -> float:
    """Sigma (GT pixels) that, applied after a blur of ``already_nm``, gives ``total_nm``."""
    return math.sqrt(total_nm**2 - already_nm**2) / GT_PIXEL_NM


def _photon_scale(clean: NDArray[np.float64], photons: float) -> float:
    """Factor that makes the mean over signal pixels equal ``photons``.

    Signal pixels are those above 20 % of the 99th percentile: the filaments, not the gaps.
    """
    top = float(np.percentile(clean, 99))
    if top <= 0:
        return 0.0
    return photons / float(clean[clean >= 0.2 * top].mean())


def _acquire(
    rng: np.random.Generator, clean: NDArray[np.float64], photons: float, frames: int
) -> NDArray[np.float64]:
    """Camera counts: sum of ``frames`` exposures with shot noise, background and read noise."""
    per_frame = clean * _photon_scale(clean, photons) + BACKGROUND_FRACTION * photons
    counts = poisson_noise(rng, frames * (per_frame + DARK_PHOTONS))
    read = rng.normal(frames * CAMERA_OFFSET, READ_NOISE_E * math.sqrt(frames), clean.shape)
    return counts + read


def _encode(image: NDArray[np.float64], variant: Variant) -> NDArray:
    norm = percentile_normalize(image, 0, 100)
    if variant == "uint16":
        return np.round(norm * 65535).astype(np.uint16)  # MATLAB uint16() rounds
    return norm.astype(np.float32)


def _gt(rng: np.random.Generator, scene: _Scene, variant: Variant) -> NDArray:
    counts = _acquire(rng, scene.gt, GT_PHOTONS, 1)
    return _encode(counts if variant == "uint16" else downsample(counts, SCALE), variant)


def _wf(rng: np.random.Generator, scene: _Scene, photons: float, variant: Variant) -> NDArray:
    return _encode(_acquire(rng, scene.wf, photons, RAW_PHASES), variant)


def _random_level(rng: np.random.Generator) -> float:
    """A signal level drawn log-uniformly between the lowest and highest test levels."""
    return float(np.exp(rng.uniform(math.log(LEVEL_PHOTONS[0]), math.log(LEVEL_PHOTONS[-1]))))
