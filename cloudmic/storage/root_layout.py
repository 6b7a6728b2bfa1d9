"""The names under a store root, spelled once (ADR 0007).

::

    ROOT/catalog.json                                  index of what is published
    ROOT/<name>.releases/current.json                  pointer: the current version + facts
    ROOT/<name>.releases/<version>/version.json        written last: the version is complete
    ROOT/<name>.releases/<version>/<name>.zarr         immutable once written
    ROOT/<name>.releases/<version>/<name>.wds/index.json
    ROOT/<name>.releases/<version>/<name>.previews/previews.json
    ROOT/<name>.zarr, <name>.wds, <name>.previews      local roots: symlinks to the current
                                                       version; object stores: names only,
                                                       resolved through the pointer
    ROOT/.cloudmic/staging/<name>-<run>/               private: work in progress
"""

from __future__ import annotations

import re

CATALOG = "catalog.json"
PRIVATE = ".cloudmic"  # never served to anonymous readers
STAGING = f"{PRIVATE}/staging"
POINTER = "current.json"
VERSION_FACTS = "version.json"
# not ".versions": SeaweedFS keeps its own S3 object versions under "<key>.versions/" and
# hides such keys from listings (measured on 4.48, ADR 0007)
VERSIONS_SUFFIX = ".releases"
INDEX = "index.json"  # inside <name>.wds
PREVIEWS_INDEX = "previews.json"  # inside <name>.previews

# the parts of one published dataset, by suffix
PARTS = (".zarr", ".wds", ".previews")

# 20261202T071502123456Z-1a2b3c: sorts in publication order
VERSION_RE = re.compile(r"^\d{8}T\d{12}Z-[0-9a-f]{6}$")


def zarr_name(dataset: str) -> str:
    return f"{dataset}.zarr"


def wds_name(dataset: str) -> str:
    return f"{dataset}.wds"


def previews_name(dataset: str) -> str:
    return f"{dataset}.previews"


def versions_dir(dataset: str) -> str:
    return f"{dataset}{VERSIONS_SUFFIX}"


def version_dir(dataset: str, version: str) -> str:
    return f"{versions_dir(dataset)}/{version}"


def split_part(name: str) -> tuple[str, str] | None:
    """``biosr.zarr`` -> (``biosr``, ``.zarr``); None for a name that is no dataset part."""
    for suffix in PARTS:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], suffix
    return None
