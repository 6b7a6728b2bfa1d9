"""CI's short copy of ``bench/bench_store.py``: the embedded server's CPU per MB is measured
and its own Go profile is decoded (the pprof reader is the bench's own code)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_store.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.e2e
def test_store_bench_profiles_the_server(tmp_path):
    out = tmp_path / "store.json"
    proc = subprocess.run([sys.executable, str(BENCH), "--seconds", "2", "--debug-port",
                           str(_free_port()), "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = json.loads(out.read_text())["runs"]
    for name in ("PUT", "GET"):
        r = runs[name]
        assert r["MB"] > 0 and r["server_ms_per_MB"] > 0, name
        assert r["top"] and 0 < sum(r["top"].values()) <= 1.0001, name
        assert 0 < sum(r["kinds"].values()) <= 1.0001, name
    # what the server does with every byte it stores: hash it (MD5 for the ETags)
    assert runs["PUT"]["kinds"]["MD5"] > 0.1
