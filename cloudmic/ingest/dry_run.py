"""``cloudmic ingest --dry-run``: the plan of an ingest and what it will cost, before any work.

The source is scanned as a real ingest scans it (every header checked), the units are cut
as a real ingest cuts them, and nothing is written to the destination. Time and memory are
estimated from the rates ``bench/`` measured on a 2-core machine with the CLI defaults (a
dask LocalCluster of 2 worker processes); ``tests/ingest/test_dry_run.py`` keeps each rate
equal to the bench result it names. A dataset without a measured rate gets no estimate,
never an invented one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cloudmic.datasets import get_adapter
from cloudmic.datasets.base import Inventory
from cloudmic.errors import SourceError
from cloudmic.humanize import human_bytes, human_seconds
from cloudmic.ingest.plan import plan_units
from cloudmic.manifest import load_manifest
from cloudmic.sources import resolve_source


@dataclass(frozen=True)
class Rate:
    """One dataset's ingest as ``bench/bench_full_size.py`` measured it at two sizes, 10% of
    the published size and the whole: the CLI defaults (a dask LocalCluster of 2 worker
    processes) to the embedded S3, on 2 cores shared with the S3 server.

    Time is a straight line through the two runs: ``fixed_s`` that does not grow with the
    source (the CLI's start and exit, the part of the cluster's start the scan does not
    hide, the smallest sample the check reads, the seal and the previews) plus the source
    bytes at ``source_mb_s``. One rate through the full-size run alone put the small runs at
    0.45-0.81x their measured time (docs/capacity.md, "Checked at two scales")."""

    source_mb_s: float  # source MB (1e6 B) per second, between the two runs
    fixed_s: float  # seconds a run takes whatever its size
    peak_mb: float  # peak RSS of the whole process tree (CLI, scheduler, workers), flat in size
    compression: float  # array bytes / Zarr bytes, at the published size
    measured: str  # the bench results and the row they come from

    def seconds(self, source_bytes: int) -> float:
        return self.fixed_s + source_bytes / 1e6 / self.source_mb_s


PEAK_OF = "the whole process tree"  # what every rate's peak_mb covers
MEASURED = "bench/results/full_size.json, full_size_10pct.json"  # the two runs of each rate

# 2026-12-05 09:15-09:42 UTC, code of 6ced187: each dataset at its published size, then at
# 10% of its counts (platelet-em's 16 of 50 slices and DL-SMLM's 2 of 8 cells are the
# smallest the synthesis makes: 33% and 26% of the bytes). Compression is the synthetic
# copies' (bench/results/codecs.md: the real STED-FM crops here compress ~1.8x, the synthetic
# ~6x); the peak is the larger of the two runs'.
RATES: dict[str, Rate] = {
    name: Rate(*figures, f"{MEASURED}: {name}")
    for name, figures in {"biosr": (44.66, 4.25, 989, 1.367),
                          "sted-fm": (46.96, 3.24, 927, 6.250),
                          "deepcad": (48.50, 5.51, 830, 2.975),
                          "platelet-em": (16.64, 6.57, 858, 9.852),
                          "dl-smlm": (45.50, 4.44, 661, 2.650)}.items()
}


@dataclass(frozen=True)
class IngestPlan:
    dataset: str
    source: str
    units: int
    groups: dict[str, int]  # group -> samples
    source_files: int
    source_bytes: int
    array_bytes: int  # every stored array, all levels, uncompressed
    zarr_bytes_estimate: int | None
    wds_bytes_estimate: int  # level-0 arrays of the WebDataset fields
    seconds_estimate: float | None
    peak_mb_estimate: float | None
    peak_of: str | None
    rate: str | None  # how the estimate is made, and where its rates were measured

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self, dest: str) -> str:
        """The plan for people, as ``cloudmic ingest --dry-run`` prints it."""
        zarr = (f"~{human_bytes(self.zarr_bytes_estimate)}" if self.zarr_bytes_estimate
                else "(compression not measured for this dataset)")
        lines = [f"dry run: {self.dataset} from {self.source} to {dest}; nothing written",
                 f"  {self.units} units; groups: "
                 + ", ".join(f"{g} {n}" for g, n in self.groups.items()),
                 f"  in: {self.source_files} files, {human_bytes(self.source_bytes)}",
                 f"  out: arrays {human_bytes(self.array_bytes)} uncompressed -> Zarr {zarr}; "
                 f"WebDataset ~{human_bytes(self.wds_bytes_estimate)}"]
        if self.seconds_estimate is None:
            lines.append("  time and memory: no rate measured for this dataset yet (bench/); "
                         "none estimated")
        else:
            lines.append(f"  estimate with the CLI defaults on a 2-core machine: "
                         f"{human_seconds(self.seconds_estimate)}, peak "
                         f"{self.peak_mb_estimate:.0f} MB for {self.peak_of} "
                         f"({self.rate})")
        return "\n".join(lines)


def _nbytes(shape: tuple[int, ...], dtype: str) -> int:
    return math.prod(shape) * (np.dtype(dtype).itemsize if dtype != "str" else 0)


def _array_bytes(inv: Inventory) -> int:
    return sum(_nbytes(v.shape, v.dtype) for g in inv.groups for v in g.variables)


def _wds_bytes(inv: Inventory, fields: dict[str, str]) -> int:
    wanted = set(fields.values())
    return sum(_nbytes(v.shape, v.dtype) for g in inv.groups for v in g.variables
               if not v.coord and v.basename in wanted and v.attrs.get("level", 0) == 0)


def plan_ingest(dataset: str, source: str | Path | None, *,
                cache_dir: str | Path | None = None) -> IngestPlan:
    """Scan ``source`` and cut the units as ``cloudmic.ingest`` would; write nothing."""
    if source is None:
        raise SourceError(dataset, "--dry-run never downloads", "pass the downloaded "
                          "dataset as --source (or run --fetch without --dry-run)")
    manifest = load_manifest(str(dataset))
    adapter = get_adapter(manifest, cache_dir)
    inv = adapter.scan(resolve_source(manifest, source, cache_dir=cache_dir))
    units = plan_units(inv, manifest)
    arrays = _array_bytes(inv)
    rate = RATES.get(manifest.name)
    return IngestPlan(
        dataset=manifest.name, source=str(source), units=len(units),
        groups={g.name: g.length for g in inv.groups}, source_files=inv.file_count,
        source_bytes=inv.source_bytes, array_bytes=arrays,
        zarr_bytes_estimate=round(arrays / rate.compression) if rate else None,
        wds_bytes_estimate=_wds_bytes(inv, manifest.webdataset.fields),
        seconds_estimate=rate.seconds(inv.source_bytes) if rate else None,
        peak_mb_estimate=rate.peak_mb if rate else None,
        peak_of=PEAK_OF if rate else None,
        rate=(f"{rate.fixed_s:.0f} s + {rate.source_mb_s:.1f} MB/s of source, measured: "
              f"{rate.measured}") if rate else None)
