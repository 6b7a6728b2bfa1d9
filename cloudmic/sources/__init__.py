"""Sources from their real URLs: resumable, verified downloads and zip archives read in place.

- :func:`fetch` (:mod:`~cloudmic.sources.download`): download an ``http(s)://`` /
  ``s3://`` URL (or copy a local file) through a ``.part`` file, resuming with HTTP
  ``Range``, retrying with backoff, checking size and checksum before the file gets its name.
- :func:`list_members`, :func:`extract_members`, :func:`open_member`, :class:`ZipArchive`
  (:mod:`~cloudmic.sources.zip_archive`): members of a local or remote zip, read by range
  requests (:mod:`~cloudmic.sources.byte_ranges`) and checked against hostile names, links,
  overlaps and zip bombs (:mod:`~cloudmic.sources.zip_checks`).
- :func:`materialize`, :func:`materialize_manifest` (:mod:`~cloudmic.sources.materialization`):
  fetch + extract into the folder tree the dataset adapters read, skipping what is already
  there and verified; :func:`resolve_source` picks what to do with the ``--source`` of an
  ingest.
"""

from cloudmic.sources.byte_ranges import RangeNotSupportedError
from cloudmic.sources.download import fetch
from cloudmic.sources.file_checks import DEFAULT_MAX_BYTES, name_from_url
from cloudmic.sources.materialization import (
    dataset_cache_dir,
    default_cache_dir,
    materialize,
    materialize_manifest,
    resolve_source,
)
from cloudmic.sources.zip_archive import ZipArchive, extract_members, list_members, open_member
from cloudmic.sources.zip_checks import Member, NotAZipError, ZipLimits

__all__ = [
    "DEFAULT_MAX_BYTES",
    "Member",
    "NotAZipError",
    "RangeNotSupportedError",
    "ZipArchive",
    "ZipLimits",
    "dataset_cache_dir",
    "default_cache_dir",
    "extract_members",
    "fetch",
    "list_members",
    "materialize",
    "materialize_manifest",
    "name_from_url",
    "open_member",
    "resolve_source",
]
