"""Ingest throughput on dask workers: 1 vs 2 worker processes (the scaling ratio), against
the raw copy rate of the same bytes to the same store (the limit).

    python bench/bench_ingest_scaling.py [--pairs 1024] [--variant uint16] [--json out.json]
    python bench/bench_ingest_scaling.py --dest local   # no S3 server on the same cores

Each run is a fresh ingest of synthetic BioSR (``--pairs`` training pairs of TIFFs: WF
128x128 + GT 256x256 for uint16) into the embedded S3 server (or, with ``--dest local``, a
local folder: the cores are then all the workers'), timed end to end and split
into cluster start-up (LocalCluster of N processes x 1 thread) and the ingest itself.
Peak RSS is the sum over the ingest process and its worker processes, sampled every 50 ms.
The limit reads every source file and writes the same bytes to the same store with 2
threads (what any repacking must at least do). The in-process thread pool (``--in-process``
in the CLI) is measured too, for comparison.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import harness
from harness import MB


def _tree_peak_mb(rss: harness.RssMonitor) -> float:
    """The largest sum of RSS over the process tree, in decimal MB (this benchmark's unit
    since its first results, so that they stay comparable)."""
    return rss.sum_peak_kb * 1024 / MB


def raw_copy(src: str, dest: str, opts: dict) -> dict[str, Any]:
    import fsspec

    local = {} if "://" in dest else {"auto_mkdir": True}
    fs, bucket = fsspec.core.url_to_fs(dest, skip_instance_cache=True, **local, **opts)
    files = [p for p in Path(src).rglob("*") if p.is_file()]
    fs.mkdir(bucket)
    clock = harness.Stopwatch()

    def put(p: Path) -> int:
        data = p.read_bytes()
        fs.pipe(f"{bucket}/{p.relative_to(src)}", data)
        return len(data)

    with harness.RssMonitor(0.05) as rss, ThreadPoolExecutor(2) as pool:
        nbytes = sum(pool.map(put, files))
    return {"seconds": clock.s, "bytes": nbytes, "peak_rss_mb": _tree_peak_mb(rss)}


def _cpu_now(server_pid: int | None) -> tuple[float, float]:
    """CPU seconds so far of this process with its reaped children, and of the S3 server
    (0 without one)."""
    import resource

    import psutil

    me, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    server = psutil.Process(server_pid).cpu_times() if server_pid else None
    return (me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime,
            harness.cpu_seconds(server) if server else 0.0)


def run_ingest(src: str, dest: str, opts: dict, workers: int, cluster: bool,
               server_pid: int | None) -> dict[str, Any]:
    """One ingest, timed; with the CPU seconds it used (worker processes included) and those
    the S3 server used meanwhile: on 2 cores their sum over the wall time says how much of
    the machine was left to scale into."""
    from cloudmic.ingest import ingest

    cpu0 = _cpu_now(server_pid)
    ready: list[float] = []
    last: list[float] = []
    t0 = time.perf_counter()
    with harness.RssMonitor(0.05) as rss:
        report = ingest("biosr", src, dest, workers=workers, threads=1, cluster=cluster,
                        storage_options=opts, progress=lambda *_: last.append(
                            time.perf_counter()),
                        on_cluster=lambda *_: ready.append(time.perf_counter()))
    total = time.perf_counter() - t0
    cpu1 = _cpu_now(server_pid)
    startup = (ready[0] - t0) if ready else 0.0
    # the units phase: from the cluster being ready (or the start) to the last unit done;
    # scan before it, verify + previews + publish after it
    units = last[-1] - (ready[0] if ready else t0)
    return {"seconds": total, "startup_seconds": startup, "units_seconds": units,
            "bytes": report.source_bytes, "units": report.units,
            "peak_rss_mb": _tree_peak_mb(rss), "cpu_s": cpu1[0] - cpu0[0],
            "server_cpu_s": cpu1[1] - cpu0[1]}


def _cores(r: dict[str, Any]) -> str:
    """Average cores the run kept busy (its CPU seconds over its wall time), and the
    server's share."""
    if "cpu_s" not in r:
        return "-"
    return f"{r['cpu_s'] / r['seconds']:.2f} + {r['server_cpu_s'] / r['seconds']:.2f}"


def _table(args: argparse.Namespace, rows: dict[str, Any]) -> tuple[str, float]:
    limit = harness.mb_s(rows["limit: raw copy (2 threads)"])
    body = []
    for name, r in harness.measured(rows):
        us = r.get("units_seconds")
        body.append([name, f"{r['seconds']:.1f} ({r.get('startup_seconds', 0):.1f})",
                     f"{harness.mb_s(r):.1f}", f"{harness.mb_s(r) / limit:.2f}",
                     f"{us:.1f}" if us else "-", f"{r['bytes'] / us / MB:.1f}" if us else "-",
                     f"{r['peak_rss_mb']:.0f}", _cores(r)])
    d1, d2 = rows["dask LocalCluster, 1 worker"], rows["dask LocalCluster, 2 workers"]
    scale = d1["units_seconds"] / d2["units_seconds"]
    t1, t2 = rows["threads in process, 1"], rows["threads in process, 2"]
    where = "the embedded S3" if args.dest == "s3" else "a local folder (no S3 server)"
    lines = [f"Ingest scaling, BioSR {args.pairs} {args.variant} training pairs to {where}, "
             f"{harness.machine_line()}", "",
             *harness.md_table([["run", "s (start-up)", "MB/s end to end", "x limit",
                                 "units phase s", "units MB/s", "peak RSS MB",
                                 "cores busy: ingest + S3 server"], *body]),
             "", f"Scaling of the units phase, 2 workers vs 1: dask {scale:.2f}x, threads "
             f"{t1['units_seconds'] / t2['units_seconds']:.2f}x"]
    return "\n".join(lines), scale


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=1024)
    ap.add_argument("--variant", default="uint16", choices=["uint16", "float32"])
    ap.add_argument("--dest", default="s3", choices=["s3", "local"],
                    help="the embedded S3 server (default) or a local folder")
    ap.add_argument("--json", default=None, help="default: bench/results/ingest_scaling"
                    "[_local].json")
    args = ap.parse_args()
    args.json = args.json or str(harness.RESULTS / (
        "ingest_scaling.json" if args.dest == "s3" else "ingest_scaling_local.json"))

    from cloudmic.synth.biosr import synth_biosr

    rows: dict[str, Any] = {}
    with harness.Workspace("cloudmic-bench-scaling-") as ws:
        server = ws.s3() if args.dest == "s3" else None
        clock = harness.Stopwatch()
        synth_biosr(ws.tmp / "src", train=args.pairs, validate=0, test=0, variant=args.variant)
        rows["setup: synth"] = {"seconds": clock.s}
        src = str(ws.tmp / "src")
        rows["limit: raw copy (2 threads)"] = harness.run_isolated(raw_copy, src, ws.dest("raw"),
                                                                   ws.opts)
        for name, w, clu in (("threads in process, 1", 1, False),
                             ("threads in process, 2", 2, False),
                             ("dask LocalCluster, 1 worker", 1, True),
                             ("dask LocalCluster, 2 workers", 2, True)):
            rows[name] = harness.run_isolated(run_ingest, src, ws.dest(f"{w}-{int(clu)}"),
                                              ws.opts, w, clu, server and server.pid)

    table, scale = _table(args, rows)
    print(table)
    harness.write_results(args.json, {"args": vars(args), "rows": rows,
                                      "scaling_2_vs_1": scale}, table + "\n")


if __name__ == "__main__":
    harness.entry(main)
