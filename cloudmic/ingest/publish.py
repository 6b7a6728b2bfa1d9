"""Staging and publishing immutable versions: readers only ever see complete datasets.

An ingest writes its parts straight into the version they will publish (ADR 0010)::

    ROOT/.cloudmic/staging/<dataset>-<run>/target.json   private: which version this run fills
    ROOT/.cloudmic/staging/<dataset>-<run>/ledger/       private: the finished units (resume)
    ROOT/<name>.releases/<v>/<name>.zarr, .wds, ...      the parts, written by the units

A version without ``version.json`` is incomplete: ``cloudmic ls`` does not list it and
readers refuse it. Only after the parts verified does :func:`publish` (ADR 0007)::

    1. write <v>/version.json                  the version is complete
    2. replace <name>.releases/current.json    one atomic write: readers switch here
    3. local roots: point the symlinks ROOT/<name>.zarr (.wds, .previews) at <v>
    4. update this dataset's entry in catalog.json (conditional write: no lost entry)

A publisher that dies before step 2 leaves the previous version current and readable;
between 2 and 4 the catalog names the previous version for a moment, still complete.
Nothing is copied or moved to publish (on an object store a copy costs a server-side copy
of every byte). Old and abandoned versions stay until ``cloudmic gc``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudmic.errors import StoreError
from cloudmic.ingest.ledger import Ledger
from cloudmic.storage import root_layout as rl
from cloudmic.storage.catalog_json import CatalogEntry, update_catalog
from cloudmic.storage.location import Location
from cloudmic.storage.versions import Dataset, new_version_id, pointer_location

log = logging.getLogger(__name__)

TARGET = "target.json"  # in a run's private staging folder: the version it fills
LEDGER = "ledger"  # beside it: the finished units


@dataclass(frozen=True)
class Staging(Dataset):
    """Where one ingest run writes: the version its parts go to (``base``, ``zarr``,
    ``wds``, ``previews`` as for any :class:`Dataset`), incomplete until published, and its
    private folder (the ledger and the name of that version)."""

    private: Location

    @property
    def ledger(self) -> Ledger:
        return Ledger(self.private.child(LEDGER))

    @property
    def published(self) -> bool:
        """Its ``version.json`` is written: nothing may write into it any more."""
        return self.base.child(rl.VERSION_FACTS).exists()

    def discard(self, *, parts: bool) -> None:
        """Remove the private folder, its ledger first (a run stopped half-way through this
        starts afresh instead of resuming what is left), and with ``parts`` the version's
        parts too (never those of a published version). Errors are logged, not raised:
        cleanup must not hide the real error."""
        doomed = [self.private.child(LEDGER)]
        doomed += [self.base] if parts and not self.published else []
        for loc in [*doomed, self.private]:
            try:
                loc.fs.invalidate_cache(loc.path)  # a cached listing would hide new files
                with contextlib.suppress(FileNotFoundError):
                    loc.fs.rm(loc.path, recursive=True)
            except Exception:
                log.warning("could not remove %s", loc.url, exc_info=True)


def open_staging(root: Location, name: str, run_id: str) -> Staging:
    """The staging of run ``run_id``: the version an earlier, stopped run of it was filling,
    or a new version (recorded before anything is written into it)."""
    private = root.child(rl.STAGING, f"{name}-{run_id}")
    target = private.child(TARGET)
    try:
        version = json.loads(target.read_bytes())["version"]
        if not rl.VERSION_RE.match(str(version)):
            raise ValueError(version)
    except FileNotFoundError:
        version = None
    except (ValueError, KeyError, TypeError):
        log.warning("%s: not a version name; starting a new version", target.url)
        version = None
    if version is None:
        version = new_version_id()
        target.write_bytes(json.dumps({"version": version}).encode())
    return Staging(root, name, version, private)


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


def publish(staging: Staging, parts: list[str], facts: dict[str, Any]) -> CatalogEntry:
    """Publish the verified ``parts`` (``biosr.zarr``, ``biosr.wds``, ...) of ``staging``'s
    version; returns its catalog entry (``facts`` plus the version and its URLs)."""
    root, name, version = staging.root, staging.name, staging.version
    base = rl.version_dir(name, version)
    entry = CatalogEntry(**facts, version=version, zarr=f"{base}/{rl.zarr_name(name)}",
                         webdataset=f"{base}/{rl.wds_name(name)}/{rl.INDEX}")
    if rl.previews_name(name) in parts:
        entry["previews"] = f"{base}/{rl.previews_name(name)}/{rl.PREVIEWS_INDEX}"
    facts_json = json.dumps(entry, indent=2, sort_keys=True).encode()
    staging.base.child(rl.VERSION_FACTS).write_bytes(facts_json)
    pointer_location(root, name).write_bytes(facts_json)  # one atomic write: readers switch
    if root.caps.folders:
        _link(Path(root.path), name, version, parts)
    update_catalog(root, name, entry)
    log.info("published %s version %s under %s", name, version, root.url)
    return entry
