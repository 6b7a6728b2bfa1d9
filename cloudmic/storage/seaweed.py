"""The embedded S3 object store: a real SeaweedFS server (``weed mini``) run by cloudmic.

This module holds its lifecycle: ``up()`` starts one ``weed mini`` per data folder as a
detached child (:mod:`cloudmic.storage.process`, log ``DATA/weed.log``) on 127.0.0.1 and
returns once an S3 write succeeds; ``status()`` and ``down()`` find it again from any
process through its state file. The parts live by job in ``seaweed_config`` (binary,
ports, flags), ``seaweed_state`` (state file), ``seaweed_s3`` (S3 calls) and
``seaweed_security`` (only the S3 API answers); their public names import from here too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from cloudmic.errors import StoreError
from cloudmic.storage import process
from cloudmic.storage import seaweed_s3 as s3
from cloudmic.storage import seaweed_security as security
from cloudmic.storage.seaweed_config import (
    COMPONENTS,
    GRPC_OFFSET,
    HOST,
    PORTS_FILE,
    child_env,
    command,
    identities,
    new_key,
    pick_ports,
    previous_ports,
    weed_binary,
)
from cloudmic.storage.seaweed_s3 import (
    CORS_RULES,
    PROBE_BUCKET,
    PROBE_KEY,
    is_answering,
    share_bucket,
)
from cloudmic.storage.seaweed_state import (
    IDENTITIES_FILE,
    LOCK_FILE,
    LOG_FILE,
    REGION,
    STATE_FILE,
    STATE_VERSION,
    ServerInfo,
    default_data_dir,
    info_from_state,
    locked,
    read_state,
    remove_state,
    resolve_dir,
    write_private,
)

logger = logging.getLogger(__name__)

_START_ATTEMPTS = 3
_STARTUP_GRACE = 10.0
_DRAIN_GRACE = 3.0
_STARTED_MARKER = b"All enabled components are running"


# --------------------------------------------------------------------------- public API


def status(data_dir: Path | str | None = None) -> ServerInfo | None:
    """The server running on ``data_dir`` (default: :func:`default_data_dir`), or None.

    Cheap: reads the state file and checks that the recorded process is alive (it does
    not send an S3 request; see :func:`is_answering`). A stale state file gives None.
    """
    root = resolve_dir(data_dir)
    state = read_state(root)
    if state is None:
        return None
    if not _pid_alive(int(state["pid"]), root):
        logger.debug(
            "store state file %s is stale (pid %s is gone)", root / STATE_FILE, state["pid"]
        )
        return None
    return info_from_state(state, root)


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
    root = resolve_dir(data_dir)
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        root.chmod(0o700)  # other local users must not read the data (mkdir obeys umask)
    except OSError as exc:
        raise StoreError(
            f"{root}: cannot create the store data folder ({exc}): choose "
            "another folder with data_dir= or $CLOUDMIC_STORE_DIR"
        ) from exc
    with locked(root):
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
                access_key, secret_key = new_key(), secrets.token_urlsafe(30)
        assert secret_key is not None
        creds = {
            "access_key": access_key,
            "secret_key": secret_key,
            "readonly_access_key": new_key(),
            "readonly_secret_key": secrets.token_urlsafe(30),
        }
        weed = weed_binary()
        last_error: StoreError | None = None
        for attempt in range(1, _START_ATTEMPTS + 1):
            ports = pick_ports(previous_ports(root), port)
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
    root = resolve_dir(data_dir)
    if not root.is_dir():
        return False
    with locked(root):
        state = read_state(root)
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
        remove_state(root)
        return stopped


# --------------------------------------------------------------------------- start


class _PortRace(Exception):
    """The server died at start because a port was taken meanwhile."""

    def __init__(self, error: StoreError) -> None:
        super().__init__(str(error))
        self.error = error


def _reuse_existing(
    root: Path, port: int | None, access_key: str | None, timeout: float
) -> ServerInfo | None:
    state = read_state(root)
    if state is None:
        return None
    info = info_from_state(state, root)
    if not _pid_alive(info.pid, root):
        logger.info("replacing stale store state file in %s (pid %d is gone)", root, info.pid)
        remove_state(root)
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
            + process.log_tail(root / LOG_FILE)
        )
    logger.info("store already running at %s (pid %d)", info.endpoint, info.pid)
    return info


def _wait_answering(info: ServerInfo, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if is_answering(info, timeout=min(2.0, max(timeout, 0.1))):
            return True
        if time.monotonic() >= deadline or not _pid_alive(info.pid, info.data_dir):
            return False
        time.sleep(0.1)


def _start(
    weed: Path, root: Path, ports: dict[str, int], creds: dict[str, str], timeout: float,
    public: tuple[str, ...] = (),
) -> ServerInfo:
    identities_file = root / IDENTITIES_FILE
    write_private(identities_file, identities(creds, public))
    security.tighten_modes(root)  # what a run before the lock-down left readable
    grpc_tls = security.write_security_config(root)
    started, started_wall = time.monotonic(), time.time()
    child = process.spawn(
        command(weed, root, ports, identities_file),
        root / LOG_FILE,
        cwd=root,
        env=child_env(),
        header=f"\n=== cloudmic store up {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n",
        umask=security.CHILD_UMASK,  # volume files, filer store, unix sockets: owner-only
    )
    with contextlib.suppress(OSError):
        write_private(root / PORTS_FILE, ports)
    state = {
        "version": STATE_VERSION,
        "pid": child.pid,
        "s3_port": ports["s3"],
        "endpoint": f"http://{HOST}:{ports['s3']}",
        "ports": ports,
        "weed": str(weed),
        "started_at": time.time(),
        "public_read": list(public),
        "grpc_tls": grpc_tls,
        **creds,
    }
    write_private(root / STATE_FILE, state)
    info = info_from_state(state, root)
    logger.info("starting store pid %d on %s (data %s)", child.pid, info.endpoint, root)
    try:
        _wait_ready(child, info, timeout)
        _wait_started(child, root, started_wall, _STARTUP_GRACE)
    except BaseException:
        if child.poll() is None:  # ours and bound to its ports: stop it, clean its sockets
            with contextlib.suppress(StoreError):
                _stop_pid(child.pid, 5.0, root, child.log)
            _remove_stale_sockets(ports)
        process.forget(child.pid)
        remove_state(root)
        raise
    logger.info("store ready at %s in %.1f s", info.endpoint, time.monotonic() - started)
    return info


def _wait_ready(child: process.Child, info: ServerInfo, timeout: float) -> None:
    """Wait until an S3 write succeeds (``/healthz`` answers before writes do)."""
    client = None
    last: list[Exception] = []

    def written() -> bool | None:
        nonlocal client
        try:
            if client is None:
                client = s3.s3_client(info, timeout=2.0)
            s3.probe_write(client)
            return True
        except Exception as exc:  # not ready yet: connection refused, 5xx, ...
            last[:] = [exc]
            return None

    def exited(code: int) -> Exception:
        tail = child.tail()
        error = StoreError(
            f"the store server exited with code {code} while starting "
            f"(data {info.data_dir}); last lines of {child.log}:\n{tail}"
        )
        lowered = tail.lower()
        if "port allocation failed" in lowered or "address already in use" in lowered:
            return _PortRace(error)
        return error

    def late() -> StoreError:
        return StoreError(
            f"the store server (pid {child.pid}) did not accept an S3 write at "
            f"{info.endpoint} within {timeout:.0f} s (last error: {last[0] if last else None});"
            f" it was stopped. Retry with a longer timeout, or check {child.log}:\n"
            + child.tail()
        )

    process.wait_ready(child, written, timeout, exited=exited, late=late, interval=0.1)


def _wait_started(child: process.Child, root: Path, started_wall: float, limit: float) -> None:
    """Wait (at most ``limit`` s, never failing) until ``weed mini`` finished starting.

    S3 writes work before the admin server and its workers are up, but ``weed mini``
    registers its last SIGTERM hook only then; a SIGTERM before that point can deadlock
    the shutdown (the volume server waits for clients that nobody stops; seen in about
    1 of 10 immediate up/down cycles). Startup is complete once the welcome banner is
    printed or ``mini.options`` is (re)written, both right after that hook.
    """
    options = root / "mini.options"

    def complete() -> bool | None:
        with contextlib.suppress(OSError):
            if options.stat().st_mtime >= started_wall:
                return True
        return True if _STARTED_MARKER in child.output() else None

    def exited(code: int) -> StoreError:
        return StoreError(
            f"the store server exited with code {code} while starting "
            f"(data {root}); last lines of {child.log}:\n{child.tail()}"
        )

    if process.wait_ready(child, complete, limit, exited=exited, late=None) is None:
        logger.debug("weed mini did not report a complete start within %.0f s", limit)


# --------------------------------------------------------------------------- stop


def _pid_alive(pid: int, data_dir: Path | None = None) -> bool:
    """Whether ``pid`` runs and (where /proc tells) is a ``weed`` serving ``data_dir``."""

    def ours(argv: list[bytes]) -> bool:
        if not argv or not os.path.basename(argv[0].decode(errors="replace")).startswith("weed"):
            return False
        return data_dir is None or f"-dir={data_dir}".encode() in argv

    return process.running(pid, ours)


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

    def say_why() -> None:
        if stuck():
            logger.info(
                "store pid %d: filer stopped but the volume server hangs draining "
                "connections (a weed mini quirk): sending SIGKILL",
                pid,
            )
        else:
            logger.warning("store pid %d ignored SIGTERM for %.1f s: sending SIGKILL", pid, timeout)

    if not process.terminate(pid, timeout, alive=lambda p: _pid_alive(p, data_dir),
                             stuck=stuck, before_kill=say_why):
        raise StoreError(f"store pid {pid} does not stop even after SIGKILL: check `ps {pid}`")


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
    "COMPONENTS",
    "CORS_RULES",
    "GRPC_OFFSET",
    "HOST",
    "IDENTITIES_FILE",
    "LOCK_FILE",
    "LOG_FILE",
    "PORTS_FILE",
    "PROBE_BUCKET",
    "PROBE_KEY",
    "REGION",
    "STATE_FILE",
    "ServerInfo",
    "StoreError",
    "default_data_dir",
    "down",
    "is_answering",
    "share_bucket",
    "status",
    "up",
    "weed_binary",
]
