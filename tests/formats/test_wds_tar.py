"""``formats/wds_tar.py``: the same records as webdataset's own tar reader, and the refusals."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
from webdataset.tariterators import group_by_keys, tar_file_expander

from cloudmic.formats import wds_tar
from cloudmic.formats.wds_tar import TarFormatError, load_npy
from cloudmic.ingest.tar_writer import TarWriter


def webdataset_records(data: bytes) -> list[dict]:
    return list(group_by_keys(tar_file_expander([{"url": "u", "stream": io.BytesIO(data)}])))


def ours(data: bytes) -> list[dict]:
    return [{k: bytes(v) if isinstance(v, bytearray) else v for k, v in r.items()}
            for r in wds_tar.records(io.BytesIO(data), "u")]


def cloudmic_shard(n: int = 5) -> bytes:
    buf = io.BytesIO()
    w = TarWriter(buf)
    for i in range(n):
        w.write({"__key__": f"train-{i:06d}", "wf.npy": np.full((4, 3), i, np.float32),
                 "gt.npy": np.arange(6, dtype=np.uint16).reshape(2, 3) + i,
                 "json": {"i": i}, "cls": i})
    w.close()
    return buf.getvalue()


def tar_of(members: list[tuple[tarfile.TarInfo, bytes | None]], fmt: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for info, data in members:
            info.size = len(data) if data is not None else 0
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def entry(name: str, kind: bytes = tarfile.REGTYPE, **kw) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    for k, v in kw.items():
        setattr(info, k, v)
    return info


def test_cloudmic_shards_read_as_webdataset_reads_them():
    data = cloudmic_shard()
    assert ours(data) == webdataset_records(data)
    assert len(ours(data)) == 5


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_long_names_folders_links_and_meta_as_webdataset(fmt):
    deep = "d" * 60 + "/" + "e" * 60  # > 100 chars: ustar prefix, GNU long name or pax path
    members = [(entry("folder/", tarfile.DIRTYPE), None),
               (entry(f"{deep}/k1.wf.npy"), b"a" * 700),
               (entry(f"{deep}/k1.JSON"), b'{"x": 1}'),
               (entry("__meta__.json"), b"{}"),
               (entry("k2.link", tarfile.SYMTYPE, linkname="k1.json"), None),
               (entry("k2.txt"), b""),
               (entry("noext"), b"zz"),
               (entry("k3.txt"), b"x" * 513)]
    if fmt != tarfile.USTAR_FORMAT:  # ustar has no room for a 200-char name
        members.append((entry("f" * 150 + ".txt"), b"long"))
    if fmt == tarfile.PAX_FORMAT:
        members.append((entry("k4.ünïcode.txt"), b"u"))
    data = tar_of(members, fmt)
    assert ours(data) == webdataset_records(data)
    assert ours(data)[0]["json"] == b'{"x": 1}'  # extensions lower-cased


def test_a_duplicate_field_is_refused():
    data = tar_of([(entry("k.a"), b"1"), (entry("k.a"), b"2")], tarfile.USTAR_FORMAT)
    with pytest.raises(TarFormatError, match="duplicate"):
        ours(data)


def test_damaged_and_truncated_tars_are_refused():
    data = bytearray(cloudmic_shard(2))
    damaged = bytearray(data)
    damaged[3] ^= 0x01  # the first member's name: its header's checksum no longer holds
    with pytest.raises(TarFormatError, match="checksum"):
        ours(bytes(damaged))
    with pytest.raises(TarFormatError, match="ends"):
        ours(bytes(data[:512 + 100]))  # inside the first member
    with pytest.raises(TarFormatError, match="checksum"):
        ours(b"\x00garbage" * 256)


def with_size(header: bytes, size: int) -> bytes:
    h = bytearray(header)
    h[124:136] = f"{size:011o}\0".encode()
    h[148:156] = b" " * 8
    h[148:156] = f"{sum(h):06o}\0 ".encode()
    return bytes(h)


def test_a_member_claiming_gigabytes_is_refused_without_allocating_them():
    data = cloudmic_shard(1)
    bomb = with_size(data[:512], 8 << 30) + data[512:]  # 8 GiB, the most octal can say
    with pytest.raises(TarFormatError, match="more than"):
        ours(bomb)
    pax = tar_of([(entry("k.txt"), b"x")], tarfile.PAX_FORMAT)
    meta = tarfile.TarInfo("pax")
    meta.type, meta.size = tarfile.XHDTYPE, 2 << 20  # a pax header of 2 MiB
    with pytest.raises(TarFormatError, match="more than"):
        ours(meta.tobuf(tarfile.USTAR_FORMAT) + pax)


@pytest.mark.parametrize("array", [
    np.arange(12, dtype="<f4").reshape(3, 4),
    np.asfortranarray(np.arange(12, dtype=">i2").reshape(3, 4)),
    np.array(3.5),
    np.zeros((0, 5), np.uint8),
    np.zeros(3, dtype=[("a", "<u2"), ("b", "<f8")]),
])
def test_npy_payloads_load_as_numpy_loads_them(array):
    buf = io.BytesIO()
    np.save(buf, array)
    got = load_npy(bytearray(buf.getvalue()))
    expected = np.load(io.BytesIO(buf.getvalue()))
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert np.array_equal(got, expected) and got.flags.writeable
    assert got.flags.f_contiguous == expected.flags.f_contiguous


def test_npy_version_2_and_refusals():
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.arange(5), version=(2, 0))
    assert np.array_equal(load_npy(bytearray(buf.getvalue())), np.arange(5))
    pickled = io.BytesIO()
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="Python objects|pickle"):
        load_npy(bytearray(pickled.getvalue()))
    whole = io.BytesIO()
    np.save(whole, np.arange(100))
    whole = bytearray(whole.getvalue())
    with pytest.raises(ValueError, match="holds less"):
        load_npy(whole[:-8])
    with pytest.raises(ValueError, match="magic"):
        load_npy(bytearray(b"PK\x03\x04" + bytes(20)))
    # found by fuzzing: numpy's own parser raises tokenize's error for this header
    bad = bytearray(whole)
    at = bad.index(b"'shape': (") + len(b"'shape': ")
    bad[at] = ord(")")
    with pytest.raises(ValueError, match="cannot parse"):
        load_npy(bad)
