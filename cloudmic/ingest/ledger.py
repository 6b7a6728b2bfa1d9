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


def remove_partials(wds_loc: Location) -> None:
    """Temp tars a killed unit left behind (``*.tar.part``): never published."""
    if not wds_loc.caps.folders or not Path(wds_loc.path).exists():
        return
    for p in Path(wds_loc.path).rglob("*.part"):
        p.unlink(missing_ok=True)
