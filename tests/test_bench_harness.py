"""The benchmarks' CPU ledger (bench/harness.py ``CpuLedger``): the figures the README's
"where the CPU goes" rests on must put each process's CPU time in its own column."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import harness  # noqa: E402

BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < {s}: pass\n"


def _burn(seconds: float) -> None:
    t = time.process_time()
    while time.process_time() - t < seconds:
        pass


def test_each_process_lands_in_its_own_column(monkeypatch):
    # the "server": started before the ledger, burning CPU while it runs, and (as a server
    # this process started would be) a child of this process: it must not count as a worker
    server = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()\n"
                               + BURN.format(s=0.4)], stdin=subprocess.PIPE)
    monkeypatch.setenv(harness.SERVER_PID_ENV, str(server.pid))
    time.sleep(0.3)  # the interpreter's own start-up is not the span's
    ledger = harness.CpuLedger()
    server.stdin.close()  # now it burns
    live = subprocess.Popen([sys.executable, "-c", BURN.format(s=0.3)
                             + "import sys; sys.stdin.read()\n"], stdin=subprocess.PIPE)
    reaped = subprocess.run([sys.executable, "-c", BURN.format(s=0.3)], check=True)
    assert reaped.returncode == 0
    _burn(0.3)
    time.sleep(0.6)  # the live worker finishes its burn, then waits
    try:
        got = ledger.stop()
    finally:
        live.stdin.close()
        live.wait()
        server.wait()
    assert 0.25 <= got["main_s"] < 0.6
    assert 0.5 <= got["workers_s"] < 1.1  # the live one (by pid) and the reaped one
    assert 0.35 <= got["server_s"] < 0.7  # counted once, as the server
    assert got["machine_s"] >= 0.9 * (got["main_s"] + got["workers_s"] + got["server_s"])
    assert got["other_s"] >= 0 and got["cores"] >= 1
    assert 0 < got["cores_busy"] <= 1.05


def test_without_a_server_pid_the_server_column_is_empty(monkeypatch):
    monkeypatch.delenv(harness.SERVER_PID_ENV, raising=False)
    ledger = harness.CpuLedger()
    _burn(0.1)
    got = ledger.stop()
    assert got["server_s"] != got["server_s"]  # nan: unknown, not zero
    assert got["main_s"] >= 0.05
    assert got["other_s"] == pytest.approx(max(0.0, got["machine_s"] - got["main_s"]
                                                - got["workers_s"]), abs=0.002)
