"""A folder on this machine."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from cloudmic.storage.backends.base import Backend, Capabilities

if TYPE_CHECKING:
    import fsspec


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
