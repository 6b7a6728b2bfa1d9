"""examples/explore.ipynb, executed as a user runs it: a real Jupyter kernel (this venv's
Python) against a small demo store on the session's SeaweedFS server, with the root URL
and credentials from the environment only."""

from __future__ import annotations

import json
import secrets
import sys
from collections import Counter
from pathlib import Path

import pytest

from cloudmic.demo import DEMO_DATASETS
from cloudmic.ingest import ingest
from cloudmic.synth import get_generator

pytestmark = pytest.mark.e2e

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "explore.ipynb"

# Small copies, about a second each to write and ingest.
SMALL = {
    "biosr": {"train": 8, "validate": 2, "test": 1, "variant": "uint16"},
    "dl-smlm": {"structures": ["CCPs"], "cells": 1, "frames": 10, "size": 64},
    "sted-fm": {"crops": 48, "unlabelled": 2, "variant": "uint8"},
    "platelet-em": {"slices": 8, "size": 128},
    "deepcad": {"recordings": 1, "frames": 32, "size": 64},
}
# checked to fit their PatchStream windows in DEMO_DATASETS (BioSR WF 128 >= 64, DL-SMLM WF
# 64 >= 32, STED-FM 224 >= 128, platelet-em 4-8 x 128 x 128 >= 4 x 64 x 64, DeepCAD
# 32 x 64 x 64 >= 16 x 64 x 64)
FIT_DEMO_WINDOWS = {"biosr", "dl-smlm", "sted-fm", "platelet-em", "deepcad"}
# ``## `` headings of the sections that must draw at least one figure
FIGURE_SECTIONS = ("BioSR", "DL-SMLM", "platelet-em", "DeepCAD", "STED-FM", "Training patches")


def _sizes(name: str) -> dict:
    # a dataset the demo streams but SMALL was not checked for (deepcad, once the demo has
    # its row) gets its demo sizes, which fit its own patch window by construction
    if name in DEMO_DATASETS and name not in FIT_DEMO_WINDOWS:
        return DEMO_DATASETS[name][0]
    return SMALL[name]


@pytest.fixture(scope="module")
def demo_root(s3_env, tmp_path_factory) -> str:
    """A fresh bucket holding small copies of all five datasets, as `cloudmic demo` makes."""
    root = f"s3://explore-nb-{secrets.token_hex(4)}"
    work = tmp_path_factory.mktemp("explore-sources")
    for name in SMALL:
        src = work / name
        get_generator(name)(src, **_sizes(name))
        ingest(name, src, root)
    return root


@pytest.fixture
def python3_kernel(tmp_path, monkeypatch) -> str:
    """A ``python3`` kernelspec running this interpreter, found before any user-level one."""
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (cloudmic venv)", "language": "python",
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return "python3"


def _images_per_section(nb) -> Counter:
    counts: Counter = Counter()
    section = None
    for cell in nb.cells:
        if cell.cell_type == "markdown" and cell.source.startswith("## "):
            section = cell.source.splitlines()[0][3:]
        for out in cell.get("outputs", []):
            if "image/png" in out.get("data", {}):
                counts[section] += 1
    return counts


def test_committed_notebook_has_no_outputs():
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    assert "CLOUDMIC_ROOT" in code[0].source


def test_notebook_runs_clean_on_a_small_store(demo_root, python3_kernel, s3_env, tmp_path,
                                              monkeypatch):
    import nbclient
    import nbformat

    monkeypatch.setenv("CLOUDMIC_ROOT", demo_root)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name=python3_kernel, timeout=300,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the traceback, if any cell raises

    outputs = [(i, out) for i, c in enumerate(nb.cells) if c.cell_type == "code"
               for out in c.outputs]
    errors = [(i, out.get("ename"), out.get("evalue")) for i, out in outputs
              if out.output_type == "error"]
    assert not errors, errors
    stderr = [(i, out.text) for i, out in outputs
              if out.output_type == "stream" and out.name == "stderr"]
    assert not stderr, stderr
    text = "".join(out.get("text", "") for _, out in outputs)
    assert s3_env["AWS_SECRET_ACCESS_KEY"] not in text and s3_env["AWS_ACCESS_KEY_ID"] not in text

    figures = _images_per_section(nb)
    missing = [s for s in FIGURE_SECTIONS if not any(k and k.startswith(s) for k in figures)]
    assert not missing, f"sections without a figure: {missing}; figures: {dict(figures)}"
    assert sum(figures.values()) >= len(FIGURE_SECTIONS) + len(DEMO_DATASETS)
    # one PatchStream batch grid per demo dataset
    patches = next(v for k, v in figures.items() if k and k.startswith("Training patches"))
    assert patches == len(DEMO_DATASETS)
    # the re-render reproduces the stored SR image
    assert "max |re-render - stored| = " in text
    diff = float(text.split("max |re-render - stored| = ")[1].split()[0])
    assert diff < 1e-5
