"""Copy-paste Python for one dataset of the catalog page: plain xarray, ``cloudmic.open``,
``cloudmic.PatchStream``, ``cloudmic.shards`` and plain webdataset. Each runs as it is (the
tests run them) and none carries a credential."""

from __future__ import annotations

import json
from typing import Any

from cloudmic.storage import root_layout as rl
from cloudmic.storage.location import Location


def _storage_lines(root: Location) -> list[str]:
    """How the snippets reach the store: never with a credential in the text."""
    return [] if root.caps.folders else root.backend.snippet_lines(root.storage_options)


def xarray_snippet(root: Location, zarr_url: str, example: str = "", names: str = "") -> str:
    """Plain xarray on the store at ``zarr_url`` (under ``root``), with the
    ``storage_options`` its kind of store takes (the catalog page and ``cloudmic info``)."""
    opts = _storage_lines(root)
    imp_os = ["import os"] if any("os.environ" in line for line in opts) else []
    return "\n".join([
        *imp_os, "import xarray as xr", *opts,
        f"tree = xr.open_datatree({json.dumps(zarr_url)}, engine=\"zarr\", consolidated=True"
        + (",\n                        storage_options=storage_options)" if opts else ")"),
        *([f"ds = tree[{json.dumps(example)}].ds   # {names}"] if example else []),
    ])


def snippets(root: Location, name: str, facts: dict[str, Any]) -> dict[str, str]:
    """Copy-paste Python for one dataset: plain xarray, cloudmic.open, PatchStream,
    cloudmic.shards and plain webdataset. Each runs as it is (the tests run them)."""
    # plain readers get the immutable URL of the current version; cloudmic resolves the
    # stable name itself (ADR 0007)
    zarr_url = facts.get("url") or root.child(rl.zarr_name(name)).url
    version_wds = (facts.get("webdataset_url") or "").removesuffix(f"/{rl.INDEX}")
    stable_zarr = root.child(rl.zarr_name(name)).url
    stable_wds = root.child(rl.wds_name(name)).url
    wds_url = version_wds or stable_wds
    opts = _storage_lines(root)
    kinds = facts.get("kinds", [])
    example = kinds[0]["example"] if kinds else ""
    names = sorted(kinds[0]["variables"]) if kinds else []
    names = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
    out: dict[str, str] = {}
    imp_os = ["import os"] if any("os.environ" in line for line in opts) else []
    out["xarray"] = xarray_snippet(root, zarr_url, example, names)
    out["cloudmic.open"] = "\n".join([
        "import cloudmic",
        f"tree = cloudmic.open({json.dumps(stable_zarr)})"
        + ("" if root.caps.folders or root.is_http
           else f"   # credentials: {root.backend.credentials_hint}"),
        *([f"ds = tree[{json.dumps(example)}].ds   # dask-backed, shard-sized chunks"]
          if example else []),
    ])
    args = facts.get("stream_args")
    if args:
        extra = "".join(f", {k}={v!r}" for k, v in args.items()
                        if k not in ("group", "variables", "patch"))
        out["cloudmic.PatchStream"] = "\n".join([
            "import cloudmic",
            "stream = cloudmic.PatchStream(",
            f"    {json.dumps(stable_zarr)}, group={args['group']!r},",
            f"    variables={args['variables']!r},",
            f"    patch={args['patch']!r}, seed=0{extra})",
            "item = next(iter(stream))   # "
            + ", ".join(f"item[{v!r}]" for v in args["variables"])
            + f": numpy arrays; len(stream) = {facts.get('stream_length', '?')} patches/epoch",
        ])
    splits = facts.get("splits", {})
    split = next(iter(splits), None)
    fields = [f for f in facts.get("wds_fields", []) if f.endswith(".npy")]
    if split:
        first = fields[0].removesuffix(".npy") if fields else "json"
        out["cloudmic.shards"] = "\n".join([
            "import cloudmic",
            f"for rec in cloudmic.shards({json.dumps(stable_wds)}, {json.dumps(split)}):",
            f"    rec[\"__key__\"], rec[{json.dumps(first)}].shape, rec[\"json\"]"
            "   # numpy arrays, never unpickled",
            "    break",
        ])
        load = (f"    arr = np.load(io.BytesIO(rec[{json.dumps(fields[0])}]), "
                "allow_pickle=False)") if fields else "    meta = json.loads(rec[\"json\"])"
        if not root.caps.folders:
            wds_loc = Location(wds_url, root.storage_options)
            fs_args = json.dumps(root.backend.protocol) + (", **storage_options" if opts else "")
            out["webdataset"] = "\n".join([
                "import io, json" + (", os" if imp_os else ""),
                "import fsspec, numpy as np, webdataset as wds",
                "from webdataset.tariterators import group_by_keys, tar_file_expander", *opts,
                f"fs = fsspec.filesystem({fs_args})",
                f"index = json.loads(fs.cat({json.dumps(wds_loc.child(rl.INDEX).path)}))",
                f"urls = [{json.dumps(wds_url + '/')} + s[\"url\"] for s in "
                f"index[\"splits\"][{json.dumps(split)}][\"shards\"]]",
                "streams = lambda srcs: ({**s, \"stream\": fs.open(s[\"url\"], \"rb\")} "
                "for s in srcs)",
                *([f"# with the cloud's CLI instead: wds.WebDataset([f\"pipe:{pipe}\" "
                   "for u in urls])"] if (pipe := root.backend.pipe_command) else []),
                "pipeline = wds.DataPipeline(wds.SimpleShardList(urls), streams, "
                "tar_file_expander, group_by_keys)",
                "for rec in pipeline:", load, "    break",
            ])
        else:
            out["webdataset"] = "\n".join([
                "import io, json", "import numpy as np, webdataset as wds",
                f"index = json.load(open({json.dumps(f'{wds_url}/{rl.INDEX}')}))",
                f"urls = [{json.dumps(wds_url + '/')} + s[\"url\"] for s in "
                f"index[\"splits\"][{json.dumps(split)}][\"shards\"]]",
                "for rec in wds.WebDataset(urls, shardshuffle=False):", load, "    break",
            ])
    return out
