"""What every dataset adapter provides: a scan of the published layout into an
``Inventory`` (all checks happen here, before anything is written), the store schema
of each group, and the pixel data of one work unit."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cloudmic.manifest import Manifest


@dataclass(frozen=True)
class VarSpec:
    """One array of a group. ``data`` is set for coordinates known at scan time;
    the rest are filled unit by unit along ``dims[0]``.

    ``name`` may be a path inside the group (``0/image`` for a pyramid level); ``factor``
    is how many steps of the group's unit axis one step of this array spans (2 for a level
    downsampled 2x along it), so a unit ``[a, b)`` writes ``[a // factor, ceil(b / factor))``.
    """

    name: str
    dims: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: str
    attrs: dict[str, Any] = field(default_factory=dict)
    data: np.ndarray | None = field(default=None, compare=False, repr=False)
    coord: bool = False
    factor: int = 1

    @property
    def parent(self) -> str:
        """The sub-group path this array lives in ("" for the group itself)."""
        return self.name.rpartition("/")[0]

    @property
    def basename(self) -> str:
        return self.name.rpartition("/")[2]

    def unit_region(self, start: int, stop: int, length: int) -> tuple[int, int]:
        """This array's rows for the group's unit ``[start, stop)`` of ``length`` rows."""
        f = self.factor
        return start // f, (self.shape[0] if stop >= length else -(-stop // f))


@dataclass(frozen=True)
class GroupSpec:
    """One Zarr group (a split, a cell, a volume) and the axis it is written along.

    With ``unit_dim`` None the group is small enough to be one unit (e.g. one cell).
    ``subgroups`` maps sub-group paths (``labels``, ``labels/semantic``) to their attributes,
    for groups whose arrays live at nested paths (OME-NGFF images).
    """

    name: str
    unit_dim: str | None
    length: int
    variables: tuple[VarSpec, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    subgroups: dict[str, dict[str, Any]] = field(default_factory=dict)

    def var(self, name: str) -> VarSpec:
        return next(v for v in self.variables if v.name == name)

    @property
    def split(self) -> str:
        """The top-level group: what ``cloudmic.shards(url, split)`` reads."""
        return self.name.split("/", 1)[0]


@dataclass(frozen=True)
class Unit:
    """A shard-aligned slice of one group: the smallest piece of work ingest does."""

    group: str
    start: int
    stop: int
    index: int

    @property
    def key(self) -> str:
        return f"{self.group}/{self.index:06d}"

    @property
    def shard_url(self) -> str:
        """Where this unit's WebDataset tar goes, relative to ``<dataset>.wds``."""
        return f"{self.group}/{self.group.rsplit('/', 1)[-1]}-{self.index:06d}.tar"


@dataclass(frozen=True)
class Inventory:
    """The result of a scan: what the source holds, checked, ready to plan."""

    dataset: str
    root: Path
    groups: tuple[GroupSpec, ...]
    files: dict[str, Any]
    source_bytes: int
    file_count: int

    def group(self, name: str) -> GroupSpec:
        return next(g for g in self.groups if g.name == name)


class Adapter(ABC):
    """Parses one published layout. Stateless apart from its manifest, so it pickles
    to dask workers."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest

    @property
    def opts(self) -> dict[str, Any]:
        """The manifest's adapter-specific ``options``."""
        return self.manifest.options

    @abstractmethod
    def scan(self, source: str | Path) -> Inventory:
        """Check the whole source (layout, pairing, every header) or raise SourceError."""

    @abstractmethod
    def read_unit(self, inv: Inventory, unit: Unit) -> dict[str, np.ndarray]:
        """The values of every unit-filled variable of the group for this slice."""

    @abstractmethod
    def records(
        self, inv: Inventory, unit: Unit, data: dict[str, np.ndarray]
    ) -> Iterator[dict[str, Any]]:
        """WebDataset records (``__key__`` plus fields) for this slice."""

    def finalize(self, inv: Inventory, root: Any) -> None:  # noqa: B027 - optional hook
        """Add what is known only after every unit ran (e.g. class counts) to the staged
        store's group attributes. ``root`` is the staged ``zarr.Group``."""
