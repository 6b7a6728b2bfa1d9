"""Dataset manifests: one YAML per dataset in ``manifests/``, validated by a strict schema.

A manifest is data, not code: it says where a dataset comes from, how its published
layout looks, which variables a sample has and how the store is chunked and sharded.
Unknown or missing fields are errors that name the field, so a typo never passes silently.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cloudmic.errors import ManifestError

DTYPES = {"uint8", "uint16", "uint32", "int16", "int32", "int64", "float32", "float64"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Note(_Strict):
    """Where one manifest fact comes from, when the publisher does not state it as written.

    Exactly one of: ``source`` (where the publisher states it), ``assumed`` (ours: not
    stated by the publisher) or ``derived`` (computed by cloudmic from stated facts). The
    store's attributes, ``cloudmic info`` and the catalog page show it beside the value.
    """

    source: str | None = None
    assumed: str | None = None
    derived: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Note:
        given = [k for k in NOTE_KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"a provenance note has exactly one of {', '.join(NOTE_KINDS)}; "
                             f"got {', '.join(given) or 'none'}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in NOTE_KINDS if getattr(self, k) is not None)

    def label(self) -> str:
        """``assumed: not stated by the publisher; ...``: what a reader sees beside the value."""
        return f"{self.kind}: {getattr(self, self.kind)}"


NOTE_KINDS = ("source", "assumed", "derived")


class Citation(_Strict):
    text: str
    doi: str | None = None


class Download(_Strict):
    url: str
    name: str | None = Field(None, description="local file name, when the URL does not end "
                             "with it (figshare: .../ndownloader/files/<id>)")
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    md5: str | None = Field(None, pattern=r"^[0-9a-f]{32}$",
                            description="when only an md5 is published (platelet-em)")
    bytes: int | None = Field(None, ge=0, description="exact size in bytes")
    into: str | None = Field(None, description="folder under the source root to unpack the "
                             "archive into; {stem} is the file name without its extension")


class Source(_Strict):
    homepage: str
    original: str
    downloads: tuple[Download, ...] = ()
    no_download: str | None = Field(None, description="why downloads is empty: where the data "
                                    "lives and what the publisher does (not) give a URL for")


class Layout(_Strict):
    description: str
    tree: str = Field(description="the published tree, as the authors show it")
    file_extensions: tuple[str, ...]


class Variable(_Strict):
    description: str
    dims: tuple[str, ...]
    dtypes: tuple[str, ...] = Field(description="dtypes the published files may have")
    role: Literal["input", "target", "label", "table"]
    units: str | None = None
    pixel_size: dict[str, float] | None = None
    scale_to: str | None = Field(None, description="the variable whose grid this one refines")
    scale_factors: tuple[int, ...] = (1,)
    attrs: dict[str, Any] = Field(default_factory=dict, description="stored as array attributes")

    @field_validator("dtypes")
    @classmethod
    def _known_dtypes(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = sorted(set(v) - DTYPES)
        if bad:
            raise ValueError(f"unknown dtype(s) {bad}; known: {sorted(DTYPES)}")
        return v


class Split(_Strict):
    source: str = Field(description="folder prefix in the published tree")
    expected_samples: int | None = Field(None, ge=0, description="deprecated: use the "
                                         "manifest's top-level expected.<split>")
    levels: tuple[int, ...] = ()
    level_photons: tuple[float, ...] = ()


class Expected(_Strict):
    """The publisher's count for one split or group: what a complete copy holds. Compared
    with what an ingest found ("found N of M expected"): a warning, an error with strict."""

    samples: int = Field(ge=0, description="samples of the group, as the store counts them "
                         "(the length of its sample axis; one per cell-like group)")
    labelled: int | None = Field(None, ge=0, description="of which carry a class label")
    optional: bool = Field(False, description="one of several alternative archives: a copy "
                           "without this group is not partial")
    source: str | None = Field(None, description="where the publisher states the count")
    assumed: str | None = Field(None, description="what is our assumption, not the "
                                "publisher's statement (e.g. which archive holds the count)")


class Storage(_Strict):
    chunk: dict[str, int]
    shard: dict[str, int]
    codec: Literal["blosc-zstd-bitshuffle", "zstd", "none"] = "blosc-zstd-bitshuffle"
    clevel: int = Field(3, ge=0, le=22)


class WebDatasetSpec(_Strict):
    samples_per_shard: int = Field(gt=0)
    key: str = Field(description="format string for __key__, fields from the sample")
    split_keys: dict[str, str] = Field(default_factory=dict, description="per-split key formats")
    fields: dict[str, str] = Field(description="record extension -> variable or 'json'")


class ExampleStream(_Strict):
    """``cloudmic.PatchStream`` arguments that suit this dataset's stores: what the catalog
    page's snippet and ``cloudmic demo`` stream (the catalog shrinks the patch to a smaller
    store and checks the arguments against it before showing them)."""

    group: str | tuple[str, ...] = Field(description="group path or glob pattern(s), matched "
                                         "per path segment: train, */cell*, *")
    variables: tuple[str, ...] | dict[str, str] = Field(
        description="variable names in the group, or {name: path under the group} for "
        "variables in subgroups ({image: 0/image, semantic: labels/semantic/0/semantic})")
    patch: dict[str, int] = Field(description="patch size per dim of the first variable, in "
                                  "its pixels; the others get the same field of view")
    patches_per_sample: int | None = Field(None, gt=0, description="patches cut per sample "
                                           "and epoch (PatchStream's default: 1)")

    @field_validator("variables", "patch")
    @classmethod
    def _not_empty(cls, v: Any) -> Any:
        if not v:
            raise ValueError("name at least one")
        return v

    @field_validator("patch")
    @classmethod
    def _positive(cls, v: dict[str, int]) -> dict[str, int]:
        bad = {d: n for d, n in v.items() if n < 1}
        if bad:
            raise ValueError(f"patch sizes are at least 1 pixel; got {bad}")
        return v

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``cloudmic.PatchStream(url, **kwargs)``, as plain lists and
        dicts (what a snippet prints)."""
        return self.model_dump(mode="json", exclude_none=True)


