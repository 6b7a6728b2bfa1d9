"""Runs fuzz targets or one hostile input in a process whose address space is capped.

    python _worker.py fuzz TARGET EXAMPLES [SEED]   # hypothesis over one parser
    python _worker.py exec CODE [MODULE...]         # run CODE (a hostile input) once

The cap (RLIMIT_AS) is set after the imports: the interpreter's baseline plus CAP_MB
(``CLOUDMIC_FUZZ_CAP_MB``, 400 by default), so a parser that allocates what a forged size
asks for hits MemoryError here instead of swapping the machine. The last line of stdout is
a JSON report.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import logging  # noqa: E402
import warnings  # noqa: E402

import numpy  # noqa: E402,F401  (imports that belong to the baseline)
import targets  # noqa: E402
import tifffile  # noqa: E402,F401
from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402

import cloudmic.formats.npz  # noqa: E402,F401
import cloudmic.formats.tiff_pages  # noqa: E402,F401
from cloudmic.errors import CloudmicError  # noqa: E402

CAP_MB = int(os.environ.get("CLOUDMIC_FUZZ_CAP_MB", "400"))
# Parsers log what they skip (thousands of lines here): drop what reaches no handler. Not
# logging.disable, which would also blind the parsers that read tifffile's error records.
logging.lastResort = None
logging.getLogger().addHandler(logging.NullHandler())
warnings.simplefilter("ignore")  # zipfile warns on the duplicate names we make on purpose


def _vm_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _cap() -> dict[str, int]:
    baseline = _vm_kb("VmSize") // 1024
    limit = (baseline + CAP_MB) * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return {"baseline_mb": baseline, "cap_mb": baseline + CAP_MB}


def _peak() -> dict[str, int]:
    return {"peak_vm_mb": _vm_kb("VmPeak") // 1024,
            # VmHWM, not getrusage's ru_maxrss: Linux carries that over exec from the forked
            # parent (a pytest that imported torch read as a 355 MB "peak" here)
            "peak_rss_mb": _vm_kb("VmHWM") // 1024}


def fuzz(name: str, examples: int, seed_value: int | None) -> dict:
    strategy, target = targets.TARGETS[name]
    for module in targets.PRELOAD.get(name, []):
        importlib.import_module(module)
    count = [0]

    @settings(max_examples=examples, deadline=None, database=None,
              derandomize=seed_value is None, suppress_health_check=list(HealthCheck),
              phases=[Phase.explicit, Phase.generate, Phase.shrink], print_blob=False)
    @given(strategy)
    def prop(data: bytes) -> None:
        count[0] += 1
        target(data)

    if seed_value is not None:
        prop = seed(seed_value)(prop)
    report: dict = {"target": name, **_cap()}
    start = time.monotonic()
    try:
        prop()
        report["failure"] = None
    except BaseException as exc:  # hypothesis re-raises the shrunk failure
        report["failure"] = "".join(traceback.format_exception(exc))[-6000:]
    report.update(tried=count[0], seconds=round(time.monotonic() - start, 2), **_peak())
    return report


def run_once(code: str, preload: list[str]) -> dict:
    for module in preload:
        importlib.import_module(module)
    report: dict = {**_cap()}
    try:
        exec(compile(code, "<hostile input>", "exec"), {"__name__": "__hostile__"})
        report.update(outcome="ok", type=None, message="")
    except BaseException as exc:
        kind = "project_error" if isinstance(exc, CloudmicError) else "other"
        if targets.memory_error_in(exc):
            kind = "memory_error"
        report.update(outcome=kind, type=type(exc).__name__, message=str(exc)[:2000])
    report.update(_peak())
    return report


def main() -> None:
    mode = sys.argv[1]
    if mode == "fuzz":
        seed_value = int(sys.argv[4]) if len(sys.argv) > 4 else None
        report = fuzz(sys.argv[2], int(sys.argv[3]), seed_value)
    else:
        report = run_once(sys.argv[2], sys.argv[3:])
    sys.stdout.flush()
    print("\n" + json.dumps(report))


if __name__ == "__main__":
    main()
