"""The command line, run as a user runs it: a real process, real output."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cloudmic.demo import DEMO_DATASETS


def cli(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "cloudmic.cli", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"cloudmic {' '.join(args)} -> {proc.returncode}\n{proc.stderr}")
    return proc


def test_help_teaches():
    out = cli("--help").stdout
    for word in ("demo", "store", "synth", "ingest", "ls", "info", "verify", "examples:",
                 "AWS_ACCESS_KEY_ID"):
        assert word in out
    assert "--source" in cli("ingest", "--help").stdout


def test_synth_ingest_ls_info_verify_on_s3(tmp_path, s3_env):
    src = tmp_path / "src"
    cli("synth", "biosr", "--out", str(src), "--train", "20", "--validate", "2", "--test", "1",
        "-q")
    assert (src / "BioSR/Microtubules/test_wf/level_09/001.tif").exists()
    root = "s3://cli-test"
    # not quiet: the bar and the cluster's line on stderr, the report alone on stdout
    proc = cli("ingest", "biosr", "--source", str(src), "--dest", root, "--json")
    report = json.loads(proc.stdout)
    assert "dask scheduler tcp://127.0.0.1:" in proc.stderr and "ingest biosr" in proc.stderr
    assert report["groups"] == {"train": 20, "validate": 2, "test": 1}
    listing = cli("ls", root).stdout
    assert "biosr" in listing and "train 20" in listing
    ls_json = json.loads(cli("ls", root, "--json").stdout)
    assert ls_json["datasets"]["biosr"]["compression_ratio"] > 1
    info = json.loads(cli("info", f"{root}/biosr.zarr", "--json").stdout)
    wf = info["groups"]["train"]["variables"]["wf"]
    assert wf["dims"] == ["sample", "y", "x"] and wf["dtype"] == "uint16"
    assert info["groups"]["train"]["length"] == 20
    text = cli("info", f"{root}/biosr.zarr").stdout
    assert "compression" in text
    # where each fact comes from, beside the value, in the store, info and the listing
    assert info["provenance"]["license"].startswith("source: DeepTrackAI README")
    assert "(source: DeepTrackAI README (seed 002), Original Source: CC BY 4.0)" in text
    assert "cite: Qiao, Chang; Li, Di. BioSR" in text and "(text: source:" in text
    assert "splits.test.level_photons: derived:" in text
    assert ls_json["datasets"]["biosr"]["provenance"] == info["provenance"]
    verify = json.loads(cli("verify", f"{root}/biosr.zarr", "--json").stdout)
    assert verify["ok"], verify


def test_errors_are_one_clear_line_and_exit_2(tmp_path):
    proc = cli("ingest", "biosr", "--source", str(tmp_path / "nope"), "--dest",
               str(tmp_path / "root"), check=False)
    assert proc.returncode == 2
    assert "error:" in proc.stderr and "does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = cli("ingest", "nosuch", "--source", ".", "--dest", str(tmp_path), check=False)
    assert proc.returncode == 2 and "known: biosr" in proc.stderr


def test_verify_reports_a_corrupted_shard(tmp_path, biosr_sources, small_manifest):
    from cloudmic.ingest import ingest

    root = tmp_path / "root"
    ingest(str(small_manifest), biosr_sources["uint16"], str(root))
    shard = next((root / "biosr.wds" / "train").glob("*.tar"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    proc = cli("verify", f"{root}/biosr.zarr", check=False)
    assert proc.returncode == 1 and "FAIL" in proc.stdout and shard.name in proc.stdout


@pytest.mark.e2e
def test_demo_runs_twice(tmp_path, s3_server):
    env = {"CLOUDMIC_STORE_DIR": str(s3_server.data_dir)}
    for _ in range(2):
        out = json.loads(cli("demo", "--workdir", str(tmp_path), "--json", env=env).stdout)
        assert out["store"] == s3_server.endpoint  # reused the running server
        biosr = out["datasets"]["biosr"]
        assert biosr["stream"]["patches"] == 256 and biosr["ingest"]["records"] > 500
        assert set(out["datasets"]) == set(DEMO_DATASETS)
        assert out["datasets"]["dl-smlm"]["stream"]["patch_shapes"]["sr"] == [256, 256]
        assert out["datasets"]["platelet-em"]["stream"]["patch_shapes"]["image"] == [4, 64, 64]
        assert out["datasets"]["deepcad"]["stream"]["patch_shapes"]["high"] == [16, 64, 64]
    listing = cli("ls", "s3://cloudmic-demo", env=env).stdout
    assert all(name in listing for name in DEMO_DATASETS)


def test_synth_every_dataset_and_reject_foreign_options(tmp_path):
    cli("synth", "platelet-em", "--out", str(tmp_path / "pe"), "--slices", "4", "--size", "64",
        "-q")
    assert (tmp_path / "pe" / "platelet-em" / "labels-semantic" / "50-semantic.json").exists()
    cli("synth", "deepcad", "--out", str(tmp_path / "dc"), "--recordings", "1", "--frames",
        "8", "--size", "64", "-q")
    assert len(list((tmp_path / "dc").rglob("*SNR.tif"))) == 2
    proc = cli("synth", "sted-fm", "--out", str(tmp_path / "s"), "--train", "3", check=False)
    assert proc.returncode == 2 and "does not take --train" in proc.stderr


def test_ingest_prints_found_n_of_m_and_strict_refuses(tmp_path, biosr_sources, small_manifest):
    root = tmp_path / "root"
    args = ("ingest", str(small_manifest), "--source", str(biosr_sources["uint16"]), "--dest",
            str(root), "--in-process", "-q")
    proc = cli(*args, "--strict", check=False)
    assert proc.returncode == 2 and "train: found 40 of 41040 expected" in proc.stderr
    assert "Traceback" not in proc.stderr and "nothing written" in proc.stderr
    assert not root.exists() or not any(root.rglob("*"))  # nothing published
    out = cli(*args).stdout
    assert "warn  train: found 40 of 41040 expected samples" in out
    assert "warn  test: found 2 of 150 expected samples" in out
    verify = cli("verify", f"{root}/biosr.zarr")
    assert "warn  validate: found 6 of 2160 expected samples" in verify.stdout
    strict = cli("verify", f"{root}/biosr.zarr", "--strict", check=False)
    assert strict.returncode == 1 and "FAIL  train: found 40 of 41040" in strict.stdout


def test_ingest_prints_the_real_thunderstorm_warning(tmp_path):
    """`cloudmic verify` warned that most localizations of the real export lie outside the
    field of view while `cloudmic ingest` printed nothing: the ingest summary says it now."""
    import shutil

    from cloudmic.synth.dl_smlm import synth_dl_smlm
    from realdata import COLICOORDS, real_path

    real = real_path(COLICOORDS / "examples" / "data" / "06" / "03_storm.csv")
    src = tmp_path / "src"
    synth_dl_smlm(src, structures=("CCPs",), cells=1, frames=12, size=256, seed=3)
    shutil.copy(real, src / "CCPs" / "cell1" / "SR_locs.csv")
    args = ("ingest", "dl-smlm", "--source", str(src), "--in-process", "-q")
    out = cli(*args, "--dest", str(tmp_path / "a")).stdout
    warn = [line for line in out.splitlines() if line.startswith("warn  ")]
    assert any("CCPs/cell1: " in w and "(69.9" in w and "outside the 33280 x 33280 nm field"
               in w for w in warn), out
    report = json.loads(cli(*args, "--dest", str(tmp_path / "b"), "--json").stdout)
    assert [f"warn  {w}" for w in report["warnings"]] == warn
