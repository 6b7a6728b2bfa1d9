"""What every synthetic generator does the same way: argument checks, seeding, atomic writes.

The generators promise the same things (a bad argument is refused with a message that says
what to pass; the same seed gives the same bytes; no half-written file is ever left under
its final name), so the pieces that keep those promises live here once. File contents are
each generator's own business: the TIFF writer below adds nothing to the pixels it is given
(no ImageJ or shaped metadata, no software tag), which is what the published layouts hold.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import tifffile
from numpy.typing import ArrayLike

__all__ = [
    "check_flag",
    "check_seed",
    "check_whole",
    "is_int",
    "replacing",
    "stream_rng",
    "write_bytes",
    "write_tiff",
]


def is_int(value: object) -> bool:
    """A whole number (Python or numpy), but not a bool (``True`` is no count)."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def check_whole(arg: str, value: object, low: int, high: int, why: str) -> None:
    """Refuse ``value`` unless it is a whole number in ``low..high`` (``why``: what it counts)."""
    if not is_int(value) or not low <= value <= high:
        raise ValueError(
            f"{arg} must be a whole number from {low} to {high:_} ({why}), got {value!r}"
        )


def check_seed(seed: object) -> None:
    if not is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def check_flag(arg: str, value: object) -> None:
    if not isinstance(value, bool | np.bool_):
        raise ValueError(f"{arg} must be True or False, got {value!r}")


def stream_rng(seed: int, *key: int) -> np.random.Generator:
    """The random stream ``key`` of ``seed``: independent of every other key's draws, so a
    file's bytes do not depend on how many other files a run writes."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary name next to ``path`` to write to: moved onto ``path`` if the block
    succeeds, deleted if it fails, so readers see the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def write_tiff(path: Path, data: ArrayLike, photometric: str = "minisblack", **kwargs) -> int:
    """Write a plain, uncompressed TIFF atomically; return its size in bytes.

    ``kwargs`` go to ``tifffile.imwrite`` (a page iterator's ``shape`` and ``dtype``, RGBA
    ``extrasamples``).
    """
    with replacing(path) as tmp:
        tifffile.imwrite(
            tmp, data, photometric=photometric, metadata=None, software=False, **kwargs
        )
    return path.stat().st_size


def write_bytes(path: Path, blob: bytes) -> int:
    """Write ``blob`` atomically; return its size in bytes."""
    with replacing(path) as tmp:
        tmp.write_bytes(blob)
    return len(blob)
