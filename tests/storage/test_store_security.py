"""The embedded store is locked down: only its S3 API answers, anonymous readers of a
public bucket stay out of the private ``.cloudmic/`` prefix, and files are owner-only.

Against a real ``weed mini`` (issue 14, holes 4 and 8). On main before the lock-down, a
multipart POST to the filer port answered 201 and replaced what S3 served, the master
answered ``/dir/assign`` and ``/col/delete``, ``weed shell`` worked on the gRPC ports,
the data folder was 0755 with 0644 volume files, and anonymous clients listed and read
``.cloudmic/staging/.../ledger/*.json`` of a public bucket.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import ssl
import stat
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import s3fs

from cloudmic.storage import root_layout, seaweed, seaweed_s3
from cloudmic.storage import seaweed_security as security

BUCKET = "pub"
EVIL = "http://evil.example"
STAGED = ".cloudmic/staging/biosr-0a1b2c/ledger/unit-0.json"
VERSION = "20261202T071502123456Z-1a2b3c"
VERSIONS = f"biosr{root_layout.VERSIONS_SUFFIX}"
PUBLIC = ("catalog.json", "biosr.zarr/zarr.json", f"{VERSIONS}/{root_layout.POINTER}",
          f"{VERSIONS}/{VERSION}/biosr.zarr/zarr.json",
          f"{VERSIONS}/{VERSION}/biosr.wds/index.json",
          f"biosr.versions/{VERSION}/biosr.zarr/zarr.json")
NESTED_STAGED = "lab/.cloudmic/staging/deepcad-9f/ledger/unit-3.json"
REFUSED = {400, 401, 403, 404, 405}  # 400: the volume server cannot parse the path


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[seaweed.ServerInfo]:
    info = seaweed.up(tmp_path_factory.mktemp("locked-store"), public_read=[BUCKET])
    try:
        fs = _fs(info)
        for key in (*PUBLIC, STAGED, NESTED_STAGED, "lab/catalog.json"):
            fs.pipe(f"{BUCKET}/{key}", json.dumps({"key": key}).encode())
        yield info
    finally:
        seaweed.down(info.data_dir)


def _fs(info: seaweed.ServerInfo, **kw: object) -> s3fs.S3FileSystem:
    return s3fs.S3FileSystem(skip_instance_cache=True, **info.storage_options(), **kw)


def _state(info: seaweed.ServerInfo) -> dict:
    return json.loads((info.data_dir / seaweed.STATE_FILE).read_text())


def _request(method: str, url: str, body: bytes | None = None,
             **headers: str) -> int | str:
    """The HTTP status, or the name of the connection error."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code
    except (urllib.error.URLError, ConnectionError, http.client.HTTPException,
            TimeoutError) as exc:
        return type(getattr(exc, "reason", exc)).__name__


