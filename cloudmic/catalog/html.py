"""A static HTML catalog of everything published under a root (``cloudmic catalog``).

``catalog_facts(root)`` gathers, per dataset, what ``cloudmic ls`` and ``cloudmic info`` report
(the same functions: ``cloudmic.client.describe``), the split counts of ``index.json``, the
previews stored at ingest (``<dataset>.previews/previews.json``) and copy-paste snippets.
``build_catalog(root, out_dir)`` writes them as one self-contained ``index.html`` (inline CSS,
no scripts, no external resources) plus the preview PNGs, copied from the store. It reads
metadata and a few coordinate values only, never a chunk of a data array, so rebuilding it
is cheap.
"""

from __future__ import annotations

import fnmatch
import html
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

from cloudmic.client.describe import coordinate_steps, info, list_root
from cloudmic.client.metadata import read_store_metadata
from cloudmic.errors import CloudmicError, StoreNotFoundError
from cloudmic.storage import root_layout as rl
from cloudmic.storage.location import Location

log = logging.getLogger(__name__)

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# PatchStream arguments per dataset when cloudmic.demo has none (or none that fit the store)
STREAMS: dict[str, dict[str, Any]] = {
    "biosr": {"group": "train", "variables": ["wf", "gt"], "patch": {"y": 64, "x": 64}},
    "dl-smlm": {"group": "*/cell*", "variables": ["wf", "sr"], "patch": {"y": 32, "x": 32},
                "patches_per_sample": 16},
    "sted-fm": {"group": "crop", "variables": ["image"], "patch": {"y": 128, "x": 128}},
    "platelet-em": {"group": "*[0-9]/0", "variables": ["image"],
                    "patch": {"z": 4, "y": 64, "x": 64}, "patches_per_sample": 16},
    "deepcad": {"group": "*/low/0", "variables": ["low"], "patch": {"t": 16, "y": 64, "x": 64},
                "patches_per_sample": 8},
}


# ---- facts ----
def _schema_kinds(groups: dict[str, Any]) -> list[dict[str, Any]]:
    """Groups with the same variables (names, dims, dtypes) collapse into one kind: a
    dataset with 120 cells or 27 recordings lists its layout once."""
    kinds: dict[tuple, dict[str, Any]] = {}
    for path, g in groups.items():
        if not g["variables"]:
            continue
        key = tuple(sorted((n, tuple(v["dims"]), v["dtype"]) for n, v in g["variables"].items()))
        k = kinds.setdefault(key, {"groups": [], "levels": set(), "example": path})
        k["groups"].append(path)
        if "ngff_level" in g:
            k["levels"].add(int(g["ngff_level"]))
    out = []
    for k in kinds.values():
        # the example is the first group at the finest level
        example = min(k["groups"], key=lambda p: (groups[p].get("ngff_level", 0), p))
        out.append({"example": example, "groups": sorted(k["groups"]),
                    "levels": sorted(k["levels"]),
                    "variables": groups[example]["variables"],
                    "coordinates": sorted(groups[example]["coordinates"])})
    return sorted(out, key=lambda k: k["example"])


def _fill_pixel_sizes(loc: Location, kinds: list[dict[str, Any]]) -> None:
    """Pixel sizes the attributes do not give, from two values of each example group's
    coordinates (a few tiny reads per kind, never a data chunk)."""
    _, arrays = read_store_metadata(loc)
    for k in kinds:
        dims = sorted({d for v in k["variables"].values() for d in v["dims"]
                       if d not in v.get("pixel_size", {})})
        if not dims:
            continue
        steps = coordinate_steps(loc, k["example"], dims, arrays)
        for v in k["variables"].values():
            sizes = v.setdefault("pixel_size", {})
            for d in v["dims"]:
                if d not in sizes and d in steps:
                    sizes[d] = {**steps[d], "from": "coordinate values"}


def _shrunk(args: dict[str, Any], arrays: dict[str, Any]) -> dict[str, Any] | None:
    """``args`` with the patch shrunk to the smallest reference array it may meet (arrays at
    the reference variable's path under a group the pattern matches), None if there is none."""
    variables = args["variables"]
    ref = next(iter(variables.values())) if isinstance(variables, dict) else variables[0]
    pats = [args["group"]] if isinstance(args["group"], str) else list(args["group"])
    sizes = [dict(zip(m.dims, m.shape, strict=True)) for p, m in arrays.items()
             if p.endswith(f"/{ref}") and any(fnmatch.fnmatchcase(p[:-len(ref) - 1], pat)
                                              for pat in pats)]
    if not sizes:
        return None
    patch = {d: max(1, min([n, *(z[d] for z in sizes if d in z)]))
             for d, n in args["patch"].items()}
    return {**args, "patch": patch}


