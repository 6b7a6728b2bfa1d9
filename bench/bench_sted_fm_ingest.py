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
from pathlib import Path
from typing import Any

import harness


def _raw_copy(archive: str, dest: str, storage_options: dict) -> dict[str, Any]:
    from cloudmic.storage.location import Location

    clock = harness.Stopwatch()
    blob = Path(archive).read_bytes()
    target = Location.parse(f"{dest}/raw-copy.tar", **storage_options)
    target.write_bytes(blob)
    return {"seconds": clock.s, "bytes": len(blob)}


def _authors_reader(archive: str, *_: Any) -> dict[str, Any]:
    import io
    import tarfile

    import numpy as np

    clock, n, nbytes = harness.Stopwatch(), 0, 0
    with tarfile.open(archive, "r") as tf:
        members = sorted(tf.getmembers(), key=lambda m: m.name)
        for m in members:
            data = np.load(io.BytesIO(tf.extractfile(m).read()), allow_pickle=True)
            img, _meta = data["image"], data["metadata"].item() if "metadata" in data else None
            n, nbytes = n + 1, nbytes + img.nbytes
    return {"seconds": clock.s, "crops": n, "bytes": nbytes}


def _ingest(src: str, dest: str, storage_options: dict, workers: int) -> dict[str, Any]:
    from cloudmic.ingest import ingest

    clock = harness.Stopwatch()
    report = ingest("sted-fm", src, dest, workers=workers, storage_options=storage_options)
    return {"seconds": clock.s, "crops": report.records,
            "bytes": report.source_bytes, "zarr_bytes": report.zarr_bytes}


def _table(args: argparse.Namespace, rows: dict[str, Any]) -> str:
    limit = harness.mb_s(rows["limit: raw read + write"])
    peer = rows["peer: authors' reader (decode only)"]
    peer_rate = peer["crops"] / peer["seconds"]
    body = []
    for name, r in harness.measured(rows):
        crops = r.get("crops")
        body.append([name, f"{crops / r['seconds']:.0f}" if crops else "-",
                     f"{harness.mb_s(r):.1f}", f"{harness.mb_s(r) / limit:.2f}",
                     f"{crops / r['seconds'] / peer_rate:.2f}" if crops else "-",
                     f"{r['peak_rss_mb']:.0f}"])
    return "\n".join([f"STED-FM ingest, {args.crops} {args.variant} crops, dest {args.dest}, "
                      f"{harness.machine_line()}", "",
                      *harness.md_table([["run", "crops/s", "MB/s", "x limit (MB/s)",
                                          "x authors' reader", "peak RSS MB"], *body])])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--crops", type=int, default=8192)
    ap.add_argument("--variant", default="uint8", choices=["uint8", "uint16"])
    ap.add_argument("--dest", default="s3", choices=["s3", "local"])
    ap.add_argument("--json", default=str(harness.RESULTS / "sted_fm.json"))
    args = ap.parse_args()

    from cloudmic.synth.sted_fm import synth_sted_fm

    rows: dict[str, Any] = {}
    with harness.Workspace("cloudmic-bench-sted-") as ws:
        if args.dest == "s3":
            ws.s3()
        srcs = {}
        for tag, n in {"1x": args.crops, "2x": 2 * args.crops}.items():
            clock = harness.Stopwatch()
            srcs[tag] = ws.tmp / f"src-{tag}"
            summary = synth_sted_fm(srcs[tag], crops=n, unlabelled=n // 64,
                                    variant=args.variant, seed=0)
            rows[f"setup synth {tag}"] = {"seconds": clock.s, "bytes": summary["bytes"]}
        archive = str(next(srcs["1x"].glob("*.tar")))
        rows["limit: raw read + write"] = harness.run_isolated(_raw_copy, archive,
                                                               ws.dest("raw"), ws.opts)
        rows["peer: authors' reader (decode only)"] = harness.run_isolated(_authors_reader, archive)
        for workers in (1, 2):
            rows[f"cloudmic ingest, {workers} worker(s)"] = harness.run_isolated(
                _ingest, str(srcs["1x"]), ws.dest(f"w{workers}"), ws.opts, workers)
        rows["cloudmic ingest, 2 workers, 2x crops"] = harness.run_isolated(
            _ingest, str(srcs["2x"]), ws.dest("2x"), ws.opts, 2)

    table = _table(args, rows)
    print(table)
    harness.write_results(args.json, {"args": vars(args), "rows": rows}, table + "\n")


if __name__ == "__main__":
    harness.entry(main)
