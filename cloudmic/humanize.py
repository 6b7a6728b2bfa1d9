"""Sizes and durations for people (``12.3 MB``, ``4.2 min``): one spelling for the CLI, the
catalog page and reports."""

from __future__ import annotations

from typing import Any


def human_bytes(n: Any) -> str:
    """Decimal units (1 MB = 1e6 B), as object stores bill them; ``?`` when unknown."""
    if not isinstance(n, (int, float)) or isinstance(n, bool):
        return "?"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"


def human_seconds(t: float) -> str:
    """Seconds under 2 minutes, minutes under 2 hours, else hours."""
    return f"{t:.0f} s" if t < 120 else f"{t / 60:.1f} min" if t < 7200 else f"{t / 3600:.1f} h"
