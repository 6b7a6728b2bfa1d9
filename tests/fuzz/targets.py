"""Fuzz targets: for each parser, a hypothesis strategy of hostile inputs and a function that
feeds one input to the parser the way cloudmic uses it.

Inputs are of three kinds: valid files as the publishers write them, then damaged by a few
mutations (bit flips, forged 32-bit numbers, cuts, insertions); structured files whose
declared numbers are drawn from "interesting" values (0, 2**31, 2**32 - 1, ...); and raw
bytes. A target may raise only cloudmic's errors; the worker checks that (see _worker.py).
"""

from __future__ import annotations

import atexit
import gzip
import io
import json
import pickle
import shutil
import struct
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import strategies as st
from tiffgen import Page, tiff_bytes

INTERESTING = [0, 1, 2, 7, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000, 2**26, 0x7FFFFFFF,
               0x80000000, 0xFFFFFFFF]
WORK = Path(tempfile.mkdtemp(prefix="cloudmic-fuzz-"))
atexit.register(shutil.rmtree, WORK, ignore_errors=True)


# ---- generic mutation ----------------------------------------------------------------------
@st.composite
def mutated(draw: Any, seeds: st.SearchStrategy[bytes], max_ops: int = 6) -> bytes:
    data = bytearray(draw(seeds))
    for _ in range(draw(st.integers(0, max_ops))):
        if not data:
            data += b"\0"
        op = draw(st.sampled_from(["flip", "int", "insert", "delete", "cut", "byte"]))
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte":
            data[i] = draw(st.integers(0, 255))
        elif op == "int":
            fmt = draw(st.sampled_from(["<I", ">I", "<H", ">H", "<Q"]))
            value = draw(st.sampled_from(INTERESTING)) & (0xFFFF if "H" in fmt else 0xFFFFFFFF)
            chunk = struct.pack(fmt, value)
            data[i:i + len(chunk)] = chunk
        elif op == "insert":
            data[i:i] = draw(st.binary(max_size=16))
        elif op == "delete":
            del data[i:i + draw(st.integers(1, 16))]
        else:
            del data[i:]
    return bytes(data)


def raw_bytes(max_size: int = 2048) -> st.SearchStrategy[bytes]:
    return st.binary(max_size=max_size)


# ---- plain metadata (pickle / npz) ---------------------------------------------------------
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
    st.text(max_size=20), st.binary(max_size=20),
    st.integers(-1000, 1000).map(np.int32), st.floats(width=32).map(np.float32),
    st.floats().map(np.float64),
)
metadata = st.dictionaries(
    st.text(max_size=12),
    st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                 | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=12),
    max_size=8,
)


def _pickle_of(obj: Any, protocol: int) -> bytes:
    return pickle.dumps(obj, protocol=protocol)


def _array_pickle(obj: Any, protocol: int) -> bytes:
    arr = np.empty((), dtype=object)
    arr[()] = obj
    return pickle.dumps(arr, protocol=protocol)


# Opcodes with forged arguments: memo indexes, frame and string lengths.
_OPS = [
    st.builds(lambda p: b"\x80" + bytes([p]), st.integers(0, 6)),
    st.builds(lambda n: b"\x95" + struct.pack("<Q", n), st.sampled_from(INTERESTING + [2**60])),
    st.builds(lambda n: b"r" + struct.pack("<I", n), st.sampled_from(INTERESTING)),
    st.builds(lambda n: b"q" + bytes([n]), st.integers(0, 255)),
    st.builds(lambda n: b"j" + struct.pack("<I", n), st.sampled_from(INTERESTING)),
    st.builds(lambda n: b"h" + bytes([n]), st.integers(0, 255)),
    st.builds(lambda n: b"p" + str(n).encode() + b"\n", st.sampled_from(INTERESTING + [10**12])),
    st.builds(lambda n, s: b"X" + struct.pack("<I", n) + s, st.sampled_from(INTERESTING),
              st.binary(max_size=8)),
    st.builds(lambda n, s: b"\x8e" + struct.pack("<Q", n) + s,
              st.sampled_from(INTERESTING + [2**62]), st.binary(max_size=8)),
    st.builds(lambda s: b"C" + bytes([len(s)]) + s, st.binary(max_size=8)),
    st.sampled_from([b"}", b"]", b")", b"(", b"u", b"e", b"s", b"a", b"t", b"2", b"\x94",
                     b"K\x01", b"N", b"\x88", b"R", b"b", b"\x81", b"\x93", b".",
                     b"cnumpy\ndtype\n", b"cos\nsystem\n", b"\x8c\x05numpy\x8c\x05dtype",
                     b"\x8c\x02u2", b"\x8c\x02O8"]),
]
opcode_soup = st.lists(st.one_of(*_OPS), max_size=24).map(lambda ops: b"".join(ops) + b".")