def stream_args(dataset: str, kinds: list[dict[str, Any]],
                loc: Location) -> tuple[dict[str, Any], int] | None:
    """PatchStream arguments that work for this store, and the epoch length they give: the
    demo's, else cloudmic's table, else the first image-like variable with a 64-pixel
    window. Each candidate is checked by constructing the stream (metadata only)."""
    from cloudmic.client.stream import PatchStream

    candidates = []
    try:
        from cloudmic.demo import DEMO_DATASETS

        if dataset in DEMO_DATASETS:
            candidates.append(DEMO_DATASETS[dataset][1])
    except Exception:  # the demo module is optional here
        log.debug("no demo arguments for %s", dataset, exc_info=True)
    if dataset in STREAMS:
        candidates.append(STREAMS[dataset])
    for k in kinds:
        for name, v in k["variables"].items():
            spatial = [d for d in v["dims"] if d not in ("sample", "level", "loc")][-3:]
            if len(spatial) >= 2 and v["dtype"] != "string" and not name.startswith("loc_"):
                candidates.append({"group": k["example"], "variables": [name],
                                   "patch": dict.fromkeys(spatial[-2:], 64)})
    _, arrays = read_store_metadata(loc)
    for c in candidates:
        fitted = _shrunk(c, arrays)
        if fitted is None:
            continue
        try:
            stream = PatchStream(loc.url, **fitted, storage_options=loc.storage_options)
        except (KeyError, ValueError, TypeError, CloudmicError) as exc:
            log.debug("%s: PatchStream%r does not apply: %s", dataset, fitted, exc)
            continue
        return {**fitted, "patch": dict(stream.patch)}, len(stream)
    return None


def _storage_lines(root: Location) -> list[str]:
    """How the snippets reach the store: never with a credential in the text."""
    if not root.is_s3:
        return []
    endpoint = (root.storage_options.get("client_kwargs") or {}).get("endpoint_url")
    kwargs = (f", \"client_kwargs\": {{\"endpoint_url\": {json.dumps(endpoint)}}}"
              if endpoint else "")
    if root.storage_options.get("anon"):
        return [f"storage_options = {{\"anon\": True{kwargs}}}"]
    return ["# keys from the environment (or your AWS profile); a public bucket: {\"anon\": True}",
            "storage_options = {\"key\": os.environ.get(\"AWS_ACCESS_KEY_ID\"),",
            "                   \"secret\": os.environ.get(\"AWS_SECRET_ACCESS_KEY\")"
            + kwargs.replace(", ", ",\n                   ", 1) + "}"]


