"""``cloudmic gc``: remove old versions, abandoned staging and pre-version leftovers.

What stays, always: the current version of each dataset and the ``keep`` newest complete
versions. What goes only after ``grace``: a version counts from the moment it stopped being
current (the publication of its successor), so a training run that pinned it before a
republish keeps reading it for at least ``grace``; an incomplete version (an ingest still
writing it, or one that died) and a staging folder count from their last write (an ingest
resumes them until then).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cloudmic.storage import root_layout as rl
from cloudmic.storage.location import Location
from cloudmic.storage.versions import read_pointer, version_time

log = logging.getLogger(__name__)


@dataclass
class GcReport:
    root: str
    dry_run: bool
    removed: list[str] = field(default_factory=list)
    kept: dict[str, list[str]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"root": self.root, "dry_run": self.dry_run, "removed": self.removed,
                "kept": self.kept}


def _children(loc: Location) -> list[str]:
    """Names directly under ``loc`` (none when it does not exist)."""
    try:
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in loc.fs.ls(loc.path, detail=False))
    except FileNotFoundError:
        return []


def _last_write(loc: Location) -> datetime | None:
    """The newest modification time of any file under ``loc`` (None: no file, e.g. the
    empty folder SeaweedFS keeps listing after its objects went)."""
    stamps = []
    for info in loc.fs.find(loc.path, detail=True).values():
        if info.get("type") != "file":  # s3fs lists an empty folder as itself
            continue
        t = info.get("mtime") or info.get("LastModified") or info.get("last_modified")
        stamps.append(t.timestamp() if isinstance(t, datetime) else float(t or 0))
    return datetime.fromtimestamp(max(stamps), UTC) if stamps else None


def _published(folder: Location, version: str) -> datetime | None:
    """When a version was published (its ``version.json``'s ``published``; the id only says
    when its ingest started); None while it is incomplete (no ``version.json``)."""
    try:
        facts = json.loads(folder.child(version, rl.VERSION_FACTS).read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):  # unreadable: count it as published when it started
        facts = {}
    try:
        return datetime.fromisoformat(facts["published"]).astimezone(UTC)
    except (KeyError, TypeError, ValueError):  # written by an older cloudmic
        return version_time(version) or datetime.min.replace(tzinfo=UTC)


def _doomed_versions(root: Location, name: str, keep: int, cutoff: datetime,
                     ) -> tuple[list[str], list[str]]:
    """(versions to remove, versions kept) of one dataset."""
    folder = root.child(rl.versions_dir(name))
    pointer = read_pointer(root, name)
    current = pointer["version"] if pointer else None
    ids = [v for v in _children(folder) if rl.VERSION_RE.match(v)]
    stamps = {v: _published(folder, v) for v in ids}
    published = {v: t for v, t in stamps.items() if t is not None}
    by_time = sorted(published, key=lambda v: (published[v], v))
    keepers = {current} | set(by_time[-max(keep, 1):])
    doomed = []
    for v in ids:
        if v in keepers:
            continue
        if v in published:  # superseded when the next version was published
            later = by_time[by_time.index(v) + 1:]
            since = published[later[0]] if later else None
        else:  # incomplete: an ingest may still be writing it, or resume it
            since = _last_write(folder.child(v))
        if since is not None and since < cutoff:
            doomed.append(v)
    return doomed, sorted(set(ids) - set(doomed))


def collect(root_url: str, *, keep: int = 3, grace: timedelta = timedelta(hours=24),
            dry_run: bool = False, **storage_options: Any) -> GcReport:
    """Remove what no reader may still need under a root; see the module docstring."""
    root = Location.parse(root_url, **storage_options)
    root.fs.invalidate_cache()  # listings cached by an earlier call would hide new versions
    cutoff = datetime.now(UTC) - grace
    report = GcReport(root.url, dry_run)
    doomed: list[Location] = []
    for entry in _children(root):
        if entry.endswith(rl.VERSIONS_SUFFIX):
            name = entry.removesuffix(rl.VERSIONS_SUFFIX)
            gone, kept = _doomed_versions(root, name, keep, cutoff)
            doomed += [root.child(entry, v) for v in gone]
            report.kept[name] = kept
    doomed += _stale_staging(root, cutoff)
    doomed += _leftovers(root, set(report.kept), cutoff)
    for loc in doomed:
        report.removed.append(loc.url)
        if not dry_run:
            log.info("gc: removing %s", loc.url)
            _remove(loc)
    return report


def _remove(loc: Location) -> None:
    if loc.caps.folders and Path(loc.path).is_symlink():  # rm would refuse (or follow) it
        Path(loc.path).unlink()
    else:
        loc.fs.rm(loc.path, recursive=True)


def _stale_staging(root: Location, cutoff: datetime) -> list[Location]:
    staging = root.child(rl.STAGING)
    out = []
    for name in _children(staging):
        written = _last_write(staging.child(name))
        if written is not None and written < cutoff:
            out.append(staging.child(name))
    return out


def _leftovers(root: Location, versioned: set[str], cutoff: datetime) -> list[Location]:
    """Local: ``.<name>.zarr.old-*`` folders of pre-version publishes and ``.link-*``
    symlinks of a publisher killed while switching. Object stores: the
    pre-version copies at ``ROOT/<name>.zarr`` of datasets that now have versions (plain
    readers would take them for current; locally these names are our symlinks)."""
    out = []
    for entry in _children(root):
        part = rl.split_part(entry)
        if not root.caps.folders and part and part[0] in versioned:
            out.append(root.child(entry))
        elif root.caps.folders and entry.startswith(".") and (".old-" in entry
                                                            or ".link-" in entry):
            changed = Path(root.child(entry).path).lstat().st_mtime
            if datetime.fromtimestamp(changed, UTC) < cutoff:
                out.append(root.child(entry))
    return out
