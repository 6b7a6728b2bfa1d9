"""The ingest ledger: which work units are finished, so that a re-run resumes.

A staging folder is named by a fingerprint of the manifest and the sources, so a re-run
over the same sources finds the same folder and its ledger, while changed sources get a
fresh one. A unit's entry (its shard's url, bytes, sha256, records and the array bytes
written) is written atomically after both its Zarr region and its tar are complete; a unit
killed half-way has no entry and is redone whole, which rewrites the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cloudmic.datasets import Inventory
from cloudmic.manifest import Manifest
from cloudmic.storage.location import Location

log = logging.getLogger(__name__)

CREATED = "_created.json"


def _strings(obj: Any) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            yield from _strings(v)


def source_fingerprint(inv: Inventory) -> str:
    """A digest of every source file the inventory names: path, size and modification time
    (a file replaced or edited since a killed run changes it)."""
    h = hashlib.sha256()
    for s in sorted(set(_strings(inv.files))):
        h.update(s.encode())
        try:
            st = os.stat(s) if "://" not in s else None
        except OSError:
            st = None
        if st is not None:
            h.update(f"|{st.st_size}|{st.st_mtime_ns}".encode())
    h.update(f"|{inv.source_bytes}|{inv.file_count}".encode())
    return h.hexdigest()


def run_id(manifest: Manifest, inv: Inventory, version: str) -> str:
    """Deterministic for the same manifest, sources and cloudmic version."""
    blob = f"{manifest.digest()}|{source_fingerprint(inv)}|{version}".encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class Ledger:
    def __init__(self, loc: Location) -> None:
        self.loc = loc

    def _entry(self, key: str) -> Location:
        return self.loc.child(key.replace("/", "__") + ".json")

    def created(self) -> bool:
        return self.loc.child(CREATED).exists()

    def mark_created(self) -> None:
        self.loc.child(CREATED).write_bytes(b"{}")

    def record(self, result: dict[str, Any]) -> None:
        self._entry(result["unit"]).write_bytes(json.dumps(result, sort_keys=True).encode())

    def finished(self) -> dict[str, dict[str, Any]]:
        """Entries of finished units whose shard is still there with its recorded size."""
        if not self.loc.exists():
            return {}
        out = {}
        for path in self.loc.fs.glob(f"{self.loc.path}/*.json"):
            if path.endswith(CREATED):
                continue
            try:
                entry = json.loads(self.loc.fs.cat_file(path))
            except (OSError, ValueError):  # cannot be half-written (atomic), but be safe
                continue
            out[entry["unit"]] = entry
        return out

    def usable(self, entry: dict[str, Any], wds_loc: Location) -> bool:
        try:
            shard = wds_loc.inside(entry["shard"]["url"], self._entry(entry["unit"]).url)
            return int(shard.fs.size(shard.path)) == int(entry["shard"]["bytes"])
        except (OSError, KeyError, TypeError):  # StoreError: a URL leaving the folder
            return False


# Temp files a killed unit leaves in the local folder of the version it writes, never
# published: our tars (``*.tar.part``, wds_writer) and zarr's LocalStore atomic writes
# (``<key>.<uuid hex>.partial``, zarr.storage._local._atomic_write), which a kill -9 between
# the write and the rename leaves beside the chunk it was writing.
_TEMP_FILES = {"wds": re.compile(r"\.part$"), "zarr": re.compile(r"\.[0-9a-f]{32}\.partial$")}


def remove_partials(wds_loc: Location, zarr_loc: Location | None = None) -> None:
    """Remove the temp files a killed unit left among the version's shards and in its
    store (local folders only: an object store has no half-written objects)."""
    for kind, loc in (("wds", wds_loc), ("zarr", zarr_loc)):
        if loc is None or not loc.caps.folders or not Path(loc.path).exists():
            continue
        for p in Path(loc.path).rglob("*"):
            if p.is_file() and _TEMP_FILES[kind].search(p.name):
                log.info("removing %s, left by a stopped run", p)
                p.unlink(missing_ok=True)