def snippets(root: Location, name: str, facts: dict[str, Any]) -> dict[str, str]:
    """Copy-paste Python for one dataset: plain xarray, cloudmic.open, PatchStream,
    cloudmic.shards and plain webdataset. Each runs as it is (the tests run them)."""
    # plain readers get the immutable URL of the current version; cloudmic resolves the
    # stable name itself (ADR 0007)
    zarr_url = facts.get("url") or root.child(rl.zarr_name(name)).url
    version_wds = (facts.get("webdataset_url") or "").removesuffix(f"/{rl.INDEX}")
    stable_zarr = root.child(rl.zarr_name(name)).url
    stable_wds = root.child(rl.wds_name(name)).url
    wds_url = version_wds or stable_wds
    opts = _storage_lines(root)
    kinds = facts.get("kinds", [])
    example = kinds[0]["example"] if kinds else ""
    names = sorted(kinds[0]["variables"]) if kinds else []
    names = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
    out: dict[str, str] = {}
    imp_os = ["import os"] if any("os.environ" in line for line in opts) else []
    out["xarray"] = "\n".join([
        *imp_os, "import xarray as xr", *opts,
        f"tree = xr.open_datatree({json.dumps(zarr_url)}, engine=\"zarr\", consolidated=True"
        + (",\n                        storage_options=storage_options)" if opts else ")"),
        *([f"ds = tree[{json.dumps(example)}].ds   # {names}"] if example else []),
    ])
    out["cloudmic.open"] = "\n".join([
        "import cloudmic",
        f"tree = cloudmic.open({json.dumps(stable_zarr)})"
        + ("   # S3 keys: AWS_* variables or the running embedded store" if root.is_s3 else ""),
        *([f"ds = tree[{json.dumps(example)}].ds   # dask-backed, shard-sized chunks"]
          if example else []),
    ])
    args = facts.get("stream_args")
    if args:
        extra = "".join(f", {k}={v!r}" for k, v in args.items()
                        if k not in ("group", "variables", "patch"))
        out["cloudmic.PatchStream"] = "\n".join([
            "import cloudmic",
            "stream = cloudmic.PatchStream(",
            f"    {json.dumps(stable_zarr)}, group={args['group']!r},",
            f"    variables={args['variables']!r},",
            f"    patch={args['patch']!r}, seed=0{extra})",
            "item = next(iter(stream))   # "
            + ", ".join(f"item[{v!r}]" for v in args["variables"])
            + f": numpy arrays; len(stream) = {facts.get('stream_length', '?')} patches/epoch",
        ])
    splits = facts.get("splits", {})
    split = next(iter(splits), None)
    fields = [f for f in facts.get("wds_fields", []) if f.endswith(".npy")]
    if split:
        first = fields[0].removesuffix(".npy") if fields else "json"
        out["cloudmic.shards"] = "\n".join([
            "import cloudmic",
            f"for rec in cloudmic.shards({json.dumps(stable_wds)}, {json.dumps(split)}):",
            f"    rec[\"__key__\"], rec[{json.dumps(first)}].shape, rec[\"json\"]"
            "   # numpy arrays, never unpickled",
            "    break",
        ])
        load = (f"    arr = np.load(io.BytesIO(rec[{json.dumps(fields[0])}]), "
                "allow_pickle=False)") if fields else "    meta = json.loads(rec[\"json\"])"
        if root.is_s3:
            wds_path = wds_url.removeprefix("s3://")
            out["webdataset"] = "\n".join([
                "import io, json" + (", os" if imp_os else ""),
                "import fsspec, numpy as np, webdataset as wds",
                "from webdataset.tariterators import group_by_keys, tar_file_expander", *opts,
                "fs = fsspec.filesystem(\"s3\", **storage_options)",
                f"index = json.loads(fs.cat({json.dumps(wds_path + '/index.json')}))",
                f"urls = [{json.dumps(wds_url + '/')} + s[\"url\"] for s in "
                f"index[\"splits\"][{json.dumps(split)}][\"shards\"]]",
                "streams = lambda srcs: ({**s, \"stream\": fs.open(s[\"url\"], \"rb\")} "
                "for s in srcs)",
                "# with the AWS CLI instead: wds.WebDataset([f\"pipe:aws s3 cp {u} -\" "
                "for u in urls])",
                "pipeline = wds.DataPipeline(wds.SimpleShardList(urls), streams, "
                "tar_file_expander, group_by_keys)",
                "for rec in pipeline:", load, "    break",
            ])
        else:
            out["webdataset"] = "\n".join([
                "import io, json", "import numpy as np, webdataset as wds",
                f"index = json.load(open({json.dumps(wds_url + '/index.json')}))",
                f"urls = [{json.dumps(wds_url + '/')} + s[\"url\"] for s in "
                f"index[\"splits\"][{json.dumps(split)}][\"shards\"]]",
                "for rec in wds.WebDataset(urls, shardshuffle=False):", load, "    break",
            ])
    return out


def _read_json(loc: Location) -> dict[str, Any] | None:
    try:
        return json.loads(loc.read_bytes())
    except FileNotFoundError:
        return None


def dataset_facts(root: Location, name: str, listed: dict[str, Any]) -> dict[str, Any]:
    """Everything the catalog shows about one dataset (as a plain dict for ``--json``)."""
    facts: dict[str, Any] = {"name": name, **listed, "problems": []}
    zloc = Location(listed["url"], root.storage_options)
    try:
        d = info(zloc.url, **root.storage_options)
    except CloudmicError as exc:
        facts["problems"].append(str(exc))
        d = {"groups": {}}
    for key in ("citation", "homepage", "original", "downloads", "license_url",
                "manifest_matches", "manifest_digest", "run_id", "created", "source"):
        facts[key] = d.get(key)
    facts["title"] = facts.get("title") or d.get("title")
    lic = facts.get("license") or d.get("license")
    # catalog.json is anyone's JSON: a license that is not a string is shown as its JSON
    facts["license"] = lic if lic is None or isinstance(lic, str) else json.dumps(lic,
                                                                                  default=str)
    kinds = _schema_kinds(d["groups"])
    if kinds:
        try:
            _fill_pixel_sizes(zloc, kinds)
        except Exception as exc:  # a missing coordinate chunk must not lose the page
            facts["problems"].append(f"pixel sizes from coordinates: {exc}")
    facts["kinds"] = kinds
    wds_url = (listed.get("webdataset_url") or "").removesuffix(f"/{rl.INDEX}")
    wds_loc = Location(wds_url, root.storage_options) if wds_url else root.child(
        rl.wds_name(name))
    index = _read_json(wds_loc.child(rl.INDEX)) or {"splits": {}}
    if not index["splits"]:
        facts["problems"].append(f"{wds_loc.url}/index.json: missing or empty")
    samples = listed.get("groups", {})
    facts["splits"] = {
        s: {"samples": samples.get(s), "records": v.get("records"),
            "shards": len(v.get("shards", [])),
            "shard_bytes": sum(x.get("bytes", 0) for x in v.get("shards", []))}
        for s, v in index["splits"].items()}
    for s, n in samples.items():  # splits the index does not list (should not happen)
        facts["splits"].setdefault(s, {"samples": n, "records": None, "shards": 0,
                                       "shard_bytes": 0})
    facts["wds_fields"] = list(index.get("fields", {}))
    facts["stream_args"], facts["stream_length"] = None, None
    if kinds:
        found = stream_args(name, kinds, zloc)
        if found:
            facts["stream_args"], facts["stream_length"] = found
    facts["previews"] = None
    # beside the version's store: a catalog entry must not point pictures elsewhere
    expected = zloc.parent.child(rl.previews_name(name), rl.PREVIEWS_INDEX).url
    if listed.get("previews_url") and listed["previews_url"] != expected:
        facts["problems"].append(f"previews listed at {listed['previews_url']}, not at "
                                 f"{expected}: ignored")
        facts["previews_url"] = None
    elif listed.get("previews_url"):
        doc = _read_json(Location(listed["previews_url"], root.storage_options))
        if doc is None:
            facts["problems"].append(f"{listed['previews_url']}: listed but missing")
        else:
            facts["previews"] = _clean_previews(doc)
    else:
        facts["problems"].append("no previews (ingested before previews existed, or they "
                                 "failed: re-run the ingest)")
    facts["snippets"] = snippets(root, name, facts)
    return facts


