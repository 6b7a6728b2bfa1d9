"""``cloudmic.shards``: the published WebDataset shards of a split, decoded to numpy.

``s3://`` shard URLs open through s3fs with credentials resolved in-process (never
in the URL or a ``pipe:`` command line, where they would leak to the process list).
"""

from __future__ import annotations

import io
import json
import warnings
from typing import Any

import numpy as np
import webdataset as wds

from cloudmic.errors import StoreNotFoundError
from cloudmic.storage.location import Location


def _gopen_s3(url: str, mode: str = "rb", bufsize: int = 8192, **_: Any):
    loc = Location.parse(url)
    return loc.fs.open(loc.path, mode, block_size=8 << 20)


wds.gopen_schemes.setdefault("s3", _gopen_s3)


def decode_record(sample: dict[str, Any]) -> dict[str, Any]:
    """Decode ``*.npy`` (never with pickles), ``json`` and ``cls``; keep the rest as is."""
    out: dict[str, Any] = {}
    for key, value in sample.items():
        if key.endswith("npy") and isinstance(value, bytes):
            out[key.removesuffix(".npy")] = np.load(io.BytesIO(value), allow_pickle=False)
        elif key == "json" and isinstance(value, bytes):
            out[key] = json.loads(value)
        elif key == "cls" and isinstance(value, bytes):
            out[key] = int(value)
        else:
            out[key] = value
    return out


def shard_index(url: str, **storage_options: Any) -> tuple[Location, dict[str, Any]]:
    """(the ``<dataset>.wds`` location, its index.json). ``url`` may name the ``.zarr`` too."""
    loc = Location.parse(url, **storage_options)
    if loc.url.endswith(".zarr"):
        loc = Location(loc.url.removesuffix(".zarr") + ".wds", loc.storage_options)
    if loc.url.endswith("index.json"):
        loc = Location(loc.url.rsplit("/", 1)[0], loc.storage_options)
    try:
        return loc, json.loads(loc.child("index.json").read_bytes())
    except FileNotFoundError:
        raise StoreNotFoundError(f"{loc.url}: no index.json; pass ROOT/<dataset>.wds "
                                 "(`cloudmic ls ROOT` lists what is published)") from None


def shards(url: str, split: str, *, shuffle: bool = False, seed: int = 0,
           storage_options: dict[str, Any] | None = None) -> wds.WebDataset:
    """A WebDataset pipeline over ``split``'s shards, records decoded to numpy.

    Node and worker splitting are on (``split_by_node``, ``split_by_worker``); the
    shard order is shuffled with ``seed`` when ``shuffle`` is set.
    """
    loc, index = shard_index(url, **(storage_options or {}))
    if split not in index["splits"]:
        raise KeyError(f"{loc.url}: no split {split!r}; splits: {', '.join(index['splits'])}")
    urls = [loc.child(s["url"]).url for s in index["splits"][split]["shards"]]
    ds = wds.WebDataset(urls, shardshuffle=len(urls) if shuffle else False, seed=seed,
                        nodesplitter=wds.split_by_node, empty_check=False)
    with warnings.catch_warnings():  # "with_length only sets __len__": that is what we want
        warnings.simplefilter("ignore", UserWarning)
        return ds.map(decode_record).with_length(index["splits"][split]["records"])
