"""What the training-stream benchmarks (bench_patchstream, bench_peers) share: N synthetic
BioSR pairs published by ``cloudmic.ingest`` to the embedded S3 server and the listing of
what was written, the raw-GET limit of those bytes, a counting HTTP proxy, and the opener
and wrapper a plain WebDataset / ``cloudmic.shards`` user would write."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import MB, SERVER_PID_ENV, CpuLedger, Workspace, log, timed

try:  # LazyShards is a torch IterableDataset (torch is needed anyway)
    from torch.utils.data import IterableDataset
except ImportError:  # pragma: no cover
    IterableDataset = object  # type: ignore[assignment,misc]

BUCKET = "bench"
PATCH = 64
BATCH = 32
PLAIN_ENV = "CLOUDMIC_BENCH_PLAIN_WDS"  # set: register the plain s3fs opener (workers too)


# --------------------------------------------------------------------------- plain users
def plain_s3_open(url: str, mode: str = "rb", bufsize: int = 8192, **_: Any):
    """What a plain WebDataset user writes: s3fs from the AWS_* environment, default options."""
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    return fs.open(url.removeprefix("s3://"), mode)


if os.environ.get(PLAIN_ENV):  # runs in spawned DataLoader workers too (they re-import us)
    import webdataset as _wds

    _wds.gopen_schemes["s3"] = plain_s3_open


class LazyShards(IterableDataset):  # type: ignore[misc,valid-type]
    """``cloudmic.shards(url, split)`` made in the process that iterates it: the workaround
    a user would write if the stream it returns cannot be pickled to spawn workers."""

    def __init__(self, url: str, split: str) -> None:
        super().__init__()
        self.url, self.split, self._ds = url, split, None

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "split": self.split, "_ds": None}

    def __iter__(self):
        import cloudmic

        if self._ds is None:
            self._ds = cloudmic.shards(self.url, self.split)
        yield from self._ds


# --------------------------------------------------------------------------- the data
def serve(ws: Workspace) -> tuple[dict[str, str], dict[str, Any]]:
    """Start the server; (environment for the children, storage options). This process's
    environment gets the AWS_* variables too: WebDataset openers and obstore read them."""
    info = ws.s3()
    os.environ.update(info.env(), **{SERVER_PID_ENV: str(info.pid)})  # CpuLedger's server
    env = dict(os.environ)
    log(f"SeaweedFS up at {info.endpoint} ({ws.setup['server_up_s']:.1f} s)")
    return env, info.storage_options()


def _synth_part(out: str, count: int, variant: str, seed: int) -> str:
    from cloudmic.synth.biosr import synth_biosr

    synth_biosr(out, train=count, validate=0, test=0, variant=variant, seed=seed)
    return out


def synthesise(src: Path, pairs: int, variant: str, parts: int) -> dict[str, Any]:
    """N pairs in the published layout, written by ``parts`` processes (seed = part number).

    synth_biosr names files 1..count and keys every sample on (seed, index), so each part
    uses its own seed and its files are renamed into one contiguous training_* tree.
    """
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    counts = [pairs // parts + (1 if p < pairs % parts else 0) for p in range(parts)]
    counts = [c for c in counts if c]
    work = src.parent / "synth-parts"
    with ProcessPoolExecutor(len(counts), mp_context=mp.get_context("spawn")) as pool:
        futs = [pool.submit(_synth_part, str(work / f"p{p}"), c, variant, p)
                for p, c in enumerate(counts)]
        for f in futs:
            f.result()
    root = src / "BioSR" / "Microtubules"
    offset, nbytes = 0, 0
    for p, c in enumerate(counts):
        part_root = work / f"p{p}" / "BioSR" / "Microtubules"
        for side in ("wf", "gt"):
            dest = root / f"training_{side}"
            dest.mkdir(parents=True, exist_ok=True)
            for i in range(1, c + 1):
                f = part_root / f"training_{side}" / f"{i:08d}.tif"
                nbytes += f.stat().st_size
                os.replace(f, dest / f"{offset + i:08d}.tif")
        offset += c
    shutil.rmtree(work)
    return {"files": 2 * pairs, "bytes": nbytes, "parts": len(counts)}


def make_pairs(tmp: Path, pairs: int, variant: str,
               setup: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """``synthesise`` into ``tmp/src`` with up to 4 processes, timed as ``synth_s``."""
    src = tmp / "src"
    with timed(setup, "synth_s"):
        syn = synthesise(src, pairs, variant, parts=max(1, min(os.cpu_count() or 1, 4)))
    log(f"synthesised {pairs} pairs ({syn['bytes'] / MB:.0f} MB of TIFF) in "
        f"{setup['synth_s']:.1f} s with {syn['parts']} processes")
    return src, syn


def ingest(src: Path, so: dict[str, Any], setup: dict[str, Any]) -> Any:
    """``cloudmic.ingest`` of the pairs to ``s3://bench``, timed as ``ingest_s``."""
    import cloudmic

    with timed(setup, "ingest_s"):
        report = cloudmic.ingest("biosr", src, f"s3://{BUCKET}", storage_options=so)
    log(f"cloudmic.ingest: {setup['ingest_s']:.1f} s")
    return report


