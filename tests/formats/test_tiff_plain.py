"""tiff_plain reads a plain page exactly as tifffile does, and leaves every other TIFF to it."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudmic.formats import tiff_plain
from cloudmic.formats.tiff import decode_tiff_bytes, inspect_tiff, read_tiff

DTYPES = ["u1", "u2", "u4", "u8", "i1", "i2", "i4", "i8", "f4", "f8"]


def _tiff(data: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, data, **kw)
    return buf.getvalue()


def _pixels(shape: tuple[int, ...], dtype: str, seed: int = 0) -> np.ndarray:
    r = np.random.default_rng(seed)
    return (r.random(shape) * 100 - (50 if dtype[0] in "if" else 0)).astype(dtype)


def _tifffile_reads(blob: bytes) -> tuple[tuple[int, ...], np.dtype, np.ndarray]:
    with tifffile.TiffFile(io.BytesIO(blob)) as tif:
        series = tif.series[0]
        return tuple(series.shape), np.dtype(series.dtype), series.asarray()


def _same_as_tifffile(blob: bytes) -> None:
    plain = tiff_plain.parse(blob)
    assert plain is not None
    shape, dtype, want = _tifffile_reads(blob)
    got = plain.pixels(blob)
    assert (plain.shape, plain.dtype) == (shape, dtype)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    assert got.flags.writeable  # a new array, like tifffile's, not a view of the blob


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_every_plain_dtype_and_byte_order(dtype, byteorder):
    _same_as_tifffile(_tiff(_pixels((5, 7), dtype), byteorder=byteorder))


@pytest.mark.parametrize("rowsperstrip", [1, 2, 3, 7, 1000])
@pytest.mark.parametrize("kw", [{}, {"metadata": None}, {"software": "MyScope 1.0"}])
def test_strips_and_the_tags_writers_add(rowsperstrip, kw):
    _same_as_tifffile(_tiff(_pixels((7, 5), "u2"), rowsperstrip=rowsperstrip, **kw))


@pytest.mark.parametrize("case", [
    dict(data=((2, 6, 6), "u2")),  # two pages
    dict(data=((6, 6), "u2"), compression="zlib"),
    dict(data=((6, 6), "u2"), compression="lzw"),
    dict(data=((6, 6), "u2"), compression="zlib", predictor=True),
    dict(data=((32, 32), "u2"), tile=(16, 16)),
    dict(data=((3, 6, 6), "u2"), imagej=True),  # an ImageJ stack: images=3, three pages
    dict(data=((6, 6), "u2"), ome=True),
    dict(data=((6, 6), "u2"), bigtiff=True),
    dict(data=((6, 6, 3), "u1"), photometric="rgb"),
    dict(data=((3, 6, 6), "u1"), photometric="rgb", planarconfig="separate"),
    dict(data=((6, 6), "u2"), photometric="miniswhite"),
    dict(data=((1, 9), "u2")),  # one row: tifffile's series drops the axis
    dict(data=((9, 1), "u2")),
    dict(data=((6, 6), "f2")),
    dict(data=((6, 6), "c8")),
    dict(data=((6, 6), "bool")),
    dict(data=((6, 6), "u2"), subfiletype=1),
    dict(data=((6, 6), "u2"), metadata={"shape": [3, 12]}),  # a shape other than the page's
    dict(data=((6, 6), "u2"), description="a note", metadata=None),  # not tifffile's shape
    dict(data=((6, 6), "u2"), extratags=[(34361, "B", 4, b"abcd", False)]),  # a vendor tag
])
def test_everything_else_goes_to_tifffile(case):
    shape, dtype = case.pop("data")
    blob = _tiff(_pixels(shape, dtype), **case)
    assert tiff_plain.parse(blob) is None
    want = _tifffile_reads(blob)[2]
    np.testing.assert_array_equal(decode_tiff_bytes(blob, where="x"), want)


@pytest.mark.parametrize("dtype", ["u1", "u2", "f4"])  # the dtypes ImageJ files hold
@pytest.mark.parametrize("byteorder", ["<", ">"])
@pytest.mark.parametrize("kw", [{}, {"metadata": {"unit": "um", "spacing": 0.5}},
                                {"resolution": (10.0, 10.0)}])
def test_an_imagej_page_of_one_image(dtype, byteorder, kw):
    """STED-FM's TIFF crops: ``tifffile.imwrite(buf, crop, imagej=True)``."""
    blob = _tiff(_pixels((7, 5), dtype), imagej=True, byteorder=byteorder, **kw)
    assert b"ImageJ=" in blob and b"images=1" in blob
    _same_as_tifffile(blob)


@pytest.mark.parametrize("description", [
    "ImageJ=1.11a\nimages=3\n",  # a stack the one page's bytes do not hold
    "ImageJ=1.11a\nimages=1\nchannels=2\n",
    "ImageJ=1.11a\nimages=1\nslices=2\n",
    "ImageJ=1.11a\nframes=2\n",
    "ImageJ=1.11a\nimages=1.0\n",  # tifffile reads a float: not the plain 1
    "ImageJ=1.11a\nimages=1\nimages=2\n",  # the last one counts in tifffile
    "ImageJ=1.11a\nimages=1\nnote=<OME>",  # ends like OME-XML: tifffile tries OME first
    "SCIFIO=0.0.0\nimages=1\n",  # tifffile reads it as ImageJ; not recognised here
    "ImageJ\nimages=1\n",
])
def test_an_imagej_description_that_shapes_the_pixels_goes_to_tifffile(description):
    blob = _tiff(_pixels((6, 6), "u2"), description=description, metadata=None)
    assert tiff_plain.parse(blob) is None
    want = _tifffile_reads(blob)[2]
    np.testing.assert_array_equal(decode_tiff_bytes(blob, where="x"), want)


