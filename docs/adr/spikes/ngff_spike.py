"""Spike for ADR 0004: OME-NGFF 0.5 image groups that plain xarray also opens.

Run in a clean venv (Python 3.11):
    pip install zarr==3.1.6 xarray==2026.9.0 numpy==2.4.6 ome-zarr-models==1.7 ome-zarr==0.18.0
    python docs/adr/spikes/ngff_spike.py [OUT_DIR]

Builds small stores with zarr directly (sharded arrays, dimension_names on every array),
then checks each layout with ome-zarr-models (validation), the ome-zarr Reader and
xr.open_datatree. Options A, B, D are the refused layouts; C is the proposal.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
import warnings
from importlib.metadata import version
from pathlib import Path

import numpy as np
import xarray as xr
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader
from ome_zarr_models.v05 import Image
from ome_zarr_models.v05.image_label import ImageLabel

warnings.filterwarnings("ignore", message="Consolidated metadata")
T0 = time.perf_counter()
rng = np.random.default_rng(0)

# --- helpers ------------------------------------------------------------------------------


def block_mean(a: np.ndarray, f: tuple[int, ...]) -> np.ndarray:
    """Image levels: mean over f-blocks, rounded back to the source dtype."""
    shp = [s // k for s, k in zip(a.shape, f, strict=False)]
    b = a[tuple(slice(0, s * k) for s, k in zip(shp, f, strict=False))]
    b = b.reshape([x for s, k in zip(shp, f, strict=False) for x in (s, k)])
    m = b.mean(axis=tuple(range(1, 2 * a.ndim, 2)))
    return np.rint(m).astype(a.dtype) if a.dtype.kind in "iu" else m.astype(a.dtype)


def block_mode(a: np.ndarray, f: tuple[int, ...]) -> np.ndarray:
    """Label levels: most frequent id in each f-block (ties -> smallest id); never averaged."""
    shp = [s // k for s, k in zip(a.shape, f, strict=False)]
    b = a[tuple(slice(0, s * k) for s, k in zip(shp, f, strict=False))]
    b = b.reshape([x for s, k in zip(shp, f, strict=False) for x in (s, k)])
    nd = a.ndim
    b = b.transpose(list(range(0, 2 * nd, 2)) + list(range(1, 2 * nd, 2))).reshape(*shp, -1)
    b = np.sort(b, axis=-1)
    counts = (b[..., :, None] == b[..., None, :]).sum(-1)
    return np.take_along_axis(b, counts.argmax(-1)[..., None], -1)[..., 0]


def pyramid(a: np.ndarray, factors: list[tuple[int, ...]], label: bool) -> list[np.ndarray]:
    """All levels from level 0 (cumulative factors), in one pass over level 0."""
    return [a] + [(block_mode if label else block_mean)(a, f) for f in factors]


def write_array(g: zarr.Group, name: str, data: np.ndarray, dims: tuple[str, ...],
                attrs: dict | None = None, shard: bool = True) -> None:
    chunks = tuple(max(1, min(s, 16)) for s in data.shape)
    whole = tuple(-(-s // c) * c for s, c in zip(data.shape, chunks, strict=False))
    shards = whole if shard else None
    arr = g.create_array(name, shape=data.shape, dtype=data.dtype, chunks=chunks, shards=shards,
                         dimension_names=dims, fill_value=0, attributes=attrs or {})
    arr[...] = data


def write_level_group(parent: zarr.Group, level: str, var: str, data: np.ndarray,
                      axes: list[dict], scale: list[float], attrs: dict) -> None:
    """One xarray node: the named variable + 1-D pixel-centre coordinates (i + 0.5) * scale."""
    lg = parent.create_group(level)
    dims = tuple(ax["name"] for ax in axes)
    write_array(lg, var, data, dims, attrs)
    for ax, n, s in zip(axes, data.shape, scale, strict=False):
        unit = {"nanometer": "nm", "micrometer": "um", "second": "s"}[ax["unit"]]
        write_array(lg, ax["name"], (np.arange(n) + 0.5) * s, (ax["name"],),
                    {"units": unit}, shard=False)


def ngff_image(g: zarr.Group, var: str, levels: list[np.ndarray], axes: list[dict],
               scale0: list[float], *, image_label: dict | None = None,
               method: str = "mean") -> None:
    """Make g an NGFF 0.5 multiscale group whose levels live at '<level>/<var>'."""
    datasets = []
    for i, data in enumerate(levels):
        f = [a / b for a, b in zip(levels[0].shape, data.shape, strict=False)]
        scale = [s * k for s, k in zip(scale0, f, strict=False)]
        write_level_group(g, str(i), var, data, axes, scale, {"long_name": var})
        datasets.append({"path": f"{i}/{var}", "coordinateTransformations": [
            {"type": "scale", "scale": scale},
            {"type": "translation", "translation": [s / 2 for s in scale]}]})
    ome = {"version": "0.5", "multiscales": [{
        "name": var, "axes": axes, "datasets": datasets, "type": method,
        "metadata": {"description": "blocks of the cumulative factor, from level 0",
                     "method": method}}]}
    if image_label is not None:
        ome["image-label"] = image_label
    g.attrs["ome"] = ome


def jet_rgba(v: int, vmax: int) -> list[int]:
    x = v / max(vmax, 1)
    r = np.clip(1.5 - abs(4 * x - 3), 0, 1)
    g = np.clip(1.5 - abs(4 * x - 2), 0, 1)
    b = np.clip(1.5 - abs(4 * x - 1), 0, 1)
    return [int(255 * r), int(255 * g), int(255 * b), 0 if v == 0 else 255]


SEM_CLASSES = ["background", "cell", "mitochondrion", "alpha granule", "canalicular vessel",
               "dense granule", "dense granule core"]
NM = [{"name": n, "type": "space", "unit": "nanometer"} for n in "zyx"]
MOVIE = [{"name": "t", "type": "time", "unit": "second"}] + [
    {"name": n, "type": "space", "unit": "micrometer"} for n in "yx"]


def synth_volume(z=8, y=64, x=64):
    img = rng.integers(0, 65535, (z, y, x), dtype=np.uint16)
    cell = np.zeros((z, y, x), np.uint32)
    cell[:, 8:40, 8:40], cell[:, 30:60, 36:62] = 1, 2
    organelle = np.zeros_like(cell)
    organelle[2:6, 12:20, 12:20], organelle[1:5, 40:50, 44:54] = 1, 2
    semantic = np.where(cell > 0, 1, 0).astype(np.uint8)
    semantic[organelle == 1], semantic[organelle == 2] = 2, 3
    return img, {"semantic": semantic, "cell": cell, "organelle": organelle}


def write_platelet(root: zarr.Group, name: str) -> None:
    img, labels = synth_volume()
    factors = [(1, 2, 2), (2, 4, 4)]  # 40x20x20 nm, then 80x40x40 nm
    vol = root.create_group(name, attributes={"source_file": f"images/{name}-images.tif"})
    ngff_image(vol, "image", pyramid(img, factors, False), NM, [40.0, 10.0, 10.0])
    lab = vol.create_group("labels")
    lab.attrs["ome"] = {"version": "0.5", "labels": list(labels)}
    for key, arr in labels.items():
        vals = range(7) if key == "semantic" else np.unique(arr)
        vmax = max(vals)
        il = {"version": "0.5", "source": {"image": "../../"},
              "colors": [{"label-value": int(v), "rgba": jet_rgba(int(v), int(vmax))}
                         for v in vals]}
        if key == "semantic":
            il["properties"] = [{"label-value": i, "class": c} for i, c in enumerate(SEM_CLASSES)]
        ngff_image(lab.create_group(key), key, pyramid(arr, factors, True), NM,
                   [40.0, 10.0, 10.0], image_label=il, method="mode")


def write_deepcad(root: zarr.Group, name: str) -> None:
    t, y, x = 30, 48, 48
    base = rng.gamma(2.0, 20.0, (t, y, x))
    high = rng.poisson(10 * base).astype(np.uint16)
    low = rng.poisson(base).astype(np.uint16)
    rec = root.create_group(name, attributes={"frame_rate_hz": 30.0, "fov_um": [550, 575]})
    scale0 = [1 / 30, 550 / y, 575 / x]
    for var, data in (("low", low), ("high", high)):
        ngff_image(rec.create_group(var), var, pyramid(data, [(1, 2, 2)], False), MOVIE, scale0)


def check(title: str, fn) -> None:
    try:
        print(f"  {title}: OK {fn() or ''}")
    except Exception as e:  # noqa: BLE001 - the spike reports what each library says
        msg = " ".join(str(e).split())
        print(f"  {title}: REFUSED {type(e).__name__}: {msg[:300]}")


def ome_reader_summary(path: Path) -> str:
    nodes = list(Reader(parse_url(str(path)))())
    out = []
    for n in nodes:
        shapes = [tuple(d.shape) for d in n.data]
        colors = n.metadata.get("color")
        out.append(f"{n.zarr.path.rstrip('/').split('/')[-1]}:{shapes}"
                   + (f" ({len(colors)} colors)" if colors else ""))
    return f"{len(nodes)} nodes " + "; ".join(out)


def validate(path: Path, group: str) -> str:
    img = Image.from_zarr(zarr.open_group(path, path=group, mode="r"))
    n = len(img.datasets[0])
    lbl = img.labels.label_paths if img.labels else []
    return f"{n} levels, labels={lbl}"


def validate_shim(path: Path, group: str) -> str:
    """ome-zarr-models 1.7/1.8.1 Labels._check_valid_dtypes looks '0/semantic' up in the nested
    members dict (KeyError); Image._check_arrays_compatible uses to_flat(). Same lookup, flat."""
    import ome_zarr_models.v05.labels as lab

    orig = lab.check_array_spec

    def flat_lookup(spec, p):
        return spec.to_flat()["/" + p.lstrip("/")]

    lab.check_array_spec = flat_lookup
    try:
        return validate(path, group)
    finally:
        lab.check_array_spec = orig


# --- options ---------------------------------------------------------------------------------


def option_a(out: Path) -> None:
    """A: standard NGFF, levels '0', '1' as sibling arrays in the image group."""
    p = out / "A.zarr"
    root = zarr.open_group(p, mode="w", zarr_format=3)
    img, _ = synth_volume()
    g = root.create_group("50")
    levels = pyramid(img, [(1, 2, 2)], False)
    for i, lv in enumerate(levels):
        write_array(g, str(i), lv, ("z", "y", "x"))
    g.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": NM, "datasets": [
        {"path": str(i), "coordinateTransformations": [
            {"type": "scale", "scale": [40.0, 10.0 * 2**i, 10.0 * 2**i]}]}
        for i in range(2)]}]}
    zarr.consolidate_metadata(p)
    print("Option A: NGFF default layout 50/{0,1}")
    check("ome-zarr-models", lambda: validate(p, "50"))
    check("ome-zarr Reader", lambda: ome_reader_summary(p / "50"))
    check("xr.open_datatree", lambda: xr.open_datatree(p, engine="zarr"))


def option_b(out: Path) -> None:
    """B: as A but level 1 with its own dim names so xarray can hold both levels."""
    p = out / "B.zarr"
    root = zarr.open_group(p, mode="w", zarr_format=3)
    img, _ = synth_volume()
    g = root.create_group("50")
    levels = pyramid(img, [(1, 2, 2)], False)
    write_array(g, "0", levels[0], ("z", "y", "x"))
    write_array(g, "1", levels[1], ("z", "y1", "x1"))
    g.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": NM, "datasets": [
        {"path": str(i), "coordinateTransformations": [
            {"type": "scale", "scale": [40.0, 10.0 * 2**i, 10.0 * 2**i]}]}
        for i in range(2)]}]}
    print("Option B: 50/{0,1}, level 1 dimension_names (z, y1, x1)")
    check("ome-zarr-models", lambda: validate(p, "50"))
    check("xr.open_datatree", lambda: dict(xr.open_datatree(p, engine="zarr", consolidated=False)
                                           ["50"].ds.sizes))


def option_d(out: Path) -> None:
    """D: label levels beside the image in 50/<level>/, image-label paths '../../<level>/x'."""
    p = out / "D.zarr"
    root = zarr.open_group(p, mode="w", zarr_format=3)
    write_platelet(root, "50")
    sem = root["50/labels/semantic"]
    ome = dict(sem.attrs["ome"])
    ms = ome["multiscales"][0]
    for i, ds in enumerate(ms["datasets"]):
        root[f"50/{i}"].create_array("semantic", data=root[f"50/labels/semantic/{i}/semantic"][...],
                                     dimension_names=("z", "y", "x"))
        ds["path"] = f"../../{i}/semantic"
    sem.attrs["ome"] = ome
    print("Option D: label levels stored beside the image, image-label paths '../../0/semantic'")
    check("ome-zarr-models", lambda: validate(p, "50"))


def option_c(out: Path) -> Path:
    """C (proposal): every level is a group '<level>/' holding the named variable + coords."""
    p = out / "C"
    shutil.rmtree(p, ignore_errors=True)
    pe = zarr.open_group(p / "platelet-em.zarr", mode="w", zarr_format=3,
                         attributes={"cloudmic": {"dataset": "platelet-em"}})
    write_platelet(pe, "50")
    write_platelet(pe, "24")
    zarr.consolidate_metadata(p / "platelet-em.zarr")
    dc = zarr.open_group(p / "deepcad.zarr", mode="w", zarr_format=3,
                         attributes={"cloudmic": {"dataset": "deepcad"}})
    write_deepcad(dc, "1_ZOOM1.3_550Vx575H_FOV_30Hz_80umdepth_0.2power_1AMP")
    zarr.consolidate_metadata(p / "deepcad.zarr")
    rec = "1_ZOOM1.3_550Vx575H_FOV_30Hz_80umdepth_0.2power_1AMP"
    print("Option C (proposal): <image>/<level>/<var> + coords, labels/<name>/<level>/<name>")
    pz = p / "platelet-em.zarr"
    check("ome-zarr-models platelet-em/50", lambda: validate(pz, "50"))
    check("ome-zarr-models deepcad/<rec>/low", lambda: validate(p / "deepcad.zarr", f"{rec}/low"))
    check("ome-zarr-models deepcad/<rec>/high", lambda: validate(p / "deepcad.zarr", f"{rec}/high"))
    check("ome-zarr Reader platelet-em/50", lambda: ome_reader_summary(pz / "50"))
    check("ome-zarr Reader deepcad/<rec>/high",
          lambda: ome_reader_summary(p / "deepcad.zarr" / rec / "high"))

    def labels_meta():
        node = [n for n in Reader(parse_url(str(pz / "50" / "labels" / "semantic")))()
                if n.zarr.path.rstrip("/").endswith("semantic")][0]
        return f"semantic: {len(node.metadata['color'])} colors, properties[2] = " \
               f"{node.metadata['properties'][2]}"
    check("ome-zarr Reader image-label", labels_meta)
    check("ome-zarr-models ImageLabel 50/labels/semantic", lambda: ImageLabel.from_zarr(
        zarr.open_group(pz, path="50/labels/semantic", mode="r")).attributes.ome.image_label
        .properties[6])
    check("ome-zarr-models platelet-em/50 + flat-lookup shim", lambda: validate_shim(pz, "50"))

    # lossless: level 0 equals what was written; labels only take values present at level 0
    g = zarr.open_group(pz, mode="r")
    sem0, sem1 = g["50/labels/semantic/0/semantic"][...], g["50/labels/semantic/1/semantic"][...]
    assert set(np.unique(sem1)) <= set(np.unique(sem0)), "mode must not invent label ids"

    dt = xr.open_datatree(pz, engine="zarr", consolidated=True, chunks={})
    print("\nxr.open_datatree(platelet-em.zarr) groups:")
    for path, node in dt.subtree_with_keys:
        if node.ds.data_vars:
            v = next(iter(node.ds.data_vars.values()))
            print(f"  /{path}: {list(node.ds.data_vars)} {dict(v.sizes)} {v.dtype}")
    img = dt["50/0"].ds
    print("\n/50/0 dataset:\n" + "\n".join("  " + s for s in str(img).splitlines()))
    print("  z units:", img.z.attrs.get("units"), "| z[:3]", img.z.values[:3].tolist())
    merged = xr.merge([dt["50/0"].ds, dt["50/labels/semantic/0"].ds,
                       dt["50/labels/cell/0"].ds, dt["50/labels/organelle/0"].ds])
    print("merged level 0 (what cloudmic.open would show):", list(merged.data_vars),
          dict(merged.sizes))
    lv1 = xr.merge([dt["50/1"].ds, dt["50/labels/semantic/1"].ds])
    print("level 1 x[:3] (nm):", lv1.x.values[:3].tolist(), "| level 0 x[:3]:",
          img.x.values[:3].tolist())
    patch = merged.sel(y=slice(100, 300), x=slice(100, 300))
    print("sel(y=100..300 nm) on merged level 0:", dict(patch.sizes))

    dd = xr.open_datatree(p / "deepcad.zarr", engine="zarr", consolidated=True, chunks={})
    print("\nxr.open_datatree(deepcad.zarr) groups:")
    for path, node in dd.subtree_with_keys:
        if node.ds.data_vars:
            v = next(iter(node.ds.data_vars.values()))
            print(f"  /{path}: {list(node.ds.data_vars)} {dict(v.sizes)}")
    mv = xr.merge([dd[f"{rec}/low/0"].ds, dd[f"{rec}/high/0"].ds])
    print("merged movie level 0:", list(mv.data_vars), dict(mv.sizes),
          "t[:2] s", np.round(mv.t.values[:2], 4).tolist(), "y units", mv.y.attrs["units"])
    arr = zarr.open_array(pz, path="50/0/image", mode="r")
    print("\n50/0/image: shards", arr.shards, "chunks", arr.chunks, "dims",
          arr.metadata.dimension_names)
    return p


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="ngff-"))
    out.mkdir(parents=True, exist_ok=True)
    print("versions:", ", ".join(f"{m} {version(m)}" for m in
          ("zarr", "xarray", "numpy", "ome-zarr-models", "ome-zarr", "pydantic")))
    option_a(out)
    option_b(out)
    option_d(out)
    option_c(out)
    print(f"\nstores in {out}; {time.perf_counter() - T0:.1f} s")


if __name__ == "__main__":
    main()
