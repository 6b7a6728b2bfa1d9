"""Unpickling of metadata we did not write, without running anything the pickle asks for.

STED-FM stores each crop's metadata dict as a pickle (``numpy.savez(..., metadata=info)``).
``np.load(allow_pickle=True)`` would hand the bytes to :mod:`pickle`, which calls whatever
global the stream names: ``os.system``, ``builtins.eval``, ``subprocess.Popen``. Here every
global goes through :meth:`_RestrictedUnpickler.find_class`, which answers from a fixed
table and refuses the rest with :class:`UnsafePickleError` *before* anything is called.

What a plain metadata dict needs. dict/list/tuple/str/int/float/bool/None/bytes are built by
pickle opcodes and need no global at all. Only numpy scalars (``np.float64(0.5)`` as a
value) need globals: ``numpy._core.multiarray.scalar`` (``numpy.core...`` before numpy 2)
and ``numpy.dtype``. And because ``np.save`` pickles the whole 0-d object *array*, not the
dict (checked on the STED-FM-format tars: the stream starts with
``_reconstruct(ndarray, (0,), b'b')`` followed by ``BUILD`` with the state
``(1, (), dtype('O8'), False, [the dict])``), reading ``metadata.npy`` also needs
``numpy._core.multiarray._reconstruct`` and ``numpy.ndarray``.

None of these names is bound to the real numpy object. Each maps to a small inert stand-in
that records and checks its arguments:

* ``_reconstruct``/``ndarray``: the real ``_reconstruct`` only allocates an empty array, so
  it runs no code, but it allocates *whatever shape the stream asks for* (a memory bomb in
  a few bytes), and ``ndarray.__setstate__`` then parses attacker-chosen state in C. The
  stand-in builds no array: it checks that the stream describes exactly a 0-d object array
  and hands back its one item.
* ``dtype``: the stand-in accepts only simple type codes (bool, ints, floats, str, bytes,
  object) and keeps numpy's ``dtype.__setstate__`` away from untrusted state.
* ``scalar``: the real one with an object dtype returns its argument as is; the stand-in
  only decodes a buffer of exactly ``itemsize`` bytes as a bool/int/float/str/bytes scalar.

The stand-ins are sealed classes, so a ``BUILD`` opcode aimed at one of them cannot change
it for later loads.

Deliberately absent: ``numpy.frombuffer``/``numpy.core.numeric._frombuffer`` (protocol-5
out-of-band arrays: numeric arrays are not metadata), ``_codecs.encode`` (only Python-2-era
protocol-2 pickles need it for bytes, and it can reach arbitrary codecs such as zlib),
``builtins.set``/``frozenset``/``complex``/``collections.OrderedDict`` (not plain metadata;
protocol 4 builds sets without a global anyway, and the validator refuses them).

After loading, the result is validated recursively (plain types only, ``str`` keys, depth
and item limits) and numpy scalars are turned into Python scalars.

Memory bound. Before the unpickler sees a byte, the opcodes are walked with
:func:`pickletools.genops` (which reads from the input only and allocates nothing the input
does not hold). Two opcodes make the C unpickler allocate from a *number* rather than from
bytes: a memo index (``PUT``/``BINPUT``/``LONG_BINPUT``: the memo grows to the index named,
so 10 bytes asking for index 2**26 cost ~1 GB) and a ``FRAME`` length. A memo index must be
below the number of memo stores in the stream and a frame must fit in the bytes left;
declared string/bytes lengths beyond the end of the input fail the walk. So loading costs at
most ~40 bytes per input byte (memo, stack and objects, all proportional to
``len(data)``), with ``len(data)`` capped at ``max_bytes`` (1 MiB): ~40 MiB worst case.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import re
from typing import Any

import numpy as np

from cloudmic.errors import SourceError

MAX_PICKLE_BYTES = 1024 * 1024
MAX_ITEMS = 10_000
MAX_DEPTH = 20

_NUMPY_CORE = ("numpy._core.multiarray", "numpy.core.multiarray")
# Simple dtypes a metadata value can carry; 'O' only ever wraps the 0-d array itself.
_DTYPE_SPEC = re.compile(r"^[<>|=]?(?:b1|[iu][1248]|f[248]|[US]\d{1,6}|O[48]?)$")
_SCALAR_KINDS = frozenset("biufUS")

_FIX_UNSAFE = (
    "do not load this member: it asks to run code, which a metadata dict never needs. "
    "Take the archive from the original publisher, or report it to them"
)
_FIX_BOMB = (
    "do not load this member: its sizes are forged (a memory bomb); take the archive from "
    "the original publisher"
)
_FIX_SHAPE = "the member does not hold plain metadata: rebuild it or take it from the publisher"


class UnsafePickleError(SourceError):
    """A pickle names a global outside the allowlist; nothing from it was called."""

    def __init__(self, path: object, problem: str, fix: str, refused: str = "") -> None:
        super().__init__(path, problem, fix)
        self.refused = refused

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions travel between dask workers pickled; keep the full constructor args.
        return (type(self), (self.path, self.problem, self.fix, self.refused))


class _BadStructure(Exception):
    """Internal: an allowed global was called with arguments plain metadata never has."""


class _Sealed(type):
    """Metaclass of every stand-in handed to a pickle.

    ``BUILD`` on an object without ``__setstate__`` sets attributes on it; aimed at a
    stand-in class that would change it for every later load in the process. Sealed classes
    refuse (their ``__dict__`` is a read-only mappingproxy, and ``setattr`` raises here).
    """

    def __setattr__(cls, name: str, value: object) -> None:
        raise _BadStructure(f"a pickle tried to set {name!r} on an allowed global")

    def __delattr__(cls, name: str) -> None:
        raise _BadStructure(f"a pickle tried to delete {name!r} from an allowed global")


class _NdarrayToken(metaclass=_Sealed):
    """Stands in for ``numpy.ndarray`` as the first argument of ``_reconstruct``."""

    __slots__ = ()


class _DtypeStub(metaclass=_Sealed):
    """What ``numpy.dtype(spec, align, copy)`` described, checked but not built from state."""

    __slots__ = ("spec", "byteorder")

    def __init__(self, spec: object, *_flags: object) -> None:
        if not isinstance(spec, str) or not _DTYPE_SPEC.match(spec):
            raise _BadStructure(f"dtype {spec!r} is not a simple scalar type")
        self.spec = spec
        self.byteorder = "="

    def __setstate__(self, state: object) -> None:
        # numpy's dtype state: (version, byteorder, subarray, names, fields, elsize,
        # alignment, flags[, metadata]). Simple types have no subarray/names/fields/metadata.
        if not isinstance(state, tuple) or len(state) not in (8, 9) or state[0] not in (3, 4):
            raise _BadStructure("unexpected dtype state")
        if state[1] not in ("<", ">", "|", "=") or any(s is not None for s in state[2:5]):
            raise _BadStructure("structured or sub-array dtypes are not plain metadata")
        if len(state) == 9 and state[8] is not None:
            raise _BadStructure("dtype metadata is not plain metadata")
        self.byteorder = state[1]

    def dtype(self) -> np.dtype:
        dt = np.dtype(self.spec)
        return dt if self.byteorder in ("|", "=") else dt.newbyteorder(self.byteorder)


class _ArrayStub(metaclass=_Sealed):
    """What ``_reconstruct(ndarray, (0,), b'b')`` + ``BUILD(state)`` described."""

    __slots__ = ("item", "built")

    def __init__(self, subtype: object, shape: object, typecode: object) -> None:
        if subtype is not _NdarrayToken or shape != (0,) or typecode not in (b"b", "b"):
            raise _BadStructure("the array reconstruction does not look like numpy's")
        self.item: Any = None
        self.built = False

    def __setstate__(self, state: object) -> None:
        if not (isinstance(state, tuple) and len(state) == 5 and state[0] == 1):
            raise _BadStructure("unexpected ndarray state")
        _, shape, dtype, _fortran, data = state
        if shape != () or not isinstance(dtype, _DtypeStub) or dtype.dtype() != np.dtype("O"):
            raise _BadStructure("the pickled array is not a 0-d object array")
        if not (isinstance(data, list) and len(data) == 1):
            raise _BadStructure("a 0-d object array must hold exactly one item")
        self.item, self.built = data[0], True


class _Scalar(metaclass=_Sealed):
    """Stands in for numpy's ``scalar(dtype, data)``; calling it returns a numpy scalar.

    A class rather than a function so that it is sealed too (a function's ``__dict__``
    and ``__defaults__`` are writable).
    """

    __slots__ = ()

    def __new__(cls, dtype: object = None, data: object = None) -> Any:
        if not isinstance(dtype, _DtypeStub) or not isinstance(data, bytes):
            raise _BadStructure("numpy scalar with unexpected arguments")
        dt = dtype.dtype()
        if dt.kind not in _SCALAR_KINDS or len(data) != dt.itemsize:
            raise _BadStructure(f"numpy scalar of dtype {dt} with {len(data)} bytes")
        # Exactly itemsize bytes of a bool/int/float/str/bytes dtype: any bytes are valid.
        return np.frombuffer(data, dtype=dt)[0]


_SCALAR_GLOBALS: dict[tuple[str, str], Any] = {
    **{(mod, "scalar"): _Scalar for mod in _NUMPY_CORE},
    ("numpy", "dtype"): _DtypeStub,
}
_ARRAY_GLOBALS: dict[tuple[str, str], Any] = {
    **{(mod, "_reconstruct"): _ArrayStub for mod in _NUMPY_CORE},
    ("numpy", "ndarray"): _NdarrayToken,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, *, what: str, allowed: dict[tuple[str, str], Any]) -> None:
        super().__init__(io.BytesIO(data))
        self._what, self._allowed = what, allowed

    def find_class(self, module: str, name: str) -> Any:
        # The one door to globals: REDUCE/NEWOBJ/INST/OBJ/EXT* all come through here.
        try:
            return self._allowed[(module, name)]
        except KeyError:
            refused = f"{module}.{name}"
            raise UnsafePickleError(
                self._what,
                f"refused to unpickle: the pickle asks for {refused!r}, which plain metadata "
                "never needs (allowed: numpy scalars, and the 0-d array np.save wraps them "
                "in); nothing was executed",
                _FIX_UNSAFE,
                refused=refused,
            ) from None

    def persistent_load(self, pid: object) -> Any:
        raise UnsafePickleError(
            self._what,
            "refused to unpickle: persistent ids are not plain data",
            _FIX_UNSAFE,
            refused="persistent_load",
        )


class _Bomb(Exception):
    """Internal: a declared size the input cannot back."""


_MEMO_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})


def _prescan(data: bytes, what: str) -> None:
    """Refuse numbers that would make the unpickler allocate more than the input justifies."""
    top, memos, n = -1, 0, len(data)
    try:
        for op, arg, pos in pickletools.genops(data):
            if op.name in _MEMO_PUTS:
                top = max(top, int(arg))
            if op.name in _MEMO_PUTS or op.name == "MEMOIZE":
                memos += 1
            elif op.name == "FRAME" and arg > n - pos - 9:  # 9: the opcode and its length
                raise _Bomb(f"a frame of {arg:,} bytes, but only {n - pos - 9:,} follow")
    except _Bomb as exc:  # also what a pickle cut short looks like
        raise SourceError(
            what, f"metadata pickle is damaged or forged: {exc}", "download the archive again"
        ) from None
    except (ValueError, TypeError, OverflowError) as exc:  # genops: truncated or bad opcodes
        raise SourceError(
            what, f"metadata pickle is damaged ({exc})", "download the archive again"
        ) from None
    # Checked after the walk: a memo index can only name one of the stream's memo stores.
    if top >= memos:
        raise SourceError(
            what,
            f"refused to unpickle: memo index {top:,} in a pickle with {memos:,} memo "
            "entries (the unpickler would allocate a memo that large)",
            _FIX_BOMB,
        )


def _load(data: bytes, *, what: str, allowed: dict[tuple[str, str], Any], max_bytes: int) -> Any:
    if len(data) > max_bytes:
        raise SourceError(
            what,
            f"metadata pickle is {len(data):,} bytes, above the limit of {max_bytes:,} bytes",
            "metadata dicts are a few hundred bytes: this member is not plain metadata",
        )
    _prescan(data, what)
    try:
        return _RestrictedUnpickler(data, what=what, allowed=allowed).load()
    except UnsafePickleError:
        raise
    except _BadStructure as exc:
        raise SourceError(what, f"metadata pickle is not plain data: {exc}", _FIX_SHAPE) from None
    except RecursionError:
        raise SourceError(what, "metadata pickle is nested too deeply", _FIX_SHAPE) from None
    except Exception as exc:  # pickle raises a zoo of types for damaged streams
        raise SourceError(
            what,
            f"metadata pickle is damaged ({type(exc).__name__}: {exc})",
            "download the archive again",
        ) from exc


def _plain(obj: Any, *, what: str, depth: int, budget: list[int], max_depth: int) -> Any:
    """A copy of ``obj`` made of plain Python types only, numpy scalars converted."""
    budget[0] -= 1
    if budget[0] < 0:
        raise SourceError(what, "metadata has too many items", _FIX_SHAPE)
    if depth > max_depth:
        raise SourceError(what, f"metadata is nested deeper than {max_depth} levels", _FIX_SHAPE)
    if obj is None or type(obj) in (bool, int, float, str, bytes):
        return obj
    if isinstance(obj, np.generic) and obj.dtype.kind in _SCALAR_KINDS:
        return obj.item()
    kw = {"what": what, "depth": depth + 1, "budget": budget, "max_depth": max_depth}
    if type(obj) is dict:
        out = {}
        for key, value in obj.items():
            if type(key) is not str:
                raise SourceError(what, f"metadata key {key!r} is not a string", _FIX_SHAPE)
            out[key] = _plain(value, **kw)
        return out
    if type(obj) in (list, tuple):
        return type(obj)(_plain(v, **kw) for v in obj)
    raise SourceError(
        what, f"metadata holds a {type(obj).__name__}, which is not plain data", _FIX_SHAPE
    )


def restricted_loads(
    data: bytes,
    *,
    what: str,
    max_bytes: int = MAX_PICKLE_BYTES,
    max_items: int = MAX_ITEMS,
    max_depth: int = MAX_DEPTH,
) -> Any:
    """Unpickle plain data (containers, scalars, numpy scalars); refuse any other global.

    ``what`` names the source (archive member) in every error.
    """
    obj = _load(data, what=what, allowed=_SCALAR_GLOBALS, max_bytes=max_bytes)
    return _plain(obj, what=what, depth=0, budget=[max_items], max_depth=max_depth)


def load_0d_object_array_item(
    data: bytes,
    *,
    what: str,
    max_bytes: int = MAX_PICKLE_BYTES,
    max_items: int = MAX_ITEMS,
    max_depth: int = MAX_DEPTH,
) -> Any:
    """The item of a pickled 0-d object array (the body ``np.save`` writes after the header).

    Same guarantees as :func:`restricted_loads`; the array wrapper itself is checked and
    dropped without numpy ever building it.
    """
    allowed = {**_SCALAR_GLOBALS, **_ARRAY_GLOBALS}
    obj = _load(data, what=what, allowed=allowed, max_bytes=max_bytes)
    # getattr: NEWOBJ can create a stub without running __init__.
    if not (isinstance(obj, _ArrayStub) and getattr(obj, "built", False)):
        raise SourceError(what, "the .npy payload is not a pickled 0-d object array", _FIX_SHAPE)
    return _plain(obj.item, what=what, depth=0, budget=[max_items], max_depth=max_depth)
