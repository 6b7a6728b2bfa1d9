"""The node-local block cache keeps its byte limit without listing its folder on every write."""

from __future__ import annotations

import numpy as np

from cloudmic.client.cache import BlockCache


def _folder_bytes(cache: BlockCache) -> int:
    return sum(p.stat().st_size for p in cache.folder.glob("*.npy"))


def test_the_limit_holds_after_every_write_and_the_newest_stay(tmp_path):
    entry = np.zeros(1000, np.uint8)  # 1,128 bytes as .npy
    cache = BlockCache(tmp_path / "c", max_bytes=8 * 1128)
    for i in range(40):
        cache.put(f"k{i}", entry + i % 200)
        assert _folder_bytes(cache) <= cache.max_bytes
    assert cache.get("k39") is not None and int(cache.get("k39")[0]) == 39
    assert cache.get("k0") is None  # evicted, least recently used first


def test_the_folder_is_listed_rarely_not_on_every_write(tmp_path, monkeypatch):
    cache = BlockCache(tmp_path / "c", max_bytes=1 << 20)
    listings = []
    real = cache._evict
    monkeypatch.setattr(cache, "_evict", lambda: (listings.append(1), real()))
    for i in range(100):  # 100 x ~1 KB: under an eighth of the limit after the first listing
        cache.put(f"k{i}", np.zeros(1000, np.uint8))
    assert len(listings) == 1


def test_two_workers_writing_the_same_folder_overshoot_by_at_most_their_slack(tmp_path):
    """Each process counts only its own writes between listings: together they can pass the
    limit by at most an eighth of it each, and the next listing brings it back."""
    limit = 32 * 1128
    a, b = BlockCache(tmp_path / "c", limit), BlockCache(tmp_path / "c", limit)
    for i in range(200):
        (a if i % 2 else b).put(f"k{i}", np.zeros(1000, np.uint8))
        assert _folder_bytes(a) <= limit + 2 * (limit // 8 + 1128)


def test_a_hit_is_mapped_read_only_and_outlives_its_eviction(tmp_path):
    """A hit is the file mapped, not read into memory: the cut copies only the windows it
    takes. The map is read-only (nothing writes into a cached block by accident), and a file
    another worker evicts while it is mapped stays readable until the map goes."""
    cache = BlockCache(tmp_path / "c", max_bytes=1 << 20)
    block = np.arange(4 * 16 * 16, dtype=np.float32).reshape(4, 16, 16)
    cache.put("b", block)
    hit = cache.get("b")
    assert isinstance(hit, np.memmap) and not hit.flags.writeable
    np.testing.assert_array_equal(hit, block)
    for p in cache.folder.glob("*.npy"):
        p.unlink()  # evicted by another process meanwhile
    window = np.array(hit[1:3, 4:8, 4:8])
    np.testing.assert_array_equal(window, block[1:3, 4:8, 4:8])
    assert cache.get("b") is None  # gone for the next reader


def test_a_hit_evicted_before_it_is_marked_used_is_still_returned(tmp_path, monkeypatch):
    cache = BlockCache(tmp_path / "c", max_bytes=1 << 20)
    cache.put("b", np.ones(100, np.float32))
    real_load = np.load

    def load_then_evicted(path, *a, **k):
        arr = real_load(path, *a, **k)
        path.unlink()  # another worker evicts it between the map and the touch
        return arr

    monkeypatch.setattr(np, "load", load_then_evicted)
    hit = cache.get("b")
    assert hit is not None and float(hit.sum()) == 100.0
