"""platelet-em (datasets.md §5): SBF-SEM volumes with semantic and instance labels.

One group per volume (``50``, ``24``), an OME-NGFF 0.5 image (ADR 0004)::

    <vol>/{0,1,2}/image(z,y,x)          uint16 or float (0..65535), 40x10x10 nm at level 0
    <vol>/labels/semantic/{k}/semantic  uint8 class ids 0..6 (names in the attributes)
    <vol>/labels/cell/{k}/cell          uint32 instance ids, unique within the volume
    <vol>/labels/organelle/{k}/organelle

Units are slabs of z slices; each reads its slices of the image page by page and its slab
of the labels, and computes every level from level 0 in memory. The RLE JSON labels are the
truth; colour TIFs are decoded through their palette only when no JSON exists (with a
warning: the RGBA release colours instance ids through a 256-entry LUT, so ids can collide).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from cloudmic.datasets.base import Adapter, GroupSpec, Inventory, Unit
from cloudmic.errors import ManifestError, SourceError
from cloudmic.formats.checksum import sha256_file
from cloudmic.formats.label_palette import (
    JET_RGBA_SEMANTIC,
    OLD_RGB_SEMANTIC,
    decode_palette_labels,
    jet_colours,
    jet_palette,
)
from cloudmic.formats.label_rle import RleRuns, parse_rle
from cloudmic.formats.tiff_pages import iter_frame_blocks, movie_info
from cloudmic.layout import label_stats, ngff

log = logging.getLogger(__name__)

HINT = "or make a synthetic copy with: cloudmic synth platelet-em --out DIR"
LABELS = ("semantic", "cell", "organelle")
LABEL_FILES = {"semantic": ("labels-semantic", "{vol}-semantic"),
               "cell": ("labels-instance", "{vol}-instance-cell"),
               "organelle": ("labels-instance", "{vol}-instance-organelle")}
STORE_DTYPES = {"semantic": "uint8", "cell": "uint32", "organelle": "uint32"}
IMAGE_DTYPES = ("uint16", "float32", "float64")
# Instance file names per `options.instance_variant`. Older releases named the instance files
# `50-instance-cell-2d.tif` / `-3d` (datasets.md §5; the seed page's figures still do), the
# current one `50-instance-cell.tif`. Nothing documents which of several is meant (2-D and
# 3-D instance ids need not agree), so "auto" takes the one that exists and refuses to guess
# when several do.
INSTANCE_VARIANTS = {"auto": ("", "-2d", "-3d"), "plain": ("",), "2d": ("-2d",), "3d": ("-3d",)}


def _json_or_tif(base: Path) -> Path | None:
    """The JSON labels are the truth; the colour TIF only stands in when no JSON exists."""
    for suffix in (".json", ".tif"):
        path = base.with_name(base.name + suffix)
        if path.is_file():
            return path
    return None


class PlateletEM(Adapter):
    @property
    def steps(self) -> list[list[int]]:
        return self.opts["pyramid"]

    def axes(self) -> list[ngff.Axis]:
        px = self.opts["pixel_nm"]
        return [ngff.Axis(d, "space", "nm", float(px[d])) for d in ("z", "y", "x")]

    # --- scan -------------------------------------------------------------------------------
    def find_root(self, source: Path) -> Path:
        for root in (source / "platelet-em", source):
            if (root / "images").is_dir():
                return root
        raise SourceError(source, "no platelet-em/images folder here",
                          f"pass the folder the platelet-em zip unpacked into, {HINT}")

    def scan(self, source: str | Path) -> Inventory:
        self._check_tiling()
        root = self.find_root(Path(source))
        images = sorted((root / "images").glob("*-images.tif"))
        if not images:
            raise SourceError(root / "images", "no <N>-images.tif volume (e.g. 50-images.tif)",
                              f"pass a complete platelet-em folder, {HINT}")
        groups, files, total = [], {}, 0
        for img in images:
            vol = img.name.removesuffix("-images.tif")
            info = movie_info(img)  # page headers, truncation and axes checked here
            if info.dtype.name not in IMAGE_DTYPES:
                raise SourceError(img, f"image dtype {info.dtype} is not one of {IMAGE_DTYPES}",
                                  "pass the platelet-em image TIFF (uint16, or float 0..65535)")
            shape = (info.frames, *info.shape)
            labels = {name: self._check_label(root, vol, name, shape) for name in LABELS}
            image = {"path": str(img), "bytes": img.stat().st_size, "sha256": sha256_file(img)}
            files[vol] = {"image": image, **labels}
            total += image["bytes"] + sum(lab["bytes"] for lab in labels.values())
            groups.append(self._group(vol, shape, info.dtype.name, files[vol]))
        count = sum(1 + len(LABELS) for _ in groups)
        return Inventory(self.manifest.name, root, tuple(groups), files, total, count)

    def _instance_suffixes(self) -> tuple[str, ...]:
        choice = self.opts.get("instance_variant", "auto")
        if choice not in INSTANCE_VARIANTS:
            raise ManifestError(f"manifest {self.manifest.name!r}: options.instance_variant="
                                f"{choice!r} is not one of {', '.join(INSTANCE_VARIANTS)}")
        return INSTANCE_VARIANTS[choice]

    def _check_tiling(self) -> None:
        size, tz = self.manifest.webdataset.samples_per_shard, self.opts["tile"]["z"]
        if size % tz:
            raise ManifestError(f"manifest {self.manifest.name!r}: options.tile.z={tz} must "
                                f"divide webdataset.samples_per_shard={size}, so tiles never "
                                "straddle two work units")

    def _label_path(self, root: Path, vol: str, name: str) -> Path:
        """The JSON (else the colour TIF) of one label volume, under any accepted name."""
        folder, stem = LABEL_FILES[name]
        suffixes = ("",) if name == "semantic" else self._instance_suffixes()
        bases = [root / folder / (stem.format(vol=vol) + sfx) for sfx in suffixes]
        found = [p for p in map(_json_or_tif, bases) if p is not None]
        if len(found) > 1:
            raise SourceError(found[0].parent, f"ambiguous: volume {vol} has {name} labels "
                              f"under {len(found)} names ({', '.join(p.name for p in found)})",
                              "keep one of them, or choose one with options.instance_variant "
                              "(plain, 2d or 3d) in a copy of the manifest")
        if found:
            return found[0]
        json_path, tif_path = bases[0].with_suffix(".json"), bases[0].with_suffix(".tif")
        also = ("" if len(bases) == 1 else
                " (nor a " + " / ".join(s for s in suffixes if s) + " variant)")
        raise SourceError(json_path, f"missing: volume {vol} has neither {json_path.name} nor "
                          f"{tif_path.name}{also}", f"add the {name} labels of the release, {HINT}")

    def _check_label(self, root: Path, vol: str, name: str, shape: tuple[int, ...]) -> dict:
        """Check a label file once at scan: shape, runs, overlaps and id ranges, before any
        write; only the facts are kept. JSON labels are checked on their runs, without
        building the volume."""
        path = self._label_path(root, vol, name)
        if path.suffix == ".tif":
            log.warning("%s: no JSON labels for volume %s; decoding the colour TIF through its "
                        "palette (lossy for instance ids: colours can collide)", path, vol)
            arr = self._decode_tif(path, name, shape, max_id=None)
            lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
            source_dtype = str(arr.dtype)
            del arr
        else:
            runs = self._runs(path, shape)
            (lo, hi), source_dtype = runs.value_range(), str(runs.dtype)
        self._check_ids(path, name, lo, hi)
        return {"path": str(path), "format": path.suffix[1:], "bytes": path.stat().st_size,
                "sha256": sha256_file(path), "max_id": hi, "source_dtype": source_dtype}

    def load_label(self, path: Path, name: str, shape: tuple[int, ...], max_id: int | None,
                   start: int = 0, stop: int | None = None) -> np.ndarray:
        """Slices ``start:stop`` (default: all) of a label volume in the store dtype, ids
        checked against the class list (semantic) or the store dtype (instances).

        Only those slices are decoded, so memory follows the slab, not the volume: JSON
        labels build the slab from their runs (every run of the file is still checked),
        colour TIFs read its pages only."""
        stop = shape[0] if stop is None else stop
        store = np.dtype(STORE_DTYPES[name])
        if path.suffix == ".json":
            runs = self._runs(path, shape)
            self._check_ids(path, name, *runs.value_range())
            return runs.slab(start, stop, dtype=store)
        arr = self._decode_tif(path, name, shape, max_id, start, stop)
        self._check_ids(path, name, *((int(arr.min()), int(arr.max())) if arr.size else (0, 0)))
        return arr.astype(store, copy=False)

    def _runs(self, path: Path, shape: tuple[int, ...]) -> RleRuns:
        """The checked runs of a JSON label file. Parsed again by every unit: at full size
        that takes 4-40 ms a file (issue 16), too little to be worth a per-process cache."""
        return parse_rle(path, expected_shape=shape,
                         max_voxels=int(self.opts["max_label_voxels"]))

    def _check_ids(self, path: Path, name: str, lo: int, hi: int) -> None:
        store = np.dtype(STORE_DTYPES[name])
        top = len(self.opts["classes"]) - 1 if name == "semantic" else np.iinfo(store).max
        if lo < 0 or hi > top:
            what = f"class ids 0..{top}" if name == "semantic" else f"ids 0..{top}"
            raise SourceError(path, f"{name} labels hold values {lo}..{hi}, outside {what}",
                              "pass the platelet-em labels of this volume")

    def _decode_tif(self, path: Path, name: str, shape: tuple[int, ...], max_id: int | None,
                    start: int = 0, stop: int | None = None) -> np.ndarray:
        """Slices ``start:stop`` (default: all, and then the whole file is checked) of a
        colour label TIF, decoded through its palette."""
        stop = shape[0] if stop is None else stop
        with tifffile.TiffFile(path) as tif:
            # one page per slice: a slab reads its own pages (the scan checked the whole file)
            paged = len(tif.pages) == shape[0] and 0 < stop - start < shape[0]
            rgb = tif.asarray(key=range(start, stop)) if paged else tif.asarray()
        if paged and rgb.ndim == 3 and stop - start == 1:
            rgb = rgb[np.newaxis]  # tifffile gives one page without the page axis
        want = (stop - start, *shape[1:]) if paged else shape
        if rgb.ndim != 4 or rgb.shape[:3] != want:
            raise SourceError(path, f"label volume shape {rgb.shape[:3]} (colours "
                              f"{rgb.shape[3:]}) differs from its image {shape}"
                              + (f" (slices {start}:{stop})" if paged else ""),
                              "pass the label TIF that belongs to this image volume")
        rgb = rgb if paged else rgb[start:stop]
        channels = rgb.shape[-1]
        if name == "semantic":
            palette = OLD_RGB_SEMANTIC if channels == 3 else JET_RGBA_SEMANTIC
        elif channels == 4:
            # the RGBA release colours id/max(id) through jet: max from the scan, or the
            # number of distinct colours when the ids are 1..K without collisions
            if max_id is None:
                colours = np.unique(rgb.reshape(-1, channels), axis=0)
                max_id = max(1, sum(1 for c in colours if c[3] != 0))
            palette = jet_palette(max_id)
        else:
            raise SourceError(path, "no palette is known for RGB instance labels",
                              "use the JSON labels of the release")
        return decode_palette_labels(rgb, palette, name=str(path), instance=name != "semantic",
                                     dtype=STORE_DTYPES[name])

    def _group(self, vol: str, shape: tuple[int, ...], dtype: str, files: dict) -> GroupSpec:
        axes, steps = self.axes(), self.steps
        var = self.manifest.variables
        variables = ngff.level_variables("", "image", axes, shape, dtype, steps,
                                         {"long_name": var["image"].description,
                                          "units": var["image"].units})
        subgroups: dict[str, dict[str, Any]] = {"labels": ngff.labels_group_attrs(LABELS)}
        classes = dict(enumerate(self.opts["classes"]))
        for name in LABELS:
            variables += ngff.level_variables(
                f"labels/{name}", name, axes, shape, STORE_DTYPES[name], steps,
                {"long_name": var[name].description,
                 "source_dtype": files[name]["source_dtype"]})
            if name == "semantic":
                colours = {i: rgba for rgba, i in JET_RGBA_SEMANTIC.items()}
                subgroups[f"labels/{name}"] = ngff.label_image_attrs(name, axes, steps,
                                                                     colours, classes)
            else:
                table = jet_colours(files[name]["max_id"])
                subgroups[f"labels/{name}"] = ngff.label_image_attrs(
                    name, axes, steps, dict(enumerate(table.tolist())))
        attrs = {**ngff.image_attrs(vol, axes, "image", steps),
                 "volume": vol, "classes": self.opts["classes"],
                 "pixel_size_nm": self.opts["pixel_nm"],
                 "sources": {k: {f: v[f] for f in ("path", "bytes", "sha256")}
                             for k, v in files.items()}}
        return GroupSpec(vol, "z", shape[0], tuple(variables), attrs, subgroups)

    def finalize(self, inv: Inventory, root: Any) -> None:
        """Per-chunk class counts of each volume's semantic labels (level 0), for label-aware
        sampling without reading pixels (``PatchStream(..., min_foreground=...)``)."""
        for g in inv.groups:
            arr = root[f"{g.name}/labels/semantic/0/semantic"]
            attrs = label_stats.stats_attr(arr[...], tuple(arr.chunks), self.opts["classes"])
            arr.update_attributes(attrs)

    # --- units ------------------------------------------------------------------------------
    def read_unit(self, inv: Inventory, unit: Unit) -> dict[str, np.ndarray]:
        files, group = inv.files[unit.group], inv.group(unit.group)
        shape = group.var("0/image").shape
        image_path = Path(files["image"]["path"])
        _, image = next(iter_frame_blocks(image_path, unit.stop - unit.start,
                                          start=unit.start, stop=unit.stop))
        out = {f"{k}/image": lev
               for k, lev in enumerate(ngff.pyramid(image, self.steps, labels=False))}
        for name in LABELS:  # only this unit's slices are decoded (issue 16)
            slab = self.load_label(Path(files[name]["path"]), name, shape,
                                   files[name]["max_id"], unit.start, unit.stop)
            for k, lev in enumerate(ngff.pyramid(slab, self.steps, labels=True)):
                out[f"labels/{name}/{k}/{name}"] = lev
        return out

    def records(self, inv: Inventory, unit: Unit,
                data: dict[str, np.ndarray]) -> Iterator[dict[str, Any]]:
        """Tiles of image + the three label volumes; the key names the tile's voxel box."""
        tile, px = self.opts["tile"], self.opts["pixel_nm"]
        paths = {"image": "0/image", **{n: f"labels/{n}/0/{n}" for n in LABELS}}
        _, ny, nx = inv.group(unit.group).var("0/image").shape
        key = self.manifest.webdataset.key
        for z0 in range(unit.start, unit.stop, tile["z"]):
            z1 = min(z0 + tile["z"], unit.stop)
            for y0 in range(0, ny, tile["y"]):
                y1 = min(y0 + tile["y"], ny)
                for x0 in range(0, nx, tile["x"]):
                    x1 = min(x0 + tile["x"], nx)
                    box = {"z": [z0, z1], "y": [y0, y1], "x": [x0, x1]}
                    rel = (slice(z0 - unit.start, z1 - unit.start), slice(y0, y1), slice(x0, x1))
                    rec: dict[str, Any] = {
                        "__key__": key.format(volume=unit.group, z=z0, y=y0, x=x0)}
                    for field, path in paths.items():
                        rec[f"{field}.npy"] = np.ascontiguousarray(data[path][rel])
                    rec["json"] = {
                        "dataset": inv.dataset, "volume": unit.group, "voxels": box,
                        "origin_nm": {d: box[d][0] * px[d] for d in box},
                        "pixel_size_nm": px, "classes": self.opts["classes"],
                        "zarr": {"group": unit.group, "paths": paths, **box}}
                    yield rec
