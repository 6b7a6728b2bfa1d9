"""What ``cloudmic ls`` and ``cloudmic info`` report: facts for people and scripts."""

from __future__ import annotations

from typing import Any

from cloudmic.client.metadata import ArrayMeta, read_store_metadata
from cloudmic.storage import root_layout as rl
from cloudmic.storage.catalog_json import read_catalog
from cloudmic.storage.location import Location
from cloudmic.storage.versions import list_versions, read_pointer, read_version_facts, resolve


def _published_names(root: Location, catalog: dict[str, Any]) -> list[str]:
    """Datasets in the catalog, plus any whose pointer exists but whose catalog entry a
    publisher stopped before writing."""
    names = set(catalog["datasets"])
    if not root.is_http:  # stores that list
        root.fs.invalidate_cache(root.path)
        pattern = root.child(f"*{rl.VERSIONS_SUFFIX}", rl.POINTER).path
        names |= {p.rstrip("/").split("/")[-2].removesuffix(rl.VERSIONS_SUFFIX)
                  for p in root.fs.glob(pattern)}
    return sorted(names)


def _listing(root: Location, name: str, e: dict[str, Any], versions: list[str]) -> dict[str, Any]:
    return {
        "url": root.child(e["zarr"]).url,
        "stable_url": root.child(rl.zarr_name(name)).url,
        "version": e.get("version"),
        "versions": versions,
        "title": e.get("title"),
        "groups": e.get("groups", {}),
        "records": e.get("records", {}),
        "stored_bytes": e.get("zarr_bytes", 0) + e.get("wds_bytes", 0),
        "zarr_bytes": e.get("zarr_bytes"),
        "compression_ratio": round(e.get("array_bytes", 0) / max(e.get("zarr_bytes", 1), 1), 3),
        "published": e.get("published"),
        "license": e.get("license"),
        "provenance": e.get("provenance", {}),
        "source_bytes": e.get("source_bytes"),
        "array_bytes": e.get("array_bytes"),
        "wds_bytes": e.get("wds_bytes"),
        "webdataset_url": root.child(e["webdataset"]).url if e.get("webdataset") else None,
        "previews_url": root.child(e["previews"]).url if e.get("previews") else None,
    }


def list_root(root_url: str, **storage_options: Any) -> dict[str, Any]:
    """The published datasets under a root: each one's current version (from its pointer,
    the truth readers resolve; the catalog entry for roots without versions), the URL plain
    xarray opens for it, and the versions kept."""
    root = Location.parse(root_url, **storage_options)
    catalog = read_catalog(root)
    out = {}
    for name in _published_names(root, catalog):
        entry = read_pointer(root, name) or catalog["datasets"].get(name)
        if entry is not None:
            versions = list_versions(root, name) if entry.get("version") else []
            out[name] = _listing(root, name, entry, versions)
    return {"root": root.url, "datasets": out}


def info(url: str, version: str | None = None, **storage_options: Any) -> dict[str, Any]:
    """Groups, variables (dims, shape, dtype), stored bytes and compression of one store."""
    ds = resolve(url, version, **storage_options)
    loc = ds.zarr
    attrs, arrays = read_store_metadata(loc)
    prov = attrs.get("cloudmic", {})
    published = None
    if ds.version:
        published = read_version_facts(ds).get("published")
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
        if not is_coord:
            entry.update(_variable_facts(group, meta, arrays))
        g["coordinates" if is_coord else "variables"][name] = entry
        if not is_coord and "level" in meta.attrs:  # a level of an OME-NGFF image
            g["ngff_level"] = meta.attrs["level"]
    raw = sum(v["raw_bytes"] for g in groups.values() for v in g["variables"].values())
    stored = sum(sizes.values())
    return {"url": loc.url, "root": ds.base.url, "dataset": prov.get("dataset"),
            "title": prov.get("title"), "version": ds.version, "license": prov.get("license"),
            "published": published,
            "groups": groups, "stored_bytes": stored, "raw_bytes": raw,
            "compression_ratio": round(raw / stored, 3) if stored else None,
            "source": prov.get("source"), "records": prov.get("records"),
            "citation": prov.get("citation", []), "homepage": prov.get("homepage"),
            "provenance": prov.get("provenance", {}),
            "manifest_digest": prov.get("manifest_digest"), "run_id": prov.get("run_id"),
            **source_links(prov.get("dataset"), prov.get("manifest_digest"), prov.get("homepage"))}


def _variable_facts(group: str, meta: ArrayMeta, arrays: dict[str, ArrayMeta]) -> dict[str, Any]:
    """Units, description and, per dim, the pixel size a coordinate's attributes give."""
    sizes = {}
    for dim in meta.dims:
        c = arrays.get(f"{group}/{dim}" if group else dim)
        if c is not None and "pixel_size" in c.attrs:
            sizes[dim] = {"value": c.attrs["pixel_size"], "units": c.attrs.get("units")}
    return {"units": meta.attrs.get("units"), "long_name": meta.attrs.get("long_name"),
            "pixel_size": sizes}


def coordinate_steps(loc: Location, group: str, dims: list[str],
                     arrays: dict[str, ArrayMeta]) -> dict[str, dict[str, Any]]:
    """Pixel sizes along ``dims`` read from the values of the group's 1-D coordinates (two
    values each): for stores whose coordinates carry units but no ``pixel_size`` attribute.
    Only numeric coordinates with a ``units`` attribute count."""
    import numpy as np
    import zarr

    out: dict[str, dict[str, Any]] = {}
    todo = [(d, arrays[f"{group}/{d}" if group else d]) for d in dims
            if (f"{group}/{d}" if group else d) in arrays]
    todo = [(d, m) for d, m in todo if m.dims == (d,) and m.shape[0] >= 2
            and m.dtype != "string" and m.attrs.get("units")]
    if not todo:
        return out
    root = zarr.open_group(loc.zarr_store(read_only=True), mode="r", zarr_format=3,
                           use_consolidated=True)
    for d, m in todo:
        v = np.asarray(root[m.path][:2], dtype=np.float64)
        out[d] = {"value": round(float(v[1] - v[0]), 9), "units": m.attrs.get("units")}
    return out


def source_links(dataset: str | None, digest: str | None,
                 homepage: str | None) -> dict[str, Any]:
    """Where a dataset comes from: ``homepage`` from the store's provenance; the original
    record, the downloads and the license URL from the manifest of that name shipped with
    cloudmic. ``manifest_matches`` says whether that manifest is the one that built the store
    (same digest); when it is not, its links may have moved on since."""
    from cloudmic.manifest import load_manifest

    out: dict[str, Any] = {"original": None, "downloads": [], "license_url": None,
                           "manifest_matches": None}
    if not dataset:
        return out
    try:
        m = load_manifest(dataset)
    except Exception:  # a store built from a manifest path cloudmic does not ship
        return out
    return {"original": m.source.original, "downloads": [d.url for d in m.source.downloads],
            "license_url": m.license_url, "manifest_matches": m.digest() == digest,
            **({} if homepage else {"homepage": m.source.homepage})}
