"""bench_peers' report: per configuration the medians over runs, ratios against the limit
and PatchStream, checks, request counts, peak RSS and shuffle quality; the goals table, the
table of every row, the shuffle table, the markdown file and its notes."""

from __future__ import annotations

from typing import Any

import numpy as np
from harness import MB, md_table, median, setup_line
from peers_checks import epoch_repeat, shuffle_metrics
from peers_readers import DASK, FORMATS, LABELS, LITDATA_CHUNK, PEERS, PRELOAD
from stream_fixture import BATCH, PATCH


def summarise(result: dict[str, Any]) -> None:
    """Per configuration: medians over runs, ratios, checks, counts, RSS, shuffle quality."""
    lim_sps = result["limit"]["samples_per_s"]
    own = result["own_limits"]
    counts = result.get("counting", {})
    n = result["dataset"]["pairs"]
    for c in result["configs"]:
        runs = [r for r in c["runs"] if "epochs" in r]
        c["errors"] = [r["error"] for r in c["runs"] if "error" in r]
        if not runs:
            continue
        cnt = counts.get(c["reader"], {})
        if c["reader"] in DASK:  # the cluster reads what PatchStream reads
            cnt = counts.get("patchstream", {})
        c["peak_rss_mb"] = {k: median([r["peak_rss_mb"][k] for r in runs])
                            for k in ("main", "worker_max", "sum_max")}
        starts = [r["cluster_start_s"] for r in runs if r.get("cluster_start_s")]
        c["cluster_start_s"] = median(starts) if starts else None
        own_sps = own.get(FORMATS.get(c["reader"], ""), {}).get("samples_per_s")
        for label, idx in (("cold", 0), ("warm", 1)):
            eps = [r["epochs"][idx] for r in runs]
            sps = median([e["samples_per_s"] for e in eps])
            checks = [e["check"] for e in eps]
            m: dict[str, Any] = {
                "samples_per_s": sps, "runs_samples_per_s": [round(e["samples_per_s"], 1)
                                                             for e in eps],
                "first_batch_s": median([e["first_batch_s"] or 0.0 for e in eps]),
                "samples": eps[0]["samples"], "truncated": eps[0]["truncated"],
                "pads": max(e.get("pads", 0) for e in eps),
                "decoded_bytes_per_sample": eps[0]["decoded_bytes_per_sample"],
                "x_limit": sps / lim_sps,
                "x_own_limit": sps / own_sps if own_sps else None,
                "cache_mb": eps[0].get("cache_mb"),
                "check_ok": all(ch["ok"] for ch in checks),
                "check": _check_text(checks)}
            m["cpu"] = _cpu_per_patch(eps)
            cc = cnt.get(label) if isinstance(cnt, dict) else None
            m["bytes_per_patch"] = cc["bytes_per_patch"] if cc else None
            m["requests_per_patch"] = cc["requests_per_patch"] if cc else None
            m["fetched_MBps"] = sps * cc["bytes_per_patch"] / MB if cc else None
            c[label] = m
            result["dataset"].setdefault("decoded_bytes_per_patch",
                                         m["decoded_bytes_per_sample"])
        # shuffle quality: every run's two epochs (the order each timed epoch delivered)
        units = result["units"][c["reader"]]
        per_epoch = [[shuffle_metrics(r["epochs"][e]["order"], units, n) for r in runs]
                     for e in (0, 1)]
        q: dict[str, Any] = {}
        keys = ("displacement", "spearman", "block256", "own_unit", "coverage", "duplicates")
        for k in keys:
            vals = [m[k] for ms in per_epoch for m in ms if m.get(k) is not None]
            q[k] = median(vals) if vals else None
        q["items"] = per_epoch[0][0]["items"]
        reps = [epoch_repeat(r["epochs"][0]["order"], r["epochs"][1]["order"]) for r in runs]
        reps = [x for x in reps if x is not None]
        q["epoch_repeat"] = median(reps) if reps else None
        q["replayed"] = any("order_replay_ok" in r["epochs"][0] for r in runs)
        q["replay_ok"] = all(r["epochs"][e].get("order_replay_ok", True) for r in runs
                             for e in (0, 1))
        rng = np.random.default_rng(0)  # the same epoch, uniformly permuted
        q["random"] = shuffle_metrics(rng.permutation(runs[0]["epochs"][0]["order"]).tolist(),
                                      units, n)
        c["shuffle"] = q
        for r in runs:  # keep the first keys only: the orders are large
            for e in r["epochs"]:
                e["first_indices"] = e.pop("order")[:16]
    _ratios(result)


