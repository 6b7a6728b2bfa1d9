"""The ingest's pre-publish verify (issue 16): every shard is checked by size and, on S3, by
its ETag against the md5 of the bytes written, and only a sample is read back; a shard the
store holds with other bytes than were sent is still caught before anything is published.
``cloudmic verify`` keeps reading every shard."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

import pytest
import yaml

import cloudmic.ingest.run as run
import cloudmic.ingest.verify as verify_mod
from cloudmic.cli import main
from cloudmic.errors import VerifyFailed
from cloudmic.ingest import ingest
from cloudmic.ingest.wds_writer import HashingWriter, single_put
from cloudmic.manifest import manifests_dir
from cloudmic.storage.backends import S3_PART_BYTES
from cloudmic.storage.location import Location
from cloudmic.storage.versions import resolve
from cloudmic.synth.biosr import synth_biosr
from counting_proxy import CountingProxy

TRAIN = 160  # 20 train shards of 8 samples, one validate and one test shard: 22 shards
SHARDS = 22
SAMPLE = 2  # 5% of the 22 shards, rounded up: read back, their records compared with Zarr


@pytest.fixture(scope="module")
def many_shards(tmp_path_factory) -> tuple[Path, Path]:
    """(sources, manifest): BioSR with 22 small shards, so that a sample is a real subset."""
    src = tmp_path_factory.mktemp("biosr-many")
    synth_biosr(src, train=TRAIN, validate=6, test=2, variant="uint16", seed=3)
    raw = yaml.safe_load((manifests_dir() / "biosr.yaml").read_text())
    raw["storage"]["shard"]["sample"] = 8
    raw["webdataset"]["samples_per_shard"] = 8
    manifest = tmp_path_factory.mktemp("manifest-many") / "biosr.yaml"
    manifest.write_text(yaml.safe_dump(raw))
    return src, manifest


def _bucket() -> str:
    return f"s3://pv-{uuid.uuid4().hex[:10]}"


def _read_shards(monkeypatch) -> list[str]:
    """Record the URL of every shard verify reads back."""
    seen: list[str] = []
    real = verify_mod._read_shard

    def counting(loc, keep=0, rng=None):
        seen.append(loc.url)
        return real(loc, keep, rng)

    monkeypatch.setattr(verify_mod, "_read_shard", counting)
    return seen


def _staged_shards(staging: Location) -> list[Location]:
    wds = staging.child("biosr.wds")
    index = json.loads(wds.child("index.json").read_bytes())
    return [wds.child(s["url"]) for v in index["splits"].values() for s in v["shards"]]


def _published(root: str) -> list[str]:
    """Every object under the root but the staging (a failed verify must leave none)."""
    loc = Location.parse(root)
    loc.fs.invalidate_cache()
    if not loc.exists():
        return []
    return [p for p in loc.fs.find(loc.path) if "/.cloudmic/" not in p]


def test_a_shard_changed_in_the_store_after_its_upload_is_caught_before_publish(
        s3_env, many_shards, monkeypatch):
    """The store holds other bytes than were sent (same size) for a shard the sample does
    not read back: its ETag gives it away, and nothing is published."""
    src, manifest = many_shards
    root = _bucket()
    real_verify, changed = run.verify_dataset, []
    read = _read_shards(monkeypatch)

    def change_an_unsampled_shard(staging, name, **kw):
        assert kw["full"] is False  # the ingest's cheap path
        assert real_verify(staging, name, **kw).ok
        assert len(read) == SAMPLE
        target = next(s for s in _staged_shards(staging) if s.url not in read)
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF
        target.fs.pipe_file(target.path, bytes(data))
        changed.append(target.url)
        read.clear()
        return real_verify(staging, name, **kw)

    monkeypatch.setattr(run, "verify_dataset", change_an_unsampled_shard)
    with pytest.raises(VerifyFailed, match="nothing published") as err:
        ingest(str(manifest), src, root)
    assert f"{changed[0]}: size/sha256 differ from index.json" in str(err.value)
    assert read.count(changed[0]) == 1 and len(read) == SAMPLE + 1  # read back: it is bad
    assert _published(root) == []


def test_a_local_shard_of_another_size_is_caught_without_reading_it(tmp_path, many_shards,
                                                                   monkeypatch):
    src, manifest = many_shards
    real_verify, changed = run.verify_dataset, []
    read = _read_shards(monkeypatch)

    def truncate_one(staging, name, **kw):
        target = _staged_shards(staging)[-3]
        os.truncate(target.path, 1000)
        changed.append(target.url)
        return real_verify(staging, name, **kw)

    monkeypatch.setattr(run, "verify_dataset", truncate_one)
    root = tmp_path / "root"
    with pytest.raises(VerifyFailed, match="nothing published") as err:
        ingest(str(manifest), src, str(root))
    assert f"{changed[0]}: 1000 bytes stored, index.json says" in str(err.value)
    assert changed[0] not in read and len(read) <= SAMPLE
    assert not any(".releases" in p or p.endswith("catalog.json") for p in _published(str(root)))


def test_the_prepublish_verify_reads_back_only_a_sample_and_cloudmic_verify_reads_all(
        s3_server, many_shards, monkeypatch):
    """Counted on the wire: GETs of shard objects during an ingest (only verify reads tars;
    publishing copies them server-side) and during ``cloudmic verify``."""
    src, manifest = many_shards
    bucket, opts = _bucket(), s3_server.storage_options()
    with CountingProxy(s3_server.endpoint) as proxy:
        via = {**opts, "client_kwargs": {"endpoint_url": proxy.url}}
        report = ingest(str(manifest), src, bucket, storage_options=via)
        gets = [r for r in proxy.requests if r.method == "GET" and r.path.endswith(".tar")]
        index = json.loads(resolve(f"{bucket}/biosr.zarr", **opts).wds.child("index.json")
                           .read_bytes())
        sizes = {s["url"]: s["bytes"] for v in index["splits"].values() for s in v["shards"]}
        assert len(sizes) == SHARDS
        # the ETags the uploads must have served the verify; index.json keeps its fields
        assert {k for v in index["splits"].values() for s in v["shards"] for k in s} == {
            "url", "samples", "bytes", "sha256"}
        read = {next(u for u in sizes if r.path.endswith("/" + u)) for r in gets}
        assert len(read) == SAMPLE  # each read once: its hash and its records in one pass
        assert sum(r.nbytes for r in gets) == sum(sizes[u] for u in read)
        proxy.reset()
        for k, v in {"AWS_ACCESS_KEY_ID": opts["key"], "AWS_SECRET_ACCESS_KEY": opts["secret"],
                     "AWS_ENDPOINT_URL": proxy.url}.items():
            monkeypatch.setenv(k, v)
        assert main(["verify", report.url]) == 0
        gets = [r for r in proxy.requests if r.method == "GET" and r.path.endswith(".tar")]
        assert len({r.path for r in gets}) == SHARDS  # the user's verify reads every shard
        assert sum(r.nbytes for r in gets) == sum(sizes.values())


def test_etags_that_are_not_md5s_mean_reading_back_not_failing(s3_env, many_shards,
                                                               monkeypatch):
    """An ETag that is not the md5 of the bytes (an encrypted bucket's, another server's)
    cannot prove anything: those shards are read back, and a good dataset still publishes."""
    src, manifest = many_shards
    real = verify_mod._stored

    def other_etags(wloc):
        return {p: {**info, "ETag": '"' + "0" * 32 + '"'} for p, info in real(wloc).items()}

    monkeypatch.setattr(verify_mod, "_stored", other_etags)
    read = _read_shards(monkeypatch)
    report = ingest(str(manifest), src, _bucket())
    assert report.version and len(set(read)) == SHARDS


def test_multipart_etags_are_computed_like_the_store_does(s3_env, tmp_path):
    """The ETag facts the cheap path relies on, on the real server, through the upload the
    ingest uses (``S3Backend.upload``): one PUT -> the md5 of the body; a multipart upload
    -> md5 of the parts' md5s, ``-<parts>``."""
    part = S3_PART_BYTES
    data = os.urandom(2 * part + 12345)
    loc = Location.parse(_bucket())
    fs, bucket = loc.fs, loc.path
    fs.mkdir(bucket)
    for n, multipart in ((part // 3, False), (2 * part - 1, False), (2 * part, True),
                         (len(data), True)):
        assert single_put(n, part) is not multipart
        body = data[:n]
        local = tmp_path / f"body-{n}"
        local.write_bytes(body)
        with open(os.devnull, "wb") as sink:
            w = HashingWriter(sink, part_bytes=part)
            for k in range(0, n, 100_000):  # written in pieces, as tarfile does
                w.write(body[k:k + 100_000])
        assert w.size == n and w.sha256 == hashlib.sha256(body).hexdigest()
        key = f"{bucket}/obj-{n}"
        loc.backend.upload(fs, str(local), key, loc.storage_options)
        fs.invalidate_cache()
        etag = fs.info(key)["ETag"].strip('"')
        assert etag == w.etag, (n, etag)
        if multipart:
            assert etag.endswith(f"-{-(-n // part)}")
        else:
            assert etag == hashlib.md5(body).hexdigest()


def test_whole_object_md5_for_stores_that_report_one():
    """Azure's Content-MD5 and GCS's md5Hash are the md5 of the whole object, however large:
    ``part_bytes=None`` computes exactly that (no S3 part rule)."""
    data = os.urandom(3 * (1 << 20) + 7)
    with open(os.devnull, "wb") as sink:
        w = HashingWriter(sink, part_bytes=None)
        for k in range(0, len(data), 100_000):
            w.write(data[k:k + 100_000])
    assert w.etag == hashlib.md5(data).hexdigest() and w.size == len(data)
    with open(os.devnull, "wb") as sink:  # the S3 rule with small parts differs: multipart
        s3 = HashingWriter(sink, part_bytes=1 << 20)
        s3.write(data)
    assert s3.etag.endswith("-4")


def _tar_of(path: Path, n: int) -> bytes:
    from cloudmic.ingest.tar_writer import TarWriter

    with open(path, "wb") as f:
        w = TarWriter(f)
        for i in range(n):
            w.write({"__key__": f"s{i:03d}", "img.npy": os.urandom(1000 + i), "json": {"i": i}})
        w.close()
    return path.read_bytes()


def test_a_shard_is_read_back_streaming_keeping_only_the_sampled_records(tmp_path):
    """The read-back hashes the whole shard but keeps at most ``keep`` whole records (every
    file of each), drawn from all of them: memory follows the sample, not the shard."""
    import random

    body = _tar_of(tmp_path / "s.tar", 40)
    loc = Location.parse(str(tmp_path / "s.tar"))
    size, digest, recs = verify_mod._read_shard(loc)
    assert (size, digest, recs) == (len(body), hashlib.sha256(body).hexdigest(), [])
    picked: set[str] = set()
    for seed in range(60):
        size, digest, recs = verify_mod._read_shard(loc, 3, random.Random(seed))
        assert (size, digest) == (len(body), hashlib.sha256(body).hexdigest())
        assert len(recs) == 3 and len({k for k, _ in recs}) == 3
        for key, rec in recs:
            i = int(key[1:])
            assert set(rec) == {"img.npy", "json"} and json.loads(rec["json"]) == {"i": i}
            assert len(rec["img.npy"]) == 1000 + i
        picked |= {k for k, _ in recs}
    assert len(picked) >= 35  # uniform over the shard, not its first records
    _, _, everything = verify_mod._read_shard(loc, 100, random.Random(0))
    assert [k for k, _ in everything] == [f"s{i:03d}" for i in range(40)]
