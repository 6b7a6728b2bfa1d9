import builtins
import io
import os
import pickle
import subprocess
from collections import OrderedDict

import numpy as np
import pytest

from cloudmic.errors import SourceError
from cloudmic.formats.safe_pickle import (
    UnsafePickleError,
    load_0d_object_array_item,
    restricted_loads,
)


class Reduce:
    """Pickles as ``fn(*args)``: how a hostile pickle asks for a call."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def npy_body(obj) -> bytes:
    """What np.save writes after the .npy header for a 0-d object array holding ``obj``."""
    buf = io.BytesIO()
    np.save(buf, np.array(obj, dtype=object), allow_pickle=True)
    arr_start = buf.getvalue().index(b"\n") + 1  # the v1.0 header ends with a newline
    return buf.getvalue()[arr_start:]


def test_plain_dict_with_numpy_scalars_becomes_plain_python():
    meta = {
        "chan-id": np.int64(3), "size": np.float32(0.5), "ok": np.bool_(True),
        "name": np.str_("STED_594 {6}"), "raw": b"\x00", "nested": [1, (2.5, None), {"a": "b"}],
    }  # fmt: skip
    out = restricted_loads(pickle.dumps(meta, protocol=4), what="m")
    assert out == {
        "chan-id": 3, "size": 0.5, "ok": True, "name": "STED_594 {6}", "raw": b"\x00",
        "nested": [1, (2.5, None), {"a": "b"}],
    }  # fmt: skip
    assert type(out["chan-id"]) is int and type(out["size"]) is float
    assert type(out["ok"]) is bool and type(out["name"]) is str


@pytest.mark.parametrize("protocol", [3, 4, 5])
def test_what_np_save_writes_for_a_0d_object_array(protocol):
    meta = {"protein-id": "f-actin", "chan-id": np.int64(0)}
    data = pickle.dumps(np.array(meta, dtype=object), protocol=protocol)
    # It is the whole ndarray, rebuilt through _reconstruct + ndarray + dtype:
    assert b"_reconstruct" in data and b"ndarray" in data
    assert load_0d_object_array_item(data, what="m") == {"protein-id": "f-actin", "chan-id": 0}
    assert load_0d_object_array_item(npy_body(meta), what="m") == meta
    # ... which plain restricted_loads refuses: an array is not plain metadata.
    with pytest.raises(UnsafePickleError, match="_reconstruct"):
        restricted_loads(data, what="m")


def test_numpy_1x_module_path_is_accepted():
    # numpy < 2 writes protocol 3 with 'numpy.core.multiarray' (GLOBAL opcode, no lengths).
    data = pickle.dumps(np.array({"a": np.float64(1.5)}, dtype=object), protocol=3)
    legacy = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert legacy != data
    assert load_0d_object_array_item(legacy, what="m") == {"a": 1.5}


@pytest.mark.parametrize(
    ("make", "refused"),
    [
        (lambda p: Reduce(os.system, f"touch {p}"), "system"),
        (lambda p: Reduce(builtins.eval, f"open({str(p)!r}, 'w')"), "builtins.eval"),
        (lambda p: Reduce(subprocess.Popen, ["touch", str(p)]), "subprocess.Popen"),
        (lambda p: Reduce(builtins.exec, f"open({str(p)!r}, 'w')"), "builtins.exec"),
        (lambda p: Reduce(np.frombuffer, b"\x00" * 8), "numpy"),
    ],
)
@pytest.mark.parametrize("wrapped", [False, True])
def test_hostile_globals_are_refused_and_nothing_runs(tmp_path, make, refused, wrapped):
    marker = tmp_path / "pwned"
    evil = make(marker)
    if wrapped:  # hidden inside a real metadata dict, inside the array np.save writes
        data = npy_body({"protein-id": "f-actin", "user-id": evil})
        load = load_0d_object_array_item
    else:
        data = pickle.dumps(evil, protocol=4)
        load = restricted_loads
    with pytest.raises(UnsafePickleError) as e:
        load(data, what="FUS-abc-0-0 (metadata.npy)")
    assert "FUS-abc-0-0 (metadata.npy)" in str(e.value) and refused in str(e.value)
    assert refused in e.value.refused and "nothing was executed" in str(e.value)
    assert not marker.exists()


def test_python2_style_names_are_refused_too(tmp_path):
    # Protocol 2 writes Python 2 names ('__builtin__.eval'); they are refused as written.
    marker = tmp_path / "pwned"
    data = pickle.dumps(Reduce(builtins.eval, f"open({str(marker)!r}, 'w')"), protocol=2)
    with pytest.raises(UnsafePickleError, match="__builtin__.eval"):
        restricted_loads(data, what="m")
    assert not marker.exists()


def test_refused_error_survives_pickling_between_workers():
    err = UnsafePickleError("m", "problem", "fix", refused="posix.system")
    back = pickle.loads(pickle.dumps(err))
    assert (back.path, back.problem, back.fix, back.refused) == (
        "m",
        "problem",
        "fix",
        "posix.system",
    )
    assert isinstance(back, SourceError)


def test_non_plain_types_are_refused():
    for obj in ({1, 2}, {"a": frozenset()}, {"a": 1j}, OrderedDict(a=1), {1: "int key"}):
        with pytest.raises(SourceError):
            restricted_loads(pickle.dumps(obj, protocol=4), what="m")


def test_structure_inside_the_array_wrapper_is_checked():
    with pytest.raises(SourceError, match="not a 0-d object array"):
        load_0d_object_array_item(pickle.dumps(np.array([1, 2], dtype=object)), what="m")
    with pytest.raises(SourceError, match="0-d object array"):
        load_0d_object_array_item(pickle.dumps(np.zeros((), dtype=np.float64)), what="m")
    with pytest.raises(SourceError, match="not a pickled 0-d object array"):
        load_0d_object_array_item(pickle.dumps({"a": 1}), what="m")


def test_huge_shape_is_refused_without_allocating():
    # The real _reconstruct would allocate 8 TB here; the stand-in checks the shape first.
    from numpy._core.multiarray import _reconstruct

    data = pickle.dumps(Reduce(_reconstruct, np.ndarray, (2**40,), b"b"), protocol=4)
    with pytest.raises(SourceError, match="does not look like numpy's"):
        load_0d_object_array_item(data, what="m")


@pytest.mark.parametrize(
    "glob", [b"numpy\ndtype", b"numpy._core.multiarray\nscalar", b"numpy\nndarray"]
)
def test_build_cannot_modify_the_allowed_globals(glob):
    from cloudmic.formats import safe_pickle

    # PROTO 2, GLOBAL <glob>, state (None, {"evil": 1}), BUILD: setattr(<global>, "evil", 1).
    state = b"N}X\x04\x00\x00\x00evilK\x01s\x86"
    data = b"\x80\x02c" + glob + b"\n" + state + b"b."
    load = safe_pickle.load_0d_object_array_item
    with pytest.raises(SourceError):
        load(data, what="m")
    stand_ins = [*safe_pickle._SCALAR_GLOBALS.values(), *safe_pickle._ARRAY_GLOBALS.values()]
    assert not any(hasattr(g, "evil") for g in stand_ins)


def test_limits():
    with pytest.raises(SourceError, match="above the limit"):
        restricted_loads(pickle.dumps("x" * 2_000_000), what="m")
    deep: list = []
    for _ in range(30):
        deep = [deep]
    with pytest.raises(SourceError, match="nested deeper than 20"):
        restricted_loads(pickle.dumps(deep), what="m")
    # Shared references blow up on a walk: 20 levels of a list holding the previous one
    # twice is 2^20 nodes from a few hundred bytes of pickle.
    bomb: list = []
    for _ in range(19):
        bomb = [bomb, bomb]
    with pytest.raises(SourceError, match="too many items"):
        restricted_loads(pickle.dumps(bomb), what="m")


def test_damaged_pickle_is_a_source_error():
    good = pickle.dumps({"a": 1})
    with pytest.raises(SourceError, match="damaged"):
        restricted_loads(good[:-3], what="m")


# --- issue 14: sizes the input cannot back ------------------------------------------------


def test_ten_byte_memo_bomb_is_refused_before_unpickling():
    # LONG_BINPUT 2**26: the C unpickler would grow its memo to 2**26 slots (~1 GB).
    bomb = b"\x80\x02K\x01r" + (2**26).to_bytes(4, "little") + b"."
    with pytest.raises(SourceError, match=r"m\.pkl: refused to unpickle: memo index 67,108,864"):
        restricted_loads(bomb, what="m.pkl")


@pytest.mark.parametrize("bomb", [
    b"K\x01p4294967295\n.",  # protocol-0 PUT with a huge index
    b"\x80\x04\x95" + (2**60).to_bytes(8, "little") + b"K\x01.",  # a frame beyond the input
    b"\x80\x03X" + (2**31).to_bytes(4, "little") + b"ab.",  # a string beyond the input
])
def test_forged_sizes_are_refused(bomb):
    with pytest.raises(SourceError, match="m.pkl"):
        restricted_loads(bomb, what="m.pkl")


def test_memoized_pickles_still_load():
    value = {"a": [1, 2], "b": [1, 2], "s": "x" * 300}
    for protocol in range(6):
        assert restricted_loads(pickle.dumps(value, protocol=protocol), what="m") == value
