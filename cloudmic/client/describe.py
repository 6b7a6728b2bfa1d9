"""What ``cloudmic ls`` and ``cloudmic info`` report: facts for people and scripts."""

from __future__ import annotations

from typing import Any

from cloudmic.client.metadata import read_store_metadata
from cloudmic.ingest.publish import read_catalog
from cloudmic.storage.location import Location


def list_root(root_url: str, **storage_options: Any) -> dict[str, Any]:
    """The published datasets under a root, from its ``catalog.json``."""
    root = Location.parse(root_url, **storage_options)
    catalog = read_catalog(root)
    out = {}
    for name, e in sorted(catalog["datasets"].items()):
        out[name] = {
            "url": root.child(e["zarr"]).url,
            "title": e.get("title"),
            "groups": e.get("groups", {}),
            "records": e.get("records", {}),
            "stored_bytes": e.get("zarr_bytes", 0) + e.get("wds_bytes", 0),
            "zarr_bytes": e.get("zarr_bytes"),
            "compression_ratio": round(e.get("array_bytes", 0) / max(e.get("zarr_bytes", 1), 1),
                                       3),
            "published": e.get("published"),
        }
    return {"root": root.url, "datasets": out}


def info(url: str, **storage_options: Any) -> dict[str, Any]:
    """Groups, variables (dims, shape, dtype), stored bytes and compression of one store."""
    loc = Location.parse(url, **storage_options)
    attrs, arrays = read_store_metadata(loc)
    prov = attrs.get("cloudmic", {})
    sizes = loc.fs.du(loc.path, total=False)
    coord_names = {path.rpartition("/")[0] + "/" + c for path, m in arrays.items()
                   for c in str(m.attrs.get("coordinates", "")).split()}
    groups: dict[str, Any] = {}
    for path, meta in sorted(arrays.items()):
        group, _, name = path.rpartition("/")
        stored = sum(v for k, v in sizes.items() if k.startswith(f"{loc.path}/{path}/"))
        g = groups.setdefault(group, {
            "length": prov.get("groups", {}).get(group, {}).get("length"),
            "sample_dim": prov.get("groups", {}).get(group, {}).get("dim"),
            "variables": {}, "coordinates": {}})
        entry = {"dims": list(meta.dims), "shape": list(meta.shape), "dtype": meta.dtype,
                 "stored_bytes": stored, "raw_bytes": meta.nbytes,
                 "compression_ratio": round(meta.nbytes / stored, 3) if stored and meta.nbytes
                 else None}
        is_coord = meta.dims == (name,) or path in coord_names
        g["coordinates" if is_coord else "variables"][name] = entry
        if not is_coord and "level" in meta.attrs:  # a level of an OME-NGFF image
            g["ngff_level"] = meta.attrs["level"]
    raw = sum(v["raw_bytes"] for g in groups.values() for v in g["variables"].values())
    stored = sum(sizes.values())
    return {"url": loc.url, "dataset": prov.get("dataset"), "title": prov.get("title"),
            "license": prov.get("license"), "created": prov.get("created"),
            "groups": groups, "stored_bytes": stored, "raw_bytes": raw,
            "compression_ratio": round(raw / stored, 3) if stored else None,
            "source": prov.get("source"), "records": prov.get("records")}