def list_sizes(fs: Any, prefix: str) -> dict[str, int]:
    return {p: int(d["size"]) for p, d in fs.find(prefix, detail=True).items()}


@dataclass
class Published:
    """What ingest wrote, as the benchmarks read it: the URLs readers are given, the
    current version's folders (bucket/key), the train shard objects of wf and gt
    (bucket/key -> bytes, what PatchStream reads), the WebDataset tars."""

    zurl: str
    wurl: str
    zarr_key: str  # the current version's biosr.zarr (ROOT/biosr.releases/<v>/, ADR 0007)
    fs: Any
    shard_objs: dict[str, int]
    tars: list[dict[str, Any]]  # the index's train shards (url, bytes, samples)
    tar_objs: dict[str, int]
    train: Any  # cloudmic.open(zarr url)["train"]

    @classmethod
    def list(cls, so: dict[str, Any]) -> Published:
        import cloudmic
        from cloudmic.storage import versions

        zurl, wurl = f"s3://{BUCKET}/biosr.zarr", f"s3://{BUCKET}/biosr.wds"
        # readers resolve these URLs to the current version once; the raw GETs and the
        # plain WebDataset read that version's objects by their keys
        ds = versions.resolve(zurl, **so)
        zkey, wkey = (loc.url.removeprefix("s3://").rstrip("/") for loc in (ds.zarr, ds.wds))
        fs = ds.zarr.fs
        shard_objs = {**list_sizes(fs, f"{zkey}/train/wf/c"),
                      **list_sizes(fs, f"{zkey}/train/gt/c")}
        index = json.loads(fs.cat_file(f"{wkey}/index.json"))
        tars = index["splits"]["train"]["shards"]
        tar_objs = {f"{wkey}/{s['url']}": int(s["bytes"]) for s in tars}
        return cls(zurl, wurl, zkey, fs, shard_objs, tars, tar_objs,
                   cloudmic.open(zurl, storage_options=so)["train"])

    @property
    def tar_urls(self) -> list[str]:
        return [f"s3://{p}" for p in self.tar_objs]


# --------------------------------------------------------------------------- the limit
def obstore_fetcher(root_url: str, storage_options: dict[str, Any], paths: dict[str, int]):
    """A function conc -> MB/s: one timed pass of parallel obstore GETs of ``paths``."""
    import obstore

    from cloudmic.storage.location import Location

    store = Location.parse(root_url, **storage_options).object_store()
    keys = [p.split("/", 1)[1] for p in sorted(paths)]
    total = sum(paths.values())

    async def fetch_all(conc: int) -> int:
        sem = asyncio.Semaphore(conc)

        async def one(key: str) -> int:
            async with sem:
                resp = await obstore.get_async(store, key)
                return len(await resp.bytes_async())

        return sum(await asyncio.gather(*(one(k) for k in keys)))

    def one_pass(conc: int) -> float:
        return _timed_pass(lambda: asyncio.run(fetch_all(conc)), total)

    return one_pass


def _timed_pass(fetch: Any, total: int) -> float:
    """MB/s of one ``fetch()`` (returns the bytes it got, which must be ``total``)."""
    t0 = time.perf_counter()
    got = fetch()
    dt = time.perf_counter() - t0
    if got != total:
        raise RuntimeError(f"limit: fetched {got} bytes, expected {total}")
    return total / dt / MB


def measure_limit(root_url: str, storage_options: dict[str, Any], paths: dict[str, int],
                  repeats: int, concurrencies=(4, 16)) -> dict[str, Any]:
    """Raw parallel GETs of exactly ``paths`` (bucket/key -> size): obstore and s3fs."""
    from cloudmic.storage.location import Location

    total = sum(paths.values())
    one_pass = obstore_fetcher(root_url, storage_options, paths)
    out: dict[str, Any] = {"objects": len(paths), "bytes": total, "obstore": {}}
    one_pass(8)  # warm-up (connections, server caches): the limit is the best case
    for conc in concurrencies:
        runs = [one_pass(conc) for _ in range(repeats)]
        out["obstore"][str(conc)] = {"runs_MBps": runs, "median_MBps": statistics.median(runs)}
    fs = Location.parse(root_url, **storage_options).fs
    plist = sorted(paths)

    def s3fs_pass() -> float:
        return _timed_pass(lambda: sum(len(v) for v in fs.cat(plist).values()), total)

    runs = [s3fs_pass() for _ in range(repeats)]
    out["s3fs_cat"] = {"runs_MBps": runs, "MBps": statistics.median(runs)}
    choose_limit(out)
    return out


