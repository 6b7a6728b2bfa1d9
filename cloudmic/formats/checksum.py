"""File checksums, streamed: a source of several GB never sits in memory."""

from __future__ import annotations

import hashlib
import os


def sha256_file(path: str | os.PathLike[str], block: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(block):
            h.update(chunk)  # releases the GIL: files hash in parallel threads
    return h.hexdigest()
