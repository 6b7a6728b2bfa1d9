"""Errors from outside (a full disk, a refused permission, no memory, an object store that
answers 500 or nothing) reach the user as one line naming the file or URL and the fix, with
exit code 2 and no traceback; a unit that hits one is not retried."""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cloudmic import cli
from cloudmic.errors import is_permanent, one_line
from cloudmic.ingest import execute, run


def error_lines(err: str) -> list[str]:
    """stderr without log records (``WARNING name: ...``)."""
    return [ln for ln in err.splitlines()
            if ln.strip() and not ln.startswith(("WARNING ", "INFO ", "DEBUG "))]


def one_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run the CLI in this process; it must exit 2 with exactly one line and no traceback."""
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert lines[0].startswith(f"cloudmic {argv[0]}: error: ")
    return lines[0]


# ---- the local disk during an ingest ------------------------------------------------------
@pytest.fixture
def ingest_argv(biosr_sources, small_manifest, tmp_path) -> list[str]:
    return ["ingest", str(small_manifest), "--source", str(biosr_sources["uint16"]),
            "--dest", str(tmp_path / "root"), "--in-process", "--workers", "1", "-q"]


@pytest.fixture
def failing_shards(monkeypatch) -> Iterator[tuple[Counter[str], list[BaseException]]]:
    """Make every shard write fail with the error put in the list (counted per unit)."""
    tries: Counter[str] = Counter()
    raise_: list[BaseException] = []

    def write_shard(records, loc, laps=None):
        tries[loc.url] += 1
        if not raise_:  # the real thing: the kernel's own ENOSPC, a write without a name
            with open("/dev/full", "wb") as f:
                f.write(b"x" * 4096)
        raise raise_[0]

    monkeypatch.setattr(run, "write_shard", write_shard)
    yield tries, raise_


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_disk_full_during_ingest_is_one_line_naming_the_destination(
        capsys, ingest_argv, failing_shards, tmp_path):
    # on main: a 119-line traceback (and on dask, the unit rewritten 3 times)
    tries, _ = failing_shards
    line = one_error(capsys, ingest_argv)
    assert str(tmp_path / "root") in line
    assert "no space left on device" in line and "free some space" in line
    assert tries and max(tries.values()) == 1


def test_permission_denied_names_the_file(capsys, ingest_argv, failing_shards, tmp_path):
    tries, raise_ = failing_shards
    path = str(tmp_path / "root" / "shard-000000.tar")
    raise_.append(PermissionError(errno.EACCES, "Permission denied", path))
    line = one_error(capsys, ingest_argv)
    assert path in line and "permission denied" in line and "ls -ld" in line
    assert max(tries.values()) == 1


def test_read_only_file_system_names_the_file(capsys, ingest_argv, failing_shards, tmp_path):
    _, raise_ = failing_shards
    path = str(tmp_path / "root" / "x.tar")
    raise_.append(OSError(errno.EROFS, "Read-only file system", path))
    line = one_error(capsys, ingest_argv)
    assert path in line and "read-only file system" in line and "writable" in line


def test_out_of_memory_is_one_line(capsys, ingest_argv, failing_shards, tmp_path):
    _, raise_ = failing_shards
    raise_.append(MemoryError())
    line = one_error(capsys, ingest_argv)
    assert "out of memory" in line and "--workers" in line and str(tmp_path / "root") in line


def test_a_bug_keeps_its_traceback(ingest_argv, failing_shards):
    _, raise_ = failing_shards
    raise_.append(ZeroDivisionError("a bug"))
    with pytest.raises(ZeroDivisionError):
        cli.main(ingest_argv)


# ---- dask: no retry of what a retry cannot fix --------------------------------------------
def _fill_dev_full(counter: str, unit: str) -> dict:
    with open(counter, "a") as f:
        f.write(unit + "\n")
    with open("/dev/full", "wb") as f:
        f.write(b"x" * 4096)
    return {}


def _flaky(counter: str, unit: str) -> dict:
    with open(counter, "a") as f:
        f.write(unit + "\n")
    raise ConnectionResetError(errno.ECONNRESET, "reset by the store")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_dask_tries_a_unit_once_on_a_full_disk_but_retries_a_broken_connection(tmp_path):
    from distributed import Client, LocalCluster

    counter = str(tmp_path / "tries")
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        with pytest.raises(OSError) as err:
            list(execute.run_dask(client, _fill_dev_full, (counter,), [("u0",)], ["full-u0"]))
        assert err.value.errno == errno.ENOSPC
        assert Path(counter).read_text().split() == ["u0"]  # on main: u0 three times
        Path(counter).unlink()
        with pytest.raises(ConnectionResetError):
            list(execute.run_dask(client, _flaky, (counter,), [("u1",)], ["flaky-u1"]))
        assert Path(counter).read_text().split() == ["u1"] * 3  # transient: retried twice


def test_which_errors_are_permanent():
    assert is_permanent(OSError(errno.ENOSPC, "full"))
    assert is_permanent(PermissionError(errno.EACCES, "no"))
    assert is_permanent(OSError(errno.EROFS, "ro"))
    assert is_permanent(MemoryError())
    assert not is_permanent(ConnectionResetError(errno.ECONNRESET, "reset"))
    assert not is_permanent(TimeoutError())
    from obstore.exceptions import GenericError, PermissionDeniedError, UnauthenticatedError

    assert is_permanent(PermissionDeniedError("403 Forbidden"))  # obstore's shard uploads
    assert is_permanent(UnauthenticatedError("401"))
    assert not is_permanent(GenericError("connection reset"))


# ---- object stores ------------------------------------------------------------------------
class Answer500(BaseHTTPRequestHandler):
    """What an S3 server in trouble says to every request."""

    protocol_version = "HTTP/1.1"
    BODY = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code>'
            b"<Message>We encountered an internal error. Please try again.</Message></Error>")

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def _answer(self) -> None:
        if n := int(self.headers.get("Content-Length") or 0):
            self.rfile.read(n)
        self.send_response(500)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(self.BODY)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(self.BODY)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _answer  # noqa: N815


@pytest.fixture
def s3_answering_500(monkeypatch) -> Iterator[str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Answer500)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    endpoint = f"http://127.0.0.1:{srv.server_address[1]}"
    _s3_env(monkeypatch, endpoint)
    yield endpoint
    srv.shutdown()
    srv.server_close()


def _s3_env(monkeypatch, endpoint: str) -> None:
    for k, v in {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
                 "AWS_ENDPOINT_URL": endpoint, "AWS_MAX_ATTEMPTS": "1"}.items():
        monkeypatch.setenv(k, v)  # one attempt: botocore's retries would only slow the test


def test_s3_answering_500_through_s3fs_is_one_line(capsys, s3_answering_500):
    line = one_error(capsys, ["ls", "s3://cloudmic"])
    # a HEAD's 500 has no body ("500 Internal Server Error"), a GET's says "500 InternalError"
    assert "s3://cloudmic" in line and re.search(r"answered 500 Internal", line)
    assert "try again later" in line


def test_s3_answering_500_through_obstore_is_one_line(capsys, monkeypatch, s3_answering_500):
    import zarr

    from cloudmic.storage.location import Location

    def open_with_obstore(args):  # zarr stores on S3 read through obstore
        zarr.open_group(Location.parse(args.url).zarr_store(read_only=True), mode="r")
        return 0

    monkeypatch.setattr(cli, "cmd_info", open_with_obstore)
    line = one_error(capsys, ["info", "s3://cloudmic/biosr.zarr"])
    assert f"{s3_answering_500}/cloudmic/biosr.zarr/" in line  # the object's own URL
    assert "500 Internal Server Error" in line and "try again later" in line
    assert "Debug source" not in line


def test_s3_that_does_not_answer_is_one_line(capsys, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    _s3_env(monkeypatch, f"http://127.0.0.1:{port}")
    line = one_error(capsys, ["ls", "s3://cloudmic"])
    assert f"127.0.0.1:{port}" in line and "cannot reach the object store" in line
    assert "cloudmic store status" in line


def test_botocore_and_aiohttp_errors_become_one_line():
    import aiohttp
    from botocore.exceptions import ClientError

    denied = ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"},
                          "ResponseMetadata": {"HTTPStatusCode": 403}}, "PutObject")
    line = one_line(denied, write="s3://cloudmic")
    assert line.startswith("s3://cloudmic: the object store answered 403 AccessDenied")
    assert "AWS_ACCESS_KEY_ID" in line
    wrapped = OSError(errno.EREMOTEIO, "Internal Server Error")
    wrapped.__cause__ = ClientError({"Error": {"Code": "InternalError"},
                                     "ResponseMetadata": {"HTTPStatusCode": 500}}, "GetObject")
    assert "500 InternalError to GetObject" in one_line(wrapped, read="s3://b/x")
    gone = aiohttp.ServerDisconnectedError()
    assert "cannot reach the object store" in one_line(gone, read="s3://b/x")
    assert one_line(ValueError("not ours")) is None


# ---- the catalog --------------------------------------------------------------------------
def _replace_licenses(node: object, value: object) -> object:
    if isinstance(node, dict):
        return {k: value if k == "license" else _replace_licenses(v, value)
                for k, v in node.items()}
    if isinstance(node, list):
        return [_replace_licenses(v, value) for v in node]
    return node


def test_a_non_string_license_in_the_catalog_is_shown_not_a_crash(
        capsys, biosr_sources, small_manifest, tmp_path):
    # on main: AttributeError ('dict' object has no attribute 'replace') in catalog/html.py
    from cloudmic.ingest import ingest

    root = tmp_path / "root"
    ingest(str(small_manifest), biosr_sources["uint16"], str(root))
    catalogs = [p for p in root.rglob("*.json") if "catalog" in p.name
                or "catalog" in p.parent.name]
    assert catalogs
    for p in catalogs:
        p.write_text(json.dumps(_replace_licenses(json.loads(p.read_text()),
                                                  {"spdx": "CC-BY-4.0"})))
    assert cli.main(["catalog", str(root), "--html", str(tmp_path / "html"), "-q"]) == 0
    assert "CC-BY-4.0" in (tmp_path / "html" / "index.html").read_text()


@pytest.mark.parametrize("dataset", ["dl-smlm", "sted-fm"])
def test_fetch_of_a_dataset_without_a_published_url_says_where_it_lives(dataset, tmp_path,
                                                                         capsys):
    """No direct URL is published for these: --fetch says so and where the data lives."""
    assert cli.main(["ingest", dataset, "--fetch", "--dest", str(tmp_path / "root"),
                     "--cache", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert "no direct download URL" in err and "by hand" in err
    assert not (tmp_path / "root").exists()  # nothing written


def test_the_command_exits_with_mains_code_and_skips_the_last_full_collection(monkeypatch):
    """`cloudmic` is cli.run: main's exit code, after gc.freeze (the interpreter's exit-time
    collection of what an ingest left took 0.4-0.6 s of every run, issue 16)."""
    import tomllib

    root = Path(__file__).resolve().parents[2]
    scripts = tomllib.loads((root / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["cloudmic"] == "cloudmic.cli:run"
    frozen = []
    monkeypatch.setattr(cli.gc, "freeze", lambda: frozen.append(True))
    monkeypatch.setattr("sys.argv", ["cloudmic", "verify", "/nonexistent/x"])
    with pytest.raises(SystemExit) as stop:
        cli.run()
    assert stop.value.code == 2 and frozen == [True]


def test_the_cluster_line_prints_before_the_plan_exists(monkeypatch, tmp_path, capsys):
    """The cluster starts during the scan, so it reports its address before the unit bar
    exists: that once crashed the CLI with an IndexError (without -q)."""
    import cloudmic.ingest as ingest_mod

    def fake(*args, on_cluster, on_plan, progress, **kwargs):
        on_cluster("tcp://127.0.0.1:1", None)  # before the plan, as a fast cluster does
        on_plan(1)
        progress(1, 10)
        raise cli.CloudmicError("stop here")

    monkeypatch.setattr(ingest_mod, "ingest", fake)
    code = cli.main(["ingest", "dl-smlm", "--source", str(tmp_path), "--dest", str(tmp_path),
                     "--in-process"])  # the fake stands for the cluster's calls
    err = capsys.readouterr().err
    assert code == 2 and "dask scheduler tcp://127.0.0.1:1; dashboard (none)" in err
    assert "stop here" in err and "IndexError" not in err
