"""Block-wise reading of big multipage TIFF movies: layouts, squeezing, bad input, memory."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tifffile

from cloudmic.errors import SourceError
from cloudmic.formats.tiff_pages import iter_frame_blocks, movie_info


@pytest.fixture
def movie():
    return np.random.default_rng(0).integers(0, 65535, (23, 40, 56)).astype(np.uint16)


def _read_all(path, block):
    starts, blocks = zip(*iter_frame_blocks(path, block), strict=True)
    assert list(starts) == list(range(0, sum(len(b) for b in blocks), block))
    assert all(len(b) <= block for b in blocks)
    return np.concatenate(blocks)


@pytest.mark.parametrize(
    "kwargs, contiguous",
    [
        ({}, True),
        ({"bigtiff": True}, True),
        ({"byteorder": ">"}, True),
        ({"compression": "zlib"}, False),
        ({"compression": "zlib", "bigtiff": True}, False),
    ],
)
@pytest.mark.parametrize("block", [1, 7, 23, 100])
def test_plain_bigtiff_compressed(tmp_path, movie, kwargs, contiguous, block):
    p = tmp_path / "m.tif"
    tifffile.imwrite(p, movie, **kwargs)
    info = movie_info(p)
    assert (info.frames, info.shape, info.dtype) == (23, (40, 56), np.dtype("uint16"))
    assert info.squeezed_axes == () and info.contiguous is contiguous
    assert info.file_bytes == p.stat().st_size
    out = _read_all(p, block)
    assert out.dtype == np.uint16 and out.dtype.isnative and np.array_equal(out, movie)


def test_start_stop_ranges(tmp_path, movie):
    p = tmp_path / "m.tif"
    tifffile.imwrite(p, movie)
    got = list(iter_frame_blocks(p, 4, start=5, stop=14))
    assert [s for s, _ in got] == [5, 9, 13]
    assert np.array_equal(np.concatenate([b for _, b in got]), movie[5:14])
    with pytest.raises(ValueError, match="block"):
        next(iter_frame_blocks(p, 0))


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_imagej_hyperstack_singletons_are_squeezed(tmp_path, movie, compression):
    p = tmp_path / "hyper.tif"
    tifffile.imwrite(
        p, movie[:, None, None], imagej=True, metadata={"axes": "TZCYX"}, compression=compression
    )
    info = movie_info(p)
    assert (info.frames, info.shape) == (23, (40, 56))
    assert info.stored_axes == "TZCYXS" and info.squeezed_axes == (1, 2)
    assert np.array_equal(_read_all(p, 5), movie)


def test_leading_singleton_is_squeezed(tmp_path, movie):
    p = tmp_path / "q.tif"
    tifffile.imwrite(p, movie[None])  # (1, T, Y, X), tifffile "shaped"
    info = movie_info(p)
    assert info.stored_shape == (1, 23, 40, 56) and info.squeezed_axes == (0,)
    assert info.frames == 23 and np.array_equal(_read_all(p, 6), movie)


def test_plain_imagej_stack_is_time(tmp_path, movie):
    """ImageJ saves every plain stack as "slices" (Z); without hyperstack=true it is a movie."""
    p = tmp_path / "z.tif"
    desc = f"ImageJ=1.54f\nimages={len(movie)}\nslices={len(movie)}\nloop=false\n"
    tifffile.imwrite(p, movie, description=desc, metadata=None)
    info = movie_info(p)
    assert info.frames == 23 and info.stored_axes == "TZCYXS" and info.squeezed_axes == (0, 2)
    assert info.frame_axis == "Z"
    assert np.array_equal(_read_all(p, 8), movie)


@pytest.mark.parametrize(
    "axes, shape, what",
    [("TZCYX", (1, 23, 1), "z-stack (23 planes"), ("ZYX", (23,), "z-stack"),
     ("CYX", (23,), "channel stack (23 channels")],
)
def test_hyperstack_without_time_is_refused(tmp_path, movie, axes, shape, what):
    """A hyperstack that declares its long axis as Z or C is not relabelled as time."""
    p = tmp_path / "zc.tif"
    tifffile.imwrite(p, movie.reshape(*shape, 40, 56), imagej=True, metadata={"axes": axes})
    with pytest.raises(SourceError, match="unexpected axis order") as e:
        movie_info(p)
    assert what in str(e.value) and "zc.tif" in str(e.value) and "TYX" in str(e.value)


@pytest.mark.parametrize(
    "kwargs, axis",
    [({}, "Q"), ({"metadata": None}, "I"), ({"imagej": True, "metadata": {"axes": "TYX"}}, "T")],
)
def test_frame_axis_is_recorded(tmp_path, movie, kwargs, axis):
    p = tmp_path / "m.tif"
    tifffile.imwrite(p, movie, **kwargs)
    assert movie_info(p).frame_axis == axis


def test_second_real_axis_is_refused(tmp_path, movie):
    p = tmp_path / "tz.tif"
    tifffile.imwrite(p, movie[:21].reshape(7, 3, 40, 56), imagej=True, metadata={"axes": "TZYX"})
    with pytest.raises(SourceError, match="more than one non-singleton axis") as e:
        movie_info(p)
    assert "tz.tif" in str(e.value) and "T=7" in str(e.value) and "Z=3" in str(e.value)
    assert "what to do" in str(e.value)


def test_rgb_is_refused(tmp_path):
    p = tmp_path / "rgb.tif"
    tifffile.imwrite(p, np.zeros((4, 16, 16, 3), np.uint8), photometric="rgb")
    with pytest.raises(SourceError, match="rgb.tif"):
        movie_info(p)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"compression": "zlib"}, {"imagej": True, "metadata": {"axes": "TYX"}}, {"bigtiff": True}],
)
@pytest.mark.parametrize("keep", [0.5, 0.97])
def test_truncated_file_is_named(tmp_path, movie, kwargs, keep):
    p = tmp_path / "cut.tif"
    tifffile.imwrite(p, movie, **kwargs)
    blob = p.read_bytes()
    p.write_bytes(blob[: int(len(blob) * keep)])
    with pytest.raises(SourceError, match="truncated") as e:
        movie_info(p)
    assert "cut.tif" in str(e.value) and "download" in str(e.value)
    with pytest.raises(SourceError, match="truncated"):
        list(iter_frame_blocks(p, 4))


def test_not_a_tiff(tmp_path):
    p = tmp_path / "x.tif"
    p.write_bytes(b"hello world, not a tiff")
    with pytest.raises(SourceError, match="not a readable TIFF"):
        movie_info(p)


_MEMORY_PROBE = textwrap.dedent(
    """
    import resource, sys, time
    from cloudmic.formats.tiff_pages import iter_frame_blocks, movie_info
    path = sys.argv[1]
    info = movie_info(path)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0, n, ok = time.perf_counter(), 0, True
    for start, blk in iter_frame_blocks(path, 16):
        ok &= int(blk[0, 0, 1]) == (start + 1) % 65536
        n += blk.nbytes
    dt = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(info.frames, n, ok, (after - before) / 1024, n / dt / 1e6)
    """
)


def test_reading_a_big_movie_keeps_memory_flat(tmp_path):
    frames, side = 600, 512  # 315 MB; written streaming, read in a fresh process
    p = tmp_path / "big.tif"
    frame = np.arange(side * side, dtype=np.uint16).reshape(side, side)
    tifffile.imwrite(
        p, (frame + t for t in range(frames)), shape=(frames, side, side), dtype=np.uint16
    )
    res = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, str(p)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    nframes, nbytes, ok, growth_mb, mbps = res.stdout.split()
    assert int(nframes) == frames and int(nbytes) == frames * side * side * 2 and ok == "True"
    assert int(nbytes) > 300e6
    assert float(growth_mb) < 64, f"peak RSS grew by {growth_mb} MB reading {nbytes} bytes"
    print(f"read {int(nbytes) / 1e6:.0f} MB at {float(mbps):.0f} MB/s, RSS +{growth_mb} MB")


@pytest.mark.parametrize("kwargs", [{}, {"byteorder": ">"}, {"bigtiff": True}])
def test_scanned_info_skips_the_headers(tmp_path, movie, kwargs, monkeypatch):
    """With the scan's info, a contiguous movie is read without walking its page headers."""
    p = tmp_path / "m.tif"
    tifffile.imwrite(p, movie, **kwargs)
    info = movie_info(p)
    assert info.contiguous and info.data_offset is not None
    import cloudmic.formats.tiff_pages as tp

    def no_parse(*_a, **_k):
        raise AssertionError("headers parsed again")

    monkeypatch.setattr(tp, "open_tiff", no_parse)
    got = list(iter_frame_blocks(p, 4, start=5, stop=14, info=info))
    assert [s for s, _ in got] == [5, 9, 13]
    blocks = np.concatenate([b for _, b in got])
    assert blocks.dtype.isnative and np.array_equal(blocks, movie[5:14])


