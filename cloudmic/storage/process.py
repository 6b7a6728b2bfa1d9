"""Supervised child processes: how cloudmic starts, watches and stops the servers it runs.

The embedded S3 store (:mod:`cloudmic.storage.seaweed`) and the local dask stack
(``deploy/local_stack.py``) start servers that outlive the call that started them, must
not share the caller's signals, must explain a failed start with their own log, and must
stop whole. So a child runs in its own session (pid = process group), appends to a log
file, and is stopped as a group, SIGTERM then SIGKILL. The registry keeps the ``Popen``
of each child of this interpreter only to reap it once dead (a zombie looks alive); it
kills nothing at exit, since the servers are detached on purpose.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

KILL_TIMEOUT = 10.0
"""Seconds to wait for a group to vanish after SIGKILL before calling it unkillable."""
_POLL = 0.05

# Popen objects of the children this interpreter started, by pid (= process group).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class Child:
    """A started child: its ``Popen``, its log file and where this run's output starts."""

    popen: subprocess.Popen[bytes]
    log: Path
    offset: int

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self) -> int | None:
        return self.popen.poll()

    def output(self) -> bytes:
        """What the child has written to its log so far (b"" if the log is unreadable)."""
        try:
            with open(self.log, "rb") as fh:
                fh.seek(self.offset)
                return fh.read()
        except OSError:
            return b""

    def tail(self, lines: int = 30) -> str:
        return log_tail(self.log, self.offset, lines)


def spawn(
    argv: Sequence[str],
    log: Path,
    *,
    cwd: Path,
    env: Mapping[str, str],
    header: str,
    log_mode: int = 0o600,
    umask: int = -1,
) -> Child:
    """Start ``argv`` in a new session, stdout and stderr appended to ``log`` after ``header``.

    ``log_mode`` applies when the log is created (the caller's umask still narrows it);
    ``umask`` is the child's (-1: inherited).
    """
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, log_mode)
    with os.fdopen(fd, "ab") as fh:
        fh.write(header.encode())
        fh.flush()  # the header must precede the child's first line
        offset = fh.tell()
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=dict(env),
            start_new_session=True,  # no signal of the caller's terminal reaches it
            close_fds=True,
            umask=umask,
        )
    _CHILDREN[popen.pid] = popen
    return Child(popen, Path(log), offset)


def wait_ready(
    child: Child,
    ready: Callable[[], T | None],
    timeout: float,
    *,
    exited: Callable[[int], BaseException],
    late: Callable[[], BaseException] | None,
    interval: float = _POLL,
) -> T | None:
    """Poll ``ready()`` until it returns something other than None, and return that.

    Raises ``exited(code)`` as soon as the child exits, ``late()`` after ``timeout``
    seconds; with ``late=None`` a timeout returns None instead (readiness was optional).
    """
    deadline = time.monotonic() + timeout
    while True:
        code = child.poll()
        if code is not None:
            raise exited(code)
        result = ready()
        if result is not None:
            return result
        if time.monotonic() >= deadline:
            if late is None:
                return None
            raise late()
        time.sleep(interval)


def log_tail(log: Path, offset: int = 0, lines: int = 30) -> str:
    """The last non-blank ``lines`` of ``log`` from ``offset`` on, indented for a message."""
    try:
        with open(log, "rb") as fh:
            fh.seek(offset)
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return "    (no log)"
    tail = [ln for ln in text.splitlines() if ln.strip()][-lines:]
    return "\n".join("    " + ln for ln in tail) or "    (log is empty)"


# --------------------------------------------------------------------------- liveness


def _reap(pid: int) -> None:
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        _CHILDREN.pop(pid, None)


def forget(pid: int) -> None:
    """Drop ``pid`` from the registry, reaping it if it ends within a second."""
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=1.0)


def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, process group, session) of ``pid`` from /proc, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        fields = text[text.rindex(")") + 2 :].split()
        return fields[0], int(fields[2]), int(fields[3])
    except (OSError, ValueError, IndexError):
        return None


def command_line(pid: int) -> list[bytes] | None:
    """The argv of ``pid`` from /proc, or None if it is gone or there is no procfs."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None


def running(pid: int, command: Callable[[list[bytes]], bool] | None = None) -> bool:
    """Whether ``pid`` runs, is not a zombie and (where /proc tells) ``command(argv)`` holds.

    Another user's process counts as not running: none of ours has another owner, so its
    pid was reused. Without procfs (macOS) the signal probe alone decides.
    """
    _reap(pid)
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    if not Path("/proc").is_dir():  # pragma: no cover - no procfs
        return True
    stat = proc_stat(pid)
    if stat is None or stat[0] in ("Z", "X"):
        return False
    if command is None:
        return True
    argv = command_line(pid)
    return argv is not None and command(argv)


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``.

    Linux never hands out a pid that is still some group's id, so while any member is
    left the group is ours. Without /proc (macOS) a signal probe stands in for the scan.
    """
    _reap(pgid)
    proc = Path("/proc")
    if not proc.is_dir():  # pragma: no cover - no procfs
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        stat = proc_stat(int(entry.name))
        if stat is not None and stat[1] == pgid and stat[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return sorted(members)


def group_alive(pgid: int) -> bool:
    return bool(group_members(pgid))


# --------------------------------------------------------------------------- stopping


def signal_group(pid: int, sig: int) -> None:
    """Send ``sig`` to process group ``pid`` (a child of :func:`spawn` and its descendants).

    Members left behind by a leader that is gone still form group ``pid`` and get the
    signal; a ``pid`` that leads no group (reused by another process) gets nothing.
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def wait_gone(
    pid: int,
    timeout: float,
    alive: Callable[[int], bool] = group_alive,
    stuck: Callable[[], bool] | None = None,
) -> bool:
    """Wait until ``alive(pid)`` is False; False on timeout or as soon as ``stuck()`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        child = _CHILDREN.get(pid)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=_POLL)
        if not alive(pid):
            forget(pid)
            return True
        if time.monotonic() >= deadline or (stuck is not None and stuck()):
            return False
        time.sleep(_POLL)


def kill(pid: int, alive: Callable[[int], bool] = group_alive) -> bool:
    """SIGKILL the group of ``pid``; whether it is gone within :data:`KILL_TIMEOUT`."""
    signal_group(pid, signal.SIGKILL)
    return wait_gone(pid, KILL_TIMEOUT, alive)


def terminate(
    pid: int,
    timeout: float,
    *,
    alive: Callable[[int], bool] = group_alive,
    stuck: Callable[[], bool] | None = None,
    before_kill: Callable[[], None] | None = None,
) -> bool:
    """SIGTERM the group of ``pid``, SIGKILL it after ``timeout`` s or once ``stuck()`` holds.

    ``before_kill`` runs just before the SIGKILL (to say why). Returns whether the group
    is gone; False means it survived SIGKILL too.
    """
    signal_group(pid, signal.SIGTERM)
    if wait_gone(pid, timeout, alive, stuck):
        return True
    if before_kill is not None:
        before_kill()
    return kill(pid, alive)


__all__ = [
    "KILL_TIMEOUT",
    "Child",
    "command_line",
    "forget",
    "group_alive",
    "group_members",
    "kill",
    "log_tail",
    "proc_stat",
    "running",
    "signal_group",
    "spawn",
    "terminate",
    "wait_gone",
    "wait_ready",
]
