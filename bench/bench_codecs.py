"""Codec and level per dataset: compression ratio, encode and decode speed on ONE thread.

    python bench/bench_codecs.py                          # five datasets + the real STED-FM crops
    python bench/bench_codecs.py --only sted-fm,biosr --sample-mb 1 --repeats 1 --json /tmp/c.json

Issue 16 asks to pick codec and level per dataset from a measured table. For each dataset
this synthesises a small faithful copy (``cloudmic.synth``; ``SYNTH`` holds the sizes, about
64 MB of level-0 arrays each), runs the real ingest into a local temp folder
(``cloudmic.ingest.ingest``, in-process, 1 worker) and reads back, from the published Zarr,
the chunks the ingest encodes: every level-0 numeric data array (sharded; the small
unsharded coordinate arrays and the string arrays, which never use the manifest's codec,
are left out), chunk by chunk with the manifest's inner chunk shape (``arr.chunks``). As
zarr does, an edge chunk is padded with the fill value to the full chunk shape and a chunk
holding only the fill value is skipped (zarr does not store it). Over ``--sample-mb`` of
chunks, taken evenly from every array in proportion to its size (so the sample keeps the
dataset's byte mix), each candidate codec encodes and decodes every chunk; the bench
asserts that every decode gives back the chunk's bytes exactly.

STED-FM also has real pixels (``../shared/data/real/stedfm/derived``: one real 224x224 crop
in 8 orientations, as a uint8 and a uint16 archive): they are ingested the same way and
measured as their own row groups. Everything else is synthetic, and synthetic pixels do not
compress like real ones: read the ratios as relative, not as what the published data will
get.

The codecs are zarr's own (``zarr.codecs.BloscCodec`` / ``ZstdCodec``, whose ``numcodecs``
objects do the work, with the typesize zarr gives them: the array's itemsize), called as
zarr calls them, on one thread: ``numcodecs.blosc.set_nthreads(1)`` (Blosc's internal
threads) and every call from this one Python thread. Timing: one pass encodes every sample
chunk, one pass decodes them; the figure is the median over ``--repeats`` passes (codecs
interleaved within a repeat, so load drift hits all of them alike), with the garbage
collector off during a pass.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import harness
import numpy as np
from harness import MB

DATASETS = ["biosr", "sted-fm", "deepcad", "platelet-em", "dl-smlm"]
# synth arguments giving about 64 MB of level-0 arrays (counts scale down with --sample-mb);
# published frame sizes where the generators allow (deepcad 490^2, platelet-em 800^2)
SYNTH: dict[str, dict[str, Any]] = {
    "biosr": {"train": 380, "validate": 20, "test": 2, "variant": "uint16"},
    "sted-fm": {"crops": 640, "unlabelled": 0, "variant": "uint16"},   # issue 16's crops-raw
    "deepcad": {"recordings": 1, "frames": 64, "size": 490},
    "platelet-em": {"slices": 16, "size": 800},
    "dl-smlm": {"structures": ["Microtubules"], "cells": 2},
}
MINIMA = {"train": 2, "validate": 1, "test": 1, "crops": 16, "frames": 16, "slices": 8,
          "cells": 1}
REAL_STED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real" / "stedfm" \
    / "derived"
# group of the real ingest -> row group
REAL_GROUPS = {"stedfm-sample-crops-raw": "sted-fm (real crops)",
               "stedfm-sample-crops": "sted-fm (real crops, uint8)"}

# Store speeds of the embedded SeaweedFS on this machine, measured by the other benches:
# write 88 MB/s = bench/results/full_size.json, the raw copies' bytes written / seconds (2
# threads writing the published bytes while reading the sources; median of the 5 datasets,
# 76-99 MB/s). ../shared/STACK-NOTES.md's 58-71 MB/s for shard-aligned zarr writes includes
# zarr's own encoding, so it is not the store's alone.
# read 728 MB/s = bench/results/patchstream.md, raw parallel GETs (obstore x4) of the Zarr
# shard objects a stream reads; STACK-NOTES' 250 MB/s was the spike's WebDataset tar GETs.
STORE_WRITE_MBS = 88.0
STORE_READ_MBS = 728.0
DECODE_FLOOR_MBS = 1000.0
MIN_PASS_MB = 16.0  # a timed pass covers at least this many raw MB (the sample, repeated)

# The candidates: (id, kind, settings). blosc lz4 at clevel 5 (numcodecs' default level).
CANDIDATES: list[dict[str, Any]] = [
    {"id": "none", "kind": "none"},
    {"id": "blosc-zstd1-bitshuffle", "kind": "blosc", "cname": "zstd", "clevel": 1,
     "shuffle": "bitshuffle"},
    {"id": "blosc-zstd3-bitshuffle", "kind": "blosc", "cname": "zstd", "clevel": 3,
     "shuffle": "bitshuffle"},
    {"id": "blosc-zstd5-bitshuffle", "kind": "blosc", "cname": "zstd", "clevel": 5,
     "shuffle": "bitshuffle"},
    {"id": "blosc-zstd3-shuffle", "kind": "blosc", "cname": "zstd", "clevel": 3,
     "shuffle": "shuffle"},
    {"id": "blosc-zstd3-noshuffle", "kind": "blosc", "cname": "zstd", "clevel": 3,
     "shuffle": "noshuffle"},
    {"id": "blosc-lz4-bitshuffle", "kind": "blosc", "cname": "lz4", "clevel": 5,
     "shuffle": "bitshuffle"},
    {"id": "blosc-lz4-shuffle", "kind": "blosc", "cname": "lz4", "clevel": 5,
     "shuffle": "shuffle"},
    {"id": "zstd1", "kind": "zstd", "level": 1},
    {"id": "zstd3", "kind": "zstd", "level": 3},
]
PACKAGES = ["cloudmic", "zarr", "zarrs", "numcodecs", "numpy"]


# --------------------------------------------------------------------------- candidates
def current_id(storage: Any) -> str:
    """The candidate id of a manifest's ``storage`` (codec + clevel)."""
    if storage.codec == "blosc-zstd-bitshuffle":
        return f"blosc-zstd{storage.clevel}-bitshuffle"
    if storage.codec == "zstd":
        return f"zstd{storage.clevel}"
    return "none"


