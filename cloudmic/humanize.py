"""Sizes for people (``12.3 MB``): one spelling for the CLI, the catalog page and reports."""

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
