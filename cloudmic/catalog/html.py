"""A static HTML catalog of everything published under a root (``cloudmic catalog``).

``catalog_facts(root)`` (``facts.py``) gathers, per dataset, what ``cloudmic ls`` and
``cloudmic info`` report, the split counts, provenance notes, previews and copy-paste
snippets. ``build_catalog(root, out_dir)`` writes them as one self-contained ``index.html``
(inline CSS, no scripts, no external resources) plus the preview PNGs, copied from the
store. The page is rendered from the Jinja2 templates in ``templates/`` with autoescaping:
whatever text a store holds is shown as text.
"""

from __future__ import annotations

import re
import shutil
from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader

from cloudmic.catalog.facts import catalog_facts
from cloudmic.catalog.view import anchor, dataset_view, human
from cloudmic.errors import CloudmicError
from cloudmic.storage.location import Location

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

SNIPPET_TITLES = {
    "xarray": "Open with plain xarray (no cloudmic needed)",
    "cloudmic.open": "Open with cloudmic (dask chunks the size of the stored shards)",
    "cloudmic.PatchStream": "Stream aligned training patches",
    "cloudmic.shards": "Read the WebDataset shards with cloudmic",
    "webdataset": "Read the shards with plain webdataset",
}

__all__ = ["build_catalog", "catalog_facts", "human", "render_html", "write_catalog"]


@cache
def _templates() -> Environment:
    env = Environment(loader=PackageLoader("cloudmic.catalog", "templates"), autoescape=True,
                      trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters.update(human=human, anchor=anchor)
    env.tests["web"] = lambda url: isinstance(url, str) and bool(re.match(r"https?://", url))
    env.globals["snippet_titles"] = SNIPPET_TITLES
    return env


def render_html(facts: dict[str, Any]) -> str:
    """The catalog page for ``catalog_facts(...)``: one self-contained HTML document."""
    views = {name: dataset_view(name, d) for name, d in facts["datasets"].items()}
    return _templates().get_template("page.html.j2").render(facts=facts, views=views)


def build_catalog(root_url: str, out_dir: Path, **storage_options: Any) -> Path:
    """Write ``out_dir/index.html`` and the preview PNGs of every dataset under ``root_url``
    (copied from ``<dataset>.previews/``); returns the path of ``index.html``."""
    facts = catalog_facts(root_url, **storage_options)
    return write_catalog(facts, out_dir, **storage_options)


def write_catalog(facts: dict[str, Any], out_dir: Path, **storage_options: Any) -> Path:
    """Write the page of already gathered ``facts`` (see ``build_catalog``)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise CloudmicError(f"{out_dir}: exists and is not a folder; pass a folder for --html")
    out_dir.mkdir(parents=True, exist_ok=True)
    root = Location.parse(facts["root"], **storage_options)
    for name, d in facts["datasets"].items():
        target = out_dir / name
        if target.is_dir():
            shutil.rmtree(target)  # our own folder from an earlier build
        doc = d.get("previews")
        if not doc or not d.get("previews_url"):
            continue
        pdir = Location(d["previews_url"], root.storage_options).url.rsplit("/", 1)[0]
        for fig in doc["figures"]:
            kept = []
            for p in fig["panels"]:
                try:
                    data = Location(pdir, root.storage_options).child(p["file"]).read_bytes()
                except FileNotFoundError:
                    d["problems"].append(f"preview {p['file']} is listed but missing")
                    continue
                if not data.startswith(PNG_MAGIC):
                    d["problems"].append(f"preview {p['file']} is not a PNG; skipped")
                    continue
                target.mkdir(parents=True, exist_ok=True)
                (target / p["file"]).write_bytes(data)
                kept.append(p)
            fig["panels"] = kept
    index = out_dir / "index.html"
    tmp = out_dir / ".index.html.tmp"
    tmp.write_text(render_html(facts), encoding="utf-8")
    tmp.replace(index)
    return index