pickles = st.one_of(
    mutated(st.builds(_pickle_of, metadata, st.integers(0, 5))),
    mutated(st.builds(_array_pickle, metadata, st.integers(2, 5))),
    opcode_soup, raw_bytes(256),
)


def t_pickle(data: bytes) -> None:
    from cloudmic.formats.safe_pickle import load_0d_object_array_item, restricted_loads

    for fn in (restricted_loads, load_0d_object_array_item):
        try:
            fn(data, what="fuzz.pkl")
        except Exception as exc:
            _reraise_unless_project(exc)


def _reraise_unless_project(exc: BaseException) -> None:
    """Let a cloudmic error pass, unless it only wraps running out of memory."""
    from cloudmic.errors import CloudmicError

    if not isinstance(exc, CloudmicError):
        raise exc
    if memory_error_in(exc):
        raise AssertionError(f"out of memory behind {type(exc).__name__}: {exc}") from exc


def memory_error_in(exc: BaseException | None) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, MemoryError) or "MemoryError" in str(exc):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


# ---- npz members (STED-FM) -----------------------------------------------------------------
_DESCR = ["|u1", "<u2", ">u2", "<f8", "|O", "<U5", "|V4", "<i8", "|b1"]
_npy_shapes = st.lists(st.sampled_from([-3, -1, 0, 1, 2, 3, 224, 2**31, 2**62]), max_size=3)


