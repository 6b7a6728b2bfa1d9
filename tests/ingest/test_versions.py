"""Immutable, versioned publishes (ADR 0007): a reader never sees a mix of two versions or
none, whatever moment the publisher dies, locally and on the real S3 server."""

from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import cloudmic
import cloudmic.ingest.publish as publish_mod
from cloudmic.cli import main
from cloudmic.client.describe import info, list_root
from cloudmic.errors import StoreNotFoundError
from cloudmic.ingest import ingest
from cloudmic.ingest.gc import collect
from cloudmic.ingest.verify import verify_dataset
from cloudmic.storage.catalog_json import read_catalog
from cloudmic.storage.location import Location
from cloudmic.storage.versions import list_versions, new_version_id, read_pointer, resolve
from counting_proxy import CountingProxy


def _dtypes(url: str, version: str | None = None, **opts) -> tuple[str, str]:
    ds = cloudmic.open(url, version, storage_options=opts)["train"].ds
    return str(ds["wf"].dtype), str(ds["gt"].dtype)


def test_republish_keeps_the_old_version_readable_and_pinnable(root_url, biosr_sources,
                                                               small_manifest, capsys):
    a = ingest(str(small_manifest), biosr_sources["uint16"], root_url)
    b = ingest(str(small_manifest), biosr_sources["float32"], root_url)
    root = Location.parse(root_url)
    assert a.version != b.version and list_versions(root, "biosr") == [a.version, b.version]
    assert read_pointer(root, "biosr")["version"] == b.version
    assert read_catalog(root)["datasets"]["biosr"]["version"] == b.version
    url = f"{root_url}/biosr.zarr"
    assert _dtypes(url) == ("float32", "float32")
    assert _dtypes(url, version=a.version) == ("uint16", "uint16")
    assert _dtypes(a.url) == ("uint16", "uint16")  # a version URL pins it too
    # plain xarray opens the URL `cloudmic ls` prints (the current version's)
    listed = list_root(root_url)["datasets"]["biosr"]
    assert listed["url"] == b.url and listed["versions"] == [a.version, b.version]
    plain = xr.open_datatree(listed["url"], engine="zarr",
                             storage_options=root.xarray_storage_options())
    assert plain["train"].ds["wf"].dtype == np.float32
    # streams pin the version they resolved, and their state records it
    pinned = cloudmic.PatchStream(url, "train", ["wf"], {"y": 16, "x": 16},
                                  version=a.version, shuffle=False)
    assert next(iter(pinned))["wf"].dtype == np.uint16
    state = pinned.state_dict()
    assert state["dataset_version"] == a.version
    with pytest.raises(ValueError, match=f"version={a.version!r}"):
        cloudmic.PatchStream(url, "train", ["wf"], {"y": 16, "x": 16}).load_state_dict(state)
    shard_stream = cloudmic.shards(url, "train", version=a.version)
    assert next(iter(shard_stream))["wf"].dtype == np.uint16
    assert shard_stream.state_dict()["dataset_version"] == a.version
    assert main(["ls", root_url]) == 0
    out = capsys.readouterr().out
    assert b.url in out and f"version {b.version} (current)" in out and a.version in out


def test_gc_keeps_current_and_removes_superseded_after_grace(root_url, biosr_sources,
                                                             small_manifest):
    a = ingest(str(small_manifest), biosr_sources["uint16"], root_url)
    b = ingest(str(small_manifest), biosr_sources["float32"], root_url)
    root = Location.parse(root_url)
    assert collect(root_url, keep=1).removed == [], collect(root_url, keep=1).removed
    dry = collect(root_url, keep=1, grace=__import__("datetime").timedelta(0), dry_run=True)
    assert [u.rsplit("/", 1)[-1] for u in dry.removed] == [a.version]
    assert list_versions(root, "biosr") == [a.version, b.version]
    assert main(["gc", root_url, "--keep", "1", "--grace", "0"]) == 0
    assert list_versions(root, "biosr") == [b.version]
    with pytest.raises(StoreNotFoundError, match="cloudmic gc"):
        cloudmic.open(f"{root_url}/biosr.zarr", version=a.version)
    assert _dtypes(f"{root_url}/biosr.zarr") == ("float32", "float32")


def test_local_publisher_dying_before_the_pointer_leaves_the_old_version(tmp_path,
                                                                       biosr_sources,
                                                                       small_manifest,
                                                                       monkeypatch):
    root = tmp_path / "root"
    a = ingest(str(small_manifest), biosr_sources["uint16"], str(root))
    real = publish_mod.pointer_location

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(publish_mod, "pointer_location", full_disk)
    with pytest.raises(OSError):
        ingest(str(small_manifest), biosr_sources["float32"], str(root))
    assert _dtypes(str(root / "biosr.zarr")) == ("uint16", "uint16")
    assert os.readlink(root / "biosr.zarr").startswith(f"biosr.releases/{a.version}/")
    assert main(["verify", str(root / "biosr.zarr")]) == 0
    # the stopped run got as far as its version.json: that version is complete, never
    # current, and never written again; the same command publishes a new one
    (orphan,) = set(list_versions(Location.parse(str(root)), "biosr")) - {a.version}
    facts = (root / "biosr.releases" / orphan / "version.json").read_bytes()
    monkeypatch.setattr(publish_mod, "pointer_location", real)
    b = ingest(str(small_manifest), biosr_sources["float32"], str(root))
    assert b.version not in (a.version, orphan)
    assert (root / "biosr.releases" / orphan / "version.json").read_bytes() == facts
    assert _dtypes(str(root / "biosr.zarr")) == ("float32", "float32")
    assert list_versions(Location.parse(str(root)), "biosr") == sorted([a.version, orphan,
                                                                        b.version])