def _clean_previews(doc: dict[str, Any]) -> dict[str, Any]:
    """previews.json as stored, with every file name checked to be a plain name (the
    store may not be ours: nothing may escape the output folder)."""
    figures = []
    for fig in doc.get("figures", []):
        panels = [p for p in fig.get("panels", []) if isinstance(p, dict)
                  and SAFE_NAME.fullmatch(str(p.get("file", ""))) and
                  str(p["file"]).endswith(".png")]
        figures.append({**fig, "panels": panels})
    return {**doc, "figures": figures}


def catalog_facts(root_url: str, **storage_options: Any) -> dict[str, Any]:
    """The facts of every dataset published under ``root_url`` (its ``catalog.json``)."""
    root = Location.parse(root_url, **storage_options)
    if not root.child(rl.CATALOG).exists():
        raise StoreNotFoundError(f"{root.url}: no catalog.json, nothing is published here "
                                 "(publish with: cloudmic ingest DATASET --source SRC --dest "
                                 f"{root.url})")
    catalog = _read_json(root.child(rl.CATALOG)) or {}
    listing = list_root(root.url, **root.storage_options)
    datasets = {}
    for name, listed in listing["datasets"].items():
        if not SAFE_NAME.fullmatch(name):
            log.warning("%s: skipping dataset with an unusable name %r", root.url, name)
            continue
        datasets[name] = dataset_facts(root, name, listed)
    return {"root": root.url, "updated": catalog.get("updated"), "datasets": datasets}


# ---- HTML ----
CSS = """
:root { --fg: #1d2330; --muted: #5b6475; --line: #d9dee7; --bg: #f6f7f9; --accent: #1f5fbf; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: var(--fg); background: var(--bg); }
header, main { max-width: 1180px; margin: 0 auto; padding: 0 20px; }
header { padding-top: 28px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 21px; margin: 0 0 2px; }
h3 { font-size: 15px; margin: 22px 0 8px; text-transform: uppercase; letter-spacing: .04em;
     color: var(--muted); }
a { color: var(--accent); }
.muted { color: var(--muted); }
section.dataset { background: #fff; border: 1px solid var(--line); border-radius: 10px;
                  padding: 20px 24px; margin: 24px 0; }
table { border-collapse: collapse; margin: 4px 0 8px; font-size: 14px; }
th, td { text-align: left; padding: 4px 12px 4px 0; border-bottom: 1px solid var(--line);
         vertical-align: top; }
th { color: var(--muted); font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px; margin: 12px 0; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; }
ol.cite { margin: 0; padding-left: 20px; }
.figures { display: flex; flex-direction: column; gap: 18px; }
figure { margin: 0; }
.panels { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
.panel { margin: 0; }
.panel img { display: block; background: #000; border: 1px solid var(--line);
             max-width: 100%; height: auto; }
.panel img.up { image-rendering: pixelated; }
.panel figcaption { font-size: 13px; }
figure > figcaption { font-size: 13px; color: var(--muted); margin-top: 6px; max-width: 900px; }
.legend { display: flex; flex-wrap: wrap; gap: 6px 14px; font-size: 13px; margin-top: 6px; }
.swatch { display: inline-block; width: 12px; height: 12px; border-radius: 2px;
          vertical-align: -1px; margin-right: 4px; border: 1px solid #0003; }
svg.trace { background: #fff; border: 1px solid var(--line); max-width: 100%; height: auto; }
pre { background: #0f1623; color: #e6edf7; padding: 12px 14px; border-radius: 8px;
      overflow-x: auto; font: 13px/1.45 ui-monospace, "SFMono-Regular", Menlo, monospace;
      margin: 4px 0 12px; }
.snippet h4 { margin: 10px 0 0; font-size: 14px; }
.problems { color: #9a3412; }
code { font: 13px ui-monospace, "SFMono-Regular", Menlo, monospace; }
nav table td, nav table th { padding-right: 18px; }
footer { max-width: 1180px; margin: 0 auto; padding: 12px 20px 40px; font-size: 13px;
         color: var(--muted); }
"""

