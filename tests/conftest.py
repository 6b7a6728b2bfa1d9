"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

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


@pytest.fixture(scope="session")
def s3_env(s3_server: seaweed.ServerInfo) -> Iterator[dict[str, str]]:
    """AWS_* variables pointing at the session's server, as a user would export them."""
    import os

    env = s3_server.env()
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
