import io
import logging
import os
import pickle
import subprocess
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cloudmic.errors import SourceError
from cloudmic.formats.npz import NpzSample, read_npz_member
from cloudmic.formats.safe_pickle import UnsafePickleError
from cloudmic.formats.safe_tar import iter_tar_members
from realdata import STEDFM_DERIVED, real_path

DERIVED = STEDFM_DERIVED
# make_derived.py labels member n with PROTEINS[n] and stores the n-th flip/rotation.
PROTEINS = [
    "f-actin", "beta-camkii", "psd95", "FUS", "tubulin", "sir-actin", "beta2-spectrin", "vglut1",
]  # fmt: skip


def real_tar(name: str) -> Path:
    return real_path(DERIVED / name)


class Reduce:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def npy_header(descr: str, shape: tuple) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": descr, "fortran_order": False, "shape": shape}
    )
    return buf.getvalue()


def npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def make_npz(entries: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, blob in entries.items():
            zf.writestr(name, blob)
    return buf.getvalue()


CROP = (np.arange(224 * 224) % 256).astype(np.uint8).reshape(224, 224)
META = {"chan-id": "STED_594 {6}", "image-id": "uuid", "image-type": "msr",
        "user-id": "someone", "protein-id": "FUS"}  # fmt: skip


@pytest.mark.parametrize("tar_name", ["stedfm-sample-crops.tar", "stedfm-sample-crops-raw.tar"])
def test_real_derived_tars_parse(tar_name):
    path = real_tar(tar_name)
    dtype = np.uint16 if "raw" in tar_name else np.uint8
    samples: list[tuple[str, NpzSample, bytes]] = []
    with open(path, "rb") as fh:
        for name, blob in iter_tar_members(fh, archive=tar_name):
            samples.append((name, read_npz_member(blob, member=name), blob))
    assert len(samples) == 8
    assert [s.metadata["protein-id"] for _, s, _ in samples] == PROTEINS
    first = samples[0][1].image
    for n, (name, sample, blob) in enumerate(samples):
        assert sample.image.dtype == dtype and sample.image.shape == (224, 224)
        assert set(sample.metadata) == {"chan-id", "image-id", "image-type", "user-id",
                                        "protein-id"}  # fmt: skip
        assert name.startswith(sample.metadata["protein-id"] + "-")
        # The eight flips/rotations of one real crop, in make_derived.py's order.
        expected = np.rot90(first, n // 2)
        assert np.array_equal(sample.image, expected[:, ::-1] if n % 2 else expected)
        # Same values as numpy's own (trusting) loader gives for these known-good files.
        with np.load(io.BytesIO(blob), allow_pickle=True) as ref:
            assert np.array_equal(ref["image"], sample.image)
            assert ref["metadata"].item() == sample.metadata


def test_savez_member_round_trip_and_compressed():
    for saver in (np.savez, np.savez_compressed):
        buf = io.BytesIO()
        saver(buf, image=CROP, metadata=META)
        sample = read_npz_member(buf.getvalue(), member="FUS-uuid-0-0")
        assert np.array_equal(sample.image, CROP) and sample.metadata == META


def test_member_without_metadata_is_unlabelled():
    buf = io.BytesIO()
    np.savez(buf, image=CROP.astype(np.uint16))
    sample = read_npz_member(buf.getvalue(), member="uuid-0-0")
    assert sample.metadata is None and sample.image.dtype == np.uint16


def hostile_members(marker: Path) -> dict[str, bytes]:
    cmd = f"touch {marker}"
    return {
        "os.system": pickle.dumps(Reduce(os.system, cmd), protocol=4),
        "builtins.eval": pickle.dumps(Reduce(eval, f"__import__('os').system({cmd!r})")),
        "subprocess.Popen": pickle.dumps(Reduce(subprocess.Popen, ["touch", str(marker)])),
        # The realistic one: a genuine np.save of a 0-d object array whose dict hides a call.
        "inside the dict": npy(np.array({"protein-id": Reduce(os.system, cmd)}, dtype=object))[
            128:
        ],
    }


@pytest.mark.parametrize("case", ["os.system", "builtins.eval", "subprocess.Popen",
                                  "inside the dict"])  # fmt: skip
def test_hostile_metadata_is_refused_and_nothing_runs(tmp_path, case):
    marker = tmp_path / "pwned"
    payload = hostile_members(marker)[case]
    member = make_npz({"image.npy": npy(CROP), "metadata.npy": npy_header("|O", ()) + payload})
    with pytest.raises(UnsafePickleError) as e:
        read_npz_member(member, member="FUS-evil-0-0")
    assert "FUS-evil-0-0 (metadata.npy)" in str(e.value)
    assert e.value.refused in str(e.value)
    assert ("system" if case == "inside the dict" else case.split(".")[-1]) in e.value.refused
    assert not marker.exists()


def test_hostile_member_in_a_tar_stream(tmp_path):
    marker = tmp_path / "pwned"
    good = io.BytesIO()
    np.savez(good, image=CROP, metadata=META)
    evil = make_npz(
        {
            "image.npy": npy(CROP),
            "metadata.npy": npy_header("|O", ()) + hostile_members(marker)["os.system"],
        }
    )
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as tf:
        for name, blob in [("FUS-good-0-0", good.getvalue()), ("FUS-evil-0-224", evil)]:
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    tar.seek(0)
    members = iter_tar_members(tar, archive="crops.tar")
    name, blob = next(members)
    assert read_npz_member(blob, member=name).metadata == META
    name, blob = next(members)
    with pytest.raises(UnsafePickleError, match="FUS-evil-0-224"):
        read_npz_member(blob, member=name)
    assert not marker.exists()


def bomb(size: int) -> bytes:
    shape = (size // 4096, 4096)
    blob = npy_header("|u1", shape) + bytes(shape[0] * shape[1])
    return make_npz({"image.npy": blob}, zipfile.ZIP_DEFLATED)


def test_zip_bomb_is_refused_before_decompressing(monkeypatch):
    data = bomb(40 * 1024 * 1024)  # 40 MiB of zeros deflate to ~40 KB
    assert len(data) < 100_000

    def no_decompression(*args, **kwargs):
        raise AssertionError("decompressed an entry that should have been refused")

    monkeypatch.setattr(zipfile.ZipFile, "open", no_decompression)
    monkeypatch.setattr(zipfile.ZipFile, "read", no_decompression)
    with pytest.raises(SourceError, match=r"unpacks to 41,943,\d+ bytes, above the limit"):
        read_npz_member(data, member="bomb")
    with pytest.raises(SourceError, match=r"compresses [\d,]+:1.*zip bomb"):
        read_npz_member(data, member="bomb", max_bytes=1 << 30)


def test_lying_zip_directory_size_is_refused():
    data = bytearray(make_npz({"image.npy": npy(CROP)}))
    central = data.index(b"PK\x01\x02")
    data[central + 24 : central + 28] = (3 << 30).to_bytes(4, "little")  # "3 GiB"
    with pytest.raises(SourceError, match="3,221,225,472 bytes, above the limit"):
        read_npz_member(bytes(data), member="liar")


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((224, 224), np.float32),
        np.zeros((3, 224, 224), np.uint8),
        np.zeros((224,), np.uint16),
        np.zeros((224, 224), np.int16),
        np.array([{"a": 1}], dtype=object),
    ],
)
def test_wrong_image_is_named(image):
    data = make_npz({"image.npy": npy(image)})
    with pytest.raises(SourceError) as e:
        read_npz_member(data, member="FUS-x-0-0")
    msg = str(e.value)
    assert "FUS-x-0-0 (image.npy)" in msg and "2-D uint8 or uint16" in msg
    assert str(image.dtype) in msg and str(image.shape) in msg


def test_other_layouts_of_the_same_values_are_accepted():
    big_endian = CROP.astype(">u2")
    fortran = np.asfortranarray(CROP)
    for arr in (big_endian, fortran):
        sample = read_npz_member(make_npz({"image.npy": npy(arr)}), member="m")
        assert np.array_equal(sample.image, arr) and sample.image.dtype.isnative
        assert sample.image.flags.c_contiguous


def test_truncated_image_entry():
    blob = npy_header("|u1", (224, 224)) + bytes(100)
    with pytest.raises(SourceError, match="promises 50,304 bytes but the entry has"):
        read_npz_member(make_npz({"image.npy": blob}), member="cut")


def test_entry_names(caplog):
    good = {"image.npy": npy(CROP)}
    with caplog.at_level(logging.WARNING, logger="cloudmic.formats.npz"):
        sample = read_npz_member(make_npz({**good, "notes.npy": npy(CROP)}), member="m")
    assert sample.metadata is None and "ignoring unexpected npz entry 'notes.npy'" in caplog.text
    for bad in ("../image.npy", "/abs.npy", "sub/image.npy", "C:x.npy", "a\\b.npy"):
        with pytest.raises(SourceError, match="member"):
            read_npz_member(make_npz({**good, bad: b"x"}), member="m")
    with pytest.raises(SourceError, match="no 'image.npy'"):
        read_npz_member(make_npz({"metadata.npy": npy(np.array(META, dtype=object))}), member="m")


def test_metadata_that_is_not_a_dict_or_not_an_object_array():
    for meta, match in [
        (npy(np.array(["a", "b"], dtype=object)), "shape"),
        (npy(np.array(3.0)), "float64"),
        (npy(np.array([1, 2], dtype=object))[:-5], "shape"),
        (npy(np.array("just a string", dtype=object)), "holds a str, not a dict"),
    ]:
        data = make_npz({"image.npy": npy(CROP), "metadata.npy": meta})
        with pytest.raises(SourceError, match=match):
            read_npz_member(data, member="m")


def test_not_a_zip():
    with pytest.raises(SourceError, match="not an .npz"):
        read_npz_member(b"hello", member="m")


# --- issue 14 -------------------------------------------------------------------------------


def _npy_bytes(descr: str, shape: tuple, body: bytes) -> bytes:
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}"
    header += " " * ((-len(header) - 11) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + body


def _zip(entries: dict[str, bytes], version: int = 20) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name)
            info.extract_version = version
            zf.writestr(info, data)
    return buf.getvalue()


