"""Run by ``torchrun`` from test_distribution.py: each rank streams its share of one epoch
through a DataLoader with spawned workers and writes the keys it received; with
``--stop-after N`` every rank stops after N batches and rank 0 saves the gathered state;
with ``--resume STATE`` the run continues that epoch."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch.distributed as dist

import cloudmic


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("out", type=Path)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--stop-after", type=int)
    p.add_argument("--resume", type=Path)
    args = p.parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    stream = cloudmic.PatchStream(args.url, "train", ["wf"], {"y": 16, "x": 16}, seed=7,
                                  patches_per_sample=3)
    if args.resume:
        stream.load_state_dict(json.loads(args.resume.read_text()))
    keys: list[str] = []
    for n, batch in enumerate(stream.loader(batch_size=5, num_workers=args.workers), 1):
        keys.extend(batch["__key__"])
        if args.stop_after and n == args.stop_after:
            break
    state = stream.state_dict()  # gathered over the ranks: every rank holds the same
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"keys-{rank}.json").write_text(json.dumps(keys))
    if rank == 0:
        (args.out / "state.json").write_text(json.dumps(state))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