CPU_PARTS = ("main", "workers", "server", "other")


def _cpu_per_patch(eps: list[dict[str, Any]]) -> dict[str, float] | None:
    """Medians over runs of the epoch's CPU ledger: us of CPU per patch by part (training
    process, its workers, the S3 server, the rest of the machine) and cores busy."""
    eps = [e for e in eps if e.get("cpu") and e["samples"]]
    if not eps:
        return None
    out = {k: median([e["cpu"][f"{k}_s"] / e["samples"] * 1e6 for e in eps
                      if e["cpu"][f"{k}_s"] == e["cpu"][f"{k}_s"]]) for k in CPU_PARTS}
    out["total"] = median([e["cpu"]["machine_s"] / e["samples"] * 1e6 for e in eps])
    out["cores_busy"] = median([e["cpu"]["cores_busy"] for e in eps])
    return out


def limit_cpu(lim: dict[str, Any]) -> dict[str, float] | None:
    """The raw GETs' own ledger, per sample (the floor under any reader of these bytes)."""
    c = lim.get("cpu")
    if not c:
        return None
    n = c["samples"]
    return {**{k: c[f"{k}_s"] / n * 1e6 for k in CPU_PARTS},
            "total": c["machine_s"] / n * 1e6, "cores_busy": c["cores_busy"]}


def fmt_cpu_table(result: dict[str, Any]) -> list[list[str]]:
    """Where the CPU went, per row: us of CPU per patch by process, and cores busy."""
    head = ["reader", "loader", "epoch", "patches/s", "cores busy", "training process",
            "workers", "S3 server", "other", "total us/patch", "x the GETs' own"]
    floor = limit_cpu(result["limit"])
    rows = []
    if floor:
        rows.append(["LIMIT raw GET of the Zarr bytes", result["limit"]["client"], "-",
                     f"{result['limit']['samples_per_s']:.0f}", f"{floor['cores_busy']:.0%}",
                     *(f"{floor[k]:.0f}" for k in CPU_PARTS), f"{floor['total']:.0f}",
                     "1.00"])
    for c in result["configs"]:
        for label in ("cold", "warm"):
            m = c.get(label)
            cpu = m and m.get("cpu")
            if not cpu:
                continue
            loader = f"DL{c['workers']}" + (" + cluster" if c["reader"] in DASK else "")
            rows.append([LABELS[c["reader"]], loader, label, f"{m['samples_per_s']:.0f}",
                         f"{cpu['cores_busy']:.0%}", *(f"{cpu[k]:.0f}" for k in CPU_PARTS),
                         f"{cpu['total']:.0f}",
                         _f(cpu["total"] / floor["total"] if floor else None, ".2f")])
    return [head, *rows]


def _check_text(checks: list[dict[str, Any]]) -> str:
    """'ok' when every run's epoch delivered the expected count, unique samples and exact
    pixel sums; else what went wrong (worst run)."""
    if all(ch["ok"] for ch in checks):
        return "ok"
    bad = [ch for ch in checks if not ch["ok"]][0]
    parts = []
    if bad["expected"] is not None and bad["items"] != bad["expected"]:
        parts.append(f"{bad['items']}/{bad['expected']} items")
    if bad["duplicates"]:
        parts.append(f"{bad['duplicates']} dup")
    if bad["sum_mismatches"]:
        parts.append(f"{bad['sum_mismatches']} sums differ")
    if bad["bad_index"]:
        parts.append(f"{bad['bad_index']} bad index")
    return "FAIL " + ", ".join(parts or ["empty"])


def _cell(result: dict[str, Any], reader: str, workers: int, label: str) -> dict | None:
    for c in result["configs"]:
        if c["reader"] == reader and c["workers"] == workers and label in c:
            return c[label]
    return None


