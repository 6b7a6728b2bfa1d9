"""Staging and publishing immutable versions: readers only ever see complete datasets.

An ingest writes everything under ``ROOT/.cloudmic/staging/<dataset>-<run>/``. Only after
it verified does :func:`publish` place it as a new version (ADR 0007)::

    1. move (local rename) or copy (object store) the parts to ROOT/<name>.releases/<v>/
    2. write <v>/version.json                  the version is complete
    3. replace <name>.releases/current.json    one atomic write: readers switch here
    4. local roots: point the symlinks ROOT/<name>.zarr (.wds, .previews) at <v>
    5. update this dataset's entry in catalog.json (conditional write: no lost entry)

A publisher that dies before step 3 leaves the previous version current and readable;
between 3 and 5 the catalog names the previous version for a moment, still complete.
Old versions stay until ``cloudmic gc``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from cloudmic.errors import StoreError
from cloudmic.storage import root_layout as rl
from cloudmic.storage.catalog_json import CatalogEntry, update_catalog
from cloudmic.storage.location import Location
from cloudmic.storage.versions import new_version_id, pointer_location

log = logging.getLogger(__name__)


def staging_location(dest: Location, dataset: str, run_id: str) -> Location:
    return dest.child(rl.STAGING, f"{dataset}-{run_id}")


def check_writable(dest: Location) -> None:
    """Fail before any work if the credentials cannot write to the destination."""
    probe = dest.child(rl.STAGING, f"write-probe-{uuid.uuid4().hex[:8]}")
    try:
        probe.write_bytes(b"cloudmic write probe")
        probe.fs.rm(probe.path)
    except Exception as exc:  # PermissionError, botocore ClientError, ...
        raise StoreError(
            f"{dest.url}: cannot write there ({type(exc).__name__}: {exc}). Use credentials "
            f"that may write ({dest.backend.credentials_hint}), or another --dest."
        ) from exc


def _place(staged: Location, final: Location) -> None:
    """Put one staged part at its place in the new version."""
    if staged.caps.folders:
        Path(final.path).parent.mkdir(parents=True, exist_ok=True)
        os.rename(staged.path, final.path)
        return
    fs = staged.fs
    files = sorted(fs.find(staged.path))
    rel = [f[len(staged.path) + 1:] for f in files]
    fs.copy(files, [f"{final.path}/{r}" for r in rel])  # server-side copies


def _link(root: Path, name: str, version: str, parts: list[str]) -> None:
    """Local roots: ``ROOT/<name>.zarr`` etc. become symlinks to the current version, so
    the stable path keeps working for plain xarray; each switch is one atomic rename."""
    for suffix in rl.PARTS:
        stable = root / f"{name}{suffix}"
        if f"{name}{suffix}" not in parts:  # e.g. no previews this time: drop the stale link
            if stable.is_symlink():
                stable.unlink()
            continue
        if stable.exists() and not stable.is_symlink():  # a root published before versions
            trash = stable.with_name(f".{stable.name}.old-{uuid.uuid4().hex[:8]}")
            os.rename(stable, trash)
            shutil.rmtree(trash, ignore_errors=True)
        tmp = stable.with_name(f".{stable.name}.link-{uuid.uuid4().hex[:8]}")
        os.symlink(f"{rl.version_dir(name, version)}/{name}{suffix}", tmp)
        os.replace(tmp, stable)


def publish(staging: Location, root: Location, name: str, parts: list[str],
            facts: dict[str, Any]) -> CatalogEntry:
    """Publish the staged ``parts`` (``biosr.zarr``, ``biosr.wds``, ...) as a new version of
    ``name``; returns its catalog entry (``facts`` plus the version and its URLs)."""
    version = new_version_id()
    base = rl.version_dir(name, version)
    entry = CatalogEntry(**facts, version=version, zarr=f"{base}/{rl.zarr_name(name)}",
                         webdataset=f"{base}/{rl.wds_name(name)}/{rl.INDEX}")
    if rl.previews_name(name) in parts:
        entry["previews"] = f"{base}/{rl.previews_name(name)}/{rl.PREVIEWS_INDEX}"
    for part in parts:
        _place(staging.child(part), root.child(base, part))
    facts_json = json.dumps(entry, indent=2, sort_keys=True).encode()
    root.child(base, rl.VERSION_FACTS).write_bytes(facts_json)
    pointer_location(root, name).write_bytes(facts_json)  # one atomic write: readers switch
    if root.caps.folders:
        _link(Path(root.path), name, version, parts)
    update_catalog(root, name, entry)
    log.info("published %s version %s under %s", name, version, root.url)
    return entry
