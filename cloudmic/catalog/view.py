"""What the templates show of one dataset's facts, worked out in Python: number formats,
table rows, figure geometry, and where each provenance note stands on the page.

Anything that may fail on a damaged store (a preview that does not fit its schema) fails
here, where it is caught and shown as a problem; the templates only lay out text."""

from __future__ import annotations

import re
from typing import Any

from cloudmic.humanize import human_bytes

# the manifest fields whose notes stand beside the value on the page (the rest are listed)
BESIDE = ("license", "license_url", "source.homepage", "source.original")
CITATION = re.compile(r"citation\.(\d+)\.(\w+)")


human = human_bytes  # the templates' name for it


def anchor(name: str) -> str:
    return "ds-" + re.sub(r"[^A-Za-z0-9_-]", "-", name)


def _fmt_size(p: dict[str, Any]) -> str:
    v = p.get("value")
    if isinstance(v, (int, float)):
        v = f"{float(v):.4g}"
    return f"{v} {p.get('units') or ''}".strip()


def place_notes(notes: dict[str, str], variables: set[str]) -> dict[str, Any]:
    """Where each provenance note goes: ``fields`` beside the license and source links,
    ``citation`` beside each entry's text or DOI ({index: {field: note}}), ``variables`` in
    a variable's row (notes on ``variables.<name>.*`` and ``options.<name>_pixel*``),
    ``pixel`` below the variable tables (other pixel sizes), ``other`` in a list of the
    facts (options, splits, ...)."""
    out: dict[str, Any] = {"fields": {}, "citation": {}, "variables": {}, "pixel": [],
                           "other": []}
    for path, label in notes.items():
        steps = path.split(".")
        cite = CITATION.fullmatch(path)
        var = steps[1] if steps[0] == "variables" and len(steps) > 1 else None
        if steps[0] == "options" and len(steps) == 2 and "_pixel" in steps[1]:
            var = steps[1].partition("_pixel")[0]
        if path in BESIDE:
            out["fields"][path] = label
        elif cite:
            out["citation"].setdefault(int(cite[1]), {})[cite[2]] = (path, label)
        elif var in variables:
            out["variables"].setdefault(var, []).append((path, label))
        elif "pixel" in steps[-1]:
            out["pixel"].append((path, label))
        else:
            out["other"].append((path, label))
    return out


def _kind_view(k: dict[str, Any], var_notes: dict[str, list]) -> dict[str, Any]:
    groups = k["groups"]
    label = ", ".join(groups[:3]) + (f" and {len(groups) - 3} more" if len(groups) > 3 else "")
    levels = (f"; OME-NGFF levels {', '.join(map(str, k['levels']))}" if len(k["levels"]) > 1
              else "")
    rows = []
    variables = k["variables"]
    loc_cols = sorted(n for n in variables if n.startswith("loc_"))
    for name, v in variables.items():
        if name in loc_cols[1:]:
            continue
        notes = var_notes.get(name, [])
        dims = ", ".join(f"{dim}: {n}" for dim, n in zip(v["dims"], v["shape"], strict=True))
        px = ", ".join(f"{dim} {_fmt_size(p)}" for dim, p in v.get("pixel_size", {}).items()
                       if dim in v["dims"])
        units, desc, dtype, shown = v.get("units") or "", v.get("long_name") or "", v["dtype"], name
        if name in loc_cols:  # a table: one row for all its columns
            shown = f"{', '.join(loc_cols[:3])}, ... ({len(loc_cols)} columns)"
            dtype = ", ".join(sorted({variables[c]["dtype"] for c in loc_cols}))
            units, desc = "", "table columns along loc (one row per localization)"
        rows.append({"name": shown, "dims": dims, "dtype": dtype, "px": px, "units": str(units),
                     "desc": str(desc), "px_notes": [n for n in notes if "pixel" in n[0]],
                     "notes": [n for n in notes if "pixel" not in n[0]]})
    return {"example": k["example"], "count": len(groups), "label": label, "levels": levels,
            "rows": rows, "coordinates": k["coordinates"]}


