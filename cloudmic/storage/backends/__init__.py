"""One class per kind of store: its URLs, where its credentials come from (each cloud's own
conventions), the clients that speak to it (fsspec for listings and plain xarray, obstore for
the fast zarr path) and what it can do (:class:`Capabilities`).

The rest of cloudmic asks a :class:`cloudmic.storage.location.Location` for these, never
for a scheme: a new store is one more module here (``base.py`` says what it fills in),
named in :data:`BACKENDS`. Credentials stay in memory (the options dict); they are never
written into a store, a log or a worker's command line.
"""

from __future__ import annotations

import os
from urllib.parse import urlparse

from cloudmic.errors import StoreError
from cloudmic.storage.backends.azure import AzureBackend, parse_connection_string
from cloudmic.storage.backends.base import BODY_RETRIES, PIECE_BYTES, Backend, Capabilities
from cloudmic.storage.backends.gcs import GCSBackend
from cloudmic.storage.backends.https import HttpBackend
from cloudmic.storage.backends.local import LocalBackend
from cloudmic.storage.backends.s3 import S3_PART_BYTES, S3Backend, s3_single_put

BACKENDS: tuple[Backend, ...] = (LocalBackend(), HttpBackend(), S3Backend(), AzureBackend(),
                                 GCSBackend())
SUPPORTED = "s3://, az://, gs://, https:// (read-only) or a local path"


def backend_for(url: str) -> Backend:
    """The backend of a URL's scheme (case-insensitive)."""
    scheme = urlparse(url).scheme.lower()
    if len(scheme) == 1 and os.name == "nt":  # C:\ on Windows
        scheme = ""
    for b in BACKENDS:
        if scheme in b.schemes:
            return b
    raise StoreError(f"{url}: unsupported URL scheme {scheme!r}; use {SUPPORTED}")


__all__ = ["BACKENDS", "BODY_RETRIES", "PIECE_BYTES", "S3_PART_BYTES", "SUPPORTED",
           "AzureBackend", "Backend", "Capabilities", "GCSBackend", "HttpBackend",
           "LocalBackend", "S3Backend", "backend_for", "parse_connection_string",
           "s3_single_put"]
