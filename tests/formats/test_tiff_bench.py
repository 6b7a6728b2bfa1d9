"""CI's tiny copy of ``bench/bench_tiff.py`` (the full run is a README command): every
synthetic BioSR file takes the plain path and reads as tifffile reads it (the bench checks
each), and every row is timed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_tiff.py"


def test_tiff_bench_runs_tiny(tmp_path):
    out = tmp_path / "tiff.json"
    proc = subprocess.run([sys.executable, str(BENCH), "--pairs", "4", "--repeats", "1",
                           "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(out.read_text())
    assert set(record["variants"]) == {"BioSR uint16", "BioSR float32", "STED-FM ImageJ crops"}
    for variant in record["variants"].values():
        assert variant["files"] == variant["plain_files"] == 8
        assert len(variant["rows"]) == 6
        assert all(r["us_per_file"] > 0 for r in variant["rows"].values())
    assert out.with_suffix(".md").read_text().count("| header:") == 5
