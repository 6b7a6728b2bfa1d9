"""``cloudmic.shards``: the published WebDataset shards of a split, decoded to numpy.

Shards open through fsspec with the credentials resolved when the pipeline was made
(never in the URL or a ``pipe:`` command line, where they would leak to the process
list). The pipeline pickles, so it goes to spawn/forkserver DataLoader workers.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import webdataset as wds
from webdataset.tariterators import group_by_keys, tar_file_expander

from cloudmic.errors import StoreNotFoundError
from cloudmic.storage.location import Location


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


class OpenShards:
    """Pipeline stage: shard URLs -> open streams, with the store's own credentials."""

    def __init__(self, storage_options: dict[str, Any]) -> None:
        self.storage_options = storage_options

    def __call__(self, sources: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for src in sources:
            loc = Location(src["url"], self.storage_options)
            try:
                stream = loc.fs.open(loc.path, "rb", block_size=8 << 20)
            except FileNotFoundError as exc:
                raise StoreNotFoundError(f"{loc.url}: shard listed in index.json is missing; "
                                         "run cloudmic verify on the dataset") from exc
            yield {**src, "stream": stream}


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


class ShardPipeline(wds.DataPipeline):
    """A DataPipeline whose ``len()`` is the split's record count (and that pickles to
    spawned workers, which ``DataPipeline.with_length`` does not)."""

    def __init__(self, records: int, *stages: Any) -> None:
        super().__init__(*stages)
        self.records = records

    def __len__(self) -> int:
        return self.records


def shards(url: str, split: str, *, shuffle: bool = False, seed: int = 0, epoch: int = 0,
           buffer: int = 0, storage_options: dict[str, Any] | None = None) -> wds.DataPipeline:
    """A WebDataset pipeline over ``split``'s shards, records decoded to numpy.

    Shards are split over nodes (``split_by_node``: ranks from ``torch.distributed`` or
    ``RANK``/``WORLD_SIZE``) and DataLoader workers (``split_by_worker``), so every record of
    the epoch is read exactly once across them. With ``shuffle`` the shard order is a
    permutation of ``(seed, epoch)`` and, with ``buffer`` > 0, records are also shuffled in
    a buffer of that many. ``len()`` is the split's exact record count from ``index.json``.
    """
    import random

    loc, index = shard_index(url, **(storage_options or {}))
    if split not in index["splits"]:
        raise KeyError(f"{loc.url}: no split {split!r}; splits: {', '.join(index['splits'])}")
    urls = [loc.child(s["url"]).url for s in index["splits"][split]["shards"]]
    if shuffle:
        urls = [urls[k] for k in np.random.default_rng([seed, epoch]).permutation(len(urls))]
    stages: list[Any] = [wds.SimpleShardList(urls), wds.split_by_node, wds.split_by_worker,
                         OpenShards(loc.storage_options), tar_file_expander, group_by_keys]
    if shuffle and buffer > 0:
        stages.append(wds.shuffle(buffer, initial=buffer, rng=random.Random(f"{seed}-{epoch}")))
    stages.append(wds.map(decode_record))
    return ShardPipeline(int(index["splits"][split]["records"]), *stages)
