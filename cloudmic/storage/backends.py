"""One class per kind of store: its URLs, where its credentials come from (each cloud's own
conventions), the clients that speak to it (fsspec for listings and plain xarray, obstore for
the fast zarr path) and what it can do (:class:`Capabilities`).

The rest of cloudmic asks a :class:`cloudmic.storage.location.Location` for these, never
for a scheme: a new store is one more class here. Credentials stay in memory (the options
dict); they are never written into a store, a log or a worker's command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from cloudmic.errors import StoreError

if TYPE_CHECKING:
    import fsspec


# the part size of an S3 multipart upload, passed to s3fs explicitly: the ETag depends on it.
# s3fs sends a file smaller than two parts in one PUT, read whole, and holds max_concurrency
# parts at once, each twice (its read and aiohttp's payload copy): with its default 50 MiB,
# one upload held ~200 MiB of a worker (issue 16). 8 MiB (the AWS CLI's default) holds ~32 MiB
# and allows objects up to 80 GiB (10,000 parts; shards are a few hundred MB)
S3_PART_BYTES = 8 << 20
PIECE_BYTES = 4 << 20  # what get_pieces hands on at a time, at most
BODY_RETRIES = 3  # times a GET's body that broke off is asked for again from where it broke


def s3_single_put(size: int, part_bytes: int = S3_PART_BYTES) -> bool:
    """Whether s3fs uploads a file of ``size`` bytes in one PUT (``S3FileSystem._put_file``)."""
    return size < min(5 << 30, 2 * part_bytes)


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

    def url(self, text: str) -> str:
        """The canonical URL: scheme lower-cased, no trailing slash."""
        scheme = urlparse(text).scheme
        text = scheme + text[len(scheme):]
        if not urlparse(text).netloc:
            raise StoreError(f"{text}: this URL needs a bucket or container, like "
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

    def get_pieces(self, fs: fsspec.AbstractFileSystem, path: str,
                   feed: Callable[[bytes], None]) -> None:
        """The object at ``path`` in one GET, handed to ``feed`` in order (here: whole;
        a store whose client streams a body hands it on as it arrives)."""
        feed(fs.cat_file(path, **self.one_get))

    def upload(self, fs: fsspec.AbstractFileSystem, local: str, path: str) -> None:
        """Upload a local file to ``path`` (one object)."""
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


def _bucket_prefix(path: str) -> tuple[str, str | None]:
    bucket, _, prefix = path.partition("/")
    return bucket, prefix or None


class LocalBackend(Backend):
    schemes = ("", "file")
    caps = Capabilities(writable=True, folders=True, conditional_put=False, checksum=None)
    protocol = "file"
    credentials_hint = "the folder's permissions"
    example = "/data/cloudmic"

    def url(self, text: str) -> str:
        # absolute, but symlinks kept: ROOT/<name>.zarr is a link to the current version
        # and must stay a dataset URL (resolved through the pointer, ADR 0007)
        from pathlib import Path

        return os.path.abspath(Path(text.removeprefix("file://")).expanduser())

    def fs_path(self, url: str) -> str:
        return url

    def filesystem(self, options: dict[str, Any]) -> fsspec.AbstractFileSystem:
        import fsspec

        return fsspec.filesystem("file", auto_mkdir=True)

    def xarray_options(self, options: dict[str, Any]) -> dict[str, Any] | None:
        return None

    def get_pieces(self, fs: fsspec.AbstractFileSystem, path: str,
                   feed: Callable[[bytes], None]) -> None:
        with open(path, "rb") as f:
            while piece := f.read(PIECE_BYTES):
                feed(piece)


class HttpBackend(Backend):
    """Anonymous reads of a public bucket's HTTP URL or a web server: read-only."""

    schemes = ("http", "https")
    caps = Capabilities(writable=False, folders=False, conditional_put=False, checksum=None)
    protocol = "http"
    credentials_hint = "a public (anonymous-read) URL"
    example = "https://host/bucket/prefix"

    def fs_path(self, url: str) -> str:
        return url

    def object_store(self, url: str, options: dict[str, Any]) -> Any:
        from obstore.store import HTTPStore

        return HTTPStore.from_url(url, client_options={"allow_http": url.startswith("http://")})

    def xarray_options(self, options: dict[str, Any]) -> dict[str, Any] | None:
        return dict(options) or None


def _embedded_s3_options() -> dict[str, Any]:
    from cloudmic.storage import seaweed

    info = seaweed.status()
    return info.storage_options() if info else {}


