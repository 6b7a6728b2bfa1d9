"""The real sample files in ../shared/data/real (never copied into the repo).

A test that needs one fails in CI (env CI set) when it is missing, and skips elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# tests/<this file> -> parents[1] is the repo; the shared folder sits beside it.
REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real"
COLICOORDS = REAL / "dl-smlm" / "proxy-thunderstorm" / "ColiCoords"
STEDFM_DERIVED = REAL / "stedfm" / "derived"
STEDFM_METADATA = REAL / "stedfm" / "original" / "FLClab-STED-FM" / "datasets" / "metadata.json"


def real_path(path: Path) -> Path:
    """``path`` if it exists; else fail in CI and skip outside it."""
    if not path.exists():
        msg = f"real sample file missing: {path} (expected ../shared/data/real beside the repo)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path
