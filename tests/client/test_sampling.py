"""Sampling beyond uniform patches: label-aware choices driven by the per-chunk class counts
stored at ingest (no pixel read to choose), and classification samples with their class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr

import cloudmic
from cloudmic.ingest import ingest
from cloudmic.layout.label_stats import chunk_class_counts
from cloudmic.manifest import manifests_dir
from cloudmic.synth.platelet_em import synth_platelet_em
from cloudmic.synth.sted_fm import synth_sted_fm

PATCH = {"z": 4, "y": 16, "x": 16}
PAIR = {"image": "0/image", "semantic": "labels/semantic/0/semantic"}


@pytest.fixture(scope="module")
def em_url(tmp_path_factory) -> str:
    """platelet-em with 4 x 32 x 32 chunks, so a small volume has 64 chunks to choose from."""
    work = tmp_path_factory.mktemp("em-sampling")
    doc = yaml.safe_load((manifests_dir() / "platelet-em.yaml").read_text())
    doc["storage"]["chunk"] = {"z": 4, "y": 32, "x": 32}
    doc["storage"]["shard"] = {"z": 4, "y": 1024, "x": 1024}
    manifest = work / "platelet-em-small-chunks.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    synth_platelet_em(work / "src", slices=16, size=128, seed=4)
    ingest(str(manifest), work / "src", str(work / "root"))
    return str(work / "root" / "platelet-em.zarr")


def test_chunk_statistics_are_stored_at_ingest(em_url):
    arr = zarr.open_array(em_url, path="50/labels/semantic/0/semantic", mode="r")
    st = arr.attrs["chunk_stats"]
    assert st["chunk"] == [4, 32, 32] and st["grid"] == [4, 4, 4]
    assert st["classes"][6] == "dense granule core"
    counts = np.asarray(st["counts"]).reshape(4, 4, 4, 7)
    assert np.array_equal(counts, chunk_class_counts(arr[...], (4, 32, 32), 7))


def _fraction(items, cls) -> float:
    return float(np.mean([np.mean(it["semantic"] == cls) if cls else np.mean(it["semantic"] > 0)
                          for it in items]))


def test_min_foreground_and_class_weights_shift_what_is_sampled(em_url):
    def take(**kw):
        return list(cloudmic.PatchStream(em_url, "50", PAIR, PATCH, patches_per_sample=200,
                                         seed=1, labels="semantic", **kw))

    uniform = list(cloudmic.PatchStream(em_url, "50", PAIR, PATCH, patches_per_sample=200,
                                        seed=1))
    fg = take(min_foreground=0.6)
    assert _fraction(fg, 0) > _fraction(uniform, 0) + 0.1
    core = take(class_weights={"dense granule core": 1.0})
    assert _fraction(core, 6) > 3 * _fraction(uniform, 6)
    balanced = take(class_weights="balanced")
    assert _fraction(balanced, 6) > _fraction(uniform, 6)
    again = take(class_weights="balanced")
    assert [it["origin"] for it in again] == [it["origin"] for it in balanced]  # seeded
    for it in core:  # windows stay inside the volume and aligned
        assert it["image"].shape == (4, 16, 16) and it["semantic"].shape == (4, 16, 16)


def test_label_sampling_errors_say_what_to_do(em_url):
    with pytest.raises(ValueError, match="no chunk of group '50' has foreground >= 1.5"):
        cloudmic.PatchStream(em_url, "50", PAIR, PATCH, labels="semantic", min_foreground=1.5)
    with pytest.raises(ValueError, match="no per-chunk label statistics"):
        cloudmic.PatchStream(em_url, "50", PAIR, PATCH, labels="image")
    with pytest.raises(ValueError, match="'nucleus' is not a class"):
        cloudmic.PatchStream(em_url, "50", PAIR, PATCH, labels="semantic",
                             class_weights={"nucleus": 1.0})


def test_classification_samples_carry_their_class(tmp_path):
    synth_sted_fm(tmp_path / "src", crops=24, unlabelled=2, seed=2)
    ingest("sted-fm", tmp_path / "src", str(tmp_path / "root"))
    url = str(tmp_path / "root" / "sted-fm.zarr")
    group = next(p.name for p in (Path(url)).iterdir() if p.is_dir())
    items = list(cloudmic.PatchStream(url, group, ["image"], {"y": 64, "x": 64},
                                      coords=["label", "protein"]))
    g = zarr.open_group(url, path=group, mode="r")
    for it in items:
        assert it["label"] == int(g["label"][it["index"]])
        assert it["protein"] == str(g["protein"][it["index"]])
    assert {it["label"] for it in items} >= {-1}  # the unlabelled members say so
    with pytest.raises(KeyError, match="no per-sample coordinate 'klass'.*label"):
        cloudmic.PatchStream(url, group, ["image"], {"y": 64, "x": 64}, coords=["klass"])


@pytest.fixture(scope="module")
def smlm_url(tmp_path_factory) -> str:
    from cloudmic.synth.dl_smlm import synth_dl_smlm

    work = tmp_path_factory.mktemp("smlm-grid")
    synth_dl_smlm(work / "src", structures=("CCPs",), cells=1, frames=6, size=72, seed=1)
    ingest("dl-smlm", work / "src", str(work / "root"))
    return str(work / "root" / "dl-smlm.zarr")


def test_grid_tiles_cover_every_pixel_on_every_grid(smlm_url):
    stream = cloudmic.PatchStream(smlm_url, "*/cell*", ["wf", "sr"], {"y": 32, "x": 32},
                                  sampling="grid")
    items = list(stream)
    assert len(stream) == len(items) == 9  # 72 px: tiles at 0, 32 and 40 (flush with the edge)
    g = zarr.open_group(smlm_url, path="CCPs/cell1", mode="r")
    wf, sr = np.zeros((72, 72)), np.zeros((576, 576))
    for it in items:
        y, x = it["origin"]["y"], it["origin"]["x"]
        wf[y:y + 32, x:x + 32] = it["wf"]
        sr[8 * y:8 * y + 256, 8 * x:8 * x + 256] = it["sr"]  # the same nm on the 8x grid
    assert np.array_equal(wf, g["wf"][...]) and np.array_equal(sr, g["sr"][...])
    assert len({it["__key__"] for it in items}) == 9


def test_patch_size_in_physical_units(smlm_url, em_url):
    s = cloudmic.PatchStream(smlm_url, "*/cell*", ["wf", "sr"], {"y": "4.16um", "x": "4160nm"})
    assert s.patch == {"y": 32, "x": 32}  # 130 nm widefield pixels
    em = cloudmic.PatchStream(em_url, "50", PAIR, {"z": "160nm", "y": "0.32um", "x": 32})
    assert em.patch == {"z": 4, "y": 32, "x": 32}  # 40 x 10 x 10 nm voxels
    with pytest.raises(ValueError, match="units are nm; or give pixels"):
        cloudmic.PatchStream(smlm_url, "*/cell*", ["wf"], {"y": "0.5s", "x": 32})
