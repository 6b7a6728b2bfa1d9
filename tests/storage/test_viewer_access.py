"""Browser viewers: a public-read bucket of the embedded store answers cross-origin Range
requests, and the ome-zarr Reader opens a published image group over plain HTTP."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from cloudmic.ingest import ingest
from cloudmic.storage import root_layout as rl
from cloudmic.storage import seaweed
from cloudmic.synth.platelet_em import synth_platelet_em
from ngff_check import reader_nodes

BUCKET = "viewer"
ORIGIN = "http://viewer.example"


@pytest.fixture(scope="module")
def public_store(tmp_path_factory) -> Iterator[seaweed.ServerInfo]:
    info = seaweed.up(tmp_path_factory.mktemp("public-store"), public_read=[BUCKET])
    try:
        yield info
    finally:
        seaweed.down(info.data_dir)


def _request(method: str, url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


@pytest.fixture(scope="module")
def published(public_store, tmp_path_factory, monkeypatch_module) -> str:
    for k, v in public_store.env().items():
        monkeypatch_module.setenv(k, v)
    src = tmp_path_factory.mktemp("pe-viewer")
    synth_platelet_em(src, slices=8, size=64)
    ingest("platelet-em", src, f"s3://{BUCKET}")
    base = f"{public_store.endpoint}/{BUCKET}"
    # versioned publishes: the pointer (itself public) names the current version's folder
    versions = f"{base}/platelet-em{rl.VERSIONS_SUFFIX}"
    status, _, body = _request("GET", f"{versions}/{rl.POINTER}", Origin=ORIGIN)
    if status == 404:  # a root without versions
        return f"{base}/platelet-em.zarr"
    assert status == 200, status
    version = json.loads(body)["version"]
    return f"{versions}/{version}/platelet-em.zarr"


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.mark.e2e
def test_cross_origin_range_requests_without_keys(published):
    url = f"{published}/50/zarr.json"
    status, headers, body = _request("GET", url, Origin=ORIGIN, Range="bytes=0-9")
    assert status == 206 and len(body) == 10
    assert headers["Access-Control-Allow-Origin"] in (ORIGIN, "*")
    assert headers["Content-Range"].startswith("bytes 0-9/")
    # the preflight a browser sends before a Range request
    status, headers, _ = _request("OPTIONS", url, Origin=ORIGIN,
                                  **{"Access-Control-Request-Method": "GET",
                                     "Access-Control-Request-Headers": "range"})
    assert status == 200 and "range" in headers["Access-Control-Allow-Headers"].lower()
    assert "Content-Range" in headers["Access-Control-Expose-Headers"]


@pytest.mark.e2e
def test_public_read_is_read_only_and_limited_to_its_bucket(public_store, published):
    status, _, _ = _request("PUT", f"{published}/evil.json", Origin=ORIGIN)
    assert status == 403
    status, _, _ = _request("GET", f"{public_store.endpoint}/other-bucket/x", Origin=ORIGIN)
    assert status in (403, 404)


@pytest.mark.e2e
def test_ome_zarr_reader_opens_the_image_over_http(published):
    nodes = reader_nodes(f"{published}/50")
    assert [tuple(d.shape) for d in nodes["50"].data] == [(8, 64, 64), (8, 32, 32), (4, 16, 16)]
    assert {"semantic", "cell", "organelle"} <= set(nodes)


def test_a_running_store_is_not_silently_reused_without_the_public_bucket(tmp_path):
    info = seaweed.up(tmp_path / "store")
    try:
        with pytest.raises(seaweed.StoreError, match="--public-read viewer"):
            seaweed.up(tmp_path / "store", public_read=[BUCKET])
    finally:
        seaweed.down(info.data_dir)
