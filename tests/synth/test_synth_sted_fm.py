"""Synthetic STED-FM: the npz-in-tar layout, metadata, encodings, determinism, and a check
against the real derived archives in ``shared/data/real/stedfm``."""

from __future__ import annotations

import io
import json
import pickle
import re
import tarfile
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cloudmic.synth import get_generator
from cloudmic.synth.sted_fm import (
    ARCHIVES,
    IMAGE_TYPES,
    STED_FM_CLASSES,
    otsu_threshold,
    quantile_uint8,
    synth_sted_fm,
)
from realdata import STEDFM_DERIVED, real_path

REAL = STEDFM_DERIVED.parent
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-3[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
NAME = re.compile(rf"^(?:(?P<protein>.+)-)?(?P<uuid>{UUID})-(?P<j>\d+)-(?P<i>\d+)$")
KEYS = ["chan-id", "image-id", "image-type", "user-id", "protein-id"]
CROPS, UNLABELLED = 30, 3


_real = real_path


def _members(archive: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(archive) as tar:
        return [(m, tar.extractfile(m).read()) for m in tar.getmembers()]


def _npz(data: bytes) -> dict:
    with np.load(io.BytesIO(data), allow_pickle=True) as npz:
        return dict(npz)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """What a careful reader allows: numpy's array reconstruction and plain builtins."""

    ALLOWED = {
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing {module}.{name}")
        return super().find_class(module, name)


def _safe_metadata(data: bytes) -> dict:
    """The metadata dict, unpickled without numpy's allow_pickle (restricted globals)."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        raw = z.read("metadata.npy")
    fp = io.BytesIO(raw)
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
    else:
        shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
    assert shape == () and dtype == np.dtype(object)
    return _NumpyOnlyUnpickler(fp).load().item()


@pytest.fixture(scope="module", params=["uint8", "uint16", "tiff"])
def archive(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    variant = request.param
    out = tmp_path_factory.mktemp(f"sted_{variant}")
    calls: list[int] = []
    summary = synth_sted_fm(
        out, crops=CROPS, unlabelled=UNLABELLED, variant=variant, seed=3, progress=calls.append
    )
    return variant, out, summary, calls


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory):
    """The uint8 and the raw uint16 archive of the same seed."""
    out = tmp_path_factory.mktemp("sted_pair")
    paths = [
        synth_sted_fm(out, crops=CROPS, unlabelled=UNLABELLED, variant=v, seed=3)["archive"]
        for v in ("uint8", "uint16")
    ]
    return [dict((m.name, d) for m, d in _members(Path(p))) for p in paths]


def test_registry() -> None:
    assert get_generator("sted-fm") is synth_sted_fm


def test_classes_are_the_keys_of_the_real_metadata() -> None:
    metadata = json.loads(
        _real(REAL / "original" / "FLClab-STED-FM" / "datasets" / "metadata.json").read_text()
    )
    assert tuple(metadata) == STED_FM_CLASSES
    assert len(STED_FM_CLASSES) == 24 and "FUS" in STED_FM_CLASSES


def test_one_archive_named_per_variant(archive) -> None:
    variant, out, summary, calls = archive
    name = {
        "uint8": "STED-FM-dataset-crop.tar",
        "uint16": "STED-FM-dataset-crops-raw.tar",
        "tiff": "STED-FM-dataset-crops-tiff-raw.tar",
    }[variant]
    assert ARCHIVES[variant] == name
    assert [p.name for p in out.iterdir()] == [name]  # no temp file left
    assert summary["archive"] == str(out / name) and summary["root"] == str(out)
    assert summary["files"] == 1 and summary["bytes"] == (out / name).stat().st_size
    assert summary["members"] == CROPS + UNLABELLED == sum(calls)
    assert summary["variant"] == variant


def test_members_are_flat_regular_files_with_fixed_headers(archive) -> None:
    variant, out, summary, _ = archive
    members = _members(Path(summary["archive"]))
    assert len(members) == CROPS + UNLABELLED
    for m, data in members:
        assert m.isreg() and "/" not in m.name
        stem = m.name.removesuffix(".tif") if variant == "tiff" else m.name
        assert m.name.endswith(".tif") == (variant == "tiff")
        assert "." not in stem  # no extension
        assert NAME.match(stem), m.name
        assert (m.mode, m.uid, m.gid, m.mtime, m.uname, m.gname) == (0o644, 0, 0, 0, "", "")
        assert m.size == len(data)


def test_names_and_labels_come_from_the_metadata(archive) -> None:
    variant, _, summary, _ = archive
    if variant == "tiff":
        pytest.skip("TIFF members carry no metadata")
    seen: dict[str, int] = {}
    unlabelled = 0
    for m, data in _members(Path(summary["archive"])):
        npz = _npz(data)
        match = NAME.match(m.name)
        j, i = int(match["j"]), int(match["i"])
        assert j % 224 == 0 and i % 224 == 0
        if "metadata" not in npz:  # the authors' notebook checks for this
            assert list(npz) == ["image"]
            assert match["protein"] is None  # no protein is known
            unlabelled += 1
            continue
        assert list(npz) == ["image", "metadata"]
        meta = npz["metadata"]
        assert meta.dtype == object and meta.shape == ()
        info = meta.item()
        assert list(info) == KEYS
        protein = info["protein-id"]
        assert protein in STED_FM_CLASSES
        assert match["protein"] == protein and match["uuid"] == info["image-id"]
        assert uuid.UUID(info["image-id"]).version == 3
        assert info["image-type"] in IMAGE_TYPES
        assert isinstance(info["user-id"], str) and info["user-id"]
        chan = info["chan-id"]
        assert type(chan) in (int, str)
        if info["image-type"] == "npz":
            assert chan == "arr_0"
        seen[protein] = seen.get(protein, 0) + 1
        assert _safe_metadata(data) == info
    assert unlabelled == UNLABELLED
    assert sum(seen.values()) == CROPS
    assert seen == summary["classes"]
    assert set(seen) == set(STED_FM_CLASSES[:CROPS])  # spread over the classes in order
    assert max(seen.values()) - min(seen.values()) <= 1


def test_chan_ids_take_all_three_forms(tmp_path: Path) -> None:
    summary = synth_sted_fm(tmp_path, crops=96, unlabelled=0, seed=1)
    kinds = set()
    for _, data in _members(Path(summary["archive"])):
        chan = _npz(data)["metadata"].item()["chan-id"]
        kinds.add("arr_0" if chan == "arr_0" else type(chan).__name__)
    assert kinds == {"int", "str", "arr_0"}


def test_dtypes_and_shapes(archive) -> None:
    variant, _, summary, _ = archive
    for _, data in _members(Path(summary["archive"])):
        if variant == "tiff":
            with tifffile.TiffFile(io.BytesIO(data)) as tif:
                assert tif.is_imagej and len(tif.pages) == 1
                image = tif.asarray()
        else:
            image = _npz(data)["image"]
        assert image.shape == (224, 224)
        assert image.dtype == (np.uint8 if variant == "uint8" else np.uint16)
        assert image.max() > image.min()


def test_uint8_is_the_quantile_scaling_of_the_raw_counts(pair) -> None:
    u8, u16 = pair
    assert u8.keys() == u16.keys()
    by_image: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    low = high = 0
    for name in u8:
        a = _npz(u8[name])["image"]
        b = _npz(u16[name])["image"]
        by_image.setdefault(NAME.match(name)["uuid"], []).append((a, b))
        low += int((a == 0).sum())
        high += int((a == 255).sum())
    assert low > 0 and high > 0  # the scaling clips at both ends
    # Within one source image both encodings are the same picture under one monotone map
    # (clip((x - m) / (M - m)) * 255 with the image's own quantiles; the raw one minus min).
    for crops in by_image.values():
        a = np.concatenate([c[0].ravel() for c in crops])
        b = np.concatenate([c[1].ravel() for c in crops])
        order = np.argsort(b, kind="stable")
        assert np.all(np.diff(a[order].astype(int)) >= 0)


def test_quantile_uint8_rule() -> None:
    rng = np.random.default_rng(0)
    image = rng.poisson(20, (300, 400)).astype(np.uint16)
    out = quantile_uint8(image)
    m, big = np.quantile(image, [0.001, 0.999])
    expected = (np.clip((image - m) / (big - m), 0, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)
    assert np.mean(out == 255) <= 0.002 and np.mean(out == 0) <= 0.002
    with pytest.raises(ValueError, match="contrast"):
        quantile_uint8(np.ones((4, 4)))


def test_otsu_threshold_splits_two_populations() -> None:
    image = np.concatenate([np.full(100, 10), np.full(50, 200)]).astype(np.uint8)
    assert 10 <= otsu_threshold(image) < 200
    assert otsu_threshold(np.full(5, 7, np.uint8)) == 7


def test_legacy_names(tmp_path: Path) -> None:
    summary = synth_sted_fm(tmp_path, crops=5, unlabelled=1, seed=3, legacy_names=True)
    for m, data in _members(Path(summary["archive"])):
        assert re.fullmatch(rf"{UUID}-\d+-\d+", m.name), m.name
        npz = _npz(data)
        if "metadata" in npz:
            assert m.name.startswith(npz["metadata"].item()["image-id"])


def test_same_seed_same_tar_bytes(tmp_path: Path) -> None:
    for variant in ("uint8", "tiff"):
        kw = {"crops": 6, "unlabelled": 1, "variant": variant}
        a = Path(synth_sted_fm(tmp_path / "a", seed=9, **kw)["archive"]).read_bytes()
        b = Path(synth_sted_fm(tmp_path / "b", seed=9, **kw)["archive"]).read_bytes()
        c = Path(synth_sted_fm(tmp_path / "c", seed=10, **kw)["archive"]).read_bytes()
        assert a == b
        assert a != c


def test_member_bytes_do_not_depend_on_counts(tmp_path: Path) -> None:
    small = dict(
        (m.name, d)
        for m, d in _members(
            Path(synth_sted_fm(tmp_path / "s", crops=24, unlabelled=1, seed=4)["archive"])
        )
    )
    large = dict(
        (m.name, d)
        for m, d in _members(
            Path(synth_sted_fm(tmp_path / "l", crops=48, unlabelled=2, seed=4)["archive"])
        )
    )
    assert small.items() <= large.items()


def test_same_structure_as_the_real_derived_archives(pair) -> None:
    ours = {"uint8": pair[0], "uint16": pair[1]}
    for variant, real_name in (
        ("uint8", "stedfm-sample-crops.tar"),
        ("uint16", "stedfm-sample-crops-raw.tar"),
    ):
        real = _members(_real(REAL / "derived" / real_name))
        mine = [(name, data) for name, data in ours[variant].items() if b"metadata" in data]
        assert real and mine
        shapes = set()
        for kind, members in (("real", [(m.name, d) for m, d in real]), ("ours", mine)):
            for name, data in members:
                assert NAME.match(name) and "." not in name and "/" not in name, (kind, name)
                with zipfile.ZipFile(io.BytesIO(data)) as z:
                    entries = [(i.filename, i.compress_type) for i in z.infolist()]
                npz = _npz(data)
                info = npz["metadata"].item()
                image = npz["image"]
                shapes.add(
                    (
                        tuple(entries),
                        tuple(npz),
                        image.dtype.str,
                        image.shape,
                        npz["metadata"].dtype.str,
                        npz["metadata"].shape,
                        tuple(info),
                    )
                )
                assert NAME.match(name)["protein"] == info["protein-id"]
                assert info["protein-id"] in STED_FM_CLASSES
                assert _safe_metadata(data) == info
        assert len(shapes) == 1, shapes  # real and synthetic members look alike


def test_readable_by_the_cloudmic_safe_readers(archive) -> None:
    variant, _, summary, _ = archive
    if variant == "tiff":
        pytest.skip("the TIFF archive holds no npz members")
    from cloudmic.formats.npz import read_npz_member
    from cloudmic.formats.safe_tar import iter_tar_members

    labelled = 0
    with open(summary["archive"], "rb") as f:
        for name, data in iter_tar_members(f, archive=summary["archive"]):
            sample = read_npz_member(data, member=name)
            npz = _npz(data)
            np.testing.assert_array_equal(sample.image, npz["image"])
            assert sample.image.dtype == npz["image"].dtype
            if "metadata" in npz:
                assert sample.metadata == npz["metadata"].item()
                labelled += 1
            else:
                assert sample.metadata is None
    assert labelled == CROPS


def test_blank_source_images_are_skipped_like_the_writer_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An image with no contrast (0.001 and 0.999 quantiles equal) is skipped, as the
    writer's InvalidNormalizationError branch does; the quota comes from the next ones."""
    import cloudmic.synth.sted_fm_scenes as scenes
    import cloudmic.synth.sted_fm_sources as sources

    monkeypatch.setattr(sources, "BACKGROUND_PHOTONS", (0.0, 1e-12))  # blank means all zeros
    real = scenes.SCENES["puncta"]
    calls: list[str] = []

    def sometimes_blank(rng, shape, px_nm, protein):
        calls.append(protein)
        image = real(rng, shape, px_nm, protein)
        return image * 0 if len(calls) % 2 else image  # every other source: nothing labelled

    monkeypatch.setitem(scenes.SCENES, "puncta", sometimes_blank)
    summary = synth_sted_fm(tmp_path / "a", crops=24, unlabelled=0, seed=1)
    assert summary["members"] == 24  # the quota is met from the usable sources
    for _, data in _members(Path(summary["archive"])):
        assert _npz(data)["image"].max() > 0

    monkeypatch.setitem(scenes.SCENES, "puncta", lambda rng, shape, px_nm, protein: np.zeros(shape))
    with pytest.raises(RuntimeError, match="no usable crop"):
        synth_sted_fm(tmp_path / "b", crops=24, unlabelled=0, seed=1)
    assert list((tmp_path / "b").iterdir()) == []  # no archive, no temp file


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"crops": -1}, "crops must be a whole number from 0"),
        ({"crops": 2.0}, "crops must be a whole number"),
        ({"unlabelled": True}, "unlabelled must be a whole number"),
        ({"variant": "raw"}, "variant must be 'uint8' .* 'uint16' .* or 'tiff'"),
        ({"seed": -3}, "seed must be a non-negative integer"),
        ({"legacy_names": "no"}, "legacy_names must be True or False"),
    ],
)
def test_bad_arguments_say_what_to_pass(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        synth_sted_fm(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()
