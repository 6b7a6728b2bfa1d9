"""How batches cross from loader workers to the training process: the big arrays of a
batch in one shared-memory segment (views of it), the rest as before."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import cloudmic

torch = pytest.importorskip("torch")

from cloudmic.client.stream.torch_adapter import as_tensors, shared_tensors  # noqa: E402
from cloudmic.ingest import ingest  # noqa: E402


@pytest.fixture(scope="module")
def url(biosr_sources, small_manifest, tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("transfer-root")
    ingest(str(small_manifest), biosr_sources["uint16"], str(root))
    return str(root / "biosr.zarr")


def _batch() -> dict:
    rng = np.random.default_rng(0)
    return {"wf": rng.random((8, 64, 64), dtype=np.float32),
            "gt": rng.integers(0, 60000, (8, 1, 128, 128)).astype(np.uint16),
            "label": rng.integers(0, 9, (8, 64, 64)).astype(np.int64)[:, ::2],  # strided
            "position": np.arange(8), "pad": np.zeros(8, bool),
            "__key__": [f"k{i}" for i in range(8)],
            "origin": {"y": np.arange(8), "x": np.arange(8)},
            "names": np.array(["a"] * 8), "big_endian": np.ones(40000, ">f4")}


def test_big_arrays_share_one_segment_and_keep_their_values():
    b = _batch()
    out = shared_tensors(b, min_bytes=4096)
    big = [out["wf"], out["gt"], out["label"]]
    assert all(isinstance(t, torch.Tensor) and t.is_shared() for t in big)
    assert len({t.untyped_storage().data_ptr() for t in big}) == 1  # one segment
    assert all(t.storage_offset() * t.element_size() % 64 == 0 for t in big)
    for name in ("wf", "gt", "label"):
        assert out[name].dtype == torch.from_numpy(b[name][:0]).dtype
        assert np.array_equal(out[name].numpy(), b[name])
    # small arrays inline in the pickle (tensors in the training process), strings and
    # what torch cannot hold unchanged
    assert isinstance(out["position"], np.ndarray)
    assert out["__key__"] == b["__key__"] and out["names"] is b["names"]
    assert out["big_endian"] is b["big_endian"]
    assert np.array_equal(out["origin"]["y"], b["origin"]["y"])


def test_a_batch_without_big_arrays_is_as_before():
    small = {"position": np.arange(4), "__key__": ["a", "b", "c", "d"]}
    out = shared_tensors(small, min_bytes=4096)
    ref = as_tensors(small, 4096)
    assert out.keys() == ref.keys() and out["__key__"] == ref["__key__"]
    assert isinstance(out["position"], np.ndarray)  # small: inline in the pickle


def test_the_segment_crosses_processes_by_torch_reductions():
    """What the DataLoader does: pickle with torch's reductions; the views arrive intact."""
    import io
    from multiprocessing.reduction import ForkingPickler

    from torch.multiprocessing.reductions import init_reductions

    init_reductions()
    out = shared_tensors(_batch(), min_bytes=4096)
    buf = io.BytesIO()
    ForkingPickler(buf, pickle.HIGHEST_PROTOCOL).dump(out)
    back = pickle.loads(buf.getvalue())
    for name in ("wf", "gt", "label"):
        assert torch.equal(back[name], out[name])


def test_a_loader_with_workers_delivers_the_stream_s_pixels(url, monkeypatch):
    """Through 2 forkserver workers, every batch equals what the stream makes in-process,
    its arrays arriving as views of one segment (the test's batches are small: every array
    goes into it)."""
    from cloudmic.client.stream import torch_adapter

    monkeypatch.setattr(torch_adapter, "SHARED_MIN_BYTES", 1)
    here = {k: w for b in cloudmic.PatchStream(url, "train", ["wf", "gt"], {"y": 16, "x": 16},
                                               seed=3, batch_size=4)
            for k, w in zip(b["__key__"], b["wf"], strict=True)}
    s = cloudmic.PatchStream(url, "train", ["wf", "gt"], {"y": 16, "x": 16}, seed=3)
    seen = 0
    for b in s.loader(batch_size=4, num_workers=2):
        assert b["wf"].is_shared() and b["gt"].is_shared()
        assert b["wf"].untyped_storage().data_ptr() == b["gt"].untyped_storage().data_ptr()
        for k, w in zip(b["__key__"], b["wf"], strict=True):
            assert np.array_equal(w.numpy(), here[k])
            seen += 1
    assert seen == len(here)


def test_an_array_listed_twice_is_copied_once():
    a = np.ones((4, 64, 64), np.float32)
    out = shared_tensors({"x": a, "y": [a]}, min_bytes=4096)
    assert out["x"].untyped_storage().nbytes() == a.nbytes  # one copy in the segment
    assert out["y"][0] is out["x"]