def choose_limit(out: dict[str, Any]) -> None:
    """The faster client's median is the limit (obstore's best concurrency)."""
    for v in out["obstore"].values():
        v["median_MBps"] = statistics.median(v["runs_MBps"])
    best_conc = max(out["obstore"], key=lambda c: out["obstore"][c]["median_MBps"])
    out["obstore_best"] = {"concurrency": int(best_conc),
                           "MBps": out["obstore"][best_conc]["median_MBps"]}
    if out["obstore_best"]["MBps"] >= out["s3fs_cat"]["MBps"]:
        out["client"], out["MBps"] = f"obstore x{best_conc}", out["obstore_best"]["MBps"]
    else:
        out["client"], out["MBps"] = "s3fs cat", out["s3fs_cat"]["MBps"]


class Limit:
    """The limit of ``objs`` (``record``: ``measure_limit``'s dict plus ``samples_per_s`` =
    MB/s / stored bytes per sample). ``another_pass()`` adds one pass at the best obstore
    concurrency: one per repeat round, so that the limit sees the load drift the measured
    configurations see; ``final()`` takes the median again over all passes."""

    def __init__(self, so: dict[str, Any], objs: dict[str, int], repeats: int,
                 bytes_per_sample: float, **kw: Any) -> None:
        self.record = measure_limit(f"s3://{BUCKET}", so, objs, repeats, **kw)
        self.bytes_per_sample = bytes_per_sample
        self.record["samples_per_s"] = self.record["MBps"] * MB / bytes_per_sample
        self._pass = obstore_fetcher(f"s3://{BUCKET}", so, objs)
        self._best = str(self.record["obstore_best"]["concurrency"])
        ledger = CpuLedger()  # what the GETs alone cost the cores: the floor under any reader
        self.another_pass()
        self.record["cpu"] = {**ledger.stop(),
                              "samples": round(sum(objs.values()) / bytes_per_sample)}

    def another_pass(self) -> float:
        mbps = self._pass(int(self._best))
        self.record["obstore"][self._best]["runs_MBps"].append(mbps)
        return mbps

    def final(self) -> dict[str, Any]:
        lim = self.record
        choose_limit(lim)
        lim["samples_per_s"] = lim["MBps"] * MB / self.bytes_per_sample
        log(f"limit over all passes: {lim['MBps']:.0f} MB/s ({lim['client']}) = "
            f"{lim['samples_per_s']:.0f} samples/s")
        return lim


# --------------------------------------------------------------------------- counting proxy
class CountingProxy:
    """A TCP proxy in front of the S3 server that counts HTTP requests and bytes.

    Only GET/HEAD traffic is expected (no request bodies), so the client->server stream
    is a sequence of header blocks ending in a blank line: one block, one request. The
    Host header passes through unchanged, so SigV4 signatures stay valid.
    """

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("http://").rstrip("/").split(":")
        self.upstream = (host, int(port))
        self.methods: Counter[str] = Counter()
        self.ranged = 0
        self.bytes_down = 0
        self.connections = 0
        self.lines: list[str] = []  # the first request lines (+ Range), for the report
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.port = 0

    def snapshot(self) -> dict[str, Any]:
        return {"requests": sum(self.methods.values()), "methods": dict(self.methods),
                "ranged": self.ranged, "bytes": self.bytes_down, "n_lines": len(self.lines),
                "connections": self.connections}

    @staticmethod
    def delta(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        """What was counted between snapshots ``a`` and ``b``."""
        return {"requests": b["requests"] - a["requests"],
                "ranged_requests": b["ranged"] - a["ranged"], "bytes": b["bytes"] - a["bytes"],
                "connections": b["connections"] - a["connections"],
                "methods": {k: b["methods"].get(k, 0) - a["methods"].get(k, 0)
                            for k in b["methods"]}}

    def start(self) -> str:
        threading.Thread(target=self._run, daemon=True).start()
        self._ready.wait(10)
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0, limit=1 << 20))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_r, up_w = await asyncio.open_connection(*self.upstream, limit=1 << 20)
        except OSError:
            writer.close()
            return

        async def client_to_server() -> None:
            buf = b""
            try:
                while data := await reader.read(1 << 16):
                    up_w.write(data)
                    await up_w.drain()
                    buf += data
                    while (end := buf.find(b"\r\n\r\n")) >= 0:
                        head, buf = buf[:end], buf[end + 4:]
                        self.methods[head.split(b" ", 1)[0].decode(errors="replace")] += 1
                        rng = [ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"range:")]
                        self.ranged += bool(rng)
                        if len(self.lines) < 400:
                            line = head.split(b"\r\n", 1)[0].decode(errors="replace")
                            self.lines.append(" ".join([line.rsplit(" ", 1)[0], *(
                                r.decode(errors="replace") for r in rng)]))
            finally:
                with contextlib.suppress(Exception):
                    up_w.close()

        async def server_to_client() -> None:
            try:
                while data := await up_r.read(1 << 18):
                    self.bytes_down += len(data)
                    writer.write(data)
                    await writer.drain()
            finally:
                with contextlib.suppress(Exception):
                    writer.close()

        await asyncio.gather(client_to_server(), server_to_client(), return_exceptions=True)
