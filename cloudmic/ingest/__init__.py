"""Ingest: plan shard-aligned units, write them to staging, verify, publish, catalog.

``ingest`` and ``IngestReport`` load on first use (PEP 562): the CLI starts the dask
cluster (:mod:`cloudmic.ingest.execute`, standard library only) before the ingest's own
imports (zarr and the adapters, ~0.6 s), so that the two overlap.

``cloudmic.ingest(dataset, source, dest, ...)`` is the API and ``cloudmic.ingest`` this
package: once the package is imported Python binds the name ``cloudmic.ingest`` to it, so
the package itself is callable and calls :func:`cloudmic.ingest.run.ingest` (a lookup in
``cloudmic``'s namespace would give the function only on the first call of a process).
"""

import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers and IDEs see
    from cloudmic.ingest.run import IngestReport, ingest

__all__ = ["IngestReport", "ingest"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from cloudmic.ingest import run

        return getattr(run, name)
    if name == "__signature__":  # help() and IDEs show the function's parameters
        import inspect

        from cloudmic.ingest import run

        return inspect.signature(run.ingest)
    raise AttributeError(f"module 'cloudmic.ingest' has no attribute {name!r}")


class _CallablePackage(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from cloudmic.ingest.run import ingest

        return ingest(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
