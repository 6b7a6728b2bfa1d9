"""`cloudmic ingest biosr --fetch`: the repository's archive, as GitHub serves it (a redirect
to codeload, one top folder ``biosr_dataset-main/`` beside the README), is downloaded with
resume, unpacked into the cache and ingested; an archive of Git LFS pointers is refused
with the fix."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
import zarr

from cloudmic.manifest import load_manifest, manifests_dir
from cloudmic.synth import get_generator
from tests.sources.conftest import zip_tree

ARCHIVE = "DeepTrackAI/biosr_dataset/archive/refs/heads/main.zip"
CODELOAD = "codeload/DeepTrackAI/biosr_dataset/zip/refs/heads/main"


def _repository_zip(tmp_path: Path, *, lfs: bool = False) -> tuple[Path, bytes]:
    """The synthetic BioSR tree laid out as GitHub zips the repository."""
    top = tmp_path / "repo" / "biosr_dataset-main"
    get_generator("biosr")(top, train=6, validate=2, test=1, variant="float32")
    (top / "README.md").write_text("# BioSR Dataset (biosr_dataset)\n")
    if lfs:  # what an archive without LFS objects holds in place of each image
        for tif in (top / "BioSR").rglob("*.tif"):
            tif.write_text("version https://git-lfs.github.com/spec/v1\n"
                           "oid sha256:" + "0" * 64 + "\nsize 65750\n")
    out = tmp_path / "main.zip"
    zip_tree(tmp_path / "repo", out)
    return top, out.read_bytes()


def _manifest(tmp_path: Path, url: str) -> str:
    """The shipped BioSR manifest with its download pointed at the local server."""
    doc = yaml.safe_load((manifests_dir() / "biosr.yaml").read_text())
    shipped = load_manifest("biosr").source.downloads[0]
    assert shipped.url == "https://github.com/" + ARCHIVE  # the test serves that shape
    doc["source"]["downloads"][0]["url"] = url
    path = tmp_path / "biosr.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    return str(path)


def _fetch(tmp_path: Path, manifest: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cloudmic.cli", "ingest", manifest, "--fetch", "--cache",
         str(tmp_path / "cache"), "--dest", str(tmp_path / "root"), "--in-process", "--json",
         "-q"], capture_output=True, text=True, timeout=300)


def test_fetch_downloads_the_repository_archive_resumes_and_ingests(http_server, tmp_path):
    top, data = _repository_zip(tmp_path)
    http_server.serve(CODELOAD, data, drop_after=len(data) // 3, drops=1)
    http_server.serve(ARCHIVE, b"", redirect_to=CODELOAD)
    out = _fetch(tmp_path, _manifest(tmp_path, http_server.url(ARCHIVE)))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["groups"] == {"train": 6, "validate": 2, "test": 1}
    assert any(h.range for h in http_server.gets(CODELOAD))  # the cut download resumed
    g = zarr.open_group(tmp_path / "root" / "biosr.zarr", path="train", mode="r")
    want = tifffile.imread(top / "BioSR/Microtubules/training_wf/00000003.tif")
    assert np.array_equal(g["wf"][2], want)


def test_an_archive_of_lfs_pointers_is_refused_with_the_fix(http_server, tmp_path):
    _, data = _repository_zip(tmp_path, lfs=True)
    url = http_server.serve("lfs/main.zip", data)
    out = _fetch(tmp_path, _manifest(tmp_path, url))
    assert out.returncode == 2
    assert "Git LFS pointer" in out.stderr and "git lfs pull" in out.stderr
    assert not (tmp_path / "root" / "biosr.zarr").exists()


@pytest.mark.parametrize("nested", ["biosr_dataset", "biosr_dataset-main"])
def test_a_checkout_folder_is_found_one_level_down(tmp_path, nested):
    from cloudmic.datasets import get_adapter

    get_generator("biosr")(tmp_path / nested, train=2, validate=1, test=1)
    root = get_adapter(load_manifest("biosr")).find_root(tmp_path)
    assert root == tmp_path / nested / "BioSR" / "Microtubules"