def test_negative_npy_shape_is_a_source_error_naming_the_member():
    # (-2, -3) has a positive product: it used to pass the size check and fail in numpy
    # with "ValueError: can only specify one unknown dimension", naming no file.
    member = _zip({"image.npy": _npy_bytes("<u2", (-2, -3), b"\0" * 12)})
    with pytest.raises(SourceError, match=r"crops\.tar: member 'a' \(image\.npy\).*negative"):
        read_npz_member(member, member="crops.tar: member 'a'")


def test_npz_needing_a_newer_zip_version_is_a_source_error():
    member = _zip({"image.npy": _npy_bytes("|u1", (1, 1), b"\0")}, version=188)
    with pytest.raises(SourceError, match=r"crops\.tar: member 'a'.*18\.8"):
        read_npz_member(member, member="crops.tar: member 'a'")


def test_compressed_size_beyond_the_member_is_refused():
    member = bytearray(_zip({"image.npy": _npy_bytes("|u1", (1, 1), b"\0")}))
    cd = member.rfind(b"PK\x01\x02")
    member[cd + 20:cd + 24] = (2**31).to_bytes(4, "little")  # central directory compress_size
    with pytest.raises(SourceError, match="crops.tar: member 'a'"):
        read_npz_member(bytes(member), member="crops.tar: member 'a'")


def test_corrupt_deflate_entry_is_a_source_error():
    # found by the fuzz suite: zlib.error escaped from the entry read
    buf = io.BytesIO()
    np.savez_compressed(buf, image=np.arange(4096, dtype="uint16").reshape(64, 64))
    raw = bytearray(buf.getvalue())
    start = 30 + len("image.npy")
    raw[start + 8:start + 60] = b"\xfe" * 52
    with pytest.raises(SourceError, match=r"m \(image\.npy\)"):
        read_npz_member(bytes(raw), member="m")
