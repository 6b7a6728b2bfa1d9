"""What a running embedded store is and where that is written down: :class:`ServerInfo`
(endpoint, pid, credentials) and its owner-only state file in the data folder, so that
``status()`` and ``down()`` work from any process (``cloudmic store status``), and the
lock that serialises ``up``/``down`` on one data folder across processes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloudmic.storage import seaweed_security as security
from cloudmic.storage.locks import file_lock
from cloudmic.storage.seaweed_config import HOST

logger = logging.getLogger(__name__)

STATE_FILE = "cloudmic-store.json"
"""Name of the state file inside the data folder."""
IDENTITIES_FILE = "cloudmic-s3-identities.json"
"""Name of the S3 identities file (``-s3.config``) inside the data folder."""
LOG_FILE = "weed.log"
"""Name of the server log inside the data folder."""
LOCK_FILE = ".cloudmic-store.lock"
REGION = "us-east-1"
STATE_VERSION = 1


@dataclass(frozen=True)
class ServerInfo:
    """A running embedded S3 server and the credentials to reach it."""

    endpoint: str
    s3_port: int
    pid: int
    data_dir: Path
    access_key: str
    secret_key: str = field(repr=False)
    readonly_access_key: str = field(repr=False)
    readonly_secret_key: str = field(repr=False)
    public_read: tuple[str, ...] = ()  # buckets anyone may read (browser viewers)

    def _keys(self, readonly: bool) -> tuple[str, str]:
        if readonly:
            return self.readonly_access_key, self.readonly_secret_key
        return self.access_key, self.secret_key

    def env(self, readonly: bool = False) -> dict[str, str]:
        """AWS environment variables for this server (admin keys, or read-only ones)."""
        key, secret = self._keys(readonly)
        return {
            "AWS_ACCESS_KEY_ID": key,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": REGION,
        }

    def storage_options(self, readonly: bool = False) -> dict[str, Any]:
        """fsspec/s3fs storage options for this server.

        No ``region_name`` in ``client_kwargs``: with it, s3fs sends a bucket
        LocationConstraint that the server rejects.
        """
        key, secret = self._keys(readonly)
        return {"key": key, "secret": secret, "client_kwargs": {"endpoint_url": self.endpoint}}


def default_data_dir() -> Path:
    """The store's data folder: ``$CLOUDMIC_STORE_DIR`` if set, else ``~/.cloudmic/store``."""
    env = os.environ.get("CLOUDMIC_STORE_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cloudmic" / "store"


def resolve_dir(data_dir: Path | str | None) -> Path:
    return Path(data_dir if data_dir is not None else default_data_dir()).expanduser().resolve()


def write_private(path: Path, payload: dict[str, Any] | list[Any]) -> None:
    """Write JSON atomically, readable by the owner only (it holds secrets)."""
    security.write_owner_only(path, json.dumps(payload, indent=2) + "\n")


def read_state(data_dir: Path) -> dict[str, Any] | None:
    """The state file's content, or None if there is none or it is unusable (logged)."""
    path = data_dir / STATE_FILE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("ignoring unreadable store state file %s: %s", path, exc)
        return None
    required = {"pid", "s3_port", "access_key", "secret_key"}
    required |= {"readonly_access_key", "readonly_secret_key"}
    try:
        ok = isinstance(state, dict) and required <= state.keys()
        ok = ok and int(state["pid"]) > 0 and int(state["s3_port"]) > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        logger.warning("ignoring malformed store state file %s", path)
        return None
    return state


def info_from_state(state: dict[str, Any], data_dir: Path) -> ServerInfo:
    port = int(state["s3_port"])
    return ServerInfo(
        endpoint=f"http://{HOST}:{port}",
        s3_port=port,
        pid=int(state["pid"]),
        data_dir=data_dir,
        access_key=state["access_key"],
        secret_key=state["secret_key"],
        readonly_access_key=state["readonly_access_key"],
        readonly_secret_key=state["readonly_secret_key"],
        public_read=tuple(state.get("public_read", ())),
    )


def remove_state(data_dir: Path) -> None:
    """Remove every file that holds a secret of the run (state, identities, keys)."""
    for name in (STATE_FILE, IDENTITIES_FILE):
        with contextlib.suppress(FileNotFoundError):
            (data_dir / name).unlink()
    security.remove_security_config(data_dir)


def locked(data_dir: Path) -> contextlib.AbstractContextManager[None]:
    """Serialise up/down on one data folder across processes."""
    return file_lock(data_dir / LOCK_FILE)


__all__ = [
    "IDENTITIES_FILE",
    "LOCK_FILE",
    "LOG_FILE",
    "REGION",
    "STATE_FILE",
    "ServerInfo",
    "default_data_dir",
    "info_from_state",
    "locked",
    "read_state",
    "remove_state",
    "resolve_dir",
    "write_private",
]
