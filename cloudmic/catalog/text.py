"""What ``cloudmic ls`` and ``cloudmic info`` print: the listing and the description of a
store (:mod:`cloudmic.client.describe`) as text for a terminal."""

from __future__ import annotations

from typing import Any

from cloudmic.catalog.snippets import xarray_snippet
from cloudmic.humanize import human_bytes
from cloudmic.storage.location import Location


def ls_text(listing: dict[str, Any]) -> str:
    """The datasets under a root: groups, stored size, compression, current version URL."""
    out: list[str] = []
    if not listing["datasets"]:
        return f"nothing published under {listing['root']} (see: cloudmic ingest --help)"
    out.append(f"{'dataset':<14}{'groups':<40}{'stored':>12}{'ratio':>8}  current version url")
    for name, d in listing["datasets"].items():
        groups = ", ".join(f"{g} {n}" for g, n in d["groups"].items())
        if len(groups) > 38:  # many splits (one per structure): summarise, --json has them all
            groups = f"{len(d['groups'])} splits, {sum(d['groups'].values())} samples"
        out.append(f"{name:<14}{groups:<40}{human_bytes(d['stored_bytes']):>12}"
                   f"{d['compression_ratio']:>7.2f}x  {d['url']}")
        if d["versions"]:
            older = [v for v in d["versions"] if v != d["version"]]
            out.append(f"{'':<14}version {d['version']} (current)"
                       + (f"; also kept: {', '.join(older)}" if older else ""))
    return "\n".join(out)


def info_text(d: dict[str, Any]) -> str:
    """One store: title, license and citations with their provenance, groups, variables,
    and how plain xarray opens it on its kind of store."""
    out = [f"{d['url']}: {d['title']}",
           f"  version {d['version']}, published {d['published']}, license {d['license']}, "
           f"stored {human_bytes(d['stored_bytes'])}, raw {human_bytes(d['raw_bytes'])}, "
           f"compression {d['compression_ratio']}x"]
    notes = d.get("provenance") or {}
    if "license" in notes:
        out.append(f"    ({notes['license']})")
    for k, c in enumerate(d.get("citation") or []):
        out.append(f"  cite: {c.get('text')}" + (f" doi:{c['doi']}" if c.get("doi") else ""))
        for field in (f"citation.{k}.text", f"citation.{k}.doi"):
            if field in notes:
                out.append(f"    ({field.rpartition('.')[2]}: {notes[field]})")
    rest = {k: v for k, v in notes.items() if k != "license" and not k.startswith("citation.")}
    if rest:
        out.append("  where other facts come from:")
        for field, label in rest.items():
            out.append(f"    {field}: {label}")
    for gname, g in d["groups"].items():
        n = g.get("length")
        if "ngff_level" in g:
            kind = f"OME-NGFF image, level {g['ngff_level']}"
        elif g.get("sample_dim"):
            kind = f"{n} samples along {g['sample_dim']!r}"
        else:
            kind = "one sample"
        out.append(f"  group {gname}: {kind}")
        for vname, v in g["variables"].items():
            dims = ", ".join(f"{dim}: {n}" for dim, n in zip(v["dims"], v["shape"], strict=True))
            out.append(f"    {vname:<10}({dims}) {v['dtype']:<8} "
                       f"stored {human_bytes(v['stored_bytes'])} ({v['compression_ratio']}x)")
        out.append(f"    coordinates: {', '.join(g['coordinates'])}")
    snippet = xarray_snippet(Location.parse(d["root"]), d["url"])
    out.append("  open it in plain xarray:")
    out += [f"    {line}" for line in snippet.splitlines()]
    return "\n".join(out)
