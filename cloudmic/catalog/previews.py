"""Preview images of a published dataset, computed from the store at ingest.

``make_previews(zarr_loc, dataset)`` reads a few chunks of a staged (or published) store and
returns PNG files plus a ``previews.json`` that lists them. Ingest stores them beside the
dataset as ``ROOT/<dataset>.previews/``, so ``cloudmic catalog`` only copies files and never
decodes array chunks.

What each dataset shows (a dataset without its own recipe gets one middle plane of its
first image-like variable):

- biosr: a WF / GT training pair; the 9 signal levels of one test sample with its GT
- dl-smlm: the widefield sum image and the 8x SMLM render of one cell (same field of view)
- sted-fm: one crop per protein class (coordinate ``label`` into ``attrs["classes"]``)
- platelet-em: the middle EM slice of a volume and its semantic labels in the class colours
  of ``ome.image-label.colors``
- deepcad: a low / high SNR frame pair and the mean intensity over time of both paths

Reads are bounded whatever the store's size (the pixel helpers and their limits live in
:mod:`cloudmic.catalog.images`): a plane larger than ``MAX_READ`` pixels a side
is read as a centre crop, pyramids are read at the level that fits ``MAX_SIDE``, and the
movie trace covers at most ``TRACE_FRAMES`` frames of the coarsest level, ``AT_ONCE`` shards
at a time (:mod:`cloudmic.storage.requests`).
Intensities are percentile-scaled to 8 bits; the PNG bytes are a pure function of the
stored values (re-ingesting the same sources rewrites the same previews).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cloudmic.catalog.images import (
    MAX_SIDE,
    PERCENTILES,
    overlay,
    plane_window,
    png,
    read_plane,
    read_planes,
    strip,
    to_uint8,
)
from cloudmic.client.metadata import ArrayMeta, read_store_metadata
from cloudmic.storage.location import Location
from cloudmic.storage.requests import at_once
from cloudmic.storage.root_layout import PREVIEWS_INDEX

log = logging.getLogger(__name__)

PREVIEWS_JSON = PREVIEWS_INDEX  # the name under <dataset>.previews/ (storage.root_layout)
FORMAT = 1
TRACE_FRAMES = 600  # frames of the movie trace (20 s at 30 Hz), AT_ONCE shards at a time
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


@dataclass
class Panel:
    file: str
    title: str
    caption: str
    image: np.ndarray = field(repr=False)  # uint8 (h, w) or (h, w, 3)
    source: str = ""  # which array and index the pixels come from


@dataclass
class Figure:
    title: str
    caption: str
    panels: list[Panel]
    extra: dict[str, Any] = field(default_factory=dict)  # trace, legend


def _num(v: float, digits: int = 6) -> float:
    """A float rounded for JSON (stable text, short files)."""
    return float(f"{float(v):.{digits}g}")


# ---- store access ----
class _Store:
    """The store's consolidated metadata plus lazily opened arrays."""

    def __init__(self, loc: Location) -> None:
        import zarr

        self.loc = loc
        self.root_attrs, self.arrays = read_store_metadata(loc)
        self.root = zarr.open_group(loc.zarr_store(read_only=True), mode="r", zarr_format=3,
                                    use_consolidated=True)

    def array(self, path: str) -> Any:
        return self.root[path]

    def attrs(self, group: str) -> dict[str, Any]:
        return dict(self.root[group].attrs) if group else dict(self.root.attrs)

    def groups(self) -> list[str]:
        return sorted({p.rpartition("/")[0] for p in self.arrays})

    def has(self, path: str) -> bool:
        return path in self.arrays

    def step(self, group: str, dim: str) -> tuple[float, str] | None:
        """(pixel size, units) along ``dim`` from the coordinate ``group/dim``."""
        meta = self.arrays.get(f"{group}/{dim}" if group else dim)
        if meta is None or meta.shape[0] < 2 or meta.dtype == "string":
            return None
        units = str(meta.attrs.get("units", ""))
        if "pixel_size" in meta.attrs:
            return float(meta.attrs["pixel_size"]), units
        v = np.asarray(self.array(meta.path)[:2], dtype=np.float64)
        return float(v[1] - v[0]), units

    def data_vars(self, group: str) -> dict[str, ArrayMeta]:
        coords = set()
        for p, m in self.arrays.items():
            if p.rpartition("/")[0] == group:
                coords.update(str(m.attrs.get("coordinates", "")).split())
        return {p.rpartition("/")[2]: m for p, m in self.arrays.items()
                if p.rpartition("/")[0] == group and m.dims != (p.rpartition("/")[2],)
                and p.rpartition("/")[2] not in coords and m.dtype != "string"}