def _npy(descr: str, shape: list[int], fortran: bool, body: bytes) -> bytes:
    header = f"{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {tuple(shape)}, }}"
    header += " " * ((-len(header) - 11) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + body


def _savez(shape: tuple[int, int], dtype: str, meta: dict | None, compress: bool) -> bytes:
    buf = io.BytesIO()
    image = (np.arange(shape[0] * shape[1]) % 251).astype(dtype).reshape(shape)
    arrays: dict[str, Any] = {"image": image}
    if meta is not None:
        arrays["metadata"] = meta
    (np.savez_compressed if compress else np.savez)(buf, **arrays)
    return buf.getvalue()


def _zip_of(entries: list[tuple[str, bytes]], compress: bool, version: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries:
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
            info.extract_version = version
            zf.writestr(info, data)
    return buf.getvalue()


_entry_names = st.sampled_from(["image.npy", "metadata.npy", "a/b.npy", "../x", ".", "x"])
_forged_npz = st.builds(
    _zip_of,
    st.lists(st.tuples(_entry_names, st.one_of(
        st.builds(_npy, st.sampled_from(_DESCR), _npy_shapes, st.booleans(),
                  st.binary(max_size=64)),
        pickles.map(lambda p: _npy("|O", [], False, p)),
    )), max_size=3),
    st.booleans(), st.sampled_from([20, 20, 45, 63, 64, 188]),
)
npz_members = st.one_of(
    mutated(st.builds(_savez, st.tuples(st.integers(1, 8), st.integers(1, 8)),
                      st.sampled_from(["uint8", "uint16", "float32"]),
                      st.one_of(st.none(), metadata), st.booleans())),
    _forged_npz, mutated(_forged_npz), raw_bytes(512),
)


def t_npz(data: bytes) -> None:
    from cloudmic.formats.npz import read_npz_member

    try:
        read_npz_member(data, member="fuzz.tar: member 'x'")
    except Exception as exc:
        _reraise_unless_project(exc)


# ---- tar -----------------------------------------------------------------------------------
_TAR_TYPES = [tarfile.REGTYPE, tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE,
              tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE, tarfile.CONTTYPE,
              tarfile.GNUTYPE_SPARSE, b"Z"]
_member_names = st.one_of(
    st.sampled_from(["a", "b.npz", "a/b", "../x", "/etc/x", "./a", "a/./b", "a//b", "C:x",
                     "a\\b", "x\x01", "", "." * 300, "n" * 200]),
    st.text(max_size=20),
)


def _tar_of(members: list[tuple[str, bytes, bytes]], fmt: int, gz: bool) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for name, typ, payload in members:
            info = tarfile.TarInfo(name)
            info.type = typ
            info.linkname = "target" if typ in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
            info.size = len(payload) if typ in (tarfile.REGTYPE, tarfile.CONTTYPE) else 0
            try:
                tf.addfile(info, io.BytesIO(payload) if info.size else None)
            except (ValueError, UnicodeError):  # a name this format cannot hold: skip it
                continue
    raw = buf.getvalue()
    return gzip.compress(raw) if gz else raw


def _forged_tar_header(typ: bytes, size: int) -> bytes:
    info = tarfile.TarInfo("x")
    info.type, info.size = typ, 0
    block = bytearray(info.tobuf(format=tarfile.GNU_FORMAT))
    block[124:136] = b"\x80" + size.to_bytes(11, "big")  # base-256 size, as GNU writes it
    chk = sum(block[:148]) + 8 * 32 + sum(block[156:512])
    block[148:156] = b"%06o\0 " % chk
    return bytes(block) + b"\0" * 1024


tars = st.one_of(
    mutated(st.builds(
        _tar_of, st.lists(st.tuples(_member_names, st.sampled_from(_TAR_TYPES),
                                    st.binary(max_size=600)), max_size=4),
        st.sampled_from([tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]),
        st.booleans())),
    st.builds(_forged_tar_header,
              st.sampled_from([tarfile.REGTYPE, tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME]),
              st.sampled_from(INTERESTING + [2**40])),
    raw_bytes(1536),
)


def t_tar(data: bytes) -> None:
    from cloudmic.formats.safe_tar import iter_tar_members, list_tar_members, scan_tar

    mib = 1024 * 1024
    calls: list[Callable[[], Any]] = [
        lambda: [len(p) for _, p in iter_tar_members(io.BytesIO(data), archive="fuzz.tar",
                                                     max_member_bytes=mib)],
        lambda: list_tar_members(io.BytesIO(data), archive="fuzz.tar", allow_dirs=True),
        lambda: scan_tar(io.BytesIO(data), archive="fuzz.tar", max_member_bytes=mib),
    ]
    for call in calls:
        try:
            call()
        except Exception as exc:
            _reraise_unless_project(exc)


# ---- WebDataset shards (cloudmic.shards' reader) --------------------------------------------
def _wds_shard(records: int, shape: tuple[int, int], dtype: str) -> bytes:
    from cloudmic.ingest.tar_writer import TarWriter

    buf = io.BytesIO()
    w = TarWriter(buf)
    for i in range(records):
        w.write({"__key__": f"train-{i:06d}", "wf.npy": np.full(shape, i, dtype),
                 "json": {"i": i}, "cls": i})
    w.close()
    return buf.getvalue()


wds_shards = st.one_of(
    mutated(st.builds(_wds_shard, st.integers(1, 3),
                      st.tuples(st.integers(0, 4), st.integers(1, 4)),
                      st.sampled_from(["<u2", ">f4", "<f8", "|b1"]))),
    tars,
    raw_bytes(1536),
)


def t_wds_tar(data: bytes) -> None:
    from cloudmic.client.shards import decode_record
    from cloudmic.client.stream.reader import unreadable
    from cloudmic.formats import wds_tar

    try:
        try:
            for record in wds_tar.records(io.BytesIO(data), "fuzz.tar"):
                decode_record(record)
        except ValueError as exc:  # damaged bytes: cloudmic.shards raises them so
            unreadable("fuzz.tar", exc, "raise", "shards")
    except Exception as exc:
        _reraise_unless_project(exc)


# ---- zip -----------------------------------------------------------------------------------
_zip_names = st.one_of(
    st.sampled_from(["a.txt", "a/b.txt", "a/./b.txt", "x/.", "x/y", "x/", "../e", "/abs",
                     "a//b", "A.txt", "d/e/f.tif", "__MACOSX/._a", "é", "e\u0301", "n" * 300]),
    st.text(min_size=1, max_size=16),
)
zips = st.one_of(
    mutated(st.builds(
        _zip_of, st.lists(st.tuples(_zip_names, st.binary(max_size=300)), max_size=4),
        st.booleans(), st.sampled_from([20, 20, 45, 63, 188]))),
    raw_bytes(1024),
)


def t_zip(data: bytes) -> None:
    from cloudmic.sources.zip_archive import ZipArchive

    path = WORK / "fuzz.zip"
    path.write_bytes(data)
    dest = Path(tempfile.mkdtemp(dir=WORK))
    try:
        with ZipArchive(path) as z:
            for m in z.members:
                if m.is_dir:
                    continue
                try:
                    with z.open(m.name) as f:
                        while f.read(1 << 20):
                            pass
                except Exception as exc:
                    _reraise_unless_project(exc)
            z.extract(dest)
    except Exception as exc:
        _reraise_unless_project(exc)


# ---- TIFF ----------------------------------------------------------------------------------
_dims = st.one_of(st.integers(0, 40), st.sampled_from([224, 4096, 16384, 65535, 2**31, 2**32 - 1]))


@st.composite
def _pages(draw: Any) -> Page:
    width, height = draw(_dims), draw(_dims)
    bits = draw(st.sampled_from([1, 8, 16, 16, 32, 64, 12, 0, 255]))
    compression = draw(st.sampled_from([1, 1, 5, 8, 32773, 7, 34712, 50000, 0, 65535]))
    nstrips = draw(st.integers(0, 3))
    small = (max(width, 1) * max(height, 1) * max(bits, 8) // 8) <= 4096
    if compression == 8 and small:
        strips = [__import__("zlib").compress(bytes(max(width * height * bits // 8, 1)))]
    else:
        strips = [draw(st.binary(max_size=64)) for _ in range(nstrips)]
    page = Page(width, height, bits, compression, strips,
                rowsperstrip=draw(st.one_of(st.none(), st.sampled_from([1, 2, 2**32 - 1]))),
                samples=draw(st.sampled_from([1, 1, 1, 3, 4, 0])),
                sampleformat=draw(st.sampled_from([1, 2, 3, 5, 9])),
                planar=draw(st.sampled_from([1, 1, 2, 3])))
    if draw(st.booleans()):
        page.offsets = draw(st.lists(st.sampled_from(INTERESTING + [8, 16]), max_size=3))
    if draw(st.booleans()):
        page.counts = draw(st.lists(st.sampled_from(INTERESTING), max_size=3))
    return page


def _tifffile_bytes(shape: tuple[int, ...], dtype: str, compression: str | None,
                    imagej: bool) -> bytes:
    import tifffile

    buf = io.BytesIO()
    data = (np.arange(int(np.prod(shape))) % 200).astype(dtype).reshape(shape)
    tifffile.imwrite(buf, data, compression=compression, imagej=imagej and dtype != "uint32")
    return buf.getvalue()


tiffs = st.one_of(
    st.builds(tiff_bytes, st.lists(_pages(), min_size=1, max_size=3), big_endian=st.booleans()),
    mutated(st.builds(_tifffile_bytes,
                      st.sampled_from([(4, 5), (3, 4, 5), (2, 8, 8), (1, 6, 6)]),
                      st.sampled_from(["uint8", "uint16", "float32"]),
                      st.sampled_from([None, None, "zlib", "lzw", "packbits"]),
                      st.booleans())),
    raw_bytes(512).map(lambda b: b"II*\x00" + b),
)


def t_tiff(data: bytes) -> None:
    from cloudmic.formats.tiff import decode_tiff_bytes, inspect_tiff, read_tiff
    from cloudmic.formats.tiff_pages import iter_frame_blocks, movie_info

    path = WORK / "fuzz.tif"
    path.write_bytes(data)
    calls: list[Callable[[], Any]] = [
        lambda: inspect_tiff(path), lambda: read_tiff(path),
        lambda: decode_tiff_bytes(data, where="fuzz.tar: member 'x'", expected_shape=(4, 5)),
        lambda: movie_info(path),
        lambda: [b.shape for _, b in iter_frame_blocks(path, 2)],
    ]
    for call in calls:
        try:
            call()
        except Exception as exc:
            _reraise_unless_project(exc)


# ---- RLE labels ----------------------------------------------------------------------------
_runs = st.lists(st.integers(-3, 400), max_size=12).map(lambda v: " ".join(map(str, v)))
_info = st.fixed_dictionaries({
    "shape": st.one_of(st.lists(st.sampled_from([0, 1, 2, 5, 7, -1, 2**20, 2**62]), max_size=4),
                       st.just("50 800 800"), st.none()),
    "dtype": st.sampled_from(["uint16", "uint8", "int64", "0 3 uint16", "float32", "S3", "O",
                              "u2,u2", "(2,)u2", "uint16 uint16", "", "V8", "<u2", 7]),
})
_rle_docs = st.dictionaries(
    st.one_of(st.sampled_from(["1", "2", "0", "-1", "01", "1e3", "300", "70000", "x"]),
              st.text(max_size=4)),
    st.one_of(_runs, st.text(max_size=20), st.integers(), st.none()), max_size=4,
).flatmap(lambda d: st.builds(lambda info: {**d, ".info": info}, _info))


def _encoded(shape: tuple[int, ...], seed: int) -> bytes:
    from cloudmic.formats.label_rle import encode_rle

    rng = np.random.default_rng(seed)
    return encode_rle(rng.integers(0, 4, size=shape, dtype=np.uint16))


rle_files = st.one_of(
    _rle_docs.map(lambda d: json.dumps(d).encode()),
    mutated(st.builds(_encoded, st.sampled_from([(2, 3, 4), (1, 5, 5), (3, 2, 2)]),
                      st.integers(0, 100))),
    raw_bytes(256),
)


def t_rle(data: bytes) -> None:
    from cloudmic.formats.label_rle import decode_rle

    for expected in (None, (2, 3, 4)):
        try:
            decode_rle(data, name="fuzz-labels.json", expected_shape=expected,
                       max_voxels=2**22)
        except Exception as exc:
            _reraise_unless_project(exc)


# ---- ThunderSTORM CSV ----------------------------------------------------------------------
_cells = st.sampled_from(['"id"', '"frame"', '"x [nm]"', '"y [nm]"', '"z [nm]"', '"x [px]"',
                          '"sigma [nm]"', '"uncertainty_xy [nm]"', '"chi2"', 'id', '"x [nm"',
                          '"a\rb"', 'x\r[nm]', '"id"', '""', '"1x"', '"µm [µm]"'])
_values = st.sampled_from(["1", "2", "0", "-1", "1.5", "1e308", "NaN", "Infinity", "1_0", "#",
                           "", "x", "9007199254740993", " 3", "1e-400"])


@st.composite
def _csv(draw: Any) -> bytes:
    delim = draw(st.sampled_from([",", "\t", ";"]))
    header = draw(st.lists(_cells, min_size=0, max_size=8))
    rows = draw(st.lists(st.lists(_values, min_size=0, max_size=9), max_size=8))
    eol = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    blank = eol * draw(st.sampled_from([0, 0, 1, 3]))
    text = delim.join(header) + eol + (eol + blank).join(delim.join(r) for r in rows)
    return text.encode("utf-8")


def _exported(n: int, seed: int) -> bytes:
    from cloudmic.formats.thunderstorm import LocTable, write_thunderstorm

    rng = np.random.default_rng(seed)
    table = LocTable.from_columns({"id": np.arange(1, n + 1), "frame": rng.integers(1, 9, n),
                                   "x": rng.random(n) * 1e4, "y": rng.random(n) * 1e4,
                                   "uncertainty": rng.random(n)})
    buf = io.StringIO()
    write_thunderstorm(table, buf)
    return buf.getvalue().encode()


csvs = st.one_of(_csv(), mutated(st.builds(_exported, st.integers(0, 6), st.integers(0, 99))),
                 raw_bytes(256))


def t_csv(data: bytes) -> None:
    from cloudmic.formats.thunderstorm import read_thunderstorm

    try:
        read_thunderstorm(io.BytesIO(data), name="fuzz.csv")
    except Exception as exc:
        _reraise_unless_project(exc)


# ---- manifests, index.json, catalog.json ---------------------------------------------------
_MANIFESTS = sorted((Path(__file__).resolve().parents[2] / "manifests").glob("*.yaml"))
manifests = st.one_of(
    mutated(st.sampled_from([p.read_bytes() for p in _MANIFESTS]), max_ops=4),
    st.sampled_from([b"a: &a [*a]", b"!!python/object:os.system {}", b"- 1", b"", b"x: [",
                     b"name: 3\nsource: {}\n", b"\xff\xfe"]),
    raw_bytes(256),
)


def t_manifest(data: bytes) -> None:
    from cloudmic.manifest import parse_manifest

    path = WORK / "fuzz-manifest.yaml"
    path.write_bytes(data)
    try:
        parse_manifest(path)
    except Exception as exc:
        _reraise_unless_project(exc)


_json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
              st.text(max_size=8)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=3), max_leaves=10)
_index_docs = st.fixed_dictionaries({"splits": st.one_of(_json_values, st.dictionaries(
    st.sampled_from(["train", "test"]),
    st.fixed_dictionaries({"records": st.one_of(st.integers(-1, 5), st.text(max_size=3)),
                           "shards": st.lists(st.fixed_dictionaries({
                               "url": st.sampled_from(["train-000000.tar", "/etc/passwd",
                                                       "../x.tar", "s3://b/x.tar", "a/../b.tar"]),
                               "samples": st.one_of(st.integers(-1, 5), st.text(max_size=2)),
                           }), max_size=2)}), max_size=2))})
json_docs = st.one_of(_index_docs.map(lambda d: json.dumps(d).encode()),
                      _json_values.map(lambda d: json.dumps(d).encode()),
                      mutated(st.just(b'{"splits": {"train": {"records": 1, "shards": '
                                      b'[{"url": "train-000000.tar", "samples": 1}]}}}')),
                      raw_bytes(64))


def _index_folder(data: bytes) -> Path:
    folder = Path(tempfile.mkdtemp(dir=WORK)) / "fuzz.wds"
    folder.mkdir()
    (folder / "index.json").write_bytes(data)
    return folder


def t_index_read(data: bytes) -> None:
    from cloudmic.client.shards import shard_index

    try:
        shard_index(str(_index_folder(data)))
    except Exception as exc:
        _reraise_unless_project(exc)


def t_index_splits(data: bytes) -> None:
    from cloudmic.client.shards import shard_index, split_shards

    try:
        loc, index = shard_index(str(_index_folder(data)))
    except Exception:
        return  # t_index_read covers reading; this target is about the splits
    splits = index.get("splits") if isinstance(index, dict) else None
    for split in list(splits) if isinstance(splits, dict) else ["train"]:
        try:
            split_shards(loc, index, split)
        except Exception as exc:
            _reraise_unless_project(exc)


def t_catalog(data: bytes) -> None:
    from cloudmic.storage.catalog_json import read_catalog
    from cloudmic.storage.location import Location

    folder = Path(tempfile.mkdtemp(dir=WORK))
    (folder / "catalog.json").write_bytes(data)
    try:
        read_catalog(Location.parse(str(folder)))
    except Exception as exc:
        _reraise_unless_project(exc)


# Imported before the worker caps its address space (torch comes with the client).
PRELOAD = {"index_json": ["cloudmic.client.shards"],
           "index_json_splits": ["cloudmic.client.shards"],
           "catalog_json": ["cloudmic.storage.catalog_json"], "manifest": ["cloudmic.manifest"],
           "zip": ["cloudmic.sources.zip_archive"], "wds_tar": ["cloudmic.client.shards"]}

TARGETS: dict[str, tuple[st.SearchStrategy[bytes], Callable[[bytes], None]]] = {
    "pickle": (pickles, t_pickle),
    "npz": (npz_members, t_npz),
    "tar": (tars, t_tar),
    "wds_tar": (wds_shards, t_wds_tar),
    "zip": (zips, t_zip),
    "tiff": (tiffs, t_tiff),
    "rle": (rle_files, t_rle),
    "thunderstorm": (csvs, t_csv),
    "manifest": (manifests, t_manifest),
    "index_json": (json_docs, t_index_read),
    "index_json_splits": (json_docs, t_index_splits),
    "catalog_json": (json_docs, t_catalog),
}
