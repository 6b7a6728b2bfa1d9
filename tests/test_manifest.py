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


def test_a_provenance_note_names_a_real_field_and_one_kind(tmp_path, biosr_raw):
    raw = {**biosr_raw, "provenance": {"licence": {"assumed": "typo"}}}
    with pytest.raises(ManifestError, match="provenance.licence: no such manifest field"):
        parse_manifest(_write(tmp_path, raw))
    raw["provenance"] = {"license": {"assumed": "a", "source": "b"}}
    with pytest.raises(ManifestError, match="exactly one of source, assumed, derived"):
        parse_manifest(_write(tmp_path, raw))
    raw["provenance"] = {"citation.1.doi": {"source": "the README"}}
    assert parse_manifest(_write(tmp_path, raw)).note("citation.1.doi").label() == (
        "source: the README")


@pytest.mark.parametrize("name", available())
def test_every_license_and_citation_says_where_it_comes_from(name):
    """No license or citation without a note: a reader always sees whether the publisher
    states it (source), we computed it (derived) or we assume it."""
    m = load_manifest(name)
    assert m.note("license") is not None, f"{name}: license has no provenance note"
    for k in range(len(m.citation)):
        assert m.note(f"citation.{k}.text") is not None, f"{name}: citation {k} has no note"
