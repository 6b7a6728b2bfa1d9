"""Run one benchmark measurement in a fresh spawned process, so its peak memory is its own
and no earlier measurement warms its caches or its allocator."""

from __future__ import annotations

import multiprocessing as mp
import resource
from collections.abc import Callable
from pathlib import Path
from typing import Any


def peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM): unlike ``ru_maxrss``, it does not carry the
    parent's high-water mark over the fork that precedes a spawn's exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(fn: Callable[..., dict[str, Any]], args: tuple, queue: Any) -> None:
    try:
        out = fn(*args)
    except BaseException as exc:  # report it: never leave the parent waiting on the queue
        out = {"error": f"{type(exc).__name__}: {exc}"}
    # the process's own high-water mark, unless the measurement took a wider one itself
    out.setdefault("peak_rss_mb", peak_rss_mb())
    queue.put(out)


def run_isolated(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """``fn(*args)`` (a module-level function returning a dict of figures) in a spawned
    process, with ``peak_rss_mb`` added."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(fn, args, q))
    p.start()
    out = q.get()
    p.join()
    if "error" in out:
        raise RuntimeError(f"{fn.__name__} failed: {out['error']}")
    return out
