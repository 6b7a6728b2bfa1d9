"""deploy/k8s and deploy/Dockerfile: the Kubernetes templates say what they claim to.

Fast checks on the parsed YAML (kinds, commands, the S3 Secret in every container that
talks to S3, resources, images through kustomize), the real `kubectl kustomize` build when
kubectl is installed, the identities script of the SeaweedFS pod run with /bin/sh, and
(e2e) the SeaweedFS container's exact `weed mini` flags run against the real binary.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cloudmic.storage import seaweed

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
SECRET = "cloudmic-s3"
S3_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL")
DASK_API = "kubernetes.dask.org/v1"


def _docs(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        return [d for d in yaml.safe_load_all(fh) if d is not None]


@pytest.fixture(scope="module")
def kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


@pytest.fixture(scope="module")
def resources(kustomization: dict[str, Any]) -> list[dict[str, Any]]:
    return [doc for name in kustomization["resources"] for doc in _docs(K8S / name)]


def _one(resources: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [r for r in resources
             if r["kind"] == kind and (name is None or r["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _containers(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every container (and init container) anywhere in a resource, with its path."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                for c in value:
                    yield f"{path}.{key}[{c.get('name')}]", c
            else:
                yield from _containers(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _containers(value, f"{path}[{i}]")


def _all_containers(resources: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [(f"{r['kind']}/{r['metadata']['name']}{p}", c)
            for r in resources for p, c in _containers(r)]


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def _secret_keys(container: dict[str, Any]) -> set[str]:
    """Variables the container takes from the S3 Secret (secretKeyRef or envFrom)."""
    keys = {name for name, e in _env(container).items()
            if e.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == SECRET
            and e["valueFrom"]["secretKeyRef"]["key"] == name}
    if any(src.get("secretRef", {}).get("name") == SECRET
           for src in container.get("envFrom", [])):
        keys |= set(S3_KEYS)
    return keys


# ------------------------------------------------------------------ files and kinds


def test_every_yaml_parses_and_is_listed_in_the_kustomization(
        kustomization: dict[str, Any]) -> None:
    files = sorted(p.name for p in K8S.glob("*.yaml"))
    assert files, "no templates"
    for name in files:
        assert _docs(K8S / name), f"{name} is empty"
    listed = set(kustomization["resources"])
    assert listed == set(files) - {"kustomization.yaml"}
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"


def test_kinds_and_api_versions(resources: list[dict[str, Any]]) -> None:
    kinds = sorted((r["apiVersion"], r["kind"]) for r in resources)
    assert kinds == sorted([
        ("v1", "Namespace"),
        ("v1", "PersistentVolumeClaim"),
        ("v1", "PersistentVolumeClaim"),
        ("apps/v1", "Deployment"),
        ("v1", "Service"),
        ("networking.k8s.io/v1", "NetworkPolicy"),
        (DASK_API, "DaskCluster"),
        (DASK_API, "DaskJob"),
    ])
    for r in resources:
        assert r["metadata"]["name"], r


def test_daskjob_runs_cloudmic_ingest_against_its_scheduler(
        resources: list[dict[str, Any]]) -> None:
    job = _one(resources, "DaskJob")
    spec = job["spec"]
    assert set(spec) == {"job", "cluster"}
    (runner,) = spec["job"]["spec"]["containers"]
    args = runner.get("command", []) + runner["args"]
    assert args[:2] == ["cloudmic", "ingest"]
    assert args[2] in ("dl-smlm", "sted-fm", "biosr", "deepcad", "platelet-em")
    flags = [a for a in args[3:] if a == "--fetch"]
    rest = [a for a in args[3:] if a != "--fetch"]
    opts = dict(zip(rest[0::2], rest[1::2], strict=True))
    assert set(opts) == {"--cache", "--dest", "--scheduler"} and flags == ["--fetch"]
    # the official downloads go to the shared volume that every worker mounts (read-only)
    mounts = {m["name"]: m["mountPath"] for m in runner["volumeMounts"]}
    assert opts["--cache"].startswith(mounts["sources"] + "/")
    (w,) = spec["cluster"]["spec"]["worker"]["spec"]["containers"]
    assert {m["name"]: m["mountPath"] for m in w["volumeMounts"]}["sources"] == mounts["sources"]
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
              for v in spec["job"]["spec"]["volumes"] if "persistentVolumeClaim" in v}
    pvc = _one(resources, "PersistentVolumeClaim", claims["sources"])
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert opts["--dest"].startswith("s3://")
    # the operator sets DASK_SCHEDULER_ADDRESS=tcp://<name>-scheduler.<ns>.svc...:8786
    assert opts["--scheduler"] in ("$(DASK_SCHEDULER_ADDRESS)",) or \
        opts["--scheduler"].startswith("tcp://")

    cluster = spec["cluster"]["spec"]
    assert cluster["worker"]["replicas"] >= 1
    (worker,) = cluster["worker"]["spec"]["containers"]
    assert worker["args"][:2] == ["dask", "worker"]
    assert "$(DASK_WORKER_NAME)" in worker["args"]
    (sched,) = cluster["scheduler"]["spec"]["containers"]
    assert sched["args"][:2] == ["dask", "scheduler"]
    ports = {p["name"]: p["containerPort"] for p in sched["ports"]}
    assert ports == {"tcp-comm": 8786, "http-dashboard": 8787}
    service = cluster["scheduler"]["service"]
    assert service["selector"] == {"dask.org/cluster-name": job["metadata"]["name"],
                                   "dask.org/component": "scheduler"}
    assert {p["targetPort"] for p in service["ports"]} == set(ports)


def test_daskjob_args_parse_with_the_real_cli(resources: list[dict[str, Any]]) -> None:
    from cloudmic.cli import build_parser

    (runner,) = _one(resources, "DaskJob")["spec"]["job"]["spec"]["containers"]
    argv = [a.replace("$(DASK_SCHEDULER_ADDRESS)", "tcp://cloudmic-ingest-scheduler:8786")
            for a in runner["args"][1:]]
    args, unknown = build_parser().parse_known_args(argv)
    if "--scheduler" in unknown:
        pytest.skip("`cloudmic ingest --scheduler` is not in this checkout yet")
    assert not unknown
    assert args.command == "ingest" and args.scheduler.startswith("tcp://")


def test_daskcluster_for_notebooks(resources: list[dict[str, Any]]) -> None:
    cluster = _one(resources, "DaskCluster")
    spec = cluster["spec"]
    assert spec["worker"]["replicas"] >= 1
    (worker,) = spec["worker"]["spec"]["containers"]
    assert worker["args"][:2] == ["dask", "worker"]
    (sched,) = spec["scheduler"]["spec"]["containers"]
    assert sched["args"][:2] == ["dask", "scheduler"]
    assert spec["scheduler"]["service"]["selector"]["dask.org/cluster-name"] == \
        cluster["metadata"]["name"]


# ------------------------------------------------------------------ S3 secret, resources, images


def test_every_container_that_talks_to_s3_gets_the_secret(
        resources: list[dict[str, Any]]) -> None:
    containers = dict(_all_containers(resources))
    def argv(c: dict[str, Any]) -> list[str]:
        return c.get("command", []) + c.get("args", [])

    s3_users = {p: c for p, c in containers.items()
                if argv(c)[:1] == ["cloudmic"] or argv(c)[:2] == ["dask", "worker"]}
    assert len(s3_users) == 3  # the ingest job, its workers, the notebook workers
    for path, c in s3_users.items():
        missing = set(S3_KEYS) - _secret_keys(c)
        assert not missing, f"{path} lacks {sorted(missing)} from Secret {SECRET}"
        assert not any("value" in _env(c)[k] for k in S3_KEYS if k in _env(c)), path
    # the identities are built from the same Secret; weed itself must not see AWS_*
    # (`weed mini` would add them as one more identity)
    init = next(c for p, c in containers.items() if "initContainers[s3-identities]" in p)
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= _secret_keys(init)
    weed = next(c for p, c in containers.items() if p.endswith("containers[seaweedfs]"))
    assert not [e for e in _env(weed) if e.startswith(("AWS_", "S3_"))]
    assert not weed.get("envFrom")


def test_every_container_has_cpu_and_memory_requests_and_limits(
        resources: list[dict[str, Any]]) -> None:
    for path, c in _all_containers(resources):
        res = c.get("resources", {})
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(res.get(kind, {})), f"{path}: {kind} {res}"


def test_scratch_is_an_emptydir_on_job_and_workers(resources: list[dict[str, Any]]) -> None:
    job = _one(resources, "DaskJob")["spec"]
    pods = [job["job"]["spec"], job["cluster"]["spec"]["worker"]["spec"],
            _one(resources, "DaskCluster")["spec"]["worker"]["spec"]]
    for pod in pods:
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes["scratch"]
        (c,) = pod["containers"]
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        assert mounts["scratch"] == "/scratch"
        assert _env(c)["TMPDIR"]["value"] == "/scratch"


def test_images_are_placeholders_set_through_kustomize(
        resources: list[dict[str, Any]], kustomization: dict[str, Any]) -> None:
    entries = {e["name"]: e for e in kustomization["images"]}
    for entry in entries.values():
        assert entry["newName"] and isinstance(entry["newTag"], str)
    used = {c["image"] for _, c in _all_containers(resources)}
    assert used == set(entries) == {"cloudmic", "seaweedfs"}
    for path, c in _all_containers(resources):
        if "Dask" in path.split("/")[0]:
            assert c["image"] == "cloudmic", path
    from cloudmic import __version__ as version  # the one source (hatch reads _version.py)
    assert entries["cloudmic"]["newTag"] == version


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_kustomize_builds_and_sets_every_image(kustomization: dict[str, Any]) -> None:
    out = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    built = [d for d in yaml.safe_load_all(out.stdout) if d]
    entry = {e["name"]: e for e in kustomization["images"]}["cloudmic"]
    expected = f"{entry['newName']}:{entry['newTag']}"
    images = [c["image"] for _, c in _all_containers(built)]
    assert len(images) == 7 and set(images) == {expected}  # DaskJob/DaskCluster included
    for r in built:
        if r["kind"] != "Namespace":
            assert r["metadata"]["namespace"] == kustomization["namespace"], r["kind"]


# ------------------------------------------------------------------ SeaweedFS


def _seaweed_pod(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return _one(resources, "Deployment", "seaweedfs")["spec"]["template"]["spec"]


def _flags(args: list[str]) -> dict[str, str]:
    return dict((a.lstrip("-") + "=true").split("=", 2)[:2] if "=" not in a
                else a.lstrip("-").split("=", 1) for a in args if a.startswith("-"))


def _weed_command(weed: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """(global flags before the command, flags of `weed server`)."""
    args = weed["args"]
    at = args.index("server")
    return _flags(args[:at]), _flags(args[at + 1:])


def test_seaweedfs_runs_weed_server_with_s3_port_config_and_volume(
        resources: list[dict[str, Any]]) -> None:
    pod = _seaweed_pod(resources)
    (weed,) = pod["containers"]
    assert weed["command"] == ["weed"]
    global_flags, flags = _weed_command(weed)
    # ports explicit; no WebDAV, Iceberg, Lance, IAM API; master and filer HTTP APIs off
    for name in ("master", "volume", "filer", "s3"):
        assert flags[f"{name}.port"].isdigit(), name
    assert flags["filer"] == "true" and flags["s3"] == "true"
    assert flags["master.telemetry"] == "false" and flags["webdav"] == "false"
    assert flags["s3.port.iceberg"] == "0" and flags["s3.port.lance"] == "0"
    assert flags["s3.iam"] == "false"
    assert flags["disableHttp"] == "true" and flags["filer.disableHttp"] == "true"
    # only the S3 gateway on the pod network
    assert flags["ip"] == "127.0.0.1" and flags["ip.bind"] == "127.0.0.1"
    assert flags["s3.ip.bind"] == "0.0.0.0"
    assert not [k for k in flags if k.endswith(".port.public")]
    s3_port = int(flags["s3.port"])
    assert {p["name"]: p["containerPort"] for p in weed["ports"]} == {"s3": s3_port}
    # -s3.config is the file the init container writes, on a volume both mount
    init = {c["name"]: c for c in pod["initContainers"]}["s3-identities"]
    assert flags["s3.config"] == _env(init)["IDENTITIES_FILE"]["value"]
    # weed reads <config_dir>/security.toml, written by the same init container
    security = Path(_env(init)["SECURITY_FILE"]["value"])
    assert security.name == "security.toml"
    assert global_flags == {"config_dir": str(security.parent)}
    assert str(security.parent) == str(Path(flags["s3.config"]).parent)
    mounts = {m["mountPath"]: m["name"] for m in weed["volumeMounts"]}
    config_dir = str(Path(flags["s3.config"]).parent)
    assert mounts[config_dir] == {m["mountPath"]: m["name"]
                                  for m in init["volumeMounts"]}[config_dir]
    # -dir is on the PersistentVolumeClaim
    volumes = {v["name"]: v for v in pod["volumes"]}
    claim = volumes[mounts[flags["dir"]]]["persistentVolumeClaim"]["claimName"]
    assert _one(resources, "PersistentVolumeClaim", claim)
    # the Service reaches the S3 port
    service = _one(resources, "Service", "seaweedfs")
    labels = _one(resources, "Deployment", "seaweedfs")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(s3_port, "s3")]
    assert weed["readinessProbe"]["httpGet"]["port"] == "s3"


def test_network_policy_admits_only_s3_from_the_namespace(
        resources: list[dict[str, Any]]) -> None:
    policy = _one(resources, "NetworkPolicy", "seaweedfs")["spec"]
    labels = _one(resources, "Deployment", "seaweedfs")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    s3_port = int(_weed_command(_seaweed_pod(resources)["containers"][0])[1]["s3.port"])
    assert rule["ports"] == [{"protocol": "TCP", "port": s3_port}]
    assert rule["from"] == [{"podSelector": {}}]  # this namespace only, no ipBlock


def test_cors_rules_file_matches_what_cloudmic_sets() -> None:
    assert json.loads((K8S / "cors.json").read_text()) == seaweed.CORS_RULES


def _run_identities_script(resources: list[dict[str, Any]], tmp_path: Path,
                           **env: str) -> dict[str, Any]:
    init = {c["name"]: c for c in _seaweed_pod(resources)["initContainers"]}["s3-identities"]
    assert init["command"] == ["/bin/sh", "-c"]
    target = tmp_path / "s3.json"
    security = tmp_path / "security.toml"
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "IDENTITIES_FILE": str(target), "SECURITY_FILE": str(security), **env}
    out = subprocess.run(["/bin/sh", "-c", init["args"][0]], env=full_env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert (target.stat().st_mode & 0o077) == 0  # owner-only
    assert (security.stat().st_mode & 0o077) == 0
    return json.loads(target.read_text())


def test_identities_script_writes_fresh_jwt_keys(
        resources: list[dict[str, Any]], tmp_path: Path) -> None:
    keys = []
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        _run_identities_script(resources, tmp_path / run, AWS_ACCESS_KEY_ID="AK1",
                               AWS_SECRET_ACCESS_KEY="S1")
        config = tomllib.loads((tmp_path / run / "security.toml").read_text())
        sections = {"signing": config["jwt"]["signing"],
                    "signing.read": config["jwt"]["signing"]["read"],
                    "filer_signing": config["jwt"]["filer_signing"],
                    "filer_signing.read": config["jwt"]["filer_signing"]["read"]}
        for name, section in sections.items():
            assert re.fullmatch(r"[0-9a-f]{64}", section["key"]), name
        keys.append({section["key"] for section in sections.values()})
        assert len(keys[-1]) == 4
    assert not keys[0] & keys[1]  # new keys at every pod start


def test_identities_script_writes_the_config_weed_reads(
        resources: list[dict[str, Any]], tmp_path: Path) -> None:
    config = _run_identities_script(resources, tmp_path, AWS_ACCESS_KEY_ID="AK1",
                                    AWS_SECRET_ACCESS_KEY="s/e+c=ret")
    assert config == {"identities": [{
        "name": "cloudmic-admin",
        "credentials": [{"accessKey": "AK1", "secretKey": "s/e+c=ret"}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}
    full = _run_identities_script(resources, tmp_path, AWS_ACCESS_KEY_ID="AK1",
                                  AWS_SECRET_ACCESS_KEY="S1", READONLY_ACCESS_KEY_ID="RO",
                                  READONLY_SECRET_ACCESS_KEY="RS",
                                  PUBLIC_READ_BUCKETS="cloudmic,pub")
    names = [i["name"] for i in full["identities"]]
    assert names == ["cloudmic-admin", "cloudmic-readonly", "anonymous"]
    assert full["identities"][1]["actions"] == ["Read", "List"]
    assert full["identities"][2] == {"name": "anonymous", "actions": [
        "Read:cloudmic", "List:cloudmic", "Read:pub", "List:pub"]}


def test_identities_script_refuses_quotes(resources: list[dict[str, Any]],
                                          tmp_path: Path) -> None:
    init = {c["name"]: c for c in _seaweed_pod(resources)["initContainers"]}["s3-identities"]
    out = subprocess.run(["/bin/sh", "-c", init["args"][0]],
                         env={"PATH": os.environ.get("PATH", "/bin"),
                              "IDENTITIES_FILE": str(tmp_path / "s3.json"),
                              "AWS_ACCESS_KEY_ID": 'a"b', "AWS_SECRET_ACCESS_KEY": "x"},
                         capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "quotes" in out.stderr
    assert not (tmp_path / "s3.json").exists()


def _free_pair(used: set[int]) -> int:
    """A port P with P and P + 10000 free (weed binds gRPC on P + 10000)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 > 65535 or port in used:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair")


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_seaweedfs_template_flags_serve_s3_with_the_generated_identities(
        resources: list[dict[str, Any]], tmp_path: Path) -> None:
    """The container's own args (ports and paths swapped for free/local ones) on real weed."""
    import s3fs

    config = _run_identities_script(resources, tmp_path, AWS_ACCESS_KEY_ID="CMTESTADMIN",
                                    AWS_SECRET_ACCESS_KEY="admin-secret",
                                    PUBLIC_READ_BUCKETS="pub")
    assert config["identities"][0]["credentials"][0]["accessKey"] == "CMTESTADMIN"
    (weed,) = _seaweed_pod(resources)["containers"]
    data = tmp_path / "data"
    data.mkdir()
    ports: dict[str, int] = {}
    args = []
    for a in weed["args"]:
        key = a.lstrip("-").split("=", 1)[0]
        if key.endswith(".port") and key.count(".") == 1:
            ports[key] = _free_pair(set(ports.values()))
            a = f"-{key}={ports[key]}"
        elif key == "dir":
            a = f"-dir={data}"
        elif key == "s3.config":
            a = f"-s3.config={tmp_path / 's3.json'}"
        elif key == "config_dir":
            a = f"-config_dir={tmp_path}"
        elif key == "s3.ip.bind":  # the test reaches S3 on loopback like the Service would
            a = "-s3.ip.bind=127.0.0.1"
        args.append(a)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
    log = open(tmp_path / "weed.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([str(seaweed.weed_binary()), *args], stdout=log,
                            stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
                            start_new_session=True)
    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    try:
        admin = s3fs.S3FileSystem(key="CMTESTADMIN", secret="admin-secret",
                                  skip_instance_cache=True,
                                  client_kwargs={"endpoint_url": endpoint})
        deadline = time.monotonic() + 60
        while True:
            try:
                admin.pipe("pub/hello.txt", b"hello")
                break
            except Exception:
                assert proc.poll() is None, (tmp_path / "weed.log").read_text()[-3000:]
                if time.monotonic() > deadline:
                    raise
                admin.invalidate_cache()
                time.sleep(0.2)
        anon = s3fs.S3FileSystem(anon=True, skip_instance_cache=True,
                                 client_kwargs={"endpoint_url": endpoint})
        assert anon.cat("pub/hello.txt") == b"hello"  # PUBLIC_READ_BUCKETS
        wrong = s3fs.S3FileSystem(key="CMTESTADMIN", secret="not-the-secret",
                                  skip_instance_cache=True,
                                  client_kwargs={"endpoint_url": endpoint})
        with pytest.raises(PermissionError):
            wrong.pipe("pub/evil.txt", b"x")
        # the filer and volume HTTP ports refuse a direct write (JWT / HTTP API off)
        for name in ("filer.port", "volume.port", "master.port"):
            req = urllib.request.Request(
                f"http://127.0.0.1:{ports[name]}/buckets/pub/hello.txt", data=b"evil",
                method="POST", headers={"Content-Type": "application/octet-stream"})
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(req, timeout=10)
            assert err.value.code in (400, 401, 404), name
        assert admin.cat("pub/hello.txt") == b"hello"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()
        for port in ports.values():
            for number in (port, port + 10000):
                for sock in Path("/tmp").glob(f"seaweedfs-*-{number}.sock"):
                    sock.unlink(missing_ok=True)


