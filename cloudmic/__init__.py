"""cloudmic: a streaming, cloud-native data layer for microscopy deep learning."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from cloudmic._version import __version__

# zarr warns on every open and consolidate that consolidated metadata is not in the v3
# spec yet; cloudmic relies on it on purpose (one GET to open a store), so say it once here.
warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")

if TYPE_CHECKING:
    from cloudmic.client.open import open
    from cloudmic.client.render import render
    from cloudmic.client.shards import shards
    from cloudmic.client.stream import Mix, PatchStream
    from cloudmic.ingest.run import ingest

# Imported lazily: `import cloudmic` stays fast and never pulls torch or dask by itself.
_LAZY = {
    "open": "cloudmic.client.open",
    "PatchStream": "cloudmic.client.stream",
    "Mix": "cloudmic.client.stream",
    "shards": "cloudmic.client.shards",
    "ingest": "cloudmic.ingest",  # a callable package: see its docstring
    "render": "cloudmic.client.render",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        if name == "shards":  # its loader workers' server (PatchStream, Mix: in their package)
            from cloudmic.client.stream.workers import start_on_first_use

            start_on_first_use()
        module = import_module(_LAZY[name])
        # a name that is a subpackage's is that subpackage: Python binds it here on import
        return module if module.__name__ == f"{__name__}.{name}" else getattr(module, name)
    raise AttributeError(f"module 'cloudmic' has no attribute {name!r}")


__all__ = ["Mix", "PatchStream", "__version__", "ingest", "open", "render", "shards"]