def test_a_shape_description_names_the_series_shape():
    _same_as_tifffile(_tiff(_pixels((6, 8), "f4")))  # {"shape": [6, 8]}
    blob = _tiff(_pixels((1, 6, 8), "f4"))  # tifffile's series keeps the unit axis
    assert b'"shape": [1, 6, 8]' in blob and tiff_plain.parse(blob) is None
    assert decode_tiff_bytes(blob, where="x").shape == (1, 6, 8)


def test_strips_out_of_order_or_short_go_to_tifffile():
    blob = bytearray(_tiff(_pixels((6, 4), "u2"), rowsperstrip=3))
    plain = tiff_plain.parse(bytes(blob))
    assert plain is not None
    with tifffile.TiffFile(io.BytesIO(bytes(blob))) as tif:
        tags = tif.pages.first.tags
        offsets, counts = tags["StripOffsets"], tags["StripByteCounts"]
    swapped = bytearray(blob)  # the two strips swap places: still readable, not in order
    struct.pack_into("<II", swapped, offsets.valueoffset, *reversed(offsets.value))
    assert tiff_plain.parse(bytes(swapped)) is None
    short = bytearray(blob)  # a strip that holds fewer bytes than its rows
    struct.pack_into("<I", short, counts.valueoffset, counts.value[0] - 2)
    assert tiff_plain.parse(bytes(short)) is None


def test_a_description_nested_past_the_stack_goes_to_tifffile():
    blob = _tiff(_pixels((6, 5), "u2"), description="[" * 30000 + "]" * 30000,
                 metadata=None)
    assert tiff_plain.parse(blob) is None


@pytest.mark.parametrize("tag", [256, 257, 262, 273, 279])
def test_a_page_without_a_required_tag_goes_to_tifffile(tag):
    """Its code turned into an allowed tag's (PageName): tiff_plain must not guess, and the
    file goes to tifffile (whose error, if any, decode_tiff_bytes names)."""
    blob = bytearray(_tiff(_pixels((6, 5), "u2"), metadata=None))
    with tifffile.TiffFile(io.BytesIO(bytes(blob))) as tif:
        entry = next(t for t in tif.pages.first.tags if t.code == tag).offset
    struct.pack_into("<H", blob, entry, 285)
    assert tiff_plain.parse(bytes(blob)) is None


def test_the_header_read_and_the_file_size_decide(tmp_path):
    data = _pixels((300, 200), "f4")
    path = tmp_path / "a.tif"
    path.write_bytes(_tiff(data))
    info = inspect_tiff(path)
    assert (info.shape, info.dtype, info.pages, info.file_bytes) == (
        (300, 200), np.dtype("f4"), 1, path.stat().st_size)
    arr, sha = read_tiff(path)
    np.testing.assert_array_equal(arr, data)
    # the pixels lie past the 64 KiB head: the header alone is enough to plan
    assert tiff_plain.parse(path.read_bytes()[:tiff_plain.HEAD_BYTES]) is not None


def test_a_header_beyond_the_head_read_goes_to_tifffile(monkeypatch):
    # tiff_bytes-style layout: strips first, IFD at the end of a 128 KiB file
    from pathlib import Path
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "fuzz"))
    from tiffgen import Page, tiff_bytes

    strip = bytes(256 * 256 * 2)
    blob = tiff_bytes([Page(256, 256, 16, 1, [strip])])
    assert tiff_plain.parse(blob) is not None  # the whole file: plain
    assert tiff_plain.parse(blob[:tiff_plain.HEAD_BYTES]) is None  # its head: not enough


def test_the_synthetic_datasets_take_the_plain_path(tmp_path):
    from cloudmic.synth.biosr import synth_biosr

    for variant in ("uint16", "float32"):
        root = tmp_path / variant
        synth_biosr(str(root), train=2, validate=0, test=1, variant=variant, seed=1)
        files = sorted(root.rglob("*.tif"))
        assert files
        for f in files:
            _same_as_tifffile(f.read_bytes())
    import tarfile

    from cloudmic.synth.sted_fm import synth_sted_fm

    synth_sted_fm(tmp_path / "sted", crops=24, variant="tiff", unlabelled=0, seed=1)
    (archive,) = (tmp_path / "sted").glob("*.tar")
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
        assert len(members) == 24
        for m in members:
            _same_as_tifffile(tar.extractfile(m).read())


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.data())
def test_mutated_plain_tiffs_agree_with_tifffile_or_go_to_it(data):
    """Whatever a damaged header says, a page tiff_plain accepts is what tifffile reads."""
    imagej = data.draw(st.booleans())  # ImageJ's description is mutated too
    dtype = data.draw(st.sampled_from(["u1", "u2", "f4"] if imagej else DTYPES))
    bo = data.draw(st.sampled_from(["<", ">"]))
    blob = bytearray(_tiff(_pixels((6, 5), dtype), byteorder=bo, imagej=imagej,
                           rowsperstrip=data.draw(st.sampled_from([2, 6]))))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, min(len(blob), 400) - 1))
        if data.draw(st.booleans()):
            blob[i] ^= 1 << data.draw(st.integers(0, 7))
        else:
            blob[i] = data.draw(st.sampled_from([0, 1, 2, 3, 8, 255]))
    blob = bytes(blob)
    plain = tiff_plain.parse(blob)
    if plain is None or plain.end > len(blob):
        return
    shape, dtype_, want = _tifffile_reads(blob)
    assert (plain.shape, plain.dtype) == (shape, dtype_)
    np.testing.assert_array_equal(plain.pixels(blob), want)
