"""Read-modify-write of one small JSON object that concurrent writers share, losing no update.

Object stores: a conditional PUT (``If-Match`` on the ETag read, ``If-None-Match: *`` when
the object is new), retried on a lost race. SeaweedFS 4.48 and Azurite honour both (412 on
a stale ETag, ADR 0007). Local folders: an exclusive ``flock`` around read, change and an atomic
rename. ``change`` may run several times (once per attempt): it must only depend on its input.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cloudmic.errors import StoreError
from cloudmic.storage.location import Location
from cloudmic.storage.locks import file_lock

Change = Callable[[Any], Any]
ATTEMPTS = 200  # each lost race means another writer succeeded: progress is global


def _decode(loc: Location, data: bytes | None) -> Any:
    if data is None:
        return None
    try:
        return json.loads(data)
    except ValueError as exc:
        raise StoreError(f"{loc.url}: not valid JSON ({exc}); restore it from a backup or "
                         "delete it (`cloudmic ingest` rewrites it)") from exc


def _encode(value: Any) -> bytes:
    return json.dumps(value, indent=2, sort_keys=True).encode()


def update_json(loc: Location, change: Change) -> Any:
    """Apply ``change`` (old value or None -> new value) to the JSON object at ``loc``."""
    if loc.caps.conditional_put:
        return _update_object(loc, change)
    if not loc.caps.folders:
        raise StoreError(f"{loc.url}: this store cannot update shared files safely "
                         "(no conditional writes)")
    lock = os.path.join(os.path.dirname(loc.path), ".cloudmic", "locks", loc.name + ".lock")
    with file_lock(lock):
        try:
            old = Path(loc.path).read_bytes()
        except FileNotFoundError:
            old = None
        new = change(_decode(loc, old))
        loc.write_bytes(_encode(new))
        return new


def _update_object(loc: Location, change: Change) -> Any:
    import obstore
    from obstore.exceptions import AlreadyExistsError, NotFoundError, PreconditionError

    store, key = loc.parent.object_store(), loc.name
    for attempt in range(ATTEMPTS):
        try:
            got = obstore.get(store, key)
            old, meta = bytes(got.bytes()), got.meta
        except (NotFoundError, FileNotFoundError):
            old, meta = None, None
        new = change(_decode(loc, old))
        # If-Match on the ETag (S3, Azure); GCS matches the object's generation ("version")
        mode = ({"e_tag": meta["e_tag"], **({"version": meta["version"]} if meta.get("version")
                                            else {})} if meta else "create")
        try:
            obstore.put(store, key, _encode(new), mode=mode)
            return new
        except (PreconditionError, AlreadyExistsError):  # another writer won: read again
            time.sleep(random.uniform(0, min(0.5, 0.005 * 2 ** min(attempt, 7))))
    raise StoreError(f"{loc.url}: {ATTEMPTS} writers in a row changed it before this one "
                     "could; try again")
