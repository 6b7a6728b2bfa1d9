"""Colour-coded platelet-em label TIFFs decoded through their palettes."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from cloudmic.errors import SourceError
from cloudmic.formats.label_palette import (
    JET_RGBA_SEMANTIC,
    OLD_RGB_SEMANTIC,
    decode_palette_labels,
    encode_palette_labels,
    jet_palette,
)


def test_jet_semantic_colours_match_datasets_md() -> None:
    # datasets.md section 5: "With jet this gives 1 [0,40,255], ..., 6 [127,0,0] (alpha 255)".
    expected = {
        (0, 0, 0, 0): 0,
        (0, 40, 255, 255): 1,
        (0, 212, 255, 255): 2,
        (124, 255, 121, 255): 3,
        (255, 229, 0, 255): 4,
        (255, 70, 0, 255): 5,
        (127, 0, 0, 255): 6,
    }
    assert expected == JET_RGBA_SEMANTIC


def test_semantic_round_trip_rgba_and_old_rgb() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, (3, 5, 6)).astype(np.uint16)
    labels[0, 0, 0] = 6  # the colours depend on label.max()
    rgba = encode_palette_labels(labels)
    assert rgba.shape == (3, 5, 6, 4) and rgba.dtype == np.uint8
    ids = decode_palette_labels(rgba, JET_RGBA_SEMANTIC, name="50-semantic.tif")
    assert ids.dtype == np.uint8
    np.testing.assert_array_equal(ids, labels)
    lut = {v: k for k, v in OLD_RGB_SEMANTIC.items()}
    rgb = np.array([lut[v] for v in labels.reshape(-1).tolist()], np.uint8).reshape(3, 5, 6, 3)
    np.testing.assert_array_equal(decode_palette_labels(rgb, OLD_RGB_SEMANTIC), labels)


def test_instance_round_trip_below_256_ids_and_warning(caplog) -> None:
    # Up to 51 ids, LUT entries are >= 5 apart: more than jet's one flat stretch (blue only,
    # x in 0.11..0.125, about 4 entries), so every id keeps its own colour.
    labels = np.arange(0, 52, dtype=np.uint16).reshape(2, 2, 13)
    rgba = encode_palette_labels(labels)
    with caplog.at_level(logging.WARNING, logger="cloudmic.formats.label_palette"):
        ids = decode_palette_labels(
            rgba, jet_palette(int(labels.max())), name="50-instance-cell.tif", instance=True
        )
    np.testing.assert_array_equal(ids, labels)
    assert "50-instance-cell.tif" in caplog.text and "collide" in caplog.text


def test_instance_ids_collide_even_below_256() -> None:
    # jet is flat (pure blue) for x in 0.11..0.125: ids 23, 24 and 25 of 199 share a colour.
    rgba = encode_palette_labels(np.array([[[23, 24, 25, 199]]], np.uint16))
    assert len({tuple(c) for c in rgba[0, 0, :3].tolist()}) == 1
    ids = decode_palette_labels(rgba, jet_palette(199), instance=True)
    assert ids.tolist() == [[[23, 23, 23, 199]]]  # the smallest id wins


def test_instance_ids_collide_beyond_the_lut() -> None:
    palette = jet_palette(1000)
    assert len(palette) <= 257  # 256 LUT entries, entry 0 is the background
    assert palette[(0, 0, 0, 0)] == 0
    # Ids below max/256 fall on entry 0: they look like background.
    rgba = encode_palette_labels(np.array([[[1, 1000]]]), max_label=1000)
    assert tuple(rgba[0, 0, 0]) == (0, 0, 0, 0)


def test_unknown_colour_names_file_colour_and_voxel() -> None:
    labels = np.zeros((2, 3, 3), np.uint16)
    labels[1, 2, 1] = 6
    rgba = encode_palette_labels(labels)
    rgba[1, 0, 2] = (9, 8, 7, 255)
    with pytest.raises(SourceError, match="24-semantic.tif") as exc:
        decode_palette_labels(rgba, JET_RGBA_SEMANTIC, name="24-semantic.tif")
    assert "(9, 8, 7, 255)" in exc.value.problem and "(1, 0, 2)" in exc.value.problem
    assert "JSON" in exc.value.fix


@pytest.mark.parametrize(
    "bad",
    [np.zeros((2, 3, 3, 4), np.uint16), np.zeros((2, 3, 3, 3), np.uint8), np.zeros(4, np.uint8)],
)
def test_refuses_wrong_dtype_or_channels(bad) -> None:
    with pytest.raises(SourceError, match="x.tif"):
        decode_palette_labels(bad, JET_RGBA_SEMANTIC, name="x.tif")


def test_dtype_follows_palette_ids() -> None:
    palette = {(0, 0, 0): 0, (1, 2, 3): 70000}
    rgb = np.array([[[[1, 2, 3], [0, 0, 0]]]], np.uint8)
    out = decode_palette_labels(rgb, palette)
    assert out.dtype == np.uint32 and out.tolist() == [[[70000, 0]]]
