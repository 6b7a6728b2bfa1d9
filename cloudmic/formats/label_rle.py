"""platelet-em RLE JSON labels (bio3d_vision ``convert.indexed_to_dict`` / ``dict_to_indexed``).

The layout, as ``shared/datasets.md`` section 5 records it from the authors' code::

    {"1": "7 2 12 1 ...", "2": "1 3 11 1 ...", ".info": {"shape": [Z, Y, X], "dtype": "uint16"}}

- one key ``str(int(label))`` per non-zero label, in ascending order; ``".info"`` comes last
  and holds the volume's ``shape`` (a list) and ``dtype`` (``str(arr.dtype)``, or the
  docstring's ``'np.int'``, read as int64), plus any extra keys, which are ignored;
- each value is a Kaggle-style RLE string ``"start1 len1 start2 len2 ..."`` over the C-order
  ``flatten()`` of the *whole* volume (3-D for the published files), with **1-based** starts;
- the authors paint labels in key order (``label_img[mask] = int(key)``), so an overlap
  would silently be resolved by the later key. Here it is an error instead.

Parsing (:func:`parse_rle`) checks every run (inside the volume, positive lengths, no two
labels on one voxel) on the run lists, which are proportional to the file, and keeps them
sorted (:class:`RleRuns`); a range of the volume is then built in one ``np.repeat`` of the
runs that touch it (found by ``np.searchsorted``), clipped at its edges. So a reader that
needs slices ``z0:z1`` (an ingest work unit) pays for those slices, not for the volume;
:func:`decode_rle` is the same with the whole volume (or one slab) as the range.

Memory bound: the decoded range (at most the volume: ``expected_shape`` when the caller knows
the image, else at most ``max_voxels`` voxels, 2**28 by default; times the dtype's itemsize),
plus the parsed JSON and the run arrays, which are proportional to the file: each
start/length pair takes at least 4 bytes of text and costs ~100 bytes of int64 arrays while
parsing, so ~25x the file size; the kept :class:`RleRuns` cost 16 bytes per run plus the
label's itemsize.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cloudmic.errors import SourceError

__all__ = ["DEFAULT_MAX_VOXELS", "RleRuns", "decode_rle", "encode_rle", "parse_rle"]

log = logging.getLogger(__name__)

# The largest published volume is 50 x 800 x 800 = 32 Mvoxel; 8x that is still a few GB at
# most for an int64 volume. A larger `.info` shape needs an explicit max_voxels.
DEFAULT_MAX_VOXELS = 2**28

_INFO = ".info"
_KEY = re.compile(r"-?[0-9]+")
_RUNS = re.compile(r"\s*(?:-?[0-9]+(?:\s+-?[0-9]+)*)?\s*")
_MAX_DIGITS = 18  # any 18-digit number fits an int64; longer ones are outside every volume
_LONG_NUMBER = re.compile(rf"[0-9]{{{_MAX_DIGITS + 1},}}")
# str(arr.dtype) names ("uint16", "int64") or codes ("<u2"); numpy parses anything else as a
# comma/space-separated structured spec, which fails with SyntaxError on "0 3 uint16".
_DTYPE_NAME = re.compile(r"[<>|=]?[A-Za-z][A-Za-z0-9]{0,15}")
# dtype spellings the authors wrote that np.dtype() does not take: the example `.info` of
# their format page (seed 004, datasets.md §5) has 'np.int', numpy's old alias of the
# builtin int, which np.dtype(int) makes int64 (removed in numpy 1.24; never a string dtype).
_AUTHOR_DTYPES = {"np.int": "int64"}

_FIX_REEXPORT = (
    "export the labels again with bio3d_vision (convert.indexed_to_dict, then json.dump), "
    "or use the JSON file from the original platelet-em download"
)


@dataclass(frozen=True, eq=False)
class RleRuns:
    """The checked runs of one label file: any part of its volume, decoded on demand.

    ``start`` (0-based) and ``end`` (exclusive) are flat C-order indices, ascending and
    disjoint (overlaps were refused), and ``value`` is each run's label (all read-only); so
    the runs that touch a range are found by ``np.searchsorted``, and a range costs its own
    voxels only.
    """

    shape: tuple[int, ...]
    dtype: np.dtype  # the '.info' dtype, native byte order
    start: np.ndarray
    end: np.ndarray
    value: np.ndarray

    @property
    def size(self) -> int:
        """Voxels in the whole volume."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """What the parsed runs hold in memory (proportional to the runs, not the volume)."""
        return self.start.nbytes + self.end.nbytes + self.value.nbytes

    def value_range(self) -> tuple[int, int]:
        """``(min, max)`` of the decoded volume, without decoding it (0 is the background)."""
        covered = int((self.end - self.start).sum())
        found = [int(self.value.min()), int(self.value.max())] if len(self.value) else []
        if covered < self.size:
            found.append(0)
        return min(found), max(found)

    def flat(self, start: int, stop: int, dtype: np.dtype | str | None = None) -> np.ndarray:
        """Voxels ``start:stop`` of the C-order flattened volume (1-D).

        A run crossing either edge is clipped to the range. ``dtype`` (default: the
        ``.info`` dtype) must hold every label in the range, else ValueError.
        """
        if not 0 <= start <= stop <= self.size:
            raise ValueError(f"flat range {start}:{stop} is not inside 0:{self.size}")
        out_dtype = self.dtype if dtype is None else np.dtype(dtype)
        if out_dtype.kind not in "iu":
            raise ValueError(f"dtype must be an integer dtype, got {out_dtype}")
        # Runs touching [start, stop): those ending after start and starting before stop.
        i0 = int(np.searchsorted(self.end, start, side="right"))
        i1 = int(np.searchsorted(self.start, stop, side="left"))
        s = np.maximum(self.start[i0:i1], start) - start
        e = np.minimum(self.end[i0:i1], stop) - start
        vals = self.value[i0:i1]
        if dtype is not None and len(vals):
            bounds, lo, hi = np.iinfo(out_dtype), int(vals.min()), int(vals.max())
            if lo < bounds.min or hi > bounds.max:
                raise ValueError(f"labels {lo}..{hi} in this range do not fit {out_dtype}")
        # Gaps and runs alternate: gap0 run0 gap1 run1 ... gapN. One allocation: the range.
        n = len(s)
        seg_len = np.empty(2 * n + 1, dtype=np.int64)
        seg_val = np.zeros(2 * n + 1, dtype=out_dtype)
        seg_len[0:-1:2] = s - np.concatenate(([0], e[:-1]))
        seg_len[1::2] = e - s
        seg_len[-1] = (stop - start) - (int(e[-1]) if n else 0)
        seg_val[1::2] = vals
        return np.repeat(seg_val, seg_len)

    def slab(self, start: int = 0, stop: int | None = None,
             dtype: np.dtype | str | None = None) -> np.ndarray:
        """Slices ``start:stop`` along the first axis (z of a 3-D volume), shaped
        ``(stop - start, *shape[1:])``; see :meth:`flat` for ``dtype``."""
        stop = self.shape[0] if stop is None else stop
        if not 0 <= start <= stop <= self.shape[0]:
            raise ValueError(f"slices {start}:{stop} are not inside 0:{self.shape[0]}")
        plane = self.size // self.shape[0]
        return self.flat(start * plane, stop * plane, dtype).reshape(
            (stop - start, *self.shape[1:]))


def parse_rle(
    path_or_bytes: str | os.PathLike[str] | bytes,
    *,
    name: str | None = None,
    expected_shape: tuple[int, ...] | None = None,
    max_voxels: int = DEFAULT_MAX_VOXELS,
) -> RleRuns:
    """Parse and check a platelet-em RLE JSON label file, without building the volume.

    Every check of :func:`decode_rle` happens here (the arguments are the same); the
    result decodes any z-range (:meth:`RleRuns.slab`) or flat range (:meth:`RleRuns.flat`).
    """
    if isinstance(path_or_bytes, bytes | bytearray | memoryview):
        raw, src = bytes(path_or_bytes), name or "<bytes>"
    else:
        raw, src = Path(path_or_bytes).read_bytes(), name or str(path_or_bytes)
    doc = _load_json(raw, src)
    del raw
    shape, dtype = _parse_info(doc, src, expected_shape, max_voxels)
    total = int(np.prod(shape, dtype=object))
    labels = [(key, _parse_label(key, dtype, src)) for key in doc if key != _INFO]
    _check_unique_labels(labels, src)

    starts, lengths, owners = [], [], []
    for k, (key, _) in enumerate(labels):
        s, n = _parse_runs(doc[key], key, total, src)
        starts.append(s)
        lengths.append(n)
        owners.append(np.full(len(s), k, dtype=np.int64))
    del doc
    start = np.concatenate(starts) if starts else np.zeros(0, np.int64)
    length = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    owner = np.concatenate(owners) if owners else np.zeros(0, np.int64)
    del starts, lengths, owners

    order = np.argsort(start, kind="stable")
    start, length, owner = start[order], length[order], owner[order]
    end = start + length  # exclusive, 0-based
    clash = np.flatnonzero(end[:-1] > start[1:])
    if clash.size:
        i = int(clash[0])
        a, b = labels[owner[i]][1], labels[owner[i + 1]][1]
        voxel = np.unravel_index(int(start[i + 1]), shape)
        who = f"labels {a} and {b} both claim" if a != b else f"label {a} claims twice"
        raise SourceError(
            src,
            f"overlapping runs: {who} voxel {tuple(int(v) for v in voxel)} (z, y, x) "
            f"(flat index {int(start[i + 1]) + 1}, 1-based); each voxel has one label",
            _FIX_REEXPORT,
        )
    values = np.array([lab for _, lab in labels], dtype=dtype)[owner]
    log.debug("%s: %d labels, %d runs, shape %s %s", src, len(labels), len(start), shape, dtype)
    for arr in (start, end, values):
        arr.flags.writeable = False  # shared by every range decoded from them
    return RleRuns(shape, dtype, start, end, values)


def decode_rle(
    path_or_bytes: str | os.PathLike[str] | bytes,
    *,
    name: str | None = None,
    expected_shape: tuple[int, ...] | None = None,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    start: int = 0,
    stop: int | None = None,
) -> np.ndarray:
    """Decode a platelet-em RLE JSON label file into an integer volume, or a slab of it.

    Args:
        path_or_bytes: a path, or the file's bytes.
        name: how errors name the source (default: the path, or ``"<bytes>"``).
        expected_shape: the shape of the image the labels belong to; a different ``.info``
            shape is refused before anything is allocated.
        max_voxels: refuse a ``.info`` shape with more voxels than this.
        start, stop: slices along the first axis (z of a 3-D volume) to decode; default,
            all of them. Runs crossing the slab's edges are clipped; the whole file is
            still checked.

    Returns:
        An array of ``.info``'s dtype (native byte order) and shape (with the first axis
        ``stop - start`` long), 0 where no label runs.

    Raises:
        SourceError: malformed JSON or runs, unknown dtype, a shape too large or different
            from ``expected_shape``, runs outside the volume, zero or negative lengths, a
            label value the dtype cannot hold, or two labels claiming one voxel.
        ValueError: ``start:stop`` is not inside the first axis.
    """
    runs = parse_rle(path_or_bytes, name=name, expected_shape=expected_shape,
                     max_voxels=max_voxels)
    return runs.slab(start, stop)


def encode_rle(volume: np.ndarray, *, dtype: str | np.dtype | None = None) -> bytes:
    """Encode an integer label volume as platelet-em RLE JSON (``.info`` last), UTF-8 bytes.

    ``dtype`` is what ``.info`` records (default: the volume's own); every label must fit it.
    Keys are the non-zero labels in ascending order, as ``np.unique`` gives them to the
    authors' encoder; a volume of zeros gives a file with ``.info`` alone.
    """
    vol = np.asarray(volume)
    if vol.dtype.kind not in "iu" or vol.ndim == 0:
        raise ValueError(
            f"labels must be an integer array of >= 1 dims, got {vol.dtype} with shape {vol.shape}"
        )
    info_dtype = np.dtype(dtype if dtype is not None else vol.dtype)
    if info_dtype.kind not in "iu":
        raise ValueError(f"dtype must be an integer dtype, got {info_dtype}")
    flat = vol.reshape(-1)
    n = flat.size
    if n:
        lo, hi = int(flat.min()), int(flat.max())
        bounds = np.iinfo(info_dtype)
        if lo < bounds.min or hi > bounds.max:
            raise ValueError(f"labels span {lo}..{hi}, which {info_dtype} cannot hold")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate(([0], change)) if n else np.zeros(0, np.int64)
    ends = np.concatenate((change, [n])) if n else np.zeros(0, np.int64)
    vals = flat[starts]
    keep = vals != 0
    starts, ends, vals = starts[keep], ends[keep], vals[keep]
    order = np.argsort(vals, kind="stable")  # runs stay in position order within a label
    starts, ends, vals = starts[order], ends[order], vals[order]
    doc: dict[str, Any] = {}
    cuts = np.flatnonzero(vals[1:] != vals[:-1]) + 1
    for s, e, v in zip(
        np.split(starts, cuts), np.split(ends, cuts), np.split(vals, cuts), strict=True
    ):
        if not len(v):
            continue
        pairs = np.stack([s + 1, e - s], axis=1).reshape(-1)
        doc[str(int(v[0]))] = " ".join(map(str, pairs.tolist()))
    doc[_INFO] = {"shape": [int(d) for d in vol.shape], "dtype": str(info_dtype.newbyteorder("="))}
    return json.dumps(doc).encode("utf-8")


# --- parsing ------------------------------------------------------------------------------


def _load_json(raw: bytes, src: str) -> dict[str, Any]:
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                raise SourceError(src, f"key {key!r} occurs twice in one object", _FIX_REEXPORT)
            out[key] = value
        return out

    try:
        doc = json.loads(raw.decode("utf-8-sig"), object_pairs_hook=pairs)
    except SourceError:
        raise
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise SourceError(src, f"not valid JSON ({exc})", _FIX_REEXPORT) from None
    if not isinstance(doc, dict):
        raise SourceError(
            src,
            f"the top level is a JSON {type(doc).__name__}, not an object of label -> runs",
            _FIX_REEXPORT,
        )
    if _INFO not in doc:
        raise SourceError(
            src,
            "no '.info' entry (it records the volume's shape and dtype)",
            _FIX_REEXPORT,
        )
    if next(reversed(doc)) != _INFO:
        log.debug("%s: '.info' is not the last key (the authors' encoder writes it last)", src)
    return doc


def _parse_info(
    doc: dict[str, Any], src: str, expected: tuple[int, ...] | None, max_voxels: int
) -> tuple[tuple[int, ...], np.dtype]:
    info = doc[_INFO]
    if not isinstance(info, dict):
        raise SourceError(src, f"'.info' is {info!r}, not an object", _FIX_REEXPORT)
    shape = info.get("shape")
    if (
        not isinstance(shape, list)
        or not shape
        or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
    ):
        raise SourceError(
            src,
            f"'.info' shape is {shape!r}, not a list of integers like [50, 800, 800]",
            _FIX_REEXPORT,
        )
    if any(d < 1 for d in shape):
        raise SourceError(src, f"'.info' shape {shape} has a side < 1", _FIX_REEXPORT)
    if expected is not None and tuple(shape) != tuple(expected):
        raise SourceError(
            src,
            f"label volume shape {tuple(shape)} (from '.info') differs from its image's "
            f"shape {tuple(expected)}",
            "pair the labels with the image they were drawn on (N-images.tif <-> "
            "N-semantic / N-instance-*), or download the labels again",
        )
    total = 1
    for d in shape:
        total *= d  # Python ints: no overflow on a hostile shape
    if total > max_voxels:
        raise SourceError(
            src,
            f"'.info' shape {shape} is {total:,} voxels, more than the limit of "
            f"{max_voxels:,} (the published volumes have at most 32,000,000)",
            "check the file (a damaged or hostile '.info'); if the volume is really that "
            "large, pass a larger max_voxels",
        )
    name = info.get("dtype")
    name = _AUTHOR_DTYPES.get(name, name) if isinstance(name, str) else name
    try:
        if not isinstance(name, str) or not _DTYPE_NAME.fullmatch(name):
            raise TypeError(name)
        dtype = np.dtype(name)
    except Exception:  # numpy raises TypeError, ValueError or SyntaxError for odd specs
        dtype = None
    if dtype is None or dtype.kind not in "iu":
        raise SourceError(
            src,
            f"'.info' dtype {name!r} is not an integer numpy dtype",
            "set '.info' dtype to the labels' numpy dtype as str(arr.dtype), e.g. \"uint16\" "
            'or "int64"',
        )
    return tuple(shape), dtype.newbyteorder("=")


def _parse_label(key: str, dtype: np.dtype, src: str) -> int:
    if not _KEY.fullmatch(key):
        raise SourceError(
            src, f"key {key!r} is neither a label value (an integer) nor '.info'", _FIX_REEXPORT
        )
    value = int(key)
    if value == 0:
        raise SourceError(
            src, "key '0' has runs, but 0 is the background and is never stored", _FIX_REEXPORT
        )
    bounds = np.iinfo(dtype)
    if not bounds.min <= value <= bounds.max:
        raise SourceError(
            src, f"label {value} does not fit the '.info' dtype {dtype}", _FIX_REEXPORT
        )
    return value


def _check_unique_labels(labels: list[tuple[str, int]], src: str) -> None:
    seen: dict[int, str] = {}
    for key, value in labels:
        if value in seen:
            raise SourceError(
                src, f"keys {seen[value]!r} and {key!r} are the same label {value}", _FIX_REEXPORT
            )
        seen[value] = key


def _parse_runs(text: object, key: str, total: int, src: str) -> tuple[np.ndarray, np.ndarray]:
    """0-based starts and lengths of one label's runs, checked against the volume."""
    if not isinstance(text, str) or not _RUNS.fullmatch(text):
        shown = text if not isinstance(text, str) else text[:60]
        raise SourceError(
            src,
            f"label {key}: runs must be a string of integers 'start length start length ...', "
            f"got {shown!r}",
            _FIX_REEXPORT,
        )
    too_long = _LONG_NUMBER.search(text)
    if too_long is not None:
        raise SourceError(
            src,
            f"label {key}: run value {too_long.group()[:30]}... lies outside the volume of "
            f"{total:,} voxels",
            _FIX_REEXPORT,
        )
    # The regex above admits only whitespace-separated integers of <= 18 digits, which
    # fromstring reads exactly, 8 bytes each (a list of str tokens would cost ~60).
    values = np.fromstring(text, dtype=np.int64, sep=" ") if text.strip() else np.zeros(0, int)
    if len(values) % 2:
        raise SourceError(
            src,
            f"label {key}: {len(values)} numbers in its runs, not start/length pairs",
            _FIX_REEXPORT,
        )
    start, length = values[0::2].copy(), values[1::2].copy()
    bad = np.flatnonzero(length < 1)
    if bad.size:
        i = int(bad[0])
        raise SourceError(
            src,
            f"label {key}: run {i + 1} (start {start[i]}) has length {length[i]}; "
            "lengths must be >= 1",
            _FIX_REEXPORT,
        )
    bad = np.flatnonzero((start < 1) | (start > total) | (length > total - start + 1))
    if bad.size:
        i = int(bad[0])
        raise SourceError(
            src,
            f"label {key}: run {i + 1} covers voxels {start[i]}..{start[i] + length[i] - 1} "
            f"(1-based), outside the volume's 1..{total:,}",
            "check that '.info' shape is the volume the runs were encoded from; " + _FIX_REEXPORT,
        )
    return start - 1, length
