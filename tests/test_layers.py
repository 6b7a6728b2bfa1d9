"""The house plan (docs/adr/0008-house-plan.md), checked on the code with ``ast``: no import
runs upward through the layers, and the store root's names are spelled in one module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cloudmic"

# bottom to top; a module may import its own layer and those below it
LAYERS: list[set[str]] = [
    {"errors", "_version", "humanize", "manifest", "formats", "storage"},
    {"layout"},
    {"sources", "datasets", "synth"},
    {"client"},
    {"catalog"},
    {"ingest"},
    {"demo"},
    {"cli"},
]
FACE = {"__init__", "__main__"}  # the package face may name anything
ROOT_LAYOUT = PACKAGE / "storage" / "root_layout.py"
# what only root_layout.py may spell: the objects under a store root
ROOT_NAMES = ("catalog.json", "index.json", "current.json", "version.json", ".releases",
              ".previews", ".zarr", ".wds", "staging")


def _layer(part: str) -> int | None:
    return next((k for k, names in enumerate(LAYERS) if part in names), None)


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "templates" not in p.parts)


def _top(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _imports(tree: ast.AST) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
    return [(line, m.split(".")[1]) for line, m in out
            if m.startswith("cloudmic.") and len(m.split(".")) > 1]


def test_every_package_part_has_a_layer():
    parts = {_top(p) for p in _modules()} - FACE
    assert not [p for p in parts if _layer(p) is None], "add new parts to LAYERS"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_import_runs_upward(path):
    here = _top(path)
    if here in FACE:
        return
    mine = _layer(here)
    upward = [f"line {line}: cloudmic.{target}" for line, target in
              _imports(ast.parse(path.read_text(encoding="utf-8")))
              if _layer(target) is not None and _layer(target) > mine]
    assert not upward, f"{path.relative_to(PACKAGE)} ({here}) imports upward: {upward}"


def _strings(tree: ast.AST) -> list[tuple[int, str]]:
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def _is_docstring_or_message(text: str) -> bool:
    return " " in text.strip()  # prose (docstrings, messages, help) may name the objects


@pytest.mark.parametrize("path", [p for p in _modules() if p != ROOT_LAYOUT],
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_store_root_names_live_in_root_layout(path):
    spelled = [f"line {line}: {text!r}" for line, text in
               _strings(ast.parse(path.read_text(encoding="utf-8")))
               if not _is_docstring_or_message(text)
               and any(name in text for name in ROOT_NAMES)]
    assert not spelled, (f"{path.relative_to(PACKAGE)} spells store-root names; import them "
                         f"from cloudmic.storage.root_layout: {spelled}")