class Example(_Strict):
    """cloudmic's own example for a dataset, not a fact about the data: how to stream it and
    what ``cloudmic demo`` synthesises. Kept out of the manifest digest (it builds no store)."""

    stream: ExampleStream
    demo: dict[str, int | str | tuple[str, ...]] | None = Field(
        None, description="keyword arguments of the dataset's synthetic generator (`cloudmic "
        "synth`) for `cloudmic demo`: small sizes whose samples hold the stream's patch; "
        "without it the demo leaves the dataset out")

    def demo_sizes(self) -> dict[str, Any]:
        """``demo`` as plain values (lists, not tuples) for the generator."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in (self.demo or {}).items()}


class Manifest(_Strict):
    name: str
    title: str
    adapter: str
    citation: tuple[Citation, ...]
    license: str
    license_url: str
    source: Source
    layout: Layout
    variables: dict[str, Variable]
    splits: dict[str, Split] = Field(default_factory=dict)
    expected: dict[str, Expected] = Field(
        default_factory=dict, description="the publisher's counts per split or group: "
        "{train: 41040} or {crop: {samples: 976022, labelled: 238683, source: ...}}")
    storage: Storage
    webdataset: WebDatasetSpec
    options: dict[str, Any] = Field(default_factory=dict, description="adapter-specific facts")
    provenance: dict[str, Note] = Field(
        default_factory=dict, description="notes on facts the publisher does not state as "
        "written, keyed by the dotted path of the manifest field: {license: {assumed: ...}, "
        "citation.0.text: {source: ...}, options.exposure_s: {source: ...}}")
    example: Example | None = Field(
        None, exclude=True, description="PatchStream arguments and demo sizes for this "
        "dataset (the catalog page and `cloudmic demo` read them); not part of the digest")

    @field_validator("expected", mode="before")
    @classmethod
    def _plain_counts(cls, v: Any) -> Any:
        """``train: 41040`` is short for ``train: {samples: 41040}``."""
        if isinstance(v, dict):
            return {k: {"samples": n} if isinstance(n, int) and not isinstance(n, bool) else n
                    for k, n in v.items()}
        return v

    @model_validator(mode="after")
    def _one_count_per_split(self) -> Manifest:
        for name, split in self.splits.items():
            given = self.expected.get(name)
            if (split.expected_samples is not None and given is not None
                    and given.samples != split.expected_samples):
                raise ValueError(f"splits.{name}.expected_samples ({split.expected_samples}) "
                                 f"and expected.{name} ({given.samples}) differ: keep "
                                 "expected only")
        return self

    @model_validator(mode="after")
    def _notes_name_fields(self) -> Manifest:
        dumped = self.model_dump(mode="json")
        for path in self.provenance:
            if _lookup(dumped, path) is _MISSING:
                raise ValueError(f"provenance.{path}: no such manifest field (a note is keyed "
                                 "by the dotted path of the field it explains, e.g. license, "
                                 "citation.0.text, options.exposure_s)")
        return self

    def note(self, path: str) -> Note | None:
        """The provenance note of one manifest field (dotted path), or None."""
        return self.provenance.get(path)

    def provenance_labels(self) -> dict[str, str]:
        """Every note as ``{field path: "assumed: ..."}``: what stores and reports carry."""
        return {path: n.label() for path, n in sorted(self.provenance.items())}

    def expected_counts(self) -> dict[str, Expected]:
        """The publisher's counts by split/group: ``expected``, plus the older
        ``splits.<name>.expected_samples`` of manifests written before it."""
        out = {name: Expected(samples=s.expected_samples) for name, s in self.splits.items()
               if s.expected_samples is not None}
        return {**out, **self.expected}

    def digest(self) -> str:
        """A stable content hash: provenance records which manifest built a store."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


