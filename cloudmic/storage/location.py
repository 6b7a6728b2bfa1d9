"""URLs to stores: a ``Location`` is a root URL plus the options to reach it.

Local folders (a path or ``file://``), ``s3://`` buckets (and any S3-compatible server),
``az://`` Azure Blob containers, ``gs://`` Google Cloud Storage buckets, and read-only
``http(s)://`` roots. What differs between them (URLs, credentials, clients, capabilities)
lives in :mod:`cloudmic.storage.backends`. Credentials live only in memory: never in a
store, a manifest or a log.
"""

from __future__ import annotations

import os
import posixpath
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import fsspec

from cloudmic.errors import StoreError
from cloudmic.storage.backends import (
    BODY_RETRIES,
    PIECE_BYTES,
    Backend,
    Capabilities,
    backend_for,
)
from cloudmic.storage.object_body import BodyClosed, ObjectBody


@dataclass(frozen=True)
class Location:
    """A place in a store: ``s3://bucket/prefix``, ``az://container/prefix``,
    ``gs://bucket/prefix``, ``https://...`` or a local folder."""

    url: str
    storage_options: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def parse(cls, url: str | os.PathLike[str], **storage_options: Any) -> Location:
        text = os.fspath(url)
        backend = backend_for(text)
        return cls(backend.url(text), backend.resolve_options(storage_options))

    @cached_property
    def backend(self) -> Backend:
        return backend_for(self.url)

    @property
    def caps(self) -> Capabilities:
        return self.backend.caps

    @property
    def is_http(self) -> bool:
        """A read-only root on a web server (a ``--public-read`` bucket's HTTP URL)."""
        return self.url.startswith(("http://", "https://"))

    @property
    def is_local(self) -> bool:
        return self.caps.folders

    @cached_property
    def fs(self) -> fsspec.AbstractFileSystem:
        return self.backend.filesystem(self.storage_options)

    @property
    def path(self) -> str:
        """The path the fsspec filesystem understands (``bucket/prefix``, ``/abs/dir``, or
        the URL itself over HTTP)."""
        return self.backend.fs_path(self.url)

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    def child(self, *parts: str) -> Location:
        return Location(posixpath.join(self.url, *parts), self.storage_options)

    def inside(self, rel: str, listed_in: str, what: str = "shard URL") -> Location:
        """The child ``rel`` names, if it lies inside this location: a crafted index
        (``listed_in``) must not send readers to the local disk or another bucket."""
        norm = posixpath.normpath(rel) if isinstance(rel, str) and rel else ""
        if (not norm or "://" in rel or "\\" in rel or rel.startswith(("/", "~"))
                or norm in (".", "..") or norm.startswith("../")):
            raise StoreError(f"{listed_in}: refusing {what} {rel!r}: it must be a relative path "
                             f"inside {self.url}. This file was not written by cloudmic or "
                             "was altered; re-publish the dataset")
        return self.child(norm)

    @property
    def parent(self) -> Location:
        return Location(posixpath.dirname(self.url.rstrip("/")), self.storage_options)

    def exists(self) -> bool:
        return self.fs.exists(self.path)

    def read_bytes(self) -> bytes:
        """The object in one GET (s3fs would send a HEAD first, and ranged GETs in
        parallel above 50 MB)."""
        return self.fs.cat_file(self.path, **self.backend.one_get)

    def open_body(self) -> ObjectBody:
        """An empty body for :meth:`drain_into`: a remote one takes the GET as fast as it
        comes (a body left idle is cut by the store); a local file is read only a few
        pieces ahead of its reader."""
        return ObjectBody(self.url, max_held=None if not self.is_local else 2 * PIECE_BYTES)

    def drain_into(self, body: ObjectBody, store: Any = None, key: str | None = None) -> None:
        """Fill ``body`` with the object from one GET as it arrives. Any error ends it (the
        reader sees it after the bytes before it); stops quietly if the reader closed the
        body, also before the GET. On an object store the GET is obstore's (a worker that
        reads shards then never imports s3fs and botocore: ~0.35 s of CPU at its first read
        here); ``store`` and ``key``: the same object seen from a store rooted higher up,
        so that a stream's GETs share one client's connections (else a store is made at
        this object's folder)."""
        try:
            if body.closed:
                return
            if self.is_local:
                _read_file(self.path, body.feed)
            else:
                _get_streamed(self.parent.object_store() if store is None else store,
                              self.name if key is None else key, body.feed, self.url)
        except BodyClosed:
            pass
        except BaseException as exc:  # handed to the reader: it must never wait forever
            body.finish(exc)
            if not isinstance(exc, Exception):
                raise
            return
        body.finish()

    def write_bytes(self, data: bytes) -> None:
        """One PUT on an object store (atomic for readers); write-then-rename locally."""
        self._writable()
        if not self.caps.folders:
            self.fs.pipe_file(self.path, data)
            return
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        tmp = f"{self.path}.tmp-{os.getpid()}"
        Path(tmp).write_bytes(data)
        os.replace(tmp, self.path)

    def zarr_store(self, *, read_only: bool = False):  # -> zarr.abc.store.Store
        """A zarr v3 store here: obstore on object stores (1.5-3x faster than s3fs in
        STACK-NOTES), zarr's LocalStore on a folder."""
        from zarr.storage import LocalStore, ObjectStore

        self._writable(read_only)
        if self.caps.folders:
            if not read_only:
                Path(self.path).mkdir(parents=True, exist_ok=True)
            return LocalStore(self.path, read_only=read_only)
        return ObjectStore(self.object_store(), read_only=read_only)

    def object_store(self) -> Any:
        """The obstore store rooted here (object stores and HTTP)."""
        return self.backend.object_store(self.url, self.storage_options)

    def stored_md5(self, info: dict[str, Any]) -> str | None:
        """What a listing entry of an object here reports of its bytes (see
        :attr:`Capabilities.checksum`), or None."""
        return self.backend.stored_md5(info)

    def _writable(self, read_only: bool = False) -> None:
        if not self.caps.writable and not read_only:
            raise StoreError(f"{self.url}: HTTP(S) roots are read-only; write to the "
                             "bucket's own URL (s3://, az://, gs://) with credentials that "
                             "may write")

    def xarray_storage_options(self) -> dict[str, Any] | None:
        """What to pass as ``storage_options`` to plain ``xr.open_datatree`` (None locally)."""
        return self.backend.xarray_options(self.storage_options)


