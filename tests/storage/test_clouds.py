"""Every object store a lab uses, against real servers: SeaweedFS (S3), Azurite (Azure Blob)
and fake-gcs-server (GCS). The same ingest publishes the same bytes on each; plain xarray,
the CLI and the readers work on each; a destination the credentials cannot write is refused
with nothing published; no credential is written into a store or a log."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import cloudmic
from cloudmic.catalog.html import catalog_facts
from cloudmic.client.describe import info, list_root
from cloudmic.errors import StoreError
from cloudmic.ingest import ingest
from cloudmic.ingest.verify import verify_dataset
from cloudmic.storage.backends import backend_for, parse_connection_string
from cloudmic.storage.location import Location
from cloudmic.synth.sted_fm import synth_sted_fm
from fixtures_biosr import new_bucket, published_bytes

pytestmark = pytest.mark.e2e


def _secrets(kind: str, env: dict[str, str]) -> list[str]:
    if kind == "s3":
        return [env["AWS_SECRET_ACCESS_KEY"]]
    if kind == "az":
        return [parse_connection_string(env["AZURE_STORAGE_CONNECTION_STRING"])["AccountKey"]]
    return []


def _all_bytes(root: str) -> bytes:
    loc = Location.parse(root)
    return b"".join(loc.fs.cat_file(p) for p in loc.fs.find(loc.path))


@pytest.fixture(scope="module")
def sted_src(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("sted-src")
    synth_sted_fm(src, crops=10, unlabelled=2, variant="uint16", seed=5)
    return src


@pytest.mark.parametrize("dataset", ["biosr", "sted-fm"])
def test_s3_and_azure_publish_byte_identical_stores(dataset, request, biosr_sources,
                                                    small_manifest, sted_src, caplog):
    src = biosr_sources["uint16"] if dataset == "biosr" else sted_src
    manifest = str(small_manifest) if dataset == "biosr" else "sted-fm"
    roots = {kind: new_bucket(request, kind) for kind in ("s3", "az")}
    with caplog.at_level("DEBUG"):
        for root in roots.values():
            ingest(manifest, src, root)
    s3, az = (published_bytes(roots[k]) for k in ("s3", "az"))
    assert s3 and s3 == az, sorted(set(s3.items()) ^ set(az.items()))[:4]
    for kind, root in roots.items():
        env = request.getfixturevalue({"s3": "s3_env", "az": "az_env"}[kind])
        stored = _all_bytes(root)
        for secret in _secrets(kind, env):
            assert secret.encode() not in stored and secret not in caplog.text
        loc = Location.parse(root)  # the checksum the pre-publish verify reads from a listing
        tars = {p: i for p, i in loc.fs.find(loc.path, detail=True).items()
                if p.endswith(".tar")}
        assert tars and all(loc.stored_md5(i) == hashlib.md5(loc.fs.cat_file(p)).hexdigest()
                            for p, i in tars.items())


def test_plain_xarray_reads_an_azure_store(request, biosr_sources, small_manifest, tmp_path):
    """``xr.open_datatree("az://...", storage_options=...)`` with adlfs, as a notebook would,
    reads the same values as from a local root."""
    root = new_bucket(request, "az")
    ingest(str(small_manifest), biosr_sources["uint16"], root)
    ingest(str(small_manifest), biosr_sources["uint16"], str(tmp_path / "local"))
    loc = Location.parse(root)
    url = list_root(root)["datasets"]["biosr"]["url"]  # the immutable version URL
    assert url.startswith(root + "/")
    tree = xr.open_datatree(url, engine="zarr", consolidated=True,
                            storage_options=loc.xarray_storage_options())
    local = cloudmic.open(str(tmp_path / "local" / "biosr.zarr"))
    for group in ("train", "validate"):
        for var in ("wf", "gt"):
            assert np.array_equal(tree[group].ds[var].values, local[group].ds[var].values)


@pytest.mark.parametrize("kind", ["s3", "az"])
def test_a_destination_the_credentials_cannot_write(kind, request, biosr_sources,
                                                    small_manifest):
    """Keys that may only read (S3) or a wrong account key (Azure): refused before any work,
    naming the URL and what to set, and the bucket keeps what it held."""
    root = new_bucket(request, kind)
    ingest(str(small_manifest), biosr_sources["uint16"], root)
    before = published_bytes(root)
    if kind == "s3":
        refused = request.getfixturevalue("s3_server").storage_options(readonly=True)
        hint = "AWS_ACCESS_KEY_ID"
    else:
        cs = request.getfixturevalue("az_env")["AZURE_STORAGE_CONNECTION_STRING"]
        refused = {"connection_string": cs.replace(parse_connection_string(cs)["AccountKey"],
                                                   "d3Jvbmcta2V5" * 4)}
        hint = "AZURE_STORAGE_CONNECTION_STRING"
    with pytest.raises(StoreError) as err:
        ingest(str(small_manifest), biosr_sources["uint16"], root, storage_options=refused)
    assert root in str(err.value) and hint in str(err.value)
    assert published_bytes(root) == before


def test_cli_on_azure_ls_info_verify_catalog(request, biosr_sources, small_manifest, tmp_path):
    """The CLI, as a user runs it with AZURE_STORAGE_CONNECTION_STRING exported."""
    root = new_bucket(request, "az")
    env = request.getfixturevalue("az_env")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cloudmic.cli", *args], text=True,
                              capture_output=True, timeout=600)

    ing = cli("ingest", str(small_manifest), "--source", str(biosr_sources["uint16"]),
              "--dest", root)
    assert ing.returncode == 0, ing.stderr[-2000:]
    ls = cli("ls", root, "--json")
    assert ls.returncode == 0, ls.stderr
    assert "biosr" in json.loads(ls.stdout)["datasets"]
    inf = cli("info", f"{root}/biosr.zarr")
    assert inf.returncode == 0 and "AZURE_STORAGE_CONNECTION_STRING" in inf.stdout, inf.stderr
    ver = cli("verify", f"{root}/biosr.zarr")
    assert ver.returncode == 0, ver.stderr
    cat = cli("catalog", root, "--html", str(tmp_path / "site"), "--json")
    assert cat.returncode == 0, cat.stderr
    secret = _secrets("az", env)[0]
    for proc in (ing, ls, inf, ver, cat):
        assert secret not in proc.stdout + proc.stderr
    assert secret not in (tmp_path / "site" / "index.html").read_text()


# ---- GCS ------------------------------------------------------------------------------------
def _upload_tree(local: Path, root: str) -> None:
    """Copy a local root's objects (not its stable-name symlinks) to a bucket: the layout an
    object-store publish writes."""
    loc = Location.parse(root)
    for f in sorted(local.rglob("*")):
        if f.is_file() and not any(p.is_symlink() for p in [f, *f.parents]):
            loc.fs.put_file(str(f), f"{loc.path}/{f.relative_to(local).as_posix()}")


def test_gcs_root_reads_through_every_entry_point(request, biosr_sources, small_manifest,
                                                  tmp_path):
    """A root on GCS (fake-gcs-server): cloudmic.open, PatchStream, shards, ls, info and
    verify read it through obstore's GCS client and gcsfs. The emulator does not serve the
    XML API's PUT that obstore writes with, so the root is uploaded with gcsfs (JSON API)."""
    root = new_bucket(request, "gs")
    local = tmp_path / "local"
    ingest(str(small_manifest), biosr_sources["uint16"], str(local))
    _upload_tree(local, root)
    assert published_bytes(root) == published_bytes(str(local))
    tree = cloudmic.open(f"{root}/biosr.zarr")
    ref = cloudmic.open(str(local / "biosr.zarr"))
    assert np.array_equal(tree["train"].ds["wf"].values, ref["train"].ds["wf"].values)
    for pipeline in ("zarrs", "default"):
        stream = cloudmic.PatchStream(f"{root}/biosr.zarr", "train", ["wf"], {"y": 16, "x": 16},
                                      seed=1, codec_pipeline=pipeline)
        keys = [it["__key__"] for it in stream]
        assert len(keys) == len(set(keys)) == 40
    shares = [list(cloudmic.shards(f"{root}/biosr.wds", "train", rank=r, world_size=3))
              for r in range(3)]
    assert {len(x) for x in shares} == {14}
    assert len({it["__key__"] for x in shares for it in x}) == 40
    assert "biosr" in list_root(root)["datasets"]
    assert info(f"{root}/biosr.zarr")["dataset"] == "biosr"
    report = verify_dataset(Location.parse(root), "biosr")
    assert report.ok, report.problems
    facts = catalog_facts(root)
    assert not facts["datasets"]["biosr"]["problems"]
    assert "\"token\": \"anon\"" in facts["datasets"]["biosr"]["snippets"]["xarray"]


