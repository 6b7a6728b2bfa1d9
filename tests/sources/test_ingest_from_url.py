"""`cloudmic ingest DATASET --source https://...zip`: the official download is fetched with
resume and checksums, unpacked into the cache and ingested; a bad download publishes
nothing."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import yaml
import zarr

from cloudmic.errors import SourceError
from cloudmic.ingest import ingest
from cloudmic.manifest import manifests_dir

NAME = "images_and_labels_json.zip"


def _manifest(tmp_path, url: str, md5: str) -> str:
    """The shipped platelet-em manifest with its download pointed at the local server."""
    doc = yaml.safe_load((manifests_dir() / "platelet-em.yaml").read_text())
    doc["source"]["downloads"] = [{"url": url, "md5": md5}]
    path = tmp_path / "platelet-em.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_a_download_cut_mid_file_resumes_and_ingests(http_server, platelet_zip, tmp_path,
                                                     monkeypatch):
    data = platelet_zip.zip_path.read_bytes()
    url = http_server.serve(NAME, data, drop_after=len(data) // 3, drops=1)
    monkeypatch.setenv("CLOUDMIC_CACHE", str(tmp_path / "cache"))
    manifest = _manifest(tmp_path, url, hashlib.md5(data).hexdigest())
    ingest(manifest, url, str(tmp_path / "root"))
    assert any(h.range for h in http_server.gets(NAME))  # the second request resumed
    g = zarr.open_group(tmp_path / "root" / "platelet-em.zarr", path="24", mode="r")
    src = tifffile.imread(platelet_zip.tree / "platelet-em" / "images" / "24-images.tif")
    assert np.array_equal(g["0/image"][...], src)


def test_a_corrupted_byte_fails_the_checksum_and_publishes_nothing(http_server, platelet_zip,
                                                                   tmp_path, monkeypatch):
    data = platelet_zip.zip_path.read_bytes()
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0x01
    url = http_server.serve(NAME, bytes(bad))
    monkeypatch.setenv("CLOUDMIC_CACHE", str(tmp_path / "cache"))
    manifest = _manifest(tmp_path, url, hashlib.md5(data).hexdigest())
    with pytest.raises(SourceError, match="md5") as err:
        ingest(manifest, url, str(tmp_path / "root"))
    assert url in str(err.value)
    assert not (tmp_path / "root" / "platelet-em.zarr").exists()


def test_cli_fetch_uses_the_manifest_downloads(http_server, platelet_zip, tmp_path):
    data = platelet_zip.zip_path.read_bytes()
    url = http_server.serve(NAME, data)
    manifest = _manifest(tmp_path, url, hashlib.md5(data).hexdigest())
    out = subprocess.run([sys.executable, "-m", "cloudmic.cli", "ingest", manifest, "--fetch",
                          "--cache", str(tmp_path / "cache"), "--dest", str(tmp_path / "root"),
                          "--in-process", "--json", "-q"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["groups"] == {"24": 4, "50": 8}
