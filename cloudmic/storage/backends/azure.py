"""Azure Blob Storage."""

from __future__ import annotations

import json
import os
import re
from typing import Any
from urllib.parse import urlparse

from cloudmic.errors import StoreError
from cloudmic.storage.backends.base import Backend, Capabilities, bucket_prefix


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
    # Azure's rule for containers, and its three special ones
    bucket_name = re.compile(r"\$root|\$web|\$logs|[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}")
    bucket_rule = ("an Azure container name (3-63 lower-case letters, digits and single "
                   "hyphens, starting and ending with a letter or digit)")
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

        container, prefix = bucket_prefix(self.fs_path(url))
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
