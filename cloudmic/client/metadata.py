"""Store metadata read without opening a zarr store: one GET of the consolidated
root ``zarr.json``, parsed as JSON. Safe in a DataLoader parent process, where an
opened object-store client would be inherited by forked workers (STACK-NOTES)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cloudmic.errors import StoreNotFoundError
from cloudmic.storage.location import Location


@dataclass(frozen=True, slots=True)
class ArrayMeta:
    path: str
    shape: tuple[int, ...]
    dtype: str
    dims: tuple[str, ...]
    block: tuple[int, ...]  # shard shape (outer chunk): the unit of efficient reads
    attrs: dict[str, Any]

    @property
    def nbytes(self) -> int:
        import numpy as np

        return int(np.prod(self.shape)) * (np.dtype(self.dtype).itemsize if self.dtype != "string"
                                           else 0)


def read_store_metadata(loc: Location) -> tuple[dict[str, Any], dict[str, ArrayMeta]]:
    """(root attributes, arrays by ``group/name``) of a consolidated v3 store."""
    zj = loc.child("zarr.json")
    try:
        root = json.loads(zj.read_bytes())
    except FileNotFoundError:
        raise StoreNotFoundError(
            f"{loc.url}: no Zarr store here. Pass ROOT/<dataset>.zarr; "
            "`cloudmic ls ROOT` lists what is published."
        ) from None
    meta = (root.get("consolidated_metadata") or {}).get("metadata")
    if meta is None:
        raise StoreNotFoundError(f"{zj.url}: the store has no consolidated metadata; "
                                 "re-run the ingest (metadata is consolidated last)")
    arrays = {
        path: ArrayMeta(path, tuple(m["shape"]), str(m["data_type"]),
                        tuple(m.get("dimension_names") or ()),
                        tuple(m["chunk_grid"]["configuration"]["chunk_shape"]),
                        m.get("attributes", {}))
        for path, m in meta.items() if m.get("node_type") == "array"
    }
    return root.get("attributes", {}), arrays
