"""`cloudmic ingest --dry-run`: the plan a real ingest follows, nothing written, and
estimates whose rates are the measured ones."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cloudmic.ingest import ingest
from cloudmic.ingest.dry_run import RATES, plan_ingest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_the_plan_is_the_ingest_and_nothing_is_written(tmp_path, biosr_sources,
                                                        small_manifest):
    src = biosr_sources["uint16"]
    plan = plan_ingest(str(small_manifest), src)
    assert not (tmp_path / "root").exists()
    report = ingest(str(small_manifest), src, str(tmp_path / "root"))
    assert plan.units == report.units and plan.groups == report.groups
    assert plan.source_bytes == report.source_bytes
    # every stored array, uncompressed: what the ingest reports as array bytes, give or
    # take the small coordinate and label arrays
    assert 0.9 < plan.array_bytes / report.array_bytes < 1.1


def test_cli_prints_the_plan_and_refuses_to_download(tmp_path, biosr_sources):
    dest = tmp_path / "root"
    run = [sys.executable, "-m", "cloudmic.cli", "ingest", "biosr", "--dest", str(dest),
           "--dry-run"]
    out = subprocess.run([*run, "--source", str(biosr_sources["uint16"])],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "nothing written" in out.stdout and "units" in out.stdout
    assert "full_size_10pct.json: biosr" in out.stdout  # where the estimate comes from
    assert not dest.exists()
    out = subprocess.run([*run, "--fetch"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "never downloads" in out.stderr


@pytest.mark.parametrize("dataset", sorted(RATES))
def test_each_rate_is_the_line_through_the_bench_runs_it_names(dataset):
    rate = RATES[dataset]
    paths, name = re.fullmatch(r"(bench/results/\S+\.json, \S+\.json): (.+)",
                               rate.measured).groups()
    full, tenth = paths.split(", ")
    folder = Path(full).parent
    # bench_full_size: the CLI's defaults at the published size and at 10% of it
    runs = [json.loads((BENCH.parent / p).read_text())["rows"][name]
            for p in (full, folder / tenth)]
    assert [r["scale"] for r in runs] == [1.0, 0.1]
    (b1, t1), (b0, t0) = ((r["ingest"]["bytes"], r["ingest"]["seconds"]) for r in runs)
    assert rate.source_mb_s == pytest.approx((b1 - b0) / (t1 - t0) / 1e6, rel=0.01)
    assert rate.fixed_s >= 0  # a negative start-up says the two runs disagree: re-measure
    for b, t in ((b0, t0), (b1, t1)):  # the estimate goes through both measurements
        assert rate.seconds(b) == pytest.approx(t, rel=0.02)
    measured = runs[0]["ingest"]
    assert rate.peak_mb == pytest.approx(max(r["ingest"]["peak_tree_mb"] for r in runs), abs=1)
    assert rate.compression == pytest.approx(measured["array_bytes"] / measured["zarr_bytes"],
                                             rel=0.01)


@pytest.mark.parametrize("seconds, said", [(4.4, "4 s"), (119, "119 s"), (120, "2.0 min"),
                                           (5400, "90.0 min"), (7200, "2.0 h"),
                                           (17_600, "4.9 h")])
def test_estimates_read_in_seconds_minutes_or_hours(seconds, said):
    from cloudmic.humanize import human_seconds

    assert human_seconds(seconds) == said
