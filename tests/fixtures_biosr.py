"""BioSR fixtures: synthetic sources in both variants, a small-shard manifest, roots on
the local disk and on the real SeaweedFS server. Loaded by conftest.py."""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path

import pytest
import yaml

from cloudmic.manifest import manifests_dir
from cloudmic.storage.location import Location
from cloudmic.storage.versions import resolve
from cloudmic.synth.biosr import synth_biosr

SIZES = {"train": 40, "validate": 6, "test": 2}


@pytest.fixture(scope="session")
def biosr_sources(tmp_path_factory) -> dict[str, Path]:
    """Both published variants: uint16 with a 2x GT, float32 with a 1x GT."""
    out = {}
    for variant in ("uint16", "float32"):
        d = tmp_path_factory.mktemp(f"biosr-{variant}")
        synth_biosr(d, **SIZES, variant=variant, seed=1)
        out[variant] = d
    return out


@pytest.fixture
def biosr_copy(biosr_sources, tmp_path):
    """A private copy of a source tree that a test may damage."""

    def make(variant: str = "uint16") -> Path:
        dest = tmp_path / f"src-{variant}"
        shutil.copytree(biosr_sources[variant], dest)
        return dest / "BioSR" / "Microtubules"

    return make


@pytest.fixture(scope="session")
def small_manifest(tmp_path_factory) -> Path:
    """The shipped manifest with small shards, so a few dozen samples make several units."""
    raw = yaml.safe_load((manifests_dir() / "biosr.yaml").read_text())
    raw["storage"]["shard"]["sample"] = 8
    raw["webdataset"]["samples_per_shard"] = 16
    p = tmp_path_factory.mktemp("manifests") / "biosr.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def new_bucket(request, kind: str) -> str:
    """A fresh, empty bucket (container) on the session's server of ``kind``."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    if kind == "s3":
        request.getfixturevalue("s3_env")  # SeaweedFS makes a bucket on its first PUT
        return f"s3://{name}"
    request.getfixturevalue({"az": "az_env", "gs": "gcs_env"}[kind])
    url = f"{kind}://{name}"
    loc = Location.parse(url)
    loc.fs.mkdir(loc.path)  # Azure and GCS need the container (bucket) made first
    return url


@pytest.fixture(params=["local", "s3", "az"])
def root_url(request, tmp_path) -> str:
    """An empty publishing root: a local folder, or a fresh bucket on a real server
    (SeaweedFS for S3, Azurite for Azure)."""
    if request.param == "local":
        return str(tmp_path / "root")
    return new_bucket(request, request.param)


def snapshot(root_url: str) -> dict[str, str]:
    """sha256 of every published object under a root (staging excluded): the objects of each
    dataset's current version keyed as ``/<name>.zarr/...`` (as before versions existed), its
    pointer and version facts, and the root's other objects (local symlinks skipped)."""
    loc = Location.parse(root_url)
    if not loc.exists():
        return {}
    loc.fs.invalidate_cache()

    def digest(path: str) -> str:
        return hashlib.sha256(loc.fs.cat_file(path)).hexdigest()

    out = {}
    for p in loc.fs.find(loc.path):
        rel = p[len(loc.path):]
        if "/.cloudmic/" in p or ".releases/" in rel or os.path.islink(p):
            continue
        out[rel] = digest(p)
    for pointer in loc.fs.glob(f"{loc.path}/*.releases/current.json"):
        name = pointer.split("/")[-2].removesuffix(".releases")
        base = resolve(f"{loc.url}/{name}.zarr").base
        out[f"/{name}.releases/current.json"] = digest(pointer)
        for p in loc.fs.find(base.path):
            rel = p[len(base.path):]
            out[f"/{name}.releases{rel}" if rel == "/version.json" else rel] = digest(p)
    return out

# what carries the publish time or the version id, not the data
VOLATILE = ("catalog.json", "current.json", "/version.json")


def published_bytes(root_url: str) -> dict[str, str]:
    """:func:`snapshot` without what differs between two publishes of the same bytes."""
    return {k: v for k, v in snapshot(root_url).items() if not k.endswith(VOLATILE)}
