"""Ingest throughput on dask workers: 1 vs 2 worker processes (the scaling ratio), against
the raw copy rate of the same bytes to the same store (the limit).

    python bench/bench_ingest_scaling.py [--pairs 1024] [--variant uint16] [--json out.json]

Each run is a fresh ingest of synthetic BioSR (``--pairs`` training pairs of TIFFs: WF
128x128 + GT 256x256 for uint16) into the embedded S3 server, timed end to end and split
into cluster start-up (LocalCluster of N processes x 1 thread) and the ingest itself.
Peak RSS is the sum over the ingest process and its worker processes, sampled every 50 ms.
The limit reads every source file and writes the same bytes to the same store with 2
threads (what any repacking must at least do). The in-process thread pool (``--in-process``
in the CLI) is measured too, for comparison.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
from isolated import run_isolated


class TreeRSS:
    """Peak of the summed RSS of this process and all its descendants."""

    def __init__(self) -> None:
        self.peak, self._stop = 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):  # a process that just ended
                    total += p.memory_info().rss
            self.peak = max(self.peak, total)
            time.sleep(0.05)

    def __enter__(self) -> TreeRSS:
        self._t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._t.join()


def raw_copy(src: Path, dest: str, opts: dict) -> dict[str, Any]:
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, **opts)
    files = [p for p in src.rglob("*") if p.is_file()]
    bucket = dest.removeprefix("s3://")
    fs.mkdir(bucket)
    t0 = time.perf_counter()

    def put(p: Path) -> int:
        data = p.read_bytes()
        fs.pipe(f"{bucket}/{p.relative_to(src)}", data)
        return len(data)

    with TreeRSS() as rss, ThreadPoolExecutor(2) as pool:
        nbytes = sum(pool.map(put, files))
    return {"seconds": time.perf_counter() - t0, "bytes": nbytes, "peak_rss_mb": rss.peak / 1e6}


def run_ingest(src: Path, dest: str, opts: dict, workers: int, cluster: bool) -> dict[str, Any]:
    from cloudmic.ingest import ingest

    ready: list[float] = []
    last: list[float] = []
    t0 = time.perf_counter()
    with TreeRSS() as rss:
        report = ingest("biosr", src, dest, workers=workers, threads=1, cluster=cluster,
                        storage_options=opts, progress=lambda *_: last.append(
                            time.perf_counter()),
                        on_cluster=lambda *_: ready.append(time.perf_counter()))
    total = time.perf_counter() - t0
    startup = (ready[0] - t0) if ready else 0.0
    # the units phase: from the cluster being ready (or the start) to the last unit done;
    # scan before it, verify + previews + publish after it
    units = last[-1] - (ready[0] if ready else t0)
    return {"seconds": total, "startup_seconds": startup, "units_seconds": units,
            "bytes": report.source_bytes, "units": report.units, "peak_rss_mb": rss.peak / 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=1024)
    ap.add_argument("--variant", default="uint16", choices=["uint16", "float32"])
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" /
                                          "ingest_scaling.json"))
    args = ap.parse_args()

    from cloudmic.storage import seaweed
    from cloudmic.synth.biosr import synth_biosr

    work = Path(tempfile.mkdtemp(prefix="cloudmic-bench-scaling-"))
    server = seaweed.up(work / "store")
    opts = server.storage_options()
    rows: dict[str, Any] = {}
    try:
        t0 = time.perf_counter()
        synth_biosr(work / "src", train=args.pairs, validate=0, test=0, variant=args.variant)
        rows["setup: synth"] = {"seconds": time.perf_counter() - t0}
        src = work / "src"
        rows["limit: raw copy (2 threads)"] = run_isolated(raw_copy, src, "s3://bench-raw", opts)
        for name, w, clu in (("threads in process, 1", 1, False),
                             ("threads in process, 2", 2, False),
                             ("dask LocalCluster, 1 worker", 1, True),
                             ("dask LocalCluster, 2 workers", 2, True)):
            rows[name] = run_isolated(run_ingest, src, f"s3://bench-{w}-{int(clu)}", opts, w, clu)
    finally:
        seaweed.down(server.data_dir)
        shutil.rmtree(work, ignore_errors=True)

    limit = rows["limit: raw copy (2 threads)"]
    limit_mb_s = limit["bytes"] / limit["seconds"] / 1e6
    lines = [f"Ingest scaling, BioSR {args.pairs} {args.variant} training pairs to the embedded "
             f"S3, {os.cpu_count()} CPUs, Python {platform.python_version()}", "",
             "| run | s (start-up) | MB/s end to end | x limit | units phase s | units MB/s | "
             "peak RSS MB |",
             "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        if name.startswith("setup"):
            continue
        mb_s = r["bytes"] / r["seconds"] / 1e6
        us = r.get("units_seconds")
        units = f"{us:.1f} | {r['bytes'] / us / 1e6:.1f}" if us else "- | -"
        lines.append(f"| {name} | {r['seconds']:.1f} ({r.get('startup_seconds', 0):.1f}) | "
                     f"{mb_s:.1f} | {mb_s / limit_mb_s:.2f} | {units} | "
                     f"{r['peak_rss_mb']:.0f} |")
    d1, d2 = rows["dask LocalCluster, 1 worker"], rows["dask LocalCluster, 2 workers"]
    scale = d1["units_seconds"] / d2["units_seconds"]
    t1, t2 = rows["threads in process, 1"], rows["threads in process, 2"]
    lines += ["", f"Scaling of the units phase, 2 workers vs 1: dask {scale:.2f}x, threads "
              f"{t1['units_seconds'] / t2['units_seconds']:.2f}x"]
    table = "\n".join(lines)
    print(table)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows,
                                           "scaling_2_vs_1": scale}, indent=1))
    Path(args.json).with_suffix(".md").write_text(table + "\n")


if __name__ == "__main__":
    main()
