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
