"""bench_peers' readers: each one (PatchStream and its cache and dask variants,
cloudmic.shards, WebDataset, LitData, Mosaic, xbatcher, a tifffile Dataset) made as a user
would write it and yielding the same 64x64 WF/GT patches, the dask clusters that feed
PatchStream, and the fixes some peers need to run here (applied in every process)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import types
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from stream_fixture import BATCH, PATCH, LazyShards

try:
    from torch.utils.data import Dataset, IterableDataset
except ImportError:  # pragma: no cover - torch is needed anyway
    Dataset = IterableDataset = object  # type: ignore[assignment,misc]

PEER_ENV = "CLOUDMIC_BENCH_PEER"  # which peer's process fixes to apply (also in workers)
LITDATA_CHUNK = "64MB"  # LitData's README value; MDSWriter's default size_limit is 64 MiB
WDS_SHUFFLE = 1000  # the buffer WebDataset's README uses; shardshuffle=True means 100
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


# in every process that imports this module: the measuring child and its spawned DataLoader
# workers (they re-import bench_peers, which imports this module before any peer library)
PEER = os.environ.get(PEER_ENV, "")
TORCHVISION: str | None = None  # "real" or "stub" in a Mosaic process
if PEER in ("mosaic", "all"):
    TORCHVISION = _stub_torchvision()
if PEER in ("litdata", "all"):
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
def litdata_so() -> dict[str, str]:
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
                                      storage_options=litdata_so(), transform=CropRecord())
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

