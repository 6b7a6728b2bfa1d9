from pathlib import Path

import pytest
import yaml

from cloudmic.errors import ManifestError
from cloudmic.manifest import available, load_manifest, parse_manifest


def _write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "m.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


@pytest.fixture
def biosr_raw() -> dict:
    from cloudmic.manifest import manifests_dir

    return yaml.safe_load((manifests_dir() / "biosr.yaml").read_text())


def test_shipped_manifests_parse():
    assert "biosr" in available()
    m = load_manifest("biosr")
    assert m.variables["gt"].scale_factors == (1, 2)
    assert m.splits["test"].levels == tuple(range(1, 10))
    assert len(m.splits["test"].level_photons) == 9
    assert m.digest() == load_manifest("biosr").digest()


def test_missing_field_is_named(tmp_path, biosr_raw):
    del biosr_raw["license"]
    with pytest.raises(ManifestError, match="field 'license' is missing"):
        parse_manifest(_write(tmp_path, biosr_raw))


def test_unknown_nested_field_is_named(tmp_path, biosr_raw):
    biosr_raw["storage"]["chunks"] = {"sample": 1}
    with pytest.raises(ManifestError, match="field 'storage.chunks' is unknown"):
        parse_manifest(_write(tmp_path, biosr_raw))


def test_bad_dtype_is_named(tmp_path, biosr_raw):
    biosr_raw["variables"]["wf"]["dtypes"] = ["float128"]
    with pytest.raises(ManifestError, match=r"variables\.wf\.dtypes.*float128"):
        parse_manifest(_write(tmp_path, biosr_raw))


def test_unknown_dataset_lists_known():
    with pytest.raises(ManifestError, match="known: .*biosr"):
        load_manifest("no-such-dataset")


def test_not_a_mapping(tmp_path):
    p = tmp_path / "m.yaml"
    p.write_text("- a\n- b\n")
    with pytest.raises(ManifestError, match="YAML mapping"):
        parse_manifest(p)