class S3Backend(Backend):
    """S3 and S3-compatible stores (SeaweedFS, MinIO, ...): AWS conventions
    (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ``AWS_REGION``);
    with none set and the embedded store running, its keys."""

    schemes = ("s3",)
    caps = Capabilities(writable=True, folders=False, conditional_put=True, checksum="s3-etag")
    protocol = "s3"
    credentials_hint = "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL)"
    example = "s3://my-bucket/prefix"
    one_get = {"max_concurrency": 1}  # else s3fs sends a HEAD, and ranged GETs above 50 MB
    part_bytes = S3_PART_BYTES
    pipe_command = "aws s3 cp {u} -"

    def resolve_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """s3fs options: the caller's, else the AWS environment, else the embedded store."""
        opts = dict(options)
        if "key" in opts or "anon" in opts or "profile" in opts:
            return opts
        env_key = os.environ.get("AWS_ACCESS_KEY_ID")
        if env_key:
            opts.update(key=env_key, secret=os.environ.get("AWS_SECRET_ACCESS_KEY"))
            endpoint = (os.environ.get("AWS_ENDPOINT_URL")
                        or os.environ.get("AWS_ENDPOINT_URL_S3"))
            if endpoint:
                opts.setdefault("client_kwargs", {})["endpoint_url"] = endpoint
            return opts
        return {**_embedded_s3_options(), **opts}

    def get_pieces(self, fs: fsspec.AbstractFileSystem, path: str,
                   feed: Callable[[bytes], None]) -> None:
        """The body of one GET, fed as it arrives (s3fs's own cat_file, minus the wait for
        the last byte); ``feed`` runs on s3fs's event loop thread. A body that breaks off
        is asked for again from the byte where it broke (a ranged GET, if the object is
        still the same: ``If-Match`` its ETag), as s3fs retries a whole read."""
        from botocore.exceptions import IncompleteReadError
        from fsspec.asyn import sync
        from s3fs.core import S3_RETRYABLE_ERRORS, version_id_kw

        bucket, key, version = fs.split_path(path)
        broken = (*S3_RETRYABLE_ERRORS, IncompleteReadError, ConnectionError)

        async def drain() -> None:
            fed, size, etag = 0, None, None
            for attempt in range(BODY_RETRIES + 1):
                rest = {"Range": f"bytes={fed}-"} if fed else {}
                rest.update({"IfMatch": etag} if fed and etag else {})
                resp = await fs._call_s3("get_object", Bucket=bucket, Key=key,
                                         **version_id_kw(version), **rest)
                if size is None:
                    size, etag = resp.get("ContentLength"), resp.get("ETag")
                try:
                    while piece := await resp["Body"].read(PIECE_BYTES):
                        feed(piece)
                        fed += len(piece)
                    if size is not None and fed != size:
                        raise ConnectionError(f"the body ended at byte {fed} of {size}")
                    return
                except broken as exc:
                    if attempt == BODY_RETRIES:
                        raise ConnectionError(f"{path}: the body broke off on each of "
                                              f"{attempt + 1} GETs, last at byte {fed} of "
                                              f"{size}: {exc}") from exc
                    await asyncio.sleep(0.2 * 2 ** attempt)
                finally:
                    resp["Body"].close()

        sync(fs.loop, drain)

    @staticmethod
    def endpoint(options: dict[str, Any]) -> str | None:
        return ((options.get("client_kwargs") or {}).get("endpoint_url")
                or os.environ.get("AWS_ENDPOINT_URL"))

    def object_store(self, url: str, options: dict[str, Any]) -> Any:
        from obstore.store import S3Store

        bucket, prefix = _bucket_prefix(self.fs_path(url))
        endpoint = self.endpoint(options)
        region = ((options.get("client_kwargs") or {}).get("region_name")
                  or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
                  or "us-east-1")
        config: dict[str, Any] = {"region": region}
        if options.get("key"):
            config.update(access_key_id=options["key"], secret_access_key=options["secret"])
        if options.get("anon"):
            config["skip_signature"] = True
        if endpoint:  # an S3-compatible server: path-style unless told otherwise
            virtual = (options.get("config_kwargs") or {}).get("s3", {}).get(
                "addressing_style") == "virtual"
            config.update(endpoint=endpoint, virtual_hosted_style_request=virtual)
        client = {"allow_http": bool(endpoint and endpoint.startswith("http://"))}
        return S3Store(bucket, prefix=prefix, client_options=client, **config)

    def upload(self, fs: fsspec.AbstractFileSystem, local: str, path: str) -> None:
        # the part size is explicit: the ETag depends on it. s3fs holds max_concurrency parts
        # in memory at once (10 by default); 2 keeps the upload streaming
        fs.put_file(local, path, chunksize=S3_PART_BYTES, max_concurrency=2)

    def stored_md5(self, info: dict[str, Any]) -> str | None:
        tag = str(info.get("ETag") or info.get("etag") or "").strip('"')
        return tag or None

    def snippet_lines(self, options: dict[str, Any]) -> list[str]:
        endpoint = (options.get("client_kwargs") or {}).get("endpoint_url")
        kwargs = (f", \"client_kwargs\": {{\"endpoint_url\": {json.dumps(endpoint)}}}"
                  if endpoint else "")
        if options.get("anon"):
            return [f"storage_options = {{\"anon\": True{kwargs}}}"]
        return ["# keys from the environment (or your AWS profile); a public bucket: "
                "{\"anon\": True}",
                "storage_options = {\"key\": os.environ.get(\"AWS_ACCESS_KEY_ID\"),",
                "                   \"secret\": os.environ.get(\"AWS_SECRET_ACCESS_KEY\")"
                + kwargs.replace(", ", ",\n                   ", 1) + "}"]