def _ratios(result: dict[str, Any]) -> None:
    """PatchStream / each row (same loader, same epoch; the dask rows are DL0), and the
    goals table: PatchStream against the limit and each peer, per loader x epoch."""
    w = result["params"]["workers"]
    for c in result["configs"]:
        for label in ("cold", "warm"):
            m = c.get(label)
            ps = _cell(result, "patchstream", c["workers"], label)
            if m and ps:
                m["ps_over_this"] = ps["samples_per_s"] / m["samples_per_s"]
    cols = [(0, "cold"), (0, "warm"), (w, "cold"), (w, "warm")]
    lim = result["limit"]["samples_per_s"]

    def ratio(num: str, den: str | None) -> list[float | None]:
        out = []
        for wk, label in cols:
            a = _cell(result, num, wk, label)
            if den is None:
                out.append(a["samples_per_s"] / lim if a else None)
                continue
            b = _cell(result, den, wk, label)
            out.append(a["samples_per_s"] / b["samples_per_s"] if a and b else None)
        return out

    goals: list[dict[str, Any]] = [
        {"what": "PatchStream / limit (raw GET of its Zarr bytes)", "values": ratio(
            "patchstream", None), "target": ">= 0.80", "min": 0.8}]
    for peer in PEERS:
        goals.append({"what": f"PatchStream / {LABELS[peer]}",
                      "values": ratio("patchstream", peer), "target": ">= 1.5", "min": 1.5})
    goals.append({"what": "PatchStream + cache_dir / Mosaic (warm: its local copy)",
                  "values": ratio("ps-cache", "mosaic"), "target": "> 1.0 warm", "min": 1.0,
                  "strict": True, "only": "warm"})
    goals.append({"what": "PatchStream + cache_dir / PatchStream", "values": ratio(
        "ps-cache", "patchstream"), "target": "-"})
    goals.append({"what": "cloudmic.shards / WebDataset plain", "values": ratio(
        "shards", "wds-plain"), "target": ">= 1.0", "min": 1.0})
    for reader in DASK:
        goals.append({"what": f"{LABELS[reader]} / PatchStream (DL0)",
                      "values": ratio(reader, "patchstream"), "target": "-"})
    fb = [(_cell(result, "patchstream", wk, label) or {}).get("first_batch_s")
          for wk, label in cols]
    goals.append({"what": "PatchStream first batch, s", "values": fb,
                  "target": f"< 2 s cold DL{w}", "max": 2.0, "only": "cold-workers"})
    for g in goals:
        vals = g["values"]
        sel = [v for (wk, label), v in zip(cols, vals, strict=True) if v is not None and (
            g.get("only") is None or (g["only"] == "warm" and label == "warm") or (
                g["only"] == "cold-workers" and label == "cold" and wk))]
        if "min" in g and sel:
            g["met"] = all(v > g["min"] if g.get("strict") else v >= g["min"] for v in sel)
        elif "max" in g and sel:
            g["met"] = all(v < g["max"] for v in sel)
    result["goals"] = {"columns": [f"DL{wk} {label}" for wk, label in cols], "rows": goals}


