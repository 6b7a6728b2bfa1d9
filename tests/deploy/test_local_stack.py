"""deploy/local_stack.py: a real store, a real scheduler and real worker processes.

Nothing is mocked: ``weed mini`` serves S3, ``dask scheduler`` and ``dask worker`` run as
separate processes (each in its own session), tasks on the workers write to the stack's
S3 with plain s3fs and the credentials they inherited, a worker is SIGKILLed the way a
node dies, and stopping the stack must leave no process behind.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import s3fs
from distributed import Client

from cloudmic.storage.process import running

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "local_stack.py"


def _load() -> ModuleType:
    name = "cloudmic_deploy_local_stack"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their module while the file executes
    spec.loader.exec_module(module)
    return module


local_stack = _load()


def _workers(client: Client) -> dict[str, dict]:
    return client.scheduler_info(n_workers=-1)["workers"]


def _worker_pids(client: Client) -> set[int]:
    """Pids of the worker processes (children of the nannies), asked from each worker."""
    return set(client.run(os.getpid).values())


@pytest.mark.e2e
@pytest.mark.timeout(180)
def test_stack_writes_to_s3_survives_a_killed_worker_and_stops_clean(tmp_path: Path) -> None:
    bucket = "cm-stack"
    with local_stack.LocalStack(tmp_path / "stack", workers=2, threads=1,
                                memory_limit="1GiB", timeout=60) as stack:
        assert stack.store is not None and stack.scheduler_address.startswith("tcp://127.0.0.1:")
        assert stack.dashboard and stack.dashboard.startswith("http://127.0.0.1:")
        env = stack.env()
        assert env["CLOUDMIC_SCHEDULER"] == stack.scheduler_address
        assert env["AWS_ENDPOINT_URL"] == stack.store.endpoint
        state = json.loads((stack.directory / "local-stack.json").read_text())
        assert state["scheduler"]["pid"] == stack.scheduler.pid
        assert stack.store.secret_key not in json.dumps(state)  # no secrets in the state file

        fs = s3fs.S3FileSystem(skip_instance_cache=True, **stack.store.storage_options())
        fs.mkdir(bucket)
        client = Client(stack.scheduler_address, set_as_default=False, timeout=30)
        try:
            workers = _workers(client)
            assert len(workers) == 2
            worker_pids = _worker_pids(client)
            assert len(worker_pids) == 2
            # the ingest workers' allocator (cloudmic.ingest.execute.MALLOC_ENV), not dask's
            from cloudmic.ingest.execute import MALLOC_ENV
            if not any(k in os.environ for k in MALLOC_ENV):
                seen = client.run(lambda: {k: os.environ.get(k) for k in MALLOC_ENV})
                assert list(seen.values()) == [MALLOC_ENV] * 2

            def put(i: int) -> tuple[int, str, str]:
                # runs on a worker: plain s3fs, configured only by the inherited AWS_* env
                import os

                import s3fs

                wfs = s3fs.S3FileSystem(skip_instance_cache=True)
                wfs.pipe(f"{bucket}/worker-{i}.txt", str(os.getpid()).encode())
                return os.getpid(), os.environ["AWS_ENDPOINT_URL"], os.environ["CLOUDMIC_SCHEDULER"]

            futures = [client.submit(put, i, workers=[addr], pure=False, allow_other_workers=False)
                       for i, addr in enumerate(sorted(workers))]
            results = client.gather(futures)
            assert {pid for pid, _, _ in results} == worker_pids  # one object from each worker
            assert {ep for _, ep, _ in results} == {stack.store.endpoint}
            assert {s for _, _, s in results} == {stack.scheduler_address}
            assert sorted(fs.ls(bucket, detail=False)) == [f"{bucket}/worker-0.txt",
                                                           f"{bucket}/worker-1.txt"]
            assert {int(fs.cat(f"{bucket}/worker-{i}.txt")) for i in range(2)} == worker_pids

            # a worker dies the hard way: nanny and worker process, SIGKILL
            before = _worker_pids(client)
            killed = stack.kill_worker(0)
            assert len(_workers(client)) == 1
            assert not local_stack.group_members(killed)
            assert not running(killed)
            survivors = _worker_pids(client)
            assert len(survivors) == 1 and survivors < before
            assert not [p for p in before - survivors if running(p)]  # its worker process too
            # the cluster still computes, and grows back
            assert client.submit(sum, [1, 2, 3], pure=False).result(timeout=30) == 6
            added = stack.add_worker()
            assert len(_workers(client)) == 2
            live = {stack.scheduler.pid, stack.store.pid, stack.workers[1].pid, added.pid}
            live |= _worker_pids(client)
            assert all(running(p) for p in live)
            everything = live | worker_pids | {killed}
        finally:
            client.close()
    # the context manager stopped workers, scheduler and store: nothing is left running
    left = sorted(p for p in everything if running(p))
    assert not left, f"processes left behind: {left}"
    assert not (stack.directory / "local-stack.json").exists()
    assert local_stack.status(stack.directory) is None


@pytest.mark.e2e
@pytest.mark.timeout(180)
def test_cli_up_status_down_from_separate_processes(tmp_path: Path) -> None:
    d = tmp_path / "cli-stack"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(SCRIPT), *args, "--dir", str(d)],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)

    up = run("up", "--workers", "1", "--threads", "1", "--memory-limit", "1GiB")
    try:
        assert up.returncode == 0, up.stderr
        assert "export CLOUDMIC_SCHEDULER=tcp://127.0.0.1:" in up.stdout
        assert "export AWS_ENDPOINT_URL=http://127.0.0.1:" in up.stdout
        st = run("status", "--json")
        assert st.returncode == 0, st.stderr
        info = json.loads(st.stdout)
        assert info["alive"] and info["scheduler"]["alive"] and info["store"]
        assert [w["alive"] for w in info["workers"]] == [True]
        with Client(info["scheduler_address"], set_as_default=False, timeout=30) as client:
            assert len(_workers(client)) == 1
            pids = _worker_pids(client)
        pids |= {info["scheduler"]["pid"], info["store"]["pid"], info["workers"][0]["pid"]}
        assert all(running(p) for p in pids)
        again = run("up", "--workers", "1")  # already running: reported, not doubled
        assert again.returncode == 0 and "already running" in again.stderr
    finally:
        down = run("down")
    assert down.returncode == 0, down.stderr
    assert not [p for p in pids if running(p)]
    assert run("status").returncode == 3


@pytest.mark.e2e
@pytest.mark.timeout(240)
def test_cloudmic_ingest_runs_on_the_stack(tmp_path: Path) -> None:
    """`cloudmic ingest --scheduler` with the stack's env: the work goes to its workers."""
    src = tmp_path / "biosr"
    synth = subprocess.run([sys.executable, "-m", "cloudmic.cli", "synth", "biosr", "--out",
                            str(src), "--train", "8", "--validate", "2", "--test", "1", "-q"],
                           capture_output=True, text=True, timeout=120)
    assert synth.returncode == 0, synth.stderr
    with local_stack.LocalStack(tmp_path / "stack", workers=2, memory_limit="1GiB") as stack:
        env = {**os.environ, **stack.env()}
        out = subprocess.run([sys.executable, "-m", "cloudmic.cli", "ingest", "biosr",
                              "--source", str(src), "--dest", "s3://cm-stack-ingest",
                              "--scheduler", stack.scheduler_address, "--json", "-q"],
                             capture_output=True, text=True, timeout=180, env=env)
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stdout)
        assert report["groups"] == {"train": 8, "validate": 2, "test": 1}
        log = Path(stack.scheduler.log).read_text()
        assert "Receive client connection" in log  # the ingest used this scheduler
        ls = subprocess.run([sys.executable, "-m", "cloudmic.cli", "ls", "s3://cm-stack-ingest",
                             "--json"], capture_output=True, text=True, timeout=60, env=env)
        assert ls.returncode == 0, ls.stderr
        assert list(json.loads(ls.stdout)["datasets"]) == ["biosr"]


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_ingest_survives_a_worker_killed_mid_run(tmp_path: Path, biosr_sources,
                                                 small_manifest, monkeypatch) -> None:
    """Separate scheduler and worker processes; one worker is SIGKILLed after the first unit
    finished: its units are rerun on the survivor and the store equals a clean run's."""
    from cloudmic.ingest import ingest
    from fixtures_biosr import published_bytes

    clean = tmp_path / "clean"
    ingest(str(small_manifest), biosr_sources["uint16"], str(clean))
    with local_stack.LocalStack(tmp_path / "stack", workers=2, memory_limit="1GiB") as stack:
        for k, v in stack.env().items():
            monkeypatch.setenv(k, v)
        killed: list[int] = []

        def progress(units: int, _bytes: int) -> None:
            if not killed:
                killed.append(stack.kill_worker(0))

        report = ingest(str(small_manifest), biosr_sources["uint16"], "s3://cm-kill",
                        scheduler=stack.scheduler_address, progress=progress)
        assert killed and report.units >= 4
        published = published_bytes("s3://cm-kill")
    assert published == published_bytes(str(clean))