_E = html.escape


def human(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"


def _link(url: str | None, text: str | None = None) -> str:
    if not url:
        return ""
    t = _E(text or url)
    if re.match(r"https?://", url):
        return f'<a href="{_E(url)}">{t}</a>'
    return t


def _anchor(name: str) -> str:
    return "ds-" + re.sub(r"[^A-Za-z0-9_-]", "-", name)


def _fmt_size(p: dict[str, Any]) -> str:
    v = p.get("value")
    if isinstance(v, (int, float)):
        v = f"{float(v):.4g}"
    return f"{v} {p.get('units') or ''}".strip()


def _facts_html(d: dict[str, Any]) -> str:
    rows = []
    lic = _E(d.get("license") or "not stated")
    if d.get("license_url"):
        lic += f" ({_link(d['license_url'], 'terms')})"
    rows.append(("License", lic))
    cites = []
    for c in d.get("citation") or []:
        text = _E(str(c.get("text", "")))
        if c.get("doi"):
            doi = str(c["doi"])
            text += f' doi:{_link("https://doi.org/" + doi, doi)}'
        cites.append(f"<li>{text}</li>")
    rows.append(("Citation", f'<ol class="cite">{"".join(cites)}</ol>' if cites
                 else '<span class="muted">none recorded</span>'))
    src = []
    if d.get("homepage"):
        src.append(f"homepage {_link(d['homepage'])}")
    if d.get("original"):
        src.append(f"original {_link(d['original'])}")
    downloads = d.get("downloads") or []
    if downloads:
        items = "".join(f"<li>{_link(u)}</li>" for u in downloads)
        src.append(f"<details><summary>{len(downloads)} download"
                   f"{'s' if len(downloads) != 1 else ''}</summary><ul>{items}</ul></details>")
    if d.get("manifest_matches") is False:
        src.append('<span class="muted">(links from the current manifest, which differs from '
                   'the one that built this store)</span>')
    rows.append(("Source", "<br>".join(src) or '<span class="muted">not recorded</span>'))
    rows.append(("Stored at", f"<code>{_E(d['url'])}</code><br><code>"
                 f"{_E(d.get('webdataset_url') or '')}</code>"))
    rows.append(("Published", _E(f"{d.get('published') or '?'} (run {d.get('run_id') or '?'},"
                                 f" manifest {d.get('manifest_digest') or '?'})")))
    return '<dl class="facts">' + "".join(f"<dt>{_E(k)}</dt><dd>{v}</dd>"
                                          for k, v in rows) + "</dl>"


def _sizes_html(d: dict[str, Any]) -> str:
    src = d.get("source") or {}
    cells = [("source", human(d.get("source_bytes")), f"{src.get('files', '?')} files"),
             ("arrays (uncompressed)", human(d.get("array_bytes")), ""),
             ("Zarr store", human(d.get("zarr_bytes")),
              f"compression {d.get('compression_ratio')}x"),
             ("WebDataset shards", human(d.get("wds_bytes")), ""),
             ("stored in total", human(d.get("stored_bytes")), "Zarr + WebDataset")]
    body = "".join(f'<tr><td>{_E(a)}</td><td class="num">{_E(b)}</td>'
                   f'<td class="muted">{_E(c)}</td></tr>' for a, b, c in cells)
    return f"<table>{body}</table>"


def _splits_html(d: dict[str, Any]) -> str:
    rows = "".join(
        f'<tr><td>{_E(s)}</td><td class="num">{_E(str(v.get("samples", "")))}</td>'
        f'<td class="num">{_E(str(v.get("records", "")))}</td>'
        f'<td class="num">{v.get("shards", 0)}</td>'
        f'<td class="num">{_E(human(v.get("shard_bytes")))}</td></tr>'
        for s, v in d.get("splits", {}).items())
    return ('<table><tr><th>split</th><th class="num">samples (Zarr)</th>'
            '<th class="num">records (WebDataset)</th><th class="num">shards</th>'
            f'<th class="num">shard bytes</th></tr>{rows}</table>')


def _kinds_html(d: dict[str, Any]) -> str:
    out = []
    for k in d.get("kinds", []):
        groups = k["groups"]
        label = ", ".join(groups[:3]) + (f" and {len(groups) - 3} more" if len(groups) > 3
                                         else "")
        levels = (f"; OME-NGFF levels {', '.join(map(str, k['levels']))}" if len(k["levels"]) > 1
                  else "")
        out.append(f'<p><b>{_E(k["example"])}</b> <span class="muted">'
                   f'({len(groups)} group{"s" if len(groups) != 1 else ""}: {_E(label)}'
                   f'{_E(levels)}; shapes of {_E(k["example"])})</span></p>')
        rows = []
        variables = k["variables"]
        loc_cols = sorted(n for n in variables if n.startswith("loc_"))
        for name, v in variables.items():
            if name in loc_cols[1:]:
                continue
            dims = ", ".join(f"{dim}: {n}" for dim, n in zip(v["dims"], v["shape"], strict=True))
            px = ", ".join(f"{dim} {_fmt_size(p)}" for dim, p in v.get("pixel_size", {}).items()
                           if dim in v["dims"])
            units, desc, dtype = v.get("units") or "", v.get("long_name") or "", v["dtype"]
            if name in loc_cols:  # a table: one row for all its columns
                name = f"{', '.join(loc_cols[:3])}, ... ({len(loc_cols)} columns)"
                dtype = ", ".join(sorted({variables[c]["dtype"] for c in loc_cols}))
                units, desc = "", "table columns along loc (one row per localization)"
            rows.append(f"<tr><td><code>{_E(name)}</code></td><td><code>({_E(dims)})</code></td>"
                        f"<td>{_E(dtype)}</td><td>{_E(px) or '<span class=muted>-</span>'}"
                        f"</td><td>{_E(str(units))}</td>"
                        f"<td class=\"muted\">{_E(str(desc))}</td></tr>")
        coords = ", ".join(k["coordinates"])
        out.append("<table><tr><th>variable</th><th>dims</th><th>dtype</th><th>pixel size</th>"
                   f"<th>units</th><th>description</th></tr>{''.join(rows)}</table>"
                   f'<p class="muted">coordinates: <code>{_E(coords)}</code></p>')
    return "".join(out) or '<p class="muted">no variables found</p>'


def _trace_svg(trace: dict[str, Any], width: int = 720, height: int = 180) -> str:
    t = [float(v) for v in trace.get("t", [])]
    series = {str(k): [float(x) for x in v] for k, v in trace.get("series", {}).items()}
    if len(t) < 2 or not series:
        return ""
    left, right, top, bottom = 48, 12, 12, 34
    w, h = width - left - right, height - top - bottom
    t0, t1 = t[0], t[-1]
    colors = {"low": "#7a8599", "high": "#c2410c"}
    parts = [f'<svg class="trace" role="img" viewBox="0 0 {width} {height}" width="{width}" '
             f'height="{height}" xmlns="http://www.w3.org/2000/svg">',
             f"<title>{_E('mean intensity over time: ' + ', '.join(series))}</title>",
             f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="#d9dee7"/>']
    legend = []
    for i, (name, ys) in enumerate(series.items()):
        n = min(len(ys), len(t))
        lo, hi = min(ys[:n]), max(ys[:n])
        span = (hi - lo) or 1.0
        pts = " ".join(f"{left + (t[j] - t0) / ((t1 - t0) or 1) * w:.1f},"
                       f"{top + h - (ys[j] - lo) / span * h:.1f}" for j in range(n))
        color = colors.get(name, ["#1f5fbf", "#15803d", "#7c3aed"][i % 3])
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" '
                     f'points="{pts}"/>')
        legend.append((name, color, lo, hi))
    frame = trace.get("frame")
    if isinstance(frame, int) and 0 <= frame < len(t):
        x = left + (t[frame] - t0) / ((t1 - t0) or 1) * w
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + h}" '
                     'stroke="#1d2330" stroke-dasharray="3 3"/>')
    unit = _E(str(trace.get("t_units", "")))
    parts.append(f'<text x="{left}" y="{height - 10}" font-size="12" fill="#5b6475">'
                 f"{t0:.3g} {unit}</text>")
    parts.append(f'<text x="{left + w}" y="{height - 10}" font-size="12" fill="#5b6475" '
                 f'text-anchor="end">{t1:.3g} {unit}</text>')
    parts.append(f'<text x="12" y="{top + h / 2:.0f}" font-size="12" fill="#5b6475" '
                 f'transform="rotate(-90 12 {top + h / 2:.0f})" text-anchor="middle">'
                 "mean (min-max)</text>")
    parts.append("</svg>")
    vu = _E(str(trace.get("value_units", "")))
    items = "".join(f'<span><span class="swatch" style="background:{c}"></span>{_E(n)}: '
                    f"{lo:.4g} to {hi:.4g} {vu}</span>" for n, c, lo, hi in legend)
    note = _E(str(trace.get("note", "")))
    return (f"{''.join(parts)}<div class=\"legend\">{items}"
            f'<span class="muted">each line scaled to its own min-max; dashed: the frame shown;'
            f" {note}</span></div>")


