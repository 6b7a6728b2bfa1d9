"""Ingest: plan shard-aligned units, write them to staging, verify, publish, catalog.

``ingest`` and ``IngestReport`` load on first use (PEP 562): the CLI starts the dask
cluster (:mod:`cloudmic.ingest.execute`, standard library only) before the ingest's own
imports (zarr and the adapters, ~0.6 s), so that the two overlap.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers and IDEs see
    from cloudmic.ingest.run import IngestReport, ingest

__all__ = ["IngestReport", "ingest"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from cloudmic.ingest import run

        return getattr(run, name)
    raise AttributeError(f"module 'cloudmic.ingest' has no attribute {name!r}")
