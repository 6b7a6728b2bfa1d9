"""Run work units: on a thread pool in this process, or on dask.distributed (a LocalCluster
of worker processes, or an existing scheduler). Units never share a shard, so any order
and any placement is safe; each reports to the ledger itself when it is done."""

from __future__ import annotations

import importlib
import logging
import traceback
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

from cloudmic.errors import is_permanent

log = logging.getLogger(__name__)

Task = Callable[..., dict[str, Any]]


def run_threads(fn: Task, args: list[tuple], workers: int) -> Iterator[dict[str, Any]]:
    """Results in submission order; the first error cancels what has not started."""
    with ThreadPoolExecutor(max(1, workers)) as pool:
        futures = [pool.submit(fn, *a) for a in args]
        try:
            for fut in futures:
                yield fut.result()
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise


# How the C allocator of an ingest worker behaves. dask's nannies set only
# MALLOC_TRIM_THRESHOLD_=65536 (to hand freed memory back to the OS), which also switches
# off glibc's dynamic mmap threshold: every buffer over 128 KiB (a TIFF, a decoded frame, an
# encoded shard, a tar record) was then a fresh mmap, faulted in and zeroed page by page,
# and unmapped when freed. Buffers under 4 MiB now come from the heap, and at most 32 MiB of
# free heap is kept; one arena for all threads (zarrs and hashlib allocate on threads of
# their own), so that those 32 MiB are not kept per thread. A/B at 20% of the published
# sizes, 2 workers to the embedded S3 (bench/results/malloc_ab.md): BioSR, STED-FM and
# DeepCAD 1.15-1.25x faster end to end, 23-29% less CPU, peak memory unchanged
# (without the arena and 4 MiB limits, the peak of the process tree grew by ~150 MB).
MALLOC_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": str(4 << 20),
              "MALLOC_TRIM_THRESHOLD_": str(32 << 20)}
WORKER_MALLOC = {f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in MALLOC_ENV.items()}


@contextmanager
def dask_client(scheduler: str | None, workers: int, threads: int,
                on_cluster: Callable[[str, str | None], None] | None = None) -> Iterator[Any]:
    """A client of ``scheduler``, or of a LocalCluster of ``workers`` processes with
    ``threads`` threads each (spawned: no fork after threads). ``on_cluster`` gets the
    scheduler address and the dashboard link."""
    import dask
    from distributed import Client, LocalCluster

    # distributed logs every connection at INFO; keep the terminal for the progress bar
    logging.getLogger("distributed").setLevel(max(logging.WARNING, logging.getLogger().level))
    if scheduler:
        with Client(scheduler, set_as_default=False) as client:
            if on_cluster:
                on_cluster(scheduler, client.dashboard_link)
            yield client
        return
    with dask.config.set(WORKER_MALLOC), \
            LocalCluster(n_workers=max(1, workers), threads_per_worker=max(1, threads),
                         processes=True, dashboard_address="127.0.0.1:0", host="127.0.0.1",
                         silence_logs=logging.ERROR) as cluster, \
            Client(cluster, set_as_default=False) as client:
        if on_cluster:
            on_cluster(cluster.scheduler_address, client.dashboard_link)
        yield client


class Cluster:
    """The client of :func:`dask_client`, started on a thread of its own: the cluster's
    processes start, and import what the units need (``preload``: module names), while
    the caller scans the sources; and closed the same way, while the caller seals and
    verifies. At 10% of an archive the start, the workers' first imports and the close
    were 2-3 s of a ~20 s ingest, spent with nothing else running (issue 16). The CLI
    starts one before importing the ingest, and :func:`cloudmic.ingest.ingest` adds the
    modules to preload once it knows the adapter and the destination."""

    def __init__(self, scheduler: str | None, workers: int, threads: int,
                 on_cluster: Callable[[str, str | None], None] | None = None,
                 preload: Iterable[str] = ()) -> None:
        self._stack = ExitStack()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="cloudmic-cluster")
        self._up = self._pool.submit(self._start, scheduler, workers, threads, on_cluster)
        self._ready: Future = self._up
        self._down: Future | None = None
        if preload:
            self.preload(preload)

    def _start(self, scheduler: str | None, workers: int, threads: int,
               on_cluster: Callable[[str, str | None], None] | None) -> Any:
        return self._stack.enter_context(dask_client(scheduler, workers, threads, on_cluster))

    def preload(self, modules: Iterable[str]) -> None:
        """Have every worker import ``modules`` as soon as the cluster is up (on the
        cluster's thread: this returns at once); :meth:`client` waits for it."""
        if self._down is not None:
            raise RuntimeError("Cluster.preload() after close()")
        names, up, before = sorted(set(modules)), self._up, self._ready

        def run() -> None:
            before.result()  # an earlier preload's error is not lost
            up.result().run(_import, names)

        self._ready = self._pool.submit(run)

    def client(self) -> Any:
        """The client, once the cluster is up and its workers have imported what they were
        asked to (its start's error, if it failed)."""
        client = self._up.result()
        self._ready.result()
        return client

    def close(self, wait: bool = True) -> None:
        """Close the client (and a LocalCluster's processes) after the start finished; with
        ``wait=False`` return at once and let a later ``close()`` wait for it."""
        if self._down is None:
            self._down = self._pool.submit(self._stack.close)  # after the start: one thread
            self._pool.shutdown(wait=False)
        if wait:
            self._down.result()


def _import(modules: list[str]) -> None:
    """Import ``modules`` ahead of the work; one that is not installed is left for the work
    to need or not (a preload saves time, it never fails a run the work would not fail)."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            log.debug("preload: %s is not importable here", name)


@dataclass(frozen=True)
class _Failed:
    """A failure no retry can fix, sent back as a result: dask retries whatever raises."""

    error: BaseException
    details: str  # the worker's traceback (logged with -vv)


def _unless_permanent(fn: Task, *args: Any) -> dict[str, Any] | _Failed:
    """Run ``fn``; a full disk, a refused permission, no memory or bad input come back as
    :class:`_Failed` so the unit is tried once, not rewritten three times to fail again."""
    try:
        return fn(*args)
    except Exception as exc:
        if is_permanent(exc):
            return _Failed(exc, traceback.format_exc())
        raise


def run_dask(client: Any, fn: Task, shared: tuple, per_task: list[tuple],
             keys: list[str]) -> Iterator[dict[str, Any]]:
    """Results as they finish. ``shared`` arguments (adapter, inventory) go to the workers
    once; a unit that raises is retried twice (a store that hiccupped), unless no retry can
    help (:func:`cloudmic.errors.is_permanent`); a worker that dies has its units rerun
    elsewhere by the scheduler; the first unit that fails for good stops the run."""
    from distributed import as_completed

    remote = client.scatter(list(shared), broadcast=True, hash=False)
    futures = [client.submit(_unless_permanent, fn, *remote, *a, pure=False, retries=2, key=k)
               for a, k in zip(per_task, keys, strict=True)]
    try:
        for fut in as_completed(futures, loop=client.loop):
            result = fut.result()
            if isinstance(result, _Failed):
                log.debug("unit %s failed on its worker:\n%s", fut.key, result.details)
                raise result.error
            yield result
    except BaseException:
        client.cancel(futures)
        raise
