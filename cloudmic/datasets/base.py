"""What every dataset adapter provides: a scan of the published layout into an
``Inventory`` (all checks happen here, before anything is written), the store schema
of each group, and the pixel data of one work unit."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cloudmic.layout.schema import GroupSpec, Unit, VarSpec
from cloudmic.manifest import Manifest

__all__ = ["Adapter", "GroupSpec", "Inventory", "Unit", "VarSpec"]


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

    def __init__(self, manifest: Manifest, cache_dir: str | Path | None = None) -> None:
        self.manifest = manifest
        self.cache_dir = cache_dir  # the CLI's --cache; None: the default cache

    def cache_folder(self) -> Path:
        """This dataset's cache folder, where ``--fetch`` downloads too."""
        from cloudmic.sources import dataset_cache_dir

        return dataset_cache_dir(self.manifest.name, self.cache_dir)

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
