"""Verify a dataset: shard checksums, Zarr and WebDataset agreeing record by record."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import random
import tarfile
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zarr

from cloudmic.errors import StoreNotFoundError
from cloudmic.storage import root_layout as rl
from cloudmic.storage.location import Location
from cloudmic.storage.requests import AT_ONCE, at_once
from cloudmic.storage.versions import Dataset, resolve


@dataclass
class VerifyReport:
    url: str
    checks: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {"url": self.url, "ok": self.ok, "checks": self.checks,
                "problems": self.problems, "warnings": self.warnings}


class _HashingReader:
    """A read-only file that hashes what is read through it."""

    def __init__(self, f: Any) -> None:
        self.f, self.size, self.h = f, 0, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        chunk = self.f.read(n)
        self.h.update(chunk)
        self.size += len(chunk)
        return chunk


# a shard is read back in pieces of this size: with s3fs's default block (50 MiB) the
# read-ahead and aiohttp's buffers held ~160 MB in the ingest's main process (issue 16)
READ_BLOCK = 8 << 20


def _read_shard(loc: Location, keep: int = 0, rng: random.Random | None = None,
                ) -> tuple[int, str, list[tuple[str, dict[str, bytes]]]]:
    """Size and sha256 of a shard in one sequential read, and up to ``keep`` of its records
    (key, extension -> bytes), drawn uniformly with ``rng`` (reservoir sampling) from the same
    read: memory holds those records and one read block, whatever the shard's size."""
    kept: list[tuple[str, dict[str, bytes]]] = []
    with loc.fs.open(loc.path, "rb", block_size=READ_BLOCK) as f:
        src = _HashingReader(f)
        if keep:
            rng = rng or random.Random(0)
            seen, key, slot = 0, None, None  # slot: where the current record goes, if kept
            with tarfile.open(fileobj=src, mode="r|") as tar:
                for m in tar:
                    if not m.isfile():
                        continue
                    name, _, ext = m.name.partition(".")
                    if name != key:  # a WebDataset record's files are consecutive
                        key, seen = name, seen + 1
                        slot = seen - 1 if seen <= keep else rng.randrange(seen)
                        if slot < keep:
                            rec: dict[str, bytes] = {}
                            if slot < len(kept):
                                kept[slot] = (key, rec)
                            else:
                                kept.append((key, rec))
                    if slot < keep:  # else tarfile reads past the member (still hashed)
                        rec[ext] = tar.extractfile(m).read()
        while src.read(READ_BLOCK):  # the rest (the tar's end blocks), or all of it
            pass
    return src.size, src.h.hexdigest(), sorted(kept, key=lambda kv: kv[0])


def _stored(wloc: Location) -> dict[str, dict[str, Any]]:
    """What the store holds under ``wloc``: path -> listing entry (size; on object stores
    the checksum, :meth:`Location.stored_md5`), from one listing (a LIST per 1000 objects),
    never from a cached one."""
    wloc.fs.invalidate_cache(wloc.path)
    try:
        found = wloc.fs.find(wloc.path, detail=True)
    except FileNotFoundError:
        return {}
    return {p.rstrip("/"): info for p, info in found.items()}


def _check_stored(report: VerifyReport, wloc: Location, shards: list[tuple[str, dict]],
                  listed_in: str, etags: Mapping[str, str]) -> tuple[set[int], set[int]]:
    """Check every shard without reading it: its size in the store's listing, and on an
    object store its checksum (S3 ETag, Azure Content-MD5, GCS md5Hash) against the one its
    upload must have (``etags``, by shard URL: what
    :func:`cloudmic.ingest.wds_writer.write_shard` computed from the bytes it sent). Returns
    the shards found wrong (reported) and those whose ETag could not be checked (none known,
    or one that differs: a changed object, a store whose ETags are not md5s, e.g. with
    SSE-KMS, an Azure blob put in blocks, which has no Content-MD5): only a read decides
    those."""
    stored = _stored(wloc)
    unchecked: set[int] = set()
    bad: set[int] = set()
    for i, (_split, s) in enumerate(shards):
        shard = wloc.inside(s["url"], listed_in)
        info = stored.get(shard.path)
        if info is None:
            report.problems.append(f"{shard.url}: missing (index.json lists it)")
            bad.add(i)
        elif int(info["size"]) != s["bytes"]:
            report.problems.append(f"{shard.url}: {info['size']} bytes stored, index.json "
                                   f"says {s['bytes']}")
            bad.add(i)
        elif wloc.caps.checksum:
            want = etags.get(s["url"])
            if not want or wloc.stored_md5(info) != want:
                unchecked.add(i)
    what = ("size and checksum (from the md5 of the bytes sent)" if wloc.caps.checksum
            else "size")
    report.checks.append(f"{len(shards) - len(unchecked | bad)} of {len(shards)} shard(s): "
                         f"{what} as written")
    return bad, unchecked


