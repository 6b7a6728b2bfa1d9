"""Sources from their real URLs: resumable, verified downloads and zip archives read in place.

- :func:`fetch`: download an ``http(s)://`` / ``s3://`` URL (or copy a local file) through a
  ``.part`` file, resuming with HTTP ``Range``, retrying with backoff, checking size and
  checksum before the file gets its name.
- :func:`list_members`, :func:`extract_members`, :func:`open_member`, :class:`ZipArchive`:
  members of a local or remote zip, read by range requests and checked against hostile
  names, links, overlaps and zip bombs.
- :func:`materialize`, :func:`materialize_manifest`: fetch + extract into the folder tree
  the dataset adapters read, skipping what is already there and verified;
  :func:`resolve_source` picks what to do with the ``--source`` of an ingest.
"""

from cloudmic.sources.archives import (
    Member,
    NotAZipError,
    RangeNotSupportedError,
    ZipArchive,
    ZipLimits,
    default_cache_dir,
    extract_members,
    list_members,
    materialize,
    materialize_manifest,
    open_member,
    resolve_source,
)
from cloudmic.sources.fetch import DEFAULT_MAX_BYTES, fetch, name_from_url

__all__ = [
    "DEFAULT_MAX_BYTES",
    "Member",
    "NotAZipError",
    "RangeNotSupportedError",
    "ZipArchive",
    "ZipLimits",
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
