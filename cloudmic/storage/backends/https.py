"""A public bucket's HTTP(S) URL or a web server: anonymous, read-only."""

from __future__ import annotations

from typing import Any

from cloudmic.storage.backends.base import Backend, Capabilities


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