def test_dask_workers_and_only_they_set_the_ingest_allocator(resources):
    """cloudmic.ingest.execute.MALLOC_ENV on every ``dask worker`` container (ingest units
    1.15-1.25x, the stream's dask path 1.17-1.24x), on no other container and not in the
    image: a training process with it streams 21-28% slower (bench/results/
    stream_malloc_ab.md)."""
    from cloudmic.ingest.execute import MALLOC_ENV

    workers = 0
    for where, c in _all_containers(resources):
        env = {name: e.get("value") for name, e in _env(c).items() if name in MALLOC_ENV}
        if c.get("args", [])[:2] == ["dask", "worker"]:
            workers += 1
            assert env == MALLOC_ENV, where
        else:
            assert not env, where
    assert workers >= 2  # the ingest job's workers and the notebook cluster's
    assert "MALLOC_" not in (DEPLOY / "Dockerfile").read_text().replace(
        "MALLOC_ENV", "")


# ------------------------------------------------------------------ Dockerfile and README


def test_dockerfile_installs_cloudmic_with_optional_torch() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11", text, re.M)
    assert 'ARG EXTRAS=""' in text
    assert 'pip install "/src[${EXTRAS}]"' in text and "pip install /src" in text
    torch_pin = next(d for d in tomllib.loads((ROOT / "pyproject.toml").read_text())
                     ["project"]["optional-dependencies"]["torch"] if d.startswith("torch=="))
    assert f"ARG TORCH_VERSION={torch_pin.removeprefix('torch==')}" in text
    assert "USER 1000" in text  # the templates' runAsUser / fsGroup
    for copied in ("pyproject.toml", "README.md", "manifests", "cloudmic"):
        assert (ROOT / copied).exists(), copied
        assert f"!{copied}" in (DEPLOY / "Dockerfile.dockerignore").read_text()


def test_readme_shows_the_real_commands() -> None:
    text = (DEPLOY / "README.md").read_text()
    for snippet in ("kubectl apply -k deploy/k8s",
                    f"kubectl -n cloudmic create secret generic {SECRET}",
                    "kustomize edit set image", "docker build -f deploy/Dockerfile",
                    "python deploy/local_stack.py up", "put-bucket-cors", "--scheduler"):
        assert snippet in text, snippet
