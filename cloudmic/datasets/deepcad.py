"""DeepCAD (datasets.md §4): paired low-SNR / 10x high-SNR two-photon movies, one Zenodo
zip per recording (27 zips, listed in ``options.recordings`` of the manifest).

Published tree, as unzipped (the file names inside the zips are unverified, so files are
matched by ``lowSNR`` / ``highSNR`` in their names, any case; a low-only recording is
accepted)::

    DeepCAD/<zip stem>/<...>_lowSNR.tif     multipage TIFF (T, Y, X), uint16 or int16
    DeepCAD/<zip stem>/<...>_highSNR.tif    same frames, shape and dtype

Store (ADR 0004 option C), one group per recording, named by its manifest id
(``n01_p66``: table row 1, 66 mW), which is also its WebDataset split::

    deepcad.zarr/<rec>/               attrs: the manifest row (FOV, Hz, depth, power, gain,
                                      structure, zip, Zenodo record) and the source files'
                                      names, sizes and sha256
      low/    NGFF image: 0/low(t,y,x), 1/low (y/x halved), each with pixel-centre
              coordinates t (s), y, x (um)
      high/   the same for the high-SNR path
    deepcad.wds/<rec>/<rec>-NNNNNN.tar   one record per clip of ``clip_frames`` full frames:
                                      low.npy, high.npy, json

Movies are ~4.5 GB: the scan reads headers and hashes files by streaming; a work unit reads
only its own frames, a block at a time, so memory stays at about one unit.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from cloudmic.datasets.base import Adapter, GroupSpec, Inventory, Unit, VarSpec
from cloudmic.errors import ManifestError, SourceError
from cloudmic.formats.checksum import sha256_file
from cloudmic.formats.tiff import is_tiff_name
from cloudmic.formats.tiff_pages import MovieInfo, iter_frame_blocks, movie_info
from cloudmic.layout import ngff
from cloudmic.layout.ngff import Axis

log = logging.getLogger(__name__)

HINT = "or make a synthetic copy with: cloudmic synth deepcad --out DIR"
PATHS = ("low", "high")  # detection paths, in the order they are stored and shipped
TAGS = {"low": "lowsnr", "high": "highsnr"}  # matched in lower-cased file names
READ_BLOCK = 16  # frames per read: one inner chunk along t; bounds the float64 pyramid temp
SKIP_DIRS = {"__MACOSX"}  # macOS zip resource forks: never data


def _hidden(p: Path) -> bool:
    return p.name.startswith(".") or p.name in SKIP_DIRS



class DeepCAD(Adapter):
    @property
    def steps(self) -> list[list[int]]:
        steps = [list(s) for s in self.opts.get("pyramid", [])]
        if any(len(s) != 3 or s[0] != 1 for s in steps):
            raise ManifestError(f"manifest {self.manifest.name!r}: options.pyramid steps are "
                                f"(t, y, x) factors with t = 1 (never downsample time), "
                                f"got {steps}")
        return steps

    def table(self) -> dict[str, dict[str, Any]]:
        """Lower-cased zip stem -> manifest row: folder names are matched case-insensitively."""
        return {r["zip"].removesuffix(".zip").lower(): r for r in self.opts["recordings"]}

    # ---- finding recordings -------------------------------------------------------------

    def find_recordings(self, source: Path) -> list[tuple[dict[str, Any], Path]]:
        """(manifest row, folder) of every recording under ``source``, in table order.

        ``source`` may be the folder holding ``DeepCAD/``, the ``DeepCAD`` folder itself, or
        one recording folder.
        """
        if not source.is_dir():
            raise SourceError(source, "the source folder does not exist" if not source.exists()
                              else "the source is not a folder",
                              f"pass the folder that holds DeepCAD/<zip stem>/ folders, {HINT}")
        table = self.table()
        if source.name.lower() in table:
            return [(table[source.name.lower()], source)]
        root = source / "DeepCAD" if (source / "DeepCAD").is_dir() else source
        found = []
        for p in sorted(root.iterdir()):
            if _hidden(p):
                continue
            if p.is_file():
                if is_tiff_name(p.name):
                    raise SourceError(p, "TIFF outside a recording folder: cannot tell which "
                                      "recording (zip) it belongs to",
                                      "move it into a folder named after its zip, e.g. "
                                      f"{root}/{self._example()}/")
                continue  # e.g. the downloaded zips themselves, a README
            row = table.get(p.name.lower())
            if row is not None:
                found.append((row, p))
            elif self._tiffs(p):
                raise self._unknown_folder(p)
            else:
                log.warning("DeepCAD: skipping %s (no TIFF inside, not a recording folder)", p)
        if not found:
            raise SourceError(root, "no DeepCAD recording folder here (expected folders named "
                              f"after the Zenodo zips, e.g. {self._example()})",
                              f"unzip the recordings into DeepCAD/, {HINT}")
        order = {r["id"]: k for k, r in enumerate(self.opts["recordings"])}
        return sorted(found, key=lambda rp: order[rp[0]["id"]])

    def _unknown_folder(self, folder: Path) -> SourceError:
        stems = [r["zip"].removesuffix(".zip") for r in self.opts["recordings"]]
        close = difflib.get_close_matches(folder.name, stems, n=2, cutoff=0.6)
        hint = f"closest: {', '.join(close)}" if close else f"e.g. {stems[0]}, ..., {stems[-1]}"
        return SourceError(folder, "folder with TIFF movies that is not a DeepCAD recording: its "
                           f"name is none of the {len(stems)} zip names of the seed table "
                           f"({hint}; all in manifests/deepcad.yaml, options.recordings)",
                           "rename the folder to its zip's name without .zip, or move it out "
                           "of the source folder")

    def _example(self) -> str:
        return self.opts["recordings"][0]["zip"].removesuffix(".zip")

    @staticmethod
    def _tiffs(folder: Path) -> list[Path]:
        """Every TIFF under a folder (a zip may nest one folder level), hidden ones aside."""
        return sorted(p for p in folder.rglob("*")
                      if p.is_file() and is_tiff_name(p.name)
                      and not any(_hidden(Path(part)) for part in p.relative_to(folder).parts))

    def movie_files(self, folder: Path) -> dict[str, Path]:
        """``{"low": path, "high": path}`` (``high`` absent for a low-only recording)."""
        found: dict[str, list[Path]] = {"low": [], "high": []}
        for p in self._tiffs(folder):
            name = p.name.lower()
            kinds = [k for k, tag in TAGS.items() if tag in name]
            if len(kinds) != 1:
                has = "both 'lowSNR' and 'highSNR'" if kinds else "neither 'lowSNR' nor 'highSNR'"
                raise SourceError(p, f"its name has {has}: cannot tell which detection path "
                                  "it is", "rename it to end in _lowSNR.tif or _highSNR.tif, "
                                  "or move it out of the recording folder")
            found[kinds[0]].append(p)
        for kind, paths in found.items():
            if len(paths) > 1:
                raise SourceError(folder, f"{len(paths)} {kind}-SNR movies in one recording: "
                                  + ", ".join(str(p.relative_to(folder)) for p in paths),
                                  "keep one movie per detection path in a recording folder")
        if not found["low"]:
            what = (f"a high-SNR movie ({found['high'][0].name}) but no low-SNR one"
                    if found["high"] else "no TIFF movie")
            raise SourceError(folder, f"recording folder has {what}",
                              "restore the *_lowSNR.tif movie from the recording's zip")
        return {k: v[0] for k, v in found.items() if v}

    # ---- scan ---------------------------------------------------------------------------

    def check_pair(self, folder: Path, infos: dict[str, MovieInfo]) -> None:
        for path, info in infos.items():
            allowed = list(self.manifest.variables[path].dtypes)
            if info.dtype.name not in allowed:
                raise SourceError(info.path, f"dtype {info.dtype} is not one DeepCAD movies "
                                  f"have {allowed}", "replace it with the published movie")
            if info.frames < 1:
                raise SourceError(info.path, "the movie has no frames",
                                  "replace it with the published movie")
        if "high" not in infos:
            return
        lo, hi = infos["low"], infos["high"]
        if (lo.frames, lo.shape, lo.dtype) != (hi.frames, hi.shape, hi.dtype):
            def desc(i: MovieInfo) -> str:
                return f"{i.path.name}: {i.frames} frames of {i.shape[0]}x{i.shape[1]} {i.dtype}"
            raise SourceError(folder, "the low/high-SNR pair does not match frame for frame ("
                              f"{desc(lo)}; {desc(hi)}); both paths record the same frames",
                              f"restore both {lo.path} and {hi.path} from the recording's zip "
                              "(one is probably cut short or from another recording)")

    def scan(self, source: str | Path) -> Inventory:
        recordings = self.find_recordings(Path(source))
        steps = self.steps
        checked = []
        for row, folder in recordings:
            files = self.movie_files(folder)
            infos = {k: movie_info(p) for k, p in files.items()}
            self.check_pair(folder, infos)
            checked.append((row, folder, infos))
        # hash only once every header passed: a bad file fails fast, before GBs are read
        paths = [info.path for _, _, infos in checked for info in infos.values()]
        with ThreadPoolExecutor(4) as pool:
            digests = dict(zip(paths, pool.map(sha256_file, paths), strict=True))
        groups, inv_files = [], {}
        for row, folder, infos in checked:
            groups.append(self._group(row, folder, infos, digests, steps))
            inv_files[row["id"]] = infos  # units read frames at the offsets found here
        total = sum(p.stat().st_size for p in paths)
        root = recordings[0][1].parent
        return Inventory(self.manifest.name, root, tuple(groups), inv_files, total, len(paths))

    def _axes(self, row: dict[str, Any]) -> list[Axis]:
        px = float(self.opts["pixel_um"])
        return [Axis("t", "time", "s", 1.0 / float(row["frame_rate_hz"])),
                Axis("y", "space", "um", px), Axis("x", "space", "um", px)]

    def _group(self, row: dict[str, Any], folder: Path, infos: dict[str, MovieInfo],
               digests: dict[Path, str], steps: list[list[int]]) -> GroupSpec:
        axes = self._axes(row)
        first = infos["low"]
        shape = (first.frames, *first.shape)
        variables: list[VarSpec] = []
        subgroups: dict[str, dict[str, Any]] = {}
        sources: dict[str, Any] = {}
        for path, info in infos.items():
            var = self.manifest.variables[path]
            name = str(info.path.relative_to(folder))
            attrs = {"long_name": var.description, "units": var.units, "source_file": name}
            variables += ngff.level_variables(path, path, axes, shape, info.dtype.name, steps,
                                              attrs)
            subgroups[path] = ngff.image_attrs(path, axes, path, steps)
            sources[path] = {"name": name, "bytes": info.file_bytes,
                             "sha256": digests[info.path], "stored_axes": info.stored_axes,
                             "stored_shape": list(info.stored_shape),
                             "squeezed_axes": list(info.squeezed_axes),
                             "frame_axis": info.frame_axis}
        attrs = {"recording": row["id"], **{k: v for k, v in row.items() if k != "id"},
                 "url": f"https://zenodo.org/record/{row['zenodo_record']}/files/{row['zip']}"
                        "?download=1",
                 "pixel_um": float(self.opts["pixel_um"]),
                 "pixel_um_assumed": bool(self.opts.get("pixel_um_assumed", False)),
                 "frames": first.frames, "frame_shape": list(first.shape),
                 "dtype": first.dtype.name, "paths": list(infos), "source_folder": folder.name,
                 "source_files": sources}
        return GroupSpec(row["id"], "t", first.frames, tuple(variables), attrs, subgroups)

    # ---- units --------------------------------------------------------------------------

    def read_unit(self, inv: Inventory, unit: Unit) -> dict[str, np.ndarray]:
        group, steps = inv.group(unit.group), self.steps
        out: dict[str, np.ndarray] = {}
        for path, info in inv.files[unit.group].items():
            src = info.path
            specs = [group.var(f"{path}/{k}/{path}") for k in range(len(steps) + 1)]
            levels = [np.empty((unit.stop - unit.start, *s.shape[1:]), dtype=s.dtype)
                      for s in specs]
            got = unit.start
            for i, block in iter_frame_blocks(src, READ_BLOCK, start=unit.start,
                                              stop=unit.stop, info=info):
                if block.shape[1:] != specs[0].shape[1:] or block.dtype != levels[0].dtype:
                    raise self._changed(src, f"frames of {block.shape[1:]} {block.dtype}")
                # levels are y/x only (t step 1), so each block downsamples on its own
                for dst, lv in zip(levels, ngff.pyramid(block, steps, labels=False),
                                   strict=True):
                    dst[i - unit.start:i - unit.start + len(block)] = lv
                got = i + len(block)
            if got != unit.stop:
                raise self._changed(src, f"it ends at frame {got}, the scan saw "
                                    f"{group.length} frames")
            for k, lv in enumerate(levels):
                out[specs[k].name] = lv
        return out

    @staticmethod
    def _changed(path: Path, now: str) -> SourceError:
        return SourceError(path, f"changed since the scan: now {now}",
                           "re-run the ingest on a source that is not being modified")

    def records(self, inv: Inventory, unit: Unit,
                data: dict[str, np.ndarray]) -> Iterator[dict[str, Any]]:
        group = inv.group(unit.group)
        a = group.attrs
        clip = int(self.opts["clip_frames"])
        hz = float(a["frame_rate_hz"])
        paths = list(inv.files[unit.group])
        key = self.manifest.webdataset.key
        meta = {"dataset": inv.dataset, "recording": unit.group, "zip": a["zip"],
                "frame_rate_hz": hz, "pixel_um": a["pixel_um"], "fov_um": a["fov_um"],
                "depth_um": a["depth_um"], "power_mw": a["power_mw"], "amp_gain": a["amp_gain"],
                "structure": a["structure"], "dtype": a["dtype"]}
        for t0 in range(unit.start, unit.stop, clip):
            t1 = min(t0 + clip, unit.stop)
            rec: dict[str, Any] = {"__key__": key.format(recording=unit.group, t=t0)}
            for path in paths:
                rec[f"{path}.npy"] = data[f"{path}/0/{path}"][t0 - unit.start:t1 - unit.start]
            rec["json"] = {**meta, "t_index": [t0, t1], "t_span_s": [t0 / hz, t1 / hz],
                           "zarr": {"group": unit.group,
                                    "paths": {p: f"{p}/0/{p}" for p in paths},
                                    "t": [t0, t1]}}
            yield rec
