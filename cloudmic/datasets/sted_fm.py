"""STED-FM (datasets.md §2): 224x224 STED crops as npz members of tar archives.

Members have no extension and no folders; each is ``numpy.savez(image=..., metadata=...)``
where metadata is a pickled dict. It is read with a restricted unpickler (never
``allow_pickle=True``) straight from the tar, local or on an object store, without
unpacking. The class is ``metadata["protein-id"]``, never parsed from the member name.
One group per archive; samples sorted by member name, as the authors' reader does.

Lossless metadata (issue 15): each member's whole dict is stored, typed, as canonical JSON
(``metadata_json`` per sample, the record's ``json["metadata"]``); after the units, every
flat scalar key becomes a typed ``meta_<key>`` coordinate and ``msr-metadata``'s
``PhysicalSize{X,Y}`` become ``pixel_size_{x,y}`` coordinates (see :func:`add_metadata_coords`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import posixpath
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cloudmic.datasets.base import Adapter, GroupSpec, Inventory, Unit, VarSpec
from cloudmic.errors import SourceError
from cloudmic.formats.npz import read_npz_member
from cloudmic.formats.safe_tar import scan_tar
from cloudmic.formats.tiff import decode_tiff_bytes
from cloudmic.storage.location import Location

log = logging.getLogger(__name__)

HINT = "or make a synthetic copy with: cloudmic synth sted-fm --out DIR"
TEXT_COORDS = ("protein", "image_id", "chan_id", "user_id", "image_type")
META_KEYS = {"protein": "protein-id", "image_id": "image-id", "chan_id": "chan-id",
             "user_id": "user-id", "image_type": "image-type"}
META_JSON = "metadata_json"
# JSON has no tuple or bytes; these tag them (and escape a real one-key dict using a tag).
TAGS = ("__tuple__", "__bytes__", "__dict__")
MAX_META_COORDS = 64  # more keys than this stay in metadata_json only (hostile input)
PIXEL_AXES = ("X", "Y")


def metadata_to_json(meta: dict | None) -> str:
    """Canonical JSON of a metadata dict (sorted keys, ASCII): re-runs write the same bytes
    and ``json.loads`` gives every value back with its type (``null`` for no metadata)."""
    return json.dumps(_tag(meta), sort_keys=True, ensure_ascii=True, separators=(",", ":"))


def metadata_from_json(text: str) -> dict | None:
    """The exact metadata dict, also tuples and bytes (``json.loads`` leaves them tagged)."""
    return _untag(json.loads(text))


def _tag(v: Any) -> Any:
    if isinstance(v, dict):
        out = {k: _tag(x) for k, x in v.items()}
        return {"__dict__": out} if len(out) == 1 and next(iter(out)) in TAGS else out
    if isinstance(v, list):
        return [_tag(x) for x in v]
    if isinstance(v, tuple):
        return {"__tuple__": [_tag(x) for x in v]}
    if isinstance(v, bytes):
        return {"__bytes__": base64.b64encode(v).decode("ascii")}
    return v


def _untag(v: Any) -> Any:
    """Top-down, so an escaped ``{"__dict__": {"__tuple__": ...}}`` stays a dict."""
    if isinstance(v, list):
        return [_untag(x) for x in v]
    if not isinstance(v, dict):
        return v
    if len(v) == 1 and (tag := next(iter(v))) in TAGS:
        x = v[tag]
        if tag == "__bytes__":
            return base64.b64decode(x)
        return tuple(_untag(y) for y in x) if tag == "__tuple__" else {
            k: _untag(y) for k, y in x.items()}
    return {k: _untag(x) for k, x in v.items()}


def grid_position(member: str) -> tuple[int, int]:
    """(j, i) from the end of a member name ``...-{j}-{i}``; (-1, -1) if absent."""
    parts = member.removesuffix(".tif").rsplit("-", 2)
    try:
        return int(parts[-2]), int(parts[-1])
    except (ValueError, IndexError):
        return -1, -1


def record_key(member: str) -> str:
    """WebDataset splits keys at the first dot: drop the TIFF suffix, no other dots."""
    return member.removesuffix(".tif").replace(".", "_")


class STEDFM(Adapter):
    def archives(self, source: str | Path) -> tuple[Location, list[str]]:
        loc = Location.parse(str(source))
        if loc.path.endswith(".tar"):
            if not loc.exists():
                raise SourceError(loc.url, "the archive does not exist",
                                  f"pass a STED-FM .tar or the folder holding them, {HINT}")
            return Location(loc.url.rsplit("/", 1)[0], loc.storage_options), [loc.name]
        if not loc.exists():
            raise SourceError(loc.url, "the source does not exist",
                              f"pass the folder holding the STED-FM .tar archives, {HINT}")
        names = sorted(posixpath.basename(p) for p in loc.fs.glob(f"{loc.path}/*.tar"))
        if not names:
            raise SourceError(loc.url, "no .tar archive here",
                              f"pass the folder holding the STED-FM .tar archives, {HINT}")
        return loc, names

    def group_name(self, archive: str) -> str:
        return archive.removesuffix(".tar").removeprefix(self.opts["archive_prefix"])

    def scan(self, source: str | Path) -> Inventory:
        folder, names = self.archives(source)
        groups, files, total, count = [], {}, 0, 0
        for archive in names:
            loc = folder.child(archive)
            with loc.fs.open(loc.path, "rb") as f:
                entries = scan_tar(f, archive=loc.url,
                                   max_member_bytes=self.opts["max_member_bytes"])
                if not entries:
                    raise SourceError(loc.url, "the archive holds no member",
                                      "download the archive again")
                size = sum(e.size for e in entries)
                if size > self.opts["max_archive_bytes"]:
                    raise SourceError(loc.url, f"{size:,} bytes of members, above the limit "
                                      f"of {self.opts['max_archive_bytes']:,}",
                                      "raise options.max_archive_bytes in the manifest")
                entries = sorted(entries, key=lambda e: e.name)
                dup = [a.name for a, b in zip(entries, entries[1:], strict=False)
                       if a.name == b.name]
                if dup:
                    raise SourceError(f"{loc.url}: member {dup[0]!r}", "the name occurs twice",
                                      "rebuild the archive with unique member names")
                f.seek(entries[0].offset)
                first = self.decode(f.read(entries[0].size), entries[0].name, loc.url)[0]
            name = self.group_name(archive)
            groups.append(self._group(name, archive, [e.name for e in entries], first))
            files[name] = {"url": loc.url, "members": [(e.offset, e.size) for e in entries]}
            total += size
            count += len(entries)
        return Inventory(self.manifest.name, Path(folder.path), tuple(groups), files, total,
                         count)

    def decode(self, blob: bytes, member: str, archive: str) -> tuple[np.ndarray, dict | None]:
        """(image, metadata or None) of one member: an npz, or an ImageJ TIFF (no metadata)."""
        where = f"{archive}: member {member!r}"
        size = self.opts["crop_size"]
        if blob[:4] in (b"II*\x00", b"MM\x00*"):  # shape checked before a pixel is decoded
            image, meta = decode_tiff_bytes(blob, where=where, expected_shape=(size, size)), None
        else:
            sample = read_npz_member(blob, member=where)
            image, meta = sample.image, sample.metadata
        if image.shape != (size, size) or image.dtype.name not in ("uint8", "uint16"):
            raise SourceError(where, f"image is {image.shape} {image.dtype}, expected "
                              f"({size}, {size}) uint8 or uint16", "download the archive again")
        return image, meta

    def _group(self, name: str, archive: str, members: list[str], first: np.ndarray) -> GroupSpec:
        n, size = len(members), self.opts["crop_size"]
        jj, ii = np.array([grid_position(m) for m in members], dtype="int32").reshape(-1, 2).T
        variables = [
            VarSpec("image", ("sample", "y", "x"), (n, size, size), first.dtype.name,
                    {"long_name": self.manifest.variables["image"].description,
                     "units": self.manifest.variables["image"].units}),
            VarSpec("sample", ("sample",), (n,), "int64", {"long_name": "position in archive "
                    "order sorted by member name"}, data=np.arange(n, dtype="int64"), coord=True),
            VarSpec("member", ("sample",), (n,), "str", {"long_name": "tar member name"},
                    data=np.array(members, dtype=str), coord=True),
            VarSpec("j", ("sample",), (n,), "int32", {"long_name": "crop grid row (STED-FM j)"},
                    data=jj, coord=True),
            VarSpec("i", ("sample",), (n,), "int32", {"long_name": "crop grid column (i)"},
                    data=ii, coord=True),
            VarSpec("label", ("sample",), (n,), "int16",
                    {"long_name": "class index into attrs['classes'], -1 if unlabelled"},
                    coord=True),
            VarSpec("sha256", ("sample",), (n,), "str", {"long_name": "sha256 of the member"},
                    coord=True),
            *(VarSpec(c, ("sample",), (n,), "str", {"long_name": f"metadata[{META_KEYS[c]!r}]"
                      + (" ('unknown' when unlabelled)" if c == "protein" else "")}, coord=True)
              for c in TEXT_COORDS),
            VarSpec(META_JSON, ("sample",), (n,), "str",
                    {"long_name": "the member's whole metadata dict as canonical JSON (null: "
                     "none); tuples/bytes tagged, see cloudmic.datasets.sted_fm."
                     "metadata_from_json"}, coord=True),
        ]
        attrs = {"archive": archive, "classes": list(self.opts["classes"])}
        return GroupSpec(name, "sample", n, tuple(variables), attrs)

    def read_unit(self, inv: Inventory, unit: Unit) -> dict[str, np.ndarray]:
        src = inv.files[unit.group]
        loc = Location.parse(src["url"])
        spec = inv.group(unit.group).var("image")
        members = inv.group(unit.group).var("member").data
        classes = {c: k for k, c in enumerate(self.opts["classes"])}
        n = unit.stop - unit.start
        out = {"image": np.empty((n, *spec.shape[1:]), dtype=spec.dtype),
               "label": np.full(n, -1, dtype="int16"), "sha256": np.empty(n, dtype=object),
               META_JSON: np.empty(n, dtype=object),
               **{c: np.empty(n, dtype=object) for c in TEXT_COORDS}}
        unlabelled: list[str] = []
        with loc.fs.open(loc.path, "rb") as f:
            for j, (offset, size) in enumerate(src["members"][unit.start:unit.stop]):
                member = str(members[unit.start + j])
                f.seek(offset)
                blob = f.read(size)
                image, meta = self.decode(blob, member, src["url"])
                if image.dtype != out["image"].dtype:
                    raise SourceError(f"{src['url']}: member {member!r}", f"dtype {image.dtype}"
                                      f", but the archive's first crop is {out['image'].dtype}",
                                      "an archive must hold one dtype: rebuild it")
                out["image"][j], out["sha256"][j] = image, hashlib.sha256(blob).hexdigest()
                out[META_JSON][j] = metadata_to_json(meta)
                meta = meta or {}
                if "protein-id" not in meta:
                    unlabelled.append(member)
                for c in TEXT_COORDS:
                    value = meta.get(META_KEYS[c])
                    out[c][j] = "unknown" if c == "protein" and value is None else (
                        "" if value is None else str(value))
                out["label"][j] = classes.get(out["protein"][j], -1)
        if unlabelled:
            log.warning("%s: %d crop(s) without protein-id metadata stored as unlabelled "
                        "('unknown'), e.g. %r", src["url"], len(unlabelled), unlabelled[0])
        return {k: (v.astype(str) if v.dtype == object else v) for k, v in out.items()}

    def records(self, inv: Inventory, unit: Unit,
                data: dict[str, np.ndarray]) -> Iterator[dict[str, Any]]:
        members = inv.group(unit.group).var("member").data
        for j in range(unit.stop - unit.start):
            i = unit.start + j
            meta = {c: str(data[c][j]) for c in TEXT_COORDS}
            yield {"__key__": record_key(str(members[i])), "image.npy": data["image"][j],
                   "cls": int(data["label"][j]),
                   "json": {"dataset": inv.dataset, "member": str(members[i]), **meta,
                            "metadata": json.loads(str(data[META_JSON][j])),
                            "sha256": str(data["sha256"][j]),
                            "zarr": {"group": unit.group, "sample": i}}}

    def finalize(self, inv: Inventory, root: Any) -> None:
        """Class list and per-class counts, so the labelled subset is known without pixels."""
        for g in inv.groups:
            proteins = root[g.name]["protein"][...]
            names, counts = np.unique(proteins.tolist(), return_counts=True)
            per_class = {str(k): int(v) for k, v in zip(names, counts, strict=True)}
            root[g.name].update_attributes({
                "class_counts": per_class, "labelled": int(g.length - per_class.get("unknown", 0)),
                "unlabelled": per_class.get("unknown", 0)})
            add_metadata_coords(root[g.name], g)



# ---- typed per-sample coordinates from metadata_json, added after the units ----------------
# The keys are known only once every member was read, so the columns are derived from the
# stored metadata_json in two bounded passes (types, then values) of one chunk at a time.

_DTYPES = {"bool": ("bool", False), "int": ("int64", 0), "float": ("float64", np.nan),
           "str": ("str", "")}
_ABSENT = {"bool": False, "int": 0, "float": "NaN", "str": ""}  # JSON-safe, for attrs


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int" if -2**63 <= v < 2**63 else "bigint"
    if isinstance(v, float | str):
        return type(v).__name__
    return "other"  # dict, list, tagged tuple/bytes: JSON only


def _pixel_size(meta: dict, axis: str) -> tuple[float, str] | None:
    msr = meta.get("msr-metadata")
    size = msr.get(f"PhysicalSize{axis}") if isinstance(msr, dict) else None
    if isinstance(size, bool) or not isinstance(size, int | float):
        return None
    unit = msr.get(f"PhysicalSize{axis}Unit")
    return float(size), unit if isinstance(unit, str) else ""


def _chunks(arr: Any, n: int) -> Iterator[tuple[int, list[dict | None]]]:
    step = arr.chunks[0]
    for start in range(0, n, step):
        yield start, [json.loads(t) for t in arr[start:start + step].tolist()]


def _plan_columns(g: Any, spec: GroupSpec) -> dict[str, dict[str, Any]]:
    """Coordinate name -> how to fill it, from a first pass over metadata_json."""
    kinds: dict[str, set[str]] = {}
    units: dict[str, set[str]] = {a: set() for a in PIXEL_AXES}
    for _, metas in _chunks(g[META_JSON], spec.length):
        for meta in metas:
            for k, v in (meta or {}).items():
                kinds.setdefault(k, set()).add(_kind(v))
            for a in PIXEL_AXES:
                if (ps := _pixel_size(meta or {}, a)) is not None:
                    units[a].add(ps[1])
    taken = {v.basename for v in spec.variables}
    plan: dict[str, dict[str, Any]] = {}
    flat = sorted(k for k, ks in kinds.items() if "other" not in ks)
    for key in flat[:MAX_META_COORDS]:
        name = "meta_" + re.sub(r"[^0-9A-Za-z_]", "_", key)
        if name in taken or name in plan:
            log.warning("metadata key %r: coordinate name %r is taken; the key stays in %s",
                        key, name, META_JSON)
            continue
        ks = kinds[key]
        kind = next(iter(ks)) if len(ks) == 1 and next(iter(ks)) in _DTYPES else "text"
        plan[name] = {"key": key, "kind": kind, "types": sorted(ks)}
    if len(flat) > MAX_META_COORDS:
        log.warning("%d flat metadata keys; only the first %d get a coordinate, all stay in %s",
                    len(flat), MAX_META_COORDS, META_JSON)
    for a in PIXEL_AXES:
        if units[a]:
            plan[f"pixel_size_{a.lower()}"] = {"axis": a, "kind": "float", "units": units[a]}
            plan[f"pixel_size_{a.lower()}_unit"] = {"axis": a, "kind": "str", "unit": True}
    return plan


def _cell(how: dict[str, Any], meta: dict | None) -> Any:
    """One sample's value of a planned column (the column's fill when absent)."""
    meta = meta or {}
    if "axis" in how:
        ps = _pixel_size(meta, how["axis"])
        return _DTYPES[how["kind"]][1] if ps is None else ps[1 if how.get("unit") else 0]
    if how["key"] not in meta:
        return "" if how["kind"] == "text" else _DTYPES[how["kind"]][1]
    v = meta[how["key"]]
    return (v if isinstance(v, str) else json.dumps(v)) if how["kind"] == "text" else v


def _attrs(name: str, how: dict[str, Any]) -> dict[str, Any]:
    if "axis" not in how:
        typed = how["kind"] != "text"
        note = "" if typed else " as text (its types differ: exact values in metadata_json)"
        return {"long_name": f"metadata[{how['key']!r}]{note}", "metadata_key": how["key"],
                "metadata_types": how["types"],
                "fill_when_absent": _ABSENT[how["kind"] if typed else "str"]}
    src = f"metadata['msr-metadata']['PhysicalSize{how['axis']}"
    if how.get("unit"):
        return {"long_name": f"{src}Unit'] ('' when absent)"}
    units = sorted(how["units"])
    return {"long_name": f"pixel size along {how['axis'].lower()}, {src}'] (NaN when absent)",
            **({"units": units[0]} if len(units) == 1 else {"units_per_sample": f"{name}_unit"})}


def add_metadata_coords(g: Any, spec: GroupSpec) -> None:
    """Typed ``meta_<key>`` and ``pixel_size_*`` coordinates of one staged group, derived
    from its metadata_json; re-running writes the same bytes (resumed ingests run it again)."""
    plan = _plan_columns(g, spec)
    step = g[META_JSON].chunks[0]
    arrays = {}
    for name, how in plan.items():
        dtype, fill = _DTYPES[how["kind"] if how["kind"] != "text" else "str"]
        arrays[name] = g.create_array(
            name, shape=(spec.length,), dtype=str if dtype == "str" else dtype, chunks=(step,),
            fill_value=fill, dimension_names=("sample",), attributes=_attrs(name, how),
            overwrite=True)
    for start, metas in _chunks(g[META_JSON], spec.length):
        for name, how in plan.items():
            dtype = str if how["kind"] in ("text", "str") else arrays[name].dtype
            arrays[name][start:start + len(metas)] = np.array([_cell(how, m) for m in metas],
                                                              dtype=dtype)
    base = [v.basename for v in spec.variables if v.coord and v.dims != (v.basename,)]
    g["image"].update_attributes({"coordinates": " ".join(base + list(plan))})
    g.update_attributes({"metadata_coords": {h["key"]: n for n, h in plan.items() if "key" in h}})