def test_sted_fm_archives_are_read_in_place_from_azure(request, sted_src, tmp_path):
    """An archive prefix on Azure as the source: members read by byte range, published to
    Azure, the same bytes as from the local archives."""
    src = new_bucket(request, "az")
    loc = Location.parse(src)
    for tar in sorted(sted_src.glob("*.tar")):
        loc.fs.put_file(str(tar), f"{loc.path}/archives/{tar.name}")
    dest = new_bucket(request, "az")
    ingest("sted-fm", f"{src}/archives", dest)
    ingest("sted-fm", sted_src, str(tmp_path / "local"))
    remote, local = published_bytes(dest), published_bytes(str(tmp_path / "local"))
    root_meta = "/sted-fm.zarr/zarr.json"  # records where the source was read from
    assert {k: v for k, v in remote.items() if k != root_meta} == {
        k: v for k, v in local.items() if k != root_meta}
    a, b = (cloudmic.open(u).attrs["cloudmic"] for u in (f"{dest}/sted-fm.zarr",
                                                         f"{tmp_path}/local/sted-fm.zarr"))
    assert {k for k in a if a[k] != b[k]} <= {"source", "run_id"}


def test_backend_table_names_each_cloud_and_its_credentials():
    for url, env_var in (("s3://b/p", "AWS_ACCESS_KEY_ID"),
                         ("az://c/p", "AZURE_STORAGE_CONNECTION_STRING"),
                         ("gs://b/p", "GOOGLE_APPLICATION_CREDENTIALS")):
        assert env_var in backend_for(url).credentials_hint
    with pytest.raises(StoreError, match="az://"):
        backend_for("ftp://host/x")


