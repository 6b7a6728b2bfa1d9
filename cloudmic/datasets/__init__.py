"""Dataset adapters: one module per published layout, looked up by the manifest's ``adapter``."""

from __future__ import annotations

from importlib import import_module
from pathlib import Path

from cloudmic.datasets.base import Adapter, GroupSpec, Inventory, Unit, VarSpec
from cloudmic.errors import ManifestError
from cloudmic.manifest import Manifest

# adapter name -> "module:Class", imported lazily so one dataset's imports never slow another
ADAPTERS = {
    "biosr": "cloudmic.datasets.biosr:BioSR",
    "deepcad": "cloudmic.datasets.deepcad:DeepCAD",
    "dl_smlm": "cloudmic.datasets.dl_smlm:DLSMLM",
    "platelet_em": "cloudmic.datasets.platelet_em:PlateletEM",
    "sted_fm": "cloudmic.datasets.sted_fm:STEDFM",
}


def get_adapter(manifest: Manifest, cache_dir: str | Path | None = None) -> Adapter:
    target = ADAPTERS.get(manifest.adapter)
    if target is None:
        raise ManifestError(
            f"manifest {manifest.name!r} names adapter {manifest.adapter!r}; "
            f"known adapters: {', '.join(sorted(ADAPTERS))}"
        )
    module, cls = target.split(":")
    return getattr(import_module(module), cls)(manifest, cache_dir)


__all__ = ["ADAPTERS", "Adapter", "GroupSpec", "Inventory", "Unit", "VarSpec", "get_adapter"]