def candidate_for(cid: str) -> dict[str, Any]:
    """A candidate from its id (the current choice of a manifest may not be in the list)."""
    for c in CANDIDATES:
        if c["id"] == cid:
            return c
    if cid.startswith("blosc-zstd") and cid.endswith("-bitshuffle"):
        return {"id": cid, "kind": "blosc", "cname": "zstd", "shuffle": "bitshuffle",
                "clevel": int(cid.removeprefix("blosc-zstd").removesuffix("-bitshuffle"))}
    if cid.startswith("zstd"):
        return {"id": cid, "kind": "zstd", "level": int(cid.removeprefix("zstd"))}
    raise ValueError(f"unknown candidate {cid!r}")


def zarr_codec(c: dict[str, Any], itemsize: int) -> Any:
    """zarr's codec object for a candidate and an array's itemsize (None: no compressor)."""
    from zarr.codecs import BloscCodec, ZstdCodec

    if c["kind"] == "blosc":
        return BloscCodec(cname=c["cname"], clevel=c["clevel"], shuffle=c["shuffle"],
                          typesize=itemsize)
    if c["kind"] == "zstd":
        return ZstdCodec(level=c["level"])
    return None


def codec_fns(c: dict[str, Any], itemsize: int) -> tuple[Any, Any]:
    """(encode, decode) of bytes as zarr calls them: the numcodecs object zarr builds
    (``BloscCodec._blosc_codec``, ``ZstdCodec._zstd_codec``), fed the chunk's bytes as a
    uint8 array. ``none`` is a copy of the bytes (zarr has no codec step then)."""
    zc = zarr_codec(c, itemsize)
    if zc is None:
        return (lambda b: b.tobytes()), bytearray
    nc = zc._blosc_codec if c["kind"] == "blosc" else zc._zstd_codec
    return nc.encode, nc.decode


# --------------------------------------------------------------------------- the sample (child)
def _level0_data_arrays(g: Any, path: str = "") -> list[tuple[str, Any]]:
    """Sharded numeric arrays not in a pyramid level other than 0 (parent group named by a
    number other than 0)."""
    out = []
    for k, a in g.arrays():
        p = f"{path}{k}"
        parent = path.rstrip("/").rsplit("/", 1)[-1]
        if a.shards is None or a.dtype.kind not in "biuf":
            continue
        if parent.isdigit() and parent != "0":
            continue
        out.append((p, a))
    for k, sg in g.groups():
        out += _level0_data_arrays(sg, f"{path}{k}/")
    return out


