"""The ``cloudmic`` command line. It only wires library functions together: every
behaviour lives in the package, where the tests reach it too."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cloudmic import __version__
from cloudmic.errors import CloudmicError, one_line
from cloudmic.humanize import human_bytes

log = logging.getLogger("cloudmic")

EPILOG = """\
examples:
  cloudmic demo                                   # everything, on embedded defaults
  cloudmic store up                               # start the embedded S3 server
  cloudmic synth biosr --out /tmp/biosr --train 512
  cloudmic synth dl-smlm --out /tmp/dl-smlm --cells 4
  cloudmic synth sted-fm --out /tmp/sted-fm --crops 1000 --variant uint16
  cloudmic synth platelet-em --out /tmp/pe --slices 50 --size 800   # the published shapes
  cloudmic synth deepcad --out /tmp/deepcad --recordings 2 --frames 300
  cloudmic ingest biosr --source /tmp/biosr --dest s3://cloudmic
  cloudmic ls s3://cloudmic
  cloudmic info s3://cloudmic/biosr.zarr
  cloudmic verify s3://cloudmic/biosr.zarr
  cloudmic catalog s3://cloudmic --html ./catalog   # static HTML page of the root

S3 credentials follow AWS conventions (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_ENDPOINT_URL); when they are unset, the running embedded store's are used.
"""


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


# ---- store ----
def cmd_store(args: argparse.Namespace) -> int:
    from cloudmic.storage import seaweed

    data_dir = Path(args.data_dir).expanduser() if args.data_dir else None
    if args.action == "up":
        info = seaweed.up(data_dir, port=args.port, public_read=args.public_read or ())
        if args.json:
            _print_json({"endpoint": info.endpoint, "pid": info.pid, "data_dir": info.data_dir})
            return 0
        print(f"embedded S3 store running at {info.endpoint} (pid {info.pid}, data in "
              f"{info.data_dir})\nto use it from other tools:")
        for bucket in info.public_read:
            print(f"  public, for browser viewers (CORS, Range): {info.endpoint}/{bucket}/")
        for k, v in info.env().items():
            print(f"  export {k}={v}")
        return 0
    if args.action == "down":
        stopped = seaweed.down(data_dir)
        print("embedded S3 store stopped" if stopped else "no embedded S3 store was running")
        return 0
    info = seaweed.status(data_dir)
    if args.json:
        _print_json({"running": info is not None,
                     **({"endpoint": info.endpoint, "pid": info.pid} if info else {})})
    else:
        print(f"running at {info.endpoint} (pid {info.pid}, data in {info.data_dir})"
              if info else "not running (start it with: cloudmic store up)")
    return 0 if info else 3


# ---- synth ----
SYNTH_OPTIONS = ("train", "validate", "test", "cells", "frames", "size", "structures",
                 "crops", "unlabelled", "variant", "slices", "recordings")


def cmd_synth(args: argparse.Namespace) -> int:
    import inspect

    from tqdm import tqdm

    from cloudmic.synth import get_generator

    gen = get_generator(args.dataset)
    accepted = inspect.signature(gen).parameters
    given = {k: getattr(args, k) for k in SYNTH_OPTIONS if getattr(args, k) is not None}
    wrong = sorted(set(given) - set(accepted))
    if wrong:
        takes = sorted(set(SYNTH_OPTIONS) & set(accepted))
        raise CloudmicError(f"synth {args.dataset} does not take --{', --'.join(wrong)}; "
                            f"it takes --{', --'.join(takes)}")
    with tqdm(unit="file", desc=f"synth {args.dataset}", disable=args.quiet) as bar:
        summary = gen(Path(args.out), **given, seed=args.seed, progress=bar.update)
    if args.json:
        _print_json(summary)
    else:
        print(f"wrote {summary['files']} files ({human_bytes(summary['bytes'])}) under "
              f"{summary['root']}")
    return 0


# ---- ingest ----
def cmd_ingest_dry_run(args: argparse.Namespace) -> int:
    from cloudmic.ingest.dry_run import plan_ingest

    plan = plan_ingest(args.dataset, None if args.fetch else args.source, cache_dir=args.cache)
    if args.json:
        _print_json(plan.as_dict())
    else:
        print(plan.describe(args.dest))
    return 0


def _start_cluster(args: argparse.Namespace,
                   on_cluster: Callable[[str, str | None], None]) -> Any:
    """The ingest's dask cluster (None with --in-process), started before the ingest's own
    imports (zarr, the adapters: ~0.6 s), which then overlap its processes' start;
    ingest() closes it. An unknown dataset or destination is told before it starts."""
    from cloudmic.ingest.execute import Cluster
    from cloudmic.manifest import load_manifest
    from cloudmic.storage.location import Location

    load_manifest(args.dataset)
    Location.parse(args.dest)
    if args.in_process and not args.scheduler:
        return None
    return Cluster(args.scheduler, args.workers, args.threads, on_cluster)


def cmd_ingest(args: argparse.Namespace) -> int:
    if args.dry_run:
        return cmd_ingest_dry_run(args)
    from tqdm import tqdm

    fetch_bar = tqdm(unit="B", unit_scale=True, desc=f"fetch {args.dataset}",
                     disable=args.quiet or not (args.fetch or "://" in str(args.source)))

    def fetched(done: int, total: int | None) -> None:
        if total != fetch_bar.total:
            fetch_bar.reset(total)
        fetch_bar.n = done
        fetch_bar.refresh()

    bars: list[Any] = []  # the unit bar starts once the sources are in place
    written = [0]

    def on_plan(n: int) -> None:
        fetch_bar.close()
        bars.append(tqdm(total=n, unit="unit", desc=f"ingest {args.dataset}",
                         disable=args.quiet))

    def progress(units: int, nbytes: int) -> None:
        written[0] += nbytes
        bars[0].update(units)
        bars[0].set_postfix_str(f"{human_bytes(written[0])} written")

    def on_cluster(address: str, dashboard: str | None) -> None:
        # called from the cluster's thread, often before the plan (and its bar) exists;
        # stderr, beside the bars: stdout may be --json
        if not args.quiet:
            tqdm.write(f"dask scheduler {address}; dashboard {dashboard or '(none)'}",
                       file=sys.stderr)

    dask = _start_cluster(args, on_cluster)
    try:
        from cloudmic.ingest import ingest

        report = ingest(args.dataset, None if args.fetch else args.source, args.dest,
                        workers=args.workers, threads=args.threads,
                        cluster=dask or False, scheduler=args.scheduler,
                        progress=progress, on_cluster=on_cluster, on_plan=on_plan,
                        cache_dir=args.cache, on_fetch=fetched, strict=args.strict)
    finally:
        if dask is not None:
            dask.close()  # already closed by ingest(), unless its import failed
        fetch_bar.close()
        for b in bars:
            b.close()
    if args.json:
        _print_json(report.as_dict())
        return 0
    print(f"published {report.dataset} to {report.dest}: "
          + ", ".join(f"{g} {n}" for g, n in report.groups.items())
          + f" samples, {report.records} records in {report.units} units\n"
          f"  source {human_bytes(report.source_bytes)} in {report.source_files} files; "
          f"zarr {human_bytes(report.zarr_bytes)} (compression {report.compression_ratio:.2f}x); "
          f"webdataset {human_bytes(report.wds_bytes)}; {report.seconds:.1f} s "
          f"({human_bytes(report.source_bytes / report.seconds)}/s)\n"
          f"  version {report.version}; plain xarray opens {report.url}")
    for w in report.warnings:
        print(f"warn  {w}")
    return 0


# ---- ls / info / verify ----
def cmd_ls(args: argparse.Namespace) -> int:
    from cloudmic.catalog.text import ls_text
    from cloudmic.client.describe import list_root

    listing = list_root(args.root)
    if args.json:
        _print_json(listing)
    else:
        print(ls_text(listing))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from cloudmic.catalog.text import info_text
    from cloudmic.client.describe import info

    d = info(args.url, version=args.version)
    if args.json:
        _print_json(d)
    else:
        print(info_text(d))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from cloudmic.ingest.verify import verify_dataset
    from cloudmic.storage.versions import resolve

    ds = resolve(args.url, args.version)
    report = verify_dataset(ds.base, ds.name, records=args.records, strict=args.strict)
    if args.json:
        _print_json(report.as_dict())
    else:
        for c in report.checks:
            print(f"ok    {c}")
        for w in report.warnings:
            print(f"warn  {w}")
        for p in report.problems:
            print(f"FAIL  {p}")
    return 0 if report.ok else 1


def cmd_gc(args: argparse.Namespace) -> int:
    from cloudmic.ingest.gc import collect

    report = collect(args.root, keep=args.keep, grace=_duration(args.grace),
                     dry_run=args.dry_run)
    if args.json:
        _print_json(report.as_dict())
        return 0
    verb = "would remove" if args.dry_run else "removed"
    for url in report.removed:
        print(f"{verb} {url}")
    for name, kept in report.kept.items():
        print(f"{name}: keeps {len(kept)} version(s): {', '.join(kept)}")
    if not report.removed:
        print(f"nothing to remove under {report.root}")
    return 0


def _duration(text: str):
    """``90s``, ``30m``, ``24h``, ``7d`` or plain seconds -> a timedelta."""
    from datetime import timedelta

    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text and text[-1] in units:
            return timedelta(seconds=float(text[:-1]) * units[text[-1]])
        return timedelta(seconds=float(text))
    except ValueError:
        raise CloudmicError(f"--grace {text!r}: give a duration like 90s, 30m, 24h or 7d") from None


def cmd_catalog(args: argparse.Namespace) -> int:
    from cloudmic.catalog.html import catalog_facts, write_catalog

    facts = catalog_facts(args.root)
    index = write_catalog(facts, Path(args.html).expanduser()) if args.html else None
    if args.json:
        _print_json({**facts, "html": str(index) if index else None})
        return 0
    for name, d in facts["datasets"].items():
        figures = (d.get("previews") or {}).get("figures", [])
        print(f"{name:<14}{d.get('title') or ''}\n{'':<14}{d.get('license')}; source "
              f"{human_bytes(d.get('source_bytes') or 0)}, stored {human_bytes(d['stored_bytes'])} "
              f"({d['compression_ratio']}x); {len(d['splits'])} split(s); "
              f"{sum(len(f['panels']) for f in figures)} preview(s)")
        for p in d.get("problems", []):
            print(f"{'':<14}note: {p}")
    if index:
        print(f"wrote {index} ({len(facts['datasets'])} datasets); open it in a browser or "
              "copy the folder next to the bucket")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from cloudmic.demo import run_demo

    run_demo(workdir=Path(args.workdir).expanduser(), bucket=args.bucket,
             quiet=args.quiet, as_json=args.json)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cloudmic", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Streaming, cloud-native data layer for microscopy deep learning: repack "
                    "published datasets into Zarr v3 + WebDataset on S3, read them back as "
                    "xarray or as aligned training patches.")
    p.add_argument("--version", action="version", version=f"cloudmic {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Callable[[argparse.Namespace], int], help_: str,
            json_: bool = True) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        sp.set_defaults(fn=fn)
        if json_:
            sp.add_argument("--json", action="store_true", help="machine-readable output")
        sp.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
        return sp

    d = add("demo", cmd_demo, "the main job on embedded defaults: start the S3 store, synthesise "
            "small copies of the datasets, ingest, open with xarray, stream patches, print "
            "figures. Safe to run twice.")
    d.add_argument("--workdir", default="~/.cloudmic/demo",
                   help="where synthetic sources go (default: %(default)s)")
    d.add_argument("--bucket", default="cloudmic-demo",
                   help="bucket of the embedded store to publish to (default: %(default)s)")

    s = add("store", cmd_store, "run the embedded S3 server (SeaweedFS) on 127.0.0.1")
    s.add_argument("action", choices=["up", "down", "status"])
    s.add_argument("--data-dir", help="where the server keeps its data and state "
                   "(default: $CLOUDMIC_STORE_DIR or ~/.cloudmic/store)")
    s.add_argument("--port", type=int, help="S3 port (default: a free one)")
    s.add_argument("--public-read", action="append", metavar="BUCKET",
                   help="let anyone read BUCKET without keys, with the CORS and Range headers "
                   "browser viewers need (repeatable; e.g. --public-read cloudmic-demo)")

    sy = add("synth", cmd_synth, "write a faithful synthetic copy of a dataset's published "
             "layout (names, dtypes, shapes) at a chosen size")
    sy.add_argument("dataset", help="dataset name: biosr, dl-smlm, sted-fm, platelet-em, deepcad")
    sy.add_argument("--out", required=True, help="folder to write the published tree into")
    g = sy.add_argument_group("biosr")
    g.add_argument("--train", type=int, help="training pairs (default: 16)")
    g.add_argument("--validate", type=int, help="validation pairs (default: 4)")
    g.add_argument("--test", type=int, help="test targets, each with 9 levels (default: 3)")
    g = sy.add_argument_group("dl-smlm")
    g.add_argument("--cells", type=int, help="cells per structure (default: 2)")
    g.add_argument("--frames", type=int, help="raw frames per cell (default: 100)")
    g.add_argument("--size", type=int, help="widefield pixels per side (default: 256)")
    g.add_argument("--structures", nargs="+", help="structures to write (default: all six)")
    g = sy.add_argument_group("sted-fm")
    g.add_argument("--crops", type=int, help="labelled crops (default: 48)")
    g.add_argument("--unlabelled", type=int, help="crops without metadata (default: 4)")
    g = sy.add_argument_group("platelet-em and deepcad (full size: --slices 50 --size 800; "
                              "--frames 1000 --size 490)")
    g.add_argument("--slices", type=int, help="platelet-em: z slices of the 50-volume (8); "
                   "--size sets y and x (128)")
    g.add_argument("--recordings", type=int, help="deepcad: recordings of the seed table (2); "
                   "--frames and --size set each movie (64, 128)")
    sy.add_argument("--variant", help="biosr: uint16 (WF 128 + GT 256, DL-SR script) or "
                    "float32 (128/128, DeepTrack); sted-fm: uint8, uint16 or tiff")
    sy.add_argument("--seed", type=int, default=0)

    i = add("ingest", cmd_ingest, "repack a published dataset into ROOT/<name>.zarr and "
            "ROOT/<name>.wds, verify, publish, then update ROOT/catalog.json")
    i.add_argument("dataset", help="manifest name (biosr) or path to a manifest YAML")
    src = i.add_mutually_exclusive_group(required=True)
    src.add_argument("--source", help="the published layout: a local folder, or a zip (local, "
                     "http(s)://, s3://, az:// or gs://, fetched resumably and unpacked under "
                     "--cache); sted-fm: also a .tar or a bucket prefix of archives")
    src.add_argument("--fetch", action="store_true", help="download the manifest's "
                     "source.downloads (resumable, checksum-verified) and unpack them")
    i.add_argument("--cache", metavar="DIR", help="where downloaded sources go (default: "
                   "$CLOUDMIC_CACHE or ~/.cache/cloudmic, then sources/<dataset>)")
    i.add_argument("--dest", required=True, help="root URL: s3://bucket[/prefix], "
                   "az://container[/prefix], gs://bucket[/prefix] or a folder (credentials: "
                   "each cloud's environment variables, as in the README's table of stores)")
    i.add_argument("--workers", type=int, default=2,
                   help="dask worker processes of the local cluster (default: 2)")
    i.add_argument("--threads", type=int, default=1,
                   help="threads per worker process (default: 1)")
    i.add_argument("--scheduler", metavar="ADDRESS", default=os.environ.get("CLOUDMIC_SCHEDULER"),
                   help="run on an existing dask cluster, e.g. tcp://10.0.0.5:8786 (default: "
                   "$CLOUDMIC_SCHEDULER, else a local cluster)")
    i.add_argument("--in-process", action="store_true",
                   help="run units on --workers threads in this process, without dask")
    i.add_argument("--dry-run", action="store_true", help="scan the source, print the plan "
                   "(units, bytes in and out) and the time and memory the rates measured by "
                   "bench/ predict; write nothing, download nothing")
    i.add_argument("--strict", action="store_true",
                   help="refuse a partial copy: fewer (or more) samples than the publisher's "
                   "counts in the manifest is an error, and nothing is written (default: a "
                   "warning, for copies made smaller on purpose)")
    i.epilog = ("A stopped or killed ingest resumes: run the same command again and only "
                "the units not yet finished are redone (the ledger is in ROOT/.cloudmic/"
                "staging/; the units write into a new version that stays unlisted until it is "
                "published). Nothing is published before the whole dataset verified.")

    ls = add("ls", cmd_ls, "list the datasets published under a root URL, each with its "
             "current version, the URL plain xarray opens for it and the versions kept")
    ls.add_argument("root", help="s3://, az://, gs:// or https:// root, or a local folder")
    inf = add("info", cmd_info, "groups, variables, dtypes, shapes, stored bytes, compression")
    inf.add_argument("url", help="a dataset URL, ROOT/<name>.zarr (the current version) or "
                     "the URL of one version that `cloudmic ls` prints")
    inf.add_argument("--version", help="a version id listed by `cloudmic ls` (default: current)")
    c = add("catalog", cmd_catalog, "a static HTML catalog of everything published under a "
            "root: titles, citations, licenses, sizes, splits, variables with pixel sizes, "
            "the previews stored at ingest and code to open each dataset")
    c.add_argument("root", help="s3://, az://, gs:// or https:// root, or a local folder")
    c.add_argument("--html", metavar="DIR", help="write DIR/index.html and the preview PNGs "
                   "(self-contained: no scripts, no external resources)")
    c.epilog = ("examples:\n  cloudmic catalog s3://cloudmic --html ./catalog   # then open "
                "./catalog/index.html\n  cloudmic catalog s3://cloudmic --json             "
                "# the same facts, for scripts")
    v = add("verify", cmd_verify, "check shard checksums and that Zarr and WebDataset agree")
    v.add_argument("url", help="a dataset URL, ROOT/<name>.zarr (the current version) or "
                   "the URL of one version that `cloudmic ls` prints")
    v.add_argument("--version", help="a version id listed by `cloudmic ls` (default: current)")
    v.add_argument("--records", type=int, default=32, help="records to compare (default: 32)")
    v.add_argument("--strict", action="store_true",
                   help="a partial copy (fewer samples than the publisher's counts) fails "
                   "instead of warning")
    g = add("gc", cmd_gc, "remove old versions, abandoned staging and leftovers under a root; "
            "the current version and the --keep newest are never removed")
    g.add_argument("root", help="s3://, az://, gs:// or https:// root, or a local folder")
    g.add_argument("--keep", type=int, default=3,
                   help="complete versions to keep per dataset, the current one included "
                   "(default: 3)")
    g.add_argument("--grace", default="24h", help="remove a version only this long after it "
                   "stopped being current, and staging or an incomplete version only this "
                   "long after its last write: runs still reading it finish first (default: "
                   "24h; e.g. 0, 30m, 7d)")
    g.add_argument("--dry-run", action="store_true", help="list what would go, remove nothing")
    g.epilog = ("examples:\n  cloudmic gc s3://cloudmic --dry-run\n"
                "  cloudmic gc ./store --keep 1 --grace 0   # only the current versions stay")
    return p


def _error_targets(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """(read, write): what the command reads and writes, named by an error that names no
    file itself (a full disk's write error carries no file name)."""
    def first(*names: str) -> str | None:
        return next((str(v) for n in names if (v := getattr(args, n, None))), None)

    return first("url", "root", "source"), first("dest", "out", "html", "workdir", "data_dir")


def _outside_error(args: argparse.Namespace, exc: Exception) -> int | None:
    """Exit 2 with one line for an error from outside (OS, memory, object store); None for
    anything else, which keeps its traceback: that is a bug to report."""
    read, write = _error_targets(args)
    line = one_line(exc, read=read, write=write)
    if line is None:
        return None
    log.debug("the traceback behind this error:", exc_info=exc)  # shown with -vv
    print(f"cloudmic {args.command}: error: {line}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.fn(args)
    except (CloudmicError, ValueError) as exc:  # a bare KeyError is a bug: its traceback shows
        print(f"cloudmic {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `cloudmic ls ROOT | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
        return 0
    except Exception as exc:  # OSError, MemoryError, object-store errors: one line
        code = _outside_error(args, exc)
        if code is None:
            raise
        return code


def run() -> None:
    """The ``cloudmic`` command: :func:`main`, then exit without the interpreter's last full
    garbage collection of what the command left (``gc.freeze``: the exit's collection skips
    those objects; atexit handlers and flushes run as usual, only objects in reference
    cycles are left to the process's end). That collection took 0.4-0.6 s after every
    ingest, a fixed cost of each run (issue 16). (Tests call :func:`main` and keep their
    collector.)"""
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    run()
