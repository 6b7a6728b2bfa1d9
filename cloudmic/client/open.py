"""``cloudmic.open``: a published dataset as a lazy, dask-backed ``xarray.DataTree``."""

from __future__ import annotations

from typing import Any

import xarray as xr

from cloudmic.client.metadata import read_store_metadata
from cloudmic.storage.location import Location


def open(url: str, **storage_options: Any) -> xr.DataTree:  # noqa: A001 - the contract's name
    """Open ``ROOT/<dataset>.zarr`` lazily, with dask chunks the size of the stored shards.

    Shard-sized dask chunks matter: the default (one task per inner chunk) makes
    thousands of tiny tasks on a sharded store. A missing store is a FileNotFoundError
    that says what to pass instead.
    """
    loc = Location.parse(url, **storage_options)
    attrs, _ = read_store_metadata(loc)  # one GET; raises StoreNotFoundError
    chunks = attrs.get("cloudmic", {}).get("storage", {}).get("shard", {}) or {}
    return xr.open_datatree(loc.zarr_store(read_only=True), engine="zarr", chunks=chunks,
                            consolidated=True, zarr_format=3)
