"""``cloudmic.ingest``: scan -> plan -> write units into a new version -> verify -> publish.

Each step is a function of its own module; this one only wires them together.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import zarr

from cloudmic import __version__
from cloudmic.catalog.previews import write_previews
from cloudmic.datasets import Adapter, Inventory, Unit, get_adapter
from cloudmic.errors import VerifyFailed, is_permanent
from cloudmic.ingest import execute
from cloudmic.ingest.ledger import Ledger, remove_partials
from cloudmic.ingest.ledger import run_id as fingerprint_run_id
from cloudmic.ingest.plan import plan_units
from cloudmic.ingest.publish import Staging, check_writable, open_staging, publish
from cloudmic.ingest.verify import compare_counts, verify_against_source, verify_dataset
from cloudmic.ingest.wds_writer import write_shard
from cloudmic.layout.zarr_layout import create_groups, write_unit
from cloudmic.manifest import Manifest, load_manifest
from cloudmic.sources import resolve_source
from cloudmic.storage import root_layout as rl
from cloudmic.storage.location import Location

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (units done, bytes written) increments


@dataclass(frozen=True)
class IngestReport:
    dataset: str
    dest: str
    run_id: str
    groups: dict[str, int]
    records: int
    units: int
    source_files: int
    source_bytes: int
    array_bytes: int
    zarr_bytes: int
    wds_bytes: int
    seconds: float
    version: str = ""  # the published version (ADR 0007)
    url: str = ""  # the version's Zarr store: what plain xarray opens
    # what verify warned about, with its figures: a partial copy ("train: found 40 of
    # 41040 expected samples"), localizations outside the field of view, ...
    warnings: list[str] = field(default_factory=list)
    # the profile (issue 16): wall seconds of each phase of this call, and the seconds the
    # units spent in each stage, summed over units (on 2 workers, about twice the wall time
    # of the units phase); units finished by an earlier, resumed run count with their own
    phases: dict[str, float] = field(default_factory=dict)
    unit_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def compression_ratio(self) -> float:
        return self.array_bytes / max(self.zarr_bytes, 1)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "compression_ratio": round(self.compression_ratio, 3)}


def _provenance(manifest: Manifest, inv: Inventory, run_id: str) -> dict[str, Any]:
    return {
        "dataset": manifest.name,
        "title": manifest.title,
        "license": manifest.license,
        "citation": [c.model_dump() for c in manifest.citation],
        # facts the publisher does not state as written: {field path: "assumed: ..."}
        "provenance": manifest.provenance_labels(),
        "homepage": manifest.source.homepage,
        "cloudmic_version": __version__,
        "manifest_digest": manifest.digest(),
        "run_id": run_id,  # a fingerprint of manifest + sources: re-runs write the same bytes
        "source": {"files": inv.file_count, "bytes": inv.source_bytes},
        "groups": {g.name: {"dim": g.unit_dim, "length": g.length} for g in inv.groups},
        "storage": manifest.storage.model_dump(),
        "webdataset": f"../{rl.wds_name(manifest.name)}/{rl.INDEX}",
    }


def run_unit(adapter: Adapter, inv: Inventory, unit: Unit, zarr_loc: Location,
             wds_loc: Location, ledger: Ledger | None = None) -> dict[str, Any]:
    """Read one unit's sources once; write its Zarr region and its WebDataset shard; then,
    and only then, record it in the ledger."""
    t0 = time.perf_counter()
    data = adapter.read_unit(inv, unit)
    t1 = time.perf_counter()
    # sharded arrays are encoded by zarrs, whose inner-chunk order varies run to run, and
    # stored in zarr-python's canonical order (layout.shard_writer): re-runs rewrite the
    # same bytes; the group and everything else use zarr's default codec pipeline
    group = zarr.open_group(zarr_loc.zarr_store(), mode="r+", path=unit.group, zarr_format=3)
    nbytes = write_unit(group, inv.group(unit.group), unit, data)
    t2 = time.perf_counter()
    laps: dict[str, float] = {}
    shard = write_shard(adapter.records(inv, unit, data), wds_loc.child(unit.shard_url), laps)
    t3 = time.perf_counter()
    # where a unit's time goes (the report's profile, issue 16): decoding the sources and
    # the pyramid, encoding and writing the Zarr region, building the tar, uploading it
    seconds = {"read": t1 - t0, "zarr": t2 - t1, "shard": t3 - t2 - laps.get("upload", 0.0),
               "upload": laps.get("upload", 0.0)}
    result = {"unit": unit.key, "split": inv.group(unit.group).split, "array_bytes": nbytes,
              "shard": {"url": unit.shard_url, **shard},
              "seconds": {k: round(v, 4) for k, v in seconds.items()}}
    if ledger is not None:
        ledger.record(result)
    return result


def _run_units(adapter: Adapter, inv: Inventory, units: list[Unit], zarr_loc: Location,
               wds_loc: Location, ledger: Ledger, client: Any, workers: int,
               progress: Progress | None) -> list[dict]:
    """Run units on the dask client, or on threads here; results in plan order."""
    per_task = [(u, zarr_loc, wds_loc, ledger) for u in units]
    if client is not None:
        # task keys are cluster-wide: name the version too, so two ingests of the same
        # units (same sources, other destinations) sharing a scheduler never share a result
        token = hashlib.sha256(zarr_loc.url.encode()).hexdigest()[:12]
        results = execute.run_dask(client, run_unit, (adapter, inv), per_task,
                                   [f"unit-{token}-{u.key}" for u in units])
    else:
        results = execute.run_threads(run_unit, [(adapter, inv, *a) for a in per_task], workers)
    done = []
    for r in results:
        done.append(r)
        if progress:
            progress(1, r["array_bytes"])
    order = {u.key: k for k, u in enumerate(units)}
    return sorted(done, key=lambda r: order[r["unit"]])


def _index(manifest: Manifest, inv: Inventory, results: list[dict[str, Any]]) -> dict[str, Any]:
    splits: dict[str, Any] = {}
    for g in inv.groups:
        entry = splits.setdefault(g.split, {"records": 0, "shards": []})
        if g.unit_dim is not None and g.split == g.name:
            # the array verify measures: the unit dim's coordinate (``0/z`` in a pyramid)
            axis = next((v.name for v in g.variables if v.dims == (g.unit_dim,)
                         and v.factor == 1 and v.shape == (g.length,)), g.unit_dim)
            entry.update(zarr_dim=g.unit_dim, zarr_length=g.length, zarr_axis=axis)
    for r in results:
        # the ETag an upload must have is for the pre-publish verify, not a fact of the data
        # (it depends on the upload's part size)
        splits[r["split"]]["shards"].append({k: v for k, v in r["shard"].items() if k != "etag"})
        splits[r["split"]]["records"] += r["shard"]["samples"]
    return {"dataset": manifest.name, "format": "webdataset", "fields": manifest.webdataset.fields,
            "splits": splits}


def ingest(dataset: str, source: str | Path | None, dest: str, *, workers: int = 2,
           threads: int = 1, cluster: bool | execute.Cluster = False,
           scheduler: str | None = None,
           storage_options: dict[str, Any] | None = None,
           progress: Progress | None = None, on_plan: Callable[[int], None] | None = None,
           on_cluster: Callable[[str, str | None], None] | None = None,
           cache_dir: str | Path | None = None,
           on_fetch: Callable[[int, int | None], None] | None = None,
           strict: bool = False) -> IngestReport:
    """Repack a published dataset into ``dest/<name>.zarr`` + ``dest/<name>.wds``.

    ``dataset`` is a manifest name (``biosr``) or a manifest path; ``source`` the
    published layout (a local folder; archives may also be ``s3://`` URLs); ``dest`` an
    ``s3://`` URL or a local folder. Every source file is checked before anything is
    written, and what was published before stays readable until the new version verified.

    Units run on ``workers`` threads here, or with ``cluster=True`` on a dask LocalCluster
    of ``workers`` processes x ``threads``, or on an existing ``scheduler``
    (``tcp://host:8786``); the cluster starts while the sources are scanned (or earlier:
    ``cluster`` may be an :class:`~cloudmic.ingest.execute.Cluster` the caller started,
    with its own workers, threads, scheduler and ``on_cluster``; this call closes it,
    whatever happens). The units
    write straight into the new version's folder, which stays unlisted until it is
    published; a private staging folder, named by a fingerprint of manifest and sources,
    names that version and keeps a ledger of finished units: after a crash (even
    ``kill -9``) the same call resumes, redoing only unfinished units, and publishes the
    same bytes.

    The samples found per split are compared with the publisher's counts in the manifest
    (``expected``): a partial copy publishes with a warning in the report's ``warnings``,
    or, with ``strict``, fails before anything is written.
    """
    t0 = time.perf_counter()
    dask = cluster if isinstance(cluster, execute.Cluster) else None
    try:  # every path out of here closes the cluster
        manifest = load_manifest(str(dataset))
        adapter = get_adapter(manifest, cache_dir)
        root = Location.parse(dest, **(storage_options or {}))
        # the cluster starts (if the caller has not started it), and its workers import
        # what a unit needs, while the sources are scanned
        if dask is not None:
            dask.preload(_unit_modules(adapter, root))
        elif cluster or scheduler:
            dask = execute.Cluster(scheduler, workers, threads, on_cluster,
                                   preload=_unit_modules(adapter, root))
        return _ingest(manifest, adapter, source, root, dask, workers, progress, on_plan,
                       cache_dir, on_fetch, strict, t0)
    finally:
        if dask is not None:
            dask.close()


def _warm(root: Location) -> None:
    """One read of ``root``, so that its filesystem's client and connection exist; any
    error is left to :func:`check_writable` to report."""
    try:
        root.exists()
    except Exception as exc:
        log.debug("%s: not reachable yet (%s)", root.url, exc)


def _unit_modules(adapter: Adapter, root: Location) -> list[str]:
    """What a unit imports on a worker: this module (and through it zarr and the layout),
    the adapter's, the encoder of sharded arrays, and the destination's filesystem."""
    return [__name__, type(adapter).__module__, "zarrs", type(root.fs).__module__]


def _ingest(manifest: Manifest, adapter: Adapter, source: str | Path | None, root: Location,
            dask: execute.Cluster | None, workers: int, progress: Progress | None,
            on_plan: Callable[[int], None] | None, cache_dir: str | Path | None,
            on_fetch: Callable[[int, int | None], None] | None, strict: bool,
            t0: float) -> IngestReport:
    phase = _Phases()
    # the destination's client (on S3 ~0.3 s to build) gets ready during the scan, by a
    # read: nothing is written before the scan has checked every source file
    # (a daemon: never waited for, not even at exit; check_writable reports what is wrong)
    threading.Thread(target=_warm, args=(root,), name="cloudmic-dest", daemon=True).start()
    # URLs and zips (or None: the manifest's downloads) -> a cached, verified local tree
    source = resolve_source(manifest, source, cache_dir=cache_dir, progress=on_fetch)
    inv = adapter.scan(source)
    expected = manifest.expected_counts()
    if strict:
        _, partial = compare_counts(_split_sizes(inv), expected)
        if partial:
            raise VerifyFailed(f"{manifest.name}: the source is not the complete published "
                               "dataset (strict), nothing written:\n  " + "\n  ".join(partial)
                               + "\n  to publish a partial copy on purpose, ingest without "
                               "--strict (strict=False)")
    phase.lap("scan")
    check_writable(root)
    units = plan_units(inv, manifest)
    run_id = fingerprint_run_id(manifest, inv, __version__)
    staging = open_staging(root, manifest.name, run_id)
    try:
        staging, zroot, done = _open_parts(manifest, inv, run_id, staging, len(units))
        zarr_loc, wds_loc, ledger = staging.zarr, staging.wds, staging.ledger
        todo = [u for u in units if u.key not in done]
        if on_plan:
            on_plan(len(units))
        if progress and done:
            progress(len(done), sum(done[k]["array_bytes"] for k in done))
        log.info("ingest %s: %d units into %s", manifest.name, len(todo), staging.base.url)
        client = dask.client() if dask is not None and todo else None
        phase.lap("start")  # the staging, and what is left of the cluster's start
        fresh = _run_units(adapter, inv, todo, zarr_loc, wds_loc, ledger, client, workers,
                           progress)
        if dask is not None:
            dask.close(wait=False)  # its processes stop while the version is sealed
        phase.lap("units")
        by_key = {**done, **{r["unit"]: r for r in fresh}}
        results = [by_key[u.key] for u in units]
        sizes, prov = _seal(adapter, manifest, inv, results, zroot, zarr_loc, wds_loc)
        phase.lap("seal")
        report, previews = _verify(adapter, manifest, inv, units, results, staging, zroot,
                                   expected, strict, phase)
        parts = [rl.zarr_name(manifest.name), rl.wds_name(manifest.name)]
        parts += [rl.previews_name(manifest.name)] if previews else []
        facts = {"title": manifest.title, "license": manifest.license,
                 "provenance": manifest.provenance_labels(),
                 "published": datetime.now(UTC).isoformat(timespec="seconds"),
                 "run_id": run_id, "manifest_digest": manifest.digest(),
                 "groups": _split_sizes(inv), "records": prov["records"],
                 "source_bytes": inv.source_bytes, **sizes}
        entry = publish(staging, parts, facts)
    except VerifyFailed:
        staging.discard(parts=True)  # what was written is wrong: a re-run starts afresh
        raise
    except BaseException as exc:
        # a full disk or bad input explains itself in one line (the CLI's error says to
        # re-run); other stops get the hint here
        (log.info if is_permanent(exc) else log.warning)(
            "ingest of %s stopped; %s keeps the finished units: run the same command again "
            "to resume", manifest.name, staging.private.url)
        raise
    staging.discard(parts=False)
    if dask is not None:
        dask.close()  # closed meanwhile, as a rule: the report's time includes any rest
    phase.lap("publish")
    return IngestReport(manifest.name, root.url, run_id, entry["groups"],
                        sum(prov["records"].values()), len(units), inv.file_count,
                        inv.source_bytes, sizes["array_bytes"], sizes["zarr_bytes"],
                        sizes["wds_bytes"], time.perf_counter() - t0, entry["version"],
                        root.child(entry["zarr"]).url, list(report.warnings),
                        phases=phase.seconds, unit_seconds=_unit_seconds(results))


def _verify(adapter: Adapter, manifest: Manifest, inv: Inventory, units: list[Unit],
            results: list[dict[str, Any]], staging: Staging, zroot: zarr.Group,
            expected: dict[str, Any], strict: bool, phase: _Phases) -> tuple[Any, bool]:
    """The check before publishing, then the previews, from the verified store:
    (the verify report, whether previews exist). Raises :class:`VerifyFailed` on a problem.
    (Writing the previews on a thread beside the check measured no faster: DeepCAD's check
    slowed by more than its previews took.)"""
    # shards just written: sizes and ETags from a listing, a sample read back (the full
    # read is `cloudmic verify`'s job); beside it, on a thread, windows of the source read
    # again (local reads and decodes while the shards come from the store)
    with ThreadPoolExecutor(1, thread_name_prefix="cloudmic-verify-source") as pool:
        against = pool.submit(verify_against_source, adapter, inv, units, zroot)
        report = verify_dataset(staging.base, manifest.name, expected=expected, strict=strict,
                                full=False, staged=True,
                                etags={r["shard"]["url"]: r["shard"]["etag"]
                                       for r in results if "etag" in r["shard"]})
        report.problems += against.result()
    phase.lap("verify")
    if not report.ok:
        raise VerifyFailed(f"{staging.base.url}: verification failed, nothing published:"
                           "\n  " + "\n  ".join(report.problems))
    # a failure of the previews only warns: the data still publishes without them
    previews = write_previews(staging.zarr, staging.previews, manifest.name)
    phase.lap("previews")
    return report, previews


class _Phases:
    """Wall seconds of the ingest's phases, each lapped when it ends (also logged)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(self.seconds.get(name, 0.0) + now - self._t, 3)
        self._t = now
        log.debug("phase %s: %.2f s", name, self.seconds[name])


def _unit_seconds(results: list[dict[str, Any]]) -> dict[str, float]:
    """Seconds per stage summed over units (units from a ledger of an older version may
    have none)."""
    total: dict[str, float] = {}
    for r in results:
        for k, v in r.get("seconds", {}).items():
            total[k] = total.get(k, 0.0) + v
    return {k: round(v, 3) for k, v in total.items()}


def _open_parts(manifest: Manifest, inv: Inventory, run_id: str, staging: Staging,
                n_units: int) -> tuple[Staging, zarr.Group, dict[str, dict]]:
    """The staged store and the units a previous run of the same job finished (none for a
    fresh staging, whose groups are created here). A staging whose version was published
    (a run stopped after writing ``version.json``) or lost its store starts over, in a new
    version: nothing writes into a published version."""
    ledger = staging.ledger
    if staging.published or (ledger.created() and not staging.zarr.child("zarr.json").exists()):
        staging.discard(parts=True)
        staging = open_staging(staging.root, staging.name, run_id)
        ledger = staging.ledger
    if ledger.created():
        done = {k: e for k, e in ledger.finished().items() if ledger.usable(e, staging.wds)}
        log.info("resuming %s: %d of %d units already done", staging.base.url, len(done),
                 n_units)
        return staging, zarr.open_group(staging.zarr.zarr_store(), mode="r+",
                                        zarr_format=3), done
    zroot = zarr.open_group(staging.zarr.zarr_store(), mode="w", zarr_format=3,
                            attributes={"cloudmic": _provenance(manifest, inv, run_id)})
    create_groups(zroot, inv.groups, manifest.storage)
    ledger.mark_created()
    return staging, zroot, {}


def _seal(adapter: Adapter, manifest: Manifest, inv: Inventory, results: list[dict],
          zroot: zarr.Group, zarr_loc: Location, wds_loc: Location,
          ) -> tuple[dict[str, int], dict[str, Any]]:
    """After the units: dataset-level attributes, index.json, sizes, consolidated metadata."""
    remove_partials(wds_loc, zarr_loc)
    adapter.finalize(inv, zroot)
    index = _index(manifest, inv, results)
    wds_loc.child(rl.INDEX).write_bytes(json.dumps(index, indent=1, sort_keys=True).encode())
    sizes = {"array_bytes": sum(r["array_bytes"] for r in results),
             "zarr_bytes": _stored_bytes(zarr_loc),
             "wds_bytes": sum(r["shard"]["bytes"] for r in results)}
    prov = {**zroot.attrs["cloudmic"], "sizes": sizes,
            "records": {k: v["records"] for k, v in index["splits"].items()}}
    zroot.update_attributes({"cloudmic": prov})
    zarr.consolidate_metadata(zarr_loc.zarr_store())
    return sizes, prov


def _stored_bytes(zarr_loc: Location) -> int:
    """Bytes of the store without its root zarr.json, which a resumed run may find already
    consolidated by the run it resumes (so the figure, and the bytes, stay the same)."""
    sizes = zarr_loc.fs.du(zarr_loc.path, total=False)
    root = zarr_loc.child("zarr.json").path
    return int(sum(v for k, v in sizes.items() if k.rstrip("/") != root))


def _split_sizes(inv: Inventory) -> dict[str, int]:
    """Samples per split; a group without a unit dim (one cell) counts as one sample."""
    sizes: dict[str, int] = {}
    for g in inv.groups:
        sizes[g.split] = sizes.get(g.split, 0) + g.length
    return sizes
