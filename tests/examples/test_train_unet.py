"""examples/train_unet.py as a user runs it: ``torchrun`` with 2 ranks on gloo trains a few
steps and checkpoints, then 1 rank with a loader worker resumes mid-epoch from the
checkpoint and finishes the epoch; ``--feed-only`` (as plain ``python``, without torchrun)
reports what the stream delivers, in all and per loader core. Batches reach the loop as
tensors, pinned on request (on CPU torch only warns that there is nothing to pin into)."""

from __future__ import annotations

import importlib.util
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cloudmic.ingest import ingest

torch = pytest.importorskip("torch")

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "train_unet.py"
# tiny everything: 16 px WF patches (32 px GT), 4 channels, batches of 4 per rank
TINY = ["--batch-size", "4", "--patch", "16", "--width", "4", "--log-every", "1"]


@pytest.fixture(scope="module")
def stores(biosr_sources, small_manifest, tmp_path_factory) -> dict[str, str]:
    """40 training pairs in blocks of 8: uint16 with a 2x GT, float32 with a 1x GT."""
    root = tmp_path_factory.mktemp("train-unet")
    out = {}
    for variant in ("uint16", "float32"):
        ingest(str(small_manifest), biosr_sources[variant], str(root / variant))
        out[variant] = str(root / variant / "biosr.zarr")
    return out


def _script():
    spec = importlib.util.spec_from_file_location("train_unet", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _torchrun(nproc: int, *args: str) -> str:
    """The script under torchrun, or with ``nproc=0`` as plain ``python`` (a world of one)."""
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd = [sys.executable, *(launcher if nproc else []), str(SCRIPT), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


def test_the_model_follows_the_gt_scale_of_the_store(stores):
    train_unet = _script()
    for variant, ratio, scale in (("uint16", 2, 65535.0), ("float32", 1, 1.0)):
        assert train_unet.store_facts(stores[variant]) == (ratio, scale)
        model = train_unet.TinyUNet(width=4, upscale=ratio)
        wf = torch.rand(2, 1, 16, 16)
        out = model(wf)
        assert out.shape == (2, 1, 16 * ratio, 16 * ratio)
        # the zero-initialised head starts from the (upsampled) input
        assert torch.allclose(out.mean(), wf.mean(), atol=0.01)


@pytest.mark.e2e
def test_train_on_two_ranks_then_resume_mid_epoch_on_one(stores, tmp_path):
    url, ckpt = stores["uint16"], tmp_path / "unet.pt"
    out = _torchrun(2, "--url", url, *TINY, "--workers", "0", "--steps", "3",
                    "--ckpt-every", "2", "--ckpt", str(ckpt), "--pin-memory")
    losses = [float(x) for x in re.findall(r"step \d+ loss (\S+)", out)]
    assert len(losses) == 3 and all(math.isfinite(v) and v > 0 for v in losses), out
    assert re.search(r"trained at [\d.]+ samples/s; the step alone consumes [\d.]+ samples/s "
                     r"per rank", out), out
    assert out.count("checkpoint ") == 2  # every 2 steps and at the end
    assert ckpt.exists() and not ckpt.with_name("unet.pt.tmp").exists()
    first = torch.load(ckpt, weights_only=True)
    # 3 steps x 2 ranks x 4 patches of the 40 in epoch 0
    assert (first["epoch"], first["step"], first["stream"]["count"]) == (0, 3, 24)

    # another number of ranks (1) and of loader workers (1): the 16 items left, 4 steps
    out = _torchrun(1, "--url", url, *TINY, "--workers", "1", "--resume", str(ckpt),
                    "--ckpt", str(ckpt))
    assert f"resumed {ckpt}: epoch 0, step 3, 24 of 40 items of the epoch already consumed" \
        in out, out
    assert [int(s) for s in re.findall(r"epoch 0 step (\d+) loss", out)] == [4, 5, 6, 7]
    assert "epoch 0 done at step 7" in out
    last = torch.load(ckpt, weights_only=True)
    assert (last["epoch"], last["step"], last["stream"]["count"]) == (0, 7, 40)
    assert last["optimizer"]["state"][0]["step"] == 7  # AdamW's own count went on too
    assert any(not torch.equal(last["model"][k], first["model"][k]) for k in first["model"])

    # a persistent loader worker over two epochs, pinned batches
    out = _torchrun(0, "--url", url, *TINY, "--workers", "1", "--feed-only", "--pin-memory",
                    "--epochs", "2")
    m = re.search(r"feed-only: the stream delivers ([\d.]+) samples/s \(0 of them padding "
                  r"repeats\) with 1 rank\(s\) x 1 worker\(s\), busy on ([\d.]+) CPU cores: "
                  r"([\d.]+) samples/s per loader core", out)
    # per loader core: samples per CPU second of the rank and its worker (Linux /proc)
    assert m and float(m[1]) > 0 and float(m[2]) > 0 and float(m[3]) > 0, out
    assert "epoch 1 done at step 20" in out  # 2 epochs of 10 batches of 4
