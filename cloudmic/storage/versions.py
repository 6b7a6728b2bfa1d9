"""Which version of a dataset a URL means (ADR 0007).

Every publish writes a new, immutable version under ``ROOT/<name>.releases/<version>/``;
one small object, ``ROOT/<name>.releases/current.json``, names the current one. Readers
resolve a URL once, when they open it, and then read only inside that version: a republish
(or a publisher killed half-way) never shows them a mix of two versions. A URL may also name
a version directly (``ROOT/biosr.releases/<v>/biosr.zarr``, what ``cloudmic ls`` prints and
plain xarray opens), or pass ``version=``. Roots published before versions existed have no
pointer: their ``ROOT/<name>.zarr`` is read as it is.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cloudmic.errors import StoreError, StoreNotFoundError
from cloudmic.storage import root_layout as rl
from cloudmic.storage.location import Location


def new_version_id(now: datetime | None = None) -> str:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{stamp}-{secrets.token_hex(3)}"


def version_time(version: str) -> datetime | None:
    """When a version was started, from its id (None for a name that is no version id)."""
    if not rl.VERSION_RE.match(version):
        return None
    return datetime.strptime(version.split("-")[0], "%Y%m%dT%H%M%S%fZ").replace(tzinfo=UTC)


@dataclass(frozen=True)
class Dataset:
    """One published dataset, pinned to a version (None: a root without versions)."""

    root: Location
    name: str
    version: str | None

    @property
    def base(self) -> Location:
        """The folder holding this version's ``.zarr``, ``.wds`` and ``.previews``."""
        if self.version is None:
            return self.root
        return self.root.child(rl.version_dir(self.name, self.version))

    @property
    def zarr(self) -> Location:
        return self.base.child(rl.zarr_name(self.name))

    @property
    def wds(self) -> Location:
        return self.base.child(rl.wds_name(self.name))

    @property
    def previews(self) -> Location:
        return self.base.child(rl.previews_name(self.name))


def pointer_location(root: Location, name: str) -> Location:
    return root.child(rl.versions_dir(name), rl.POINTER)


def read_pointer(root: Location, name: str) -> dict[str, Any] | None:
    """The current version's facts, or None when the dataset has no versions."""
    loc = pointer_location(root, name)
    try:
        data = json.loads(loc.read_bytes())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise StoreError(f"{loc.url}: the version pointer is not valid JSON ({exc}); "
                         "republish the dataset to rewrite it") from exc
    if not isinstance(data, dict) or not rl.VERSION_RE.match(str(data.get("version", ""))):
        raise StoreError(f"{loc.url}: the version pointer names no version; republish the "
                         "dataset to rewrite it")
    return data


def read_version_facts(ds: Dataset) -> dict[str, Any]:
    """What the publisher recorded for this version ({} for a root without versions)."""
    if not ds.version:
        return {}
    return json.loads(ds.base.child(rl.VERSION_FACTS).read_bytes())


def list_versions(root: Location, name: str) -> list[str]:
    """Complete versions of ``name`` (their ``version.json`` written), oldest first."""
    folder = root.child(rl.versions_dir(name))
    root.fs.invalidate_cache(folder.path)  # s3fs caches listings; versions come and go
    found = root.fs.glob(folder.child("*", rl.VERSION_FACTS).path)
    versions = {f.rstrip("/").split("/")[-2] for f in found}
    return sorted(v for v in versions if rl.VERSION_RE.match(v))


def _parse(loc: Location) -> tuple[Location, str, str | None]:
    """(root, dataset, version named in the URL) from ``.../<name>.zarr`` and friends."""
    if loc.name == rl.INDEX:
        loc = loc.parent
    part = rl.split_part(loc.name)
    if part is None:
        raise StoreNotFoundError(f"{loc.url}: not a dataset URL; pass ROOT/<dataset>.zarr "
                                 "(`cloudmic ls ROOT` lists what is published)")
    name, _ = part
    holder = loc.parent
    if holder.parent.name == rl.versions_dir(name) and rl.VERSION_RE.match(holder.name):
        return holder.parent.parent, name, holder.name
    return holder, name, None


def version_of(loc: Location) -> str | None:
    """The version a resolved location lies in (None: a root without versions)."""
    if rl.split_part(loc.name) is None and loc.name != rl.INDEX:
        return None
    return _parse(loc)[2]


def resolve(url: str | Location, version: str | None = None,
            **storage_options: Any) -> Dataset:
    """The dataset a URL names, pinned: ``version``, else the one the URL names, else the
    current one (one GET of the pointer)."""
    loc = url if isinstance(url, Location) else Location.parse(url, **storage_options)
    root, name, named = _parse(loc)
    if named and version and named != version:
        raise StoreError(f"{loc.url} names version {named}, but version={version!r} was "
                         "passed: pass one of them")
    version = version or named
    if version is None:
        pointer = read_pointer(root, name)
        return Dataset(root, name, pointer["version"] if pointer else None)
    ds = Dataset(root, name, version)
    if not ds.base.child(rl.VERSION_FACTS).exists():
        raise StoreNotFoundError(
            f"{ds.base.url}: no complete version {version} of {name}; `cloudmic ls "
            f"{root.url}` lists the versions (it may have been removed by `cloudmic gc`)")
    return ds
