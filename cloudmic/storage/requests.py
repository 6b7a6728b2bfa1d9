"""Store requests in flight at once, for work that is a chain of small requests rather than
bandwidth: a Zarr region read (a shard-index GET, then chunk GETs, one after another), an
array's creation (its parents checked, its zarr.json, eager coordinates), a small file's PUT.
One by one on S3 these were seconds of an ingest's fixed cost (issue 16: 16 DeepCAD records'
regions ~0.8 s, DL-SMLM's 240 arrays 4.75 s, 24 STED-FM preview crops 0.4 s). zarr's sync API
and fsspec's filesystems serve several threads from one event loop each."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

AT_ONCE = 8  # hides the latency of the embedded S3 server in the probes of issue 16


def at_once(fn: Callable[[Any], Any], items: Iterable[Any], threads: int = AT_ONCE,
            name: str = "cloudmic-requests") -> list[Any]:
    """``[fn(x) for x in items]``, ``threads`` at a time, results in order; the first error
    raises (the jobs not started are cancelled)."""
    items = list(items)
    if threads < 2 or len(items) < 2:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(min(threads, len(items)), thread_name_prefix=name) as pool:
        return list(pool.map(fn, items))
