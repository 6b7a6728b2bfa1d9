"""Every parser under hypothesis, in a subprocess whose address space is capped at the
interpreter's baseline + 400 MB: only cloudmic's errors may come out, and none of them may
hide a MemoryError (see _worker.py and targets.py)."""

from __future__ import annotations

import pytest
from sandbox import run_worker

TARGETS = [
    "pickle", "npz", "tar", "wds_tar", "zip", "tiff", "rle", "thunderstorm", "manifest",
    "catalog_json", "index_json", "index_json_splits",
]


@pytest.mark.parametrize("target", TARGETS)
def test_parser_survives_fuzzing(target: str, fuzz_examples: int, fuzz_seed: int | None,
                                 fuzz_tally: dict) -> None:
    args = ["fuzz", target, str(fuzz_examples)] + ([str(fuzz_seed)] if fuzz_seed else [])
    report = run_worker(*args, timeout=3600)
    fuzz_tally[target] = report
    assert report["failure"] is None, (
        f"{target}: {report['tried']} inputs, then a failure (seed {fuzz_seed}):\n"
        f"{report['failure']}")
