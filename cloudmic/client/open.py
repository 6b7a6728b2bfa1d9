"""``cloudmic.open``: a published dataset as a lazy, dask-backed ``xarray.DataTree``."""

from __future__ import annotations

import warnings
from typing import Any

import xarray as xr

from cloudmic.client.metadata import read_store_metadata
from cloudmic.storage.versions import resolve


def open(url: str, version: str | None = None, *,  # noqa: A001 - the contract's name
         storage_options: dict[str, Any] | None = None, **kwargs: Any) -> xr.DataTree:
    """Open ``ROOT/<dataset>.zarr`` lazily, with dask chunks the size of the stored shards.

    The current version is resolved once, here (or ``version`` / a version URL pins one):
    the tree reads that immutable version even if the dataset is republished meanwhile; its
    ``attrs["dataset_version"]`` names it.

    Shard-sized dask chunks matter: the default (one task per inner chunk) makes
    thousands of tiny tasks on a sharded store. A missing store is a FileNotFoundError
    that says what to pass instead.
    """
    if kwargs:  # the first API took the options as keywords
        warnings.warn("cloudmic.open(url, key=..., ...) is deprecated: pass "
                      "storage_options={...}, as PatchStream and shards take them",
                      DeprecationWarning, stacklevel=2)
    ds = resolve(url, version, **{**kwargs, **(storage_options or {})})
    attrs, _ = read_store_metadata(ds.zarr)  # one GET; raises StoreNotFoundError
    chunks = attrs.get("cloudmic", {}).get("storage", {}).get("shard", {}) or {}
    tree = xr.open_datatree(ds.zarr.zarr_store(read_only=True), engine="zarr", chunks=chunks,
                            consolidated=True, zarr_format=3)
    if ds.version:
        tree.attrs["dataset_version"] = ds.version
    return tree