def parse_connection_string(text: str) -> dict[str, str]:
    """``Key=Value;...`` of an Azure Storage connection string (values may hold ``=``)."""
    out = {}
    for part in text.split(";"):
        key, sep, value = part.partition("=")
        if sep and key.strip():
            out[key.strip()] = value.strip()
    return out


class AzureBackend(Backend):
    """Azure Blob Storage, ``az://container/prefix``: Azure's conventions
    (``AZURE_STORAGE_CONNECTION_STRING``, or ``AZURE_STORAGE_ACCOUNT_NAME`` with
    ``AZURE_STORAGE_ACCOUNT_KEY`` or ``AZURE_STORAGE_SAS_TOKEN``; a public container with
    the account name alone). Azurite (the emulator) is a connection string with its
    ``BlobEndpoint``."""

    schemes = ("az",)
    # a Put Blob reports its Content-MD5; a blob put in blocks does not (then: size only)
    caps = Capabilities(writable=True, folders=False, conditional_put=True, checksum="md5")
    protocol = "az"
    credentials_hint = ("AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT_NAME with "
                        "AZURE_STORAGE_ACCOUNT_KEY or AZURE_STORAGE_SAS_TOKEN")
    example = "az://my-container/prefix"
    client_package = ("adlfs", "azure")
    _OPTION_KEYS = ("connection_string", "account_name", "account_key", "sas_token", "anon",
                    "credential")

    def resolve_options(self, options: dict[str, Any]) -> dict[str, Any]:
        opts = dict(options)
        if any(k in opts for k in self._OPTION_KEYS):
            return opts
        env = os.environ
        if env.get("AZURE_STORAGE_CONNECTION_STRING"):
            opts["connection_string"] = env["AZURE_STORAGE_CONNECTION_STRING"]
        elif env.get("AZURE_STORAGE_ACCOUNT_NAME"):
            opts["account_name"] = env["AZURE_STORAGE_ACCOUNT_NAME"]
            if env.get("AZURE_STORAGE_ACCOUNT_KEY"):
                opts["account_key"] = env["AZURE_STORAGE_ACCOUNT_KEY"]
            elif env.get("AZURE_STORAGE_SAS_TOKEN"):
                opts["sas_token"] = env["AZURE_STORAGE_SAS_TOKEN"]
            else:
                opts["anon"] = True
        return opts

    def _parts(self, options: dict[str, Any]) -> dict[str, Any]:
        """account name, key, SAS token and blob endpoint, from either form of options."""
        cs = parse_connection_string(options.get("connection_string") or "")
        name = options.get("account_name") or cs.get("AccountName")
        endpoint = options.get("account_host") or cs.get("BlobEndpoint")
        if not name and endpoint:
            name = urlparse(endpoint).path.strip("/").split("/")[0] or None
        if not name:
            raise StoreError("no Azure storage account: set " + self.credentials_hint)
        return {"account_name": name, "account_key": options.get("account_key")
                or cs.get("AccountKey"), "sas_token": options.get("sas_token")
                or cs.get("SharedAccessSignature"), "endpoint": endpoint}

    def object_store(self, url: str, options: dict[str, Any]) -> Any:
        from obstore.store import AzureStore

        container, prefix = _bucket_prefix(self.fs_path(url))
        p = self._parts(options)
        config: dict[str, Any] = {"account_name": p["account_name"]}
        if p["account_key"]:
            config["account_key"] = p["account_key"]
        elif p["sas_token"]:
            config["sas_key"] = p["sas_token"].lstrip("?")
        else:
            config["skip_signature"] = True
        if p["endpoint"]:
            config["endpoint"] = p["endpoint"].rstrip("/")
        client = {"allow_http": bool(p["endpoint"] and p["endpoint"].startswith("http://"))}
        return AzureStore(container, prefix=prefix, client_options=client, **config)

    def stored_md5(self, info: dict[str, Any]) -> str | None:
        md5 = (info.get("content_settings") or {}).get("content_md5")
        return bytes(md5).hex() if md5 else None

    def snippet_lines(self, options: dict[str, Any]) -> list[str]:
        if options.get("connection_string") is not None:
            return ["# the account's connection string, from the environment",
                    "storage_options = {\"connection_string\": "
                    "os.environ[\"AZURE_STORAGE_CONNECTION_STRING\"]}"]
        name = json.dumps(self._parts(options)["account_name"])
        if options.get("anon"):
            return [f"storage_options = {{\"account_name\": {name}, \"anon\": True}}"]
        key, var, what = (("sas_token", "AZURE_STORAGE_SAS_TOKEN", "a SAS token")
                          if options.get("sas_token") else
                          ("account_key", "AZURE_STORAGE_ACCOUNT_KEY", "the account key"))
        return [f"# {what}, from the environment",
                f"storage_options = {{\"account_name\": {name},",
                f"                   \"{key}\": os.environ.get(\"{var}\")}}"]


