"""The Zarr hierarchy built in memory and then written is the one zarr builds in place."""

from __future__ import annotations

from pathlib import Path

import pytest
import zarr

from cloudmic.datasets import get_adapter
from cloudmic.layout import zarr_layout
from cloudmic.manifest import load_manifest
from cloudmic.synth import get_generator

SIZES = {"platelet-em": {"slices": 8, "size": 64},  # nested groups: labels, sub-groups
         "dl-smlm": {"cells": 2, "frames": 10, "size": 64, "structures": ["CCPs"]}}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("name", sorted(SIZES))
def test_the_same_documents_and_chunks_as_built_in_place(name, tmp_path):
    src = tmp_path / "src"
    get_generator(name)(src, **SIZES[name], seed=0)
    manifest = load_manifest(name)
    inv = get_adapter(manifest).scan(src)
    attrs = {"cloudmic": {"dataset": name}}

    built = zarr.open_group(zarr.storage.LocalStore(tmp_path / "built"), mode="w",
                            zarr_format=3, attributes=attrs)
    zarr_layout.create_groups(built, inv.groups, manifest.storage)

    ref = zarr.open_group(zarr.storage.LocalStore(tmp_path / "ref"), mode="w",
                          zarr_format=3, attributes=attrs)  # zarr's own calls, in place
    made = [zarr_layout._create_group(ref, g) for g in inv.groups]
    for made_g, g in zip(made, inv.groups, strict=True):
        for spec in g.variables:
            zarr_layout._create_array(made_g, g, spec, manifest.storage)

    got, want = _files(tmp_path / "built"), _files(tmp_path / "ref")
    assert got.keys() == want.keys() and len(got) > 20
    assert got == want
