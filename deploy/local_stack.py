"""A local stack of real processes: the embedded S3 store, a dask scheduler, N dask workers.

What a small cluster looks like, on one machine, with nothing mocked::

    python deploy/local_stack.py up --dir /tmp/stack --workers 2 --threads 1
    eval "$(python deploy/local_stack.py env --dir /tmp/stack)"   # AWS_*, CLOUDMIC_SCHEDULER
    cloudmic ingest biosr --source /tmp/biosr --dest s3://cloudmic --scheduler "$CLOUDMIC_SCHEDULER"
    python deploy/local_stack.py status --dir /tmp/stack
    python deploy/local_stack.py down --dir /tmp/stack

or from Python (tests, notebooks)::

    with LocalStack(tmp_dir, workers=2) as stack:
        client = distributed.Client(stack.scheduler_address)
        stack.kill_worker(0)      # SIGKILL, as a crashed node would
        stack.add_worker()

Processes (each its own session, so a signal to the stack never reaches the caller, and
the caller's Ctrl-C never reaches the stack):

- the store: ``weed mini`` through :mod:`cloudmic.storage.seaweed`, data in ``DIR/store``;
- the scheduler: ``python -m distributed.cli.dask_scheduler`` on 127.0.0.1, free ports,
  connection details in ``DIR/scheduler.json``, log in ``DIR/scheduler.log``;
- worker ``i``: ``python -m distributed.cli.dask_worker --scheduler-file DIR/scheduler.json
  --nworkers 1`` (a nanny and its worker process), log in ``DIR/worker-<i>.log``, scratch
  in ``DIR/worker-<i>/``.

Every process is started with ``subprocess.Popen`` (fork + exec of a fresh interpreter,
never a ``multiprocessing`` fork of this one), so a caller that already runs threads
(a dask client, s3fs's event loop) cannot deadlock a child. Scheduler and workers get the
caller's environment plus the store's ``AWS_*`` (so tasks reach S3 with plain s3fs/boto)
and ``CLOUDMIC_SCHEDULER``. PIDs are kept in ``DIR/local-stack.json`` (no secrets in it:
the store keeps its credentials in its own owner-only state file), so ``status`` and
``down`` work from any process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cloudmic.errors import StoreError
from cloudmic.ingest.execute import MALLOC_ENV
from cloudmic.storage import process, seaweed
from cloudmic.storage.process import group_alive, group_members

STATE_FILE = "local-stack.json"
SCHEDULER_FILE = "scheduler.json"
STORE_DIR = "store"
HOST = "127.0.0.1"
SCHEDULER_ENV = "CLOUDMIC_SCHEDULER"
_STATE_VERSION = 1

__all__ = ["LocalStack", "Proc", "StackError", "down", "group_members", "status", "up"]


class StackError(RuntimeError):
    """The local stack could not be started, reached or stopped."""


@dataclass
class Proc:
    """One process of the stack: its role, pid (= its process group) and log file."""

    role: str  # "scheduler" or "worker"
    index: int
    pid: int
    log: str
    killed: bool = False  # taken down on purpose by kill_worker()


def _is_ours(pid: int, token: str) -> bool:
    """Whether group ``pid`` still belongs to the stack whose commands carry ``token``.

    The group leader's command line must name the stack's scheduler file; once the leader
    is gone, members still in the group are its children (the pid is not reusable).
    """
    argv = process.command_line(pid)
    if argv is None:
        return group_alive(pid)  # leader gone (or no procfs): its group, if any
    stat = process.proc_stat(pid)
    if stat is not None and stat[0] in ("Z", "X"):
        return group_alive(pid)
    return token.encode() in argv


def stop_group(pgid: int, timeout: float = 10.0) -> None:
    """SIGTERM process group ``pgid``, SIGKILL what is left after ``timeout`` seconds."""
    if not process.terminate(pgid, timeout):
        raise StackError(f"process group {pgid} survives SIGKILL: see `ps -g {pgid}`")


def _log_tail(path: Path) -> str:
    return process.log_tail(path, lines=20)


# --------------------------------------------------------------------------- the stack


class LocalStack:
    """Store + scheduler + workers as separate processes under one folder.

    Args:
        directory: folder for logs, the state file, the scheduler file, worker scratch
            space and the store's data (``DIR/store``); created if missing.
        workers: dask worker processes to start.
        threads: threads per worker.
        memory_limit: per worker (``--memory-limit``), e.g. ``"2GiB"``.
        public_read: buckets of the store anyone may read (browser viewers).
        store: start the embedded S3 store (False: use whatever ``AWS_*`` the caller has).
        timeout: seconds to wait for each part to come up.
    """

    def __init__(
        self,
        directory: Path | str,
        workers: int = 2,
        threads: int = 1,
        memory_limit: str = "2GiB",
        *,
        public_read: Sequence[str] = (),
        store: bool = True,
        timeout: float = 60.0,
    ) -> None:
        if workers < 0 or threads < 1:
            raise ValueError("workers must be >= 0 and threads >= 1")
        self.directory = Path(directory).expanduser().resolve()
        self.n_start = workers
        self.threads = threads
        self.memory_limit = memory_limit
        self.public_read = tuple(public_read)
        self.with_store = store
        self.timeout = timeout
        self.scheduler: Proc | None = None
        self.workers: list[Proc] = []
        self.scheduler_address: str | None = None
        self.dashboard: str | None = None
        self.store: seaweed.ServerInfo | None = None
        self._client: Any = None

    # ---- paths
    @property
    def scheduler_file(self) -> Path:
        return self.directory / SCHEDULER_FILE

    @property
    def state_file(self) -> Path:
        return self.directory / STATE_FILE

    @property
    def store_dir(self) -> Path:
        return self.directory / STORE_DIR

    # ---- context manager
    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        endpoint = self.store.endpoint if self.store else None
        return (f"LocalStack({str(self.directory)!r}, scheduler={self.scheduler_address!r}, "
                f"workers={len(self.live_workers())}, store={endpoint!r})")

    # ---- environment
    def env(self) -> dict[str, str]:
        """``AWS_*`` of the store (admin keys) and ``CLOUDMIC_SCHEDULER``."""
        out: dict[str, str] = {}
        if self.store is not None:
            out.update(self.store.env())
        if self.scheduler_address:
            out[SCHEDULER_ENV] = self.scheduler_address
        return out

    def _child_env(self) -> dict[str, str]:
        env = {**MALLOC_ENV, **os.environ}  # the ingest workers' allocator, unless set here
        env.update(self.env())
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    # ---- start
    def start(self) -> LocalStack:
        """Start store, scheduler and workers; wait until the scheduler has all workers."""
        self.directory.mkdir(parents=True, exist_ok=True)
        running = status(self.directory)
        if running is not None and running["alive"]:
            raise StackError(
                f"a local stack already runs in {self.directory} (scheduler "
                f"{running.get('scheduler_address')}): stop it first with "
                f"`python deploy/local_stack.py down --dir {self.directory}`")
        with contextlib.suppress(FileNotFoundError):
            self.scheduler_file.unlink()  # a stale one would point at a dead scheduler
        try:
            if self.with_store:
                self.store = seaweed.up(self.store_dir, public_read=self.public_read,
                                        timeout=self.timeout)
            self._start_scheduler()
            for _ in range(self.n_start):
                self._spawn_worker()
            self._save()
            self.wait_for_workers(self.n_start)
        except BaseException:
            self.stop()
            raise
        return self

    def _popen(self, role: str, index: int, argv: list[str]) -> tuple[Proc, process.Child]:
        log = self.directory / (f"{role}.log" if role == "scheduler" else f"{role}-{index}.log")
        child = process.spawn(
            argv, log, cwd=self.directory, env=self._child_env(), log_mode=0o666,
            header=f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(argv)}\n")
        return Proc(role, index, child.pid, str(log)), child

    def _start_scheduler(self) -> None:
        argv = [
            sys.executable, "-m", "distributed.cli.dask_scheduler",
            "--host", HOST, "--port", "0",
            "--dashboard-address", f"{HOST}:0",
            "--scheduler-file", str(self.scheduler_file),
        ]
        self.scheduler, child = self._popen("scheduler", 0, argv)
        self._save()
        log = Path(self.scheduler.log)

        def written() -> dict[str, Any] | None:
            with contextlib.suppress(OSError, ValueError):
                return json.loads(self.scheduler_file.read_text())
            return None

        info = process.wait_ready(
            child, written, self.timeout,
            exited=lambda code: StackError(
                f"the dask scheduler exited with code {code} while starting; "
                f"last lines of {log}:\n{_log_tail(log)}"),
            late=lambda: StackError(
                f"the dask scheduler wrote no {self.scheduler_file} within "
                f"{self.timeout:.0f} s; log:\n{_log_tail(log)}"))
        assert info is not None
        self.scheduler_address = info["address"]
        port = info.get("services", {}).get("dashboard")
        self.dashboard = f"http://{HOST}:{port}/status" if port else None

    def _spawn_worker(self) -> Proc:
        index = len(self.workers)
        scratch = self.directory / f"worker-{index}"
        scratch.mkdir(exist_ok=True)
        argv = [
            sys.executable, "-m", "distributed.cli.dask_worker",
            "--scheduler-file", str(self.scheduler_file),
            "--host", HOST,
            "--name", f"worker-{index}",
            "--nthreads", str(self.threads),
            "--nworkers", "1",
            "--memory-limit", str(self.memory_limit),
            "--local-directory", str(scratch),
            "--no-dashboard",
            "--death-timeout", "60",  # a worker whose scheduler is gone exits by itself
        ]
        proc, _ = self._popen("worker", index, argv)
        self.workers.append(proc)
        return proc

    # ---- scheduler view
    def client(self) -> Any:
        """A ``distributed.Client`` of this process onto the stack (kept, closed by stop)."""
        if self._client is None:
            from distributed import Client

            if not self.scheduler_address:
                raise StackError("the stack has no scheduler (not started?)")
            self._client = Client(self.scheduler_address, set_as_default=False,
                                  timeout=self.timeout)
        return self._client

    def scheduler_workers(self) -> dict[str, dict[str, Any]]:
        """The workers the scheduler knows now: address -> info (name, pid, nthreads...)."""
        return dict(self.client().scheduler_info(n_workers=-1)["workers"])

    def live_workers(self) -> list[Proc]:
        return [w for w in self.workers if not w.killed and group_members(w.pid)]

    def wait_for_workers(self, n: int, timeout: float | None = None) -> None:
        """Wait until the scheduler reports exactly ``n`` workers (more or fewer)."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        if n > 0:
            try:
                self.client().wait_for_workers(n, timeout=timeout)
            except TimeoutError as exc:
                raise StackError(self._worker_problem(n, timeout)) from exc
        while True:
            have = len(self.scheduler_workers())
            if have == n:
                return
            if time.monotonic() >= deadline:
                raise StackError(self._worker_problem(n, timeout))
            time.sleep(0.05)

    def _worker_problem(self, n: int, timeout: float) -> str:
        dead = [w for w in self.workers if not w.killed and not group_members(w.pid)]
        text = f"the scheduler does not report {n} workers within {timeout:.0f} s"
        for w in dead[:2]:
            text += f"\nworker {w.index} (pid {w.pid}) died; log {w.log}:\n{_log_tail(Path(w.log))}"
        return text

    # ---- faults and scaling
    def kill_worker(self, i: int, wait: bool = True) -> int:
        """SIGKILL worker ``i`` (its nanny and worker process) as a crashed node would die.

        With ``wait``, returns once the processes are gone and the scheduler has dropped
        the worker. Returns the pid (process group) that was killed.
        """
        proc = self.workers[i]
        if proc.killed:
            raise StackError(f"worker {i} was already killed")
        expected = len(self.scheduler_workers()) - 1 if wait else 0
        process.signal_group(proc.pid, signal.SIGKILL)
        proc.killed = True
        self._save()
        if wait:
            if not process.wait_gone(proc.pid, process.KILL_TIMEOUT):
                raise StackError(f"worker {i} (pid {proc.pid}) survives SIGKILL")
            self.wait_for_workers(max(expected, 0))
        return proc.pid

    def add_worker(self, wait: bool = True) -> Proc:
        """Start one more worker; with ``wait``, until the scheduler has registered it."""
        expected = len(self.scheduler_workers()) + 1
        proc = self._spawn_worker()
        self._save()
        if wait:
            self.wait_for_workers(expected)
        return proc

    # ---- stop
    def pids(self) -> list[int]:
        """Every process the stack started (group leaders) plus the store's server."""
        pids = [w.pid for w in self.workers]
        if self.scheduler is not None:
            pids.append(self.scheduler.pid)
        if self.store is not None:
            pids.append(self.store.pid)
        return pids

    def stop(self, timeout: float = 10.0) -> None:
        """Stop workers, then the scheduler (SIGTERM, SIGKILL after ``timeout``), then the store."""
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close(timeout=5)
            self._client = None
        _stop_procs(self.workers, self.scheduler, str(self.scheduler_file), timeout)
        if self.with_store:
            seaweed.down(self.store_dir)
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()
        with contextlib.suppress(FileNotFoundError):
            self.scheduler_file.unlink()

    # ---- state
    def _save(self) -> None:
        state = {
            "version": _STATE_VERSION,
            "directory": str(self.directory),
            "scheduler_address": self.scheduler_address,
            "dashboard": self.dashboard,
            "scheduler_file": str(self.scheduler_file),
            "threads": self.threads,
            "memory_limit": self.memory_limit,
            "store_dir": str(self.store_dir) if self.with_store else None,
            "store_endpoint": self.store.endpoint if self.store else None,
            "scheduler": asdict(self.scheduler) if self.scheduler else None,
            "workers": [asdict(w) for w in self.workers],
        }
        tmp = self.state_file.with_name(f".{STATE_FILE}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(tmp, self.state_file)

    @classmethod
    def attach(cls, directory: Path | str) -> LocalStack:
        """The stack recorded in ``directory`` (started by any process), to inspect or stop."""
        root = Path(directory).expanduser().resolve()
        state = _read_state(root)
        if state is None:
            raise StackError(f"no local stack recorded in {root} ({STATE_FILE} missing)")
        stack = cls(root, workers=0, threads=int(state.get("threads", 1)),
                    memory_limit=str(state.get("memory_limit", "2GiB")),
                    store=state.get("store_dir") is not None)
        stack.scheduler_address = state.get("scheduler_address")
        stack.dashboard = state.get("dashboard")
        stack.scheduler = Proc(**state["scheduler"]) if state.get("scheduler") else None
        stack.workers = [Proc(**w) for w in state.get("workers", [])]
        if stack.with_store:
            stack.store = seaweed.status(stack.store_dir)
        return stack


def _stop_procs(workers: Sequence[Proc], scheduler: Proc | None, token: str,
                timeout: float) -> None:
    """SIGTERM all worker groups at once, wait, SIGKILL the rest; then the scheduler."""
    groups = [w.pid for w in workers if _is_ours(w.pid, token)]
    for pgid in groups:
        process.signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for pgid in groups:
        if not process.wait_gone(pgid, max(0.0, deadline - time.monotonic())):
            stop_group(pgid, 0.0)
    if scheduler is not None and _is_ours(scheduler.pid, token):
        stop_group(scheduler.pid, timeout)


def _read_state(root: Path) -> dict[str, Any] | None:
    try:
        state = json.loads((root / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


# --------------------------------------------------------------------------- module API


def up(directory: Path | str, workers: int = 2, threads: int = 1,
       memory_limit: str = "2GiB", **kwargs: Any) -> LocalStack:
    """Start a stack in ``directory`` and leave it running (``down`` stops it)."""
    stack = LocalStack(directory, workers, threads, memory_limit, **kwargs).start()
    if stack._client is not None:  # the processes live on; this process's client does not
        stack._client.close()
        stack._client = None
    return stack


def down(directory: Path | str, timeout: float = 10.0) -> bool:
    """Stop the stack recorded in ``directory``; False if none was recorded."""
    root = Path(directory).expanduser().resolve()
    if _read_state(root) is None:
        stopped = seaweed.down(root / STORE_DIR) if (root / STORE_DIR).is_dir() else False
        return bool(stopped)
    LocalStack.attach(root).stop(timeout)
    return True


def status(directory: Path | str) -> dict[str, Any] | None:
    """What runs in ``directory`` (pids alive, scheduler, store); None if nothing is recorded."""
    root = Path(directory).expanduser().resolve()
    state = _read_state(root)
    if state is None:
        return None
    token = str(state.get("scheduler_file", root / SCHEDULER_FILE))
    sched = state.get("scheduler") or {}
    sched_alive = bool(sched) and _is_ours(int(sched["pid"]), token)
    workers = [
        {"index": w["index"], "pid": w["pid"], "log": w["log"], "killed": w.get("killed", False),
         "alive": _is_ours(int(w["pid"]), token)}
        for w in state.get("workers", [])
    ]
    store = seaweed.status(state["store_dir"]) if state.get("store_dir") else None
    return {
        "directory": str(root),
        "alive": sched_alive or any(w["alive"] for w in workers),
        "scheduler_address": state.get("scheduler_address"),
        "dashboard": state.get("dashboard"),
        "scheduler": {"pid": sched.get("pid"), "alive": sched_alive, "log": sched.get("log")},
        "workers": workers,
        "store": {"endpoint": store.endpoint, "pid": store.pid} if store else None,
    }


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="local_stack.py",
        description="A local stack of real processes: embedded S3 store (SeaweedFS), a dask "
                    "scheduler and N dask workers, all under one folder.")
    p.add_argument("action", choices=["up", "down", "status", "env"])
    p.add_argument("--dir", required=True, help="folder for logs, state, scratch and S3 data")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default: 2)")
    p.add_argument("--threads", type=int, default=1, help="threads per worker (default: 1)")
    p.add_argument("--memory-limit", default="2GiB", help="per worker (default: 2GiB)")
    p.add_argument("--public-read", action="append", default=[], metavar="BUCKET",
                   help="bucket anyone may read (browser viewers); repeatable")
    p.add_argument("--no-store", action="store_true",
                   help="no embedded store: workers use the caller's AWS_* settings")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--json", action="store_true", help="machine-readable status")
    args = p.parse_args(argv)

    if args.action == "up":
        current = status(args.dir)
        if current is not None and current["alive"]:
            print(f"already running in {current['directory']}: scheduler "
                  f"{current['scheduler_address']}", file=sys.stderr)
            return 0
        try:
            stack = up(args.dir, args.workers, args.threads, args.memory_limit,
                       public_read=args.public_read, store=not args.no_store,
                       timeout=args.timeout)
        except (StackError, StoreError) as exc:
            print(f"local_stack up: error: {exc}", file=sys.stderr)
            return 2
        print(f"scheduler {stack.scheduler_address} with {args.workers} workers "
              f"(dashboard {stack.dashboard}); logs in {stack.directory}")
        if stack.store is not None:
            print(f"S3 store {stack.store.endpoint} (data in {stack.store_dir})")
        print("to use it:")
        for k, v in stack.env().items():
            print(f"  export {k}={shlex.quote(v)}")
        return 0
    if args.action == "down":
        stopped = down(args.dir)
        print("local stack stopped" if stopped else "no local stack was recorded there")
        return 0
    if args.action == "env":
        try:
            stack = LocalStack.attach(args.dir)
        except StackError as exc:
            print(f"local_stack env: error: {exc}", file=sys.stderr)
            return 3
        for k, v in stack.env().items():
            print(f"export {k}={shlex.quote(v)}")
        return 0
    info = status(args.dir)
    if args.json:
        print(json.dumps(info, indent=2))
    elif info is None:
        print("not running (start it with: python deploy/local_stack.py up --dir DIR)")
    else:
        alive = sum(w["alive"] for w in info["workers"])
        print(f"scheduler {info['scheduler_address']} "
              f"({'running' if info['scheduler']['alive'] else 'stopped'}), {alive} worker "
              f"process group(s) alive, dashboard {info['dashboard']}")
        print(f"store {info['store']['endpoint'] if info['store'] else 'not running'}")
    return 0 if info is not None and info["alive"] else 3


if __name__ == "__main__":
    sys.exit(main())

