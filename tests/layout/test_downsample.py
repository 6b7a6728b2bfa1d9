"""Pyramid downsampling is bit-identical to its reference definition (the generic
implementation it replaced, kept here only as the reference) for every dtype the datasets use,
odd and even sides, partial edge blocks, ties, extreme values and chunked passes."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from cloudmic.layout import ngff

IMAGE_DTYPES = ["uint8", "uint16", "int16", "float32", "float64"]
LABEL_DTYPES = ["uint8", "uint16", "uint32", "int64"]
# beyond the datasets: other widths, and integers whose float64 mean is no longer exact
MORE_MEAN_DTYPES = ["int8", "int32", "uint32", "int64", "uint64", "float16", ">u2", "bool"]
MORE_MODE_DTYPES = ["int8", "int16", "int32", "uint64", ">u4", "float32", "bool"]
STEPS = [(1, 2, 2), (2, 2, 2), (1, 4, 4), (2, 1, 3), (3, 3, 3), (1, 1, 1), (1, 8, 1), (1, 1, 9),
         (2, 10, 1)]


# ---- the reference: the implementation before issue 16, verbatim ----------------------------
def ref_downsample_mean(a: np.ndarray, step: Sequence[int]) -> np.ndarray:
    out = a.astype("float64")
    for axis, f in enumerate(step):
        if f == 1:
            continue
        starts = np.arange(0, out.shape[axis], f)
        counts = np.diff(np.append(starts, out.shape[axis])).astype("float64")
        shape = [1] * out.ndim
        shape[axis] = len(counts)
        out = np.add.reduceat(out, starts, axis=axis) / counts.reshape(shape)
    if np.issubdtype(a.dtype, np.integer):
        info = np.iinfo(a.dtype)
        return np.clip(np.rint(out), info.min, info.max).astype(a.dtype)
    return out.astype(a.dtype)


def ref_downsample_mode(a: np.ndarray, step: Sequence[int]) -> np.ndarray:
    pad = [(0, (-n) % f) for n, f in zip(a.shape, step, strict=True)]
    p = np.pad(a, pad, mode="edge") if any(w for _, w in pad) else a
    split = []
    for n, f in zip(p.shape, step, strict=True):
        split += [n // f, f]
    blocks = p.reshape(split)
    nd = a.ndim
    blocks = blocks.transpose(*range(0, 2 * nd, 2), *range(1, 2 * nd, 2))
    flat = np.sort(blocks.reshape(*blocks.shape[:nd], -1), axis=-1)
    k = flat.shape[-1]
    counts = np.zeros(flat.shape, dtype=np.int32)
    for j in range(k):
        counts[..., j] = (flat == flat[..., j : j + 1]).sum(-1)
    best = np.argmax(counts, axis=-1)
    return np.take_along_axis(flat, best[..., None], axis=-1)[..., 0]


# ---- data -------------------------------------------------------------------------------------
def image_values(rng: np.random.Generator, shape: Sequence[int], dtype: str) -> np.ndarray:
    """Full-range values, half of them from a few extremes and neighbours so that sums tie at
    .5, overflow the dtype, cancel or lose bits in float64."""
    dt = np.dtype(dtype)
    n = int(np.prod(shape))
    if dt.kind == "b":
        return rng.integers(0, 2, n).astype(dt).reshape(shape)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        lo, hi = (info.min, info.max) if dt.itemsize < 8 else (-(2**62), 2**62)
        lo = max(lo, 0) if dt.kind == "u" else lo
        full = rng.integers(lo, hi, n, endpoint=True, dtype="int64" if dt.kind == "i" or
                            dt.itemsize < 8 else "uint64")
        special = np.array([lo, hi, 0, 1, 2, 3, hi - 1, lo + 1, hi // 2, 2**53 + 1 if
                            dt.itemsize == 8 else hi // 3], dtype=full.dtype)
        pick = rng.integers(0, 2, n).astype(bool)
        full[pick] = rng.choice(special, int(pick.sum()))
        return full.astype(dt).reshape(shape)
    info = np.finfo(dt)
    with np.errstate(over="ignore"):  # float16: 1e8 is inf
        full = (rng.standard_normal(n) * 10.0 ** rng.integers(-8, 9, n)).astype(dt)
        special = np.array([0.0, -0.0, 1.0, -1.0, 0.5, 1e-3, float(info.max), -float(info.max),
                            float(info.tiny), float(info.smallest_subnormal), 1 / 3, 2 / 3, 1e8,
                            -1e8, 1.0 + float(info.eps), np.inf, -np.inf, np.nan], dtype=dt)
    pick = rng.integers(0, 2, n).astype(bool)
    full[pick] = rng.choice(special, int(pick.sum()))
    return full.reshape(shape)


def label_values(rng: np.random.Generator, shape: Sequence[int], dtype: str) -> np.ndarray:
    """Few distinct ids (ties in most blocks), the dtype's extremes among them, in patches."""
    dt = np.dtype(dtype)
    if dt.kind == "b":
        ids = np.array([False, True])
    elif dt.kind == "f":
        ids = np.array([0.0, 1.0, 2.5, -7.0, np.inf, np.nan], dtype=dt)  # no -0.0: sort order
    else:
        info = np.iinfo(dt)
        ids = np.array([0, 1, 2, 3, info.max, info.min, info.max - 1], dtype=dt)
    ids = ids[: int(rng.integers(2, len(ids) + 1))]
    out = rng.choice(ids, shape)
    kind = rng.random()
    if kind < 0.3:  # uniform patches, as in real label images
        out[..., : shape[-1] // 2] = ids[0]
    elif kind < 0.6:  # sparse: a few voxels of other ids in one
        out[rng.random(shape) < 0.85] = ids[0]
    return out.astype(dt)


def same_bits(got: np.ndarray, want: np.ndarray) -> bool:
    return (got.dtype == want.dtype and got.shape == want.shape
            and np.array_equal(np.ascontiguousarray(got).view(np.uint8),
                               np.ascontiguousarray(want).view(np.uint8)))


def check(a: np.ndarray, step: Sequence[int], *, labels: bool) -> None:
    new, ref = ((ngff.downsample_mode, ref_downsample_mode) if labels
                else (ngff.downsample_mean, ref_downsample_mean))
    with np.errstate(all="ignore"):  # the reference warns on inf - inf and int64 overflow
        want = ref(a, step)
        got = new(a, step)
    assert same_bits(got, want), (a.dtype, a.shape, step, a, got, want)


def sides(f: int) -> list[int]:
    """Every remainder modulo the step, with zero, one and two full blocks."""
    return list(range(1, 3 * f))


def edge_shapes(step: Sequence[int]) -> list[tuple[int, ...]]:
    return list(itertools.product(*(sides(f) for f in step)))


# ---- exhaustive small shapes ------------------------------------------------------------------
@pytest.fixture(params=[None, 1, 5], ids=["chunk-default", "chunk-1", "chunk-5"])
def chunk(request, monkeypatch):
    """Level pixels per pass: tiny values split every box into many row chunks."""
    if request.param is not None:
        monkeypatch.setattr(ngff, "_CHUNK", request.param)
    return request.param


EXHAUSTIVE_STEPS = [(1, 2, 2), (2, 2, 2), (1, 4, 4), (2, 1, 3)]


DATASET_CASES = [(False, d) for d in IMAGE_DTYPES] + [(True, d) for d in LABEL_DTYPES]
OTHER_CASES = ([(False, d) for d in MORE_MEAN_DTYPES]
               + [(True, d) for d in MORE_MODE_DTYPES + LABEL_DTYPES])


def values(rng: np.random.Generator, shape: Sequence[int], dtype: str, labels: bool):
    return (label_values if labels else image_values)(rng, shape, dtype)


@pytest.mark.parametrize("step", EXHAUSTIVE_STEPS, ids=str)
@pytest.mark.parametrize(("labels", "dtype"), DATASET_CASES,
                         ids=[f"{'mode' if m else 'mean'}-{d}" for m, d in DATASET_CASES])
def test_every_edge_shape_matches(labels, dtype, step, chunk):
    rng = np.random.default_rng([1, labels, DATASET_CASES.index((labels, dtype)), *step])
    for shape in edge_shapes(step):
        for _ in range(2):
            check(values(rng, shape, dtype, labels), step, labels=labels)


@pytest.mark.parametrize("step", STEPS, ids=str)
@pytest.mark.parametrize(("labels", "dtype"), OTHER_CASES,
                         ids=[f"{'mode' if m else 'mean'}-{d}" for m, d in OTHER_CASES])
def test_other_dtypes_and_steps_match(labels, dtype, step):
    rng = np.random.default_rng([3, labels, OTHER_CASES.index((labels, dtype)), *step])
    for shape in [(1, 1, 1), (3, 5, 7), (4, 10, 9), (5, 19, 20), (2, 21, 18)]:
        check(values(rng, shape, dtype, labels), step, labels=labels)


def test_integer_means_tie_exactly_at_one_half():
    # sums at every remainder modulo 4 and 8, with and without an odd floor: half to even
    for dtype in ("uint8", "uint16", "int16"):
        info = np.iinfo(dtype)
        for base in (info.min, info.min + 1, 0, 1, 2, info.max - 3, info.max - 1):
            for extra in range(8):
                a = np.full((2, 2, 2), base, dtype=dtype)
                flat = a.reshape(-1)
                for i in range(extra):
                    if int(flat[i]) < info.max:
                        flat[i] += 1
                for step in [(2, 2, 2), (1, 2, 2), (2, 1, 1)]:
                    check(a, step, labels=False)


def test_mode_ties_go_to_the_smaller_id():
    a = np.array([[[5, 3], [3, 5]], [[9, 9], [1, 1]]], dtype="uint32")
    check(a, (2, 2, 2), labels=True)  # 5, 3, 9 and 1 twice each: the smallest wins
    assert ngff.downsample_mode(a, (2, 2, 2)).item() == 1
    assert ngff.downsample_mode(a, (1, 2, 2)).ravel().tolist() == [3, 1]


# ---- other ranks, layouts, byte orders --------------------------------------------------------
@pytest.mark.parametrize("labels", [False, True], ids=["mean", "mode"])
def test_other_ranks_and_memory_layouts(labels):
    rng = np.random.default_rng(5)
    for dtype in ("uint16", "float32", "int64" if labels else "int16"):
        check(values(rng, (13,), dtype, labels), (2,), labels=labels)
        check(values(rng, (11, 14), dtype, labels), (3, 2), labels=labels)
        check(values(rng, (3, 5, 6, 7), dtype, labels), (1, 2, 2, 2), labels=labels)
        a = values(rng, (6, 9, 11), dtype, labels)
        check(a[::-1, 1:, ::2], (1, 2, 2), labels=labels)  # negative and non-unit strides
        check(a.transpose(2, 0, 1), (2, 2, 2), labels=labels)
        check(np.asfortranarray(a), (2, 2, 2), labels=labels)
        check(a.astype(a.dtype.newbyteorder()), (1, 2, 2), labels=labels)
    if not labels:
        zero_d = np.array(7, dtype="uint16")
        assert same_bits(ngff.downsample_mean(zero_d, ()), ref_downsample_mean(zero_d, ()))


def test_blocks_of_more_than_255_pixels():
    rng = np.random.default_rng(8)
    check(label_values(rng, (2, 17, 33), "uint16"), (1, 16, 17), labels=True)
    check(image_values(rng, (2, 17, 33), "uint8"), (1, 16, 17), labels=False)
    check(image_values(rng, (2, 17, 33), "uint16"), (1, 16, 16), labels=False)


@pytest.mark.parametrize("k", [2, 4, 8, 9, 16, 20, 27, 32, 33, 64])
def test_mode_of_long_runs(k):
    # skewed ids: runs of up to k equal values, several long runs of equal length
    rng = np.random.default_rng(k)
    for dtype in ("uint8", "uint32", "int64"):
        a = rng.choice(np.array([3, 1, 2, 0], dtype=dtype), (500, k), p=[0.55, 0.25, 0.15, 0.05])
        a[:50] = np.sort(a[:50], axis=1)[:, ::-1]
        a[50:60, : k // 2], a[50:60, k // 2 :] = 7, 5  # two halves: a tie
        check(a, (1, k), labels=True)
        check(np.ascontiguousarray(a.T), (k, 1), labels=True)


def test_sorting_networks_sort_every_zero_one_input():
    # the 0-1 principle: a comparator network sorts all inputs iff it sorts all 0/1 inputs
    for k in range(1, 17):
        w = np.array(list(itertools.product([0, 1], repeat=k)), dtype="uint8").T.copy()
        rows = ngff._sorted_columns(w)
        assert all((rows[i] <= rows[i + 1]).all() for i in range(k - 1)), k
    rng = np.random.default_rng(9)
    for k in range(17, ngff._NETWORK_UP_TO + 1):
        w = rng.integers(0, 2, (k, 20000)).astype("uint8")
        want = np.sort(w, axis=0)
        assert np.array_equal(np.stack(ngff._sorted_columns(w)), want), k


def test_chunked_passes_over_a_larger_block_match():
    rng = np.random.default_rng(6)
    a = image_values(rng, (9, 301, 257), "uint16")
    check(a, (1, 2, 2), labels=False)
    check(a.astype("float32"), (2, 2, 2), labels=False)
    lab = label_values(rng, (9, 301, 257), "uint32")
    check(lab, (1, 2, 2), labels=True)
    check(lab, (2, 2, 2), labels=True)


@pytest.mark.parametrize("dtype", ["uint16", "float32", "float64"])
def test_pyramid_matches_the_reference_pyramid(dtype):
    rng = np.random.default_rng(7)
    image = image_values(rng, (7, 45, 51), dtype)
    steps = [[1, 2, 2], [2, 2, 2]]
    with np.errstate(all="ignore"):
        got = ngff.pyramid(image, steps, labels=False)
    want = [image]
    for step in steps:
        with np.errstate(all="ignore"):
            want.append(ref_downsample_mean(want[-1], step))
    assert all(same_bits(g, w) for g, w in zip(got, want, strict=True))
    labels = label_values(rng, (7, 45, 51), "uint32")
    got = ngff.pyramid(labels, steps, labels=True)
    want = [labels]
    for step in steps:
        want.append(ref_downsample_mode(want[-1], step))
    assert all(same_bits(g, w) for g, w in zip(got, want, strict=True))


# ---- random shapes, steps and dtypes ----------------------------------------------------------
@st.composite
def cases(draw, dtypes: Sequence[str]):
    ndim = draw(st.integers(1, 4))
    step = tuple(draw(st.sampled_from([1, 1, 2, 2, 3, 4, 5, 8, 9])) for _ in range(ndim))
    assume(np.prod(step) <= 100)  # the reference mode is quadratic in the block size
    shape = tuple(draw(st.integers(1, 2 * f + 3)) for f in step)
    dtype = draw(st.sampled_from(dtypes))
    seed = draw(st.integers(0, 2**32 - 1))
    return shape, step, dtype, seed


@settings(max_examples=300, deadline=None)
@given(cases(IMAGE_DTYPES + MORE_MEAN_DTYPES))
def test_mean_matches_on_random_cases(case):
    shape, step, dtype, seed = case
    check(image_values(np.random.default_rng(seed), shape, dtype), step, labels=False)


@settings(max_examples=300, deadline=None)
@given(cases(LABEL_DTYPES + MORE_MODE_DTYPES))
def test_mode_matches_on_random_cases(case):
    shape, step, dtype, seed = case
    check(label_values(np.random.default_rng(seed), shape, dtype), step, labels=True)
