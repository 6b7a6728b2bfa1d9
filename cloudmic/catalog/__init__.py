"""``cloudmic catalog``: previews computed at ingest (``previews.py``) and a static HTML
catalog of everything published under a root: its facts (``facts.py``, with ``streams.py``
and ``snippets.py``), their view (``view.py``) and the page (``html.py``, rendering the
Jinja2 templates in ``templates/``)."""

from __future__ import annotations

from typing import Any

from cloudmic.catalog.previews import make_previews

# html.py pulls in the client layer; imported on first use so ingest stays light
_LAZY = {"build_catalog", "catalog_facts"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from cloudmic.catalog import html

        return getattr(html, name)
    raise AttributeError(f"module 'cloudmic.catalog' has no attribute {name!r}")


__all__ = ["build_catalog", "catalog_facts", "make_previews"]