def _f(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def fmt_tables(result: dict[str, Any]) -> tuple[list[list[str]], list[list[str]],
                                                 list[list[str]]]:
    lim = result["limit"]
    head = ["reader", "loader", "epoch", "patches/s", "PS / this", "x limit", "x own limit",
            "MB/s fetched", "bytes/patch", "requests/patch", "1st batch s", "check",
            "peak RSS MB (main+workers)", "local cache MB"]
    ps = {(label, wk): _cell(result, "patchstream", wk, label)
          for wk in (0, result["params"]["workers"]) for label in ("cold", "warm")}
    rows = [["LIMIT raw GET of the Zarr bytes", lim["client"], "-",
             f"{lim['samples_per_s']:.0f}",
             " / ".join(_f(p["samples_per_s"] / lim["samples_per_s"], ".2f")
                        for p in ps.values() if p) or "-", "1.00", "-", f"{lim['MBps']:.0f}",
             f"{result['dataset']['stored_bytes_per_pair']:.0f}", "-", "-", "-", "-", "-"]]
    names = {"wds": "raw GET of the WDS tars", "litdata": "raw GET of the LitData chunks",
             "mosaic": "raw GET of the MDS shards"}
    for k, x in result["own_limits"].items():
        if k == "zarr":
            continue
        rel = x["samples_per_s"] / lim["samples_per_s"]
        rows.append([names.get(k, k), f"obstore x{x['concurrency']}", "-",
                     f"{x['samples_per_s']:.0f}", "-", f"{rel:.2f}", "1.00", f"{x['MBps']:.0f}",
                     f"{x['bytes'] / result['dataset']['pairs']:.0f}", "-", "-", "-", "-", "-"])
    for c in result["configs"]:
        loader = f"DL{c['workers']}" + (" + cluster" if c["reader"] in DASK else "")
        if "cold" not in c:
            rows.append([LABELS[c["reader"]], loader, "-", "FAILED", *["-"] * 10])
            continue
        rss = c["peak_rss_mb"]
        rss_s = (f"{rss['main']:.0f}+{c['workers']}x{rss['worker_max']:.0f}" if c["workers"]
                 else f"{rss['main']:.0f}" + (f" (+cluster {rss['sum_max'] - rss['main']:.0f})"
                                              if c["reader"] in DASK else ""))
        for label in ("cold", "warm"):
            m = c[label]
            sps = f"{m['samples_per_s']:.0f}" + ("*" if m["truncated"] else "")
            rows.append([LABELS[c["reader"]], loader, label, sps,
                         _f(m.get("ps_over_this"), ".2f"), f"{m['x_limit']:.3f}",
                         _f(m["x_own_limit"], ".2f"), _f(m["fetched_MBps"], ".1f"),
                         _f(m["bytes_per_patch"], ".0f"), _f(m["requests_per_patch"], ".4f"),
                         f"{m['first_batch_s']:.2f}", m["check"], rss_s,
                         _f(m["cache_mb"], ".0f")])
    g = result["goals"]
    ghead = ["PatchStream against", *g["columns"], "goal", "met"]
    grows = []
    for row in g["rows"]:
        grows.append([row["what"], *(_f(v, ".2f") for v in row["values"]), row["target"],
                      {True: "yes", False: "NO"}.get(row.get("met"), "-")])
    qhead = ["reader", "loader", "items/epoch", "displacement", "same 256-block",
             "same own unit", "Spearman(pos, index)", "epoch-to-epoch", "coverage"]
    qrows = []
    for c in result["configs"]:
        q = c.get("shuffle")
        if not q:
            continue
        dup = q["duplicates"] or 0
        cov = f"{q['coverage']:.3f}"
        if c["reader"] == "xbatcher" and dup:  # every grid tile of a sample is an item
            cov += f" (x{q['items'] / (q['items'] - dup):.0f} tiles)"
        elif dup:
            cov += f" ({dup:.0f} dup)"

        name = LABELS[c["reader"]] + (" (replayed)" if q["replayed"] and q["replay_ok"]
                                      else "")
        qrows.append([name, f"DL{c['workers']}", str(q["items"]),
                      _f(q["displacement"], ".3f"), _f(q["block256"], ".3f"),
                      _f(q["own_unit"], ".3f"), _f(q["spearman"], ".3f"),
                      _f(q["epoch_repeat"], ".3f"), cov])
        rq = q["random"]
        if c["reader"] not in ("ps-cache", *DASK) and (
                c["workers"] == 0 or c["reader"] == "wds-shuffled"):
            qrows.append([f"  uniform random ({LABELS[c['reader']]} epoch)", "-",
                          str(rq["items"]), _f(rq["displacement"], ".3f"),
                          _f(rq["block256"], ".3f"), _f(rq["own_unit"], ".3f"),
                          _f(rq["spearman"], ".3f"), "~0", f"{rq['coverage']:.3f}"])
    for bb, q in (result.get("patchstream_simulated") or {}).items():
        qrows.append([f"PatchStream buffer_blocks={bb} (order only, {q['seeds']} seeds)", "DL0",
                      str(q["items"]), _f(q["displacement"], ".3f"), _f(q["block256"], ".3f"),
                      _f(q["own_unit"], ".3f"), f"abs {q['spearman_abs_median']:.3f} "
                      f"(max {q['spearman_abs_max']:.2f})",
                      _f(q["epoch_repeat"], ".3f"), f"{q['coverage']:.3f}"])
    return [head, *rows], [ghead, *grows], [qhead, *qrows]


def render_md(result: dict[str, Any], table: list[list[str]], gtable: list[list[str]],
              qtable: list[list[str]]) -> str:
    m, d, lim = result["machine"], result["dataset"], result["limit"]
    v = m["versions"]
    w = result["params"]["workers"]

    order = ["zarr", "wds", "litdata", "mosaic"]
    fmts = "; ".join(f"{k}: {x['objects']} objects, {x['bytes'] / MB:.1f} MB "
                     f"({x['bytes'] / d['pairs']:.0f} B/pair), raw GET {x['MBps']:.0f} MB/s = "
                     f"{x['samples_per_s']:.0f} samples/s"
                     for k, x in sorted(result["own_limits"].items(),
                                        key=lambda kv: order.index(kv[0])))
    dask_starts = "; ".join(f"{LABELS[c['reader']]} {c['cluster_start_s']:.1f} s"
                            for c in result["configs"] if c.get("cluster_start_s"))
    out = [
        "# cloudmic vs the peers: the training stream",
        "",
        f"`{result['command']}`, {result['timestamp']}, total {result['total_runtime_s']:.0f} s.",
        "",
        f"Machine: {m['nproc']} CPUs, Python {m['python']}; " + ", ".join(
            f"{k} {x}" for k, x in v.items()) + f"; load average {m['loadavg_start']} -> "
        f"{m['loadavg_end']}.",
        "",
        f"Data: {d['pairs']} synthetic BioSR pairs ({d['variant']}, WF "
        f"{'x'.join(map(str, d['wf_shape']))}, GT {'x'.join(map(str, d['gt_shape']))}), one "
        f"copy per format on one local SeaweedFS: {fmts}. Every reader yields the same "
        f"{PATCH}x{PATCH} WF/GT patches (random crop; xbatcher: its fixed grid), batch "
        f"{BATCH}; DL0 = in-process loader, DL{w} = {w} DataLoader workers, persistent across "
        f"the two epochs (PatchStream: `stream.loader({BATCH}, {w}, persistent_workers=True)`, "
        f"its defaults: forkserver, batches made in the stream; the peers: "
        f"`DataLoader(batch_size={BATCH}, multiprocessing_context="
        f"\"{result['params']['peer_context']}\", persistent_workers=True)`). DL0 + cluster = "
        "one training process whose blocks are read and cut by a dask cluster "
        f"(`PatchStream(..., scheduler=address)`; cluster start, not timed: {dask_starts or '-'})."
        f" Median of {result['params']['repeats']} fresh-process runs per row.",
        "",
        f"The limit: raw parallel GETs of the Zarr shard objects of the same samples "
        f"(obstore x{lim['obstore_best']['concurrency']} {lim['obstore_best']['MBps']:.0f} "
        f"MB/s, s3fs cat {lim['s3fs_cat']['MBps']:.0f} MB/s) -> {lim['MBps']:.0f} MB/s = "
        f"{lim['samples_per_s']:.0f} samples/s.",
        "",
        "## PatchStream against the limit and each peer (ratios within this run)",
        "",
        *md_table(gtable),
        "",
        "Each cell: PatchStream patches/s / the other's patches/s, same loader, same epoch "
        "(the limit: / raw-GET samples/s of the Zarr bytes; the dask rows run DL0 only). "
        "`met`: the goal holds in every cell it applies to.",
        "",
        "## Every row",
        "",
        *md_table(table),
        "",
        "PS / this = PatchStream patches/s (same loader, same epoch) / this row's (dask rows: "
        "against PatchStream DL0; limit row: PatchStream DL0 cold / warm / DL"
        f"{w} cold / warm against it); x limit = patches/s / limit samples/s (the Zarr copy "
        "is the smallest: nothing reading these samples from this server can beat "
        "downloading it); x own limit = patches/s / raw-GET samples/s of the reader's own "
        "objects. check = every run's epoch delivered N items (non-padding), all distinct "
        "(xbatcher: distinct tiles), and every patch's WF and GT pixel sums equal those of "
        "the same window in the source TIFFs. Bytes and requests (GET + HEAD) per patch: one "
        "untimed in-process run per reader through a counting HTTP proxy, cold and warm "
        "epoch, metadata included (dask rows: PatchStream's). MB/s fetched = patches/s x "
        "bytes/patch. Every reader delivers "
        f"{d.get('decoded_bytes_per_patch', 0):.0f} B of decoded WF+GT per patch. patches/s = "
        "over the whole epoch, first reads and (cold) the worker start included: at this "
        "size an epoch lasts seconds, so see `1st batch s`. `*` = epoch capped (xbatcher, "
        "see notes). Local cache = what the reader keeps on local disk after the epoch.",
        "",
        "## Where the CPU goes (us of CPU per delivered patch, median of the runs)",
        "",
        *md_table(fmt_cpu_table(result)),
        "",
        "Each epoch's CPU ledger (bench/harness.py `CpuLedger`): the training process (all "
        "its threads), its descendants (DataLoader workers, a LocalCluster), the S3 server, "
        "and the rest of the machine (an external dask cluster, the bench's parent, anything "
        "else running), from /proc; cores busy = the machine's busy CPU time / (cores x the "
        "epoch's wall time). Near 100%, a reader is CPU-bound: it gets faster only by "
        "spending fewer CPU us per patch. The LIMIT row is one pass of the raw GETs alone, "
        "per sample: what moving these bytes through this server costs the same cores; "
        "x the GETs' own = the row's total / the LIMIT row's.",
        "",
        "## Shuffle quality (orders the timed epochs delivered; definitions in "
        "bench/README.md)",
        "",
        *md_table(qtable),
        "",
        "displacement: mean |position in epoch - position in storage order| / items "
        "(0 = storage order, ~0.333 = uniform); same 256-block / same own unit: fraction of "
        "consecutive items from the same 256-sample block (the Zarr shard) / from the same "
        "object of the reader's own format (WDS tar, LitData chunk, MDS shard; n/a for one "
        "file per sample); Spearman(pos, index): rank correlation of position and sample "
        "index (1 = sequential); epoch-to-epoch: Spearman of each sample's position in epoch "
        "0 and epoch 1 (1 = the same order again); coverage: distinct samples / N "
        "(dup = repeated items). Uniform-random rows: the same epoch permuted uniformly. "
        "PatchStream buffer_blocks rows: its order for 20 seeds without reading data "
        "(median; Spearman as the median absolute value, its sign is the seed's).",
        "",
        setup_line(result["setup"]),
        "",
        "## Notes",
        "",
        *(f"- {note}" for note in result["notes"]),
    ]
    return "\n".join(out) + "\n"



def add_notes(result: dict[str, Any]) -> None:
    notes = result["notes"]
    p = result["params"]
    notes.append(
        "How each reader is fed: PatchStream reads the Zarr store cloudmic.ingest wrote "
        "(defaults: zarrs pipeline, buffer_blocks=4, prefetch=2) through stream.loader() "
        "with its defaults (forkserver workers with preloaded modules, batch_size=None for "
        "the DataLoader: the stream assembles whole batches, one array per variable); "
        "+ cache_dir: decoded blocks kept on local disk (.npy), read back in the warm epoch; "
        "via LocalCluster(2): LocalCluster(n_workers=2, threads_per_worker=1, processes=True) "
        "in the training process, PatchStream(..., scheduler=address), DL0; via dask "
        "scheduler+worker: `dask scheduler` and `dask worker --nworkers 1 --nthreads 2` "
        "started as subprocesses, same; both clusters' workers (and the external scheduler, "
        "which unpickles every task too) preload "
        f"{', '.join(PRELOAD)} at start (cluster start and imports are not timed). "
        "cloudmic.shards(wds url, 'train') and WebDataset read "
        "the tars cloudmic.ingest wrote (WebDataset: s3fs opener from the AWS_* environment, "
        ".decode(), random crop in .map; + cache_dir: WebDataset(urls, cache_dir=...), which "
        "downloads each tar to local disk first and reads the local copy in the warm epoch; "
        "cloudmic.shards: crop in a wrapper dataset). LitData and Mosaic were written from "
        f"the same source TIFFs (litdata.optimize chunk_bytes={LITDATA_CHUNK}, one worker, "
        "order kept; MDSWriter with fixed-shape ndarray columns, default 64 MiB shards; both "
        "uncompressed, their default) and crop in the dataset (LitData transform=, Mosaic: a "
        "wrapper around StreamingDataset); xbatcher reads the same Zarr store through "
        "cloudmic.open(url)['train'].ds; tifffile reads the source TIFFs on LOCAL disk "
        "(just written, so in the page cache: an upper bound for a per-file reader; over S3 "
        "each sample would cost two GETs).")
    notes.append(
        f"The peers' DataLoader workers start with `{p['peer_context']}` (fork hangs once "
        "obstore ran in the parent, STACK-NOTES), persistent; PatchStream's with its "
        "loader's default forkserver (the server starts, preloading torch/zarr/zarrs/obstore, "
        "when the loader is made: a cold DL epoch includes that start for PatchStream and "
        "the spawn imports for the peers).")
    notes.append(
        "Shuffling as each reader does it when asked to shuffle: PatchStream default "
        "(shuffle=True, 4-block buffer); cloudmic.shards and WebDataset plain/cache_dir = no "
        "shuffle (their default; the common benchmark setting); LitData "
        "StreamingDataset(shuffle=True) with StreamingDataLoader; Mosaic "
        "StreamingDataset(shuffle=True, batch_size=32), default py1e algorithm; xbatcher "
        "has none of its own: the DataLoader shuffles its 32-sample batches; tifffile: "
        "DataLoader(shuffle=True), a uniform permutation.")
    notes.append(
        f"xbatcher epochs are capped at {p['xbatcher_cap']} patches (full epoch: "
        "4 grid tiles per sample); its shuffle figures use the full epoch order replayed "
        "from the same sampler generator (checked against the delivered prefix). Its "
        "patches are the fixed 64x64 grid tiles, not random crops, and each tile read "
        "fetches the whole 128x128 chunk.")
    tv = {r.get("torchvision") for c in result["configs"] for r in c["runs"]} - {None}
    if "stub" in tv:
        notes.append(
            "mosaicml-streaming imports torchvision at `import streaming` (for streaming.vision "
            "only). The only torchvision wheels reachable here are CUDA builds (0.28.0 fails "
            "against torch 2.13.0+cpu: `operator torchvision::nms does not exist`; 0.29.1 "
            "pulls torch 2.14.1 with the CUDA stack), so torchvision is not installed and the "
            "benchmark's Mosaic processes install a stub module with the two names "
            "streaming.vision imports.")
    if "litdata" in p["readers"]:
        notes.append(
            "LitData 0.2.76 reaches S3 through obstore with fixed client_options lacking "
            "allow_http, which replace obstore's environment config, so any http:// "
            "S3-compatible endpoint fails (`HTTP error: builder error`, BadScheme; same "
            "cause as developmentseed/obstore#159). The benchmark sets "
            "litdata.streaming.downloader._OBSTORE_CLIENT_OPTIONS['allow_http'] = True in "
            "every LitData process (a one-key patch; nothing else changed).")
    pc = result["machine"].get("pip_check") or []
    if any("mosaicml-streaming" in ln for ln in pc):
        notes.append(
            "mosaicml-streaming 0.13.0 requires numpy<2.2.0; cloudmic pins numpy==2.4.6, so it "
            "was installed with --no-deps (the dependencies it imports here are in the bench "
            "extra; its cloud SDKs for Azure/GCS/OCI/SFTP are not needed for S3) and runs "
            "on numpy 2.4.6 here; pip check reports: " + "; ".join(pc))
    for peer, err in result["setup_errors"].items():
        notes.append(f"{peer}: could not be set up: {err[-600:]}")
    for c in result["configs"]:
        for err in c.get("errors", []):
            notes.append(f"{LABELS[c['reader']]} DL{c['workers']} failed: {err[-600:]}")
        for label in ("cold", "warm"):
            m = c.get(label)
            if m and not m["check_ok"]:
                notes.append(f"{LABELS[c['reader']]} DL{c['workers']} {label}: the epoch "
                             f"check failed ({m['check']}); see configs[].runs[].epochs[]."
                             "check in the JSON")
        q = c.get("shuffle") or {}
        if q.get("replayed") and not q.get("replay_ok"):
            notes.append(f"{LABELS[c['reader']]} DL{c['workers']}: the replayed order did not "
                         "match the delivered one; its shuffle figures cover the delivered "
                         "prefix only")
        for r in c["runs"]:
            if r.get("note") and r["note"] not in notes:
                notes.append(f"{LABELS[c['reader']]}: {r['note']}")
    for k, v in (result.get("counting") or {}).items():
        if "error" in v:
            notes.append(f"counting {k} failed: {v['error']}")

