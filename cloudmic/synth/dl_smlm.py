"""Synthetic DL-SMLM (Zhao et al., Sci Data 2025) in its published per-structure layout.

Writes the tree of the figshare zips (``shared/datasets.md`` section 1)::

    <Structure>/cell<N>/WF_raw.tif     uint16 (frames, size, size), plain multipage, >= 100
    <Structure>/cell<N>/WF<N>.tif      float32 (size, size): the sum of the WF_raw frames
    <Structure>/cell<N>/SR<N>.tif      float32 (8*size, 8*size): render of SR_locs.csv
    <Structure>/cell<N>/SR_locs.csv    ThunderSTORM CSV, quoted header, ids 1-based with gaps

for the six structures ``CCPs``, ``ER-sec61β`` (Greek beta, U+03B2; ``ER-sec61b`` with
``ascii_names=True``), ``ER-KDEL``, ``Microtubules``, ``OMM-tomm20`` and ``IMM-cox8a``.
This module holds the tree: arguments, folder names, and the four files of each cell.
Where the labels sit is ``dl_smlm_structures``; how the camera records them blinking and
what ThunderSTORM finds is ``dl_smlm_acquisition``; the CSV, the SR render rule
(``SR_RENDER_RULE``) and the zips are ``dl_smlm_files``. Their public names are
re-exported here.

Each cell draws from its own random streams keyed by (seed, structure, cell number), so
its bytes do not depend on which other structures or cells are written, nor on the
folder spelling or CSV variant (only the CSV's columns change with those).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from cloudmic.synth.common import check_flag, check_seed, check_whole, stream_rng, write_tiff
from cloudmic.synth.dl_smlm_acquisition import (
    CAMERA_OFFSET,
    E_PER_COUNT,
    WF_PIXEL_NM,
    blink,
    camera_frame,
    draw_cell,
    localize,
)
from cloudmic.synth.dl_smlm_files import (
    SR_PIXEL_NM,
    SR_RENDER_RULE,
    SR_RENDER_SIGMA_PX,
    SR_RENDER_TAPS,
    SR_SCALE,
    UNCERTAINTY_NAMES,
    UncertaintyName,
    csv_columns,
    render_sr,
    write_csv,
    zip_folder,
)
from cloudmic.synth.dl_smlm_structures import STRUCTURES

__all__ = [
    "ASCII_NAMES",
    "CAMERA_OFFSET",
    "E_PER_COUNT",
    "SR_PIXEL_NM",
    "SR_RENDER_RULE",
    "SR_RENDER_SIGMA_PX",
    "SR_RENDER_TAPS",
    "SR_SCALE",
    "STRUCTURES",
    "WF_PIXEL_NM",
    "csv_columns",
    "render_sr",
    "synth_dl_smlm",
]

log = logging.getLogger(__name__)

ASCII_NAMES: dict[str, str] = {"ER-sec61\u03b2": "ER-sec61b"}
_ALIASES = {v: k for k, v in ASCII_NAMES.items()}

MAX_SIZE = 512
MAX_FRAMES = 10_000
MAX_CELLS = 9_999


def synth_dl_smlm(
    out: Path | str,
    *,
    structures: Iterable[str] = STRUCTURES,
    cells: int = 2,
    frames: int = 100,
    size: int = 256,
    seed: int = 0,
    ascii_names: bool = False,
    uncertainty_name: UncertaintyName = "uncertainty_xy",
    chi2: bool = True,
    zipped: bool = False,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Write a synthetic DL-SMLM tree: ``out/<Structure>/cell<N>/`` for N in 1..cells.

    Args:
        out: the dataset root (the folder the structure zips unpack into); created if
            missing.
        structures: which of the six structures to write (``STRUCTURES``; ``ER-sec61b`` is
            accepted for ``ER-sec61β``).
        cells: cells per structure (``cell1`` .. ``cell<cells>``).
        frames: raw frames per cell (published: 100).
        size: widefield side in 130 nm pixels (published: 256); SR is ``8*size``.
        seed: same seed, same bytes.
        ascii_names: name the ER-sec61β folder ``ER-sec61b``.
        uncertainty_name: last CSV column, ``"uncertainty_xy"`` (``[nm]`` is appended) or
            ``"uncertainty"`` (older ThunderSTORM).
        chi2: write the ``chi2`` column.
        zipped: publish each structure as figshare does, ``out/<Structure>.zip`` holding
            ``<Structure>/cell<N>/...``, with no unpacked folder left.
        progress: called with the number of files written since its previous call.

    Returns:
        ``{"root", "files", "bytes", "structures": {folder: cells}, "cells", "frames",
        "size", "localizations", "columns"}``.

    Raises:
        ValueError: a bad argument (the message says what to pass).
        FileExistsError: a structure folder holds cell folders this run would not write.
    """
    names = _structure_names(structures)
    for arg, value, low, high, why in (
        ("cells", cells, 0, MAX_CELLS, "cells per structure"),
        ("frames", frames, 1, MAX_FRAMES, "raw frames per cell; the published stacks have 100"),
        ("size", size, 16, MAX_SIZE, "widefield pixels per side; the published images have 256"),
    ):
        check_whole(arg, value, low, high, why)
    check_seed(seed)
    check_flag("ascii_names", ascii_names)
    check_flag("chi2", chi2)
    if uncertainty_name not in UNCERTAINTY_NAMES:
        raise ValueError(
            "uncertainty_name must be 'uncertainty_xy' (ThunderSTORM >= 1.3 MLE export, "
            f"column 'uncertainty_xy [nm]') or 'uncertainty' (column 'uncertainty [nm]'), "
            f"got {uncertainty_name!r}"
        )
    root = Path(out)
    folders = {
        name: root / (ASCII_NAMES.get(name, name) if ascii_names else name) for name in names
    }
    for folder in folders.values():
        _refuse_stale(folder, cells)
    columns = csv_columns(uncertainty_name, chi2)

    files = nbytes = locs = 0
    for name, folder in folders.items():
        code = STRUCTURES.index(name) + 1
        for n in range(1, cells + 1):
            cell_dir = folder / f"cell{n}"
            cell_dir.mkdir(parents=True, exist_ok=True)
            written, count = _write_cell(cell_dir, n, code, name, seed, frames, size, columns)
            for size_bytes in written:
                nbytes += size_bytes
                files += 1
                if progress is not None:
                    progress(1)
            locs += count
    log.info("wrote %d files (%d bytes) of synthetic DL-SMLM to %s", files, nbytes, root)
    zips = [str(zip_folder(folder)) for folder in folders.values()] if zipped else []
    return {
        "zips": zips,
        "root": str(root),
        "files": files,
        "bytes": nbytes,
        "structures": {folder.name: cells for folder in folders.values()},
        "cells": cells * len(folders),
        "frames": frames,
        "size": size,
        "localizations": locs,
        "columns": columns,
    }


