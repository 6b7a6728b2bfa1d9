"""The ingest's read-back of the source (issue 16): a window of each sampled unit, not the
whole unit, so that a small dataset's verify does not re-read half of its source; windows
start and end where every pyramid level's rows are whole, and still catch a unit written
from the wrong rows."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import pytest
import zarr

from cloudmic.ingest.verify import _window, verify_against_source
from cloudmic.layout.schema import GroupSpec, Unit, VarSpec

LENGTH, UNIT = 256, 128


def _group(factor: int) -> GroupSpec:
    return GroupSpec("g", "t", LENGTH, (
        VarSpec("0/x", ("t", "y"), (LENGTH, 3), "int32"),
        VarSpec("1/x", ("t", "y"), (-(-LENGTH // factor), 3), "int32", factor=factor)))


@pytest.mark.parametrize("factor", [1, 2, 4, 8])
def test_a_window_is_inside_its_unit_and_whole_on_every_level(factor):
    group, rng = _group(factor), random.Random(1)
    unit = Unit("g", UNIT, 2 * UNIT, 1)
    starts = set()
    for _ in range(200):
        w = _window(group, unit, 16, rng)
        assert unit.start <= w.start < w.stop <= unit.stop and w.key == unit.key
        assert w.start % factor == 0 and (w.stop - w.start) % factor == 0
        assert 16 <= w.stop - w.start < 16 + factor
        starts.add(w.start)
    assert len(starts) > 5  # anywhere in the unit, not always at its start


def test_a_unit_that_is_short_unaligned_or_without_a_unit_dim_is_read_whole():
    rng = random.Random(0)
    short = Unit("g", 0, 16, 0)
    assert _window(_group(1), short, 16, rng) == short
    unaligned = Unit("g", 3, 3 + UNIT, 0)
    assert _window(_group(2), unaligned, 16, rng) == unaligned
    cell = GroupSpec("cell", None, 1, (VarSpec("x", ("y",), (9,), "int32"),))
    whole = Unit("cell", 0, 1, 0)
    assert _window(cell, whole, 16, rng) == whole


class _Adapter:
    """Reads rows of ``src`` (level 1: every ``factor``-th row), and remembers each read."""

    def __init__(self, src: np.ndarray, factor: int) -> None:
        self.src, self.factor, self.reads = src, factor, []

    def read_unit(self, inv, unit):
        self.reads.append((unit.start, unit.stop))
        rows = self.src[unit.start:unit.stop]
        return {"0/x": rows, "1/x": rows[::self.factor]}


def _store(src: np.ndarray, factor: int) -> zarr.Group:
    root = zarr.open_group(zarr.storage.MemoryStore(), mode="w", zarr_format=3)
    g = root.create_group("g")
    g.create_group("0").create_array("x", data=src, chunks=(32, 3))
    g.create_group("1").create_array("x", data=src[::factor], chunks=(32, 3))
    return root


def test_the_read_back_reads_windows_and_catches_a_unit_written_from_other_rows():
    factor = 4
    group = _group(factor)
    inv = SimpleNamespace(group=lambda name: group)
    src = np.arange(LENGTH * 3, dtype="int32").reshape(LENGTH, 3)
    units = [Unit("g", 0, UNIT, 0), Unit("g", UNIT, LENGTH, 1)]
    root = _store(src, factor)
    adapter = _Adapter(src, factor)
    assert verify_against_source(adapter, inv, units, root) == []
    assert len(adapter.reads) == 2
    assert all(b - a == 16 and a % factor == 0 for a, b in adapter.reads)  # not 128 rows
    # the second unit written from the first unit's rows (stale data), on both levels
    root["g/0/x"][UNIT:] = src[:UNIT]
    root["g/1/x"][UNIT // factor:] = src[:UNIT:factor]
    problems = verify_against_source(adapter, inv, units, root)
    assert problems == ["unit g/000001: g/0/x differs from a fresh read of its source",
                        "unit g/000001: g/1/x differs from a fresh read of its source"]
