"""Shared pytest fixtures."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import emulators
from cloudmic.storage import seaweed


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[seaweed.ServerInfo]:
    """A real SeaweedFS S3 server for the whole session, in its own data folder on free ports."""
    data_dir = tmp_path_factory.mktemp("s3-store")
    info = seaweed.up(data_dir)
    try:
        yield info
    finally:
        seaweed.down(data_dir)


pytest_plugins = ["fixtures_biosr"]


@contextlib.contextmanager
def exported(env: dict[str, str]) -> Iterator[dict[str, str]]:
    """``env`` in os.environ while the block runs, as a user would export it."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def s3_env(s3_server: seaweed.ServerInfo) -> Iterator[dict[str, str]]:
    """AWS_* variables pointing at the session's server, as a user would export them."""
    with exported(s3_server.env()) as env:
        yield env


def _served(start, folder: Path) -> Iterator[emulators.Server]:
    server = start(folder)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def az_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[emulators.Server]:
    """Azurite, Microsoft's Azure Blob emulator, for the whole session."""
    yield from _served(emulators.start_azurite, tmp_path_factory.mktemp("azurite"))


@pytest.fixture(scope="session")
def az_env(az_server: emulators.Server) -> Iterator[dict[str, str]]:
    """AZURE_STORAGE_CONNECTION_STRING for the session's Azurite."""
    with exported(az_server.env) as env:
        yield env


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[emulators.Server]:
    """fake-gcs-server, a GCS emulator, for the whole session."""
    yield from _served(emulators.start_fake_gcs, tmp_path_factory.mktemp("fake-gcs"))


@pytest.fixture(scope="session")
def gcs_env(gcs_server: emulators.Server) -> Iterator[dict[str, str]]:
    """STORAGE_EMULATOR_HOST for the session's fake-gcs-server."""
    with exported(gcs_server.env) as env:
        yield env


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Close the Azure clients adlfs opened while fsspec's event loop still runs.

    adlfs closes each client in a ``weakref.finalize`` run at interpreter exit, after that
    loop has closed, so every session that used Azurite ended with a harmless but long
    "RuntimeError: Loop is not running" traceback (fsspec/adlfs#495). Run those finalizers
    now (``weakref.finalize`` lists its live finalizers in ``_registry``)."""
    import sys
    import weakref

    if "adlfs" not in sys.modules:
        return
    from adlfs import AzureBlobFileSystem

    for fin in list(weakref.finalize._registry):  # noqa: SLF001 - no public listing
        target = fin.peek()
        if target is not None and isinstance(target[0], AzureBlobFileSystem):
            with contextlib.suppress(Exception):  # a client that is gone already
                fin()
    AzureBlobFileSystem.clear_instance_cache()  # closed: no later test may reuse them
