"""Every field a reader asks of a catalog entry, a version pointer or a store's provenance
is one the writer writes (the drift that once made `cloudmic info` print `created None`)."""

from __future__ import annotations

from typing import Any

import pytest

from cloudmic.catalog import facts as catalog_facts_module
from cloudmic.client import describe
from cloudmic.ingest import ingest
from cloudmic.storage.catalog_json import CatalogEntry
from cloudmic.storage.location import Location
from cloudmic.storage.versions import read_pointer

# fields a reader may ask for that a fresh publish need not write: absent on purpose
OPTIONAL = {
    "previews",  # only when previews could be drawn (a failure only warns)
}


class Watched(dict):
    """A dict that remembers every key asked of it that it does not hold."""

    misses: set[str] = set()

    def get(self, key: Any, default: Any = None) -> Any:
        if key not in self:
            Watched.misses.add(key)
        return super().get(key, default)


def _watch(value: Any) -> Any:
    if isinstance(value, dict) and not isinstance(value, Watched):
        return Watched({k: _watch(v) for k, v in value.items()})
    return value


@pytest.fixture
def published(tmp_path, biosr_sources, small_manifest) -> str:
    root = tmp_path / "root"
    ingest(str(small_manifest), biosr_sources["uint16"], str(root))
    return str(root)


def test_readers_ask_only_for_fields_the_writer_writes(published, monkeypatch):
    Watched.misses = set()
    for module in (describe, catalog_facts_module):
        for name in ("read_pointer", "read_catalog", "read_version_facts",
                     "read_store_metadata"):
            original = getattr(module, name, None)
            if original is None:
                continue

            def watched(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
                out = _original(*args, **kwargs)
                if isinstance(out, tuple):  # read_store_metadata: (attrs, arrays)
                    return (_watch(out[0]), *out[1:])
                if isinstance(out, dict) and "datasets" in out:  # the catalog
                    return {**out, "datasets": {k: _watch(v)
                                                for k, v in out["datasets"].items()}}
                return _watch(out)

            monkeypatch.setattr(module, name, watched)
    listing = describe.list_root(published)
    assert listing["datasets"]["biosr"]["published"]
    d = describe.info(f"{published}/biosr.zarr")
    assert d["published"] and d["provenance"]["license"].startswith("source:")
    catalog_facts_module.catalog_facts(published)
    assert Watched.misses <= OPTIONAL, (
        f"readers ask for fields no writer writes: {sorted(Watched.misses - OPTIONAL)}")


def test_the_written_entry_is_the_declared_one(published):
    """What publish writes is exactly CatalogEntry's fields: nothing undeclared, nothing
    declared left out (a fresh publish has previews)."""
    entry = read_pointer(Location.parse(published), "biosr")
    assert set(entry) == set(CatalogEntry.__annotations__)
