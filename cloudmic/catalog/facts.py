"""What the catalog page shows, gathered from a root: ``catalog_facts(root)``.

Per dataset: what ``cloudmic ls`` and ``cloudmic info`` report (the same functions:
``cloudmic.client.describe``), the split counts of ``index.json``, the provenance notes of
its catalog entry, the previews stored at ingest (``<dataset>.previews/previews.json``),
PatchStream arguments that work on the store and copy-paste snippets. It reads metadata and
a few coordinate values only, never a chunk of a data array, so rebuilding it is cheap.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from cloudmic.catalog.snippets import snippets
from cloudmic.catalog.streams import stream_args
from cloudmic.client.describe import coordinate_steps, info, list_root
from cloudmic.client.metadata import read_store_metadata
from cloudmic.errors import CloudmicError, StoreNotFoundError
from cloudmic.storage import root_layout as rl
from cloudmic.storage.location import Location

log = logging.getLogger(__name__)

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


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


def _notes(*candidates: Any) -> dict[str, str]:
    """Provenance notes ``{manifest field path: "assumed: ..."}``: the first non-empty mapping
    of the candidates (the catalog entry, then the store's attributes; stores ingested before
    notes existed have none). Anyone's JSON: a label that is not a string is shown as JSON."""
    for notes in candidates:
        if isinstance(notes, dict) and notes:
            return {str(k): v if isinstance(v, str) else json.dumps(v, default=str)
                    for k, v in sorted(notes.items(), key=lambda kv: str(kv[0]))}
    return {}


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
    facts["provenance"] = _notes(listed.get("provenance"), d.get("provenance"))
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
                                 "(publish with: cloudmic "
                                 f"ingest DATASET --source SRC --dest {root.url})")
    catalog = _read_json(root.child(rl.CATALOG)) or {}
    listing = list_root(root.url, **root.storage_options)
    datasets = {}
    for name, listed in listing["datasets"].items():
        if not SAFE_NAME.fullmatch(name):
            log.warning("%s: skipping dataset with an unusable name %r", root.url, name)
            continue
        datasets[name] = dataset_facts(root, name, listed)
    return {"root": root.url, "updated": catalog.get("updated"), "datasets": datasets}
