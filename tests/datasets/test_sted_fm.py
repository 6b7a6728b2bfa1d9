"""STED-FM: real and synthetic crop archives ingest exactly; hostile archives are refused
with nothing executed and nothing published."""

from __future__ import annotations

import io
import logging
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import zarr

import cloudmic
from cloudmic.errors import SourceError
from cloudmic.ingest import ingest
from cloudmic.synth.sted_fm import ARCHIVES, STED_FM_CLASSES, synth_sted_fm
from fixtures_biosr import snapshot
from realdata import STEDFM_DERIVED, real_path

PROTEINS = ["f-actin", "beta-camkii", "psd95", "FUS", "tubulin", "sir-actin", "beta2-spectrin",
            "vglut1"]  # make_derived.py labels member n with PROTEINS[n]


def _members(tar_path: Path) -> dict[str, bytes]:
    with tarfile.open(tar_path) as tf:
        return {m.name: tf.extractfile(m).read() for m in tf.getmembers()}


def _image(blob: bytes) -> np.ndarray:
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:  # the pixels need no pickle
        return z["image"]


def test_real_derived_archives_ingest_exactly(tmp_path):
    src = real_path(STEDFM_DERIVED)
    ingest("sted-fm", src, str(tmp_path / "root"))
    tree = cloudmic.open(f"{tmp_path}/root/sted-fm.zarr")
    for archive, dtype in (("stedfm-sample-crops", "uint8"), ("stedfm-sample-crops-raw",
                                                              "uint16")):
        ds = tree[archive].ds
        members = _members(src / f"{archive}.tar")
        assert list(ds["member"].values) == sorted(members)
        for k, name in enumerate(ds["member"].values):
            assert ds["image"].dtype == dtype
            assert np.array_equal(ds["image"][k].values, _image(members[str(name)]))
        assert sorted(ds["protein"].values) == sorted(PROTEINS)
        assert ds.attrs["classes"] == list(STED_FM_CLASSES)
        assert ds.attrs["labelled"] == 8 and ds.attrs["unlabelled"] == 0
        label = ds["label"].values
        assert [STED_FM_CLASSES[i] for i in label] == list(ds["protein"].values)
    recs = list(cloudmic.shards(f"{tmp_path}/root/sted-fm.wds", "stedfm-sample-crops"))
    assert len(recs) == 8 and all(STED_FM_CLASSES[r["cls"]] == r["json"]["protein"] for r in recs)


@pytest.mark.parametrize("variant", ["uint8", "uint16", "tiff"])
def test_synthetic_archives_ingest_losslessly(tmp_path, variant, caplog):
    synth_sted_fm(tmp_path / "src", crops=12, unlabelled=3, variant=variant, seed=2)
    with caplog.at_level(logging.WARNING):
        ingest("sted-fm", tmp_path / "src", str(tmp_path / "root"))
    group = ARCHIVES[variant].removesuffix(".tar").removeprefix("STED-FM-dataset-")
    ds = cloudmic.open(f"{tmp_path}/root/sted-fm.zarr")[group].ds
    members = _members(tmp_path / "src" / ARCHIVES[variant])
    for k, name in enumerate(ds["member"].values):
        blob = members[str(name)]
        if variant == "tiff":
            import tifffile

            expected = tifffile.imread(io.BytesIO(blob))
        else:
            expected = _image(blob)
        assert np.array_equal(ds["image"][k].values, expected)
        assert ds["image"].dtype == expected.dtype
    if variant != "tiff":
        assert ds.attrs["unlabelled"] == 3 and ds.attrs["labelled"] == 12
        assert "without protein-id metadata stored as unlabelled" in caplog.text
        assert set(ds["protein"].values) <= set(STED_FM_CLASSES) | {"unknown"}


class _CountingStore(zarr.storage.WrapperStore):
    keys: list[str] = []

    async def get(self, key, prototype, byte_range=None):
        _CountingStore.keys.append(key)
        return await self._store.get(key, prototype, byte_range)


def test_labelled_subset_is_selected_without_reading_pixels(tmp_path):
    import xarray as xr

    synth_sted_fm(tmp_path / "src", crops=10, unlabelled=4, seed=5)
    ingest("sted-fm", tmp_path / "src", str(tmp_path / "root"))
    store = _CountingStore(zarr.storage.LocalStore(tmp_path / "root" / "sted-fm.zarr",
                                                   read_only=True))
    _CountingStore.keys = []
    tree = xr.open_datatree(store, engine="zarr", chunks={})
    ds = tree["crop"].ds
    labelled = ds.sel(sample=ds["protein"].values != "unknown")
    assert labelled.sizes["sample"] == 10
    assert not [k for k in _CountingStore.keys if k.startswith("crop/image/c")]


