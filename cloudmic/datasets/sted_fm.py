"""STED-FM (datasets.md §2): 224x224 STED crops as npz members of tar archives.

Members have no extension and no folders; each is ``numpy.savez(image=..., metadata=...)``
where metadata is a pickled dict. It is read with a restricted unpickler (never
``allow_pickle=True``) straight from the tar, local or on an object store, without
unpacking. The class is ``metadata["protein-id"]``, never parsed from the member name.
One group per archive; samples sorted by member name, as the authors' reader does.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
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
