import numpy as np
import pytest
import tifffile

from cloudmic.errors import SourceError
from cloudmic.formats.tiff import inspect_tiff, read_tiff


@pytest.mark.parametrize("dtype", ["uint16", "float32", "uint8"])
def test_inspect_and_read_keep_dtype(tmp_path, dtype):
    a = (np.arange(64 * 48) % 251).reshape(64, 48).astype(dtype)
    p = tmp_path / "a.tif"
    tifffile.imwrite(p, a)
    info = inspect_tiff(p)
    assert (info.shape, info.dtype, info.pages) == ((64, 48), np.dtype(dtype), 1)
    arr, sha = read_tiff(p)
    assert arr.dtype == a.dtype and np.array_equal(arr, a) and len(sha) == 64


def test_truncated_tiff_is_named(tmp_path):
    p = tmp_path / "cut.tif"
    tifffile.imwrite(p, np.ones((128, 128), "float32"))
    p.write_bytes(p.read_bytes()[:20_000])
    with pytest.raises(SourceError, match="truncated TIFF") as e:
        inspect_tiff(p)
    assert "cut.tif" in str(e.value) and "download" in str(e.value)
    with pytest.raises(SourceError, match="cut.tif"):
        read_tiff(p)


def test_not_a_tiff(tmp_path):
    p = tmp_path / "x.tif"
    p.write_text("hello")
    with pytest.raises(SourceError, match="not a readable TIFF"):
        inspect_tiff(p)


# --- issue 14: sizes checked before decoding ------------------------------------------------


def test_declared_size_far_beyond_the_file_is_refused():
    from cloudmic.formats.tiff import check_decoded_size

    # 543 KB declaring 16384x16384 uint16 (512 MiB, 989:1): refused
    with pytest.raises(SourceError, match=r"m\.tif: .*989:1.*nothing was decoded"):
        check_decoded_size("m.tif", (16384, 16384), np.dtype("uint16"), 543_000)
    check_decoded_size("m.tif", (16384, 16384), np.dtype("uint16"), 6_000_000)  # 90:1 is fine
    check_decoded_size("m.tif", (4096, 4096), np.dtype("uint16"), 100)  # 32 MiB: below floor


def test_decode_tiff_bytes_checks_the_expected_shape_first():
    import io

    from cloudmic.formats.tiff import decode_tiff_bytes

    buf = io.BytesIO()
    tifffile.imwrite(buf, np.arange(12, dtype="uint16").reshape(3, 4), imagej=True)
    arr = decode_tiff_bytes(buf.getvalue(), where="c.tar: member 'a'", expected_shape=(3, 4))
    assert arr.tolist() == np.arange(12).reshape(3, 4).tolist()
    with pytest.raises(SourceError, match=r"c\.tar: member 'a': the TIFF declares shape \(3, 4\)"):
        decode_tiff_bytes(buf.getvalue(), where="c.tar: member 'a'", expected_shape=(224, 224))
    with pytest.raises(SourceError, match=r"c\.tar: member 'a': cannot read"):
        decode_tiff_bytes(b"II*\x00junk", where="c.tar: member 'a'")


def test_strip_offsets_and_counts_of_different_lengths(tmp_path):
    # found by the fuzz suite: tifffile keeps both lists; zip(strict=True) raised ValueError
    import struct

    path = tmp_path / "x.tif"
    tifffile.imwrite(path, np.zeros((4, 4), "uint8"), rowsperstrip=1)
    raw = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        tag = tif.pages[0].tags["StripByteCounts"]
        count_at = tag.offset + 4  # the tag entry's count field
    struct.pack_into("<I", raw, count_at, 2)
    path.write_bytes(bytes(raw))
    with pytest.raises(SourceError, match=r"x\.tif: corrupt TIFF: a page lists 4 strip offsets"):
        inspect_tiff(path)



# found by the fuzz suite: two IFDs pointing at each other, which tifffile's len() detects
# but its uncached page iterator walked forever (inspect_tiff hung, movie_info grew a list)
IFD_LOOP = (
    "SUkqAAgAAAAOAAABBAABAAAACAAAAAEBBAABAAAACAAAAAIBAwABAAAAEAAAAAMBAwABAAAACAAAAAYBAwAB"
    "AAAAAQAAAA4BAgAVSwAAtgAAABEBBAABAAAAAAEAABUBAwABAAAAAQAAABYBBAABAAAACAAAABcBBAABAAAA"
    "WAAAABoBBQABAAAA2gAAABsBBQABAAAA4gAAACgBAwABAAAAAQAAADEBAgAMAAAA6gAAAFgBAAB7InNoYXBl"
    "IjogWzIsIDgsIDhdfQAAAAAAAAAAAAAAAAAAAAABAAAAAQAAAAEAAAABAAAAdGlmZmZpbAAAAAAAAAB4nAXB"
    "gwECAAAAsGXbtm3X/1+1ERAUEhYRFROXkJSSlpGVk1dQVFJWUVVT19DU0tbR1dM3MDQyNjE1M7ewtLK2sbWz"
    "d3B0cnZxdXP38PTy9vH18wdVzwfhDAAAAQQAAQAAAAgAAAABAQQAAQAAAAgAAAACAQMAAQAAABAAAAADAQMA"
    "AQAAAAgAAAAGAQMAAQAAAAEAAAARAQQAAQAAAAACAAAVAQMAAQAAAAEAAAAWAQQAAQAAAAgAAAAXAQQAAQAA"
    "AFoAAAAaAQUAAQAAAO4BAAAbAQUAAQAAAPYBAAAoAQMAAQAAAAEAAAAAAAAAAQAAAAEAAAABAAAAAQAAAAAA"
    "eJwFwYNhAwAAALCcttW2bdvu603+/AsICgmLiIqJS0hKScvIyskrKCopq6iqqWtoamnr6OrpGxgaGZuYmplb"
    "WFpZ29ja2Ts4Ojm7uLq5e3h6efv4+gFmCxfh"
)


def test_ifd_loop_does_not_hang(tmp_path):
    import base64

    from cloudmic.formats.tiff_pages import movie_info

    path = tmp_path / "loop.tif"
    path.write_bytes(base64.b64decode(IFD_LOOP))
    assert inspect_tiff(path).pages == 2
    with pytest.raises(SourceError, match=r"loop\.tif: corrupt TIFF .*circular"):
        movie_info(path)