def _tar_with(tmp_path: Path, members: dict[str, bytes], name: str = "evil.tar") -> Path:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    with tarfile.open(src / name, "w") as tf:
        for member, blob in members.items():
            info = tarfile.TarInfo(member)
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    return src


def _good_member() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, image=np.zeros((224, 224), np.uint8),
             metadata={"protein-id": "FUS", "image-id": "x", "chan-id": 0,
                       "image-type": "msr", "user-id": "u"})
    return buf.getvalue()


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_hostile_pickle_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    np.savez(buf, image=np.zeros((224, 224), np.uint8),
             metadata=np.array({"protein-id": "FUS", "x": _Evil(marker)}, dtype=object))
    src = _tar_with(tmp_path, {"FUS-aaa-0-0": _good_member(), "FUS-evil-0-224": buf.getvalue()})
    root = tmp_path / "root"
    synth_sted_fm(tmp_path / "good", crops=4, unlabelled=0, seed=1)
    ingest("sted-fm", tmp_path / "good", str(root))
    before = snapshot(str(root))
    with pytest.raises(SourceError, match=r"FUS-evil-0-224.*(posix|os).*system"):
        ingest("sted-fm", src, str(root))
    assert not marker.exists()
    assert snapshot(str(root)) == before


@pytest.mark.parametrize("name", ["../x", "/etc/x", "a/../../x"])
def test_path_traversal_member_is_refused(tmp_path, name):
    src = _tar_with(tmp_path, {"FUS-aaa-0-0": _good_member(), name: _good_member()})
    with pytest.raises(SourceError, match="absolute path|'..' component"):
        ingest("sted-fm", src, str(tmp_path / "root"))
    assert not (tmp_path / "root" / "catalog.json").exists()


