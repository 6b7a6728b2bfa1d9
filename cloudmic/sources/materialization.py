"""What to do with a source: make a published archive the local folder tree the dataset
adapters read (:func:`materialize`, :func:`materialize_manifest`), and pick that for the
``--source`` of an ingest (:func:`resolve_source`, under :func:`default_cache_dir`).

The policy lives here, apart from the download and the zip reader it uses: a remote zip is
downloaded whole unless only some members are wanted (then they are read in place, with a
whole download when the server serves no ranges), and a small marker per download keeps the
archive's listing, so that a re-run whose files are all in place makes no request at all.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from cloudmic.errors import SourceError
from cloudmic.sources.byte_ranges import RangeNotSupportedError
from cloudmic.sources.download import fetch
from cloudmic.sources.file_checks import Expected, name_from_url, verify_file
from cloudmic.sources.transport import Progress, url_scheme
from cloudmic.sources.zip_archive import (
    Select,
    VerifyExisting,
    ZipArchive,
    choose,
    holds_member,
    member_path,
)
from cloudmic.sources.zip_checks import (
    DEFAULT_LIMITS,
    HTML_FIX,
    Member,
    NotAZipError,
    ZipLimits,
    looks_like_html,
)

log = logging.getLogger(__name__)

MARKER_DIR = ".cloudmic-sources"


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4)
    return head in (b"PK\x03\x04", b"PK\x05\x06")  # a member first, or an empty zip


def _looks_like_html(path: Path) -> bool:
    with open(path, "rb") as f:
        return looks_like_html(f.read(512))


@dataclass(frozen=True)
class _Marker:
    """What a previous run found: the archive's listing (so a re-run needs no network)."""

    url: str
    expect: dict[str, Any]
    kind: Literal["zip", "file"]
    members: tuple[Member, ...] = ()

    @classmethod
    def load(cls, path: Path) -> _Marker | None:
        try:
            raw = json.loads(path.read_text())
            return cls(raw["url"], raw["expect"], raw["kind"],
                       tuple(Member(**m) for m in raw.get("members", ())))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        blob = {"url": self.url, "expect": self.expect, "kind": self.kind,
                "members": [asdict(m) for m in self.members]}
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(blob, indent=1))
        os.replace(tmp, path)


def _expected(download: Any) -> dict[str, Any]:
    """sha256 / md5 / size of a manifest ``Download`` (fields it lacks count as unknown)."""
    return {"sha256": getattr(download, "sha256", None), "md5": getattr(download, "md5", None),
            "size": getattr(download, "bytes", None)}


def materialize(url_or_path: str | os.PathLike[str] | None, dest_dir: str | os.PathLike[str],
                manifest_download: Any = None, *, select: Select | None = None,
                name: str | None = None, stream: bool | None = None,
                keep_archive: bool = False, cache_dir: str | os.PathLike[str] | None = None,
                verify_existing: VerifyExisting = "crc", skip_junk: bool = True,
                limits: ZipLimits = DEFAULT_LIMITS, retries: int = 5, backoff: float = 0.5,
                timeout: float = 60.0, progress: Progress | None = None,
                storage_options: dict[str, Any] | None = None) -> Path:
    """Make a published archive a local folder tree the dataset adapters read; return it.

    ``url_or_path`` (default: ``manifest_download.url``) is a zip or another file, remote
    (``http(s)://``, ``s3://``) or local. ``manifest_download`` (a manifest ``Download``)
    gives the expected ``sha256`` / ``md5`` / ``bytes``. A zip's members go under
    ``dest_dir`` with the archive's folders (the platelet-em zip makes
    ``dest_dir/platelet-em/...``); another remote file (a tar) is downloaded into
    ``dest_dir``; a local folder or non-zip file is returned as it is.

    A remote zip is downloaded whole (resumable, checksum verified, into ``cache_dir``,
    default ``dest_dir/.cloudmic-sources/downloads``, removed after extraction unless
    ``keep_archive``) when ``select`` is None; with ``select`` (or ``stream=True``) only
    the chosen members are read in place by range requests, each verified by its CRC-32
    (the archive's own checksum cannot be checked then), falling back to a whole download
    when the server serves no ranges. Members already extracted and verified are skipped;
    a re-run whose files are all in place makes no request at all (the listing is kept in
    ``dest_dir/.cloudmic-sources/<name>.json``).
    """
    if url_or_path is None:
        if manifest_download is None:
            raise ValueError("materialize needs a URL or path, or a manifest download")
        url_or_path = manifest_download.url
    source = os.fspath(url_or_path)
    scheme = url_scheme(source)
    expect_kw = _expected(manifest_download)
    expect = Expected.make(**expect_kw)
    dest = Path(dest_dir)
    if scheme == "file":
        local = Path(source.removeprefix("file://")).expanduser()
        if local.is_dir():
            return local
        if not local.is_file():
            raise SourceError(local, "no such file or folder", "check the path")
    name = name or getattr(manifest_download, "name", None) or name_from_url(source)
    dest.mkdir(parents=True, exist_ok=True)
    marker_path = dest / MARKER_DIR / f"{name}.json"
    marker = _Marker.load(marker_path)
    if marker is not None and marker.url == source and marker.expect == expect_kw:
        if marker.kind == "file" and (dest / name).is_file() and verify_file(
                dest / name, expect) is None:
            log.info("%s: already in %s", source, dest)
            return dest
        if marker.kind == "zip":
            chosen = choose(marker.members, select, skip_junk=skip_junk)
            if all(holds_member(member_path(dest, m), m, verify_existing, warn=False)
                   for m in chosen):
                log.info("%s: all %d chosen members already in %s", source, len(chosen), dest)
                return dest

    policy_kw = {"retries": retries, "backoff": backoff, "timeout": timeout}
    archive: ZipArchive | None = None
    downloaded: Path | None = None
    if scheme == "file":
        local = Path(source.removeprefix("file://")).expanduser()
        problem = verify_file(local, expect)
        if problem is not None:
            raise SourceError(local, f"not the published file: {problem}", "download it again")
        if not _is_zip(local):
            return local
        archive = ZipArchive(local, limits=limits)
    else:
        use_stream = select is not None if stream is None else stream
        if use_stream:
            try:
                archive = ZipArchive(source, storage_options=storage_options, limits=limits,
                                     **policy_kw)
            except (RangeNotSupportedError, NotAZipError) as exc:
                log.info("%s: cannot read members in place (%s); downloading it whole",
                         source, exc.problem)
            else:
                if expect.sha256 or expect.md5:
                    log.info("%s: reading members in place; each is checked by its CRC-32, the "
                             "archive's checksum is not", source)
        if archive is None:
            cache = Path(cache_dir) if cache_dir is not None else dest / MARKER_DIR / "downloads"
            downloaded = fetch(source, cache, name=name, progress=progress,
                               storage_options=storage_options, **expect_kw, **policy_kw)
            if not _is_zip(downloaded):
                if _looks_like_html(downloaded):
                    downloaded.unlink()
                    raise SourceError(source, "the download is a web page (HTML), not the "
                                      "file", HTML_FIX)
                final = dest / name
                shutil.move(downloaded, final)
                _Marker(source, expect_kw, "file").save(marker_path)
                return dest
            archive = ZipArchive(downloaded, limits=limits,
                                 label=f"{source} (downloaded to {downloaded})")
    with archive:
        _Marker(source, expect_kw, "zip", archive.members).save(marker_path)
        archive.extract(dest, select, skip_junk=skip_junk, verify_existing=verify_existing,
                        progress=progress)
    if downloaded is not None and not keep_archive:
        downloaded.unlink(missing_ok=True)
    return dest


