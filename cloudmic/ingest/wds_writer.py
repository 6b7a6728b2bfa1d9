"""WebDataset tar shards: written to a local temp file, checksummed, then moved or uploaded.

Writing locally first avoids webdataset's writer leaving an S3 upload to the garbage
collector (STACK-NOTES "WebDataset"); a fixed mtime makes re-runs byte-identical.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import webdataset as wds

from cloudmic.formats.checksum import sha256_file
from cloudmic.storage.location import Location


def write_shard(records: Iterable[dict[str, Any]], dest: Location) -> dict[str, Any]:
    """Write records to the tar at ``dest``; return its index entry."""
    tmp_dir = None if dest.is_s3 else Path(dest.path).parent
    if tmp_dir is not None:
        tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".tar.part", dir=tmp_dir)
    try:
        count = 0
        with os.fdopen(fd, "wb") as f:
            writer = wds.TarWriter(f, mtime=0)
            for rec in records:
                writer.write(rec)
                count += 1
            writer.close()
        size, digest = os.path.getsize(tmp), sha256_file(Path(tmp))
        if dest.is_s3:
            dest.fs.put_file(tmp, dest.path)
        else:
            os.replace(tmp, dest.path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return {"samples": count, "bytes": size, "sha256": digest}