def _fmt_step(s: tuple[float, str] | None) -> str:
    if s is None:
        return ""
    return f"{_num(s[0], 4):g} {s[1]}".strip()


def _dims(meta: ArrayMeta) -> str:
    return " x ".join(f"{n}" for n in meta.shape[-2:])


# ---- recipes ----
def _biosr(st: _Store) -> list[Figure]:
    figs = []
    pair_group = next((g for g in ("train", "validate", *st.groups())
                       if st.has(f"{g}/wf") and st.has(f"{g}/gt")
                       and len(st.arrays[f"{g}/wf"].shape) == 3), None)
    if pair_group:
        wf, gt = st.arrays[f"{pair_group}/wf"], st.arrays[f"{pair_group}/gt"]
        stem = str(st.array(f"{pair_group}/sample")[0]) if st.has(f"{pair_group}/sample") else "0"
        figs.append(Figure(
            "WF / GT pair",
            f"{pair_group} sample {stem}: widefield input ({_dims(wf)}, {wf.dtype}) and its "
            f"linear-SIM ground truth ({_dims(gt)}, {gt.dtype}), same field of view; each "
            f"scaled to its own {PERCENTILES[0]}-{PERCENTILES[1]} percentiles.",
            [Panel(f"{pair_group}-wf.png", "WF", f"wf[{stem}]",
                   to_uint8(read_plane(st.array(wf.path), (0,))), f"{wf.path}[0]"),
             Panel(f"{pair_group}-gt.png", "GT", f"gt[{stem}]",
                   to_uint8(read_plane(st.array(gt.path), (0,))), f"{gt.path}[0]")]))
    if st.has("test/wf") and len(st.arrays["test/wf"].shape) == 4:
        wf = st.arrays["test/wf"]
        levels = (np.asarray(st.array("test/level")[:]) if st.has("test/level")
                  else np.arange(1, wf.shape[1] + 1))
        photons = np.asarray(st.array("test/photons")[:]) if st.has("test/photons") else None
        stem = str(st.array("test/sample")[0]) if st.has("test/sample") else "0"
        arr = st.array(wf.path)
        tiles = [to_uint8(p) for p in read_planes(arr, [(0, k) for k in range(wf.shape[1])])]
        lv = ", ".join(f"{int(lev)}" + (f" (~{_num(p, 3):g})" if photons is not None else "")
                       for lev, p in zip(levels, photons if photons is not None else levels,
                                         strict=True))
        panels = [Panel("test-levels.png", f"WF, levels {int(levels[0])}-{int(levels[-1])}",
                        f"levels (approx. photons): {lv}", strip(tiles), f"{wf.path}[0, :]")]
        if st.has("test/gt"):
            gt = st.arrays["test/gt"]
            panels.append(Panel("test-gt.png", "GT", f"gt[{stem}]",
                                to_uint8(read_plane(st.array(gt.path), (0,))), f"{gt.path}[0]"))
        figs.append(Figure(
            "Test signal levels",
            f"test sample {stem}: the widefield input at each of its {wf.shape[1]} signal "
            "levels, lowest photon count first, each tile scaled to its own percentiles, and "
            "the ground truth they share.", panels))
    return figs


def _dl_smlm(st: _Store) -> list[Figure]:
    group = next((g for g in st.groups() if st.has(f"{g}/wf") and st.has(f"{g}/sr")), None)
    if group is None:
        return []
    wf, sr = st.arrays[f"{group}/wf"], st.arrays[f"{group}/sr"]
    wf_px = _fmt_step(st.step(group, wf.dims[-1]))
    sr_px = _fmt_step(st.step(group, sr.dims[-1]))
    sr_img = read_plane(st.array(sr.path), ())
    return [Figure(
        "Widefield / super-resolution pair",
        f"{group}: the widefield sum image ({_dims(wf)} px" + (f", {wf_px}" if wf_px else "")
        + f") and the SMLM render of its localizations ({_dims(sr)} px"
        + (f", {sr_px}" if sr_px else "") + ", shown block-averaged to "
        f"{sr_img.shape[0]} x {sr_img.shape[1]}), same field of view.",
        [Panel("wf.png", "WF (sum of frames)", f"{group}/wf",
               to_uint8(read_plane(st.array(wf.path), ())), wf.path),
         Panel("sr.png", "SR (SMLM render)", f"{group}/sr", to_uint8(sr_img), sr.path)])]


