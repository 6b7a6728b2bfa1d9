"""bench_peers' measurement of one reader: its epochs timed, every delivered patch checked
against the source images (count, distinct samples, exact pixel sums), and the quality of
the order it delivered (shuffle metrics; PatchStream's order simulated without reading)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from harness import MB, EpochClock, median
from stream_fixture import PATCH


def _row_sums(a: np.ndarray) -> np.ndarray:
    """Per-item pixel sums, in float64: the same code for delivered and expected patches
    (same shape, same layout, same summation order), so equal pixels give equal sums."""
    a = np.ascontiguousarray(a)
    return a.reshape(len(a), -1).astype(np.float64).sum(axis=1)


def _column(batch: dict[str, Any], key: str, n: int, dtype: Any) -> np.ndarray:
    v = np.asarray(batch[key], dtype=dtype).ravel()
    return np.broadcast_to(v, (n,)) if v.size == 1 and n != 1 else v


def batch_items(batch: dict[str, Any]) -> dict[str, np.ndarray]:
    """Every reader's batch as arrays: wf, gt, index, y, x, pad (numpy or torch inside)."""
    wf, gt = np.asarray(batch["wf"]), np.asarray(batch["gt"])
    n = len(wf)
    origin = batch.get("origin")
    src = origin if isinstance(origin, dict) else batch  # PatchStream: origin {y, x}
    return {"wf": wf, "gt": gt, "index": _column(batch, "index", n, np.int64),
            "y": _column(src, "y", n, np.int64), "x": _column(src, "x", n, np.int64),
            "pad": (_column(batch, "pad", n, bool) if "pad" in batch
                    else np.zeros(n, bool))}


def run_epochs(rd: dict[str, Any], epochs: int, cache: Path | None = None,
               on_epoch: Any = None) -> list[dict[str, Any]]:
    """Iterate the reader's loader ``epochs`` times: timing, sizes, the delivered order and,
    per delivered item (padding left out), its sample, window corner and pixel sums."""
    out = []
    for epoch in range(epochs):
        clock = EpochClock(epoch)
        pads = 0
        cols: dict[str, list[np.ndarray]] = {k: [] for k in ("index", "y", "x", "wf", "gt")}
        for batch in rd["loader"]:
            it = batch_items(batch)
            keep = ~it["pad"]
            pads += int((~keep).sum())
            for k in ("index", "y", "x"):
                cols[k].append(it[k][keep])
            cols["wf"].append(_row_sums(it["wf"])[keep])
            cols["gt"].append(_row_sums(it["gt"])[keep])
            clock.batch(int(keep.sum()), int(it["wf"][keep].nbytes + it["gt"][keep].nbytes))
            if rd["cap"] and clock.samples >= rd["cap"]:
                break
        rec = clock.record(pads=pads, truncated=bool(rd["cap"] and clock.samples >= rd["cap"]))
        items = {k: np.concatenate(v) if v else np.zeros(0) for k, v in cols.items()}
        rec["order"] = items["index"].astype(np.int64).tolist()
        rec["_items"] = items
        if rd["order"] is not None:  # the full epoch order, replayed (capped reader)
            full = rd["order"](epoch)
            rec["order_replay_ok"] = full[:len(rec["order"])] == rec["order"]
            if rec["order_replay_ok"]:
                rec["order"] = full
        if cache is not None:
            rec["cache_mb"] = round(_du(cache) / MB, 1)
        if on_epoch is not None:
            on_epoch(rec)
        out.append(rec)
    return out


def check_epoch(items: dict[str, np.ndarray], truth: Path, n_total: int,
                expect: int | None, tiles: bool) -> dict[str, Any]:
    """The epoch's delivered items against the source: count (``expect``; None when the
    epoch was capped), unique samples (or sample tiles), and each item's WF and GT pixel
    sums against the same window of the source images (exact: same summation)."""
    wf_src = np.load(truth / "wf.npy", mmap_mode="r")
    gt_src = np.load(truth / "gt.npy", mmap_mode="r")
    p, s = PATCH, gt_src.shape[-1] // wf_src.shape[-1]
    idx, ys, xs = (items[k].astype(np.int64) for k in ("index", "y", "x"))
    keys = np.stack([idx, ys, xs], 1) if tiles else idx[:, None]
    unique = len(np.unique(keys, axis=0)) if len(idx) else 0
    bad_index = int(((idx < 0) | (idx >= n_total)).sum())
    mismatch, wf_total, gt_total, wf_want, gt_want = 0, 0.0, 0.0, 0.0, 0.0
    ok_idx = (idx >= 0) & (idx < n_total)
    for lo in range(0, len(idx), 512):
        sl = slice(lo, lo + 512)
        i, y, x, ok = idx[sl], ys[sl], xs[sl], ok_idx[sl]
        w = np.stack([wf_src[a, b:b + p, c:c + p] if k else np.zeros((p, p), wf_src.dtype)
                      for a, b, c, k in zip(i, y, x, ok, strict=True)])
        g = np.stack([gt_src[a, s * b:s * (b + p), s * c:s * (c + p)] if k
                      else np.zeros((s * p, s * p), gt_src.dtype)
                      for a, b, c, k in zip(i, y, x, ok, strict=True)])
        ew, eg = _row_sums(w), _row_sums(g)
        mismatch += int(((ew != items["wf"][sl]) | (eg != items["gt"][sl])).sum())
        wf_total += float(items["wf"][sl].sum())
        gt_total += float(items["gt"][sl].sum())
        wf_want += float(ew.sum())
        gt_want += float(eg.sum())
    out = {"items": len(idx), "expected": expect, "unique": unique,
           "duplicates": len(idx) - unique, "bad_index": bad_index,
           "sum_mismatches": mismatch, "wf_sum": wf_total, "gt_sum": gt_total,
           "wf_sum_expected": wf_want, "gt_sum_expected": gt_want}
    out["ok"] = bool((expect is None or len(idx) == expect) and unique == len(idx)
                     and not bad_index and not mismatch and len(idx) > 0)
    return out


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) \
        if Path(path).exists() else 0


