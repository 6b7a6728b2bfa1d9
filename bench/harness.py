"""The benchmarks' one harness: a measurement in a fresh process (``run_isolated``), the
peak-memory monitor of a process tree (``RssMonitor``, ``VmHWM``), package versions and the
run record, result files and tables under ``bench/results/``, timing helpers, and a temp
workspace with the embedded S3 server. Every ``bench_*.py`` is a thin main over it."""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results"
MB = 1e6
CHILD = "--child"  # argv[1] of a script re-run by run_isolated


# --------------------------------------------------------------------------- log and time
def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Stopwatch:
    """Seconds since it was made (``perf_counter``)."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    @property
    def s(self) -> float:
        return time.perf_counter() - self.t0


@contextlib.contextmanager
def timed(into: dict[str, Any], key: str) -> Iterator[None]:
    """``into[key]`` = seconds the block took (not set if it raised)."""
    t0 = time.perf_counter()
    yield
    into[key] = time.perf_counter() - t0


def median(xs: Iterable[float]) -> float:
    xs = list(xs)
    return statistics.median(xs) if xs else float("nan")


SERVER_PID_ENV = "CLOUDMIC_BENCH_SERVER_PID"  # the S3 server's pid, for CpuLedger


def cpu_seconds(times: Any) -> float:
    return times.user + times.system


class CpuLedger:
    """Who used the CPU during a span: this process (all its threads), its descendants
    (DataLoader workers, a forkserver's children, a LocalCluster's processes: the live ones
    by pid, the reaped ones through ``RUSAGE_CHILDREN``), the S3 server (pid from
    ``SERVER_PID_ENV``) and the whole machine (``/proc/stat``: busy = all but idle and
    iowait). ``stop()`` gives CPU seconds per part, ``other_s`` (the machine minus the
    parts: an external dask cluster, the bench's parent, anything else running) and
    ``cores_busy`` (machine busy / (cores x wall)): near 1.0, the reader is CPU-bound and
    only fewer CPU seconds per item make it faster."""

    def __init__(self) -> None:
        import psutil

        self._psutil, self._me = psutil, psutil.Process()
        pid = os.environ.get(SERVER_PID_ENV)
        self._server = psutil.Process(int(pid)) if pid else None
        self._start = self._now()

    def _now(self) -> dict[str, Any]:
        kids: dict[int, float] = {}
        for kid in self._me.children(recursive=True):
            if self._server is not None and kid.pid == self._server.pid:
                continue  # a server this process started is the server, not a worker
            with contextlib.suppress(self._psutil.Error):
                kids[kid.pid] = cpu_seconds(kid.cpu_times())
        reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
        m = self._psutil.cpu_times()
        server = float("nan")
        if self._server is not None:
            with contextlib.suppress(self._psutil.Error):
                server = cpu_seconds(self._server.cpu_times())
        return {"main": cpu_seconds(self._me.cpu_times()), "kids": kids,
                "reaped": reaped.ru_utime + reaped.ru_stime, "server": server,
                "machine": sum(m) - m.idle - getattr(m, "iowait", 0.0)
                - getattr(m, "guest", 0.0) - getattr(m, "guest_nice", 0.0),
                "wall": time.perf_counter()}

    def stop(self) -> dict[str, float]:
        a, b = self._start, self._now()
        workers = sum(v - a["kids"].get(pid, 0.0) for pid, v in b["kids"].items())
        workers += b["reaped"] - a["reaped"]
        parts = {"main_s": b["main"] - a["main"], "workers_s": workers,
                 "server_s": b["server"] - a["server"]}
        machine, wall = b["machine"] - a["machine"], b["wall"] - a["wall"]
        known = sum(v for v in parts.values() if v == v)  # nan (no server pid) left out
        return {**{k: round(v, 3) for k, v in parts.items()},
                "other_s": round(max(0.0, machine - known), 3),
                "machine_s": round(machine, 3), "cores": os.cpu_count() or 1,
                "cores_busy": round(machine / ((os.cpu_count() or 1) * wall), 3)}


class EpochClock:
    """One timed pass over a loader: ``batch()`` after each batch is consumed, ``record()``
    after the last. The first-batch time includes consuming that batch, like every other;
    the record holds the pass's CPU ledger (``cpu``, see CpuLedger)."""

    def __init__(self, epoch: int) -> None:
        self.epoch, self.samples, self.nbytes = epoch, 0, 0
        self.first: float | None = None
        self.cpu = CpuLedger()
        self.t0 = time.perf_counter()

    def batch(self, samples: int, nbytes: int) -> None:
        self.samples += samples
        self.nbytes += nbytes
        if self.first is None:
            self.first = time.perf_counter() - self.t0

    def record(self, **extra: Any) -> dict[str, Any]:
        dt = time.perf_counter() - self.t0
        cpu = self.cpu.stop()
        n = self.samples
        return {"epoch": self.epoch, "samples": n, "seconds": dt, "first_batch_s": self.first,
                "cpu": cpu,
                "samples_per_s": n / dt, "decoded_bytes_per_sample": self.nbytes / max(n, 1),
                **extra, "rss_after_mb": round(rss_now_mb(), 1)}


# --------------------------------------------------------------------------- memory
def proc_status_mb(pid: int | str, field: str) -> float:
    """A ``/proc/PID/status`` memory field (kB) in MiB; 0.0 if the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def rss_now_mb() -> float:
    return proc_status_mb("self", "VmRSS")


def peak_rss_mb() -> float:
    """This process's own peak RSS (``VmHWM``): unlike ``ru_maxrss``, it does not carry the
    parent's high-water mark over the fork that precedes an exec."""
    return proc_status_mb("self", "VmHWM") or (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


class RssMonitor:
    """Peak memory of this process and its descendants (DataLoader workers, dask processes,
    ingest workers), polled every ``interval`` s from a thread until ``result()``.

    ``ru_maxrss`` cannot serve: after fork+exec a child inherits its parent's high-water
    mark. So it reads ``VmHWM`` (peak RSS of the current image) of this process and of every
    descendant it sees, and the largest sum of current RSS over the whole tree
    (``sum_peak_kb``: what the tree held at once).
    """

    def __init__(self, interval: float = 0.1, pid: int | None = None) -> None:
        import psutil

        # pid: watch that process's tree instead of this one's (a CLI run as a user runs it,
        # without this script or a server it started)
        self._me, self.interval = psutil.Process(pid), interval
        self._root = "self" if pid is None else pid
        self.worker_hwm: dict[int, float] = {}
        self.sum_peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while True:
            total = proc_status_mb(self._root, "VmRSS")
            try:
                kids = self._me.children(recursive=True)
            except Exception:  # noqa: BLE001 - a process vanished mid-listing
                kids = None
            if kids is not None:
                for kid in kids:
                    hwm = proc_status_mb(kid.pid, "VmHWM")
                    if hwm:
                        self.worker_hwm[kid.pid] = max(self.worker_hwm.get(kid.pid, 0.0), hwm)
                    total += proc_status_mb(kid.pid, "VmRSS")
                self.sum_peak_kb = max(self.sum_peak_kb, round(total * 1024))
            if self._stop.wait(self.interval):
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def result(self) -> dict[str, float]:
        """MiB: ``main`` (this process's VmHWM), ``worker_max`` (largest descendant
        VmHWM), ``workers_seen``, ``sum_max`` (largest tree sum, at least ``main``)."""
        self.stop()
        main = peak_rss_mb()
        return {"main": round(main, 1),
                "worker_max": round(max(self.worker_hwm.values(), default=0.0), 1),
                "workers_seen": len(self.worker_hwm),
                "sum_max": round(max(self.sum_peak_kb / 1024, main), 1)}

    def __enter__(self) -> RssMonitor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# --------------------------------------------------------------------------- isolation
def run_isolated(fn: Callable[..., dict[str, Any]], *args: Any,
                 env: dict[str, str] | None = None,
                 timeout: float | None = None) -> dict[str, Any]:
    """``fn(*args)`` in a fresh interpreter: the running benchmark script again, as
    ``python SCRIPT --child {fn, args}`` (``entry`` answers it). The child imports what the
    script imports (its spawned workers re-import the script too) and shares no imports,
    caches or allocator state with the parent or an earlier measurement.

    ``fn`` is a module-level function of JSON arguments returning a dict of JSON figures;
    ``peak_rss_mb`` (the child's own ``VmHWM``) is added unless ``fn`` set it. ``env``
    replaces the child's environment. Raises RuntimeError with the tail of the child's
    stderr if it fails."""
    script = Path(sys.modules["__main__"].__file__).resolve()
    payload = json.dumps({"fn": f"{fn.__module__}:{fn.__qualname__}", "args": list(args)})
    proc = subprocess.run([sys.executable, str(script), CHILD, payload], env=env,
                          capture_output=True, text=True, timeout=timeout, cwd=str(BENCH_DIR))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-12:])
        raise RuntimeError(f"{fn.__name__} exited {proc.returncode}: {tail[-1500:]}")
    return json.loads(lines[-1])


