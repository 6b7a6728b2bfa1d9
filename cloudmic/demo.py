"""``cloudmic demo``: the whole path on embedded defaults, with figures.

Start the embedded S3 store, write small synthetic copies of the published layouts,
ingest them, open them with xarray, stream a few batches of patches, and report what
happened. Running it again reuses the store and republishes the same bytes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

# dataset -> (synth sizes, PatchStream arguments): what the demo writes and streams
DEMO_DATASETS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "biosr": ({"train": 512, "validate": 32, "test": 4, "variant": "uint16"},
              {"group": "train", "variables": ["wf", "gt"], "patch": {"y": 64, "x": 64}}),
    "dl-smlm": ({"cells": 1, "frames": 50, "size": 128},
                {"group": "*/cell*", "variables": ["wf", "sr"], "patch": {"y": 32, "x": 32},
                 "patches_per_sample": 48}),
    "sted-fm": ({"crops": 512, "unlabelled": 16, "variant": "uint8"},
                {"group": "crop", "variables": ["image"], "patch": {"y": 128, "x": 128}}),
    # level 0 of each volume (the NGFF image group's "0" child)
    "platelet-em": ({"slices": 16, "size": 256},
                    {"group": "*", "variables": {"image": "0/image",
                                                 "semantic": "labels/semantic/0/semantic"},
                     "patch": {"z": 4, "y": 64, "x": 64}, "patches_per_sample": 128}),
    # clips of the low-SNR movie with the synchronous high-SNR frames
    "deepcad": ({"recordings": 2, "frames": 128, "size": 128},
                {"group": "*", "variables": {"low": "low/0/low", "high": "high/0/high"},
                 "patch": {"t": 16, "y": 64, "x": 64}, "patches_per_sample": 128}),
}


def _stream(url: str, args: dict[str, Any], batches: int, batch_size: int) -> dict[str, Any]:
    import cloudmic

    stream = cloudmic.PatchStream(url, **args, seed=0)
    t0, n, nbytes = time.perf_counter(), 0, 0
    for item in stream:
        n += 1
        nbytes += sum(item[v].nbytes for v in args["variables"])
        if n >= batches * batch_size:
            break
    dt = time.perf_counter() - t0
    shapes = {v: list(item[v].shape) for v in args["variables"]}
    return {"patches": n, "batches": n // batch_size, "seconds": round(dt, 3),
            "patches_per_s": round(n / dt, 1), "MB_per_s": round(nbytes / dt / 1e6, 1),
            "patch_shapes": shapes}


def run_demo(workdir: Path, bucket: str = "cloudmic-demo", *, quiet: bool = False,
             as_json: bool = False, batches: int = 8, batch_size: int = 32) -> dict[str, Any]:
    import cloudmic
    from cloudmic.ingest import ingest
    from cloudmic.storage import seaweed
    from cloudmic.synth import get_generator

    say = (lambda *_: None) if (quiet or as_json) else print
    server = seaweed.up()
    say(f"[1/5] embedded S3 store at {server.endpoint} (data in {server.data_dir})")
    root = f"s3://{bucket}"
    figures: dict[str, Any] = {"store": server.endpoint, "root": root, "datasets": {}}
    for name, (sizes, stream_args) in DEMO_DATASETS.items():
        src = workdir / "sources" / name
        with tqdm(unit="file", desc=f"[2/5] synth {name}", disable=quiet or as_json) as bar:
            synth = get_generator(name)(src, **sizes, progress=bar.update)
        with tqdm(unit="unit", desc=f"[3/5] ingest {name}", disable=quiet or as_json) as bar:
            report = ingest(name, src, root, progress=lambda u, _b, bar=bar: bar.update(u),
                            on_plan=lambda n, bar=bar: setattr(bar, "total", n))
        url = f"{root}/{name}.zarr"
        tree = cloudmic.open(url)
        groups = [g for g in tree.subtree if g.ds.data_vars]
        say(f"[4/5] opened {url} with xarray: {len(groups)} group(s), e.g. {groups[0].path} "
            f"{dict(groups[0].ds.sizes)}")
        streamed = _stream(url, stream_args, batches, batch_size)
        say(f"[5/5] streamed {streamed['patches']} patches ({streamed['batches']} batches of "
            f"{batch_size}) at {streamed['patches_per_s']} patches/s, "
            f"{streamed['MB_per_s']} MB/s; shapes {streamed['patch_shapes']}")
        figures["datasets"][name] = {"synth": {k: synth[k] for k in ("files", "bytes")},
                                     "ingest": report.as_dict(), "stream": streamed}
        say(f"      {name}: {report.records} records, source {report.source_bytes / 1e6:.1f} MB"
            f" -> zarr {report.zarr_bytes / 1e6:.1f} MB ({report.compression_ratio:.2f}x), "
            f"webdataset {report.wds_bytes / 1e6:.1f} MB, ingest {report.seconds:.1f} s")
    say(f"done. Try: cloudmic ls {root}   |   cloudmic info {root}/biosr.zarr\n"
        "      (the store keeps running; stop it with: cloudmic store down)")
    if as_json:
        print(json.dumps(figures, indent=2, default=str))
    return figures
