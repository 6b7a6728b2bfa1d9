"""platelet-em RLE JSON labels: the published example, round trips, and every refusal."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from cloudmic.errors import SourceError
from cloudmic.formats.label_rle import decode_rle, encode_rle, parse_rle

# The docstring example of bio3d_vision convert.indexed_to_dict (datasets.md section 5).
EXAMPLE = {
    "1": "7 2 12 1 21 1 40 1 50 4 60 3 68 1 71 1 81 1",
    "2": "1 3 11 1 33 2 42 3 87 2",
    ".info": {"shape": [10, 10], "dtype": "int64"},
}


def _blob(doc: dict) -> bytes:
    return json.dumps(doc).encode()


def test_published_example_decodes_and_encodes_back() -> None:
    vol = decode_rle(_blob(EXAMPLE), name="example.json")
    assert vol.shape == (10, 10) and vol.dtype == np.int64
    flat = vol.reshape(-1)
    assert flat[6:8].tolist() == [1, 1]  # "7 2": 1-based start 7, length 2
    assert flat[0:3].tolist() == [2, 2, 2]  # "1 3"
    assert np.count_nonzero(flat == 1) == 2 + 1 + 1 + 1 + 4 + 3 + 1 + 1 + 1
    assert np.count_nonzero(flat == 2) == 3 + 1 + 2 + 3 + 2
    assert encode_rle(vol) == _blob(EXAMPLE)


def test_encoded_layout_info_last_and_keys_ascending() -> None:
    vol = np.zeros((2, 3, 4), np.uint16)
    vol[1, 2, 3] = 300
    vol[0, 0, 0] = 7
    doc = json.loads(encode_rle(vol))
    assert list(doc) == ["7", "300", ".info"]
    assert doc["7"] == "1 1" and doc["300"] == "24 1"
    assert doc[".info"] == {"shape": [2, 3, 4], "dtype": "uint16"}


def test_dtype_override_and_empty_volume() -> None:
    vol = np.zeros((3, 2, 2), np.int64)
    doc = json.loads(encode_rle(vol, dtype="uint8"))
    assert doc == {".info": {"shape": [3, 2, 2], "dtype": "uint8"}}
    out = decode_rle(encode_rle(vol, dtype="uint8"), name="x")
    assert out.dtype == np.uint8 and not out.any()
    with pytest.raises(ValueError, match="cannot hold"):
        encode_rle(np.array([[[256]]]), dtype="uint8")
    with pytest.raises(ValueError, match="integer"):
        encode_rle(np.zeros((2, 2), np.float32))


@st.composite
def volumes(draw):
    dtype = draw(st.sampled_from([np.uint8, np.uint16, np.int32]))
    shape = draw(array_shapes(min_dims=3, max_dims=3, min_side=1, max_side=6))
    info = np.iinfo(dtype)
    # Few distinct values, so runs are long and labels repeat; 0 is the background.
    pool = draw(st.lists(st.integers(info.min, info.max), min_size=1, max_size=4))
    values = st.sampled_from([0, *pool])
    return draw(arrays(dtype, shape, elements=values))


@settings(max_examples=200, deadline=None)
@given(volumes())
def test_round_trip(vol: np.ndarray) -> None:
    blob = encode_rle(vol)
    out = decode_rle(blob, name="rt.json", expected_shape=vol.shape)
    assert out.dtype == vol.dtype and out.shape == vol.shape
    np.testing.assert_array_equal(out, vol)
    doc = json.loads(blob)
    assert list(doc)[-1] == ".info"
    assert sorted(int(k) for k in doc if k != ".info") == sorted(set(vol[vol != 0].tolist()))


def test_reads_a_path_and_names_it(tmp_path) -> None:
    path = tmp_path / "50-semantic.json"
    path.write_bytes(_blob(EXAMPLE))
    np.testing.assert_array_equal(decode_rle(path), decode_rle(_blob(EXAMPLE), name="b"))
    path.write_bytes(b"{not json")
    with pytest.raises(SourceError, match="50-semantic.json") as exc:
        decode_rle(path)
    assert "not valid JSON" in str(exc.value) and "what to do" in str(exc.value)


def _refuse(doc_or_blob, match: str, **kwargs) -> SourceError:
    blob = doc_or_blob if isinstance(doc_or_blob, bytes) else _blob(doc_or_blob)
    with pytest.raises(SourceError, match=match) as exc:
        decode_rle(blob, name="labels/50-instance-cell.json", **kwargs)
    assert exc.value.path == "labels/50-instance-cell.json"
    assert exc.value.fix
    return exc.value


def _info(shape=(2, 3, 4), dtype="uint16") -> dict:
    return {"shape": list(shape), "dtype": dtype}


def test_refuses_huge_info_shape_without_allocating() -> None:
    # 10^15 voxels would be petabytes; the refusal happens before any allocation.
    doc = {"1": "1 5", ".info": _info((100_000, 100_000, 100_000))}
    err = _refuse(doc, "more than the limit")
    assert "1,000,000,000,000,000" in err.problem
    _refuse({".info": _info((2, 3, 4))}, "more than the limit", max_voxels=23)
    assert decode_rle(_blob({".info": _info((2, 3, 4))}), name="x", max_voxels=24).size == 24
    # Hostile sizes that overflow int64 too.
    _refuse({".info": _info((2**40, 2**40, 2**40))}, "more than the limit")


def test_refuses_shape_different_from_the_image() -> None:
    doc = {"1": "1 5", ".info": _info((2, 3, 4))}
    err = _refuse(doc, "differs from its image", expected_shape=(2, 4, 3))
    assert "(2, 3, 4)" in err.problem and "(2, 4, 3)" in err.problem
    assert decode_rle(_blob(doc), name="x", expected_shape=(2, 3, 4)).shape == (2, 3, 4)


@pytest.mark.parametrize(
    "runs",
    ["0 1", "24 2", "25 1", "1 25", "99999999999999999999999 1", "3 99999999999999999999999"],
)
def test_refuses_runs_outside_the_volume(runs: str) -> None:
    _refuse({"1": runs, ".info": _info()}, "outside the volume")


def test_run_ending_on_the_last_voxel_is_fine() -> None:
    vol = decode_rle(_blob({"1": "24 1", "2": "1 23", ".info": _info()}), name="x")
    assert vol.reshape(-1)[-1] == 1 and (vol.reshape(-1)[:-1] == 2).all()


@pytest.mark.parametrize("runs", ["3 0", "3 -2", "1 1 5 0"])
def test_refuses_zero_or_negative_lengths(runs: str) -> None:
    _refuse({"1": runs, ".info": _info()}, "lengths must be >= 1")


def test_refuses_overlapping_labels() -> None:
    err = _refuse({"1": "1 5", "2": "5 3", ".info": _info()}, "overlapping runs")
    assert "labels 1 and 2" in err.problem and "(0, 1, 0)" in err.problem
    _refuse({"7": "1 5 3 2", ".info": _info()}, "label 7 claims twice")


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        (b"", "not valid JSON"),
        (b'{"1": "1 2", ".info": {"shape": [2, 3, 4], "dtype": "uint16"}', "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "top level is a JSON list"),
        (b'{"1": "1 2"}', "no '.info'"),
        (b'{"1": "1 2", "1": "3 1", ".info": {"shape": [4], "dtype": "uint8"}}', "occurs twice"),
        ({"1": "1 2", "01": "5 1", ".info": _info()}, "same label 1"),
        ({"a": "1 2", ".info": _info()}, "neither a label value"),
        ({"0": "1 2", ".info": _info()}, "0 is the background"),
        ({"300": "1 2", ".info": _info(dtype="uint8")}, "does not fit"),
        ({"1": "1 2 3", ".info": _info()}, "not start/length pairs"),
        ({"1": "1, 2", ".info": _info()}, "string of integers"),
        ({"1": [1, 2], ".info": _info()}, "string of integers"),
        ({"1": "1 2.5", ".info": _info()}, "string of integers"),
        ({".info": [2, 3, 4]}, "not an object"),
        ({".info": {"shape": "2x3", "dtype": "uint8"}}, "not a list of integers"),
        ({".info": {"shape": [], "dtype": "uint8"}}, "not a list of integers"),
        ({".info": {"shape": [2, 1.5], "dtype": "uint8"}}, "not a list of integers"),
        ({".info": {"shape": [2, 0, 3], "dtype": "uint8"}}, "side < 1"),
        ({".info": {"shape": [2, -3, 3], "dtype": "uint8"}}, "side < 1"),
    ],
)
def test_refuses_malformed(doc, match: str) -> None:
    _refuse(doc, match)


@pytest.mark.parametrize("dtype", ["np.float", "np.int64", "float32", "bool", "complex64",
                                   "nonsense", 5, None])
def test_refuses_unknown_dtype(dtype) -> None:
    err = _refuse({"1": "1 2", ".info": _info(dtype=dtype)}, "not an integer numpy dtype")
    assert "int64" in err.fix


def test_authors_np_int_dtype_is_int64() -> None:
    # the example .info of the authors' format page, verbatim (datasets.md section 5)
    doc = {**EXAMPLE, ".info": {"dtype": "np.int", "shape": [10, 10]}}
    vol = decode_rle(_blob(doc), name="example.json")
    assert vol.dtype == np.int64 and np.array_equal(vol, decode_rle(_blob(EXAMPLE)))


def test_info_not_last_is_accepted() -> None:
    doc = {".info": _info(), "2": "1 2"}
    assert decode_rle(_blob(doc), name="x").reshape(-1)[:3].tolist() == [2, 2, 0]


def test_big_endian_dtype_gives_native_array() -> None:
    out = decode_rle(_blob({"513": "2 1", ".info": _info(dtype=">u2")}), name="x")
    assert out.dtype == np.uint16 and out.dtype.isnative and out.reshape(-1)[1] == 513


@pytest.mark.parametrize("dtype", ["0 3 uint16", "u2,u2", "(2,)u2", "uint16 uint16", ""])
def test_odd_info_dtype_is_a_source_error(dtype):
    # "0 3 uint16" made numpy raise SyntaxError (issue 14).
    doc = {"1": "1 2", ".info": {"shape": [1, 2, 2], "dtype": dtype}}
    with pytest.raises(SourceError, match=r"labels\.json: '\.info' dtype"):
        decode_rle(json.dumps(doc).encode(), name="labels.json")


def test_runs_are_parsed_without_a_token_list():
    vol = np.zeros((2, 3, 4), np.uint16)
    vol[0, 1, 1:3] = 7
    vol[1, 2, :] = 3
    assert np.array_equal(decode_rle(encode_rle(vol)), vol)
    doc = {"1": "1 2\n 5\t1", ".info": {"shape": [1, 2, 4], "dtype": "uint8"}}
    assert decode_rle(json.dumps(doc).encode()).reshape(-1).tolist() == [1, 1, 0, 0, 1, 0, 0, 0]


# --- ranged decode: a slab of the volume, for one ingest work unit (issue 16) ----------------
@settings(max_examples=150, deadline=None)
@given(volumes(), st.data())
def test_every_slab_and_flat_range_equals_the_whole_decode(vol: np.ndarray, data) -> None:
    blob = encode_rle(vol)
    runs = parse_rle(blob, name="rt.json", expected_shape=vol.shape)
    z = vol.shape[0]
    for a in range(z + 1):
        for b in range(a, z + 1):
            got = runs.slab(a, b)
            assert got.dtype == vol.dtype and got.shape == (b - a, *vol.shape[1:])
            np.testing.assert_array_equal(got, vol[a:b])
    a = data.draw(st.integers(0, z))
    b = data.draw(st.integers(a, z))
    np.testing.assert_array_equal(decode_rle(blob, start=a, stop=b), vol[a:b])
    flat = vol.reshape(-1)
    a = data.draw(st.integers(0, flat.size))
    b = data.draw(st.integers(a, flat.size))
    np.testing.assert_array_equal(runs.flat(a, b), flat[a:b])
    assert runs.value_range() == (int(vol.min()), int(vol.max()))


def test_a_run_crossing_slab_edges_is_clipped_not_lost() -> None:
    # (4, 3, 4): 12 voxels per slice; run "5 30" covers flat 4..33 (0-based), so it starts
    # inside slice 0, fills slice 1 and ends inside slice 2
    doc = {"3": "5 30", "9": "45 4", ".info": _info((4, 3, 4), "uint8")}
    whole = decode_rle(_blob(doc), name="x")
    flat = whole.reshape(-1)
    assert (flat[4:34] == 3).all() and (flat[44:48] == 9).all()
    assert np.count_nonzero(flat) == 34
    for a, b in [(0, 1), (1, 2), (2, 3), (3, 4), (0, 2), (1, 3), (2, 4)]:
        slab = decode_rle(_blob(doc), name="x", start=a, stop=b)
        np.testing.assert_array_equal(slab, whole[a:b])
    assert decode_rle(_blob(doc), start=0, stop=1).reshape(-1).tolist() == [0] * 4 + [3] * 8
    assert (decode_rle(_blob(doc), start=1, stop=2) == 3).all()
    assert decode_rle(_blob(doc), start=2, stop=3).reshape(-1).tolist() == [3] * 10 + [0] * 2
    # flat ranges cut inside a run, at its first and last voxel, and just outside it
    runs = parse_rle(_blob(doc))
    for a, b in [(4, 5), (33, 34), (3, 5), (33, 35), (10, 20), (34, 44), (0, 48), (47, 48)]:
        np.testing.assert_array_equal(runs.flat(a, b), flat[a:b])


def test_every_label_value_lands_in_its_slab() -> None:
    rng = np.random.default_rng(4)
    vol = np.zeros((9, 5, 7), np.int32)
    values = [1, 2, 255, 256, 70000, -5, 2**31 - 1]
    for k, v in enumerate(values):
        vol[k, k % 5, :] = v  # one row each, in its own slice
    vol[7:9] = np.where(rng.random((2, 5, 7)) < 0.5, 11, 0)  # short runs, slab by slab
    blob = encode_rle(vol)
    seen: set[int] = set()
    for a in range(0, 9, 2):
        slab = decode_rle(blob, start=a, stop=min(a + 2, 9))
        np.testing.assert_array_equal(slab, vol[a:a + 2])
        seen |= set(np.unique(slab).tolist())
    assert seen == {0, 11, *values}


def test_empty_slabs_and_slabs_without_runs() -> None:
    doc = {"1": "1 3", ".info": _info((3, 2, 2), "uint16")}
    empty = decode_rle(_blob(doc), start=2, stop=2)
    assert empty.shape == (0, 2, 2) and empty.dtype == np.uint16
    nothing = decode_rle(_blob(doc), start=1, stop=3)
    assert nothing.shape == (2, 2, 2) and not nothing.any()
    zeros = parse_rle(_blob({".info": _info((3, 2, 2), "int64")}))
    assert zeros.value_range() == (0, 0) and not zeros.slab(1, 2).any()
    assert zeros.flat(5, 5).shape == (0,)
    full = parse_rle(_blob({"4": "1 12", ".info": _info((3, 2, 2), "int64")}))
    assert full.value_range() == (4, 4)


@pytest.mark.parametrize(("start", "stop"), [(-1, 2), (2, 1), (0, 4), (4, 4)])
def test_slab_outside_the_volume_is_a_caller_error(start: int, stop: int) -> None:
    with pytest.raises(ValueError, match="not inside"):
        decode_rle(_blob({"1": "1 3", ".info": _info((3, 2, 2))}), start=start, stop=stop)
    runs = parse_rle(_blob({"1": "1 3", ".info": _info((3, 2, 2))}))
    with pytest.raises(ValueError, match="not inside"):
        runs.flat(-1, 3)
    with pytest.raises(ValueError, match="not inside"):
        runs.flat(0, 13)


def test_slab_in_another_dtype_checks_the_labels_it_holds() -> None:
    doc = {"300": "1 4", "5": "9 4", ".info": _info((3, 2, 2), "int64")}
    runs = parse_rle(_blob(doc))
    out = runs.slab(2, 3, dtype="uint8")  # only label 5 lives there
    assert out.dtype == np.uint8 and out.reshape(-1).tolist() == [5] * 4
    with pytest.raises(ValueError, match="300..300 in this range do not fit uint8"):
        runs.slab(0, 1, dtype="uint8")
    with pytest.raises(ValueError, match="integer dtype"):
        runs.slab(0, 1, dtype="float32")
    assert runs.slab(0, 3, dtype="uint32").tolist() == decode_rle(_blob(doc)).tolist()


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ({"1": "1 5", "2": "20 3 5 3", ".info": _info()}, "overlapping runs"),  # in slice 0
        ({"1": "1 2", "2": "23 3", ".info": _info()}, "outside the volume"),  # in slice 1
        ({"1": "1 2", "01": "20 1", ".info": _info()}, "same label 1"),
        ({"1": "13 0", ".info": _info()}, "lengths must be >= 1"),
        ({"300": "13 1", ".info": _info(dtype="uint8")}, "does not fit"),
        ({"1": "13 1", ".info": _info(dtype="np.float")}, "not an integer numpy dtype"),
    ],
)
def test_a_slab_still_checks_the_whole_file(doc, match: str) -> None:
    # the bad run lies in the other slice: a slab decode refuses the file all the same
    for start, stop in ((0, 1), (1, 2)):
        _refuse(doc, match, start=start, stop=stop)
        with pytest.raises(SourceError, match=match):
            parse_rle(_blob(doc), name="labels/50-instance-cell.json")


def test_np_int_slab_is_int64() -> None:
    doc = {**EXAMPLE, ".info": {"dtype": "np.int", "shape": [10, 10]}}
    slab = decode_rle(_blob(doc), name="example.json", start=3, stop=5)
    assert slab.dtype == np.int64 and np.array_equal(slab, decode_rle(_blob(EXAMPLE))[3:5])


def _big_labels(tmp_path, shape=(50, 800, 800)):
    """RLE JSON of a published-size int64 volume, written as text (never built in memory):
    a run of 300 voxels on every fourth row, each slice its own label, plus one run from
    the end of slice 15 through the first row of slice 16 (across the edge of a 16-slice
    unit)."""
    z, y, x = shape
    rows = np.arange(1, y, 4)
    docs: dict[str, str] = {}
    for k in range(z):
        starts = k * y * x + rows * x + 100 + 1
        docs[str(k + 1)] = " ".join(f"{s} 300" for s in starts.tolist())
    edge = 15 * y * x + 799 * x + 500  # (15, 799, 500), 0-based
    docs["999"] = f"{edge + 1} {300 + x}"  # to the end of (16, 0, :)
    docs[".info"] = {"shape": list(shape), "dtype": "int64"}  # type: ignore[assignment]
    path = tmp_path / "50-semantic.json"
    path.write_text(json.dumps(docs))
    return path


def test_a_slab_of_a_published_size_volume_allocates_about_the_slab(tmp_path) -> None:
    import tracemalloc

    path = _big_labels(tmp_path)
    volume_bytes = 50 * 800 * 800 * 8  # 256 MB of int64
    slab_bytes = 16 * 800 * 800 * 8
    runs = parse_rle(path)
    assert runs.nbytes < volume_bytes / 100  # ~O(runs): worth keeping between units
    tracemalloc.start()
    try:
        slab = runs.slab(16, 32)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        del slab
        parsed_and_decoded = decode_rle(path, start=16, stop=32)
        _, peak_with_parse = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < slab_bytes * 1.05 + 2**20, (peak, slab_bytes)
    assert peak_with_parse < slab_bytes * 1.1 + 2**24, (peak_with_parse, slab_bytes)
    assert peak_with_parse < volume_bytes * 0.4
    got = parsed_and_decoded
    assert got.shape == (16, 800, 800) and got.dtype == np.int64
    assert (got[0, 0] == 999).all()  # the run's tail, clipped at the slab's first voxel
    assert (got[0, 1, 100:400] == 17).all() and got[0, 1, 99] == 0 and got[0, 1, 400] == 0
    assert got[0, 2].max() == 0 and (got[15, 797, 100:400] == 32).all()
    head = runs.slab(15, 16)  # the run's head, clipped at the slab's last voxel
    assert (head[0, 799, 500:] == 999).all() and (head[0, 799, :500] == 0).all()
    assert int(np.count_nonzero(head == 999)) + int(np.count_nonzero(got == 999)) == 1100
