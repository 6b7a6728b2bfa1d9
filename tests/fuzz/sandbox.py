"""Run the fuzz worker (``_worker.py``) in a subprocess with a capped address space."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

WORKER = Path(__file__).with_name("_worker.py")
CAP_MB = 400  # above the interpreter's baseline; the bombs of issue 14 ask for 512 MiB+


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # Each new thread may reserve a 64 MB malloc arena and numpy's BLAS a pool per core:
    # address space the cap would count without any parser asking for it.
    env.update(MALLOC_ARENA_MAX="2", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", CLOUDMIC_FUZZ_CAP_MB=str(CAP_MB),
               HYPOTHESIS_STORAGE_DIRECTORY=os.path.join(tempfile.gettempdir(),
                                                         "cloudmic-fuzz-hypothesis"))
    return env


def run_worker(*args: str, timeout: float = 600) -> dict:
    """The worker's JSON report; its output is attached when it died without one."""
    proc = subprocess.run([sys.executable, str(WORKER), *args], capture_output=True,
                          text=True, timeout=timeout, env=_env(), cwd=tempfile.gettempdir())
    lines = proc.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, ValueError):
        raise AssertionError(f"worker died (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-3000:]}") from None


def run_hostile(code: str, *preload: str, timeout: float = 300) -> dict:
    """Run ``code`` once under the cap (``preload`` modules imported before it is set):
    outcome is ok, project_error, memory_error or other."""
    return run_worker("exec", code, *preload, timeout=timeout)
