"""PatchStream arguments for a catalog page's snippet: the dataset manifest's example (the
ones the demo streams), else the first image-like variable with a 64-pixel window; each
checked against the store before it is shown."""

from __future__ import annotations

import fnmatch
import logging
from typing import Any

from cloudmic.client.metadata import read_store_metadata
from cloudmic.errors import CloudmicError
from cloudmic.manifest import available, load_manifest
from cloudmic.storage.location import Location

log = logging.getLogger(__name__)


def _shrunk(args: dict[str, Any], arrays: dict[str, Any]) -> dict[str, Any] | None:
    """``args`` with the patch shrunk to the smallest reference array it may meet (arrays at
    the reference variable's path under a group the pattern matches), None if there is none."""
    variables = args["variables"]
    ref = next(iter(variables.values())) if isinstance(variables, dict) else variables[0]
    pats = [args["group"]] if isinstance(args["group"], str) else list(args["group"])
    sizes = [dict(zip(m.dims, m.shape, strict=True)) for p, m in arrays.items()
             if p.endswith(f"/{ref}") and any(fnmatch.fnmatchcase(p[:-len(ref) - 1], pat)
                                              for pat in pats)]
    if not sizes:
        return None
    patch = {d: max(1, min([n, *(z[d] for z in sizes if d in z)]))
             for d, n in args["patch"].items()}
    return {**args, "patch": patch}


def _candidates(dataset: str, kinds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    if dataset in available():  # a shipped manifest of that name (never a path)
        example = load_manifest(dataset).example
        if example is not None:
            out.append(example.stream.kwargs())
    for k in kinds:
        for name, v in k["variables"].items():
            spatial = [d for d in v["dims"] if d not in ("sample", "level", "loc")][-3:]
            if len(spatial) >= 2 and v["dtype"] != "string" and not name.startswith("loc_"):
                out.append({"group": k["example"], "variables": [name],
                            "patch": dict.fromkeys(spatial[-2:], 64)})
    return out


def stream_args(dataset: str, kinds: list[dict[str, Any]],
                loc: Location) -> tuple[dict[str, Any], int] | None:
    """PatchStream arguments that work for this store, and the epoch length they give: the
    manifest's ``example.stream``, else the first image-like variable with a 64-pixel
    window. Each candidate is checked by constructing the stream (metadata only)."""
    from cloudmic.client.stream.workers import no_workers_ahead

    no_workers_ahead()  # before the lookup below, which would start it
    from cloudmic.client.stream import PatchStream

    _, arrays = read_store_metadata(loc)
    for c in _candidates(dataset, kinds):
        fitted = _shrunk(c, arrays)
        if fitted is None:
            continue
        try:
            stream = PatchStream(loc.url, **fitted, storage_options=loc.storage_options)
        except (KeyError, ValueError, TypeError, CloudmicError) as exc:
            log.debug("%s: PatchStream%r does not apply: %s", dataset, fitted, exc)
            continue
        return {**fitted, "patch": dict(stream.patch)}, len(stream)
    return None