def _sted_fm(st: _Store) -> list[Figure]:
    group = next((g for g in st.groups() if st.has(f"{g}/image")
                  and (st.has(f"{g}/label") or st.has(f"{g}/protein"))), None)
    if group is None:
        return []
    attrs = st.attrs(group)
    classes = list(attrs.get("classes", []))
    if st.has(f"{group}/label"):
        label = np.asarray(st.array(f"{group}/label")[:])
        names = {i: c for i, c in enumerate(classes)}
        names[-1] = "unknown"
    else:  # protein names only
        protein = np.asarray(st.array(f"{group}/protein")[:]).astype(str)
        classes = classes or sorted(set(protein.tolist()) - {"unknown"})
        names = {i: c for i, c in enumerate(classes)}
        names[-1] = "unknown"
        lookup = {c: i for i, c in names.items()}
        label = np.array([lookup.get(p, -1) for p in protein])
    img = st.array(f"{group}/image")
    present = [(value, hits) for value in [*range(len(classes)), -1]
               if (hits := np.flatnonzero(label == value)).size]
    crops = read_planes(img, [(int(hits[0]),) for _, hits in present])
    panels = []
    for (value, hits), crop in zip(present, crops, strict=True):
        i = int(hits[0])
        name = names.get(value, str(value))
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or f"class{value}"
        panels.append(Panel(f"class-{value + 1:02d}-{safe}.png", name,
                            f"sample {i} ({hits.size} crop{'s' if hits.size != 1 else ''})",
                            to_uint8(crop), f"{img.path}[{i}]"))
    n = len([p for p in panels if p.title != "unknown"])
    return [Figure(
        "One crop per class",
        f"{group}: the first crop of each of the {n} protein classes present "
        f"({len(classes)} in the class list){', and one unlabelled crop' if -1 in label else ''}"
        "; each scaled to its own percentiles.", panels)]


def _ome(st: _Store, group: str) -> dict[str, Any]:
    return st.attrs(group).get("ome", {}) if group in st.root else {}


def _pick_level(st: _Store, group: str, ms: dict[str, Any]) -> tuple[int, str]:
    paths = [d["path"] for d in ms.get("datasets", [])]
    for k, p in enumerate(paths):
        if max(st.arrays[f"{group}/{p}"].shape[-2:]) <= MAX_SIDE:
            return k, p
    return len(paths) - 1, paths[-1]


