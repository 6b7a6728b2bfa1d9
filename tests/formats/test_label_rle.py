"""platelet-em RLE JSON labels: the published example, round trips, and every refusal."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from cloudmic.errors import SourceError
from cloudmic.formats.label_rle import decode_rle, encode_rle

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
