"""DL-SMLM (datasets.md §1): one folder per cell with a raw widefield stack, its sum
image, an 8x super-resolution render and the ThunderSTORM localizations.

Published tree: ``<Structure>/cell<N>/{WF_raw.tif, WF<N>.tif, SR<N>.tif, SR_locs.csv}``,
one zip per structure (``CCPs.zip`` holds ``CCPs/cell<N>/...``). The source may hold the
unpacked folders, the zips, or both (a folder wins over its zip); zips are unpacked through
``cloudmic.sources.ZipArchive`` (hostile names, links and bombs refused) into the cache.
Each cell becomes one group ``<Structure>/cell<N>`` with coordinates in nanometres (both
grids from the image's top-left corner, as ThunderSTORM measures x and y) and ``t`` in
seconds; the localizations become ``loc_<column>`` arrays along a ``loc`` dim.
"""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cloudmic.datasets.base import Adapter, GroupSpec, Inventory, Unit, VarSpec
from cloudmic.errors import SourceError
from cloudmic.formats.thunderstorm import read_thunderstorm
from cloudmic.formats.tiff import TiffInfo, inspect_tiff, read_tiff
from cloudmic.sources import ZipArchive

log = logging.getLogger(__name__)

HINT = "or make a synthetic copy with: cloudmic synth dl-smlm --out DIR"
CELL = re.compile(r"cell(\d+)$")
FILES = ("WF_raw.tif", "WF{n}.tif", "SR{n}.tif", "SR_locs.csv")


def centres(n: int, pixel_nm: float) -> np.ndarray:
    """Pixel centres in nm from the top-left image corner: pixel i spans [i, i+1) * size."""
    return (np.arange(n, dtype="float64") + 0.5) * pixel_nm


