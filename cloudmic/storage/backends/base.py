"""What every backend is: :class:`Capabilities` and the :class:`Backend` base class."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from cloudmic.errors import StoreError

if TYPE_CHECKING:
    import fsspec

PIECE_BYTES = 4 << 20  # what a streamed read (Location.drain_into) hands on at a time
BODY_RETRIES = 3  # times a GET's body that broke off is asked for again from where it broke


@dataclass(frozen=True)
class Capabilities:
    """What a store guarantees, as the publishing code relies on it."""

    writable: bool
    # a directory tree (write-then-rename, symlinks, flock); else a flat key space of
    # objects, each PUT atomic for readers, copies server-side
    folders: bool
    # If-Match / If-None-Match writes: shared JSON is updated without a lock (atomic_json)
    conditional_put: bool
    # what a listing says of an uploaded object's bytes: "s3-etag" (md5, or md5 of the
    # parts' md5s for a multipart upload), "md5" (the md5 of the whole), or None (size only)
    checksum: str | None
    # not a flag: every store here lists an object right after its write (S3 since 2020,
    # Azure, GCS, local disk), which the pre-publish verify relies on


class Backend:
    """How cloudmic reaches one kind of store. Subclasses fill in the class attributes."""

    schemes: tuple[str, ...] = ()
    caps: Capabilities
    protocol: str  # fsspec's name for the filesystem
    credentials_hint: str  # what to set when a write or read is refused
    example: str  # a URL of this kind, for error messages
    one_get: dict[str, Any] = {}  # fsspec cat_file arguments for a whole object in one GET
    # the part size of uploads, where the stored checksum depends on it (S3's multipart
    # ETag); None: the checksum is of the whole object
    part_bytes: int | None = None
    pipe_command: str | None = None  # a shell command printing the object at {u} to stdout
    # what the store accepts as a bucket (container) name, and that rule in words; None: the
    # URL's host is not a bucket. Checked at parse, so a name the store would refuse is told
    # as such, not as a write refused for want of credentials.
    bucket_name: re.Pattern[str] | None = None
    bucket_rule: str = ""  # "an S3 bucket name (...)": completes "NAME is not ..."

    def url(self, text: str) -> str:
        """The canonical URL: scheme lower-cased, no trailing slash."""
        scheme = urlparse(text).scheme
        text = scheme + text[len(scheme):]
        bucket = urlparse(text).netloc
        if not bucket:
            raise StoreError(f"{text}: this URL needs a bucket or container, like "
                             f"{self.example}")
        if self.bucket_name is not None and not self.bucket_name.fullmatch(bucket):
            raise StoreError(f"{text}: {bucket!r} is not {self.bucket_rule}; name one like "
                             f"{self.example}")
        return text.rstrip("/")

    def resolve_options(self, options: dict[str, Any]) -> dict[str, Any]:
        return dict(options)

    def fs_path(self, url: str) -> str:
        """The path fsspec understands: ``bucket/prefix``."""
        _, sep, path = url.partition("://")
        return path if sep else url

    def filesystem(self, options: dict[str, Any]) -> fsspec.AbstractFileSystem:
        import fsspec

        with self._client_installed():
            return fsspec.filesystem(self.protocol, **options)

    # the package of fsspec's filesystem and the cloudmic extra that installs it
    client_package: tuple[str, str] | None = None

    @contextlib.contextmanager
    def _client_installed(self) -> Iterator[None]:
        try:
            yield
        except ImportError as exc:
            if self.client_package is None:
                raise
            package, extra = self.client_package
            raise StoreError(f"{self.schemes[0]}:// URLs need {package}: pip install "
                             f"'cloudmic[{extra}]'") from exc

    def object_store(self, url: str, options: dict[str, Any]) -> Any:
        """An obstore store rooted at ``url`` (the fast path zarr and zarrs read through)."""
        raise NotImplementedError

    def upload(self, fs: fsspec.AbstractFileSystem, local: str, path: str,
               options: dict[str, Any]) -> None:
        """Upload a local file to ``path`` (one object); ``options``: the store's."""
        fs.put_file(local, path)

    def stored_md5(self, info: dict[str, Any]) -> str | None:
        """The checksum a listing entry reports, in the form of :attr:`Capabilities.checksum`."""
        return None

    def xarray_options(self, options: dict[str, Any]) -> dict[str, Any] | None:
        """``storage_options`` for plain ``xr.open_datatree``."""
        return dict(options)

    def snippet_lines(self, options: dict[str, Any]) -> list[str]:
        """Python lines defining ``storage_options`` for the catalog's copy-paste snippets:
        where the credentials come from, never a credential itself."""
        return []


def bucket_prefix(path: str) -> tuple[str, str | None]:
    bucket, _, prefix = path.partition("/")
    return bucket, prefix or None