@pytest.mark.parametrize("commit", [r"version\.json", r"current\.json"])
def test_s3_answering_500_mid_publish_leaves_the_old_version(s3_server, biosr_sources,
                                                             small_manifest, commit):
    """The issue's case: publish A, then B's publish meets a 500 on its version's facts or
    on the pointer; the same command then publishes B."""
    bucket = f"s3://v-{uuid.uuid4().hex[:10]}"
    opts = s3_server.storage_options()
    a = ingest(str(small_manifest), biosr_sources["uint16"], bucket, storage_options=opts)
    with CountingProxy(s3_server.endpoint) as proxy:
        proxy.fail("PUT", rf"\.releases/.*{commit}$", 500)
        via = {**opts, "client_kwargs": {"endpoint_url": proxy.url}}
        with pytest.raises(Exception):  # noqa: B017 - whatever the S3 client raises
            ingest(str(small_manifest), biosr_sources["float32"], bucket, storage_options=via)
        assert any(r.status == 500 for r in proxy.requests)
    url = f"{bucket}/biosr.zarr"
    assert _dtypes(url, **opts) == ("uint16", "uint16")
    root = Location.parse(bucket, **opts)
    assert read_catalog(root)["datasets"]["biosr"]["version"] == a.version
    assert verify_dataset(root, "biosr").ok
    b = ingest(str(small_manifest), biosr_sources["float32"], bucket, storage_options=opts)
    assert _dtypes(url, **opts) == ("float32", "float32")
    assert read_pointer(root, "biosr")["version"] == b.version


def test_units_write_into_an_unlisted_version_that_a_resumed_run_fills(
        tmp_path, biosr_sources, small_manifest, monkeypatch):
    """ADR 0010: no copy at publish; the version being written is neither listed nor
    readable, and a resumed run goes on filling the same one."""
    root = tmp_path / "root"
    a = ingest(str(small_manifest), biosr_sources["uint16"], str(root))
    seen = {}
    real_publish = publish_mod.publish

    def stop_before_publishing(staging, parts, facts):
        seen["version"] = staging.version
        assert staging.zarr.child("zarr.json").exists()
        assert list_versions(Location.parse(str(root)), "biosr") == [a.version]
        with pytest.raises(StoreNotFoundError, match="no complete version"):
            resolve(staging.zarr.url)
        raise KeyboardInterrupt  # stopped: the units are done, nothing published

    monkeypatch.setattr("cloudmic.ingest.run.publish", stop_before_publishing)
    with pytest.raises(KeyboardInterrupt):
        ingest(str(small_manifest), biosr_sources["float32"], str(root))
    assert _dtypes(str(root / "biosr.zarr")) == ("uint16", "uint16")
    monkeypatch.setattr("cloudmic.ingest.run.publish", real_publish)
    b = ingest(str(small_manifest), biosr_sources["float32"], str(root))
    assert b.version == seen["version"]
    assert list_versions(Location.parse(str(root)), "biosr") == [a.version, b.version]
    assert not any((root / ".cloudmic" / "staging").iterdir())


def test_gc_counts_versions_from_their_publication_and_incomplete_ones_from_their_last_write(
        tmp_path, biosr_sources, small_manifest):
    root = tmp_path / "root"
    a = ingest(str(small_manifest), biosr_sources["uint16"], str(root))
    b = ingest(str(small_manifest), biosr_sources["float32"], str(root))
    # an ingest that started long ago and is still writing its version
    started = new_version_id(datetime.now(UTC) - timedelta(days=3))
    busy = root / "biosr.releases" / started / "biosr.wds"
    busy.mkdir(parents=True)
    (busy / "train-000000.tar").write_bytes(b"being written")
    # a superseded version whose successor *started* days ago but was published just now
    facts = json.loads((root / "biosr.releases" / b.version / "version.json").read_bytes())
    assert datetime.fromisoformat(facts["published"]) > datetime.now(UTC) - timedelta(hours=1)
    kept = collect(str(root), keep=1, grace=timedelta(hours=1), dry_run=True)
    assert kept.removed == [], kept.removed
    gone = collect(str(root), keep=1, grace=timedelta(0), dry_run=True)
    assert sorted(u.rsplit("/", 1)[-1] for u in gone.removed) == sorted([a.version, started])


def test_dataset_urls_resolve_the_same_everywhere(tmp_path, biosr_sources, small_manifest):
    root = tmp_path / "root"
    a = ingest(str(small_manifest), biosr_sources["uint16"], str(root))
    for url in (root / "biosr.zarr", root / "biosr.wds", root / "biosr.wds" / "index.json",
                a.url):
        ds = resolve(str(url))
        assert (ds.name, ds.version) == ("biosr", a.version)
        assert Path(ds.zarr.path) == root / "biosr.releases" / a.version / "biosr.zarr"
    with pytest.raises(StoreNotFoundError, match="not a dataset URL"):
        resolve(str(root / "nothing"))
    # every fact `info` shows is one the publisher wrote (ADR 0005 renamed `created`)
    facts = info(str(root / "biosr.zarr"))
    assert facts["published"] == read_pointer(Location.parse(str(root)), "biosr")["published"]
    assert facts["version"] == a.version and facts["title"] and facts["license"]
    with pytest.warns(DeprecationWarning, match="storage_options"):
        cloudmic.open(str(root / "biosr.zarr"), auto_mkdir=False)
    with pytest.raises(StoreNotFoundError, match="no complete version"):
        resolve(str(root / "biosr.zarr"), version="20000101T000000000000Z-abcdef")