class DLSMLM(Adapter):
    def structure_name(self, folder: str) -> str | None:
        """Canonical (ASCII) structure name of a folder; the Greek β is accepted too."""
        name = unicodedata.normalize("NFC", folder)
        name = self.opts.get("structure_aliases", {}).get(name, name)
        return name if name in self.opts["structures"] else None

    def find_structures(self, source: Path) -> list[tuple[str, Path, str | None]]:
        """(structure, folder, zip name or None): the unpacked folders, then the structure
        zips that have no folder beside them, unpacked into the cache."""
        if not source.is_dir():
            raise SourceError(source, "the source folder does not exist" if not source.exists()
                              else "the source is not a folder",
                              f"pass the folder holding the structure folders (CCPs, ...), {HINT}")
        found: list[tuple[str, Path, str | None]] = []
        for p in sorted(source.iterdir()):
            if p.name.startswith(".") or not p.is_dir():
                continue  # e.g. 'data information.txt' or the downloaded zips
            name = self.structure_name(p.name)
            if name is None:
                raise SourceError(p, "unknown structure folder; DL-SMLM has "
                                  f"{', '.join(self.opts['structures'])}",
                                  "move it out of the source folder")
            found.append((name, p, None))
        folders = {name for name, _, _ in found}
        zips: dict[str, Path] = {}
        for name, zpath in self.structure_zips(source):
            if name in folders:
                log.info("%s: using the unpacked %s folder beside it", zpath, name)
            elif name in zips:
                raise SourceError(zpath, f"a second zip of {name}, besides {zips[name].name}",
                                  "keep one of the two zips in the source folder")
            else:
                zips[name] = zpath
        found += [(name, self.unpack(name, z), z.name) for name, z in zips.items()]
        if not found:
            raise SourceError(source, "no DL-SMLM structure folder or zip here (expected "
                              f"{', '.join(self.opts['structures'])}, or CCPs.zip, ...)",
                              f"pass the folder holding the structures or their zips, {HINT}")
        return sorted(found, key=lambda f: f[0])

    def structure_zips(self, source: Path) -> list[tuple[str, Path]]:
        """The published per-structure zips (``CCPs.zip``, ``ER-sec61β.zip``, ...); other
        zips are left alone, as other files are."""
        zips = [p for p in sorted(source.iterdir())
                if p.is_file() and p.suffix.lower() == ".zip" and not p.name.startswith(".")]
        named = [(self.structure_name(p.stem), p) for p in zips]
        return [(name, p) for name, p in named if name is not None]

    def unpack(self, structure: str, zpath: Path) -> Path:
        """Unpack one structure zip into the cache (a re-run skips members already there);
        return its structure folder. The cache key follows the zip's path, size and mtime,
        so a new download never mixes with the files of the old one."""
        st = zpath.stat()
        key = hashlib.sha256(f"{zpath.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
        dest = self.cache_folder() / "unzipped" / key.hexdigest()[:16]
        with ZipArchive(zpath) as archive:
            files = [m for m in archive.members if not m.is_dir and not m.junk]
            tops = sorted({m.name.split("/", 1)[0] for m in files if "/" in m.name})
            loose = [m.name for m in files if "/" not in m.name]
            if tops and all(CELL.match(t) for t in tops) and not loose:
                dest = dest / zpath.stem  # a zip of the cell folders alone
                top = None
            elif (len(tops) == 1 and not loose
                  and self.structure_name(tops[0]) == structure):
                top = tops[0]
            else:
                shown = ", ".join((tops + loose)[:4]) or "nothing"
                raise SourceError(zpath, f"expected the {structure}/cell<N>/ folders of the "
                                  f"published zip, found {shown}",
                                  "pass the structure zip as published, or unzip it by hand")
            log.info("%s: unpacking %d files into %s", zpath, len(files), dest)
            archive.extract(dest)
        return dest / top if top else dest

    def cell_files(self, cell_dir: Path, n: int) -> dict[str, Path]:
        names = {k: f.format(n=n) for k, f in zip(("wf_raw", "wf", "sr", "locs"), FILES,
                                                   strict=True)}
        present = {p.name for p in cell_dir.iterdir() if not p.name.startswith(".")}
        for key, name in names.items():
            if name not in present:
                what = {"wf_raw": "raw widefield stack", "wf": "widefield sum image",
                        "sr": "super-resolution image", "locs": "localization table"}[key]
                raise SourceError(cell_dir / name, f"missing: the cell has no {what}",
                                  "restore it from the structure's zip, or remove the cell")
        stray = sorted(present - set(names.values()))
        if stray:
            raise SourceError(cell_dir / stray[0], "stray file in a cell folder (expected "
                              f"{', '.join(names.values())})", "move it out of the source")
        return {k: cell_dir / v for k, v in names.items()}

    def check_cell(self, files: dict[str, Path]) -> dict[str, TiffInfo]:
        infos = {k: inspect_tiff(files[k]) for k in ("wf_raw", "wf", "sr")}
        raw, wf, sr = infos["wf_raw"], infos["wf"], infos["sr"]
        expect = {"wf_raw": "uint16", "wf": "float32", "sr": "float32"}
        for k, info in infos.items():
            if info.dtype.name != expect[k]:
                raise SourceError(info.path, f"dtype {info.dtype}, expected {expect[k]}",
                                  "replace it with the published file")
        if len(wf.shape) != 2:
            raise SourceError(wf.path, f"expected a 2-D image, found {wf.shape}",
                              "replace it with the published file")
        if len(raw.shape) != 3 or raw.shape[1:] != wf.shape:
            raise SourceError(raw.path, f"shape {raw.shape}, expected (frames, {wf.shape[0]}, "
                              f"{wf.shape[1]}) to match {wf.path.name}",
                              "replace it with the published raw stack of this cell")
        factor = self.manifest.variables["sr"].scale_factors[0]
        if sr.shape != (wf.shape[0] * factor, wf.shape[1] * factor):
            raise SourceError(sr.path, f"shape {sr.shape}, expected {factor}x the widefield "
                              f"{wf.shape}", "replace it with the published SR image")
        return infos

    def scan(self, source: str | Path) -> Inventory:
        source = Path(source)
        groups, files, total, count = [], {}, 0, 0
        for structure, sdir, archive in self.find_structures(source):
            cells = []
            for p in sorted(sdir.iterdir()):
                if p.name.startswith("."):
                    continue
                m = CELL.match(p.name)
                if not (p.is_dir() and m):
                    raise SourceError(p, "expected only cell<N> folders in a structure folder",
                                      "move it out of the source folder")
                cells.append((int(m.group(1)), p))
            for n, cdir in sorted(cells):
                f = self.cell_files(cdir, n)
                infos = self.check_cell(f)
                table = read_thunderstorm(f["locs"])
                name = f"{structure}/cell{n}"
                groups.append(self._group(name, structure, sdir.name, n, infos, table,
                                          archive))
                files[name] = {k: str(v) for k, v in f.items()}
                total += sum(i.file_bytes for i in infos.values()) + f["locs"].stat().st_size
                count += 4
        return Inventory(self.manifest.name, source, tuple(groups), files, total, count)

    def _group(self, name: str, structure: str, folder: str, n: int,
               infos: dict[str, TiffInfo], table: Any, archive: str | None = None) -> GroupSpec:
        o, v = self.opts, self.manifest.variables
        (t, h, w), (hs, ws) = infos["wf_raw"].shape, infos["sr"].shape
        nm = {"units": "nm", "long_name": "position from the top-left image corner"}
        variables = [
            VarSpec("wf_raw", ("t", "y", "x"), (t, h, w), "uint16",
                    {"long_name": v["wf_raw"].description, "units": v["wf_raw"].units,
                     **v["wf_raw"].attrs}),
            VarSpec("wf", ("y", "x"), (h, w), "float32",
                    {"long_name": v["wf"].description, "units": v["wf"].units}),
            VarSpec("sr", ("y_sr", "x_sr"), (hs, ws), "float32",
                    {"long_name": v["sr"].description, "units": v["sr"].units}),
            # the frame interval is not published (only the 50 ms exposure): t is the index
            VarSpec("t", ("t",), (t,), "int64",
                    {"long_name": "frame index", "exposure_s": o["exposure_s"],
                     "provenance": "no frame interval is published; the exposure per frame "
                                   "is an attribute"},
                    data=np.arange(t, dtype="int64"), coord=True),
            *(VarSpec(d, (d,), (n,), "float64", nm, data=centres(n, px), coord=True)
              for d, n, px in (("y", h, o["wf_pixel_nm"]), ("x", w, o["wf_pixel_nm"]),
                               ("y_sr", hs, o["sr_pixel_nm"]), ("x_sr", ws, o["sr_pixel_nm"]))),
            VarSpec("file", ("file",), (4,), "str", {"long_name": "source file"},
                    data=np.array([Path(i.path).name for i in infos.values()]
                                  + ["SR_locs.csv"]), coord=True),
            VarSpec("source_sha256", ("file",), (4,), "str",
                    {"long_name": "sha256 of the source file"}, coord=True),
        ]
        for col, values in table.columns.items():
            variables.append(VarSpec(f"loc_{col}", ("loc",), (len(table),), values.dtype.name,
                                     {"units": table.units.get(col, ""),
                                      "long_name": f"ThunderSTORM column {col!r}"}))
        attrs = {"structure": structure, "source_folder": f"{folder}/cell{n}", "cell": n,
                 "wf_pixel_nm": o["wf_pixel_nm"], "sr_pixel_nm": o["sr_pixel_nm"],
                 "exposure_s": o["exposure_s"], "localizations": len(table),
                 "loc_columns": list(table.columns), "loc_header": list(table.source_header)}
        if archive is not None:
            attrs["source_archive"] = archive  # the zip the cell folder was unpacked from
        return GroupSpec(name, None, 1, tuple(variables), attrs)

    def read_unit(self, inv: Inventory, unit: Unit) -> dict[str, np.ndarray]:
        group, files = inv.group(unit.group), inv.files[unit.group]
        out: dict[str, np.ndarray] = {}
        shas = []
        for key in ("wf_raw", "wf", "sr"):
            arr, sha = read_tiff(Path(files[key]))
            spec = group.var(key)
            if arr.shape != spec.shape or arr.dtype != np.dtype(spec.dtype):
                raise SourceError(files[key], f"changed since the scan: now {arr.shape} "
                                  f"{arr.dtype}", "re-run on a source that is not being modified")
            out[key] = arr
            shas.append(sha)
        blob = Path(files["locs"]).read_bytes()
        table = read_thunderstorm(Path(files["locs"]))
        if len(table) != group.attrs["localizations"]:
            raise SourceError(files["locs"], "changed since the scan",
                              "re-run on a source that is not being modified")
        for col, values in table.columns.items():
            out[f"loc_{col}"] = values
        out["source_sha256"] = np.array([*shas, hashlib.sha256(blob).hexdigest()])
        return out

    def records(self, inv: Inventory, unit: Unit,
                data: dict[str, np.ndarray]) -> Iterator[dict[str, Any]]:
        group = inv.group(unit.group)
        cols = group.attrs["loc_columns"]
        locs = np.empty(len(data[f"loc_{cols[0]}"]) if cols else 0,
                        dtype=[(c, data[f"loc_{c}"].dtype) for c in cols])
        for c in cols:
            locs[c] = data[f"loc_{c}"]
        yield {"__key__": unit.group.replace("/", "_"), "wf_raw.npy": data["wf_raw"],
               "wf.npy": data["wf"], "sr.npy": data["sr"], "locs.npy": locs,
               "json": {"dataset": inv.dataset, "structure": group.attrs["structure"],
                        "cell": group.attrs["cell"], "wf_pixel_nm": group.attrs["wf_pixel_nm"],
                        "sr_pixel_nm": group.attrs["sr_pixel_nm"],
                        "loc_units": {c: group.var(f"loc_{c}").attrs["units"] for c in cols},
                        "source_sha256": dict(zip(group.var("file").data.tolist(),
                                                  data["source_sha256"].tolist(), strict=True)),
                        "zarr": {"group": unit.group, "tables": {"locs": "loc_"}}}}

    def verify_store(self, root: Any) -> list[str]:
        """Warnings with figures: WF<N> against the sum of the raw frames, and
        localizations outside the field of view."""
        warnings = []
        for name, g in sorted(_cell_groups(root)):
            raw_sum = g["wf_raw"][...].sum(axis=0, dtype="float64")
            wf = g["wf"][...].astype("float64")
            diff = np.abs(wf - raw_sum)
            if diff.max() > 1e-3 * max(1.0, np.abs(raw_sum).max()):
                warnings.append(f"{name}: wf differs from the sum of the wf_raw frames "
                                f"(max |diff| {diff.max():.4g}, mean {diff.mean():.4g}, "
                                f"{(diff > 0.5).mean():.2%} of pixels off by > 0.5)")
            h, w = g["wf"].shape
            px = g.attrs["wf_pixel_nm"]
            if "loc_x" in g and "loc_y" in g:
                x, y = g["loc_x"][...], g["loc_y"][...]
                out = (x < 0) | (y < 0) | (x >= w * px) | (y >= h * px)
                if out.any():
                    warnings.append(f"{name}: {int(out.sum())} of {len(x)} localizations "
                                    f"({out.mean():.2%}) lie outside the {w * px:g} x "
                                    f"{h * px:g} nm field of view")
        return warnings


def _cell_groups(root: Any) -> Iterator[tuple[str, Any]]:
    for sname, structure in root.groups():
        for cname, cell in structure.groups():
            yield f"{sname}/{cname}", cell
