"""The ``example`` section of the manifests: the one place for the PatchStream arguments the
catalog page shows and for what ``cloudmic demo`` synthesises and streams."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from cloudmic.demo import DEMO_DATASETS, demo_datasets
from cloudmic.errors import ManifestError
from cloudmic.manifest import available, load_manifest, manifests_dir, parse_manifest

CATALOG = Path(__file__).resolve().parents[2] / "cloudmic" / "catalog"


def _raw(name: str) -> dict:
    return yaml.safe_load((manifests_dir() / f"{name}.yaml").read_text(encoding="utf-8"))


def _write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return path


@pytest.mark.parametrize("name", available())
def test_every_manifest_has_an_example(name):
    example = load_manifest(name).example
    assert example is not None and example.demo
    kwargs = example.stream.kwargs()
    assert set(kwargs) <= {"group", "variables", "patch", "patches_per_sample"}
    assert kwargs["variables"] and all(n >= 1 for n in kwargs["patch"].values())
    # plain lists and dicts: what a snippet prints and the demo passes on
    assert isinstance(kwargs["variables"], (list, dict))


def test_demo_streams_the_manifest_examples():
    assert demo_datasets() == DEMO_DATASETS
    assert set(DEMO_DATASETS) == set(available())
    for name, (sizes, args) in DEMO_DATASETS.items():
        example = load_manifest(name).example
        assert sizes == example.demo_sizes() and args == example.stream.kwargs()
    assert DEMO_DATASETS["platelet-em"][1]["variables"] == {
        "image": "0/image", "semantic": "labels/semantic/0/semantic"}


@pytest.mark.parametrize("name", available())
def test_the_example_is_not_part_of_the_digest(tmp_path, name):
    """It builds no store: changing the demo sizes must not make stores look outdated."""
    raw = _raw(name)
    with_example = parse_manifest(_write(tmp_path, raw)).digest()
    del raw["example"]
    assert parse_manifest(_write(tmp_path, raw)).digest() == with_example
    raw["example"] = {"stream": {"group": "x", "variables": ["y"], "patch": {"x": 1}}}
    assert parse_manifest(_write(tmp_path, raw)).digest() == with_example


@pytest.mark.parametrize(("change", "message"), [
    (lambda e: e["stream"].update(patchsize={"x": 8}), r"example\.stream\.patchsize' is unknown"),
    (lambda e: e["stream"].update(patch={"y": 0, "x": 64}), "at least 1 pixel"),
    (lambda e: e["stream"].update(variables=[]), "name at least one"),
    (lambda e: e["stream"].pop("group"), r"example\.stream\.group' is missing"),
    (lambda e: e.update(demo={"train": 1.5}), r"example\.demo\.train"),
])
def test_the_example_is_strict(tmp_path, change, message):
    raw = _raw("biosr")
    change(raw["example"])
    with pytest.raises(ManifestError, match=message):
        parse_manifest(_write(tmp_path, raw))


def test_catalog_imports_no_command():
    """The catalog reads the per-dataset facts from manifests, never from a command's
    module (``cloudmic.demo``) or the ingest."""
    for path in CATALOG.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        names += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [m for m in names if m and m.split(".")[:2] in (["cloudmic", "demo"],
                                                                  ["cloudmic", "ingest"])], path
