"""Where DataLoader workers come from: a forkserver with the stream's heavy modules
preloaded, started ahead of ``loader()``, and the parent's environment handed to them.

This module imports neither torch nor zarr, so the server can start *before* the training
process imports them: ``cloudmic.PatchStream``, ``cloudmic.Mix`` and ``cloudmic.shards``
start it on first use (the lazy ``__getattr__`` of the packages), and its imports (torch
alone ~1.3 s on these cores) run on the other core while the process imports its own and
reads the store's metadata. Started at the stream's opening instead, after the process's
own torch import, a cold first batch with 2 workers took 1.2-2.1 s; started on first use
0.3-0.4 s (bench/README.md).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

PRELOAD = ["torch", "numpy", "zarr", "zarrs", "obstore", "cloudmic.client.stream.mix",
           "cloudmic.client.shards"]

# tried: this process started (or declined) its server; wanted: a loader with workers
# exists, never stop it; unclaimed: started on first use, no stream has opened yet.
_ahead: dict[str, Any] = {"tried": False, "wanted": False, "thread": None, "unclaimed": False}


def forkserver() -> Any:
    """The multiprocessing context of a loader's workers: forkserver with the stream's
    modules preloaded. A worker starts in milliseconds instead of importing torch and zarr
    afresh (spawn); and, unlike a plain fork of the training process, it inherits no running
    store client or thread (STACK-NOTES)."""
    import multiprocessing as mp

    _ahead["wanted"] = True  # a loader with workers: never stop it now
    _start_in_background()
    return mp.get_context("forkserver")


def start_on_first_use() -> None:
    """A stream class was looked up: start the server now, before torch is imported here.
    The stream that opens next claims it; if that opening fails, it is stopped."""
    if prestart_workers():
        _ahead["unclaimed"] = True


def prestart_workers() -> bool:
    """Start the forkserver now, once per process, when torch is installed (and the
    platform has forkserver: not on Windows); True if this call started it."""
    if _ahead["tried"] or importlib.util.find_spec("torch") is None:
        return False
    _ahead["tried"] = True
    with contextlib.suppress(ValueError):  # no forkserver here: a loader with workers says so
        _ahead["thread"] = _start_in_background()
    return _ahead["thread"] is not None


@contextlib.contextmanager
def workers_ahead() -> Iterator[None]:
    """Around a stream's opening: the forkserver starts ahead (unless it started on first
    use); if the opening fails (no such dataset, a bad argument), the server started for it
    is stopped, and a later stream starts one again."""
    started = prestart_workers() or _ahead["unclaimed"]
    _ahead["unclaimed"] = False
    try:
        yield
    except BaseException:
        if started:
            stop_ahead()
            _ahead["tried"] = False
        raise


def no_workers_ahead() -> None:
    """This process opens streams without loader workers (the catalog reads their metadata,
    the demo iterates in-process): start no forkserver ahead for them (and stop one a
    stream started before)."""
    _ahead["tried"], _ahead["unclaimed"] = True, False
    stop_ahead()


def stop_ahead() -> None:
    """The stream is used without this process's loader workers: a pass runs in-process, or
    it is pickled for other workers (a DataLoader of the caller's own, with spawn). A
    forkserver started ahead for workers that never came is then stopped, so its imports
    take no CPU from that pass and its memory goes (a loader with workers made later
    starts it again)."""
    thread, _ahead["thread"] = _ahead["thread"], None
    if thread is None or _ahead["wanted"]:
        return
    import multiprocessing as mp
    import multiprocessing.forkserver as fs
    import multiprocessing.popen_forkserver as pf
    import signal

    thread.join()
    if any(isinstance(getattr(p, "_popen", None), pf.Popen) for p in mp.active_children()):
        return  # the server is one per process: live workers of the caller's came from it
    server = fs._forkserver  # no public API stops it; Python's own tests use _stop()
    with contextlib.suppress(Exception):
        if server._forkserver_pid is not None:
            os.kill(server._forkserver_pid, signal.SIGKILL)
            server._stop()


def with_parent_environment(init_fn: Callable[[int], Any] | None) -> Callable[[int], Any]:
    """A ``worker_init_fn`` that first gives the worker this process's environment as it is
    now, then runs ``init_fn``. A forkserver's children inherit the environment of when the
    server started, which may be before the script set ``AWS_*`` keys or ``RANK``; workers
    open their stores from it."""
    return functools.partial(_worker_start, dict(os.environ), init_fn)


def _worker_start(env: dict[str, str], init_fn: Callable[[int], Any] | None,
                  worker_id: int) -> None:
    for key in set(os.environ) - set(env):
        del os.environ[key]
    os.environ.update(env)
    if init_fn is not None:
        init_fn(worker_id)


def _start_in_background() -> threading.Thread:
    import multiprocessing as mp
    import multiprocessing.forkserver as fs

    mp.get_context("forkserver").set_forkserver_preload(PRELOAD)
    t = threading.Thread(target=fs.ensure_running, daemon=True, name="forkserver-start")
    t.start()
    return t