def _platelet_em(st: _Store) -> list[Figure]:
    volumes = [g for g in sorted({p.split("/", 1)[0] for p in st.arrays})
               if "multiscales" in _ome(st, g) and "labels" in _ome(st, f"{g}/labels")]
    if not volumes:
        return []

    def size(v: str) -> int:
        path = _ome(st, v)["multiscales"][0]["datasets"][0]["path"]
        return st.arrays[f"{v}/{path}"].shape[0]

    vol = max(volumes, key=lambda v: (size(v), v))  # the largest, then the last name
    ms = _ome(st, vol)["multiscales"][0]
    level, path = _pick_level(st, vol, ms)
    image = st.arrays[f"{vol}/{path}"]
    z = image.shape[0] // 2
    lvl_group = f"{vol}/{path}".rpartition("/")[0]
    em = to_uint8(read_plane(st.array(image.path), (z,)))
    figs_panels = [Panel("em.png", f"EM slice z={z}", f"{image.path}[{z}]", em,
                         f"{image.path}[{z}]")]
    legend = []
    labels_group = f"{vol}/labels/semantic"
    lab_ome = _ome(st, labels_group)
    if lab_ome.get("multiscales"):
        lab_paths = [d["path"] for d in lab_ome["multiscales"][0]["datasets"]]
        lab = st.arrays[f"{labels_group}/{lab_paths[min(level, len(lab_paths) - 1)]}"]
        il = lab_ome.get("image-label", {})
        colors = {int(c["label-value"]): tuple(int(v) for v in c["rgba"])
                  for c in il.get("colors", [])}
        names = {int(p["label-value"]): str(p.get("class", p["label-value"]))
                 for p in il.get("properties", [])}
        if lab.shape == image.shape:
            # block-mean would invent ids: take every f-th pixel instead when shrunk
            ys, xs = plane_window(lab.shape)
            raw = np.asarray(st.array(lab.path)[z, ys, xs])
            f = max(1, -(-max(raw.shape) // MAX_SIDE))
            labels = raw[: raw.shape[0] // f * f: f, : raw.shape[1] // f * f: f]
            figs_panels.append(Panel("em-semantic.png", "semantic labels",
                                     "overlay in the label colours", overlay(em, labels, colors),
                                     f"{lab.path}[{z}]"))
            counts = {int(v): int(n) for v, n in zip(*np.unique(labels, return_counts=True),
                                                      strict=True)}
            legend = [{"value": v, "name": names.get(v, str(v)), "rgba": list(colors[v]),
                       "fraction": _num(counts.get(v, 0) / labels.size, 3)}
                      for v in sorted(colors)]
    zstep = st.step(lvl_group, "z")
    ystep = st.step(lvl_group, image.dims[-1])
    where = f"z = {_num(float(st.array(f'{lvl_group}/z')[z]), 5):g} {zstep[1]}" if (
        zstep and st.has(f"{lvl_group}/z")) else f"z index {z}"
    return [Figure(
        "EM slice with semantic labels",
        f"volume {vol}, slice {z} of {image.shape[0]} ({where}) at pyramid level {level} "
        f"({_dims(image)} px" + (f", {_fmt_step(ystep)} pixels" if ystep else "") + "); "
        "labels blended in the colours of ome.image-label.colors.",
        figs_panels, {"legend": legend} if legend else {})]


def _level(st: _Store, image: str, k: int) -> ArrayMeta:
    """Pyramid level ``k`` of the OME-NGFF image group ``image`` (-1: the coarsest)."""
    return st.arrays[f"{image}/{_ome(st, image)['multiscales'][0]['datasets'][k]['path']}"]


def _frame_means(arr: Any, n: int) -> list[float]:
    """The mean of each of the first ``n`` frames, read a shard at a time, AT_ONCE shards
    at once: memory stays at AT_ONCE shards per trace whatever the movie's length."""
    block = (arr.shards or arr.chunks)[0]

    def means(start: int) -> list[float]:
        frames = np.asarray(arr[start:min(start + block, n)])
        return frames.mean(axis=(1, 2), dtype=np.float64).tolist()

    return [v for part in at_once(means, list(range(0, n, block))) for v in part]


def _deepcad(st: _Store) -> list[Figure]:
    recs = sorted({g.split("/", 1)[0] for g in st.groups()
                   if "multiscales" in _ome(st, g.rsplit("/", 1)[0])
                   and g.split("/")[1:2] == ["low"]})
    if not recs:
        return []
    rec = recs[0]
    paths = [p for p in ("low", "high") if "multiscales" in _ome(st, f"{rec}/{p}")]
    coarse = {p: _level(st, f"{rec}/{p}", -1) for p in paths}
    n = min(TRACE_FRAMES, *(c.shape[0] for c in coarse.values()))
    traces = at_once(lambda p: _frame_means(st.array(coarse[p].path), n), paths)  # both at once
    series = {p: [_num(v) for v in trace] for p, trace in zip(paths, traces, strict=True)}
    t_values: np.ndarray | None = None
    for p in paths:
        tpath = f"{coarse[p].path.rpartition('/')[0]}/t"
        if st.has(tpath):
            t_values = np.asarray(st.array(tpath)[:n], dtype=np.float64)
            break
    if t_values is None:
        t_values = np.arange(n, dtype=np.float64)
        t_units = "frame"
    else:
        t_units = str(st.arrays[f"{rec}/{paths[0]}/0/t"].attrs.get("units", "s")) if st.has(
            f"{rec}/{paths[0]}/0/t") else "s"
    ref = series.get("high") or series[paths[0]]
    frame = int(np.argmax(ref))  # an active moment: the brightest frame of the window
    level0 = {p: _level(st, f"{rec}/{p}", 0) for p in paths}
    frames = at_once(lambda p: read_plane(st.array(level0[p].path), (frame,)), paths)
    panels = [Panel(f"{p}-frame.png", f"{p} SNR, frame {frame}", f"{level0[p].path}[{frame}]",
                    to_uint8(img), f"{level0[p].path}[{frame}]")
              for p, img in zip(paths, frames, strict=True)]
    units = str(st.arrays[f"{rec}/{paths[0]}/0/{paths[0]}"].attrs.get("units", "")) if st.has(
        f"{rec}/{paths[0]}/0/{paths[0]}") else ""
    ystep = _fmt_step(st.step(f"{rec}/{paths[0]}/0", "x"))
    trace = {"t": [_num(v) for v in t_values], "t_units": t_units, "series": series,
             "value_units": units, "frame": frame,
             "note": f"mean over each frame of the coarsest pyramid level, first {n} frames"}
    return [Figure(
        "Low / high SNR frames and intensity over time",
        f"recording {rec}: frame {frame} (t = {_num(t_values[frame], 4):g} {t_units}) of both "
        "detection paths, each scaled to its own percentiles" + (f" ({ystep} pixels)" if ystep
                                                                 else "")
        + f"; below, the mean intensity of every frame over the first {n} frames.",
        panels, {"trace": trace})]


def _generic(st: _Store) -> list[Figure]:
    for group in st.groups():
        for name, meta in sorted(st.data_vars(group).items()):
            if len(meta.shape) >= 2 and np.dtype(meta.dtype).kind in "uif" and min(
                    meta.shape[-2:]) > 1:
                lead = tuple(n // 2 for n in meta.shape[:-2])
                img = to_uint8(read_plane(st.array(meta.path), lead))
                return [Figure(f"{group}/{name}" if group else name,
                               f"{meta.path}{list(lead) if lead else ''}: a middle plane "
                               f"({_dims(meta)} px), scaled to its percentiles.",
                               [Panel(f"{name}.png", name, meta.path, img,
                                      f"{meta.path}{list(lead)}")])]
    return []


RECIPES: dict[str, Callable[[_Store], list[Figure]]] = {
    "biosr": _biosr,
    "dl-smlm": _dl_smlm,
    "sted-fm": _sted_fm,
    "platelet-em": _platelet_em,
    "deepcad": _deepcad,
}


def make_previews(zarr_loc: Location, dataset: str) -> dict[str, bytes]:
    """PNG previews of the store at ``zarr_loc`` plus ``previews.json`` (file name -> bytes).

    ``dataset`` is the manifest name; it picks the recipe (others get a generic plane).
    """
    st = _Store(zarr_loc)
    figures = RECIPES.get(dataset, _generic)(st) or _generic(st)
    files: dict[str, bytes] = {}
    listing = []
    for fig in figures:
        panels = []
        for p in fig.panels:
            if not FILE_NAME.fullmatch(p.file) or p.file in files or p.file == PREVIEWS_JSON:
                raise ValueError(f"preview file name {p.file!r} is not a unique plain name")
            files[p.file] = png(p.image)
            panels.append({"file": p.file, "title": p.title, "caption": p.caption,
                           "source": p.source, "shape": list(p.image.shape)})
        listing.append({"title": fig.title, "caption": fig.caption, "panels": panels,
                        **fig.extra})
    doc = {"format": FORMAT, "dataset": dataset, "figures": listing,
           "scaling": f"{PERCENTILES[0]}-{PERCENTILES[1]} percentiles to 8 bits per panel"}
    files[PREVIEWS_JSON] = json.dumps(doc, indent=1, sort_keys=True).encode()
    return files


def write_previews(zarr_loc: Location, dest: Location, dataset: str) -> bool:
    """Compute previews and write them under ``dest``; False (and a warning) on any failure,
    so that a preview problem never stops a dataset from being published."""
    try:
        files = make_previews(zarr_loc, dataset)
        index = files.pop(PREVIEWS_JSON)
        at_once(lambda kv: dest.child(kv[0]).write_bytes(kv[1]), sorted(files.items()))
        dest.child(PREVIEWS_JSON).write_bytes(index)  # last: it lists the files before it
        return True
    except Exception as exc:
        log.warning("%s: previews failed, publishing without them (%s: %s)", dataset,
                    type(exc).__name__, exc, exc_info=log.isEnabledFor(logging.DEBUG))
        try:
            if dest.exists():
                dest.fs.rm(dest.path, recursive=True)
        except Exception:
            log.warning("could not remove partial previews %s", dest.url)
        return False
