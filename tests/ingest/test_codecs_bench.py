"""CI's tiny copy of ``bench/bench_codecs.py`` (the full run is a README command): every
candidate codec is measured per dataset, ``none`` stores the raw bytes, every codec
round-trips (the bench itself asserts it), and the manifest's codec is marked current."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_codecs.py"
CANDIDATES = ["none", "blosc-zstd1-bitshuffle", "blosc-zstd3-bitshuffle",
              "blosc-zstd5-bitshuffle", "blosc-zstd3-shuffle", "blosc-zstd3-noshuffle",
              "blosc-lz4-bitshuffle", "blosc-lz4-shuffle", "zstd1", "zstd3"]


@pytest.mark.e2e
def test_codecs_bench_runs_tiny(tmp_path):
    out = tmp_path / "codecs.json"
    proc = subprocess.run([sys.executable, str(BENCH), "--sample-mb", "1", "--repeats", "1",
                           "--only", "sted-fm,biosr", "--json", str(out),
                           "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(out.read_text())
    groups = record["groups"]
    assert {"sted-fm", "biosr"} <= set(groups)
    assert set(groups) - {"sted-fm", "biosr"} <= {"sted-fm (real crops)",
                                                   "sted-fm (real crops, uint8)"}
    assert record["blosc_nthreads"] == 1
    for label, g in groups.items():
        codecs = g["codecs"]
        assert set(CANDIDATES) <= set(codecs), label
        assert codecs["none"]["ratio"] == 1.0, label
        assert codecs["none"]["compressed"] == g["sample_bytes"] > 0, label
        for cid, r in codecs.items():
            assert r["ratio"] > 0 and r["enc_mbs"] > 0 and r["dec_mbs"] > 0, (label, cid)
            assert r["raw"] == g["sample_bytes"], (label, cid)
            assert sum(r["compressed_per_array"]) == r["compressed"], (label, cid)
        assert g["current"] == "blosc-zstd3-bitshuffle"  # both manifests' storage today
        assert g["recommendation"]["codec"] in codecs
        # the codec zarr stored is the one the bench marks current (checked by the bench)
        assert all(a["stored_codec"][0]["configuration"]["cname"] == "zstd"
                   for a in g["arrays"]), label
    md = out.with_suffix(".md").read_text()
    assert "## biosr" in md and "**(current" in md and "Recommendation per dataset" in md
    assert "synthetic" in md.lower()
    assert not list(tmp_path.glob("cloudmic-codecs-*"))  # temp folders removed


def test_a_codec_that_does_not_round_trip_is_an_error(monkeypatch):
    """The bench's own check: a decode that differs from the chunk's bytes raises."""
    import numpy as np

    monkeypatch.syspath_prepend(str(BENCH.parent))
    import bench_codecs

    broken = {"id": "broken", "kind": "none"}
    monkeypatch.setattr(bench_codecs, "codec_fns",
                        lambda c, itemsize: ((lambda b: b.tobytes()),
                                             (lambda e: bytes(len(e)))))
    chunk = np.arange(1, 65, dtype=np.uint16).view(np.uint8)
    with pytest.raises(AssertionError, match="does not round-trip"):
        bench_codecs.measure([(0, "<u2", chunk)], 1, [broken], 1)
