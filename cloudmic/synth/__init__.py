"""Faithful synthetic copies of the seed datasets' published layouts (``cloudmic synth``).

Generators are registered by dataset name as dotted paths and imported on first use, so
``import cloudmic.synth`` stays cheap. Each is ``fn(out: Path, **sizes) -> dict`` returning a
summary with at least ``root``, ``files`` and ``bytes``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["GENERATORS", "get_generator"]

GENERATORS: dict[str, str] = {
    "biosr": "cloudmic.synth.biosr:synth_biosr",
    "deepcad": "cloudmic.synth.deepcad:synth_deepcad",
    "dl-smlm": "cloudmic.synth.dl_smlm:synth_dl_smlm",
    "sted-fm": "cloudmic.synth.sted_fm:synth_sted_fm",
    "platelet-em": "cloudmic.synth.platelet_em:synth_platelet_em",
}


def get_generator(name: str) -> Callable[..., dict[str, Any]]:
    """The generator function for dataset ``name`` (e.g. ``"biosr"``)."""
    try:
        target = GENERATORS[name]
    except KeyError:
        known = ", ".join(sorted(GENERATORS))
        raise ValueError(
            f"no synthetic generator for dataset {name!r}; known datasets: {known}"
        ) from None
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)
