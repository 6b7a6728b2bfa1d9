"""Concurrent writers of catalog.json lose no entry: a lock locally, conditional PUTs
(If-Match / If-None-Match) on the real S3 server."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest

from cloudmic.storage.catalog_json import read_catalog, update_catalog
from cloudmic.storage.location import Location

UPDATES = 100
WRITER = """
import sys
from cloudmic.storage.catalog_json import update_catalog
from cloudmic.storage.location import Location
root = Location.parse(sys.argv[1])
for k in range(int(sys.argv[3])):
    update_catalog(root, f"{sys.argv[2]}-{k}", {"zarr": f"{sys.argv[2]}-{k}.zarr"})
"""


@pytest.fixture(params=["local", "s3"])
def catalog_root(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "root")
    request.getfixturevalue("s3_env")  # AWS_* for this process and the writers
    url = f"s3://c-{uuid.uuid4().hex[:12]}"
    loc = Location.parse(url)
    loc.fs.mkdir(loc.path)
    return url


def test_two_processes_updating_the_catalog_lose_nothing(catalog_root):
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, catalog_root, who, str(UPDATES)])
               for who in ("a", "b")]
    assert [w.wait(300) for w in writers] == [0, 0]
    entries = read_catalog(Location.parse(catalog_root))["datasets"]
    assert len(entries) == 2 * UPDATES
    assert entries["b-99"] == {"zarr": "b-99.zarr"}


def test_removing_an_entry_and_a_damaged_catalog(tmp_path):
    root = Location.parse(str(tmp_path))
    update_catalog(root, "x", {"zarr": "x.zarr"})
    update_catalog(root, "y", {"zarr": "y.zarr"})
    update_catalog(root, "x", None)
    assert list(read_catalog(root)["datasets"]) == ["y"]
    (tmp_path / "catalog.json").write_text(json.dumps({"datasets": {"z": {"zarr": 3}}}))
    with pytest.raises(OSError, match="catalog.json: the entry of 'z' has no 'zarr' URL"):
        read_catalog(root)
    with pytest.raises(OSError, match="re-run the ingest of z"):
        update_catalog(root, "w", {"zarr": "w.zarr"})
