"""Train a tiny U-Net on BioSR pairs (WF -> GT) streamed from an object store, on N ranks.

What `cloudmic demo` publishes is enough (its BioSR GT is 2x the WF: the model then
upsamples 2x at the end; a 1x GT store trains a same-size model). Credentials come from
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_ENDPOINT_URL, else from the running
embedded store (`cloudmic store up`), as everywhere in cloudmic.

    cloudmic demo                                   # publishes s3://cloudmic-demo/biosr.zarr
    torchrun --standalone --nproc_per_node=2 examples/train_unet.py \
        --url s3://cloudmic-demo/biosr.zarr --epochs 1 --steps 200 --ckpt unet.pt
    # continue mid-epoch, here on one rank with 3 loader workers (no sample skipped/repeated)
    torchrun --standalone --nproc_per_node=1 examples/train_unet.py \
        --url s3://cloudmic-demo/biosr.zarr --epochs 2 --workers 3 --resume unet.pt
    # how fast the stream alone feeds the ranks: compare with "the step alone consumes"
    torchrun --standalone --nproc_per_node=2 examples/train_unet.py --feed-only --epochs 1

gloo on CPU, nccl (one GPU per rank) when CUDA is there. A training run ends by printing
the samples/s it trained at and the samples/s one rank's step would consume if data were
instant; `--feed-only` prints the samples/s the stream delivers without the model, in all
and per loader core (a rank's DataLoader worker, or the rank itself with `--workers 0`).
One GPU's step is kept fed by (step alone per rank) / (per loader core) loader cores.

Every rank gets the same number of batches (the stream pads short shares by repeating
items, flagged in `batch["pad"]`), so the loop needs no end-of-epoch coordination: padding
repeats are trained on, as with DistributedSampler, and never counted as consumed.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import cloudmic

log = logging.getLogger("train_unet")


def block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(inplace=True))


class TinyUNet(nn.Module):
    """Two poolings deep; a pixel-shuffle head gives an ``upscale``-times larger output."""

    def __init__(self, width: int = 32, upscale: int = 1) -> None:
        super().__init__()
        w, self.upscale = width, upscale
        self.enc1, self.enc2, self.mid = block(1, w), block(w, 2 * w), block(2 * w, 4 * w)
        self.up2, self.dec2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2), block(4 * w, 2 * w)
        self.up1, self.dec1 = nn.ConvTranspose2d(2 * w, w, 2, stride=2), block(2 * w, w)
        self.head = nn.Sequential(nn.Conv2d(w, upscale**2, 1), nn.PixelShuffle(upscale))
        # zero-initialised residual head: training starts from the (upsampled) input itself
        nn.init.zeros_(self.head[0].weight)
        nn.init.zeros_(self.head[0].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        m = self.mid(F.max_pool2d(e2, 2))
        d1 = self.dec1(torch.cat([self.up1(self.dec2(torch.cat([self.up2(m), e2], 1))), e1], 1))
        base = F.interpolate(x, scale_factor=self.upscale, mode="bilinear") if (
            self.upscale > 1) else x
        return base + self.head(d1)


def store_facts(url: str) -> tuple[int, float]:
    """(GT/WF size ratio, intensity scale) from the store's metadata, no pixels read.

    Normalisation divides both images by one fixed scale: the dtype's maximum (65535 for
    uint16, 1 for the float32 variant, already in [0, 1]). Per-patch percentiles (CARE's
    default) stretch every patch on its own, so a dim background patch becomes amplified
    noise and the absolute intensity relation between WF and GT is lost; a running mean would
    differ per rank and have to be all-reduced and checkpointed. A fixed scale is the same on
    every rank, after every resume and at inference, and costs nothing on the data path.
    """
    ds = cloudmic.open(url)["train"].ds
    ratio = ds["gt"].shape[-1] / ds["wf"].shape[-1]
    if ratio not in (1, 2):
        raise SystemExit(f"{url}: GT is {ratio}x the WF size; this example handles 1x and 2x")
    dtype = np.dtype(ds["wf"].dtype)
    return int(ratio), float(np.iinfo(dtype).max) if dtype.kind in "ui" else 1.0


def save(path: Path, state: dict) -> None:
    """Write then rename: a crash mid-write leaves the previous checkpoint intact."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def main(args: argparse.Namespace, device: torch.device) -> None:
    def total(*values: float, op=dist.ReduceOp.SUM) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t, op=op)
        return t.tolist()

    ratio, scale = store_facts(args.url)
    stream = cloudmic.PatchStream(args.url, "train", ["wf", "gt"],
                                  {"y": args.patch, "x": args.patch}, seed=args.seed)
    # Batches are assembled in the stream and arrive as tensors. Persistent workers: each
    # epoch would otherwise start them again and reopen the store (seconds per epoch); their
    # copies of the stream move on to the next epoch by themselves. Pinned (page-locked) host
    # memory lets .to(device, non_blocking=True) overlap the copy with compute.
    pin = device.type == "cuda" if args.pin_memory is None else args.pin_memory
    loader = stream.loader(args.batch_size, num_workers=args.workers,
                           persistent_workers=args.workers > 0, pin_memory=pin)
    torch.manual_seed(args.seed)  # DDP broadcasts rank 0's weights anyway
    model = TinyUNet(args.width, ratio).to(device)
    ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    epoch0, step = 0, 0
    if args.resume:
        ckpt = torch.load(args.resume, map_location=device, weights_only=True)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        stream.load_state_dict(ckpt["stream"])  # any number of ranks and workers now
        epoch0, step = ckpt["epoch"], ckpt["step"]
        log.info("resumed %s: epoch %d, step %d, %d of %d items of the epoch already consumed",
                 args.resume, epoch0, step, ckpt["stream"]["count"], len(stream))
    log.info("%d rank(s) x %d worker(s) on %s; %d items per epoch, GT %dx WF, scale 1/%g",
             dist.get_world_size(), args.workers, device, len(stream), ratio, scale)

    def checkpoint(epoch: int) -> None:
        state = stream.state_dict()  # a collective: gathered over the ranks
        if dist.get_rank() == 0:
            save(args.ckpt, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                             "stream": state, "epoch": epoch, "step": step})
            log.info("checkpoint %s at epoch %d step %d (%d items consumed)", args.ckpt,
                     epoch, step, state["count"])

    meter = Meter()
    t_log, logged = time.perf_counter(), 0.0
    loss_sum, loss_n, last_ckpt, epoch = 0.0, 0, -1, epoch0
    for e in range(epoch0, args.epochs):
        if args.steps and step >= args.steps:
            break
        epoch = e
        stream.set_epoch(epoch)
        t0 = time.perf_counter()
        for batch in loader:  # the same number of batches on every rank: DDP never waits
            t1 = time.perf_counter()
            wf = batch["wf"].to(device, non_blocking=True).unsqueeze(1).float() / scale
            gt = batch["gt"].to(device, non_blocking=True).unsqueeze(1).float() / scale
            if not args.feed_only:
                loss = F.mse_loss(ddp(wf), gt)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum, loss_n = loss_sum + loss.detach(), loss_n + 1
            step += 1
            meter.add(len(wf), int(batch["pad"].sum()), t1 - t0, time.perf_counter() - t1)
            if step % args.log_every == 0:
                now = time.perf_counter()
                n, lsum, ln = total(meter.seen - logged, float(loss_sum), loss_n)
                loss_text = "" if args.feed_only else f" loss {lsum / max(ln, 1):.4g}"
                log.info("epoch %d step %d%s | %.1f samples/s (all ranks)", epoch, step,
                         loss_text, n / (now - t_log))
                t_log, logged, loss_sum, loss_n = now, meter.seen, 0.0, 0
            if not args.feed_only and step % args.ckpt_every == 0:
                checkpoint(epoch)
                last_ckpt = step
            if args.steps and step >= args.steps:
                break
            t0 = time.perf_counter()
        else:
            log.info("epoch %d done at step %d", epoch, step)
    if not args.feed_only and last_ckpt != step:
        checkpoint(epoch)

    # samples the loaders delivered (padding repeats included: they were read and trained
    # on); the slowest rank sets the pace of all (DDP waits for it at every step)
    n, pads, cpu = total(meter.samples, meter.pads, meter.cpu())
    wall, busy = total(meter.wait + meter.busy, meter.busy, op=dist.ReduceOp.MAX)
    ranks = dist.get_world_size()
    rate = n / max(wall, 1e-9)
    if args.feed_only:  # the ranks only load: their CPU time (with workers') is the loader's
        log.info("feed-only: the stream delivers %.1f samples/s (%d of them padding repeats) "
                 "with %d rank(s) x %d worker(s), busy on %.2f CPU cores: %.1f samples/s per "
                 "loader core", rate, pads, ranks, args.workers, cpu / max(wall, 1e-9),
                 n / max(cpu, 1e-9))
    else:
        log.info("done at epoch %d step %d: trained at %.1f samples/s; the step alone consumes "
                 "%.1f samples/s per rank (waited for data %.0f%% of the time)", epoch, step,
                 rate, n / ranks / max(busy, 1e-9), 100 * (1 - busy / max(wall, 1e-9)))


