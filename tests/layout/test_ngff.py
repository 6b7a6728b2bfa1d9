"""OME-NGFF pyramid helpers: shapes, block mean and mode, transforms that match coordinates."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from cloudmic.layout import ngff

shapes = st.tuples(st.integers(1, 9), st.integers(1, 9), st.integers(1, 9))
steps = st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3))


@settings(max_examples=60, deadline=None)
@given(arrays(np.uint16, shapes, elements=st.integers(0, 5)), steps)
def test_mode_picks_an_id_of_its_block_and_the_most_frequent(a, step):
    out = ngff.downsample_mode(a, step)
    assert out.shape == ngff.level_shape(a.shape, step) and out.dtype == a.dtype
    for idx in np.ndindex(out.shape):
        block = a[tuple(slice(i * f, (i + 1) * f) for i, f in zip(idx, step, strict=True))]
        values, counts = np.unique(block, return_counts=True)
        # full blocks: exactly the mode with ties to the smaller id; edge blocks are padded by
        # repeating their edge, so the result is still an id of the block
        assert out[idx] in values
        if block.shape == tuple(step):
            assert out[idx] == values[np.argmax(counts)]


@settings(max_examples=60, deadline=None)
@given(arrays(np.uint16, shapes, elements=st.integers(0, 65535)), steps)
def test_mean_is_the_rounded_block_mean_over_the_pixels_present(a, step):
    out = ngff.downsample_mean(a, step)
    assert out.shape == ngff.level_shape(a.shape, step) and out.dtype == a.dtype
    for idx in np.ndindex(out.shape):
        block = a[tuple(slice(i * f, (i + 1) * f) for i, f in zip(idx, step, strict=True))]
        assert abs(int(out[idx]) - block.mean()) <= 0.5 + 1e-9


def test_float_mean_keeps_the_dtype():
    a = np.arange(16, dtype="float32").reshape(1, 4, 4)
    assert ngff.downsample_mean(a, (1, 2, 2)).tolist() == [[[2.5, 4.5], [10.5, 12.5]]]


def test_transforms_match_the_pixel_centre_coordinates():
    axes = [ngff.Axis("z", "space", "nm", 40.0), ngff.Axis("y", "space", "nm", 10.0),
            ngff.Axis("x", "space", "nm", 10.0)]
    steps_ = [[1, 2, 2], [2, 2, 2]]
    ms = ngff.image_attrs("v", axes, "image", steps_)["ome"]["multiscales"][0]
    specs = {v.name: v for v in ngff.level_variables("", "image", axes, (8, 16, 16), "uint16",
                                                     steps_, {})}
    for k, ds in enumerate(ms["datasets"]):
        assert ds["path"] == f"{k}/image"
        scale, shift = (t[t["type"]] for t in ds["coordinateTransformations"])
        for i, ax in enumerate("zyx"):
            coord = specs[f"{k}/{ax}"].data
            assert np.allclose(coord, np.arange(len(coord)) * scale[i] + shift[i])
    assert specs["2/image"].shape == (4, 4, 4) and specs["2/image"].factor == 2
    assert [a["unit"] for a in ms["axes"]] == ["nanometer"] * 3
