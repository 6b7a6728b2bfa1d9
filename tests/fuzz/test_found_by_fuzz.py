"""Inputs the fuzz suite found, kept as plain regression tests (no subprocess needed)."""

from __future__ import annotations

import pytest

from cloudmic.errors import ManifestError


def test_manifest_that_is_not_utf8_is_a_manifest_error(tmp_path):
    from cloudmic.manifest import parse_manifest

    path = tmp_path / "bad.yaml"
    path.write_bytes(b"\x80name: x\n")
    with pytest.raises(ManifestError, match=r"bad\.yaml: cannot read manifest YAML"):
        parse_manifest(path)
