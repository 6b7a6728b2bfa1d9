"""OME-NGFF 0.5 checks with the reference tools: ome-zarr-models validation and the ome-zarr
Reader. Shared by the platelet-em and DeepCAD tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import zarr


@contextlib.contextmanager
def nested_label_paths() -> Iterator[None]:
    """ome-zarr-models 1.7 (and 1.8.1) look a label level up with ``spec.members[path]``,
    which fails with KeyError for a nested dataset path such as ``0/semantic`` (NGFF allows
    nested paths; ``Image._check_arrays_compatible`` already uses ``to_flat()``). This makes
    the one lookup flat for the duration of a validation (ADR 0004); every other check runs
    unchanged. Remove when upstream fixes it."""
    import ome_zarr_models.v05.labels as lab

    orig = lab.check_array_spec
    lab.check_array_spec = lambda spec, p: spec.to_flat()["/" + p.lstrip("/")]
    try:
        yield
    finally:
        lab.check_array_spec = orig


def validate_image(store: Path, group: str, *, labels: bool = False) -> dict[str, object]:
    """Validate an NGFF image group (and its labels) with ome-zarr-models.

    Returns ``{"levels": n, "labels": [...], "model": Image}``; the labels are read inside
    the shim because ``Image.labels`` validates lazily."""
    from ome_zarr_models.v05.image import Image

    g = zarr.open_group(store, path=group, mode="r")
    with nested_label_paths() if labels else contextlib.nullcontext():
        model = Image.from_zarr(g)
        found = model.labels.label_paths if labels else []
    return {"levels": len(model.datasets[0]), "labels": list(found), "model": model}


def validate_label(store: Path, group: str):
    from ome_zarr_models.v05.image_label import ImageLabel

    return ImageLabel.from_zarr(zarr.open_group(store, path=group, mode="r"))


def reader_nodes(path: Path) -> dict[str, object]:
    """What the ome-zarr Reader finds from an image group: node name -> Node."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    location = parse_url(str(path))
    assert location is not None, f"ome-zarr cannot open {path}"
    return {n.zarr.path.rstrip("/").split("/")[-1]: n for n in Reader(location)()}
