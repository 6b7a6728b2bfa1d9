"""Loader workers start fast: the forkserver is started when a stream class is first looked
up (before this process imports torch) or when a stream opens, ahead of ``loader()``;
stopped again if the process's first pass runs in-process; its workers take the parent's
environment of when the loader was made; and the first batch waits for one block, not for
the whole read-ahead."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from concurrent.futures import Future

import numpy as np
import pytest

from cloudmic.client.stream import pool
from cloudmic.ingest import ingest


@pytest.fixture(scope="module")
def url(biosr_sources, small_manifest, tmp_path_factory):
    root = tmp_path_factory.mktemp("root-start")
    ingest(str(small_manifest), biosr_sources["uint16"], str(root))
    return f"{root}/biosr.zarr"


# in a fresh process: is the forkserver started ahead up?
SERVER_UP = textwrap.dedent('''
    import os, sys, json
    import multiprocessing.forkserver as fs
    import cloudmic
    from cloudmic.client.stream import workers as w

    def server():
        t = w._ahead["thread"]
        if t is not None:
            t.join()
        pid = fs._forkserver._forkserver_pid
        return pid is not None and os.waitpid(pid, os.WNOHANG)[0] == 0
''')

PROBE = SERVER_UP + textwrap.dedent('''

    out = {}
    s = cloudmic.PatchStream(sys.argv[1], "train", ["wf", "gt"], {"y": 16, "x": 16})
    out["after_open"] = server()
    if sys.argv[2] == "pass":
        next(iter(s))  # an in-process pass: the server started ahead is not needed
    else:
        import pickle  # what a DataLoader of the caller's own does for spawned workers
        pickle.loads(pickle.dumps(s))
    out["after_use"] = server()
    again = cloudmic.PatchStream(sys.argv[1], "train", ["wf"], {"y": 16, "x": 16})
    out["second_stream"] = server()  # the process iterates in-process: none ahead again
    keys = [k for b in again.loader(8, num_workers=2) for k in b["__key__"]]
    out["workers_epoch"] = len(keys) == len(set(keys)) == 40
    print(json.dumps(out))
''')


@pytest.mark.parametrize("use", ["pass", "pickle"])
def test_forkserver_starts_with_the_stream_and_stops_when_not_used(url, use):
    """Started when the stream opens; stopped by an in-process pass, or by the stream being
    pickled for workers that are not its loader's; a loader with workers still works."""
    pytest.importorskip("torch")
    r = subprocess.run([sys.executable, "-c", PROBE, url, use], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got == {"after_open": True, "after_use": False, "second_stream": False,
                   "workers_epoch": True}


def test_the_first_block_is_read_alone():
    """The first draw needs one block: the other reads start once it is in, so they do not
    share the cores with it (then up to ``buffer_blocks + prefetch`` are in flight)."""
    submitted: list[int] = []
    in_flight_when_waited: list[int] = []

    class Read(Future):
        def result(self, timeout=None):
            in_flight_when_waited.append(len(submitted))
            return super().result(timeout)

    def submit(k: int) -> Future:
        submitted.append(k)
        f = Read()
        f.set_result(None if k % 2 else _cut(k))
        return f

    it = pool.draws(submit, 10, [4] * 10, buffer_blocks=2, prefetch=1, rng=None)
    next(it)
    assert in_flight_when_waited[0] == 1  # block 0 was read alone
    assert submitted == [0, 1, 2, 3]  # then the read-ahead: 3 in flight
    rest = list(it)
    assert submitted == list(range(10)) and len(rest) == 5 * 4 - 1


def _cut(k: int) -> pool.Cut:
    n = 4
    return pool.Cut("g", {"a": np.full((n, 2), k)}, np.arange(n) + 4 * k, np.zeros(n, bool),
                    np.arange(n), np.zeros((n, 1), np.int64), ("x",), [str(k)] * n, {})


def test_a_pickled_stream_keeps_its_rank(url, monkeypatch):
    """Workers read their rank's share even when they cannot see the rank themselves (a
    forkserver started before RANK was set; no process group in a worker): the copy
    pickled for them carries it. With one rank nothing is pinned."""
    import pickle

    import cloudmic

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    s = cloudmic.PatchStream(url, "train", ["wf"], {"y": 16, "x": 16})
    copy = pickle.dumps(s)
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert pickle.loads(copy)._world() == (1, 2)
    assert s._world() == (0, 1) and s.rank is None  # the stream itself is not changed
    alone = pickle.loads(pickle.dumps(s))
    assert alone.rank is None and alone.world_size is None


def test_a_server_with_live_workers_is_not_stopped(monkeypatch):
    """The forkserver is one per process: if workers of the caller's own forkserver loader
    are alive, the server started ahead is theirs too and stays."""
    import multiprocessing as mp
    import multiprocessing.popen_forkserver as pf
    import threading

    from cloudmic.client.stream import workers as w

    class Child:
        _popen = object.__new__(pf.Popen)

    killed: list[int] = []
    monkeypatch.setattr(mp, "active_children", lambda: [Child()])
    monkeypatch.setattr("os.kill", lambda pid, sig: killed.append(pid))
    t = threading.Thread(target=lambda: None)
    t.start()
    monkeypatch.setitem(w._ahead, "thread", t)
    monkeypatch.setitem(w._ahead, "wanted", False)
    import multiprocessing.forkserver as fs

    monkeypatch.setattr(fs._forkserver, "_forkserver_pid", 12345)  # a server to stop
    monkeypatch.setattr(fs._forkserver, "_stop", lambda: None)
    w.stop_ahead()
    assert killed == [] and w._ahead["thread"] is None


FAILED_OPEN = SERVER_UP + textwrap.dedent('''

    out = {}
    for make in (lambda u: cloudmic.PatchStream(u, "train", ["wf"], {"y": 16, "x": 16}),
                 lambda u: cloudmic.shards(u, "train")):
        try:
            make(sys.argv[1].replace("biosr.zarr", "nothing.zarr"))
        except Exception as exc:
            out.setdefault("errors", []).append(type(exc).__name__)
        out.setdefault("after_failure", []).append(server())
    make(sys.argv[1])
    out["after_open"] = server()  # a stream that opens starts it again
    print(json.dumps(out))
''')


def test_a_stream_that_fails_to_open_leaves_no_server(url):
    """A stream whose dataset cannot be opened stops the forkserver it started for its
    workers, and a later stream that opens starts one again."""
    pytest.importorskip("torch")
    r = subprocess.run([sys.executable, "-c", FAILED_OPEN, url], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got == {"errors": ["StoreNotFoundError", "StoreNotFoundError"],
                   "after_failure": [False, False], "after_open": True}


# a script file, not -c: its workers import the worker_init_fn from it (forkserver main_path)
LATE_ENV = SERVER_UP + textwrap.dedent('''

    def need_env(worker_id):
        if os.environ.get("CLOUDMIC_LATE") != "set after the server started":
            raise RuntimeError("the worker lacks a variable the parent set")
        if "CLOUDMIC_GONE" in os.environ:
            raise RuntimeError("the worker kept a variable the parent removed")


    def main():
        out = {}
        os.environ["CLOUDMIC_GONE"] = "1"
        from cloudmic.client.stream import workers
        workers.start_on_first_use()
        out["torch_when_started"] = "torch" in sys.modules
        cloudmic.PatchStream  # the lookup imports torch here, beside the server's imports
        out["up_before_any_open"] = server()
        del os.environ["CLOUDMIC_GONE"]
        os.environ["CLOUDMIC_LATE"] = "set after the server started"
        s = cloudmic.PatchStream(sys.argv[1], "train", ["wf"], {"y": 16, "x": 16})
        loader = s.loader(8, num_workers=2, worker_init_fn=need_env)
        out["keys"] = len({k for b in loader for k in b["__key__"]})
        print(json.dumps(out))


    if __name__ == "__main__":
        main()
''')


def test_server_starts_on_first_lookup_and_workers_get_the_parents_environment(url, tmp_path):
    """Looking up ``cloudmic.PatchStream`` starts the workers' server before this process
    imports torch (their imports overlap); variables the script sets or removes after that
    still reach the workers (their stores read credentials from the environment)."""
    pytest.importorskip("torch")
    script = tmp_path / "late_env.py"
    script.write_text(LATE_ENV)
    r = subprocess.run([sys.executable, str(script), url], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got == {"torch_when_started": False, "up_before_any_open": True, "keys": 40}


NOT_STARTED = textwrap.dedent('''
    import json, sys
    import cloudmic
    from cloudmic.client.stream import pool, workers  # submodules: no lookup of a stream
    cloudmic.open, cloudmic.render, cloudmic.__version__
    print(json.dumps({"thread": workers._ahead["thread"] is not None,
                      "torch": "torch" in sys.modules}))
''')


def test_importing_cloudmic_or_its_other_names_starts_no_server():
    """Only a stream class starts the workers' server: ``import cloudmic`` (the CLI, a dask
    worker unpickling a block read) and the notebook names neither start it nor load torch."""
    r = subprocess.run([sys.executable, "-c", NOT_STARTED], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {"thread": False, "torch": False}


# a training script that ends with its loader (persistent workers) still alive
ENDS_WITH_LOADER = textwrap.dedent('''
    import sys
    import cloudmic

    if __name__ == "__main__":
        s = cloudmic.PatchStream(sys.argv[1], "train", ["wf", "gt"], {"y": 16, "x": 16})
        loader = s.loader(8, num_workers=2, persistent_workers=True)
        for epoch in range(2):
            n = sum(len(b["wf"]) for b in loader)
        print(n)
''')


def test_a_script_ending_with_live_workers_warns_of_no_leaked_semaphores(
        biosr_sources, small_manifest, tmp_path):
    """Torch terminates persistent workers at exit; a semaphore made in a worker is then
    never unlinked and Python warns at shutdown (numcodecs' Blosc made one on first use,
    decoding a shard cut by the array's edge: 40 samples in shards of 16 here)."""
    import yaml

    raw = yaml.safe_load(small_manifest.read_text())
    raw["storage"]["shard"]["sample"] = 16
    manifest = tmp_path / "biosr.yaml"
    manifest.write_text(yaml.safe_dump(raw))
    ingest(str(manifest), biosr_sources["uint16"], str(tmp_path / "root"))
    script = tmp_path / "train.py"
    script.write_text(ENDS_WITH_LOADER)
    r = subprocess.run([sys.executable, str(script), f"{tmp_path}/root/biosr.zarr"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == ["40"]
    assert "leaked" not in r.stderr, r.stderr[-2000:]


def test_blosc_gets_a_thread_lock_once_and_still_decodes():
    code = textwrap.dedent('''
        import threading, numpy as np
        from numcodecs import Blosc, blosc
        from cloudmic.client.stream.reader import blosc_thread_lock
        blosc_thread_lock()
        assert type(blosc.get_mutex()) is type(threading.Lock())
        x = np.arange(5000, dtype="f4")
        codec = Blosc(cname="zstd", clevel=3, shuffle=Blosc.BITSHUFFLE)
        assert np.frombuffer(codec.decode(codec.encode(x)), "f4").tolist() == x.tolist()
        print("ok")
    ''')
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "ok", r.stderr[-2000:]
    # a lock already made (here, or by an ingest in this process) is left as it is
    from numcodecs import blosc

    from cloudmic.client.stream.reader import blosc_thread_lock

    before = blosc.get_mutex()
    blosc_thread_lock()
    assert blosc.get_mutex() is before
