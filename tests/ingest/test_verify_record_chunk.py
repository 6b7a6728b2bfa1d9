"""The ingest's comparison of a WebDataset record with Zarr (issue 16): one inner chunk of the
record's region drawn at random instead of the whole region (a DeepCAD record of 32 frames
read ~60 MB of Zarr), with the record's shape still checked against the whole region, and a
record cut from the wrong place still caught; `cloudmic verify` keeps comparing whole
regions."""

from __future__ import annotations

import io
import json
import random

import numpy as np
import pytest
import zarr

from cloudmic.ingest.verify import _compare_record, _one_chunk, _selection

T, Y, X = 64, 40, 36


@pytest.fixture
def root():
    g = zarr.open_group(store={}, mode="w", zarr_format=3)
    data = np.arange(T * Y * X, dtype="uint16").reshape(T, Y, X)
    arr = g.create_array("rec/0/low", shape=data.shape, dtype=data.dtype, chunks=(16, 16, 16),
                         shards=(32, 32, 32), dimension_names=("t", "y", "x"))
    arr[...] = data
    return g, data


def _record(payload: np.ndarray, region: dict) -> dict[str, bytes]:
    buf = io.BytesIO()
    np.save(buf, payload, allow_pickle=False)
    zmeta = {"group": "rec", "paths": {"low": "0/low"}, **region}
    return {"json": json.dumps({"zarr": zmeta}).encode(), "low.npy": buf.getvalue()}


def test_one_chunk_is_inside_the_region_on_the_chunk_grid_and_matches_the_record(root):
    g, data = root
    arr = g["rec/0/low"]
    sel = _selection(arr, {"t": [8, 40], "y": [0, 40]})  # x: the whole dimension
    assert sel == (slice(8, 40), slice(0, 40), slice(0, X))
    shipped = data[sel]
    rng, seen = random.Random(0), set()
    for _ in range(100):
        narrow, part = _one_chunk(arr, sel, shipped, rng)
        for s, whole, c in zip(narrow, sel, arr.chunks, strict=True):
            assert whole.start <= s.start < s.stop <= whole.stop
            assert s.start // c == (s.stop - 1) // c  # within one chunk
        np.testing.assert_array_equal(part, data[narrow])
        seen.add(tuple((s.start, s.stop) for s in narrow))
    assert len(seen) > 10  # drawn all over the region, not always its first chunk


def test_an_index_dimension_is_kept_and_a_chunk_of_the_rest_drawn(root):
    g, data = root
    arr = g["rec/0/low"]
    sel = _selection(arr, {"t": 17})
    narrow, part = _one_chunk(arr, sel, data[17], random.Random(3))
    assert narrow[0] == 17 and part.shape == data[narrow].shape
    np.testing.assert_array_equal(part, data[narrow])


@pytest.mark.parametrize("rng", [None, random.Random(0)], ids=["whole", "one chunk"])
def test_a_true_record_passes_and_a_shifted_or_resized_one_is_caught(root, rng):
    g, data = root
    assert _compare_record(g, _record(data[16:48], {"t": [16, 48]}), "k", rng) is None
    for seed in range(20):  # whichever chunk is drawn, a record from the wrong frames differs
        shifted = _record(data[17:49], {"t": [16, 48]})
        problem = _compare_record(g, shifted, "k", random.Random(seed) if rng else None)
        assert problem == "k: low differs between the WebDataset record and Zarr"
    short = _compare_record(g, _record(data[16:47], {"t": [16, 48]}), "k", rng)
    assert short == "k: low is (31, 40, 36) in the WebDataset record, its Zarr region (32, 40, 36)"


def test_a_region_past_the_end_is_clipped_as_numpy_clips(root):
    g, data = root
    arr = g["rec/0/low"]
    sel = _selection(arr, {"t": [48, 80], "x": [-8, X]})  # the last tile of a short movie
    assert sel == (slice(48, T), slice(0, Y), slice(X - 8, X))
    assert _compare_record(g, _record(data[48:], {"t": [48, 80]}), "k",
                           random.Random(1)) is None
    empty = _selection(arr, {"t": [T, T + 4]})
    narrow, part = _one_chunk(arr, empty, data[T:], random.Random(0))
    assert narrow[0] == slice(T, T)  # nothing to draw from along t: it stays empty
    assert part.shape == data[narrow].shape and part.shape[0] == 0
