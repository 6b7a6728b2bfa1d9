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

from cloudmic.manifest import available, load_manifest
from cloudmic.storage import root_layout as rl


def demo_datasets() -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """dataset -> (synth sizes, PatchStream arguments): what the demo writes and streams, from
    the ``example`` section of each shipped manifest that has demo sizes."""
    out = {}
    for name in available():
        example = load_manifest(name).example
        if example is not None and example.demo is not None:
            out[name] = (example.demo_sizes(), example.stream.kwargs())
    return out


DEMO_DATASETS = demo_datasets()


def _stream(url: str, args: dict[str, Any], batches: int, batch_size: int) -> dict[str, Any]:
    import cloudmic
    from cloudmic.client.stream.workers import no_workers_ahead

    no_workers_ahead()
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
        url = f"{root}/{rl.zarr_name(name)}"
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
