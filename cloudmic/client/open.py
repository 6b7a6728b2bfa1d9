"""``cloudmic.open``: a published dataset as a lazy, dask-backed ``xarray.DataTree``."""

from __future__ import annotations

from typing import Any

import xarray as xr
import zarr

from cloudmic.errors import StoreNotFoundError
from cloudmic.storage.location import Location


def dataset_location(url: str, **storage_options: Any) -> Location:
    """The ``<dataset>.zarr`` location; a missing store is an error that says what to do."""
    loc = Location.parse(url, **storage_options)
    if not loc.child("zarr.json").exists():
        raise StoreNotFoundError(
            f"{loc.url}: no Zarr store here. Pass ROOT/<dataset>.zarr; "
            f"`cloudmic ls ROOT` lists what is published."
        )
    return loc


def provenance(loc: Location) -> dict[str, Any]:
    """The ``cloudmic`` root attributes (from consolidated metadata: one GET)."""
    root = zarr.open_group(loc.zarr_store(read_only=True), mode="r", zarr_format=3)
    return dict(root.attrs.get("cloudmic", {}))


def open(url: str, **storage_options: Any) -> xr.DataTree:  # noqa: A001 - the contract's name
    """Open ``ROOT/<dataset>.zarr`` lazily, with dask chunks the size of the stored shards.

    Shard-sized dask chunks matter: the default (one task per inner chunk) makes
    thousands of tiny tasks on a sharded store.
    """
    loc = dataset_location(url, **storage_options)
    chunks = provenance(loc).get("storage", {}).get("shard", {}) or {}
    return xr.open_datatree(loc.zarr_store(read_only=True), engine="zarr", chunks=chunks,
                            consolidated=True, zarr_format=3)
