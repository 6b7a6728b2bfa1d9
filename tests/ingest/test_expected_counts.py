"""The publisher's counts: an ingest and `verify` say "found N of M expected" per split,
a warning for a partial copy and an error with strict (nothing written); the verify
warnings (figures included) reach the ingest report."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from cloudmic.errors import ManifestError, VerifyFailed
from cloudmic.ingest import ingest
from cloudmic.ingest.verify import compare_counts, verify_dataset
from cloudmic.manifest import Expected, load_manifest, manifests_dir, parse_manifest
from cloudmic.storage.location import Location
from fixtures_biosr import SIZES
from realdata import COLICOORDS, real_path


def _manifest_with(tmp_path: Path, small_manifest: Path, **changes) -> Path:
    raw = yaml.safe_load(small_manifest.read_text())
    for key, value in changes.items():
        raw[key] = value
    p = tmp_path / "biosr.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def test_shipped_manifests_carry_the_publishers_counts():
    biosr = load_manifest("biosr").expected_counts()
    assert {k: v.samples for k, v in biosr.items()} == {"train": 41040, "validate": 2160,
                                                        "test": 150}
    sted = load_manifest("sted-fm").expected_counts()
    assert sted["crop"].samples == 976_022 and sted["crop"].labelled == 238_683
    assert "37,387" in sted["crop"].source and sted["crop"].assumed  # not stated per archive
    assert all(e.optional for e in sted.values())  # alternative encodings of one dataset
    pe = load_manifest("platelet-em").expected_counts()
    assert {k: v.samples for k, v in pe.items()} == {"50": 50, "24": 24}


def test_partial_copy_ingests_with_found_n_of_m_warnings(tmp_path, biosr_sources,
                                                         small_manifest):
    root = tmp_path / "root"
    report = ingest(str(small_manifest), biosr_sources["uint16"], str(root))
    assert report.groups == SIZES
    for split, n, m in (("train", 40, 41040), ("validate", 6, 2160), ("test", 2, 150)):
        assert any(w.startswith(f"{split}: found {n} of {m} expected samples")
                   for w in report.warnings), report.warnings
    assert report.as_dict()["warnings"] == report.warnings  # --json carries them
    verify = verify_dataset(Location.parse(str(root)), "biosr")
    assert verify.ok and "train: found 40 of 41040 expected samples" in " ".join(verify.warnings)
    strict = verify_dataset(Location.parse(str(root)), "biosr", strict=True)
    assert not strict.ok and any("found 40 of 41040" in p for p in strict.problems)


def test_strict_refuses_a_partial_copy_and_writes_nothing(tmp_path, biosr_sources,
                                                          small_manifest):
    root = tmp_path / "root"
    with pytest.raises(VerifyFailed, match=r"(?s)strict.*train: found 40 of 41040 expected"):
        ingest(str(small_manifest), biosr_sources["uint16"], str(root), strict=True)
    assert not root.exists() or not any(root.rglob("*"))


def test_complete_copy_has_no_count_warning_and_passes_strict(tmp_path, biosr_sources,
                                                              small_manifest):
    manifest = _manifest_with(tmp_path, small_manifest, expected=dict(SIZES))
    root = tmp_path / "root"
    report = ingest(str(manifest), biosr_sources["float32"], str(root), strict=True)
    assert not [w for w in report.warnings if "expected" in w], report.warnings
    verify = verify_dataset(Location.parse(str(root)), "biosr",
                            expected=parse_manifest(manifest).expected_counts(), strict=True)
    assert verify.ok and "train: found 40 of 40 expected samples" in verify.checks


def test_a_missing_split_counts_as_zero(tmp_path, biosr_copy, small_manifest):
    src = biosr_copy("uint16")
    for d in ("test_wf", "test_gt"):
        shutil.rmtree(src / d)
    report = ingest(str(small_manifest), src.parent.parent, str(tmp_path / "root"))
    assert any(w.startswith("test: found 0 of 150 expected samples (not in this copy")
               for w in report.warnings), report.warnings


def test_old_expected_samples_still_count_and_conflicts_are_named(tmp_path):
    raw = yaml.safe_load((manifests_dir() / "biosr.yaml").read_text())
    del raw["expected"]
    raw["splits"]["train"]["expected_samples"] = 41040  # manifests written before `expected`
    p = tmp_path / "old.yaml"
    p.write_text(yaml.safe_dump(raw))
    assert parse_manifest(p).expected_counts() == {"train": Expected(samples=41040)}
    raw["expected"] = {"train": 41041}
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(ManifestError, match="expected_samples.*differ"):
        parse_manifest(p)
    raw["expected"] = {"train": {"samples": 41040, "count": 1}}
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(ManifestError, match="expected.train.count' is unknown"):
        parse_manifest(p)


def test_compare_counts_optional_labelled_and_surplus():
    expected = {"crop": Expected(samples=10, labelled=4, optional=True),
                "crops-raw": Expected(samples=10, optional=True),
                "train": Expected(samples=5, source="README")}
    complete, partial = compare_counts({"crop": 10, "train": 6}, expected, {"crop": 3})
    assert complete == ["crop: found 10 of 10 expected samples"]
    assert partial == ["crop: found 3 of 4 expected labelled samples (a partial copy)",
                       "train: found 6 of 5 expected samples (more than the publisher "
                       "states; README)"]  # an optional archive that is absent says nothing


def test_sted_fm_labelled_count_from_the_store(tmp_path):
    from cloudmic.synth.sted_fm import synth_sted_fm

    synth_sted_fm(tmp_path / "src", crops=12, unlabelled=2, seed=1)
    report = ingest("sted-fm", tmp_path / "src", str(tmp_path / "root"))
    text = "\n".join(report.warnings)
    assert "crop: found 14 of 976022 expected samples" in text
    assert "crop: found 12 of 238683 expected labelled samples" in text
    assert "crops-raw" not in text  # another encoding of the same crops: not missing


def test_ingest_report_carries_the_real_thunderstorm_warning(tmp_path):
    """The real ColiCoords export as a cell's SR_locs.csv: most localizations lie outside
    the field of view; `verify` said so, now the ingest report does too."""
    from cloudmic.synth.dl_smlm import synth_dl_smlm

    real = real_path(COLICOORDS / "examples" / "data" / "06" / "03_storm.csv")
    synth_dl_smlm(tmp_path / "src", structures=("CCPs",), cells=1, frames=12, size=256, seed=3)
    shutil.copy(real, tmp_path / "src" / "CCPs" / "cell1" / "SR_locs.csv")
    report = ingest("dl-smlm", tmp_path / "src", str(tmp_path / "root"))
    fov = [w for w in report.warnings if "outside the" in w and "field of view" in w]
    assert fov and "(69.9" in fov[0] and "33280 x 33280 nm" in fov[0], report.warnings
    assert report.as_dict()["warnings"] == report.warnings
