"""Resumable, idempotent ingest: a stopped or killed run resumes from its ledger, redoes only
unfinished units, and publishes exactly the bytes of an uninterrupted run."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import cloudmic.ingest.run as run
from cloudmic.ingest import ingest
from fixtures_biosr import published_bytes


def _published(root: Path | str) -> dict[str, str]:
    return published_bytes(str(root))


def _ledger(root: Path) -> list[Path]:
    return sorted((root / ".cloudmic" / "staging").glob("biosr-*/ledger/*__*.json"))


@pytest.fixture(scope="module")
def clean(biosr_sources, small_manifest, tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("clean")
    ingest(str(small_manifest), biosr_sources["uint16"], str(root))
    return _published(root)


def _stopped_in_third_unit(manifest: Path, source: Path, dest: Path, monkeypatch) -> list[str]:
    """Ingest ``source`` into ``dest`` in one thread until its third unit fails ("power
    cut"); the keys of the units tried, in order. ``run.run_unit`` is the real one after."""
    real, calls = run.run_unit, []

    def power_cut(*args, **kwargs):
        calls.append(args[2].key)
        if len(calls) == 3:
            raise RuntimeError("power cut")
        return real(*args, **kwargs)

    monkeypatch.setattr(run, "run_unit", power_cut)
    with pytest.raises(RuntimeError, match="power cut"):
        ingest(str(manifest), source, str(dest), workers=1)
    monkeypatch.setattr(run, "run_unit", real)
    return calls


def test_a_stopped_ingest_resumes_and_redoes_only_unfinished_units(
        biosr_sources, small_manifest, clean, tmp_path, monkeypatch):
    real = run.run_unit
    dest = tmp_path / "root"
    calls = _stopped_in_third_unit(small_manifest, biosr_sources["uint16"], dest, monkeypatch)
    assert not (dest / "biosr.zarr").exists() and not (dest / "catalog.json").exists()
    finished = {p.stem.replace("__", "/") for p in _ledger(dest)}
    assert len(finished) >= 2 and calls[2] not in finished  # the failed unit is not recorded

    redone = []
    monkeypatch.setattr(run, "run_unit",
                        lambda *a, **k: redone.append(a[2].key) or real(*a, **k))
    report = ingest(str(small_manifest), biosr_sources["uint16"], str(dest))
    assert not finished & set(redone)  # finished units are not redone
    assert len(redone) == report.units - len(finished)
    assert _published(dest) == clean
    assert not list((dest / ".cloudmic" / "staging").iterdir())  # ledger gone once published


def test_temp_files_a_killed_unit_left_are_not_published(
        biosr_sources, small_manifest, clean, tmp_path, monkeypatch):
    """kill -9 inside zarr's atomic write leaves ``<chunk>.<uuid hex>.partial`` beside the
    chunk (seen in CI); inside ours, ``*.tar.part``. The resumed run publishes neither."""
    dest = tmp_path / "root"
    _stopped_in_third_unit(small_manifest, biosr_sources["uint16"], dest, monkeypatch)
    staged = next((dest / "biosr.releases").iterdir())  # the version the units write into
    chunk = next(p for p in staged.rglob("*") if p.is_file() and p.parent.name == "c")
    (chunk.parent / f"{chunk.name}.3a1b8b7278414d52a76a89dff1849901.partial").write_bytes(b"")
    shard = next(staged.rglob("*.tar"))
    (shard.parent / "tmpx1y2z3.tar.part").write_bytes(b"half a tar")
    ingest(str(small_manifest), biosr_sources["uint16"], str(dest))
    assert _published(dest) == clean


def test_changed_sources_start_a_fresh_staging(biosr_sources, small_manifest, tmp_path):
    from cloudmic.datasets import get_adapter
    from cloudmic.ingest.ledger import run_id
    from cloudmic.manifest import load_manifest

    manifest = load_manifest(str(small_manifest))
    src = tmp_path / "src"
    shutil.copytree(biosr_sources["uint16"], src)
    before = run_id(manifest, get_adapter(manifest).scan(src), "x")
    tif = next(src.rglob("*.tif"))
    os.utime(tif, ns=(tif.stat().st_atime_ns, tif.stat().st_mtime_ns + 10**9))
    assert run_id(manifest, get_adapter(manifest).scan(src), "x") != before


KILLER = """
import sys
from cloudmic.ingest import ingest
ingest(sys.argv[1], sys.argv[2], sys.argv[3], workers=2)
"""


@pytest.mark.e2e
def test_kill_9_at_random_moments_then_rerun_gives_the_clean_bytes(
        biosr_sources, small_manifest, clean, tmp_path):
    """The issue's test: SIGKILL the ingest process at random points, several times in a
    row; a final run completes and the published store is byte-identical to a clean run."""
    dest = tmp_path / "root"
    cmd = [sys.executable, "-c", KILLER, str(small_manifest), str(biosr_sources["uint16"]),
           str(dest)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.monotonic()  # how long an uninterrupted run takes here, to spread the kills
    probe = subprocess.run(cmd[:3] + [str(small_manifest), str(biosr_sources["uint16"]),
                                      str(tmp_path / "probe")], env=env, capture_output=True)
    assert probe.returncode == 0, probe.stderr[-2000:]
    duration = time.monotonic() - t0
    rng = random.Random(1234)
    killed = 0
    for _ in range(4):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(rng.uniform(0.3, 0.95) * duration)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            killed += 1
        proc.wait()
    assert killed >= 2  # most attempts were really cut off
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _published(dest) == clean
    catalog = json.loads((dest / "catalog.json").read_text())
    assert "biosr" in catalog["datasets"]


def test_data_that_differs_from_its_source_never_reaches_the_catalog(
        biosr_sources, small_manifest, tmp_path, monkeypatch):
    """Zarr and WebDataset agree (both written from the same wrong data); only the read-back
    of the source catches it, and nothing is published."""
    real = run.write_unit

    def off_by_one(g, group, unit, data):
        data["wf"] += 1  # in place: the tar gets the same wrong pixels
        return real(g, group, unit, data)

    monkeypatch.setattr(run, "write_unit", off_by_one)
    dest = tmp_path / "root"
    with pytest.raises(run.VerifyFailed, match="differs from a fresh read of its source"):
        ingest(str(small_manifest), biosr_sources["uint16"], str(dest))
    assert not (dest / "biosr.zarr").exists() and not (dest / "catalog.json").exists()
    assert not list((dest / ".cloudmic" / "staging").iterdir())  # a bad staging is dropped


@pytest.mark.e2e
def test_s3_server_restarted_during_an_ingest_then_a_rerun_finishes(
        biosr_sources, small_manifest, clean, tmp_path, monkeypatch):
    import threading

    from cloudmic.ingest.verify import verify_dataset
    from cloudmic.storage import seaweed
    from cloudmic.storage.location import Location

    data = tmp_path / "store"
    info = seaweed.up(data)
    try:
        for k, v in info.env().items():
            monkeypatch.setenv(k, v)
        real, started = run.run_unit, threading.Event()

        def slow(*a, **k):  # a unit takes a while, so the restart lands mid-ingest
            started.set()
            time.sleep(0.5)
            return real(*a, **k)

        monkeypatch.setattr(run, "run_unit", slow)

        def restart() -> None:
            started.wait(30)
            seaweed.down(data)
            time.sleep(2)
            seaweed.up(data, port=info.s3_port)

        worker = threading.Thread(target=restart)
        worker.start()
        # the outage may outlast the client's retries: then the re-run below finishes
        with contextlib.suppress(Exception):
            ingest(str(small_manifest), biosr_sources["uint16"], "s3://restart", workers=1)
        worker.join(60)
        monkeypatch.setattr(run, "run_unit", real)
        ingest(str(small_manifest), biosr_sources["uint16"], "s3://restart")
        assert verify_dataset(Location.parse("s3://restart"), "biosr").ok
        assert _published("s3://restart") == clean
    finally:
        seaweed.down(data)


def test_stopped_after_consolidation_then_resumed_gives_the_clean_bytes(
        biosr_sources, small_manifest, clean, tmp_path, monkeypatch):
    """The staged store was already consolidated (and its sizes recorded) when the run
    stopped: the resumed run must still write the same root metadata."""
    real = run.verify_against_source

    def stop(*a, **k):
        raise RuntimeError("stopped after consolidation")

    monkeypatch.setattr(run, "verify_against_source", stop)
    dest = tmp_path / "root"
    with pytest.raises(RuntimeError, match="after consolidation"):
        ingest(str(small_manifest), biosr_sources["uint16"], str(dest))
    monkeypatch.setattr(run, "verify_against_source", real)
    ingest(str(small_manifest), biosr_sources["uint16"], str(dest))
    assert _published(dest) == clean


@pytest.mark.e2e
def test_two_ingests_of_the_same_sources_share_a_dask_cluster(
        biosr_sources, small_manifest, clean, tmp_path):
    """Task keys are cluster-wide: the same units bound for two destinations at once must
    not share results (each destination gets its own writes)."""
    import threading

    from distributed import LocalCluster

    dests = [tmp_path / "a", tmp_path / "b"]
    errors: list[BaseException] = []
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        def one(dest: Path) -> None:
            try:
                ingest(str(small_manifest), biosr_sources["uint16"], str(dest),
                       scheduler=cluster.scheduler_address)
            except BaseException as exc:  # reported below, with the other thread's
                errors.append(exc)

        threads = [threading.Thread(target=one, args=(d,)) for d in dests]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
    assert not errors, errors
    for dest in dests:
        assert _published(dest) == clean