def _chunks_of(arr: Any) -> Iterator[tuple[tuple[int, ...], np.ndarray]]:
    """Every inner chunk of ``arr`` as zarr encodes it: padded to the chunk shape with the
    fill value (read whole: a level-0 array of the small copies is tens of MB)."""
    data = np.asarray(arr[...])
    grid = [-(-n // c) for n, c in zip(arr.shape, arr.chunks, strict=True)]
    for idx in np.ndindex(*grid):
        sel = tuple(slice(i * c, min((i + 1) * c, n))
                    for i, c, n in zip(idx, arr.chunks, arr.shape, strict=True))
        block = data[sel]
        if block.shape != tuple(arr.chunks):
            full = np.full(arr.chunks, arr.fill_value, dtype=arr.dtype)
            full[tuple(slice(0, s) for s in block.shape)] = block
            block = full
        yield idx, np.ascontiguousarray(block)


def prepare(name: str, work: str, sample_mb: float, scale: float) -> dict[str, Any]:
    """In a fresh process: synthesise (or take the real STED-FM files), ingest into
    ``work``/dest, and save the sampled chunks of every level-0 data array as
    ``work``/sample/<i>.npy (stacked: chunks x chunk shape). Returns what it did.

    The chunks zarr stores (not fill-only) are sampled evenly from each array, each array
    in proportion to its stored chunks' bytes, up to ``sample_mb`` in all."""
    import zarr

    from cloudmic.ingest import ingest

    warnings.filterwarnings("ignore")
    out: dict[str, Any] = {}
    work_p = Path(work)
    clock = harness.Stopwatch()
    if name == "sted-fm-real":
        src, dataset = str(REAL_STED.resolve()), "sted-fm"
        out["synth_args"] = None
    else:
        from cloudmic.synth import get_generator

        dataset, src = name, str(work_p / "src")
        args = dict(SYNTH[name])
        for k in MINIMA:
            if k in args:
                args[k] = max(MINIMA[k], round(args[k] * scale))
        get_generator(name)(src, **args)
        out["synth_args"], out["synth_s"] = args, clock.s
    clock = harness.Stopwatch()
    report = ingest(dataset, src, str(work_p / "dest"), workers=1)
    out["ingest_s"], out["source_bytes"], out["url"] = clock.s, report.source_bytes, report.url
    root = zarr.open_group(report.url, mode="r")
    arrays = _level0_data_arrays(root)
    # pass 1: which chunks zarr stores (it writes no chunk holding only the fill value)
    stored = {p: [idx for idx, block in _chunks_of(a) if not np.all(block == a.fill_value)]
              for p, a in arrays}
    nbytes = {p: int(np.prod(a.chunks)) * a.dtype.itemsize for p, a in arrays}
    total = sum(len(stored[p]) * nbytes[p] for p, _ in arrays)
    frac = min(1.0, sample_mb * MB / total) if total else 1.0
    (work_p / "sample").mkdir()
    out["arrays"] = []
    for i, (p, a) in enumerate(arrays):  # pass 2: the picked chunks
        idxs = stored[p]
        k = min(len(idxs), max(1, round(len(idxs) * frac))) if idxs else 0
        pick = {idxs[j] for j in np.linspace(0, len(idxs) - 1, k).round().astype(int)} \
            if k else set()
        chunks = []
        for idx, block in _chunks_of(a):
            if idx in pick:
                # the real crops are one crop in 8 orientations: in one chunk, a long-window
                # codec (plain zstd) finds the copies' rows again, which real crops lack
                chunks += [c[None] for c in block] if name == "sted-fm-real" else [block]
        measured = [1, *a.chunks[1:]] if name == "sted-fm-real" else list(a.chunks)
        n_total = int(np.prod([-(-n // c) for n, c in zip(a.shape, a.chunks, strict=True)]))
        info = {"path": p, "dtype": a.dtype.str, "shape": list(a.shape),
                "chunks": list(a.chunks), "measured_chunk": measured,
                "shards": list(a.shards), "chunks_total": n_total,
                "chunks_stored": len(idxs), "chunk_bytes": nbytes[p],
                "chunks_picked": len(pick),
                "stored_codec": [c.to_dict() for c in a.compressors], "file": None}
        if chunks:
            info["file"] = str(work_p / "sample" / f"{i}.npy")
            np.save(info["file"], np.stack(chunks))
        out["arrays"].append(info)
    return out


# --------------------------------------------------------------------------- measuring (parent)
def load_sample(arrays: list[dict[str, Any]]) -> list[tuple[int, str, np.ndarray]]:
    """(array index, dtype str, chunk bytes as uint8) for every sampled chunk."""
    chunks = []
    for i, info in enumerate(arrays):
        if info["file"] is None:
            continue
        stack = np.load(info["file"])
        if stack.dtype.byteorder == ">":
            raise ValueError(f"{info['path']}: big-endian in memory; zarr stores little")
        for block in stack:
            chunks.append((i, info["dtype"], np.ascontiguousarray(block).view(np.uint8)
                           .reshape(-1)))
    return chunks


def check_current(arrays: list[dict[str, Any]], cur: dict[str, Any]) -> None:
    """The codec the ingest stored is the candidate marked current (same zarr config)."""
    for info in arrays:
        want = zarr_codec(cur, np.dtype(info["dtype"]).itemsize)
        want_cfg = [] if want is None else [want.to_dict()]
        if info["stored_codec"] != want_cfg:
            raise AssertionError(f"{info['path']}: stored {info['stored_codec']}, but the "
                                 f"manifest's choice {cur['id']} gives {want_cfg}")


def measure(chunks: list[tuple[int, str, np.ndarray]], n_arrays: int,
            candidates: list[dict[str, Any]], repeats: int) -> dict[str, Any]:
    """Per candidate: compressed bytes (total and per array), encode and decode seconds of
    every pass; every decode is checked against the original bytes."""
    raw = sum(b.nbytes for _, _, b in chunks)
    inner = max(1, -(-int(MIN_PASS_MB * MB) // raw))  # a tiny sample runs several times a pass
    fns = {c["id"]: [codec_fns(c, np.dtype(dt).itemsize) for _, dt, _ in chunks]
           for c in candidates}
    rows: dict[str, Any] = {c["id"]: {"enc_s": [], "dec_s": []} for c in candidates}
    for r in range(repeats):
        for c in candidates:
            row, f = rows[c["id"]], fns[c["id"]]
            gc.collect()
            gc.disable()
            try:
                t0 = time.perf_counter()
                for _ in range(inner):
                    encoded = [enc(b) for (enc, _), (_, _, b) in zip(f, chunks, strict=True)]
                t1 = time.perf_counter()
                for _ in range(inner):
                    decoded = [dec(e) for (_, dec), e in zip(f, encoded, strict=True)]
                t2 = time.perf_counter()
            finally:
                gc.enable()
            row["enc_s"].append(t1 - t0)
            row["dec_s"].append(t2 - t1)
            for (i, _, b), d in zip(chunks, decoded, strict=True):
                if not np.array_equal(np.frombuffer(d, dtype=np.uint8), b):
                    raise AssertionError(f"{c['id']} does not round-trip a chunk of array {i}")
            sizes = [len(memoryview(e).cast("B")) for e in encoded]
            if r == 0:
                per = [0] * n_arrays
                for (i, _, _), s in zip(chunks, sizes, strict=True):
                    per[i] += s
                row["compressed"], row["compressed_per_array"] = sum(sizes), per
            elif sum(sizes) != row["compressed"]:
                raise AssertionError(f"{c['id']}: another size on repeat {r}")
            del encoded, decoded
    for row in rows.values():
        row["raw"], row["passes_per_timing"] = raw, inner
        row["ratio"] = raw / row["compressed"]
        row["enc_mbs"] = inner * raw / harness.median(row["enc_s"]) / MB
        row["dec_mbs"] = inner * raw / harness.median(row["dec_s"]) / MB
    return rows


def costs(row: dict[str, Any], write_mbs: float, read_mbs: float) -> dict[str, float]:
    """Seconds per raw GB: encode (1/encode speed), writing the stored bytes at the store's
    write speed, their sum (the ingest), and reading the stored bytes + decoding (a stream)."""
    enc = 1000 / row["enc_mbs"]
    write = 1000 / row["ratio"] / write_mbs
    return {"encode_s_gb": enc, "write_s_gb": write, "ingest_s_gb": enc + write,
            "stream_s_gb": 1000 / row["ratio"] / read_mbs + 1000 / row["dec_mbs"]}


def recommend(rows: dict[str, Any], current: str, floor: float,
              min_gain: float) -> dict[str, Any]:
    """The rule: least ingest s/GB (encode + stored bytes / store write speed) among codecs
    that decode at least ``floor`` MB/s on one thread (``none`` is the reference, not a
    choice); if none meets the floor, the fastest decoder. The manifest's current codec is
    kept when it meets the floor and the best saves less than ``min_gain`` of its ingest
    s/GB (one run on a shared machine is not more exact than that)."""
    comp = {k: r for k, r in rows.items() if k != "none"}
    ok = {k: r for k, r in comp.items() if r["dec_mbs"] >= floor}
    best = (min(ok, key=lambda k: ok[k]["cost"]["ingest_s_gb"]) if ok
            else max(comp, key=lambda k: comp[k]["dec_mbs"]))
    cur = rows[current]
    saving = 1 - rows[best]["cost"]["ingest_s_gb"] / cur["cost"]["ingest_s_gb"]
    keep = current in ok and saving < min_gain
    pick = current if keep else best
    b = rows[pick]
    return {"codec": pick, "best": best, "best_saving": saving, "kept_within_noise":
            keep and best != current, "meets_floor": bool(ok), "current": current,
            "ingest_saving": 1 - b["cost"]["ingest_s_gb"] / cur["cost"]["ingest_s_gb"],
            "stored_change": cur["ratio"] / b["ratio"] - 1,
            "stream_change": b["cost"]["stream_s_gb"] / cur["cost"]["stream_s_gb"] - 1}


# --------------------------------------------------------------------------- one row group
def run_group(label: str, prep: dict[str, Any], arrays: list[dict[str, Any]], current: str,
              args: argparse.Namespace) -> dict[str, Any]:
    cur = candidate_for(current)
    check_current(arrays, cur)
    candidates = list(CANDIDATES) + ([] if any(c["id"] == current for c in CANDIDATES)
                                     else [cur])
    chunks = load_sample(arrays)
    if not chunks:
        raise RuntimeError(f"{label}: no chunk sampled")
    harness.log(f"{label}: {sum(b.nbytes for _, _, b in chunks) / MB:.1f} MB in "
                f"{len(chunks)} chunks of {sum(a['file'] is not None for a in arrays)} arrays; "
                f"{len(candidates)} codecs x {args.repeats}")
    rows = measure(chunks, len(arrays), candidates, args.repeats)
    for r in rows.values():
        r["cost"] = costs(r, args.store_write_mbs, args.store_read_mbs)
    level0 = sum(a["chunks_stored"] * a["chunk_bytes"] for a in arrays)
    group = {"current": current, "sample_bytes": rows["none"]["raw"], "chunks": len(chunks),
             "level0_bytes": level0,
             "arrays": [{k: v for k, v in a.items() if k != "file"} | {
                 "sample_bytes": sum(b.nbytes for i, _, b in chunks if arrays[i] is a)}
                 for a in arrays],
             "prepare": {k: v for k, v in prep.items() if k != "arrays"}, "codecs": rows}
    group["floor"] = args.decode_floor
    group["recommendation"] = recommend(rows, current, args.decode_floor, args.min_gain)
    rec = group["recommendation"]
    harness.log(f"{label}: current {current} ratio {rows[current]['ratio']:.2f}; "
                f"rule picks {rec['codec']} (saves {rec['ingest_saving']:.0%} of the ingest "
                f"s/GB)")
    return group


def run_dataset(name: str, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The row group(s) of a dataset: its synthetic copy, and for sted-fm the real crops."""
    from cloudmic.manifest import load_manifest

    current = current_id(load_manifest(name).storage)
    scale = min(1.0, args.sample_mb / 64)
    out: dict[str, dict[str, Any]] = {}
    jobs = [(name, None)]
    if name == "sted-fm":
        if REAL_STED.is_dir():
            jobs.append(("sted-fm-real", REAL_GROUPS))
        else:
            harness.log(f"no real STED-FM files at {REAL_STED}: real row groups left out")
    for job, split in jobs:
        with harness.Workspace(f"cloudmic-codecs-{job}-", parent=args.workdir) as ws:
            harness.log(f"{job}: synthesising and ingesting" if split is None
                        else f"{job}: ingesting the real files")
            prep = harness.run_isolated(prepare, job, str(ws.tmp), args.sample_mb, scale,
                                        timeout=600)
            if split is None:
                out[name] = run_group(name, prep, prep["arrays"], current, args)
                continue
            for top, label in split.items():
                arrays = [a for a in prep["arrays"] if a["path"].split("/")[0] == top]
                if arrays:
                    out[label] = run_group(label, prep, arrays, current, args)
                    out[label]["real"] = True
    return out


# --------------------------------------------------------------------------- report
SHORT = {"none": "none", "blosc-zstd1-bitshuffle": "bz1-bit", "blosc-zstd3-bitshuffle": "bz3-bit",
         "blosc-zstd5-bitshuffle": "bz5-bit", "blosc-zstd3-shuffle": "bz3-byte",
         "blosc-zstd3-noshuffle": "bz3-no", "blosc-lz4-bitshuffle": "lz4-bit",
         "blosc-lz4-shuffle": "lz4-byte", "zstd1": "zstd1", "zstd3": "zstd3"}


def group_table(g: dict[str, Any]) -> list[str]:
    head = ["codec", "ratio", "encode MB/s", "decode MB/s", "ingest cost s/GB (1/encode)",
            "+ write s/GB", "= ingest s/GB", "stream s/GB (read + decode)"]
    body = []
    for cid, r in g["codecs"].items():
        mark, rec = [], g["recommendation"]
        if cid == g["current"]:
            mark.append("current")
        if cid == rec["codec"]:
            mark.append("rule's pick")
        elif cid == rec["best"]:
            mark.append("least ingest s/GB")
        name = cid + (f" **({', '.join(mark)})**" if mark else "")
        if cid == "none":
            name += " (copy)"
        c = r["cost"]
        body.append([name, f"{r['ratio']:.2f}", f"{r['enc_mbs']:.0f}", f"{r['dec_mbs']:.0f}",
                     f"{c['encode_s_gb']:.2f}", f"{c['write_s_gb']:.1f}",
                     f"{c['ingest_s_gb']:.1f}", f"{c['stream_s_gb']:.2f}"])
    return harness.md_table([head, *body])


def per_array_table(g: dict[str, Any]) -> list[str]:
    """Ratio per array kind (last path segment; splits, cells, volumes merged)."""
    kinds: dict[str, dict[str, Any]] = {}
    for i, a in enumerate(g["arrays"]):
        if not a["sample_bytes"]:
            continue
        key = a["path"].rsplit("/", 1)[-1]
        k = kinds.setdefault(key, {"dtype": np.dtype(a["dtype"]).name, "chunk": [], "top": 0,
                                   "raw": 0, "comp": dict.fromkeys(g["codecs"], 0)})
        if a["sample_bytes"] > k["top"]:  # the chunk of the kind's largest array
            k["chunk"], k["top"] = a["measured_chunk"], a["sample_bytes"]
        k["raw"] += a["sample_bytes"]
        for cid, r in g["codecs"].items():
            k["comp"][cid] += r["compressed_per_array"][i]
    if len(kinds) < 2:
        return []
    ids = [c for c in g["codecs"] if c != "none"]
    head = ["array", "dtype", "chunk", "sample MB", *(SHORT.get(c, c) for c in ids)]
    body = [[name, k["dtype"], "x".join(map(str, k["chunk"])), f"{k['raw'] / MB:.1f}",
             *(f"{k['raw'] / k['comp'][c]:.2f}" for c in ids)] for name, k in kinds.items()]
    return ["", "Ratio per array kind:", "", *harness.md_table([head, *body])]


def rec_line(label: str, g: dict[str, Any]) -> str:
    rec, rows = g["recommendation"], g["codecs"]
    b, cur = rows[rec["codec"]], rows[rec["current"]]
    if rec["codec"] == rec["current"]:
        verdict = f"keep **{rec['current']}**"
        if rec["kept_within_noise"]:
            verdict += (f" (the least ingest s/GB, {rec['best']}, saves only "
                        f"{rec['best_saving']:.0%})")
    else:
        verdict = (f"**{rec['codec']}** instead of {rec['current']}: ingest "
                   f"{b['cost']['ingest_s_gb']:.1f} vs {cur['cost']['ingest_s_gb']:.1f} s/GB "
                   f"({-rec['ingest_saving']:+.0%}), stored bytes {rec['stored_change']:+.0%}, "
                   f"stream {rec['stream_change']:+.0%}")
    floor = "" if rec["meets_floor"] else " (no codec meets the decode floor: fastest decoder)"
    near = [k for k, r in rows.items() if k not in ("none", rec["best"])
            and r["dec_mbs"] >= g["floor"] and r["cost"]["ingest_s_gb"]
            <= 1.05 * rows[rec["best"]]["cost"]["ingest_s_gb"]]
    near_txt = f"; within 5% of the least ingest s/GB: {', '.join(near)}" if near else ""
    return f"- **{label}**: {verdict}{floor}{near_txt}."


def report(record: dict[str, Any], args: argparse.Namespace) -> str:
    groups = record["groups"]
    lines = [
        "# Codecs per dataset: ratio and one-thread speed", "",
        f"`{record['command']}`, {harness.machine_line()}, zarr "
        f"{record['machine']['versions'].get('zarr')}, numcodecs "
        f"{record['machine']['versions'].get('numcodecs')} (c-blosc {record['blosc']}), "
        f"load {record['machine']['loadavg_start']} at the start. Sample: up to "
        f"{args.sample_mb:g} MB of chunks per dataset, median of {args.repeats} passes.", "",
        "**What was measured.** The chunks the ingest encodes: a small synthetic copy "
        "(`cloudmic.synth`) of each dataset went through the real ingest into a local folder; "
        "every level-0 numeric data array of the published Zarr was read back chunk by chunk "
        "with the manifest's inner chunk shape (edge chunks padded with the fill value and "
        "fill-only chunks skipped, as zarr does), sampled evenly over the arrays in proportion "
        "to their size. Each codec is zarr's own (`BloscCodec`/`ZstdCodec`, numcodecs "
        "underneath, typesize = the array's itemsize) on **one thread** "
        "(`numcodecs.blosc.set_nthreads(1)`, all calls from one Python thread). "
        "Every decode was checked to give back the chunk's bytes exactly. "
        "Speeds are MB of raw (uncompressed) bytes per second; `none` is a plain copy of the "
        "bytes (zarr has no codec step then). blosc lz4 runs at clevel 5 (numcodecs' default).",
        "",
        "**Synthetic data compresses differently from real data.** Only the "
        "`sted-fm (real crops)` groups are real pixels: one real 224x224 STED crop from the "
        "STED-FM repository in its 8 flips/rotations, as the derived uint16 and uint8 "
        "archives in `../shared/data/real/stedfm/derived` (0.8 and 0.4 MB; the uint16 values "
        "are the real crop's floats x 4095, so only ~141 distinct levels, unlike raw "
        "detector counts). They are measured **one crop per chunk**, not in the manifest's "
        "16-crop chunks: the 8 crops are copies of one (a vertical flip has the same rows), "
        "and in one chunk plain zstd's long window finds those rows again (a check outside "
        "this run: zstd 3 gave 4.2x on the 8-copy chunk, 2.3x on one crop; Blosc, which "
        "splits a chunk into blocks, hardly changed). Every other ratio comes from synthetic "
        "pixels (the generators' noise models): use those tables to compare codecs, not to "
        "predict the published sizes.", "",
        f"**The rule** (issue 16: the ingest is CPU-bound on 2 cores): per raw GB, "
        f"ingest s/GB = encode s/GB (1 / encode speed) + stored GB / store write speed "
        f"({args.store_write_mbs:g} MB/s: " + (
            "`full_size.json`'s raw copies, the published bytes written to the embedded "
            "SeaweedFS by 2 threads, median of 5 datasets, 76-99 MB/s; STACK-NOTES' 58-71 MB/s "
            "for zarr region writes includes zarr's encoding" if args.store_write_mbs ==
            STORE_WRITE_MBS else "set with `--store-write-mbs`") + "). Pick the "
        f"least ingest s/GB among compressing codecs that decode at least "
        f"{args.decode_floor:g} MB/s on one thread; keep the manifest's current codec when "
        f"that pick saves less than {args.min_gain:.0%} of the current ingest s/GB (one run "
        f"on a shared machine is not more exact). The stream column is what a reader pays per "
        f"raw GB: stored GB / store read speed ({args.store_read_mbs:g} MB/s: " + (
            "`patchstream.md`'s raw parallel GETs of the Zarr shard objects; STACK-NOTES' spike "
            "had 250 MB/s for WebDataset tars" if args.store_read_mbs == STORE_READ_MBS
            else "set with `--store-read-mbs`") + ") + decode s/GB. Both store speeds come "
        "from the other benches' result files, not from this run (`--store-write-mbs`, "
        "`--store-read-mbs`). The codec's part is only a slice of a real ingest: "
        "`full_size.md` measured 20-26 MB/s end to end on 2 cores, 38-50 s per source GB "
        "(sources read and parsed, WebDataset tars written uncompressed, Zarr written).", "",
        "## Recommendation per dataset", "",
        *(rec_line(label, g) for label, g in groups.items()), ""]
    for label, g in groups.items():
        prep = g["prepare"]
        src = ("the real files, one crop per chunk" if g.get("real") else
               "synth " + ", ".join(f"{k}={v}" for k, v in (prep["synth_args"] or {}).items()))
        lines += [f"## {label}", "",
                  f"{src}; {g['sample_bytes'] / MB:.1f} MB sampled in {g['chunks']} chunks "
                  f"(of {g['level0_bytes'] / MB:.1f} MB in the level-0 chunks zarr stores); "
                  f"manifest's choice: {g['current']}.", "", *group_table(g),
                  *per_array_table(g), ""]
    lines += [f"Short names: {', '.join(f'{v} = {k}' for k, v in SHORT.items() if k != v)}.",
              "Per chunk sizes, every pass and the arrays sampled are in the JSON.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default=",".join(DATASETS),
                    help=f"comma-separated subset of {', '.join(DATASETS)} (sted-fm brings "
                    "the real crops)")
    ap.add_argument("--sample-mb", type=float, default=64.0,
                    help="MB of chunks measured per dataset (default 64)")
    ap.add_argument("--repeats", type=int, default=3, help="passes per codec (median)")
    ap.add_argument("--store-write-mbs", type=float, default=STORE_WRITE_MBS)
    ap.add_argument("--store-read-mbs", type=float, default=STORE_READ_MBS)
    ap.add_argument("--decode-floor", type=float, default=DECODE_FLOOR_MBS,
                    help="MB/s a recommended codec must decode on one thread")
    ap.add_argument("--min-gain", type=float, default=0.10,
                    help="ingest s/GB saving below which the current codec is kept")
    ap.add_argument("--workdir", default=None, help="parent of the temp folders")
    ap.add_argument("--json", default=str(harness.RESULTS / "codecs.json"))
    ap.add_argument("--md", default=None, help="default: --json with .md")
    args = ap.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(names) - set(DATASETS))
    if unknown:
        ap.error(f"unknown dataset(s) {unknown}; choose from {', '.join(DATASETS)}")
    if args.repeats < 1 or args.sample_mb <= 0:
        ap.error("--repeats must be >= 1 and --sample-mb > 0")

    import numcodecs
    import numcodecs.blosc

    numcodecs.blosc.set_nthreads(1)
    started = harness.Stopwatch()
    record = harness.run_record("codecs", __file__, sys.argv[1:], PACKAGES)
    record |= {"blosc": numcodecs.blosc.VERSION_STRING, "blosc_nthreads": 1,
               "settings": {k: getattr(args, k) for k in ("sample_mb", "repeats",
                                                          "store_write_mbs", "store_read_mbs",
                                                          "decode_floor", "min_gain")},
               "candidates": CANDIDATES, "groups": {}}
    for name in names:
        record["groups"] |= run_dataset(name, args)
        assert numcodecs.blosc.get_nthreads() == 1
    harness.close_record(record, started)
    text = report(record, args)
    md = harness.write_results(args.json, record, text, md_path=args.md)
    print(text)
    harness.log(f"wrote {args.json} and {md} in {started.s:.0f} s")


if __name__ == "__main__":
    harness.entry(main)