def _child(payload: str) -> int:
    req = json.loads(payload)
    mod, _, name = req["fn"].partition(":")
    module = sys.modules["__main__"] if mod == "__main__" else importlib.import_module(mod)
    out = functools.reduce(getattr, name.split("."), module)(*req["args"])
    out.setdefault("peak_rss_mb", peak_rss_mb())
    # the last stdout line that starts with "{": libraries may print before it
    print(json.dumps(out, default=str), flush=True)
    return 0


def entry(main: Callable[[], int | None]) -> None:
    """A benchmark script's ``__main__``: a ``run_isolated`` child, else ``main()``."""
    if sys.argv[1:2] == [CHILD]:
        sys.exit(_child(sys.argv[2]))
    sys.exit(main() or 0)


# --------------------------------------------------------------------------- workspace
class Workspace:
    """A fresh temp folder (absolute: children run elsewhere) and, once ``s3()`` is called,
    the embedded S3 server in it (``weed mini`` on free ports); at exit the server stops and
    the folder goes. ``setup`` (a dict) gets ``server_up_s`` and ``server_down_s``."""

    def __init__(self, prefix: str, parent: Path | str | None = None,
                 setup: dict[str, Any] | None = None, down_timeout: float = 15.0,
                 verbose: bool = False) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent)).resolve()
        self.setup = setup if setup is not None else {}
        self.down_timeout, self.verbose = down_timeout, verbose
        self.server: Any = None
        if verbose:
            log(f"temp folder {self.tmp}")

    def s3(self) -> Any:
        from cloudmic.storage import seaweed

        with timed(self.setup, "server_up_s"):
            self.server = seaweed.up(self.tmp / "store")
        return self.server

    @property
    def opts(self) -> dict[str, Any]:
        return self.server.storage_options() if self.server else {}

    def dest(self, tag: str) -> str:
        """An ingest destination: a bucket of the server if there is one, else a folder."""
        return f"s3://bench-{tag}" if self.server else str(self.tmp / f"root-{tag}")

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.server is not None:
            from cloudmic.storage import seaweed

            with timed(self.setup, "server_down_s"):
                seaweed.down(self.server.data_dir, timeout=self.down_timeout)
        shutil.rmtree(self.tmp, ignore_errors=True)
        if self.verbose:
            log(f"stopped the server and removed {self.tmp}")