def _read_file(path: str, feed: Callable[[bytes], None]) -> None:
    with open(path, "rb") as f:
        while piece := f.read(PIECE_BYTES):
            feed(piece)


def _get_streamed(store: Any, key: str, feed: Callable[[Any], None], url: str) -> None:
    """Object ``key`` of the obstore ``store`` in one GET, handed to ``feed`` in pieces as
    it arrives. obstore retries a failed request and resumes a body that breaks off (a
    ranged GET from where it broke, tested in test_request_budget.py); should it give up
    mid-body, the object is asked for again from the byte where it broke (``If-Match`` its
    ETag: the same object or an error), up to ``BODY_RETRIES`` times."""
    import obstore

    fed, size, etag = 0, None, None
    for attempt in range(BODY_RETRIES + 1):
        options: dict[str, Any] = {}
        if fed:
            options = {"range": {"offset": fed}, **({"if_match": etag} if etag else {})}
        resp = obstore.get(store, key, options=options)
        if size is None:
            size, etag = resp.meta["size"], resp.meta.get("e_tag")
        pieces, broke = iter(resp.stream(min_chunk_size=PIECE_BYTES)), None
        while True:
            try:  # an error of the body, not of feed (a closed body ends the GET)
                piece = next(pieces, None)
            except Exception as exc:  # noqa: BLE001 - obstore's body errors have no own type
                broke = exc
                break
            if piece is None:
                break
            feed(piece)
            fed += len(piece)
        if broke is None and fed == size:
            return
        if attempt == BODY_RETRIES:
            raise ConnectionError(f"{url}: the body broke off on each of {attempt + 1} "
                                  f"GETs, last at byte {fed} of {size}: "
                                  f"{broke or 'it ended early'}") from broke
        time.sleep(0.2 * 2 ** attempt)