def test_s3_compatible_endpoints_path_or_virtual_hosted_and_regions(monkeypatch):
    """Options as s3fs takes them reach obstore's client too: path-style by default on a
    custom endpoint, virtual-hosted when asked, the region from the options or AWS_REGION."""
    for var in ("AWS_ACCESS_KEY_ID", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(var, raising=False)
    opts = {"key": "k", "secret": "s", "client_kwargs": {"endpoint_url": "http://h:9000"}}
    store = Location.parse("s3://bkt/p", **opts).object_store()
    assert str(store.config["virtual_hosted_style_request"]).lower() == "false"
    assert store.config["endpoint"] == "http://h:9000" and str(store.prefix) == "p"
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    virtual = Location.parse("s3://bkt", **opts, config_kwargs={"s3": {
        "addressing_style": "virtual"}}).object_store()
    assert str(virtual.config["virtual_hosted_style_request"]).lower() == "true"
    assert virtual.config["region"] == "eu-central-1"
    regional = Location.parse("s3://bkt", key="k", secret="s", client_kwargs={
        "region_name": "us-west-2"}).object_store()
    assert regional.config["region"] == "us-west-2" and "endpoint" not in regional.config


def test_azure_and_gcs_credentials_follow_each_clouds_conventions(monkeypatch):
    for var in ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT_NAME",
                "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_SAS_TOKEN",
                "GOOGLE_APPLICATION_CREDENTIALS", "STORAGE_EMULATOR_HOST"):
        monkeypatch.delenv(var, raising=False)
    cs = "AccountName=acc;AccountKey=a2V5==;BlobEndpoint=http://h:1/acc"
    assert parse_connection_string(cs)["AccountKey"] == "a2V5=="  # '=' inside a value
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", cs)
    assert Location.parse("az://cnt").storage_options == {"connection_string": cs}
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING")
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_NAME", "acc")
    assert Location.parse("az://cnt").storage_options == {"account_name": "acc", "anon": True}
    monkeypatch.setenv("AZURE_STORAGE_SAS_TOKEN", "sv=1&sig=secret")
    loc = Location.parse("az://cnt/p")
    assert loc.storage_options == {"account_name": "acc", "sas_token": "sv=1&sig=secret"}
    snippet = "\n".join(loc.backend.snippet_lines(loc.storage_options))
    assert "AZURE_STORAGE_SAS_TOKEN" in snippet and "secret" not in snippet
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", "a2V5")  # a key wins over a SAS token
    assert Location.parse("az://cnt").storage_options["account_key"] == "a2V5"
    assert Location.parse("az://cnt", anon=True).storage_options == {"anon": True}  # caller's
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/keys/sa.json")
    assert Location.parse("GS://bkt/p").url == "gs://bkt/p"
    assert Location.parse("gs://bkt").storage_options == {"token": "/keys/sa.json"}
    assert Location.parse("gs://bkt", token="anon").storage_options == {"token": "anon"}
    with pytest.raises(StoreError, match="needs a bucket"):
        Location.parse("az://")
