"""platelet-em: volumes and labels ingest losslessly as OME-NGFF 0.5 images that plain xarray
opens with nanometre coordinates; bad label files are refused before anything is written."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import xarray as xr

from cloudmic.errors import SourceError
from cloudmic.formats.label_rle import decode_rle
from cloudmic.ingest import ingest
from cloudmic.ingest.verify import verify_dataset
from cloudmic.layout import ngff
from cloudmic.storage.location import Location
from cloudmic.synth.platelet_em import synth_platelet_em
from ngff_check import reader_nodes, validate_image, validate_label

LABELS = ("semantic", "cell", "organelle")
FILES = {"semantic": "labels-semantic/{v}-semantic", "cell": "labels-instance/{v}-instance-cell",
         "organelle": "labels-instance/{v}-instance-organelle"}
STEPS = [[1, 2, 2], [2, 2, 2]]


@pytest.fixture(scope="module")
def pe_source(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pe-src")
    synth_platelet_em(out, slices=20, size=96, seed=5)
    return out / "platelet-em"


@pytest.fixture(scope="module")
def pe_root(pe_source, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pe-root")
    ingest("platelet-em", pe_source.parent, str(root))
    return root


def _source_labels(src: Path, vol: str) -> dict[str, np.ndarray]:
    return {n: decode_rle(src / f"{FILES[n].format(v=vol)}.json") for n in LABELS}


@pytest.mark.parametrize("vol", ["50", "24"])
def test_volume_and_labels_are_lossless_at_every_level(pe_source, pe_root, vol):
    store = pe_root / "platelet-em.zarr"
    import zarr

    g = zarr.open_group(store, path=vol, mode="r")
    image = tifffile.imread(pe_source / "images" / f"{vol}-images.tif")
    stored = g["0/image"][...]
    assert stored.dtype == image.dtype and np.array_equal(stored, image)
    labels = _source_labels(pe_source, vol)
    for name, src in labels.items():
        got = g[f"labels/{name}/0/{name}"][...]
        assert np.array_equal(got, src), name  # ids equal to the source, voxel by voxel
        assert got.dtype == ("uint8" if name == "semantic" else "uint32")
        for k, lev in enumerate(ngff.pyramid(got, STEPS, labels=True)):
            assert np.array_equal(g[f"labels/{name}/{k}/{name}"][...], lev)
            assert set(np.unique(lev)) <= set(np.unique(src))  # mode never invents ids
    for k, lev in enumerate(ngff.pyramid(image, STEPS, labels=False)):
        assert np.array_equal(g[f"{k}/image"][...], lev)


def test_plain_xarray_gives_named_variables_in_nanometres(pe_root):
    tree = xr.open_datatree(pe_root / "platelet-em.zarr", engine="zarr", consolidated=True)
    lvl0 = tree["50/0"].ds
    assert list(lvl0.data_vars) == ["image"] and lvl0["image"].dims == ("z", "y", "x")
    assert float(lvl0["z"][0]) == 20.0 and float(lvl0["x"][1]) == 15.0
    assert lvl0["x"].attrs["units"] == "nm"
    lvl2 = tree["50/labels/semantic/2"].ds
    assert float(lvl2["z"][0]) == 40.0 and float(lvl2["x"][0]) == 20.0  # 80x40x40 nm voxels
    # image and labels of one level share their grid, so they merge into one Dataset
    merged = xr.merge([tree["50/1"].ds] + [tree[f"50/labels/{n}/1"].ds for n in LABELS])
    assert sorted(merged.data_vars) == ["cell", "image", "organelle", "semantic"]
    assert merged.sizes == {"z": 20, "y": 48, "x": 48}
    assert tree["50"].attrs["classes"][6] == "dense granule core"


def test_image_groups_are_valid_ome_ngff_and_open_in_the_ome_zarr_reader(pe_root):
    store = pe_root / "platelet-em.zarr"
    model = validate_image(store, "50", labels=True)
    assert model["levels"] == 3 and model["labels"] == list(LABELS)
    semantic = validate_label(store, "50/labels/semantic")
    props = semantic.attributes.ome.image_label.properties
    assert {p.label_value: p.model_extra["class"] for p in props}[2] == "mitochondrion"
    for name in ("cell", "organelle"):
        validate_label(store, f"50/labels/{name}")
    nodes = reader_nodes(store / "50")
    assert [tuple(d.shape) for d in nodes["50"].data] == [(20, 96, 96), (20, 48, 48),
                                                           (10, 24, 24)]
    assert set(LABELS) <= set(nodes)
    assert len(nodes["semantic"].metadata["color"]) == 7


def test_verify_and_records_name_their_regions(pe_root):
    report = verify_dataset(Location.parse(str(pe_root)), "platelet-em")
    assert report.ok, report.problems
    index = json.loads((pe_root / "platelet-em.wds" / "index.json").read_text())
    assert index["splits"]["50"]["records"] == 3  # 20 slices in tiles of 8: 3 tiles of 96x96
    import cloudmic

    rec = next(iter(cloudmic.shards(str(pe_root / "platelet-em.wds"), "50")))
    assert rec["__key__"] == "50-z000-y0000-x0000"
    assert rec["image"].shape == rec["cell"].shape == (8, 96, 96)
    assert rec["json"]["zarr"]["paths"]["semantic"] == "labels/semantic/0/semantic"


def test_rerun_rewrites_the_same_shards(pe_source, pe_root, tmp_path):
    ingest("platelet-em", pe_source.parent, str(tmp_path))
    a = json.loads((pe_root / "platelet-em.wds" / "index.json").read_text())
    b = json.loads((tmp_path / "platelet-em.wds" / "index.json").read_text())
    assert a == b


@pytest.mark.e2e
def test_ingest_to_s3_matches_local(pe_source, pe_root, s3_env):
    import zarr

    url = "s3://cloudmic-test/pe"
    report = ingest("platelet-em", pe_source.parent, url)
    s3 = zarr.open_group(Location.parse(report.url).zarr_store(), mode="r")
    local = zarr.open_group(pe_root / "platelet-em.zarr", mode="r")
    for path in ("24/0/image", "24/labels/cell/1/cell", "50/2/image"):
        assert np.array_equal(s3[path][...], local[path][...])


# --- colour TIF fallback ---------------------------------------------------------------------
def test_colour_tifs_are_decoded_through_their_palette_when_no_json(pe_source, tmp_path, caplog):
    src = tmp_path / "platelet-em"
    shutil.copytree(pe_source, src)
    truth = _source_labels(src, "24")
    for path in src.glob("labels-*/*.json"):
        path.unlink()
    (src / "images" / "50-images.tif").unlink()
    with caplog.at_level(logging.WARNING):
        ingest("platelet-em", src, str(tmp_path / "out"))
    assert "colours can collide" in caplog.text
    import zarr

    g = zarr.open_group(tmp_path / "out" / "platelet-em.zarr", path="24", mode="r")
    for name in LABELS:
        assert np.array_equal(g[f"labels/{name}/0/{name}"][...], truth[name]), name


# --- the -2d / -3d instance names of older releases (datasets.md §5) --------------------------
def _rename_instances(src: Path, vol: str, name: str, suffix: str) -> None:
    for ext in (".json", ".tif"):
        plain = src / f"{FILES[name].format(v=vol)}{ext}"
        plain.rename(plain.with_name(f"{plain.stem}{suffix}{ext}"))


def test_instance_files_with_2d_and_3d_suffixes_ingest(pe_copy, tmp_path):
    truth = _source_labels(pe_copy, "50")
    _rename_instances(pe_copy, "50", "cell", "-2d")  # 50-instance-cell-2d.{json,tif}
    _rename_instances(pe_copy, "50", "organelle", "-3d")
    ingest("platelet-em", pe_copy, str(tmp_path / "out"))
    import zarr

    g = zarr.open_group(tmp_path / "out" / "platelet-em.zarr", path="50", mode="r")
    for name in LABELS:
        assert np.array_equal(g[f"labels/{name}/0/{name}"][...], truth[name]), name
    assert g.attrs["sources"]["cell"]["path"].endswith("50-instance-cell-2d.json")


def test_two_variants_of_one_instance_file_are_refused_naming_both(pe_copy, tmp_path):
    folder = pe_copy / "labels-instance"
    shutil.copy(folder / "24-instance-cell.json", folder / "24-instance-cell-3d.json")
    _refused(pe_copy, tmp_path / "out", "(?s)ambiguous.*24-instance-cell.json, "
             "24-instance-cell-3d.json.*instance_variant", "24-instance-cell")


def test_manifest_option_chooses_one_variant(pe_copy, tmp_path):
    import yaml

    from cloudmic.manifest import manifests_dir

    folder = pe_copy / "labels-instance"
    shutil.copy(folder / "24-instance-cell.json", folder / "24-instance-cell-2d.json")
    (folder / "24-instance-cell.json").write_text("{not json")  # must not be read
    doc = yaml.safe_load((manifests_dir() / "platelet-em.yaml").read_text())
    assert doc["options"]["instance_variant"] == "auto"  # the documented default
    doc["options"]["instance_variant"] = "2d"
    manifest = tmp_path / "platelet-em.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    with pytest.raises(SourceError, match="missing: volume 24 has neither "
                       "24-instance-organelle-2d.json nor 24-instance-organelle-2d.tif"):
        ingest(str(manifest), pe_copy, str(tmp_path / "out"))  # "2d" takes nothing else
    for vol, name in (("50", "cell"), ("24", "organelle"), ("50", "organelle")):
        base = pe_copy / FILES[name].format(v=vol)
        for ext in (".json", ".tif"):
            p = base.with_name(base.name + ext)
            p.rename(p.with_name(f"{base.name}-2d{ext}"))
    ingest(str(manifest), pe_copy, str(tmp_path / "out"))
    import zarr

    g = zarr.open_group(tmp_path / "out" / "platelet-em.zarr", path="24", mode="r")
    assert g.attrs["sources"]["cell"]["path"].endswith("24-instance-cell-2d.json")


# --- an independent writer, following datasets.md only ---------------------------------------
def _kaggle_rle(mask: np.ndarray) -> str:
    """datasets.md: pad with 0 at both ends, positions where values change, +1, then every
    second value becomes a length."""
    pixels = np.concatenate([[0], mask.flatten(), [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def test_foreign_copy_with_float_image_and_int64_labels_is_lossless(tmp_path):
    rng = np.random.default_rng(11)
    root = tmp_path / "src" / "platelet-em"
    shape = (6, 40, 56)
    image = np.round(rng.uniform(0, 65535, shape)).astype("float32")
    image.flat[0], image.flat[1] = 0.0, 65535.0  # the notebook's "min 0.0 max 65535.0"
    labels = {n: np.zeros(shape, dtype="int64") for n in LABELS}
    for k in range(1, 6):
        z, y, x = rng.integers(0, 4), rng.integers(0, 30), rng.integers(0, 40)
        labels["cell"][z:z + 2, y:y + 8, x:x + 12] = k
        labels["semantic"][z:z + 2, y:y + 8, x:x + 12] = 1 + k % 6
        labels["organelle"][z, y:y + 3, x:x + 3] = 10 * k
    (root / "images").mkdir(parents=True)
    tifffile.imwrite(root / "images" / "50-images.tif", image)  # Z pages, no ImageJ
    for name, lab in labels.items():
        path = root / f"{FILES[name].format(v='50')}.json"
        path.parent.mkdir(exist_ok=True)
        doc = {str(int(v)): _kaggle_rle(lab == v) for v in np.unique(lab) if v}
        doc[".info"] = {"shape": list(shape), "dtype": "int64"}
        path.write_text(json.dumps(doc))
    ingest("platelet-em", root.parent, str(tmp_path / "out"))
    import zarr

    g = zarr.open_group(tmp_path / "out" / "platelet-em.zarr", path="50", mode="r")
    assert g["0/image"].dtype == np.float32 and np.array_equal(g["0/image"][...], image)
    for name, lab in labels.items():
        assert np.array_equal(g[f"labels/{name}/0/{name}"][...], lab), name
    assert g["labels/cell/0/cell"].attrs["source_dtype"] == "int64"


# --- bad input: a clear error naming the file, nothing published -----------------------------
@pytest.fixture
def pe_copy(pe_source, tmp_path) -> Path:
    src = tmp_path / "src" / "platelet-em"
    shutil.copytree(pe_source, src)
    return src


def _refused(src: Path, dest: Path, match: str, name: str) -> None:
    with pytest.raises(SourceError, match=match) as err:
        ingest("platelet-em", src, str(dest))
    assert name in str(err.value)
    assert not (dest / "platelet-em.zarr").exists() and not (dest / "platelet-em.wds").exists()


def _edit_json(path: Path, edit) -> None:
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def test_label_volume_of_the_wrong_shape(pe_copy, tmp_path):
    path = pe_copy / "labels-instance" / "24-instance-cell.json"
    _edit_json(path, lambda d: d[".info"].update(shape=[10, 96, 95]))
    _refused(pe_copy, tmp_path / "out", "shape", "24-instance-cell.json")


def test_rle_run_outside_the_volume(pe_copy, tmp_path):
    path = pe_copy / "labels-semantic" / "50-semantic.json"
    _edit_json(path, lambda d: d.update({"1": d["1"] + f" {20 * 96 * 96 - 1} 5"}))
    _refused(pe_copy, tmp_path / "out", "outside|beyond|overlap", "50-semantic.json")


def test_rgb_label_with_a_colour_missing_from_the_palette(pe_copy, tmp_path):
    json_path = pe_copy / "labels-semantic" / "24-semantic.json"
    json_path.unlink()
    tif = json_path.with_suffix(".tif")
    rgba = tifffile.imread(tif)
    rgba[1, 2, 3] = (12, 34, 56, 255)
    tifffile.imwrite(tif, rgba)
    _refused(pe_copy, tmp_path / "out", r"\(12, 34, 56, 255\).*not in the palette",
             "24-semantic.tif")


def test_tiff_truncated_in_the_middle_of_a_page(pe_copy, tmp_path):
    path = pe_copy / "images" / "50-images.tif"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 96 * 96])  # half of the last page's pixels
    _refused(pe_copy, tmp_path / "out", "truncated|end of the file", "50-images.tif")


def test_semantic_class_out_of_range(pe_copy, tmp_path):
    path = pe_copy / "labels-semantic" / "24-semantic.json"
    _edit_json(path, lambda d: d.update({"9": d.pop("6")}))
    _refused(pe_copy, tmp_path / "out", "outside class ids 0..6", "24-semantic.json")


def test_a_failed_ingest_keeps_the_published_version(pe_source, pe_copy, tmp_path):
    dest = tmp_path / "out"
    ingest("platelet-em", pe_source.parent, str(dest))
    before = (dest / "platelet-em.wds" / "index.json").read_bytes()
    (pe_copy / "labels-instance" / "50-instance-organelle.json").write_text("{not json")
    with pytest.raises(SourceError, match="50-instance-organelle.json"):
        ingest("platelet-em", pe_copy, str(dest))
    assert (dest / "platelet-em.wds" / "index.json").read_bytes() == before
    assert verify_dataset(Location.parse(str(dest)), "platelet-em").ok


def test_verify_reports_broken_ngff_metadata(pe_root, tmp_path):
    import zarr

    shutil.copytree(pe_root, tmp_path / "copy", symlinks=True)
    store = tmp_path / "copy" / "platelet-em.zarr"
    lab = zarr.open_group(store, path="50/labels/cell", mode="r+", use_consolidated=False)
    ome = dict(lab.attrs["ome"])
    ome["multiscales"] = [{**ome["multiscales"][0],
                           "datasets": ome["multiscales"][0]["datasets"][:2]}]
    lab.update_attributes({"ome": ome})
    zarr.consolidate_metadata(store)
    report = verify_dataset(Location.parse(str(tmp_path / "copy")), "platelet-em")
    assert not report.ok
    assert report.problems == ["50/labels/cell: 2 levels, the image has 3"]


def test_patch_stream_pairs_image_and_labels_across_levels(pe_root):
    import zarr

    import cloudmic

    url = str(pe_root / "platelet-em.zarr")
    stream = cloudmic.PatchStream(url, ["50", "24"], {
        "image": "0/image", "semantic": "labels/semantic/0/semantic",
        "cell": "labels/cell/0/cell", "coarse": "labels/semantic/1/semantic"},
        {"z": 4, "y": 32, "x": 32}, patches_per_sample=4, seed=2)
    items = list(stream)
    assert len(items) == 8 and {it["group"] for it in items} == {"50", "24"}
    for it in items:
        g = zarr.open_group(url, path=it["group"], mode="r")
        z, y, x = (it["origin"][d] for d in ("z", "y", "x"))
        box = (slice(z, z + 4), slice(y, y + 32), slice(x, x + 32))
        assert np.array_equal(it["image"], g["0/image"][box])
        assert np.array_equal(it["semantic"], g["labels/semantic/0/semantic"][box])
        assert np.array_equal(it["cell"], g["labels/cell/0/cell"][box])
        # level 1 halves y and x: the same nanometres are 16 x 16 voxels there
        half = (slice(z, z + 4), slice(y // 2, y // 2 + 16), slice(x // 2, x // 2 + 16))
        assert it["coarse"].shape == (4, 16, 16) and y % 2 == 0 and x % 2 == 0
        assert np.array_equal(it["coarse"], g["labels/semantic/1/semantic"][half])
    with pytest.raises(KeyError, match="no variable 'labels/nuclei/0/nuclei'.*0/image"):
        cloudmic.PatchStream(url, "50", {"n": "labels/nuclei/0/nuclei"}, {"z": 4, "y": 8,
                                                                            "x": 8})


# --- a unit decodes only its own slices of the labels (issue 16) -----------------------------
def _scan(source: Path):
    """The adapter, its inventory of ``source`` and the planned units, as ingest makes them."""
    from cloudmic.datasets import get_adapter
    from cloudmic.ingest.plan import plan_units
    from cloudmic.manifest import load_manifest

    manifest = load_manifest("platelet-em")
    adapter = get_adapter(manifest)
    inv = adapter.scan(source)
    return adapter, inv, plan_units(inv, manifest)


def test_units_decode_only_their_slab_of_the_labels(pe_source, monkeypatch):
    from cloudmic.formats.label_rle import RleRuns

    ranges: list[tuple[int, int]] = []
    flat = RleRuns.flat

    def spy(self, start, stop, dtype=None):
        ranges.append((start, stop))
        return flat(self, start, stop, dtype)

    monkeypatch.setattr(RleRuns, "flat", spy)
    adapter, inv, units = _scan(pe_source.parent)
    assert ranges == []  # the scan checks runs and ids without building a volume
    assert inv.files["50"]["semantic"]["max_id"] == 6
    assert inv.files["50"]["cell"]["source_dtype"] == "uint16"
    assert sorted((u.group, u.start, u.stop) for u in units) == [("24", 0, 10), ("50", 0, 16),
                                                                 ("50", 16, 20)]
    for unit in units:
        ranges.clear()
        data = adapter.read_unit(inv, unit)
        plane = 96 * 96
        assert ranges == [(unit.start * plane, unit.stop * plane)] * len(LABELS)
        truth = _source_labels(pe_source, unit.group)
        for name in LABELS:
            got = data[f"labels/{name}/0/{name}"]
            assert got.dtype == ("uint8" if name == "semantic" else "uint32")
            assert np.array_equal(got, truth[name][unit.start:unit.stop]), (unit, name)


def test_colour_tif_units_read_their_own_pages(pe_source, tmp_path, monkeypatch):
    src = tmp_path / "platelet-em"
    shutil.copytree(pe_source, src)
    truth = {v: _source_labels(src, v) for v in ("50", "24")}
    for path in src.glob("labels-*/*.json"):
        path.unlink()
    adapter, inv, units = _scan(src)
    keys: list[object] = []
    asarray = tifffile.TiffFile.asarray

    def spy(self, key=None, **kwargs):
        keys.append(key)
        return asarray(self, key=key, **kwargs)

    monkeypatch.setattr(tifffile.TiffFile, "asarray", spy)
    unit = next(u for u in units if (u.group, u.start) == ("50", 16))
    data = adapter.read_unit(inv, unit)
    assert keys == [range(16, 20)] * len(LABELS)  # the unit's pages, not the volume
    for u in units:
        data = adapter.read_unit(inv, u)
        for name in LABELS:
            got = data[f"labels/{name}/0/{name}"]
            assert np.array_equal(got, truth[u.group][name][u.start:u.stop]), name
        cell, shape = inv.files[u.group]["cell"], inv.group(u.group).var("0/image").shape
        one = adapter.load_label(Path(cell["path"]), "cell", shape, cell["max_id"],
                                 u.start, u.start + 1)  # one page: tifffile drops its axis
        assert np.array_equal(one, truth[u.group]["cell"][u.start:u.start + 1])