def _multipart(name: str, content: bytes) -> tuple[bytes, dict[str, str]]:
    boundary = "cloudmicTestBoundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"{name}\"\r\nContent-Type: application/json\r\n\r\n").encode()
    body += content + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def _listening_ports(pid: int) -> set[tuple[str, int]]:
    """(hex local address, port) of every TCP socket ``pid`` listens on (Linux /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and cols[9] in inodes:  # LISTEN
                    addr, port = cols[1].split(":")
                    found.add((addr, int(port, 16)))
    return found


# ------------------------------------------------------------------ ports


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")
def test_the_store_listens_on_its_recorded_ports_on_loopback_only(store) -> None:
    ports = _state(store)["ports"]
    expected = {p + off for p in ports.values() for off in (0, seaweed.GRPC_OFFSET)}
    listening = _listening_ports(store.pid)
    assert {port for _, port in listening} == expected  # no WebDAV, Iceberg, Lance, debug
    assert {addr for addr, _ in listening} == {"0100007F"}  # 127.0.0.1


def test_every_non_s3_port_refuses_direct_requests(store) -> None:
    ports = _state(store)["ports"]
    targets = [p + off for name, p in ports.items() for off in (0, seaweed.GRPC_OFFSET)
               if not (name == "s3" and off == 0)]
    body, headers = _multipart("catalog.json", b'{"evil": true}')
    answers = {}
    for port in targets:
        base = f"http://127.0.0.1:{port}"
        paths = [f"/buckets/{BUCKET}/catalog.json", "/3,01637037d6"]
        if port != ports["master"]:  # the master's status page: see the next test
            paths.append("/")
        for path in paths:
            answers[port, "POST", path] = _request("POST", base + path, body, Origin=EVIL,
                                                   **headers)
            answers[port, "PUT", path] = _request("PUT", base + path, b"{}", Origin=EVIL)
            answers[port, "DELETE", path] = _request("DELETE", base + path)
            if path != "/":
                answers[port, "GET", path] = _request("GET", base + path)
    master = f"http://127.0.0.1:{ports['master']}"
    for path in ("/dir/assign", f"/col/delete?collection={BUCKET}", "/vol/grow?count=1",
                 "/dir/lookup?volumeId=1", "/submit", "/vol/status"):
        answers["master", "GET", path] = _request("GET", master + path)
    accepted = {k: v for k, v in answers.items() if isinstance(v, int) and v not in REFUSED}
    assert not accepted
    # the HTTP ports answer with a refusal; the gRPC ones drop an HTTP/1.1 request
    filer = ports["filer"]
    assert answers[filer, "POST", f"/buckets/{BUCKET}/catalog.json"] in (401, 404)
    assert answers[ports["volume"], "POST", "/3,01637037d6"] == 401  # "wrong jwt"
    assert answers[ports["volume"], "GET", "/3,01637037d6"] == 401
    # and S3 still serves what the admin wrote
    assert json.loads(_fs(store).cat(f"{BUCKET}/catalog.json")) == {"key": "catalog.json"}


def test_master_http_keeps_only_read_only_status_pages(store) -> None:
    """weed 4.48 cannot turn these off: they show the topology, never object data."""
    master = f"http://127.0.0.1:{_state(store)['ports']['master']}"
    assert _request("GET", master + "/cluster/status") == 200
    for method in ("GET", "POST", "PUT", "DELETE"):  # any method renders the status page
        assert _request(method, master + "/") == 200
    assert _request("GET", master + f"/buckets/{BUCKET}/catalog.json") == 404


def _h2_settings_frame(port: int, context: ssl.SSLContext | None) -> bool:
    """Whether a gRPC (HTTP/2) server on ``port`` answers our preface with SETTINGS."""
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            sock = raw if context is None else context.wrap_socket(raw)
            sock.sendall(preface)
            head = sock.recv(9)
    except (OSError, ssl.SSLError):
        return False
    return len(head) == 9 and head[3] == 0x04


def test_grpc_ports_need_the_store_certificate(store) -> None:
    if not _state(store)["grpc_tls"]:
        pytest.skip("openssl is not installed: gRPC runs without TLS client auth")
    tls = store.data_dir / security.TLS_DIR
    trusted = ssl.create_default_context(cafile=str(tls / "ca.crt"))
    trusted.check_hostname = False
    trusted.set_alpn_protocols(["h2"])
    stranger = ssl.create_default_context(cafile=str(tls / "ca.crt"))
    stranger.check_hostname = False
    stranger.set_alpn_protocols(["h2"])
    trusted.load_cert_chain(tls / "store.crt", tls / "store.key")
    assert not (tls / "ca.key").exists()  # nobody can sign another client certificate
    for port in (p + seaweed.GRPC_OFFSET for p in _state(store)["ports"].values()):
        assert _h2_settings_frame(port, trusted), port  # the components' own certificate
        assert not _h2_settings_frame(port, stranger), port  # TLS without a client cert
        assert not _h2_settings_frame(port, None), port  # plaintext gRPC (weed shell)


# ------------------------------------------------------------------ S3 still works


def test_s3_clients_work_through_the_locked_down_store(store, tmp_path) -> None:
    import obstore
    from obstore.store import S3Store

    fs = _fs(store)
    big = os.urandom(9 * 1024 * 1024)  # above the filer's 4 MB chunk size
    fs.pipe("cm-sec/big.bin", big)
    assert fs.cat("cm-sec/big.bin") == big
    assert fs.cat_file("cm-sec/big.bin", start=5_000_000, end=5_000_010) == big[5_000_000:5_000_010]
    ro = s3fs.S3FileSystem(skip_instance_cache=True, **store.storage_options(readonly=True))
    assert ro.ls("cm-sec", detail=False) == ["cm-sec/big.bin"]
    with pytest.raises(PermissionError):
        ro.pipe("cm-sec/other", b"x")
    obs = S3Store("cm-sec", endpoint=store.endpoint, access_key_id=store.access_key,
                  secret_access_key=store.secret_key, region=seaweed.REGION,
                  client_options={"allow_http": True})
    obstore.put(obs, "o/a.bin", b"obstore")
    assert bytes(obstore.get(obs, "o/a.bin").bytes()) == b"obstore"
    assert [m["path"] for m in obstore.list(obs, prefix="o/").collect()] == ["o/a.bin"]
    # the admin and read-only keys still see the staging (the ingest resumes from it)
    assert fs.cat(f"{BUCKET}/{STAGED}") and ro.cat(f"{BUCKET}/{STAGED}")
    assert f"{BUCKET}/{STAGED}" in fs.find(f"{BUCKET}/.cloudmic")


# ------------------------------------------------------------------ anonymous readers


def test_anonymous_readers_get_datasets_and_catalog(store) -> None:
    base = f"{store.endpoint}/{BUCKET}"
    for key in PUBLIC:
        assert _request("GET", f"{base}/{key}", Origin=EVIL) == 200, key
    anon = s3fs.S3FileSystem(anon=True, skip_instance_cache=True,
                             client_kwargs={"endpoint_url": store.endpoint})
    assert json.loads(anon.cat(f"{BUCKET}/biosr.zarr/zarr.json")) == {
        "key": "biosr.zarr/zarr.json"}
    # listing inside a dataset still works
    assert anon.find(f"{BUCKET}/{VERSIONS}/{VERSION}") == [
        f"{BUCKET}/{VERSIONS}/{VERSION}/{k}" for k in ("biosr.wds/index.json",
                                                     "biosr.zarr/zarr.json")]
    assert _request("PUT", f"{base}/catalog.json", b"{}", Origin=EVIL) == 403


def _list(store, query: str) -> tuple[int | str, bool]:
    url = f"{store.endpoint}/{BUCKET}?{query}"
    req = urllib.request.Request(url)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, b".cloudmic" in resp.read()
    except urllib.error.HTTPError as err:
        return err.code, b".cloudmic" in err.read()


def test_anonymous_readers_cannot_read_or_list_the_staging(store) -> None:
    base = f"{store.endpoint}/{BUCKET}"
    for key in (STAGED, NESTED_STAGED):
        assert _request("GET", f"{base}/{key}") == 403, key
        assert _request("HEAD", f"{base}/{key}") == 403, key
    queries = ["list-type=2", "list-type=2&delimiter=/", "", "delimiter=/",
               "versions", "uploads"]
    for prefix in (".", ".c", ".cloudmic", ".cloudmic/", ".cloudmic/staging/", "lab/.cl",
                   "lab/.cloudmic/staging/"):
        queries += [f"list-type=2&prefix={prefix}", f"prefix={prefix}&delimiter=/"]
    for query in queries:
        status, revealed = _list(store, query)
        assert status == 403 and not revealed, query
    assert _request("GET", f"{base}?policy") == 403
    anon = s3fs.S3FileSystem(anon=True, skip_instance_cache=True,
                             client_kwargs={"endpoint_url": store.endpoint})
    with pytest.raises(PermissionError):
        anon.cat(f"{BUCKET}/{STAGED}")
    # allowed listings never name the staging (prefixes that cannot reach it)
    for query in ("list-type=2&prefix=biosr", "list-type=2&prefix=catalog.json"):
        assert _list(store, query) == (200, False), query


def test_the_private_prefix_is_the_one_the_ingest_stages_under() -> None:
    assert root_layout.STAGING.startswith(root_layout.PRIVATE + "/")
    policy = json.dumps(security.public_bucket_policy("b"))
    assert f"arn:aws:s3:::b/{root_layout.PRIVATE}/*" in policy


# ------------------------------------------------------------------ files


def test_data_folder_and_files_are_owner_only(store) -> None:
    root = store.data_dir
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    # weed 4.48 writes a new volume's .vif (version, replication: no data) 0644 whatever
    # the umask; the 0700 folder keeps it from others, and the next start tightens it
    loose = [f"{oct(stat.S_IMODE(p.lstat().st_mode))} {p.relative_to(root)}"
             for p in root.rglob("*") if not p.is_symlink() and p.suffix != ".vif"
             and stat.S_IMODE(p.lstat().st_mode) & 0o077]
    assert not loose
    assert any(p.suffix == ".dat" for p in root.iterdir())  # volume files were checked
    assert stat.S_IMODE((root / security.SECURITY_FILE).stat().st_mode) == 0o600
    # weed's unix sockets in /tmp: only the owner may connect
    sockets = [s for port in _state(store)["ports"].values()
               for s in Path("/tmp").glob(f"seaweedfs-*-{port}.sock")]
    for sock in sockets:
        assert stat.S_IMODE(sock.stat().st_mode) & 0o077 == 0, sock


# ------------------------------------------------------------------ conditional writes


def test_conditional_puts_are_honoured(store) -> None:
    """What weed 4.48 answers to If-None-Match / If-Match on PutObject (for catalog.json)."""
    from botocore.exceptions import ClientError

    client = seaweed_s3.s3_client(store, timeout=10.0)

    bodies = iter(range(100))

    def put(key: str, **kw: str) -> int:
        body = b"version %d" % next(bodies)  # a new ETag at every successful write
        try:
            return client.put_object(Bucket="cm-cond", Key=key, Body=body, **kw)[
                "ResponseMetadata"]["HTTPStatusCode"]
        except ClientError as err:
            return err.response["ResponseMetadata"]["HTTPStatusCode"]

    with contextlib.suppress(ClientError):
        client.create_bucket(Bucket="cm-cond")
    assert put("c.json", IfNoneMatch="*") == 200
    assert put("c.json", IfNoneMatch="*") == 412
    etag = client.head_object(Bucket="cm-cond", Key="c.json")["ETag"]
    assert put("c.json", IfMatch=etag) == 200
    assert put("c.json", IfMatch=etag) == 412  # the object changed: stale ETag
    assert put("missing.json", IfMatch=etag) == 412  # AWS answers 404 here
