"""Hosting for a lab: a ``--public-read`` bucket's datasets open over plain HTTP with no
keys, through cloudmic (open, PatchStream, shards) and plain xarray."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import cloudmic
from cloudmic.errors import StoreError
from cloudmic.ingest import ingest
from cloudmic.storage import seaweed
from cloudmic.storage.location import Location

BUCKET = "pub-lab"


@pytest.fixture(scope="module")
def public(tmp_path_factory, small_manifest, biosr_sources):
    data = tmp_path_factory.mktemp("public-store")
    info = seaweed.up(data, public_read=(BUCKET,))
    try:
        opts = info.storage_options()
        report = ingest(str(small_manifest), biosr_sources["uint16"], f"s3://{BUCKET}",
                        storage_options=opts)
        yield f"{info.endpoint}/{BUCKET}", report
    finally:
        seaweed.down(data)


def test_anonymous_https_readers_open_stream_and_read_shards(public, monkeypatch):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)  # no keys anywhere
    base, report = public
    url = f"{base}/biosr.zarr"
    tree = cloudmic.open(url)
    assert tree.attrs["dataset_version"] == report.version
    wf = tree["train"].ds["wf"][0].values
    stream = cloudmic.PatchStream(url, "train", ["wf", "gt"], {"y": 16, "x": 16}, shuffle=False)
    items = list(stream)
    assert len(items) == len(stream) == 40 and items[0]["wf"].dtype == np.uint16
    records = list(cloudmic.shards(url, "train"))
    assert len(records) == 40
    first = next(r for r in records if r["json"]["zarr"]["sample"] == 0)
    assert np.array_equal(first["wf"], wf)
    # plain xarray, no cloudmic: the version URL over HTTP
    version_url = f"{base}/biosr.releases/{report.version}/biosr.zarr"
    plain = xr.open_datatree(version_url, engine="zarr", consolidated=True)
    assert np.array_equal(plain["train"].ds["wf"][0].values, wf)


def test_http_roots_are_read_only():
    loc = Location.parse("https://example.org/bucket/biosr.zarr")
    assert loc.is_http and not loc.is_local
    with pytest.raises(StoreError, match="read-only"):
        loc.write_bytes(b"x")