class GCSBackend(Backend):
    """Google Cloud Storage, ``gs://bucket/prefix``: Google's conventions
    (``GOOGLE_APPLICATION_CREDENTIALS``, else the machine's default credentials; a public
    bucket with ``token="anon"``; an emulator with ``STORAGE_EMULATOR_HOST``)."""

    schemes = ("gs", "gcs")
    caps = Capabilities(writable=True, folders=False, conditional_put=True, checksum="md5")
    protocol = "gcs"
    credentials_hint = "GOOGLE_APPLICATION_CREDENTIALS (a service-account key file)"
    example = "gs://my-bucket/prefix"
    client_package = ("gcsfs", "gcs")
    pipe_command = "gcloud storage cat {u}"

    def url(self, text: str) -> str:
        text = super().url(text)
        return "gs://" + text.split("://", 1)[1]

    def resolve_options(self, options: dict[str, Any]) -> dict[str, Any]:
        opts = dict(options)
        emulator = os.environ.get("STORAGE_EMULATOR_HOST")
        if emulator and "endpoint_url" not in opts:
            opts["endpoint_url"] = emulator if "://" in emulator else f"http://{emulator}"
            opts.setdefault("token", "anon")  # an emulator takes no credentials
        if "token" not in opts and os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"):
            opts["token"] = os.environ["GOOGLE_APPLICATION_CREDENTIALS"]
        return opts

    def filesystem(self, options: dict[str, Any]) -> fsspec.AbstractFileSystem:
        # the plain class: gcsfs's experimental subclass asks each bucket's type over gRPC
        # first (a minute's timeout against anything but Google)
        with self._client_installed():
            from gcsfs.core import GCSFileSystem

        return GCSFileSystem(**options)

    def object_store(self, url: str, options: dict[str, Any]) -> Any:
        from obstore.store import GCSStore

        bucket, prefix = _bucket_prefix(self.fs_path(url))
        token, endpoint = options.get("token"), options.get("endpoint_url")
        config: dict[str, Any] = {}
        if endpoint:  # object_store reads an emulator's URL from a credentials file only
            config["service_account_path"] = _emulator_credentials(endpoint)
        elif token == "anon":
            config["skip_signature"] = True
        elif isinstance(token, str) and os.path.isfile(token):
            config["service_account_path"] = token
        client = {"allow_http": bool(endpoint and endpoint.startswith("http://"))}
        return GCSStore(bucket, prefix=prefix, client_options=client, **config)

    def stored_md5(self, info: dict[str, Any]) -> str | None:
        import base64

        md5 = info.get("md5Hash")
        return base64.b64decode(md5).hex() if md5 else None

    def snippet_lines(self, options: dict[str, Any]) -> list[str]:
        if options.get("token") == "anon" and not options.get("endpoint_url"):
            return ["storage_options = {\"token\": \"anon\"}   # a public bucket"]
        if options.get("endpoint_url"):
            return [f"storage_options = {{\"endpoint_url\": {json.dumps(options['endpoint_url'])}"
                    ", \"token\": \"anon\"}   # the emulator"]
        return ["# GOOGLE_APPLICATION_CREDENTIALS or the machine's default credentials",
                "storage_options = {}"]


def _emulator_credentials(endpoint: str) -> str:
    """A credentials file pointing object_store at a GCS emulator (no key in it)."""
    path = os.path.join(tempfile.gettempdir(), f"cloudmic-gcs-emulator-{os.getuid()}-"
                        f"{hashlib.sha1(endpoint.encode()).hexdigest()[:12]}.json")
    if not os.path.exists(path):
        doc = {"gcs_base_url": endpoint.rstrip("/"), "disable_oauth": True,
               "client_email": "", "private_key": "", "private_key_id": ""}
        tmp = f"{path}.{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, path)
    return path


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
