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