def test_scanned_info_refuses_a_changed_file(tmp_path, movie):
    p = tmp_path / "m.tif"
    tifffile.imwrite(p, movie)
    info = movie_info(p)
    p.write_bytes(p.read_bytes()[:-1000])
    with pytest.raises(SourceError, match="changed since"):
        list(iter_frame_blocks(p, 4, info=info))


def test_scanned_info_of_a_compressed_movie_reads_normally(tmp_path, movie):
    p = tmp_path / "z.tif"
    tifffile.imwrite(p, movie, compression="zlib")
    info = movie_info(p)
    assert not info.contiguous and info.data_offset is None
    assert np.array_equal(np.concatenate([b for _, b in iter_frame_blocks(p, 5, info=info)]),
                          movie)


def test_empty_frames_are_a_source_error(tmp_path):
    # found by the fuzz suite: a page 35 pixels wide and 0 high made the contiguous reader
    # fail with "TypeError: memoryview: cannot cast view with zeros in shape or strides"
    path = tmp_path / "empty.tif"
    path.write_bytes(
        b"II*\x00\x08\x00\x00\x00\x0b\x00\x00\x01\x04\x00\x01\x00\x00\x00#\x00\x00\x00\x01\x01"
        b"\x04\x00\x01\x00\x00\x00\x00\x00\x00\x00\x02\x01\x03\x00\x01\x00\x00\x00@\x00\x00\x00"
        b"\x03\x01\x03\x00\x01\x00\x00\x00\x01\x00\x00\x00\x06\x01\x03\x00\x01\x00\x00\x00\x01\x00"
        b"\x00\x00\x11\x01\x04\x00\x01\x00\x00\x00\x00\x00\x00\x00\x15\x01\x03\x00\x01\x00\x00\x00"
        b"\x01\x00\x00\x00\x16\x01\x04\x00\x01\x00\x00\x00\x00\x00\x00\x00\x17\x01\x04\x00\x01\x00"
        b"\x00\x00\x00\x00\x00\x00\x1c\x01\x03\x00\x01\x00\x00\x00\x02\x00\x00\x00S\x01\x03\x00\x01"
        b"\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00"
    )
    with pytest.raises(SourceError, match=r"empty\.tif"):
        list(iter_frame_blocks(path, 2))