def open_zarr_root(loc: Location) -> zarr.Group:
    return zarr.open_group(loc.zarr_store(read_only=True), mode="r", zarr_format=3)


def _compare_record(root: zarr.Group, rec: dict[str, bytes], where: str,
                    rng: random.Random | None = None) -> str | None:
    """None if the record's arrays equal their regions in Zarr, else the problem. With
    ``rng``, each array is compared on one inner chunk of its region drawn at random (its
    shape against the whole region): the ingest's check, whose records of large tiles read
    ~60 MB of Zarr per DeepCAD record otherwise (issue 16). A record cut from the wrong
    place differs in that chunk unless the data is the same there (a constant label
    volume, zero borders); a full check (`cloudmic verify`) compares whole regions."""
    meta = json.loads(rec["json"])
    region = dict(meta["zarr"])
    g = root[region.pop("group")]
    tables = region.pop("tables", {})  # structured npy field f <-> Zarr array prefix+f
    paths = region.pop("paths", {})  # npy field -> array path in the group (pyramid level 0)
    for ext, payload in rec.items():
        if not ext.endswith("npy"):
            continue
        var = ext.removesuffix(".npy")
        shipped = np.load(io.BytesIO(payload), allow_pickle=False)
        if var in tables:
            pairs = [(f"{var}.{f}", g[tables[var] + f][...], shipped[f])
                     for f in shipped.dtype.names]
        else:
            arr = g[paths.get(var, var)]
            sel = _selection(arr, region)
            if shipped.shape != _shape(sel):
                return (f"{where}: {var} is {shipped.shape} in the WebDataset record, its Zarr "
                        f"region {_shape(sel)}")
            if rng is not None:
                sel, shipped = _one_chunk(arr, sel, shipped, rng)
            pairs = [(var, arr[sel], shipped)]
        for label, stored, sent in pairs:
            if stored.dtype != sent.dtype or not np.array_equal(stored, sent):
                return f"{where}: {label} differs between the WebDataset record and Zarr"
    return None


def _selection(arr: zarr.Array, region: dict[str, int | list[int]]) -> tuple[int | slice, ...]:
    """A record's region: per dimension an index, or ``[start, stop]`` for a tile (clipped to
    the array, as numpy clips), the whole dimension when the region does not name it."""
    def pick(d: str | None, n: int) -> int | slice:
        r = region.get(d)
        if r is None:
            return slice(0, n)
        return slice(*slice(*r).indices(n)[:2]) if isinstance(r, list) else r
    names = arr.metadata.dimension_names or (None,) * arr.ndim  # unnamed: whole dims
    return tuple(pick(d, n) for d, n in zip(names, arr.shape, strict=True))


def _shape(sel: tuple[int | slice, ...]) -> tuple[int, ...]:
    return tuple(max(0, s.stop - s.start) for s in sel if isinstance(s, slice))


