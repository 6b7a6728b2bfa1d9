"""Staging and publishing: readers only ever see complete datasets.

An ingest writes everything under ``ROOT/.cloudmic/staging/<dataset>-<run>/``; only
after it verified does ``publish`` move it to ``ROOT/<dataset>.zarr`` and
``ROOT/<dataset>.wds``, root metadata last, and ``catalog.json`` is updated after that.
A failure before publish leaves what was published untouched.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cloudmic.errors import StoreError
from cloudmic.storage.location import Location

log = logging.getLogger(__name__)

STAGING = ".cloudmic/staging"
CATALOG = "catalog.json"
# written last within a dataset: a reader opening the store sees old or new, never half
ROOT_METADATA = ("zarr.json", "index.json")


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]


def staging_location(dest: Location, dataset: str, run_id: str) -> Location:
    return dest.child(STAGING, f"{dataset}-{run_id}")


def check_writable(dest: Location) -> None:
    """Fail before any work if the credentials cannot write to the destination."""
    probe = dest.child(STAGING, f"write-probe-{uuid.uuid4().hex[:8]}")
    try:
        probe.write_bytes(b"cloudmic write probe")
        probe.fs.rm(probe.path)
    except Exception as exc:  # PermissionError, botocore ClientError, ...
        raise StoreError(
            f"{dest.url}: cannot write there ({type(exc).__name__}: {exc}). Use credentials "
            "that may write (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), or another --dest."
        ) from exc


def _publish_local(staged: Path, final: Path) -> None:
    trash = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
    if final.exists():
        os.rename(final, trash)
    os.rename(staged, final)
    shutil.rmtree(trash, ignore_errors=True)


def _publish_s3(staged: Location, final: Location) -> None:
    fs = staged.fs
    src_files = sorted(fs.find(staged.path))
    rel = [f[len(staged.path) + 1:] for f in src_files]
    last = [r for r in rel if r in ROOT_METADATA]
    first = [r for r in rel if r not in ROOT_METADATA]
    for batch in (first, last):
        if batch:
            fs.copy([f"{staged.path}/{r}" for r in batch], [f"{final.path}/{r}" for r in batch])
    fs.invalidate_cache(final.path)
    stale = set(fs.find(final.path)) - {f"{final.path}/{r}" for r in rel}
    if stale:
        fs.rm(sorted(stale))
    fs.rm(staged.path, recursive=True)


def publish(staging: Location, dest: Location, names: list[str]) -> None:
    """Move each staged ``name`` (e.g. ``biosr.zarr``) to ``dest/name``."""
    for name in names:
        if dest.is_s3:
            _publish_s3(staging.child(name), dest.child(name))
        else:
            _publish_local(Path(staging.child(name).path), Path(dest.child(name).path))
    if not dest.is_s3:
        shutil.rmtree(staging.path, ignore_errors=True)
    log.info("published %s under %s", ", ".join(names), dest.url)


def read_catalog(root: Location) -> dict[str, Any]:
    loc = root.child(CATALOG)
    if not loc.exists():
        return {"catalog_version": 1, "datasets": {}}
    try:
        return json.loads(loc.read_bytes())
    except ValueError as exc:
        raise StoreError(f"{loc.url}: catalog is not valid JSON ({exc}); restore it") from exc


def update_catalog(root: Location, name: str, entry: dict[str, Any]) -> None:
    """Add or replace one dataset's entry: the very last write of an ingest."""
    catalog = read_catalog(root)
    catalog["datasets"][name] = entry
    catalog["updated"] = datetime.now(UTC).isoformat(timespec="seconds")
    root.child(CATALOG).write_bytes(json.dumps(catalog, indent=2, sort_keys=True).encode())