def materialize_manifest(manifest: Any, dest_dir: str | os.PathLike[str], *,
                         select: Select | None = None, only: Callable[[Any], bool] | None = None,
                         **kwargs: Any) -> Path:
    """Materialize the ``source.downloads`` of a manifest (those ``only`` accepts) into
    ``dest_dir``; return it.

    An entry with an ``into`` field (a folder under ``dest_dir``; ``{stem}`` is the file
    name without its extension) is unpacked there, e.g. DeepCAD's ``DeepCAD/{stem}``.
    """
    downloads = [d for d in manifest.source.downloads if only is None or only(d)]
    if not downloads:
        why = manifest.source.no_download
        raise SourceError(manifest.name, "the manifest lists no downloads (source.downloads)"
                          + ("" if only is None else " that match")
                          + (f": {why}" if why else ""),
                          f"download the dataset by hand from {manifest.source.original} and "
                          "pass its folder as the source")
    dest = Path(dest_dir)
    for d in downloads:
        into = getattr(d, "into", None)
        folder = dest
        if into:
            fname = getattr(d, "name", None) or name_from_url(d.url)
            stem = fname.rsplit(".", 1)[0] if "." in fname else fname
            folder = dest / into.format(stem=stem)
        materialize(d.url, folder, d, select=select, **kwargs)
    return dest


def default_cache_dir() -> Path:
    """Where downloaded sources go: ``$CLOUDMIC_CACHE``, else ``$XDG_CACHE_HOME/cloudmic``,
    else ``~/.cache/cloudmic`` (each with a ``sources`` folder)."""
    root = os.environ.get("CLOUDMIC_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "cloudmic")
    return Path(root).expanduser() / "sources"


def _is_zip_url(source: str) -> bool:
    path = source.split("?", 1)[0].split("#", 1)[0]
    return path.lower().endswith(".zip")


def dataset_cache_dir(dataset: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """One dataset's cache folder: ``cache_dir`` (the CLI's ``--cache``) as given, else
    :func:`default_cache_dir` ``/<dataset>``. Downloads and unpacked archives go there."""
    return Path(cache_dir) if cache_dir is not None else default_cache_dir() / dataset


def resolve_source(manifest: Any, source: str | os.PathLike[str] | None, *,
                   cache_dir: str | os.PathLike[str] | None = None,
                   **kwargs: Any) -> str | Path:
    """What an adapter can scan, from what a user passed as the source of an ingest.

    ``None`` materializes the manifest's ``source.downloads``; an ``http(s)://`` URL, or a
    ``.zip`` (local or ``s3://``), is materialized with the matching manifest download's
    checksums, under ``cache_dir`` (default :func:`default_cache_dir` ``/<dataset>``). A
    folder, a tar or an ``s3://`` prefix is returned unchanged: the adapters read those.
    """
    folder = dataset_cache_dir(manifest.name, cache_dir)
    if source is None:
        return materialize_manifest(manifest, folder, **kwargs)
    text = os.fspath(source)
    remote_http = url_scheme(text) in ("http", "https")
    if not (remote_http or _is_zip_url(text)) or Path(text).is_dir():
        return source
    download = next((d for d in manifest.source.downloads if d.url == text), None)
    return materialize(text, folder, download, **kwargs)