def _structure_names(structures: object) -> list[str]:
    """The canonical names of ``structures``, checked: known, unique, at least one."""
    known = ", ".join(STRUCTURES)
    if isinstance(structures, str | bytes) or not isinstance(structures, Iterable):
        raise ValueError(
            f"structures must be a list or tuple of structure names (some of: {known}), "
            f"e.g. ('CCPs',), got {structures!r}"
        )
    names: list[str] = []
    for s in structures:
        name = _ALIASES.get(s, s) if isinstance(s, str) else s
        if name not in STRUCTURES:
            raise ValueError(
                f"unknown DL-SMLM structure {s!r}; pass some of: {known} "
                f"(ER-sec61b is accepted for ER-sec61\u03b2)"
            )
        if name in names:
            raise ValueError(f"structure {s!r} is listed twice; list each structure once")
        names.append(name)
    if not names:
        raise ValueError(f"structures is empty; pass at least one of: {known}")
    return names


def _refuse_stale(folder: Path, cells: int) -> None:
    if not folder.is_dir():
        return
    stale = sorted(
        p.name
        for p in folder.iterdir()
        if p.is_dir()
        and p.name.startswith("cell")
        and not (p.name[4:].isdigit() and 1 <= int(p.name[4:]) <= cells)
    )
    if stale:
        raise FileExistsError(
            f"{folder}: holds cell folder(s) this run would not write (e.g. {stale[0]}), left "
            f"by a run with more cells. Mixing them would give a tree with inconsistent "
            f"contents; write to an empty folder or delete {folder} first."
        )


def _write_cell(
    cell_dir: Path,
    n: int,
    code: int,
    name: str,
    seed: int,
    frames: int,
    size: int,
    columns: list[str],
) -> tuple[list[int], int]:
    """Write the four files of one cell; return their sizes and the number of CSV rows."""
    cell = draw_cell(stream_rng(seed, code, n, 0), name, size)
    events = blink(stream_rng(seed, code, n, 1), cell, frames)
    table = localize(stream_rng(seed, code, n, 2), cell, events, size)

    wf_sum = np.zeros((size, size), dtype=np.float64)

    def raw_frames() -> Iterator[NDArray[np.uint16]]:
        px = cell.sites[events.site] / WF_PIXEL_NM - 0.5  # pixel i is centred on i
        bounds = np.searchsorted(events.frame, np.arange(1, frames + 2))
        for t in range(1, frames + 1):
            on = slice(bounds[t - 1], bounds[t])
            # One noise stream per frame: a frame's bytes do not depend on the others.
            noise = stream_rng(seed, code, n, 1000 + t)
            frame = camera_frame(noise, cell, px[on], events.photons[on], size)
            wf_sum[...] += frame  # integers: exact in float64
            yield frame

    sizes = [
        write_tiff(
            cell_dir / "WF_raw.tif", raw_frames(), shape=(frames, size, size), dtype=np.uint16
        ),
        write_tiff(cell_dir / f"WF{n}.tif", wf_sum.astype(np.float32)),
        write_tiff(cell_dir / f"SR{n}.tif", render_sr(table["x"], table["y"], size)),
        write_csv(cell_dir / "SR_locs.csv", table, columns),
    ]
    return sizes, len(table["id"])

