"""DeepCAD ingest: MB/s and peak RSS on big movie pairs, against a raw sequential read.

    python bench/bench_deepcad_ingest.py [--frames 1024] [--size 490] [--workers 2] [--s3]

A DeepCAD recording is a ~4.5 GB low/high pair of multipage TIFFs; the ingest must read it
with a flat, small footprint (DESIGN.md: "a 4.5 GB movie ingests with a flat, small
footprint"). This writes one synthetic pair of ``--frames`` x ``--size``^2 uint16 frames per
movie (``write_big_movie``) and one twice as long (the same frames twice), then measures,
each in a fresh spawned process whose own peak RSS (``VmHWM``) is reported:
- **the limit**: a plain sequential read of both movies (8 MiB ``readinto``), the least any
  repacking must do;
- **the peer**: ``tifffile.imread`` of each movie, which is how the DeepCAD code loads one
  (the whole movie in memory);
- **cloudmic scan** alone (headers, pair checks, streaming sha256 of every file);
- **cloudmic ingest** of the 1x and the 2x pair: MB/s of source bytes and peak RSS, which
  must stay flat (< 1 GB) whatever the movie length.
Before every run the source files are evicted from the page cache (``posix_fadvise
DONTNEED`` on these files only), so each run starts cold; the ingest reads every file twice
(scan hash, then units), the second time mostly from the cache it warmed.
Destination: a local folder, or the embedded S3 server with ``--s3``. Temp files (several
GB) are deleted at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import harness
import numpy as np


def _evict(paths: list[str]) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages cannot be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _raw_read(paths: list[str]) -> dict[str, Any]:
    buf = bytearray(8 << 20)
    view = memoryview(buf)
    clock, nbytes = harness.Stopwatch(), 0
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while k := f.readinto(view):
                nbytes += k
    return {"seconds": clock.s, "bytes": nbytes}


def _imread(paths: list[str]) -> dict[str, Any]:
    import tifffile

    clock, nbytes = harness.Stopwatch(), 0
    for p in paths:
        arr = tifffile.imread(p)
        nbytes += os.path.getsize(p)
        del arr
    return {"seconds": clock.s, "bytes": nbytes}


def _scan(src: str) -> dict[str, Any]:
    from cloudmic.datasets.deepcad import DeepCAD
    from cloudmic.manifest import load_manifest

    clock = harness.Stopwatch()
    inv = DeepCAD(load_manifest("deepcad")).scan(src)
    return {"seconds": clock.s, "bytes": inv.source_bytes}


def _ingest(src: str, dest: str, storage_options: dict, workers: int) -> dict[str, Any]:
    from cloudmic.ingest import ingest

    clock = harness.Stopwatch()
    r = ingest("deepcad", src, dest, workers=workers, storage_options=storage_options)
    return {"seconds": clock.s, "bytes": r.source_bytes, "units": r.units,
            "records": r.records, "zarr_bytes": r.zarr_bytes, "wds_bytes": r.wds_bytes,
            "array_bytes": r.array_bytes}


def run_cold(fn: Any, *args: Any, evict: list[str]) -> dict[str, Any]:
    """One measurement in a fresh process (``harness.run_isolated``), after evicting
    ``evict`` from the page cache so it starts cold."""
    _evict(evict)
    return harness.run_isolated(fn, *args)


def _frames_twice(path: Path) -> Iterator[np.ndarray]:
    from cloudmic.formats.tiff_pages import iter_frame_blocks

    for _ in range(2):
        for _, block in iter_frame_blocks(path, 64):
            yield from block


def _write_double(src: Path, dst: Path, frames: int, size: int) -> None:
    """A movie twice as long, streamed from ``src`` (no second synthesis, no big RAM)."""
    import tifffile

    bigtiff = 2 * frames * size * size * 2 > 2**32 - 2**25
    with tifffile.TiffWriter(dst, bigtiff=bigtiff) as tw:
        tw.write(_frames_twice(src), shape=(2 * frames, size, size), dtype=np.uint16,
                 photometric="minisblack", contiguous=True, software=False, metadata={})


def make_sources(work: Path, frames: int, size: int) -> dict[str, list[str]]:
    from cloudmic.synth.deepcad import RECORDINGS, movie_names, write_big_movie

    folder, low, high = movie_names(RECORDINGS[0]["zip"])
    out = {}
    for tag in ("1x", "2x"):
        (work / f"src-{tag}" / "DeepCAD" / folder).mkdir(parents=True)
        out[tag] = [str(work / f"src-{tag}" / "DeepCAD" / folder / n) for n in (low, high)]
    for path, is_high in zip(out["1x"], (False, True), strict=True):
        write_big_movie(path, frames, size, seed=0, high=is_high)
    for src, dst in zip(out["1x"], out["2x"], strict=True):
        _write_double(Path(src), Path(dst), frames, size)
    return out


def _table(args: argparse.Namespace, rows: dict[str, Any], limit: float) -> str:
    body = [[name, f"{r['bytes'] / 1e9:.2f}", f"{r['seconds']:.1f}", f"{harness.mb_s(r):.0f}",
             f"{harness.mb_s(r) / limit:.2f}", f"{r['peak_rss_mb']:.0f}"]
            for name, r in harness.measured(rows)]
    lines = [f"DeepCAD ingest, one low/high pair of {args.frames} x {args.size}x{args.size} "
             f"uint16 frames per movie (2x: {2 * args.frames}), dest "
             f"{'s3' if args.s3 else 'local'}, {args.workers} worker(s), {harness.machine_line()}, "
             "cold page cache at the start of each run", "",
             *harness.md_table([["run", "source GB", "s", "MB/s", "x limit", "peak RSS MB"],
                                *body]),
             ""]
    for name, r in rows.items():
        if "units" in r:
            lines.append(f"- {name}: {r['units']} units, {r['records']} clip records; Zarr "
                         f"{r['zarr_bytes'] / 1e9:.2f} GB for {r['array_bytes'] / 1e9:.2f} GB of "
                         f"arrays (both levels, {r['array_bytes'] / r['zarr_bytes']:.2f}x), "
                         f"WebDataset {r['wds_bytes'] / 1e9:.2f} GB")
    setup = rows["setup: write sources"]
    lines.append(f"- setup (not timed above): {setup['bytes'] / 1e9:.1f} GB of sources written "
                 f"in {setup['seconds']:.0f} s")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=1024, help="frames per movie (1x)")
    ap.add_argument("--size", type=int, default=490, help="frame side in pixels")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--s3", action="store_true", help="ingest into the embedded S3 server")
    ap.add_argument("--workdir", default=None, help="where the temp files go")
    ap.add_argument("--json", default=str(harness.RESULTS / "deepcad.json"))
    args = ap.parse_args()

    rows: dict[str, Any] = {}
    with harness.Workspace("cloudmic-bench-deepcad-", args.workdir) as ws:
        clock = harness.Stopwatch()
        srcs = make_sources(ws.tmp, args.frames, args.size)
        rows["setup: write sources"] = {"seconds": clock.s,
                                        "bytes": sum(os.path.getsize(p) for v in srcs.values()
                                                     for p in v)}
        if args.s3:
            ws.s3()
        one, two = srcs["1x"], srcs["2x"]
        rows["limit: sequential read"] = run_cold(_raw_read, one, evict=one)
        rows["peer: tifffile.imread (DeepCAD's loader)"] = run_cold(_imread, one, evict=one)
        rows["cloudmic scan (headers + sha256)"] = run_cold(
            _scan, str(ws.tmp / "src-1x"), evict=one)
        rows["cloudmic ingest 1x"] = run_cold(
            _ingest, str(ws.tmp / "src-1x"), ws.dest("1x"), ws.opts, args.workers, evict=one)
        if not ws.server:
            shutil.rmtree(ws.tmp / "root-1x")  # keep the disk footprint to one copy
        rows["limit: sequential read 2x"] = run_cold(_raw_read, two, evict=two)
        rows["cloudmic ingest 2x"] = run_cold(
            _ingest, str(ws.tmp / "src-2x"), ws.dest("2x"), ws.opts, args.workers, evict=two)

    table = _table(args, rows, harness.mb_s(rows["limit: sequential read"]))
    print(table)
    harness.write_results(args.json, {"args": vars(args), "rows": rows,
                                      "cpus": os.cpu_count(), "loadavg": os.getloadavg()},
                          table + "\n")


if __name__ == "__main__":
    harness.entry(main)