class Meter:
    """Samples delivered (and padding repeats among them), seconds waiting for data and
    seconds stepping, from the second step on: the first pays for starting workers, opening
    the store and DDP's first all-reduce."""

    def __init__(self) -> None:
        self.steps, self.seen = 0, 0  # seen: all samples, for the log lines
        self.samples = self.pads = 0
        self.wait = self.busy = self.cpu0 = 0.0

    def add(self, samples: int, pads: int, wait: float, busy: float) -> None:
        self.steps, self.seen = self.steps + 1, self.seen + samples
        if self.steps > 1:
            self.samples, self.pads = self.samples + samples, self.pads + pads
            self.wait, self.busy = self.wait + wait, self.busy + busy
        else:
            self.cpu0 = tree_cpu_seconds()

    def cpu(self) -> float:
        """CPU seconds this rank and its loader workers used since the first step."""
        return tree_cpu_seconds() - self.cpu0 if self.steps > 1 else float("nan")


def tree_cpu_seconds() -> float:
    """CPU seconds used so far by this process and its descendants (the loader workers are
    children of its forkserver child), from Linux ``/proc``; NaN elsewhere. Unlike a wall
    clock rate it says what loading costs, however many other jobs share the machine."""
    parent, ticks = {}, {}
    if not Path("/proc/self/stat").exists():
        return float("nan")
    for p in Path("/proc").glob("[0-9]*"):
        try:  # after "(comm)": state ppid ... utime (12th) stime (13th), all threads
            f = (p / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        parent[int(p.name)], ticks[int(p.name)] = int(f[1]), int(f[11]) + int(f[12])
    mine = {os.getpid()}
    while more := {pid for pid, pp in parent.items() if pp in mine} - mine:
        mine |= more
    return sum(ticks[pid] for pid in mine) / os.sysconf("SC_CLK_TCK")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="s3://cloudmic-demo/biosr.zarr", help="a BioSR store")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--steps", type=int, default=0, help="stop after this many steps (0: none)")
    p.add_argument("--batch-size", type=int, default=16, help="per rank")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers per rank")
    p.add_argument("--patch", type=int, default=64, help="WF patch size, a multiple of 4")
    p.add_argument("--width", type=int, default=32, help="channels of the first U-Net level")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=20, help="steps")
    p.add_argument("--ckpt", type=Path, default=Path("unet.pt"))
    p.add_argument("--ckpt-every", type=int, default=200, help="steps")
    p.add_argument("--resume", type=Path, help="a checkpoint to continue from")
    p.add_argument("--feed-only", action="store_true", help="stream and batch, no model")
    p.add_argument("--pin-memory", action=argparse.BooleanOptionalAction,
                   help="DataLoader pin_memory (default: on with CUDA)")
    args = p.parse_args()
    if args.patch % 4:
        p.error(f"--patch {args.patch}: the U-Net pools twice, use a multiple of 4")
    return args


if __name__ == "__main__":  # the guard also keeps spawned loader workers from re-running this
    args = parse_args()
    cuda = torch.cuda.is_available()
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(f"cuda:{local}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    if "RANK" in os.environ:  # started by torchrun
        dist.init_process_group("nccl" if cuda else "gloo")
    else:  # plain `python train_unet.py`: a world of one
        dist.init_process_group("nccl" if cuda else "gloo", store=dist.HashStore(), rank=0,
                                world_size=1)
    rank = dist.get_rank()  # rank 0 reports; the others only warn
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s rank{rank} %(message)s", datefmt="%H:%M:%S")
    try:
        main(args, device)
    finally:
        dist.destroy_process_group()
