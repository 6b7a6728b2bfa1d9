"""Plan: cut every group into shard-aligned units (no two units share a shard)."""

from __future__ import annotations

from cloudmic.datasets.base import Inventory, Unit
from cloudmic.errors import ManifestError
from cloudmic.layout.zarr_layout import unit_step
from cloudmic.manifest import Manifest


def plan_units(inv: Inventory, manifest: Manifest) -> list[Unit]:
    """One unit per WebDataset shard; its length must be a whole number of Zarr shards."""
    size = manifest.webdataset.samples_per_shard
    units: list[Unit] = []
    for group in inv.groups:
        if group.unit_dim is None:  # a whole small group (one cell) is one unit
            units.append(Unit(group.name, 0, group.length, 0))
            continue
        step = unit_step(group, manifest.storage)
        if size < group.length and size % step:
            raise ManifestError(
                f"manifest {manifest.name!r}: webdataset.samples_per_shard={size} is not a "
                f"multiple of the Zarr shard length {step} along {group.unit_dim!r} of group "
                f"{group.name!r}; two writers would share a shard. Make it a multiple of {step}."
            )
        for k, start in enumerate(range(0, group.length, size)):
            units.append(Unit(group.name, start, min(start + size, group.length), k))
    return units