def simulate_patchstream(spec: dict[str, Any]) -> dict[str, Any]:
    """PatchStream's order for many seeds and several ``buffer_blocks``, without reading
    data: the order is a pure function of (seed, epoch), so the block reader's ``read`` is
    replaced by one that builds the ``Cut`` of each ``Take`` (positions and sample indices,
    no arrays) without I/O; plan, shares, shuffle pool and batching run as they are.
    In-process (DL0) order (metadata is still read once per stream)."""
    import dataclasses

    import cloudmic
    from cloudmic.client.stream.reader import Cut

    out: dict[str, Any] = {}
    for bb in spec["buffer_blocks"]:
        metrics, repeats = [], []
        for seed in range(spec["seeds"]):
            ds = cloudmic.PatchStream(spec["zarr_url"], "train", ["wf", "gt"],
                                      {"y": PATCH, "x": PATCH}, seed=seed, buffer_blocks=bb)
            rspec = ds.reader.spec

            def fake_read(take: Any, epoch: int, rspec: Any = rspec) -> Cut:
                block = rspec.blocks[take.block]
                j = take.rows // rspec.per_sample[block.group]
                values = {"group": "train", "arrays": {},
                          "position": rspec.offsets[take.block] + take.rows,
                          "pad": take.pad.copy(), "index": (block.start + j).astype(np.int64),
                          "origin": np.zeros((len(j), len(rspec.dims)), np.int64),
                          "dims": rspec.dims, "keys": [""] * len(j), "coords": {}}
                return Cut(**{f.name: values[f.name] for f in dataclasses.fields(Cut)})

            ds.reader.read = fake_read  # nothing is fetched: no block is read
            orders = []
            for epoch in (0, 1):
                ds.set_epoch(epoch)
                orders.append([it["index"] for it in ds if not it["pad"]])
            metrics += [shuffle_metrics(o, spec["units"], spec["n"]) for o in orders]
            repeats.append(epoch_repeat(*orders))
        out[str(bb)] = {k: median([m[k] for m in metrics if m.get(k) is not None])
                        for k in ("displacement", "spearman", "block256", "own_unit",
                                  "coverage")}
        out[str(bb)].update({"items": metrics[0]["items"], "epoch_repeat": median(repeats),
                             "seeds": spec["seeds"],
                             "spearman_abs_median": median([abs(m["spearman"]) for m in metrics]),
                             "spearman_abs_max": max(abs(m["spearman"]) for m in metrics)})
    return out


# --------------------------------------------------------------------------- shuffle quality
def shuffle_metrics(order: list[int], units: dict[str, np.ndarray | int | None],
                    n_total: int) -> dict[str, Any]:
    """Quality of one epoch's delivered order (sample indices, storage order = index)."""
    s = np.asarray(order, dtype=np.int64)
    L = len(s)
    if L < 2:
        return {"items": L}
    pos = np.arange(L)
    rank = np.empty(L, dtype=np.int64)
    rank[np.argsort(s, kind="stable")] = pos  # the item's place in storage order
    out: dict[str, Any] = {"items": L,
                           "displacement": float(np.abs(pos - rank).mean() / L),
                           "spearman": float(np.corrcoef(pos, rank)[0, 1]),
                           "coverage": len(np.unique(s)) / n_total,
                           "duplicates": int(L - len(np.unique(s)))}
    for name, unit in units.items():
        if unit is None:
            out[name] = None
            continue
        u = s // unit if isinstance(unit, int) else np.searchsorted(unit, s, side="right")
        out[name] = float(np.mean(u[1:] == u[:-1]))
    return out


def epoch_repeat(a: list[int], b: list[int]) -> float | None:
    """Spearman correlation of each sample's first position in two epochs (1 = same order
    again, ~0 = a fresh permutation); over the samples both epochs delivered."""
    fa: dict[int, int] = {}
    fb: dict[int, int] = {}
    for p, i in enumerate(a):
        fa.setdefault(i, p)
    for p, i in enumerate(b):
        fb.setdefault(i, p)
    common = sorted(set(fa) & set(fb))
    if len(common) < 3:
        return None
    x = np.argsort(np.argsort([fa[i] for i in common]))
    y = np.argsort(np.argsort([fb[i] for i in common]))
    return float(np.corrcoef(x, y)[0, 1])

