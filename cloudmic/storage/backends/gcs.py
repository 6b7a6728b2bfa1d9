"""Google Cloud Storage."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from typing import TYPE_CHECKING, Any

from cloudmic.storage.backends.base import Backend, Capabilities, bucket_prefix

if TYPE_CHECKING:
    import fsspec


class GCSBackend(Backend):
    """Google Cloud Storage, ``gs://bucket/prefix``: Google's conventions
    (``GOOGLE_APPLICATION_CREDENTIALS``, else the machine's default credentials; a public
    bucket with ``token="anon"``; an emulator with ``STORAGE_EMULATOR_HOST``)."""

    schemes = ("gs", "gcs")
    caps = Capabilities(writable=True, folders=False, conditional_put=True, checksum="md5")
    protocol = "gcs"
    credentials_hint = "GOOGLE_APPLICATION_CREDENTIALS (a service-account key file)"
    example = "gs://my-bucket/prefix"
    # Google's rule (up to 222 characters when the name holds dots: a domain name)
    bucket_name = re.compile(r"(?=[^.]{3,63}$|(?=.*\.).{3,222}$)[a-z0-9][a-z0-9._-]*[a-z0-9]")
    bucket_rule = ("a Google Cloud Storage bucket name (3-63 lower-case letters, digits, "
                   "hyphens, underscores and dots, starting and ending with a letter or "
                   "digit)")
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

        bucket, prefix = bucket_prefix(self.fs_path(url))
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