def test_symlink_member_is_refused(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    with tarfile.open(src / "links.tar", "w") as tf:
        info = tarfile.TarInfo("FUS-link-0-0")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(info)
    with pytest.raises(SourceError, match="symbolic link"):
        ingest("sted-fm", src, str(tmp_path / "root"))


def test_oversized_member_is_refused_before_reading(tmp_path):
    big = b"\0" * (17 * 1024 * 1024)  # above the manifest's 16 MiB member limit
    src = _tar_with(tmp_path, {"FUS-big-0-0": big})
    with pytest.raises(SourceError, match="above the limit"):
        ingest("sted-fm", src, str(tmp_path / "root"))


def test_empty_source_folder(tmp_path):
    (tmp_path / "src").mkdir()
    with pytest.raises(SourceError, match="no .tar archive here"):
        ingest("sted-fm", tmp_path / "src", str(tmp_path / "root"))


def test_archive_is_read_straight_from_s3(tmp_path, s3_env):
    """Members are read by byte range from the object store; nothing is unpacked to disk."""
    from cloudmic.storage.location import Location

    synth_sted_fm(tmp_path / "src", crops=6, unlabelled=1, variant="uint16", seed=4)
    bucket = Location.parse("s3://sted-source")
    bucket.fs.put_file(str(tmp_path / "src" / ARCHIVES["uint16"]),
                       f"sted-source/archives/{ARCHIVES['uint16']}")
    ingest("sted-fm", "s3://sted-source/archives", "s3://sted-dest")
    ds = cloudmic.open("s3://sted-dest/sted-fm.zarr")["crops-raw"].ds
    members = _members(tmp_path / "src" / ARCHIVES["uint16"])
    assert ds.sizes["sample"] == 7
    for k, name in enumerate(ds["member"].values):
        assert np.array_equal(ds["image"][k].values, _image(members[str(name)]))


def test_archive_above_the_size_limit_is_refused(tmp_path):
    import yaml

    from cloudmic.manifest import manifests_dir

    raw = yaml.safe_load((manifests_dir() / "sted-fm.yaml").read_text())
    raw["options"]["max_archive_bytes"] = 100_000
    manifest = tmp_path / "sted-fm.yaml"
    manifest.write_text(yaml.safe_dump(raw))
    synth_sted_fm(tmp_path / "src", crops=8, unlabelled=0, seed=1)
    with pytest.raises(SourceError, match="bytes of members, above the limit of 100,000"):
        ingest(str(manifest), tmp_path / "src", str(tmp_path / "root"))


# ---- lossless metadata (issue 15) -------------------------------------------------------------

def _strict(v):
    """A value with every type spelled out: 1, 1.0 and True compare unequal."""
    if isinstance(v, dict):
        return {k: _strict(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return (type(v).__name__, [_strict(x) for x in v])
    return (type(v).__name__, v)


def _metadata(blob: bytes) -> dict | None:
    with np.load(io.BytesIO(blob), allow_pickle=True) as z:  # our own test archive
        return z["metadata"].item() if "metadata" in z else None


def _npz(meta: dict | None, value: int = 0) -> bytes:
    buf = io.BytesIO()
    image = np.full((224, 224), value, np.uint16)
    np.savez(buf, image=image) if meta is None else np.savez(buf, image=image, metadata=meta)
    return buf.getvalue()


RICH = {  # member -> metadata: every key of datasets.md §2, and values JSON lacks
    "FUS-aaa-0-0": {"chan-id": 0, "image-id": "aaa", "image-type": "tif", "user-id": "u",
                    "protein-id": "FUS", "frame": 3, "gain": 1.5, "live": True},
    "psd95-bbb-0-224": {"chan-id": "STED_594 {6}", "image-id": "bbb", "image-type": "msr",
                        "user-id": "v", "protein-id": "psd95", "frame": 7, "gain": 2.0,
                        "live": False,
                        "msr-metadata": {"PhysicalSizeX": 0.015, "PhysicalSizeXUnit": "µm",
                                         "PhysicalSizeY": 0.02, "PhysicalSizeYUnit": "µm",
                                         "Axes": ["X", "Y"], "Nested": {"deep": {"n": 1}}}},
    "unknown-ccc-0-0": {"protein-id": "unknown", "chan-id": "STED_561 {4}", "image-id": "ccc",
                        "image-type": "msr", "user-id": "w", "note": None,
                        "shape": (224, 448), "raw": b"\x00\xffmsr",
                        "msr-metadata": {"PhysicalSizeX": 0.025, "PhysicalSizeXUnit": "µm"},
                        "odd": {"__tuple__": [1]}},
    "ddd-0-0": {"condition": "0MgGlyBic"},
    "eee-0-0": None,  # no metadata key at all
}


def _rich_source(tmp_path: Path) -> Path:
    src = _tar_with(tmp_path, {m: _npz(meta, k) for k, (m, meta) in enumerate(RICH.items())},
                    "STED-FM-dataset-crops-raw.tar")
    ints = {f"FUS-i{k}-0-0": {"chan-id": k, "protein-id": "FUS", "scale": np.float32(0.5)}
            for k in range(3)}
    _tar_with(tmp_path, {m: _npz(meta) for m, meta in ints.items()}, "STED-FM-dataset-ints.tar")
    return src


def test_every_metadata_key_and_type_round_trips_zarr_and_webdataset(tmp_path):
    import json

    import xarray as xr

    from cloudmic.datasets.sted_fm import metadata_from_json
    from cloudmic.ingest.verify import verify_dataset
    from cloudmic.storage.location import Location

    src = _rich_source(tmp_path)
    ingest("sted-fm", src, str(tmp_path / "root"))
    assert verify_dataset(Location.parse(str(tmp_path / "root")), "sted-fm").ok
    tree = xr.open_datatree(tmp_path / "root" / "sted-fm.zarr", engine="zarr")  # plain xarray
    ds = tree["crops-raw"].ds
    recs = {r["__key__"]: r["json"] for r in cloudmic.shards(f"{tmp_path}/root/sted-fm.wds",
                                                             "crops-raw")}
    for k, member in enumerate(ds["member"].values.tolist()):
        text = str(ds["metadata_json"].values[k])
        assert _strict(metadata_from_json(text)) == _strict(RICH[member])
        assert recs[member]["metadata"] == json.loads(text)  # WebDataset == Zarr, same JSON
        assert _strict(metadata_from_json(json.dumps(recs[member]["metadata"]))) == _strict(
            RICH[member])
    # plain json.loads is exact where JSON has the types (tuples and bytes come tagged)
    by = {m: k for k, m in enumerate(ds["member"].values.tolist())}
    loaded = json.loads(str(ds["metadata_json"].values[by["FUS-aaa-0-0"]]))
    assert _strict(loaded) == _strict(RICH["FUS-aaa-0-0"])
    assert ds["meta_frame"].dtype == "int64" and ds["meta_gain"].dtype == "float64"
    assert ds["meta_live"].dtype == bool and ds["meta_condition"].values[by["ddd-0-0"]] == \
        "0MgGlyBic"
    assert ds["meta_frame"].values[by["psd95-bbb-0-224"]] == 7
    assert ds["meta_chan_id"].attrs["metadata_types"] == ["int", "str"]  # mixed: text
    assert ds["meta_chan_id"].values.tolist() == [ds["chan_id"].values[k] for k in range(5)]
    assert "meta_msr_metadata" not in ds and "meta_shape" not in ds  # nested: JSON only
    px = ds["pixel_size_x"]
    assert px.attrs["units"] == "µm" and "pixel_size_x" in ds.coords
    assert px.values[by["psd95-bbb-0-224"]] == 0.015 and px.values[by["unknown-ccc-0-0"]] == 0.025
    assert np.isnan(px.values[by["ddd-0-0"]]) and ds["pixel_size_y"].values[by[
        "psd95-bbb-0-224"]] == 0.02
    assert ds.attrs["metadata_coords"]["chan-id"] == "meta_chan_id"
    ints = tree["ints"].ds
    assert ints["meta_chan_id"].dtype == "int64" and ints["meta_chan_id"].values.tolist() == \
        [0, 1, 2]
    assert ints["meta_scale"].dtype == "float64"  # a numpy float32 scalar arrives as a float
    assert all(type(metadata_from_json(str(t))["chan-id"]) is int
               for t in ints["metadata_json"].values)


def test_metadata_columns_are_byte_deterministic(tmp_path):
    src = _rich_source(tmp_path)
    for run in ("a", "b"):
        ingest("sted-fm", src, str(tmp_path / run))

    def files(run: str) -> dict[str, bytes]:
        base = tmp_path / run / "sted-fm.zarr" / "crops-raw"
        return {str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*"))
                if p.is_file()}

    assert files("a") == files("b") and any(k.startswith("meta_") for k in files("a"))


def test_synthetic_metadata_variants_round_trip(tmp_path):
    from cloudmic.datasets.sted_fm import metadata_from_json

    synth_sted_fm(tmp_path / "src", crops=24, unlabelled=4, seed=3, metadata_variants=True)
    ingest("sted-fm", tmp_path / "src", str(tmp_path / "root"))
    ds = cloudmic.open(f"{tmp_path}/root/sted-fm.zarr")["crop"].ds
    members = _members(tmp_path / "src" / ARCHIVES["uint8"])
    metas = [_metadata(members[str(m)]) for m in ds["member"].values]
    stored = [metadata_from_json(str(t)) for t in ds["metadata_json"].values]
    assert [_strict(m) for m in stored] == [_strict(m) for m in metas]
    assert {type(m["chan-id"]) for m in metas if m and "chan-id" in m} == {int, str}
    assert any(m and "msr-metadata" in m for m in metas)
    assert sum(1 for m in metas if m and "condition" in m) == 2
    for k, m in enumerate(metas):
        size = (m or {}).get("msr-metadata", {}).get("PhysicalSizeX")
        got = float(ds["pixel_size_x"].values[k])
        assert got == size if size is not None else np.isnan(got)
    assert ds["pixel_size_x"].attrs["units"] == "µm"


def test_real_derived_metadata_round_trips(tmp_path):
    from cloudmic.datasets.sted_fm import metadata_from_json

    src = real_path(STEDFM_DERIVED)
    ingest("sted-fm", src, str(tmp_path / "root"))
    tree = cloudmic.open(f"{tmp_path}/root/sted-fm.zarr")
    for archive in ("stedfm-sample-crops", "stedfm-sample-crops-raw"):
        ds = tree[archive].ds
        members = _members(src / f"{archive}.tar")
        recs = {r["__key__"]: r["json"]["metadata"]
                for r in cloudmic.shards(f"{tmp_path}/root/sted-fm.wds", archive)}
        for k, name in enumerate(ds["member"].values.tolist()):
            meta = _metadata(members[name])
            assert meta and _strict(metadata_from_json(str(ds["metadata_json"].values[k]))) \
                == _strict(meta)
            assert _strict(recs[name]) == _strict(meta)
        assert ds["meta_chan_id"].attrs["metadata_types"] == ["int", "str"]  # as published