# --------------------------------------------------------------------------- the record
def versions(packages: Iterable[str]) -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for p in packages:
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            out[p] = "missing"
    return out


def pip_check() -> list[str]:
    proc = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True,
                          text=True, timeout=120)
    return [ln for ln in proc.stdout.splitlines() if ln.strip()]


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine_line() -> str:
    return f"{os.cpu_count()} CPUs, Python {platform.python_version()}"


def run_record(benchmark: str, script: str, argv: list[str] | None,
               packages: Iterable[str], with_pip_check: bool = False) -> dict[str, Any]:
    """The head of a result file: what ran, when, on what (versions, load at the start)."""
    machine: dict[str, Any] = {"nproc": os.cpu_count(), "python": platform.python_version(),
                               "platform": platform.platform(),
                               "versions": versions(packages), "loadavg_start": loadavg()}
    if with_pip_check:
        machine["pip_check"] = pip_check()
    return {"benchmark": benchmark, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": "python " + " ".join([os.path.relpath(script, Path.cwd()),
                                             *(argv if argv is not None else sys.argv[1:])]),
            "machine": machine}


def close_record(record: dict[str, Any], started: Stopwatch) -> None:
    record["machine"]["loadavg_end"] = loadavg()
    record["total_runtime_s"] = started.s


def finish(record: dict[str, Any], started: Stopwatch, md_text: str,
           json_path: Path | str) -> None:
    """A bench's last step: close the record, print its report, write both files."""
    close_record(record, started)
    print(md_text)
    print(f"wrote {write_results(json_path, record, md_text)}")


# --------------------------------------------------------------------------- result files
def write_results(json_path: Path | str, record: dict[str, Any], md_text: str,
                  md_path: Path | str | None = None) -> Path:
    """``record`` as JSON and ``md_text`` beside it (``.md``, unless ``md_path``)."""
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(record, indent=1, default=str) + "\n")
    md = Path(md_path) if md_path else json_path.with_suffix(".md")
    md.write_text(md_text)
    return md


def text_table(table: list[list[str]]) -> str:
    """Aligned columns for the terminal: first column left, the others right."""
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
             for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def md_table(table: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(table[0]) + " |", "|" + "|".join("---" for _ in table[0]) + "|",
            *("| " + " | ".join(r) + " |" for r in table[1:])]


def setup_line(setup: dict[str, float]) -> str:
    """The setup phases' seconds, for a report: they are not the figure."""
    return "Setup (not the figure): " + ", ".join(f"{k} {v:.1f} s" for k, v in setup.items()) + "."


def mb_s(row: dict[str, Any]) -> float:
    """MB/s of a row with ``bytes`` and ``seconds``."""
    return row["bytes"] / row["seconds"] / MB


def measured(rows: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The rows of a table, setup rows left out."""
    return ((name, r) for name, r in rows.items() if not name.startswith("setup"))
