"""The local side of a source: what a finished file must be (:class:`Expected`: its size and
checksums when the manifest states them, else a cap on its size) and :func:`verify_file`
to check one, the file name a URL stands for, and enough free space before writing.

The download and the materialize step both ask these questions of a file already on disk
(is it the published one? may it be skipped?), so the answers live in one place.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from cloudmic.errors import SourceError, StoreError
from cloudmic.sources.transport import GiB, MiB

# The largest published file of the seed datasets is a ~4.5 GB DeepCAD zip; a download
# without a known size stops here rather than filling a disk (pass max_bytes to raise it).
DEFAULT_MAX_BYTES = 32 * GiB


# ---- what a file must be ---------------------------------------------------------------------
_HEX = re.compile(r"^[0-9a-f]+$")


@dataclass(frozen=True, slots=True)
class Expected:
    """What the finished file must be: exact size and checksums when known, else a cap."""

    sha256: str | None = None
    md5: str | None = None
    size: int | None = None
    max_bytes: int = DEFAULT_MAX_BYTES

    @classmethod
    def make(cls, *, sha256: str | None = None, md5: str | None = None,
             size: int | None = None, max_bytes: int | None = None) -> Expected:
        for label, value, n in (("sha256", sha256, 64), ("md5", md5, 32)):
            if value is not None and not (len(value) == n and _HEX.match(value.lower())):
                raise ValueError(f"{label} must be {n} hex digits, got {value!r}")
        if size is not None and size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        if max_bytes is None:  # a stated size is trusted over the default cap
            max_bytes = max(DEFAULT_MAX_BYTES, size or 0)
        return cls(sha256.lower() if sha256 else None, md5.lower() if md5 else None, size,
                   max_bytes)

    @property
    def limit(self) -> int:
        """No more bytes than this are ever written."""
        return self.size if self.size is not None else self.max_bytes

    def check_total(self, url: str, total: int | None) -> None:
        """Refuse before the body is read when the announced size is wrong or absurd."""
        if self.size is not None and self.size > self.max_bytes:
            raise SourceError(url, f"the expected size {self.size:,} bytes is above the "
                              f"limit of {self.max_bytes:,} bytes",
                              "pass a larger max_bytes if a file this large is expected")
        if total is None:
            return
        if self.size is not None and total != self.size:
            raise SourceError(url, f"the server offers {total:,} bytes but {self.size:,} are "
                              "expected", "the file changed on the server or the URL is "
                              "wrong: check the dataset's page and update the manifest's "
                              "source.downloads (size and checksum) if the new file is right")
        if total > self.max_bytes:
            raise SourceError(url, f"the server offers {total:,} bytes, above the limit of "
                              f"{self.max_bytes:,} bytes", "pass a larger max_bytes if a file "
                              "this large is expected")

    def hashers(self) -> dict[str, Any]:
        h = {"sha256": hashlib.sha256()}
        if self.md5:
            h["md5"] = hashlib.md5()  # noqa: S324 - integrity check against a published md5
        return h


def hash_file(path: Path, algorithms: tuple[str, ...] = ("sha256",)) -> dict[str, str]:
    hashers = {a: hashlib.new(a) for a in algorithms}
    with open(path, "rb") as f:
        while chunk := f.read(8 * MiB):
            for h in hashers.values():
                h.update(chunk)
    return {a: h.hexdigest() for a, h in hashers.items()}


def verify_file(path: Path, expect: Expected) -> str | None:
    """None when ``path`` has the expected size and checksums, else what is wrong."""
    n = path.stat().st_size
    if expect.size is not None and n != expect.size:
        return f"{n:,} bytes, expected {expect.size:,}"
    algos = tuple(a for a in ("sha256", "md5") if getattr(expect, a))
    if not algos:
        return None
    got = hash_file(path, algos)
    for a in algos:
        if got[a] != getattr(expect, a):
            return f"{a} {got[a]}, expected {getattr(expect, a)}"
    return None


# ---- names and space ------------------------------------------------------------------------
_BAD_NAME = re.compile(r"[\x00-\x1f\x7f/\\]")


def name_from_url(url: str) -> str:
    """The file name a URL stands for: the last path segment, without the query string
    (``.../images_and_labels_json.zip?dl=1`` -> ``images_and_labels_json.zip``)."""
    path = urlparse(url).path if "://" in url else url
    name = unquote(path.rstrip("/").rpartition("/")[2])
    check_name(name, url)
    return name


def check_name(name: str, url: str) -> None:
    if not name or name in (".", "..") or _BAD_NAME.search(name) or name.endswith(".part"):
        raise SourceError(url, f"cannot use {name!r} as a local file name",
                          "pass name= (a plain file name, like 'CCPs.zip')")


def check_free_space(folder: Path, need: int, what: str) -> None:
    free = shutil.disk_usage(folder).free
    if need > free:
        raise StoreError(f"{folder}: not enough free space for {what}: {need:,} bytes needed, "
                         f"{free:,} free; free some space or choose another folder")
