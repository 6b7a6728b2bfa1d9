"""BioSR Microtubules as repackaged by DeepTrackAI (datasets.md §3).

Published tree (under ``BioSR/Microtubules``): ``{training,validate}_{wf,gt}/NNNNNNNN.tif``
and ``test_wf/level_LL/NNN.tif`` with ``test_gt/NNN.tif``. Two variants are in
circulation (float32 WF and GT both 128x128; uint16 WF 128 with a 2x GT), so dtype
and shape are read from every file and the GT/WF ratio may be 1 or 2.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from cloudmic.datasets.base import Adapter, GroupSpec, Inventory, Unit, VarSpec
from cloudmic.errors import SourceError
from cloudmic.formats.tiff import TiffInfo, inspect_tiff, is_tiff_name, read_tiff
from cloudmic.manifest import Split

log = logging.getLogger(__name__)

SYNTH_HINT = "or make a synthetic copy with: cloudmic synth biosr --out DIR"


def pixel_centres(n: int, factor: int) -> np.ndarray:
    """Centres of ``n`` pixels of a grid ``factor`` x finer than the WF grid, in WF pixels.

    WF pixel i covers [i - 0.5, i + 0.5]; a 2x GT pixel j covers half of that, so its
    centre sits at (j + 0.5) / 2 - 0.5. Both grids then share one coordinate system.
    """
    return (np.arange(n, dtype="float64") + 0.5) / factor - 0.5


class BioSR(Adapter):
    def find_root(self, source: Path) -> Path:
        if not source.exists():
            raise SourceError(
                source, "the source folder does not exist",
                f"pass the folder that holds BioSR/Microtubules, {SYNTH_HINT}",
            )
        if not source.is_dir():
            raise SourceError(source, "the source is not a folder", "pass the dataset folder")
        markers = {f"{s.source}_{k}" for s in self.manifest.splits.values() for k in ("wf", "gt")}
        for cand in self._candidates(source):
            if cand.is_dir() and markers & {p.name for p in cand.iterdir()}:
                return cand
        found = sorted(p.name for p in source.iterdir())[:8]
        raise SourceError(
            source,
            "no BioSR tree here (expected folders "
            f"{', '.join(sorted(markers))}; found {found or 'nothing: the folder is empty'})",
            f"pass the folder that holds BioSR/Microtubules, {SYNTH_HINT}",
        )

    @staticmethod
    def _candidates(source: Path) -> list[Path]:
        """Where the tree may start: the folder itself, its Microtubules or
        BioSR/Microtubules, or that one folder down (a repository archive unpacks into
        ``biosr_dataset-main/``; a checkout is ``biosr_dataset/``)."""
        tops = [source] + sorted(p for p in source.iterdir()
                                 if p.is_dir() and not p.name.startswith("."))
        return [c for top in tops for c in (top, top / "Microtubules",
                                            top / "BioSR" / "Microtubules")]

    @staticmethod
    def list_tiffs(folder: Path, allow_dirs: bool = False) -> dict[str, Path]:
        """Stem -> path of every TIFF in a folder; anything else there is an error."""
        out: dict[str, Path] = {}
        for p in sorted(folder.iterdir()):
            if p.name.startswith("."):
                continue  # .DS_Store and friends: not data, never published
            if p.is_dir():
                if allow_dirs:
                    continue
                raise SourceError(p, "unexpected folder in the BioSR tree",
                                  "move it out of the source folder")
            if not is_tiff_name(p.name):
                raise SourceError(
                    p, "stray file that is not a TIFF (the published layout has only .tif files)",
                    "move it out of the source folder, or convert it to a single-page TIFF",
                )
            out[p.stem] = p
        return out

    @staticmethod
    def check_pairs(wf: dict[str, Path], gt: dict[str, Path], wf_dir: Path, gt_dir: Path) -> None:
        for mine, theirs, their_dir, what in ((gt, wf, wf_dir, "widefield input"),
                                              (wf, gt, gt_dir, "ground truth")):
            orphans = sorted(set(mine) - set(theirs))
            if orphans:
                more = f" (and {len(orphans) - 1} more)" if len(orphans) > 1 else ""
                raise SourceError(
                    mine[orphans[0]],
                    f"has no {what} partner {their_dir / mine[orphans[0]].name}{more}",
                    "restore the missing file from the published dataset, or remove the orphan",
                )

    def _split_files(self, root: Path, split: Split) -> tuple[list[str], dict[str, Any]] | None:
        wf_dir, gt_dir = root / f"{split.source}_wf", root / f"{split.source}_gt"
        if not wf_dir.exists() and not gt_dir.exists():
            return None
        for d in (wf_dir, gt_dir):
            if not d.is_dir():
                other = gt_dir if d is wf_dir else wf_dir
                raise SourceError(d, f"missing, but {other.name} is there",
                                  "restore the folder from the published dataset")
        gt = self.list_tiffs(gt_dir)
        if not split.levels:
            wf = self.list_tiffs(wf_dir)
            self.check_pairs(wf, gt, wf_dir, gt_dir)
            stems = sorted(gt)
            return stems, {"wf": [wf[s] for s in stems], "gt": [gt[s] for s in stems]}
        level_dirs = {f"level_{lv:02d}": lv for lv in split.levels}
        self.list_tiffs(wf_dir, allow_dirs=True)  # no stray files beside the level folders
        for p in wf_dir.iterdir():
            if p.is_dir() and p.name not in level_dirs:
                raise SourceError(p, f"unexpected folder; test levels are {sorted(level_dirs)}",
                                  "move it out of the source folder")
        per_level = []
        for name in level_dirs:
            if not (wf_dir / name).is_dir():
                raise SourceError(wf_dir / name, "test level folder is missing (all 9 are needed)",
                                  "restore it from the published dataset")
            lv = self.list_tiffs(wf_dir / name)
            self.check_pairs(lv, gt, wf_dir / name, gt_dir)
            per_level.append(lv)
        stems = sorted(gt)
        wf_paths = [[lv[s] for lv in per_level] for s in stems]
        return stems, {"wf": wf_paths, "gt": [gt[s] for s in stems]}

    def _uniform(self, infos: list[TiffInfo], var: str, split: str) -> TiffInfo:
        first = infos[0]
        allowed = self.manifest.variables[var].dtypes
        for info in infos:
            if len(info.shape) != 2 or info.pages != 1:
                raise SourceError(info.path, f"expected a single 2-D image, found shape "
                                  f"{info.shape} in {info.pages} page(s)",
                                  "replace it with the published single-page TIFF")
            if info.dtype.name not in allowed:
                raise SourceError(info.path, f"dtype {info.dtype} is not one BioSR uses {allowed}",
                                  "replace it with the published file")
            if (info.shape, info.dtype) != (first.shape, first.dtype):
                raise SourceError(
                    info.path,
                    f"{info.shape} {info.dtype}, but the other {var} images of split {split!r} "
                    f"are {first.shape} {first.dtype} (first: {first.path.name})",
                    "every image of a split must share one shape and dtype: replace the odd file",
                )
        return first

    def scan(self, source: str | Path) -> Inventory:
        root = self.find_root(Path(source))
        groups, files, total_bytes, count = [], {}, 0, 0
        for name, split in self.manifest.splits.items():
            found = self._split_files(root, split)
            if found is None:
                log.warning("BioSR split %r not found under %s; skipping it", name, root)
                continue
            stems, paths = found
            if not stems:
                log.warning("BioSR split %r is empty under %s; skipping it", name, root)
                continue
            flat_wf = [p for row in paths["wf"] for p in (row if split.levels else [row])]
            with ThreadPoolExecutor(8) as pool:
                wf_infos = list(pool.map(inspect_tiff, flat_wf))
                gt_infos = list(pool.map(inspect_tiff, paths["gt"]))
            wf0, gt0 = self._uniform(wf_infos, "wf", name), self._uniform(gt_infos, "gt", name)
            factor = self._scale(wf0, gt0)
            total_bytes += sum(i.file_bytes for i in wf_infos + gt_infos)
            count += len(wf_infos) + len(gt_infos)
            groups.append(self._group(name, split, stems, wf0, gt0, factor))
            files[name] = {k: [[str(p) for p in r] if isinstance(r, list) else str(r) for r in v]
                           for k, v in paths.items()}
        if not groups:
            raise SourceError(root, "none of the splits training/validate/test is present",
                              f"pass a complete BioSR/Microtubules folder, {SYNTH_HINT}")
        return Inventory(self.manifest.name, root, tuple(groups), files, total_bytes, count)

    def _scale(self, wf: TiffInfo, gt: TiffInfo) -> int:
        ratios = {g / w for g, w in zip(gt.shape, wf.shape, strict=True)}
        allowed = self.manifest.variables["gt"].scale_factors
        if len(ratios) != 1 or (r := ratios.pop()) not in allowed:
            raise SourceError(
                gt.path, f"GT shape {gt.shape} is not {list(allowed)}x the WF shape {wf.shape}",
                "check that the _gt and _wf folders belong to the same BioSR variant",
            )
        return int(r)

    def _group(self, name: str, split: Split, stems: list[str], wf: TiffInfo,
               gt: TiffInfo, factor: int) -> GroupSpec:
        n, (h, w) = len(stems), wf.shape
        gy, gx = ("y", "x") if factor == 1 else ("y_gt", "x_gt")
        lead = ("sample", "level") if split.levels else ("sample",)
        lead_shape = (n, len(split.levels)) if split.levels else (n,)
        units = {"units": "pixel", "long_name": "position in widefield pixels (pixel centres)"}
        wf_var, gt_var = self.manifest.variables["wf"], self.manifest.variables["gt"]
        variables = [
            VarSpec("wf", (*lead, "y", "x"), (*lead_shape, h, w), wf.dtype.name,
                    {"long_name": wf_var.description, "units": wf_var.units,
                     "source_pattern": f"{split.source}_wf/"
                     + ("level_{level:02d}/" if split.levels else "") + "{sample}.tif"}),
            VarSpec("gt", ("sample", gy, gx), (n, *gt.shape), gt.dtype.name,
                    {"long_name": gt_var.description, "units": gt_var.units,
                     "scale_factor_to_wf": factor,
                     "source_pattern": f"{split.source}_gt/{{sample}}.tif"}),
            VarSpec("wf_sha256", lead, lead_shape, "str",
                    {"long_name": "sha256 of the source WF file"}, coord=True),
            VarSpec("gt_sha256", ("sample",), (n,), "str",
                    {"long_name": "sha256 of the source GT file"}, coord=True),
            VarSpec("sample", ("sample",), (n,), "str", {"long_name": "source file stem"},
                    data=np.array(stems, dtype=str), coord=True),
            VarSpec("y", ("y",), (h,), "float64", units, data=pixel_centres(h, 1), coord=True),
            VarSpec("x", ("x",), (w,), "float64", units, data=pixel_centres(w, 1), coord=True),
        ]
        if factor != 1:
            variables += [
                VarSpec(d, (d,), (s,), "float64", units, data=pixel_centres(s, factor), coord=True)
                for d, s in ((gy, gt.shape[0]), (gx, gt.shape[1]))
            ]
        if split.levels:
            variables += [
                VarSpec("level", ("level",), (len(split.levels),), "int32",
                        {"long_name": "signal level (1 = lowest photon count)"},
                        data=np.array(split.levels, dtype="int32"), coord=True),
                VarSpec("photons", ("level",), (len(split.levels),), "float32",
                        {"long_name": "approximate average photon count",
                         "note": "published: ~15 (level 1) to ~600 (level 9); "
                                 "intermediate levels spaced geometrically"},
                        data=np.array(split.level_photons, dtype="float32"), coord=True),
            ]
        attrs = {"split": name, "source_folder": f"{split.source}_wf / {split.source}_gt",
                 "gt_scale_factor": factor}
        return GroupSpec(name, "sample", n, tuple(variables), attrs)

    def read_unit(self, inv: Inventory, unit: Unit) -> dict[str, np.ndarray]:
        group, files = inv.group(unit.group), inv.files[unit.group]
        out = {}
        for var in ("wf", "gt"):
            spec = group.var(var)
            paths = np.array(files[var][unit.start:unit.stop], dtype=object)
            block = np.empty((len(paths), *spec.shape[1:]), dtype=spec.dtype)
            shas = np.empty(paths.shape, dtype=object)
            img_shape = spec.shape[-2:]
            for idx in np.ndindex(paths.shape):
                path = Path(paths[idx])
                arr, shas[idx] = read_tiff(path)
                if arr.shape != img_shape or arr.dtype != np.dtype(spec.dtype):
                    raise SourceError(path, f"changed since the scan: now {arr.shape} {arr.dtype}",
                                      "re-run the ingest on a source that is not being modified")
                block[idx] = arr
            out[var], out[f"{var}_sha256"] = block, shas.astype(str)
        return out

    def records(self, inv: Inventory, unit: Unit,
                data: dict[str, np.ndarray]) -> Iterator[dict[str, Any]]:
        group = inv.group(unit.group)
        split = self.manifest.splits[unit.group]
        wds = self.manifest.webdataset
        fmt = wds.split_keys.get(unit.group, wds.key)
        stems = group.var("sample").data
        for j, i in enumerate(range(unit.start, unit.stop)):
            meta = {"dataset": inv.dataset, "split": unit.group, "sample": str(stems[i]),
                    "gt_sha256": str(data["gt_sha256"][j]),
                    "gt_scale_factor": group.attrs["gt_scale_factor"]}
            if not split.levels:
                yield {"__key__": fmt.format(sample=stems[i]), "wf.npy": data["wf"][j],
                       "gt.npy": data["gt"][j],
                       "json": {**meta, "wf_sha256": str(data["wf_sha256"][j]),
                                "zarr": {"group": unit.group, "sample": i}}}
                continue
            for k, level in enumerate(split.levels):
                yield {"__key__": fmt.format(sample=stems[i], level=level),
                       "wf.npy": data["wf"][j, k], "gt.npy": data["gt"][j],
                       "json": {**meta, "level": level,
                                "photons": split.level_photons[k] if split.level_photons else None,
                                "wf_sha256": str(data["wf_sha256"][j, k]),
                                "zarr": {"group": unit.group, "sample": i, "level": k}}}