_MISSING = object()


def _lookup(doc: Any, path: str) -> Any:
    """``doc['a'][0]['b']`` for ``a.0.b``; ``_MISSING`` when a step does not exist."""
    for step in path.split("."):
        if isinstance(doc, dict) and step in doc:
            doc = doc[step]
        elif isinstance(doc, list) and step.isdigit() and int(step) < len(doc):
            doc = doc[int(step)]
        else:
            return _MISSING
    return doc


def manifests_dir() -> Path:
    """The manifests shipped with cloudmic: the repo folder when editable, else the wheel copy."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "manifests", here / "_manifests"):
        if candidate.is_dir():
            return candidate
    raise ManifestError(f"no manifests folder beside {here}; reinstall cloudmic")


def available() -> list[str]:
    return sorted(p.stem for p in manifests_dir().glob("*.yaml"))


def _format_errors(path: Path, err: ValidationError) -> str:
    lines = [f"{path}: invalid manifest"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "missing":
            lines.append(f"  field '{field}' is missing: add it (see manifests/biosr.yaml)")
        elif e["type"] == "extra_forbidden":
            lines.append(f"  field '{field}' is unknown: remove it or fix its spelling")
        else:
            lines.append(f"  field '{field}': {e['msg']}")
    return "\n".join(lines)


def parse_manifest(path: Path) -> Manifest:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ManifestError(f"{path}: cannot read manifest YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ManifestError(f"{path}: a manifest is a YAML mapping, got {type(raw).__name__}")
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        raise ManifestError(_format_errors(path, exc)) from None


@lru_cache(maxsize=32)
def load_manifest(name_or_path: str) -> Manifest:
    """Load a manifest by dataset name (``biosr``) or by path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = manifests_dir() / f"{name_or_path}.yaml"
        if not path.is_file():
            raise ManifestError(
                f"unknown dataset {name_or_path!r}; known: {', '.join(available())}, "
                "or pass the path of a manifest YAML"
            )
    return parse_manifest(path)