def _one_chunk(arr: zarr.Array, sel: tuple[int | slice, ...], shipped: np.ndarray,
               rng: random.Random) -> tuple[tuple[int | slice, ...], np.ndarray]:
    """``sel`` narrowed to one inner chunk along each of its ranges, drawn with ``rng``, and
    the same part of ``shipped`` (which holds ``arr[sel]``)."""
    narrow: list[int | slice] = []
    part: list[slice] = []
    for s, c in zip(sel, arr.chunks, strict=True):
        if not isinstance(s, slice) or s.stop <= s.start:
            narrow.append(s)
            if isinstance(s, slice):
                part.append(slice(None))
            continue
        k = rng.randrange(s.start // c, -(-s.stop // c))
        a, b = max(s.start, k * c), min(s.stop, (k + 1) * c)
        narrow.append(slice(a, b))
        part.append(slice(a - s.start, b - s.start))
    return tuple(narrow), shipped[tuple(part)]


def verify_dataset(root: Location, dataset: str, *, records: int = 16,
                   seed: int = 0, expected: dict[str, Any] | None = None,
                   strict: bool = False, full: bool = True, sample: float = 0.05,
                   etags: Mapping[str, str] | None = None,
                   staged: bool = False) -> VerifyReport:
    """Check ``root/<dataset>.zarr`` against ``root/<dataset>.wds`` (of the current version
    when ``root`` has versions of it); never raises on a problem it can describe (it is
    reported), only when nothing is published there.

    The samples found per split are compared with the publisher's counts: ``expected``
    (split -> :class:`cloudmic.manifest.Expected`), or by default those of the manifest the
    store names in its provenance. A partial copy is a warning, or a problem with
    ``strict``.

    ``full`` (the default, and ``cloudmic verify``) reads every shard back and checks its
    size and sha256 against index.json. ``full=False`` is the ingest's pre-publish check of
    shards it has just written: every shard's size, and on S3 its ETag, from a listing
    (``etags``: shard URL -> the ETag its upload must have, see
    :func:`~cloudmic.ingest.wds_writer.write_shard`), and reads back
    only a seeded sample (``sample`` of the shards, at least one) plus every shard whose
    ETag could not be checked. Either way the records compared with Zarr come from shards
    that are read (and hashed) once; the full check compares their whole regions, the
    ingest's their shapes and, for values, one random inner chunk each.

    ``staged``: ``root`` is a version folder not published yet (the ingest's check before
    it publishes); its parts are read as they are, without its ``version.json``."""
    ds = Dataset(root, dataset, None) if staged else resolve(root.child(rl.zarr_name(dataset)))
    zloc, wloc = ds.zarr, ds.wds
    report = VerifyReport(zloc.url)
    if not zloc.child("zarr.json").exists():
        raise StoreNotFoundError(f"{zloc.url}: no dataset here (no zarr.json); see cloudmic ls")
    zroot = open_zarr_root(zloc)
    if "cloudmic" not in zroot.attrs:
        report.problems.append(f"{zloc.url}: root attributes lack the 'cloudmic' provenance key")
    report.checks.append("zarr metadata opens (consolidated)")
    idx_loc = wloc.child(rl.INDEX)
    if not idx_loc.exists():
        report.problems.append(f"{idx_loc.url}: missing")
        return report
    index = json.loads(idx_loc.read_bytes())
    rng = random.Random(seed)
    shards = [(split, s) for split, info in index["splits"].items() for s in info["shards"]]
    for split, info in index["splits"].items():
        if "zarr_dim" not in info:
            continue
        length = zroot[split][info.get("zarr_axis", info["zarr_dim"])].shape[0]
        if length != info["zarr_length"]:
            report.problems.append(f"{split}: Zarr has {length} along {info['zarr_dim']}, "
                                   f"index.json says {info['zarr_length']}")
    listed_in = wloc.child(rl.INDEX).url
    order = rng.sample(range(len(shards)), len(shards))  # a seeded shuffle
    # read back: every shard, or (the ingest's check) ``sample`` of them, at least one, plus
    # those the listing cannot vouch for; a fixed four read half the shards of a small
    # dataset and made its check cost more than a full-size one's (issue 16). The records
    # compared with Zarr come from the first sampled shards.
    sampled = order if full else order[:max(1, math.ceil(sample * len(shards)))]
    picked = set(sampled[:max(1, records // 4)])
    if full:
        reread = set(range(len(shards)))
    else:
        bad, unchecked = _check_stored(report, wloc, shards, listed_in, etags or {})
        reread = (unchecked | set(sampled)) - bad
    compared = 0
    for i in sorted(reread):
        s = shards[i][1]
        shard = wloc.inside(s["url"], listed_in)
        keep = max(1, records // len(picked)) if i in picked else 0
        try:
            size, digest, recs = _read_shard(shard, keep, rng)
        except FileNotFoundError:
            report.problems.append(f"{shard.url}: missing (index.json lists it)")
            continue
        except tarfile.TarError as exc:
            report.problems.append(f"{shard.url}: not a readable tar ({exc})")
            continue
        if (size, digest) != (s["bytes"], s["sha256"]):
            report.problems.append(f"{shard.url}: size/sha256 differ from index.json")
            continue
        # this shard's records, their regions read concurrently, then dropped: memory holds
        # one shard's sample (up to 4 DeepCAD records of ~31 MB), whatever the dataset
        jobs = [(zroot, rec, f"{s['url']}:{key}", None if full else random.Random(rng.random()))
                for key, rec in recs]
        report.problems += [p for p in at_once(lambda job: _compare_record(*job), jobs) if p]
        compared += len(jobs)
    report.checks.append(f"{len(reread)} of {len(shards)} shard(s) read back: size and sha256 "
                         "match index.json")
    report.checks.append(f"{compared} record(s) equal to their Zarr regions" + (
        "" if full else " (their shape; their values on one random inner chunk each)"))
    images, ngff_problems = _check_ngff(zroot)
    report.problems.extend(ngff_problems)
    if images:
        report.checks.append(f"{images} OME-NGFF image group(s): levels, axes and labels agree")
    report.warnings.extend(_dataset_warnings(zroot))
    _check_counts(report, zroot, expected, strict)
    return report


def _check_counts(report: VerifyReport, zroot: zarr.Group, expected: dict[str, Any] | None,
                  strict: bool) -> None:
    prov = zroot.attrs.get("cloudmic", {})
    if expected is None:
        manifest = _manifest_of(zroot)
        expected = manifest.expected_counts() if manifest is not None else {}
    if not expected or "groups" not in prov:
        return
    found: dict[str, int] = {}
    for name, g in prov["groups"].items():
        split = name.split("/", 1)[0]
        found[split] = found.get(split, 0) + int(g.get("length", 1))
    labelled = {}
    for name, exp in expected.items():
        if exp.labelled is not None and name in zroot:
            n = zroot[name].attrs.get("labelled")
            if n is not None:
                labelled[name] = int(n)
    complete, partial = compare_counts(found, expected, labelled)
    report.checks.extend(complete)
    (report.problems if strict else report.warnings).extend(partial)


def compare_counts(found: dict[str, int], expected: dict[str, Any],
                   labelled: dict[str, int] | None = None) -> tuple[list[str], list[str]]:
    """(complete, partial): one line per split with a published count, "found N of M
    expected". A split absent from the copy counts as 0, unless the count is ``optional``
    (one of several alternative archives)."""
    complete: list[str] = []
    partial: list[str] = []
    for name, exp in expected.items():
        if name not in found and exp.optional:
            continue
        n = found.get(name, 0)
        parts = [(n, exp.samples, "samples")]
        if exp.labelled is not None and name in (labelled or {}):
            parts.append((labelled[name], exp.labelled, "labelled samples"))
        for got, want, what in parts:
            line = f"{name}: found {got} of {want} expected {what}"
            if got == want:
                complete.append(line)
                continue
            why = ("not in this copy" if name not in found else "a partial copy" if got < want
                   else "more than the publisher states")
            partial.append(f"{line} ({why}{'; ' + exp.source if exp.source else ''})")
    return complete, partial


def _check_ngff(zroot: zarr.Group) -> tuple[int, list[str]]:
    """The OME-NGFF 0.5 rules a reader relies on (full validation is ome-zarr-models' job, in
    the tests): every level path is an array whose ``dimension_names`` are the axes, levels
    never grow, and each listed label image exists with as many levels as its image."""
    problems: list[str] = []
    images = 0
    groups = [(p, n) for p, n in zroot.members(max_depth=None) if isinstance(n, zarr.Group)]
    for sub, node in groups:
        ms = node.attrs.get("ome", {}).get("multiscales")
        if not ms or "image-label" in node.attrs.get("ome", {}):
            continue
        images += 1
        problems += _check_multiscales(node, ms[0], sub)
        for name in _label_names(node):
            lab = f"labels/{name}"
            if lab not in node:
                problems.append(f"{sub}: label image {name!r} is listed but missing")
                continue
            lms = node[lab].attrs.get("ome", {}).get("multiscales", [{}])[0]
            problems += _check_multiscales(node[lab], lms, f"{sub}/{lab}")
            if len(lms.get("datasets", [])) != len(ms[0]["datasets"]):
                problems.append(f"{sub}/{lab}: {len(lms.get('datasets', []))} levels, the "
                                f"image has {len(ms[0]['datasets'])}")
    return images, problems


def _label_names(node: zarr.Group) -> list[str]:
    return (node["labels"].attrs.get("ome", {}).get("labels", []) if "labels" in node else [])


def _check_multiscales(node: zarr.Group, ms: dict, where: str) -> list[str]:
    axes = tuple(a["name"] for a in ms.get("axes", []))
    problems, prev = [], None
    for ds in ms.get("datasets", []):
        try:
            arr = node[ds["path"]]
        except KeyError:
            problems.append(f"{where}: level {ds['path']!r} is missing")
            continue
        if tuple(arr.metadata.dimension_names or ()) != axes:
            problems.append(f"{where}/{ds['path']}: dimension_names "
                            f"{arr.metadata.dimension_names} are not the axes {axes}")
        if prev is not None and any(a > b for a, b in zip(arr.shape, prev, strict=False)):
            problems.append(f"{where}/{ds['path']}: a level larger than the one before")
        prev = arr.shape
    if not ms.get("datasets"):
        problems.append(f"{where}: multiscales without datasets")
    return problems


def _manifest_of(zroot: zarr.Group) -> Any:
    """The shipped manifest the store's provenance names, or None."""
    from cloudmic.manifest import load_manifest

    name = zroot.attrs.get("cloudmic", {}).get("dataset")
    try:
        return load_manifest(name)
    except Exception:  # a store built from a manifest this install does not ship
        return None


def _dataset_warnings(zroot: zarr.Group) -> list[str]:
    """The dataset adapter's own content checks (e.g. DL-SMLM's WF == sum of raw frames)."""
    from cloudmic.datasets import get_adapter

    manifest = _manifest_of(zroot)
    if manifest is None:
        return []
    try:
        adapter = get_adapter(manifest)
    except Exception:  # a store built from a manifest this install does not ship
        return []
    check = getattr(adapter, "verify_store", None)
    return check(zroot) if check else []


def verify_against_source(adapter: Any, inv: Any, units: list[Any], zroot: zarr.Group, *,
                          samples: int = 2, rows: int = 16, seed: int = 0) -> list[str]:
    """Read about ``rows`` rows of each of ``samples`` random units from the source again and
    compare every array they fill with its region in the staged store (catches a unit
    written from stale or wrong data, which Zarr-vs-WebDataset agreement alone cannot).
    A window, not the whole unit: whole units made this check read half the source of a
    dataset of four units (issue 16), and a window at a random place inside a unit catches
    a unit written from the wrong rows just as well. The units are checked concurrently."""
    rng = random.Random(seed)
    windows = [(adapter, inv, zroot, _window(inv.group(u.group), u, rows, rng))
               for u in rng.sample(units, min(samples, len(units)))]
    return [p for found in at_once(lambda w: _check_window(*w), windows) for p in found]


def _check_window(adapter: Any, inv: Any, zroot: zarr.Group, unit: Any) -> list[str]:
    """One unit's window: its stored regions are read while the source is read again."""
    group, g = inv.group(unit.group), zroot[unit.group]
    specs = [spec for spec in group.variables if spec.data is None]

    def stored(spec: Any) -> np.ndarray:
        if group.unit_dim is None:
            return g[spec.name][...]
        start, stop = spec.unit_region(unit.start, unit.stop, group.length)
        return g[spec.name][start:stop]

    with ThreadPoolExecutor(min(AT_ONCE, max(1, len(specs))),
                            thread_name_prefix="cloudmic-verify") as pool:
        regions = {spec.name: pool.submit(stored, spec) for spec in specs}
        data = adapter.read_unit(inv, unit)
        problems = []
        for spec in specs:
            if spec.name not in data:
                continue
            kept, sent = regions[spec.name].result(), np.asarray(data[spec.name])
            if kept.shape != sent.shape or not np.array_equal(kept, sent.astype(kept.dtype)):
                problems.append(f"unit {unit.key}: {unit.group}/{spec.name} differs from a "
                                "fresh read of its source")
    return problems


def _window(group: Any, unit: Any, rows: int, rng: random.Random) -> Any:
    """About ``rows`` consecutive rows of ``unit`` at a random place, starting and ending on
    multiples of the group's largest downsampling factor, so that every pyramid level's rows
    in the window are whole (the unit itself if it is not longer, or has no unit dim)."""
    if group.unit_dim is None or unit.stop - unit.start <= rows:
        return unit
    step = max(v.factor for v in group.variables)
    span = -(-rows // step) * step
    if unit.start % step or span >= unit.stop - unit.start:
        return unit
    start = unit.start + step * rng.randrange((unit.stop - unit.start - span) // step + 1)
    return dataclasses.replace(unit, start=start, stop=min(unit.stop, start + span))
