"""``ROOT/catalog.json``: what is published under a root, one entry per dataset.

Each entry names the current version and its URLs (relative to the root), so plain
readers and browsers find the immutable version without cloudmic. Writers update one
entry at a time through :func:`~cloudmic.storage.atomic_json.update_json`: concurrent
ingests into one root lose no entry. The per-dataset pointers
(``<name>.releases/current.json``) are the truth readers resolve; the catalog is the index.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, TypedDict

from cloudmic.errors import StoreError
from cloudmic.storage import root_layout as rl
from cloudmic.storage.atomic_json import update_json
from cloudmic.storage.location import Location

CATALOG_VERSION = 1


class CatalogEntry(TypedDict, total=False):
    """One dataset's entry: in ``catalog.json``, in its version's ``version.json`` and in
    ``current.json``. Written by ``ingest.publish``; read by ``client.describe`` and
    ``catalog.facts`` (``tests/client/test_fields_written.py`` holds both to this list).
    URLs are relative to the root."""

    title: str
    license: str
    provenance: dict[str, str]  # {manifest field path: "assumed: ..."}
    published: str  # ISO 8601, UTC, seconds
    run_id: str
    manifest_digest: str
    groups: dict[str, int]  # split or group -> samples
    records: dict[str, int]  # split -> WebDataset records
    source_bytes: int
    array_bytes: int
    zarr_bytes: int
    wds_bytes: int
    version: str
    zarr: str
    webdataset: str
    previews: str  # absent when no preview could be drawn


def empty_catalog() -> dict[str, Any]:
    return {"catalog_version": CATALOG_VERSION, "datasets": {}}


def _checked(loc: Location, catalog: Any) -> dict[str, Any]:
    if not isinstance(catalog, dict) or not isinstance(catalog.get("datasets"), dict):
        raise StoreError(f"{loc.url}: not a cloudmic catalog (no 'datasets' object); restore "
                         "it or delete it (each ingest adds its dataset again)")
    for name, entry in catalog["datasets"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("zarr"), str):
            raise StoreError(f"{loc.url}: the entry of {name!r} has no 'zarr' URL; re-run "
                             f"the ingest of {name} to rewrite it")
    return catalog


def read_catalog(root: Location) -> dict[str, Any]:
    import json

    loc = root.child(rl.CATALOG)
    try:
        data = loc.read_bytes()
    except FileNotFoundError:
        return empty_catalog()
    try:
        catalog = json.loads(data)
    except ValueError as exc:
        raise StoreError(f"{loc.url}: catalog is not valid JSON ({exc}); restore it") from exc
    return _checked(loc, catalog)


def update_catalog(root: Location, name: str, entry: dict[str, Any] | None) -> dict[str, Any]:
    """Add, replace (or with ``None`` remove) one dataset's entry; no concurrent update is lost."""
    loc = root.child(rl.CATALOG)

    def change(old: Any) -> dict[str, Any]:
        catalog = _checked(loc, old) if old is not None else empty_catalog()
        if entry is None:
            catalog["datasets"].pop(name, None)
        else:
            catalog["datasets"][name] = entry
        catalog["updated"] = datetime.now(UTC).isoformat(timespec="seconds")
        return catalog

    return update_json(loc, change)
