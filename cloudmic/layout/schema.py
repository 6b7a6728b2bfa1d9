"""The store schema of a dataset: groups, their arrays and the shard-aligned work units.

Dataset adapters build these at scan time; the layout layer writes them. They live here,
under ``layout``, so that the layout never imports an adapter (datasets -> layout, one way).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


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
