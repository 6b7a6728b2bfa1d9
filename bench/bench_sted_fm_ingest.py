"""STED-FM ingest: crops/s, MB/s and peak RSS, against the limit and the authors' reader.

    python bench/bench_sted_fm_ingest.py [--crops 8192] [--json out.json]

Measured, each in a fresh process (peak RSS is the process's own high-water mark):
- the limit: a raw sequential read of the archive plus a raw write of the same bytes to
  the destination (what any repacking must at least do);
- the peer: the authors' reader (STED-FM ``TarFLCDataset``: tarfile, sorted members,
  ``np.load(..., allow_pickle=True)``), which only decodes, writes nothing and trusts
  the pickles;
- ``cloudmic.ingest`` with 1 and 2 workers, and with twice the crops, to show that peak
  RSS stays flat as the archive grows (units of ``samples_per_shard`` crops).
Destination: a local folder (``--dest local``) or the embedded S3 server (``--dest s3``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from isolated import run_isolated


def _raw_copy(archive: str, dest: str, storage_options: dict) -> dict[str, Any]:
    from cloudmic.storage.location import Location

    t0 = time.perf_counter()
    blob = Path(archive).read_bytes()
    target = Location.parse(f"{dest}/raw-copy.tar", **storage_options)
    target.write_bytes(blob)
    return {"seconds": time.perf_counter() - t0, "bytes": len(blob)}


def _authors_reader(archive: str, *_: Any) -> dict[str, Any]:
    import io
    import tarfile

    import numpy as np

    t0, n, nbytes = time.perf_counter(), 0, 0
    with tarfile.open(archive, "r") as tf:
        members = sorted(tf.getmembers(), key=lambda m: m.name)
        for m in members:
            data = np.load(io.BytesIO(tf.extractfile(m).read()), allow_pickle=True)
            img, _meta = data["image"], data["metadata"].item() if "metadata" in data else None
            n, nbytes = n + 1, nbytes + img.nbytes
    return {"seconds": time.perf_counter() - t0, "crops": n, "bytes": nbytes}


def _ingest(src: str, dest: str, storage_options: dict, workers: int) -> dict[str, Any]:
    from cloudmic.ingest import ingest

    t0 = time.perf_counter()
    report = ingest("sted-fm", src, dest, workers=workers, storage_options=storage_options)
    return {"seconds": time.perf_counter() - t0, "crops": report.records,
            "bytes": report.source_bytes, "zarr_bytes": report.zarr_bytes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--crops", type=int, default=8192)
    ap.add_argument("--variant", default="uint8", choices=["uint8", "uint16"])
    ap.add_argument("--dest", default="s3", choices=["s3", "local"])
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "sted_fm.json"))
    args = ap.parse_args()

    from cloudmic.storage import seaweed
    from cloudmic.synth.sted_fm import synth_sted_fm

    work = Path(tempfile.mkdtemp(prefix="cloudmic-bench-sted-"))
    server = seaweed.up(work / "store") if args.dest == "s3" else None
    opts = server.storage_options() if server else {}
    rows: dict[str, Any] = {}
    try:
        sizes = {"1x": args.crops, "2x": 2 * args.crops}
        srcs = {}
        for tag, n in sizes.items():
            t0 = time.perf_counter()
            summary = synth_sted_fm(work / f"src-{tag}", crops=n, unlabelled=n // 64,
                                    variant=args.variant, seed=0)
            srcs[tag] = work / f"src-{tag}"
            rows[f"setup synth {tag}"] = {"seconds": time.perf_counter() - t0,
                                         "bytes": summary["bytes"]}
        archive = str(next(srcs["1x"].glob("*.tar")))

        def dest(tag: str) -> str:
            return f"s3://bench-{tag}" if server else str(work / f"root-{tag}")

        rows["limit: raw read + write"] = run_isolated(_raw_copy, archive, dest("raw"), opts)
        rows["peer: authors' reader (decode only)"] = run_isolated(_authors_reader, archive)
        for workers in (1, 2):
            rows[f"cloudmic ingest, {workers} worker(s)"] = run_isolated(
                _ingest, str(srcs["1x"]), dest(f"w{workers}"), opts, workers)
        rows["cloudmic ingest, 2 workers, 2x crops"] = run_isolated(
            _ingest, str(srcs["2x"]), dest("2x"), opts, 2)
    finally:
        if server:
            seaweed.down(server.data_dir)
        shutil.rmtree(work, ignore_errors=True)

    limit_mb_s = rows["limit: raw read + write"]["bytes"] / rows["limit: raw read + write"][
        "seconds"] / 1e6
    peer = rows["peer: authors' reader (decode only)"]
    peer_rate = peer["crops"] / peer["seconds"]
    lines = [f"STED-FM ingest, {args.crops} {args.variant} crops, dest {args.dest}, "
             f"{os.cpu_count()} CPUs, Python {platform.python_version()}", "",
             "| run | crops/s | MB/s | x limit (MB/s) | x authors' reader | peak RSS MB |",
             "|---|---|---|---|---|---|"]
    for name, r in rows.items():
        if name.startswith("setup"):
            continue
        mb_s = r["bytes"] / r["seconds"] / 1e6
        crops = r.get("crops")
        rate = f"{crops / r['seconds']:.0f}" if crops else "-"
        vs_peer = f"{crops / r['seconds'] / peer_rate:.2f}" if crops else "-"
        lines.append(f"| {name} | {rate} | {mb_s:.1f} | {mb_s / limit_mb_s:.2f} | {vs_peer} | "
                     f"{r['peak_rss_mb']:.0f} |")
    table = "\n".join(lines)
    print(table)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    Path(args.json).with_suffix(".md").write_text(table + "\n")


if __name__ == "__main__":
    main()
