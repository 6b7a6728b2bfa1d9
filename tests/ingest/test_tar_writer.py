"""The ingest's tar writer: webdataset's bytes, without importing webdataset (or torch)."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import webdataset as wds

from cloudmic.ingest.tar_writer import TarWriter


def _records() -> list[dict]:
    rng = np.random.default_rng(0)
    locs = np.zeros(5, dtype=[("x", "<f8"), ("frame", "<i8"), ("id", "<u4")])  # DL-SMLM
    return [
        {"__key__": "train-000001", "wf.npy": rng.random((8, 8), dtype=np.float32),
         "gt.npy": rng.integers(0, 65535, (16, 16), dtype=np.uint16),
         "json": {"dataset": "biosr", "photons": None, "level": [1, 2], "name": "ER-sec61β"},
         "cls": 7},
        {"__key__": "CCPs_cell1", "locs.npy": locs, "raw.npy": np.arange(6).reshape(2, 3) > 2,
         "txt": "a note", "bin": b"\x00\x01", "__url__": "ignored"},
        {"__key__": "vol-z000", "image.npy": np.ones((2, 3, 4), dtype=">i2")},
    ]


def _tar(writer_cls) -> bytes:
    buf = io.BytesIO()
    writer = writer_cls(buf)
    for rec in _records():
        writer.write(rec)
    writer.close()
    return buf.getvalue()


def test_the_same_bytes_as_webdataset():
    ours = _tar(TarWriter)
    theirs = _tar(lambda f: wds.TarWriter(f, mtime=0))
    assert ours == theirs
    with tarfile.open(fileobj=io.BytesIO(ours)) as tar:
        names = tar.getnames()
        locs = np.load(io.BytesIO(tar.extractfile("CCPs_cell1.locs.npy").read()))
    assert names[:4] == ["train-000001.cls", "train-000001.gt.npy", "train-000001.json",
                         "train-000001.wf.npy"]
    assert "CCPs_cell1.__url__" not in names
    assert np.array_equal(locs, _records()[1]["locs.npy"])


def test_refuses_what_it_cannot_encode_and_object_arrays():
    with pytest.raises(ValueError, match="no encoder for .png"):
        _write({"__key__": "k", "png": np.zeros((2, 2))})
    with pytest.raises(ValueError, match="pickle"):
        _write({"__key__": "k", "x.npy": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(ValueError, match="__key__"):
        _write({"x.npy": np.zeros(2)})


def _write(rec: dict) -> None:
    w = TarWriter(io.BytesIO())
    w.write(rec)
    w.close()


def test_an_ingest_process_never_imports_torch_or_webdataset():
    code = ("import sys, cloudmic.ingest.run, cloudmic.ingest.execute, cloudmic.datasets;"
            "print(sorted(m for m in ('torch', 'webdataset') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == "[]"
