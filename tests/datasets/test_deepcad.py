"""DeepCAD ingest: lossless movies with physical coordinates, an OME-NGFF pyramid that
OME-Zarr tools validate and open, WebDataset clips, determinism, and bad input."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import xarray as xr
import zarr

import cloudmic
from cloudmic.datasets.deepcad import DeepCAD
from cloudmic.errors import SourceError
from cloudmic.ingest import ingest
from cloudmic.ingest.verify import verify_dataset
from cloudmic.layout.ngff import downsample_mean
from cloudmic.manifest import load_manifest
from cloudmic.storage.location import Location
from cloudmic.synth.deepcad import RECORDINGS, movie_names, synth_deepcad
from fixtures_biosr import snapshot

FRAMES, SIZE = 150, 65  # three units (64 + 64 + 22 frames), an odd side for partial 2x2 blocks
PY, PX = 550.0 / SIZE, 575.0 / SIZE  # the stated 550 x 575 um field of view over the frame
RECS = [("n01_p66", RECORDINGS[0]), ("n01_p99", RECORDINGS[1])]  # the second is a hyperstack


def _movie(src: Path, zip_name: str, path: str) -> Path:
    folder, low, high = movie_names(zip_name)
    return src / "DeepCAD" / folder / (low if path == "low" else high)


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _nothing_published(root: Path) -> None:
    assert not (root / "deepcad.zarr").exists() and not (root / "deepcad.wds").exists()
    staging = root / ".cloudmic" / "staging"
    assert not staging.exists() or not any(staging.iterdir())


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("deepcad-src")
    synth_deepcad(out, recordings=2, frames=FRAMES, size=SIZE, seed=5)
    return out


@pytest.fixture(scope="module")
def published(source, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("deepcad-root") / "root"
    report = ingest("deepcad", source, str(root))
    assert report.groups == {"n01_p66": FRAMES, "n01_p99": FRAMES}
    assert report.units == 6 and report.records == 2 * (4 + 1)  # 32-frame clips
    return root


@pytest.fixture
def small(tmp_path) -> Path:
    """A private one-recording source a test may damage."""
    synth_deepcad(tmp_path / "src", recordings=1, frames=40, size=32, seed=2, hyperstack=False)
    return tmp_path / "src"


def test_manifest_table_matches_the_seed():
    m = load_manifest("deepcad")
    rows = m.options["recordings"]
    assert len(rows) == len(RECORDINGS) == 27
    for row, rec in zip(rows, RECORDINGS, strict=True):
        assert row["id"] == f"n{rec['no']:02d}_p{int(rec['power_mw'])}" and "." not in row["id"]
        assert row["row"] == rec["no"]
        for k in ("zip", "zenodo_record", "frame_rate_hz", "depth_um", "power_mw",
                  "power_setting", "amp_gain", "zoom", "structure"):
            assert row[k] == rec[k], (row["id"], k)
        assert tuple(row["fov_um"]) == rec["fov_um"]
    assert [d.url for d in m.source.downloads] == [r["url"] for r in RECORDINGS]
    assert len({r["id"] for r in rows}) == 27
    shard_t = m.storage.shard["t"]
    assert shard_t % m.storage.chunk["t"] == 0 and m.webdataset.samples_per_shard % shard_t == 0
    assert all(step[0] == 1 for step in m.options["pyramid"])


def test_lossless_with_physical_coordinates_in_plain_xarray(published, source):
    tree = xr.open_datatree(published / "deepcad.zarr", engine="zarr", consolidated=True)
    for rid, rec in RECS:
        g = tree[rid]
        for path in ("low", "high"):
            src = _movie(source, rec["zip"], path)
            stored_ndim = tifffile.imread(src, squeeze=False).ndim
            assert stored_ndim == (6 if rid == "n01_p99" else 3)  # ImageJ TZCYXS hyperstack
            want = tifffile.imread(src)  # squeezed to (T, Y, X), as DeepCAD reads it
            ds0, ds1 = g[f"{path}/0"].ds, g[f"{path}/1"].ds
            assert list(ds0.data_vars) == [path] and ds0[path].dims == ("t", "y", "x")
            assert ds0[path].dtype == want.dtype == np.uint16
            assert np.array_equal(ds0[path].values, want), (rid, path)
            np.testing.assert_allclose(ds0["t"].values, (np.arange(FRAMES) + 0.5) / 30.0)
            np.testing.assert_allclose(ds0["x"].values, (np.arange(SIZE) + 0.5) * PX)
            assert (ds0["t"].attrs["units"], ds0["y"].attrs["units"]) == ("s", "um")
            assert ds1[path].shape == (FRAMES, 33, 33)
            assert np.array_equal(ds1[path].values, downsample_mean(want, (1, 2, 2)))
            np.testing.assert_allclose(ds0["y"].values, (np.arange(SIZE) + 0.5) * PY)
            np.testing.assert_allclose(ds1["y"].values, (np.arange(33) + 0.5) * 2 * PY)
            assert "derived: 550 um" in ds0["y"].attrs["provenance"]
            assert "575 um" in ds0["x"].attrs["provenance"]
            np.testing.assert_allclose(ds1["t"].values, ds0["t"].values)
            meta = g.attrs["source_files"][path]
            assert meta["sha256"] == _sha(src) and meta["bytes"] == src.stat().st_size
            assert meta["name"] == src.name
        a = g.attrs
        assert (a["zip"], a["depth_um"], a["power_mw"], a["amp_gain"], a["structure"]) == (
            rec["zip"], rec["depth_um"], rec["power_mw"], rec["amp_gain"], rec["structure"])
        assert a["fov_um"] == [550, 575] and a["frame_rate_hz"] == 30 and a["frames"] == FRAMES
        assert a["pixel_um_yx"] == pytest.approx([PY, PX])
        assert "derived" in a["pixel_um_provenance"]
        assert a["paths_told_apart_by"] == "names (lowSNR / highSNR)"
    assert tree["n01_p99"].attrs["source_files"]["low"]["squeezed_axes"] == [1, 2]
    both = xr.merge([tree["n01_p66/low/0"].ds, tree["n01_p66/high/0"].ds])
    assert sorted(both.data_vars) == ["high", "low"]  # one grid: the paths align


def test_ngff_metadata_validates_and_ome_zarr_reads_it(published):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from ome_zarr_models.v05.image import Image

    for rid, _ in RECS:
        for path in ("low", "high"):
            img = Image.from_zarr(zarr.open_group(published / "deepcad.zarr" / rid / path,
                                                  mode="r"))
            ms = img.attributes.ome.multiscales[0]
            assert [d.path for d in ms.datasets] == [f"0/{path}", f"1/{path}"]
            assert [(a.name, a.unit) for a in ms.axes] == [
                ("t", "second"), ("y", "micrometer"), ("x", "micrometer")]
            nodes = list(Reader(parse_url(str(published / "deepcad.zarr" / rid / path)))())
            assert [tuple(d.shape) for d in nodes[0].data] == [(FRAMES, SIZE, SIZE),
                                                                (FRAMES, 33, 33)]


def test_webdataset_clips_match_zarr_and_verify(published):
    report = verify_dataset(Location.parse(str(published)), "deepcad")
    assert report.ok, report.problems
    index = json.loads((published / "deepcad.wds" / "index.json").read_text())
    tree = cloudmic.open(str(published / "deepcad.zarr"))
    for rid, _ in RECS:
        split = index["splits"][rid]
        assert split["records"] == 5 and split["zarr_length"] == FRAMES
        recs = sorted(cloudmic.shards(str(published / "deepcad.wds"), rid),
                      key=lambda r: r["__key__"])
        assert [r["__key__"] for r in recs] == [f"{rid}-t{t:06d}" for t in (0, 32, 64, 96, 128)]
        assert all("." not in r["__key__"] for r in recs)
        for r in recs:
            t0, t1 = r["json"]["zarr"]["t"]
            assert r["json"]["zarr"]["paths"] == {"low": "low/0/low", "high": "high/0/high"}
            assert r["low"].shape == (t1 - t0, SIZE, SIZE) and t1 - t0 in (32, 22)
            for path in ("low", "high"):
                stored = tree[f"{rid}/{path}/0"].ds[path].isel(t=slice(t0, t1)).values
                assert r[path].dtype == stored.dtype and np.array_equal(r[path], stored)


def test_reingest_rewrites_the_same_bytes(source, tmp_path):
    def shards(root: Path) -> tuple[dict, dict]:
        index = json.loads((root / "deepcad.wds" / "index.json").read_text())
        wds = {s["url"]: s["sha256"] for v in index["splits"].values() for s in v["shards"]}
        data = {str(p.relative_to(root)): _sha(p)
                for p in (root / "deepcad.zarr").rglob("*") if p.is_file() and "/c/" in str(p)}
        return wds, data

    ingest("deepcad", source, str(tmp_path / "a"))
    first = shards(tmp_path / "a")
    ingest("deepcad", source, str(tmp_path / "b"))
    ingest("deepcad", source, str(tmp_path / "a"))  # over the published copy
    assert shards(tmp_path / "b") == first == shards(tmp_path / "a")
    assert len(first[0]) == 6 and len(first[1]) >= 8


def test_s3_destination(source, s3_env):
    url = "s3://deepcad-t"
    report = ingest("deepcad", source, url)
    loc = Location.parse(url)
    assert verify_dataset(loc, "deepcad").ok
    # plain xarray opens the version URL the ingest (and `cloudmic ls`) print
    tree = xr.open_datatree(report.url, engine="zarr", consolidated=True,
                            storage_options=loc.xarray_storage_options())
    want = tifffile.imread(_movie(source, RECORDINGS[0]["zip"], "high"))
    assert np.array_equal(tree["n01_p66/high/0"].ds["high"].values, want)


def test_int16_low_only_recording_nested_and_any_case(tmp_path):
    """Zip contents are unverified: a nested folder, 'LowSNR' in any case, .TIF, int16 with
    negative values, and no high-SNR movie all ingest; only `low` is stored."""
    rec = RECORDINGS[18]  # row 10: one power only
    folder = tmp_path / "DeepCAD" / rec["zip"].removesuffix(".zip") / "inner"
    folder.mkdir(parents=True)
    movie = np.random.default_rng(1).integers(-300, 3000, (70, 24, 30)).astype(np.int16)
    tifffile.imwrite(folder / "Recording10_LowSNR.TIF", movie)
    root = tmp_path / "root"
    ingest("deepcad", tmp_path / "DeepCAD", str(root))  # the DeepCAD folder itself
    tree = xr.open_datatree(root / "deepcad.zarr", engine="zarr", consolidated=True)
    g = tree["n10_p99"]
    assert sorted(g.children) == ["low"] and g.attrs["paths"] == ["low"]
    stored = g["low/0"].ds["low"].values
    assert stored.dtype == np.int16 and np.array_equal(stored, movie)
    assert np.array_equal(g["low/1"].ds["low"].values, downsample_mean(movie, (1, 2, 2)))
    assert g.attrs["source_files"]["low"]["name"] == "inner/Recording10_LowSNR.TIF"
    recs = list(cloudmic.shards(str(root / "deepcad.wds"), "n10_p99"))
    assert len(recs) == 3 and all("high" not in r for r in recs)
    assert verify_dataset(Location.parse(str(root)), "deepcad").ok


def test_source_may_be_parent_deepcad_or_recording_folder(small):
    adapter = DeepCAD(load_manifest("deepcad"))
    folder = small / "DeepCAD" / RECORDINGS[0]["zip"].removesuffix(".zip")
    for src in (small, small / "DeepCAD", folder):
        inv = adapter.scan(src)
        assert [g.name for g in inv.groups] == ["n01_p66"] and inv.file_count == 2


# ---- bad input: a clear error naming the file(s), nothing published ---------------------


def _paths(src: Path) -> tuple[Path, Path]:
    return _movie(src, RECORDINGS[0]["zip"], "low"), _movie(src, RECORDINGS[0]["zip"], "high")


def _fewer_frames(src: Path) -> str:
    low, high = _paths(src)
    tifffile.imwrite(high, tifffile.imread(high)[:30])
    return "30 frames"


def _other_shape(src: Path) -> str:
    _, high = _paths(src)
    tifffile.imwrite(high, tifffile.imread(high)[:, :16])
    return "16x32"


def _other_dtype(src: Path) -> str:
    _, high = _paths(src)
    tifffile.imwrite(high, tifffile.imread(high).astype(np.int16))
    return "int16"


@pytest.mark.parametrize("damage", [_fewer_frames, _other_shape, _other_dtype])
def test_mismatched_pair_names_both_files(small, tmp_path, damage):
    root = tmp_path / "root"
    ingest("deepcad", small, str(root))
    before = snapshot(str(root))
    what = damage(small)
    low, high = _paths(small)
    with pytest.raises(SourceError, match="pair does not match") as e:
        ingest("deepcad", small, str(root))
    assert low.name in str(e.value) and high.name in str(e.value) and what in str(e.value)
    assert snapshot(str(root)) == before  # the earlier publication is intact
    assert not any((root / ".cloudmic" / "staging").iterdir())


def test_fresh_dest_gets_nothing_on_bad_pair(small, tmp_path):
    _fewer_frames(small)
    with pytest.raises(SourceError):
        ingest("deepcad", small, str(tmp_path / "root"))
    _nothing_published(tmp_path / "root")


@pytest.mark.parametrize(
    "shape, axes, match",
    [((1, 40, 1, 32, 32), "TZCYX", "z-stack"),
     ((4, 10, 32, 32), "TZYX", "more than one non-singleton axis"),
     ((1, 1, 40, 32, 32), "TZCYX", "channel stack")],
)
def test_unexpected_axis_order_is_named(small, tmp_path, shape, axes, match):
    low, _ = _paths(small)
    tifffile.imwrite(low, tifffile.imread(low).reshape(shape), imagej=True,
                     metadata={"axes": axes})
    with pytest.raises(SourceError, match=match) as e:
        ingest("deepcad", small, str(tmp_path / "root"))
    assert low.name in str(e.value) and "(T, Y, X)" in str(e.value)
    _nothing_published(tmp_path / "root")


def test_truncated_mid_page_is_refused_at_scan(small, tmp_path):
    low, _ = _paths(small)
    with tifffile.TiffFile(low) as tif:
        page = tif.pages[20]
        cut = page.dataoffsets[0] + page.databytecounts[0] // 2
    low.write_bytes(low.read_bytes()[:cut])
    with pytest.raises(SourceError, match="truncated") as e:
        ingest("deepcad", small, str(tmp_path / "root"))
    assert low.name in str(e.value)
    _nothing_published(tmp_path / "root")


def _unknown_folder(src: Path) -> tuple[Path, str]:
    bad = src / "DeepCAD" / "my_recording"
    bad.mkdir()
    shutil.copy(_paths(src)[0], bad / "x_lowSNR.tif")
    return bad, "not a DeepCAD recording"


def _tif_outside(src: Path) -> tuple[Path, str]:
    p = src / "DeepCAD" / "loose_lowSNR.tif"
    shutil.copy(_paths(src)[0], p)
    return p, "outside a recording folder"


def _untagged(src: Path) -> tuple[Path, str]:
    p = _paths(src)[0].with_name("mean_image.tif")
    shutil.copy(_paths(src)[0], p)
    return p, "neither 'lowSNR' nor 'highSNR', unlike the other movies"


def _three_unnamed(src: Path) -> tuple[Path, str]:
    low, high = _paths(src)
    low.rename(low.with_name("a.tif"))
    high.rename(high.with_name("b.tif"))
    shutil.copy(low.with_name("a.tif"), low.with_name("c.tif"))
    return low.parent, "3 movies whose names do not say .*a.tif, b.tif, c.tif"


def _unnamed_same_signal(src: Path) -> tuple[Path, str]:
    low, high = _paths(src)
    shutil.copy(low, high)  # two copies of one path: nothing tells them apart
    low.rename(low.with_name("a.tif"))
    high.rename(high.with_name("b.tif"))
    return low.parent, "only 1.00x apart"


def _high_only(src: Path) -> tuple[Path, str]:
    low, high = _paths(src)
    low.unlink()
    return high.parent, "no low-SNR"


def _two_lows(src: Path) -> tuple[Path, str]:
    low, _ = _paths(src)
    shutil.copy(low, low.with_name("copy_lowSNR.tif"))
    return low.parent, "2 low-SNR movies"


def _empty(src: Path) -> tuple[Path, str]:
    shutil.rmtree(src / "DeepCAD")
    (src / "DeepCAD").mkdir()
    return src / "DeepCAD", "no DeepCAD recording folder"


@pytest.mark.parametrize("case", [_unknown_folder, _tif_outside, _untagged, _high_only,
                                  _two_lows, _empty, _three_unnamed, _unnamed_same_signal])
def test_layout_errors_name_the_path(small, tmp_path, case):
    path, match = case(small)
    with pytest.raises(SourceError, match=match) as e:
        ingest("deepcad", small, str(tmp_path / "root"))
    assert str(path) in str(e.value) and "what to do" in str(e.value)
    if case is _unknown_folder:
        assert RECORDINGS[0]["zip"].removesuffix(".zip") in str(e.value)  # what is expected
    _nothing_published(tmp_path / "root")


def test_folder_without_tiffs_is_skipped(small, tmp_path, caplog):
    (small / "DeepCAD" / "notes").mkdir()
    (small / "DeepCAD" / "notes" / "readme.txt").write_text("hello")
    ingest("deepcad", small, str(tmp_path / "root"))
    assert "skipping" in caplog.text and "notes" in caplog.text


def test_foreign_pair_written_with_tifffile_is_lossless(tmp_path):
    """Someone else's writer, from datasets.md only: a zlib-compressed plain multipage TIFF
    for the low path and an ImageJ TZCYX hyperstack with singleton Z and C for the high one,
    named like the DeepCAD-RT example; every frame equals the source, the 10x high path too."""
    rec = RECORDINGS[6]  # row 4 at 66 mW
    stem = rec["zip"].removesuffix(".zip")
    folder = tmp_path / "DeepCAD" / stem
    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)
    signal = rng.gamma(2.0, 30.0, (20, 1, 40, 48))
    low = rng.poisson(signal).astype(np.uint16)[:, 0]
    high = rng.poisson(10 * signal).astype(np.uint16)  # (T, 1, Y, X)
    tifffile.imwrite(folder / f"1_GCaMP6f_{stem}_48x40x20_lowSNR.tif", low, compression="zlib")
    tifffile.imwrite(folder / f"1_GCaMP6f_{stem}_48x40x20_highSNR.tif",
                     high[:, :, None], imagej=True, metadata={"axes": "TZCYX"})
    root = tmp_path / "root"
    ingest("deepcad", tmp_path, str(root))
    g = zarr.open_group(root / "deepcad.zarr", path="n04_p66", mode="r")
    assert np.array_equal(g["low/0/low"][...], low)
    assert np.array_equal(g["high/0/high"][...], high[:, 0])
    assert g["high/0/high"].dtype == np.uint16
    assert 8 < g["high/0/high"][...].mean() / g["low/0/low"][...].mean() < 12


def test_any_frame_shape_gets_its_pitch_from_the_stated_fov(tmp_path):
    """A 40 x 48 frame: y = 550 um / 40 rows, x = 575 um / 48 columns, in the coordinates,
    the NGFF scale and the WebDataset json, marked as derived."""
    rec = RECORDINGS[0]
    folder = tmp_path / "DeepCAD" / rec["zip"].removesuffix(".zip")
    folder.mkdir(parents=True)
    movie = np.random.default_rng(2).poisson(50, (8, 40, 48)).astype(np.uint16)
    tifffile.imwrite(folder / "x_lowSNR.tif", movie)
    root = tmp_path / "root"
    ingest("deepcad", tmp_path, str(root))
    ds = xr.open_datatree(root / "deepcad.zarr", engine="zarr")["n01_p66/low/0"].ds
    assert float(ds["y"][1] - ds["y"][0]) == pytest.approx(550 / 40)
    assert float(ds["x"][1] - ds["x"][0]) == pytest.approx(575 / 48)
    g = zarr.open_group(root / "deepcad.zarr", path="n01_p66/low", mode="r")
    scale = g.attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]
    assert scale["scale"][1:] == pytest.approx([550 / 40, 575 / 48])


def test_unnamed_pair_is_told_apart_by_its_signal(small, tmp_path):
    """Names without lowSNR/highSNR (the names in the zips are unverified): the two
    frame-synchronised movies are paired, the 10x brighter one as high-SNR, and the store
    says how."""
    low, high = _paths(small)
    low.rename(low.with_name("ch1.tif"))
    high.rename(high.with_name("ch0.tif"))  # the high path sorts first: order says nothing
    root = tmp_path / "root"
    ingest("deepcad", small, str(root))
    g = zarr.open_group(root / "deepcad.zarr", mode="r")[RECS[0][0]]
    assert g.attrs["source_files"]["low"]["name"] == "ch1.tif"
    assert g.attrs["source_files"]["high"]["name"] == "ch0.tif"
    assert "told apart by signal" in g.attrs["paths_told_apart_by"]
