"""The ingest's dask cluster starts on a thread while the sources are scanned, its workers
importing what a unit needs, and closes on every way out (issue 16: start, first imports
and close were 2-3 s of a small ingest with nothing else running)."""

from __future__ import annotations

import sys

import dask
import psutil
import pytest

from cloudmic.errors import SourceError
from cloudmic.ingest import execute, ingest


def _children() -> list[psutil.Process]:
    """This process's live descendants but multiprocessing's resource tracker (one per
    process that ever spawned, by design)."""
    alive = []
    for p in psutil.Process().children(recursive=True):
        try:
            if (p.status() != psutil.STATUS_ZOMBIE
                    and "multiprocessing.resource_tracker" not in " ".join(p.cmdline())):
                alive.append(p)
        except psutil.Error:  # gone meanwhile
            pass
    return alive


def _loaded(modules: list[str]) -> bool:
    return all(m in sys.modules for m in modules)


def test_workers_start_with_the_units_modules_imported_and_stop_on_close():
    before = {p.pid for p in _children()}
    modules = ["cloudmic.ingest.run", "cloudmic.datasets.deepcad", "zarrs"]
    cluster = execute.Cluster(None, 2, 1, preload=modules)
    loaded = cluster.client().run(_loaded, modules)
    assert len(loaded) == 2 and all(loaded.values())
    cluster.close(wait=False)  # returns at once; a second close waits
    cluster.close()
    psutil.wait_procs([p for p in _children() if p.pid not in before], timeout=10)
    assert {p.pid for p in _children()} <= before


def _malloc_env() -> dict[str, str | None]:
    import os

    return {k: os.environ.get(k) for k in execute.MALLOC_ENV}


def test_workers_allocate_with_the_ingest_s_malloc_settings(monkeypatch):
    """Not dask's MALLOC_TRIM_THRESHOLD_=65536 alone (a fresh mmap for every buffer over
    128 KiB): ingests ran 1.15-1.25x faster with MALLOC_ENV (bench/results/malloc_ab.md)."""
    for k in execute.MALLOC_ENV:
        monkeypatch.delenv(k, raising=False)
    cluster = execute.Cluster(None, 1, 1)
    try:
        assert list(cluster.client().run(_malloc_env).values()) == [execute.MALLOC_ENV]
    finally:
        cluster.close()
    assert dask.config.get("distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_") \
        == 65536  # only the ingest's own cluster is changed


def test_modules_asked_for_after_the_start_are_imported_before_the_client_is_given():
    """The CLI starts the cluster before it imports the ingest; ingest() then names what
    the workers must import (the adapter's module, the destination's filesystem)."""
    cluster = execute.Cluster(None, 1, 1)
    try:
        cluster.preload(["cloudmic.datasets.sted_fm"])
        loaded = cluster.client().run(_loaded, ["cloudmic.datasets.sted_fm"])
        assert list(loaded.values()) == [True]
    finally:
        cluster.close()


def test_a_module_a_worker_lacks_does_not_stop_its_start():
    """A preload only saves time: an optional module that is not installed (the work may
    do without it) leaves the cluster usable."""
    cluster = execute.Cluster(None, 1, 1, preload=["cloudmic.ingest.run", "no_such_module_x"])
    try:
        loaded = cluster.client().run(_loaded, ["cloudmic.ingest.run"])
        assert list(loaded.values()) == [True]
    finally:
        cluster.close()


def test_a_cluster_that_cannot_start_fails_when_the_units_need_it():
    # nothing listens there; give up after 2 s, not the default 30
    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        cluster = execute.Cluster("tcp://127.0.0.1:9", 1, 1)
        with pytest.raises(OSError):
            cluster.client()
    cluster.close()  # nothing to close, and no error of its own


def test_bad_input_found_while_the_cluster_starts_leaves_no_process(biosr_copy,
                                                                     small_manifest, tmp_path):
    before = {p.pid for p in _children()}
    mt = biosr_copy("uint16")
    culprit = mt / "training_gt" / "00000012.tif"
    culprit.write_bytes(culprit.read_bytes()[:5000])
    with pytest.raises(SourceError, match="truncated TIFF"):
        ingest(str(small_manifest), mt.parent.parent, str(tmp_path / "root"), cluster=True)
    psutil.wait_procs([p for p in _children() if p.pid not in before], timeout=10)
    assert {p.pid for p in _children()} <= before
    assert not (tmp_path / "root").exists()


def test_a_cluster_the_caller_started_is_closed_when_ingest_fails_early(tmp_path):
    """The CLI starts the cluster before the ingest's imports and hands it over: ingest()
    closes it on every path, here a destination no backend knows."""
    before = {p.pid for p in _children()}
    cluster = execute.Cluster(None, 1, 1)
    with pytest.raises(Exception, match="nosuchscheme"):
        ingest("dl-smlm", tmp_path, "nosuchscheme://bucket/root", cluster=cluster)
    with pytest.raises(RuntimeError, match="after close"):
        cluster.preload(["zarr"])  # closed: nothing more is scheduled on it
    psutil.wait_procs([p for p in _children() if p.pid not in before], timeout=10)
    assert {p.pid for p in _children()} <= before
