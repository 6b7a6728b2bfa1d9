"""WebDataset records into a tar, byte for byte as ``webdataset.TarWriter(mtime=0)`` writes
them, without importing ``webdataset``: its package imports torch when torch is installed,
~200 MB of RSS in every ingest process for nothing (measured on full-size platelet-em).

The format is WebDataset's: one tar member ``<key>.<field>`` per field, members of a record
together and in sorted field order; ``.npy`` fields in NumPy's format, ``.json`` as JSON,
class fields as decimal text. Members carry mtime 0, mode 0444 and owner ``bigdata``, so
re-runs write the same bytes (``tests/ingest/test_tar_writer.py`` holds it to webdataset's
own writer).
"""

from __future__ import annotations

import io
import json
import tarfile
from typing import IO, Any

from numpy.lib import format as npy_format

CLASS_FIELDS = {"cls", "cls2", "class", "count", "index", "inx", "id"}


def encode(field: str, value: Any) -> bytes:
    """The bytes of one field, as webdataset's default encoder makes them."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    kind = field.rsplit(".", 1)[-1].lower()
    if kind == "npy":
        buf = io.BytesIO()
        npy_format.write_array(buf, value, allow_pickle=False)
        return buf.getvalue()
    if kind in ("json", "jsn"):
        return json.dumps(value).encode("utf-8")
    if kind in CLASS_FIELDS:
        return str(value).encode("ascii")
    raise ValueError(f"field {field!r}: no encoder for .{kind} values of type "
                     f"{type(value).__name__} (bytes, str, .npy arrays, .json, class numbers)")


class TarWriter:
    """``write(record)`` appends one record (a dict with ``__key__``); ``close()`` ends the
    tar. Fields whose name starts with ``_`` are not written."""

    def __init__(self, fileobj: IO[bytes]) -> None:
        self.tar = tarfile.open(fileobj=fileobj, mode="w|")  # noqa: SIM115 - closed by close()

    def write(self, record: dict[str, Any]) -> int:
        key = record.get("__key__")
        if not isinstance(key, str):
            raise ValueError("a record needs a string __key__")
        fields = {k: encode(k, v) for k, v in record.items() if not k.startswith("_")}
        for name in sorted(fields):
            data = fields[name]
            info = tarfile.TarInfo(f"{key}.{name}")
            info.size, info.mtime, info.mode = len(data), 0, 0o444
            info.uname = info.gname = "bigdata"
            self.tar.addfile(info, io.BytesIO(data))
        return sum(len(v) for v in fields.values())

    def close(self) -> None:
        self.tar.close()
