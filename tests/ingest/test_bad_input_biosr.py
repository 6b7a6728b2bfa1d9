"""Each kind of bad input gets an error naming the file and the fix, and whatever was
published before stays byte-for-byte the same."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from cloudmic.errors import SourceError, StoreError
from cloudmic.ingest import ingest
from fixtures_biosr import snapshot


def _drop_wf(mt: Path) -> Path:
    (mt / "training_wf" / "00000007.tif").unlink()
    return mt / "training_gt" / "00000007.tif"


def _drop_gt(mt: Path) -> Path:
    (mt / "validate_gt" / "00000003.tif").unlink()
    return mt / "validate_wf" / "00000003.tif"


def _truncate(mt: Path) -> Path:
    p = mt / "training_gt" / "00000012.tif"
    p.write_bytes(p.read_bytes()[:5000])
    return p


def _odd_shape(mt: Path) -> Path:
    p = mt / "training_wf" / "00000020.tif"
    tifffile.imwrite(p, np.zeros((96, 128), "uint16"))
    return p


def _odd_dtype(mt: Path) -> Path:
    p = mt / "validate_wf" / "00000002.tif"
    tifffile.imwrite(p, np.zeros((128, 128), "float32"))
    return p


def _stray(mt: Path) -> Path:
    p = mt / "training_wf" / "notes.txt"
    p.write_text("not an image")
    return p


def _missing_level(mt: Path) -> Path:
    p = mt / "test_wf" / "level_05" / "002.tif"
    p.unlink()
    return mt / "test_gt" / "002.tif"


CASES = {
    "gt-without-wf": (_drop_wf, "no widefield input partner"),
    "wf-without-gt": (_drop_gt, "no ground truth partner"),
    "truncated-tiff": (_truncate, "truncated TIFF"),
    "other-shape": (_odd_shape, r"\(96, 128\).*other wf images"),
    "other-dtype": (_odd_dtype, "float32.*other wf images"),
    "stray-file": (_stray, "not a TIFF"),
    "incomplete-test-level": (_missing_level, "no widefield input partner"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_source_is_named_and_publication_kept(case, root_url, biosr_sources, biosr_copy,
                                                  small_manifest):
    ingest(str(small_manifest), biosr_sources["uint16"], root_url)
    before = snapshot(root_url)
    mutate, message = CASES[case]
    mt = biosr_copy("uint16")
    culprit = mutate(mt)
    with pytest.raises(SourceError, match=message) as err:
        ingest(str(small_manifest), mt.parent.parent, root_url)
    assert str(culprit) in str(err.value)
    assert "what to do:" in str(err.value)
    assert snapshot(root_url) == before


@pytest.mark.parametrize("kind", ["missing", "empty", "unrelated"])
def test_missing_or_empty_source(kind, tmp_path):
    src = tmp_path / "src"
    if kind != "missing":
        src.mkdir()
    if kind == "unrelated":
        (src / "photos").mkdir()
    with pytest.raises(SourceError, match="does not exist" if kind == "missing"
                       else "no BioSR tree") as err:
        ingest("biosr", src, str(tmp_path / "root"))
    assert "cloudmic synth biosr" in str(err.value)
    assert not (tmp_path / "root").exists()


def test_readonly_credentials_cannot_publish(s3_server, biosr_sources, small_manifest):
    root = "s3://readonly-target"
    ingest(str(small_manifest), biosr_sources["uint16"], root,
           storage_options=s3_server.storage_options())
    before = snapshot(root)
    with pytest.raises(StoreError, match="cannot write there") as err:
        ingest(str(small_manifest), biosr_sources["float32"], root,
               storage_options=s3_server.storage_options(readonly=True))
    assert "AWS_ACCESS_KEY_ID" in str(err.value)
    assert snapshot(root) == before


def test_unwritable_local_destination(tmp_path, biosr_sources, small_manifest):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot write there"):
        ingest(str(small_manifest), biosr_sources["uint16"], str(blocker / "root"))
