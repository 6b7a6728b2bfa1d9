"""CI's tiny copy of ``bench/bench_full_size.py`` (the full run is a README command): it runs
end to end and reports, per dataset, the ratio to the raw copy and the process tree's peak."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_full_size.py"


@pytest.mark.e2e
def test_full_size_bench_runs_at_a_tiny_scale(tmp_path):
    out = tmp_path / "full.json"
    proc = subprocess.run([sys.executable, str(BENCH), "--scale", "0.001", "--only",
                           "deepcad,dl-smlm,sted-fm-tiff", "--json", str(out), "--workdir",
                           str(tmp_path)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert sorted(rows) == ["deepcad", "dl-smlm", "sted-fm-tiff"]
    assert rows["sted-fm-tiff"]["synth"]["files"] == 1  # one TIFF archive, as published
    for name, r in rows.items():
        # the files it reads, whole: an archive's tar headers are read by the raw copy but
        # not counted in the ingest's source bytes (its members')
        assert r["ingest"]["bytes"] <= r["raw_copy"]["bytes"] <= r["ingest"]["bytes"] * 1.02, name
        assert r["raw_copy"]["written"] == pytest.approx(
            r["ingest"]["zarr_bytes"] + r["ingest"]["wds_bytes"], rel=0.01)
        assert r["ratio_to_raw_copy"] > 0 and r["ingest"]["peak_tree_mb"] > 0
        assert r["ingest"]["processes"] >= 3  # the CLI's defaults: a LocalCluster of 2
        # the profile comes from the CLI's own report
        assert set(r["ingest"]["phases"]) >= {"scan", "units", "verify", "publish"}
        assert set(r["ingest"]["unit_seconds"]) == {"read", "zarr", "shard", "upload"}
        assert r["ingest"]["unit_seconds"]["upload"] > 0  # shards went to S3
    md = out.with_suffix(".md").read_text()
    assert "| deepcad |" in md and "x raw copy" in md and "Where the time goes" in md
    assert not list(tmp_path.glob("cloudmic-full-*"))  # temp folders removed