def _trace_view(trace: dict[str, Any], width: int = 720, height: int = 180) -> dict | None:
    """Polylines of the mean intensity over time, each scaled to its own min-max."""
    t = [float(v) for v in trace.get("t", [])]
    series = {str(k): [float(x) for x in v] for k, v in trace.get("series", {}).items()}
    if len(t) < 2 or not series:
        return None
    left, right, top, bottom = 48, 12, 12, 34
    w, h = width - left - right, height - top - bottom
    t0, t1 = t[0], t[-1]
    colors = {"low": "#7a8599", "high": "#c2410c"}
    vu = str(trace.get("value_units", ""))
    lines = []
    for i, (name, ys) in enumerate(series.items()):
        n = min(len(ys), len(t))
        lo, hi = min(ys[:n]), max(ys[:n])
        span = (hi - lo) or 1.0
        pts = " ".join(f"{left + (t[j] - t0) / ((t1 - t0) or 1) * w:.1f},"
                       f"{top + h - (ys[j] - lo) / span * h:.1f}" for j in range(n))
        lines.append({"color": colors.get(name, ["#1f5fbf", "#15803d", "#7c3aed"][i % 3]),
                      "points": pts, "text": f"{name}: {lo:.4g} to {hi:.4g} {vu}"})
    frame = trace.get("frame")
    frame_x = None
    if isinstance(frame, int) and 0 <= frame < len(t):
        frame_x = f"{left + (t[frame] - t0) / ((t1 - t0) or 1) * w:.1f}"
    unit = str(trace.get("t_units", ""))
    return {"width": width, "height": height, "left": left, "top": top, "w": w, "h": h,
            "names": ", ".join(series), "lines": lines, "frame_x": frame_x,
            "start": f"{t0:.3g} {unit}", "end": f"{t1:.3g} {unit}",
            "mid_y": f"{top + h / 2:.0f}", "note": str(trace.get("note", ""))}


def _legend_view(legend: list[dict[str, Any]]) -> list[dict[str, str]]:
    items = []
    for e in legend:
        rgba = [max(0, min(255, int(c))) for c in e.get("rgba", [0, 0, 0, 0])][:4]
        if len(rgba) < 4:
            rgba += [255] * (4 - len(rgba))
        frac = e.get("fraction")
        share = f" ({float(frac) * 100:.1f}%)" if isinstance(frac, (int, float)) else ""
        items.append({"rgba": f"{rgba[0]},{rgba[1]},{rgba[2]},{rgba[3] / 255:.2f}",
                      "text": f"{e.get('value')} {e.get('name', '')}{share}"})
    return items


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


def _figure_view(name: str, fig: dict[str, Any]) -> dict[str, Any]:
    panels = fig.get("panels", [])
    many = len(panels) > 4  # a gallery (one crop per class): small tiles
    shown = []
    for p in panels:
        shape = p.get("shape", [128, 128])
        w, h = _display_size(shape, many)
        shown.append({"src": f"{name}/{p['file']}", "width": w, "height": h,
                      "enlarged": w > int(shape[1]),
                      "alt": f"{p.get('title', '')}: {p.get('caption', '')}",
                      "source": str(p.get("source", "")), "caption_width": max(w, 140),
                      "title": str(p.get("title", "")), "caption": str(p.get("caption", ""))})
    return {"title": str(fig.get("title", "")), "caption": str(fig.get("caption", "")),
            "panels": shown,
            "legend": _legend_view(fig["legend"]) if fig.get("legend") else None,
            "trace": _trace_view(fig["trace"]) if fig.get("trace") else None}


def _previews_view(name: str, doc: dict[str, Any] | None) -> dict[str, Any] | None:
    if not doc:
        return None
    figures = []
    for fig in doc.get("figures", []):
        try:
            figures.append(_figure_view(name, fig))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a damaged file
            figures.append({"title": str(fig.get("title", "")), "error": str(exc)})
    scaling = doc.get("scaling")
    return {"figures": figures, "scaling": str(scaling) if scaling else None}


def dataset_view(name: str, d: dict[str, Any]) -> dict[str, Any]:
    """The view of one dataset's facts (``catalog_facts(...)["datasets"][name]``)."""
    kinds = d.get("kinds", [])
    # the variables with a row of their own (a table's loc_* columns share the first one's)
    shown = {n for k in kinds for n in k["variables"]
             if not n.startswith("loc_") or n == min(c for c in k["variables"]
                                                     if c.startswith("loc_"))}
    notes = place_notes(d.get("provenance") or {}, shown)
    src = d.get("source") or {}
    parts = [p for p in ("homepage", "original", "downloads") if d.get(p)]
    if d.get("manifest_matches") is False:
        parts.append("manifest differs")
    return {
        "notes": notes, "source_parts": parts,
        "sizes": [("source", human(d.get("source_bytes")), f"{src.get('files', '?')} files"),
                  ("arrays (uncompressed)", human(d.get("array_bytes")), ""),
                  ("Zarr store", human(d.get("zarr_bytes")),
                   f"compression {d.get('compression_ratio')}x"),
                  ("WebDataset shards", human(d.get("wds_bytes")), ""),
                  ("stored in total", human(d.get("stored_bytes")), "Zarr + WebDataset")],
        "kinds": [_kind_view(k, notes["variables"]) for k in kinds],
        "previews": _previews_view(name, d.get("previews")),
    }
