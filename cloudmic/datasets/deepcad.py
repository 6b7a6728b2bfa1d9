"""DeepCAD (datasets.md §4): paired low-SNR / 10x high-SNR two-photon movies, one Zenodo
zip per recording (27 zips, listed in ``options.recordings`` of the manifest).

Published tree, as unzipped. The file names inside the zips are unverified: the paths are
told apart by ``lowSNR`` / ``highSNR`` in their names (any case; the DeepCAD-RT convention),
else two frame-synchronised movies by their signal (the high path collects 10x the photons);
a low-only recording is accepted::

    DeepCAD/<zip stem>/<...>_lowSNR.tif     multipage TIFF (T, Y, X), uint16 or int16
    DeepCAD/<zip stem>/<...>_highSNR.tif    same frames, shape and dtype

Store (ADR 0004 option C), one group per recording, named by its manifest id
(``n01_p66``: table row 1, 66 mW), which is also its WebDataset split::

    deepcad.zarr/<rec>/               attrs: the manifest row (FOV, Hz, depth, power, gain,
                                      structure, zip, Zenodo record) and the source files'
                                      names, sizes and sha256
      low/    NGFF image: 0/low(t,y,x), 1/low (y/x halved), each with pixel-centre
              coordinates t (s), y, x (um; pitch = the stated 550 x 575 um field of view
              over the frame's rows and columns, marked as derived)
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
# unnamed pairs: the brighter movie must carry this many times the other's signal above its
# baseline to be called high-SNR (published: 10x the photons; a lower bar leaves room for
# gain and offset differences, a higher one than 1 refuses two copies of one path)
MIN_HIGH_TO_LOW = 3.0
SIGNAL_FRAMES = 16  # frames read to compare the two paths' signals


def _hidden(p: Path) -> bool:
    return p.name.startswith(".") or p.name in SKIP_DIRS



def _signal(info: MovieInfo) -> float:
    """Mean signal above baseline (the 1st percentile: PMT offset) of a movie's first frames."""
    _, block = next(iter_frame_blocks(info.path, SIGNAL_FRAMES, stop=min(SIGNAL_FRAMES,
                                                                          info.frames),
                                      info=info))
    values = block.astype("float64")
    return float(values.mean() - np.percentile(values, 1))


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

    def movie_infos(self, folder: Path) -> tuple[dict[str, MovieInfo], str]:
        """``({"low": header, "high": header}, how they were told apart)`` (``high`` absent
        for a low-only recording); each header is read once.

        By the published naming convention first (``..._lowSNR.tif`` / ``..._highSNR.tif``,
        any case: the DeepCAD-RT example names). When no name carries it (the names inside
        the DeepCAD zips are unverified), two frame-synchronised movies (same frames, shape
        and dtype) are told apart by brightness: the high-SNR path collects 10x the photons.
        Anything else is ambiguous and refused, naming the candidates.
        """
        tiffs = self._tiffs(folder)
        tagged: dict[str, list[Path]] = {"low": [], "high": []}
        untagged = []
        for p in tiffs:
            name = p.name.lower()
            kinds = [k for k, tag in TAGS.items() if tag in name]
            if len(kinds) > 1:
                raise SourceError(p, "its name has both 'lowSNR' and 'highSNR': cannot tell "
                                  "which detection path it is", "rename it to end in "
                                  "_lowSNR.tif or _highSNR.tif, or move it out of the "
                                  "recording folder")
            (tagged[kinds[0]] if kinds else untagged).append(p)
        if not any(tagged.values()):
            return self._pair_by_frames(folder, untagged)
        if untagged:
            raise SourceError(untagged[0], "its name has neither 'lowSNR' nor 'highSNR', "
                              "unlike the other movies of its recording: cannot tell which "
                              "detection path it is", "rename it to end in _lowSNR.tif or "
                              "_highSNR.tif, or move it out of the recording folder")
        for kind, paths in tagged.items():
            if len(paths) > 1:
                raise SourceError(folder, f"{len(paths)} {kind}-SNR movies in one recording: "
                                  + ", ".join(str(p.relative_to(folder)) for p in paths),
                                  "keep one movie per detection path in a recording folder")
        if not tagged["low"]:
            raise SourceError(folder, f"recording folder has a high-SNR movie "
                              f"({tagged['high'][0].name}) but no low-SNR one",
                              "restore the *_lowSNR.tif movie from the recording's zip")
        return ({k: movie_info(v[0]) for k, v in tagged.items() if v},
                "names (lowSNR / highSNR)")

    def _pair_by_frames(self, folder: Path, movies: list[Path]
                        ) -> tuple[dict[str, MovieInfo], str]:
        """Low/high of a recording whose file names do not say which is which."""
        fix = ("rename the movies to end in _lowSNR.tif and _highSNR.tif (the DeepCAD-RT "
               "convention), or keep only the recording's pair in the folder")
        names = ", ".join(str(p.relative_to(folder)) for p in movies)
        if not movies:
            raise SourceError(folder, "recording folder has no TIFF movie",
                              "restore the recording's movies from its zip")
        if len(movies) == 1:
            return {"low": movie_info(movies[0])}, ("the only movie of the recording, taken "
                                                    "as the low-SNR path (its name does not say)")
        if len(movies) > 2:
            raise SourceError(folder, f"{len(movies)} movies whose names do not say lowSNR or "
                              f"highSNR ({names}): cannot tell which two are the pair", fix)
        a, b = (movie_info(p) for p in movies)
        if (a.frames, a.shape, a.dtype) != (b.frames, b.shape, b.dtype):
            raise SourceError(folder, f"two movies whose names do not say lowSNR or highSNR "
                              f"and that are not frame-synchronised ({a.path.name}: {a.frames} "
                              f"x {a.shape} {a.dtype}; {b.path.name}: {b.frames} x {b.shape} "
                              f"{b.dtype}): not a low/high pair", fix)
        sa, sb = _signal(a), _signal(b)
        lo, hi = (a, b) if sa < sb else (b, a)
        ratio = max(sa, sb) / max(min(sa, sb), 1e-9)
        if ratio < MIN_HIGH_TO_LOW:
            raise SourceError(folder, f"two frame-synchronised movies ({names}) whose names do "
                              f"not say lowSNR or highSNR, with signals only {ratio:.2f}x "
                              f"apart (the high-SNR path collects ~10x the photons): cannot "
                              "tell which is which", fix)
        return {"low": lo, "high": hi}, (
            f"frame-synchronised movies told apart by signal ({ratio:.1f}x brighter high-SNR "
            "path); their names do not say lowSNR / highSNR")

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
            infos, paired_by = self.movie_infos(folder)
            self.check_pair(folder, infos)
            checked.append((row, folder, infos, paired_by))
        # hash only once every header passed: a bad file fails fast, before GBs are read
        paths = [info.path for _, _, infos, _ in checked for info in infos.values()]
        with ThreadPoolExecutor(4) as pool:
            digests = dict(zip(paths, pool.map(sha256_file, paths), strict=True))
        groups, inv_files = [], {}
        for row, folder, infos, paired_by in checked:
            groups.append(self._group(row, folder, infos, digests, steps, paired_by))
            inv_files[row["id"]] = infos  # units read frames at the offsets found here
        total = sum(p.stat().st_size for p in paths)
        root = recordings[0][1].parent
        return Inventory(self.manifest.name, root, tuple(groups), inv_files, total, len(paths))

    @staticmethod
    def pitch_um(row: dict[str, Any], frame_shape: tuple[int, ...]) -> tuple[float, float]:
        """(y, x) pixel pitch in um: the stated field of view (550 um vertical x 575 um
        horizontal) over the rows and columns of the recording's own frames. The frame size
        is not published, so the pitch is derived, never assumed."""
        (fov_y, fov_x), (rows, cols) = row["fov_um"], frame_shape[-2:]
        return float(fov_y) / rows, float(fov_x) / cols

    def _axes(self, row: dict[str, Any], frame_shape: tuple[int, ...]) -> list[Axis]:
        py, px = self.pitch_um(row, frame_shape)
        fov_y, fov_x = row["fov_um"]
        rows, cols = frame_shape[-2:]
        return [Axis("t", "time", "s", 1.0 / float(row["frame_rate_hz"])),
                Axis("y", "space", "um", py, f"derived: {fov_y} um stated field of view "
                     f"(vertical) / {rows} rows"),
                Axis("x", "space", "um", px, f"derived: {fov_x} um stated field of view "
                     f"(horizontal) / {cols} columns")]

    def _group(self, row: dict[str, Any], folder: Path, infos: dict[str, MovieInfo],
               digests: dict[Path, str], steps: list[list[int]], paired_by: str) -> GroupSpec:
        first = infos["low"]
        axes = self._axes(row, first.shape)
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
                 "pixel_um_yx": [axes[1].scale, axes[2].scale],
                 "pixel_um_provenance": f"{axes[1].note}; {axes[2].note}",
                 "frames": first.frames, "frame_shape": list(first.shape),
                 "dtype": first.dtype.name, "paths": list(infos), "source_folder": folder.name,
                 "source_files": sources, "paths_told_apart_by": paired_by}
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
                "frame_rate_hz": hz, "pixel_um_yx": a["pixel_um_yx"], "fov_um": a["fov_um"],
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