def _legend_html(legend: list[dict[str, Any]]) -> str:
    items = []
    for e in legend:
        rgba = [max(0, min(255, int(c))) for c in e.get("rgba", [0, 0, 0, 0])][:4]
        if len(rgba) < 4:
            rgba += [255] * (4 - len(rgba))
        frac = e.get("fraction")
        share = f" ({float(frac) * 100:.1f}%)" if isinstance(frac, (int, float)) else ""
        items.append(f'<span><span class="swatch" style="background:rgba({rgba[0]},{rgba[1]},'
                     f'{rgba[2]},{rgba[3] / 255:.2f})"></span>{_E(str(e.get("value")))} '
                     f'{_E(str(e.get("name", "")))}{_E(share)}</span>')
    return f'<div class="legend">{"".join(items)}</div>'


def _display_size(shape: list[int], many: bool) -> tuple[int, int]:
    """CSS size of a panel: a gallery tile fits 150 px; a single image is shown at least
    256 px (small images are enlarged, pixelated) and at most 512 px, a strip up to 1100."""
    h, w = max(1, int(shape[0])), max(1, int(shape[1]))
    if many:
        f = 150 / max(h, w)
    elif w > 3 * h:  # a strip of tiles
        f = min(max(1, 128 // h), 1100 / w)
    else:
        f = min(max(1, 256 // max(h, w)), 512 / max(h, w)) if max(h, w) < 256 else min(
            1.0, 512 / max(h, w))
    return max(1, round(w * f)), max(1, round(h * f))


def _previews_html(name: str, d: dict[str, Any]) -> str:
    doc = d.get("previews")
    if not doc:
        return '<p class="muted">no previews stored with this dataset</p>'
    out = []
    for fig in doc.get("figures", []):
        try:
            out.append(_figure_html(name, fig))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a damaged file
            out.append(f'<p class="problems">preview {_E(str(fig.get("title", "")))} '
                       f"cannot be shown: {_E(str(exc))}</p>")
    scaling = doc.get("scaling")
    note = f'<p class="muted">Intensities: {_E(str(scaling))}.</p>' if scaling else ""
    return f'<div class="figures">{"".join(out)}</div>{note}'


def _figure_html(name: str, fig: dict[str, Any]) -> str:
    panels = fig.get("panels", [])
    many = len(panels) > 4  # a gallery (one crop per class): small tiles
    imgs = []
    for p in panels:
        shape = p.get("shape", [128, 128])
        w, h = _display_size(shape, many)
        enlarged = w > int(shape[1])
        src = f"{name}/{p['file']}"
        alt = f"{p.get('title', '')}: {p.get('caption', '')}"
        cls = ' class="up"' if enlarged else ""
        imgs.append(f'<figure class="panel"><img src="{_E(src)}" width="{w}" height="{h}"'
                    f'{cls} alt="{_E(alt)}" '
                    f'title="{_E(str(p.get("source", "")))}">'
                    f'<figcaption style="max-width:{max(w, 140)}px">'
                    f'<b>{_E(str(p.get("title", "")))}</b> '
                    f'<span class="muted">{_E(str(p.get("caption", "")))}</span>'
                    "</figcaption></figure>")
    extra = ""
    if fig.get("legend"):
        extra += _legend_html(fig["legend"])
    if fig.get("trace"):
        extra += _trace_svg(fig["trace"])
    return (f'<figure><h4>{_E(str(fig.get("title", "")))}</h4>'
            f'<div class="panels">{"".join(imgs)}</div>'
            f"{extra}<figcaption>{_E(str(fig.get('caption', '')))}</figcaption></figure>")


SNIPPET_TITLES = {
    "xarray": "Open with plain xarray (no cloudmic needed)",
    "cloudmic.open": "Open with cloudmic (dask chunks the size of the stored shards)",
    "cloudmic.PatchStream": "Stream aligned training patches",
    "cloudmic.shards": "Read the WebDataset shards with cloudmic",
    "webdataset": "Read the shards with plain webdataset",
}


def _snippets_html(d: dict[str, Any]) -> str:
    return "".join(f'<div class="snippet"><h4>{_E(SNIPPET_TITLES.get(k, k))}</h4>'
                   f"<pre><code>{_E(code)}</code></pre></div>"
                   for k, code in d.get("snippets", {}).items())


def _dataset_html(name: str, d: dict[str, Any]) -> str:
    problems = "".join(f"<li>{_E(p)}</li>" for p in d.get("problems", []))
    return (f'<section class="dataset" id="{_anchor(name)}">'
            f'<h2>{_E(d.get("title") or name)}</h2>'
            f'<div class="muted"><code>{_E(name)}</code></div>'
            f"{_facts_html(d)}"
            f"<h3>Sizes</h3>{_sizes_html(d)}"
            f"<h3>Splits</h3>{_splits_html(d)}"
            f"<h3>Variables</h3>{_kinds_html(d)}"
            f"<h3>Previews</h3>{_previews_html(name, d)}"
            f"<h3>Use it</h3>{_snippets_html(d)}"
            + (f'<h3>Notes</h3><ul class="problems">{problems}</ul>' if problems else "")
            + "</section>")


def render_html(facts: dict[str, Any]) -> str:
    """The catalog page for ``catalog_facts(...)``: one self-contained HTML document."""
    datasets = facts["datasets"]
    rows = "".join(
        f'<tr><td><a href="#{_anchor(n)}">{_E(n)}</a></td><td>{_E(d.get("title") or "")}</td>'
        f'<td class="num">{sum(v for v in (d.get("groups") or {}).values())}</td>'
        f'<td class="num">{len(d.get("splits") or {})}</td>'
        f'<td class="num">{_E(human(d.get("source_bytes")))}</td>'
        f'<td class="num">{_E(human(d.get("stored_bytes")))}</td>'
        f'<td class="num">{_E(str(d.get("compression_ratio")))}x</td>'
        f'<td>{_E(d.get("license") or "")}</td></tr>'
        for n, d in datasets.items())
    toc = ('<nav><table><tr><th>dataset</th><th>title</th><th class="num">samples</th>'
           '<th class="num">splits</th><th class="num">source</th><th class="num">stored</th>'
           f'<th class="num">compression</th><th>license</th></tr>{rows}</table></nav>')
    body = "".join(_dataset_html(n, d) for n, d in datasets.items())
    root = _E(facts["root"])
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>cloudmic catalog: {root}</title><style>{CSS}</style></head><body>"
        f"<header><h1>Microscopy datasets at <code>{root}</code></h1>"
        f'<p class="muted">{len(datasets)} dataset{"s" if len(datasets) != 1 else ""} '
        f"published as Zarr v3 stores and WebDataset shards; catalog updated "
        f"{_E(str(facts.get('updated') or '?'))}. Each store opens with plain xarray; "
        "previews were computed from the stores at ingest.</p>"
        f"{toc}</header><main>{body}</main>"
        "<footer>Made by <code>cloudmic catalog</code> from the root's catalog.json, the "
        "stores' metadata and the previews stored with each dataset.</footer>"
        "</body></html>\n")


def build_catalog(root_url: str, out_dir: Path, **storage_options: Any) -> Path:
    """Write ``out_dir/index.html`` and the preview PNGs of every dataset under ``root_url``
    (copied from ``<dataset>.previews/``); returns the path of ``index.html``."""
    facts = catalog_facts(root_url, **storage_options)
    return write_catalog(facts, out_dir, **storage_options)


def write_catalog(facts: dict[str, Any], out_dir: Path, **storage_options: Any) -> Path:
    """Write the page of already gathered ``facts`` (see ``build_catalog``)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise CloudmicError(f"{out_dir}: exists and is not a folder; pass a folder for --html")
    out_dir.mkdir(parents=True, exist_ok=True)
    root = Location.parse(facts["root"], **storage_options)
    for name, d in facts["datasets"].items():
        target = out_dir / name
        if target.is_dir():
            shutil.rmtree(target)  # our own folder from an earlier build
        doc = d.get("previews")
        if not doc or not d.get("previews_url"):
            continue
        pdir = Location(d["previews_url"], root.storage_options).url.rsplit("/", 1)[0]
        for fig in doc["figures"]:
            kept = []
            for p in fig["panels"]:
                try:
                    data = Location(pdir, root.storage_options).child(p["file"]).read_bytes()
                except FileNotFoundError:
                    d["problems"].append(f"preview {p['file']} is listed but missing")
                    continue
                if not data.startswith(PNG_MAGIC):
                    d["problems"].append(f"preview {p['file']} is not a PNG; skipped")
                    continue
                target.mkdir(parents=True, exist_ok=True)
                (target / p["file"]).write_bytes(data)
                kept.append(p)
            fig["panels"] = kept
    index = out_dir / "index.html"
    tmp = out_dir / ".index.html.tmp"
    tmp.write_text(render_html(facts), encoding="utf-8")
    tmp.replace(index)
    return index
