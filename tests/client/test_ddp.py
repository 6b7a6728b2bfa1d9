"""DDP never hangs: a real DDP loop (gloo, a gradient all-reduce at every step) under
``torchrun``, 2 ranks x 2 loader workers, over PatchStream, Mix and shards, on a split of
37 samples (one block, fewer blocks than consumers: the case that hung) and one of 1,000.
Every rank gets the same number of batches, the non-padding keys cover the split exactly
once, and an epoch stopped half-way resumes on 3 ranks x 2 workers with nothing skipped or
repeated. The loop itself is ``ddp_loop.py``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

import cloudmic
from cloudmic.ingest import ingest
from cloudmic.manifest import manifests_dir
from cloudmic.synth.biosr import synth_biosr

pytest.importorskip("torch")
pytestmark = pytest.mark.e2e

SCRIPT = Path(__file__).with_name("ddp_loop.py")
TILE = 32  # source images: 32x32 crops of synthetic BioSR, so ingest takes seconds
VALIDATE = 3  # Mix's second source: fewer samples than consumers
TIMEOUT = 150  # s per torchrun; a rank left waiting fails after the loop's 60 s anyway
STOP = {37: 2, 1000: 30}  # batches of 8 per rank before the stop: about half the epoch


def _tiles(synth: Path, variant: str) -> list[np.ndarray]:
    """16 TILE x TILE crops of every synthetic 128x128 image."""
    return [img[y:y + TILE, x:x + TILE]
            for p in sorted((synth / f"training_{variant}").iterdir())
            for img in [tifffile.imread(p)]
            for y in range(0, 128, TILE) for x in range(0, 128, TILE)]


def _source(synth: Path, out: Path, train: int) -> Path:
    """A BioSR tree of ``train`` + VALIDATE small pairs (float32, GT on the WF grid)."""
    for v in ("wf", "gt"):
        crops = _tiles(synth, v)
        for split, first, count in (("training", 0, train), ("validate", train, VALIDATE)):
            d = out / "BioSR" / "Microtubules" / f"{split}_{v}"
            d.mkdir(parents=True)
            for i in range(count):
                tifffile.imwrite(d / f"{i + 1:08d}.tif", crops[(first + i) % len(crops)])
    return out


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[int, str]:
    """Two published roots (local folders): a train split of 37 samples, one of 1,000.
    Blocks and shards hold 256 samples: 37 samples are one block for 4..6 consumers."""
    tmp = tmp_path_factory.mktemp("ddp")
    synth_biosr(tmp / "synth", train=-(-(1000 + VALIDATE) // 16), validate=0, test=0,
                variant="float32", seed=3)
    raw = yaml.safe_load((manifests_dir() / "biosr.yaml").read_text())
    del raw["splits"]["test"]
    del raw["provenance"]["splits.test.level_photons"]  # a note on a field that is gone
    raw["storage"]["shard"]["sample"] = raw["webdataset"]["samples_per_shard"] = 256
    manifest = tmp / "biosr.yaml"
    manifest.write_text(yaml.safe_dump(raw))
    out = {}
    for n in (37, 1000):
        src = _source(tmp / "synth" / "BioSR" / "Microtubules", tmp / f"src-{n}", n)
        ingest(str(manifest), src, str(tmp / f"root-{n}"))
        out[n] = str(tmp / f"root-{n}" / "biosr.zarr")
    return out


def _everything(url: str, kind: str) -> list[str]:
    """The keys one epoch must deliver, from the store's sample names."""
    tree = cloudmic.open(url)
    stems = {g: [str(s) for s in tree[g]["sample"].values] for g in ("train", "validate")}
    if kind == "shards":
        return sorted(stems["train"])
    groups = ("train", "validate") if kind == "mix" else ("train",)
    return sorted(f"{g}/{s}" for g in groups for s in stems[g])


def _torchrun(nproc: int, out: Path, urls: list[str], *args: str) -> list[list[list[dict]]]:
    """Run ddp_loop.py on ``nproc`` ranks over ``urls``; per URL, every rank's per-epoch
    records. A run that does not finish is killed with its ranks and workers, and fails
    with the counts so far."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", str(SCRIPT), str(out), *urls, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: torchrun, ranks, workers
        output, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish in {TIMEOUT} s; (epoch, batches, padding) so "
                    f"far: {_counts(out)}\n{output[-3000:]}")
    assert proc.returncode == 0, f"{_counts(out)}\n{output[-4000:]}"
    return [[json.loads((out / str(i) / f"rank-{r}.json").read_text()) for r in range(nproc)]
            for i in range(len(urls))]


def _counts(out: Path) -> dict[str, list]:
    """(epoch, batches, padding items) of every rank that wrote its records, per URL."""
    return {f"{p.parent.name}/{p.stem}": [(e["epoch"], e["batches"], e["pads"])
                                          for e in json.loads(p.read_text())]
            for p in sorted(out.glob("*/rank-*.json"))}


def _keys(records: list[dict]) -> list[str]:
    return sorted(k for rec in records for k in rec["keys"])


def _in_step(records: list[dict]) -> None:
    """Every rank the same number of batches and of items (padding included)."""
    assert len({(r["batches"], len(r["keys"]) + r["pads"]) for r in records}) == 1, [
        (r["batches"], len(r["keys"]), r["pads"]) for r in records]


@pytest.mark.parametrize("kind", ["patchstream", "mix", "shards"])
def test_ddp_epoch_then_stop_and_resume_on_three_ranks(stores, kind, tmp_path):
    """2 ranks x 2 workers: epoch 0 whole, epoch 1 stopped after STOP[n] batches; then
    3 ranks x 2 workers finish epoch 1 from the saved state. Each launch runs the 37- and
    the 1,000-sample store in turn."""
    sizes = sorted(stores)
    urls = [stores[n] for n in sizes]
    first = _torchrun(2, tmp_path / "first", urls, "--kind", kind, "--workers", "2",
                      "--epochs", "2", "--stop-after", *[str(STOP[n]) for n in sizes])
    states = [str(tmp_path / "first" / str(i) / "state.json") for i in range(len(urls))]
    resumed = _torchrun(3, tmp_path / "resumed", urls, "--kind", kind, "--workers", "2",
                        "--resume", *states)
    for n, url, ranks, again in zip(sizes, urls, first, resumed, strict=True):
        everything = _everything(url, kind)
        full, stopped, rest = [r[0] for r in ranks], [r[1] for r in ranks], [r[0] for r in again]
        _in_step(full)
        assert _keys(full) == everything, n
        assert [r["batches"] for r in stopped] == [STOP[n]] * 2
        _in_step(rest)
        assert _keys(stopped + rest) == everything, n


def test_ddp_drop_last_gives_equal_counts_without_padding(stores, tmp_path):
    """drop_last: 37 items over 4 consumers, 9 each; the one left over is dropped."""
    everything = set(_everything(stores[37], "patchstream"))
    [ranks] = _torchrun(2, tmp_path, [stores[37]], "--workers", "2", "--drop-last")
    ranks = [r[0] for r in ranks]
    _in_step(ranks)
    keys = _keys(ranks)
    assert sum(r["pads"] for r in ranks) == 0
    assert len(keys) == len(set(keys)) == 36 and set(keys) <= everything
