"""ThunderSTORM localisation tables (CSV, or the tab-separated ".xls" export).

Columns are matched by name, never by position: ThunderSTORM writes different column sets
depending on version and fitter (``uncertainty`` or ``uncertainty_xy``, with or without
``chi2``, 3-D fits with ``z``). Header cells are double-quoted ``name [unit]``; values are
plain numbers. The body is parsed vectorised (``np.loadtxt``, in slices of a few MB), and
only when that fails is the file walked line by line to name the first bad line.

Memory bound: the file's bytes (F), the table (8 bytes a value; a row of n columns takes at
least 2n bytes of text, so at most 4F however many blank lines there are), the int and check
copies of a few columns, and one slice's transient (np.loadtxt's UCS-4 copy of at most
4 MiB + one line). Lines are limited to MAX_LINE_BYTES, the header to MAX_COLUMNS cells and
the body to MAX_BLANK_LINES empty lines. About 6F + 64 MiB in all.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import IO, NamedTuple

import numpy as np

from cloudmic.errors import SourceError

log = logging.getLogger(__name__)

INT_COLUMNS = ("id", "frame")
FLOAT_COLUMNS = (
    "x", "y", "z", "sigma", "intensity", "offset", "bkgstd", "chi2", "uncertainty",
    "uncertainty_z",
)  # fmt: skip
REQUIRED = ("id", "frame", "x", "y")
# Positions must be in nm: the SR grid (16.25 nm/px) and the WF grid (130 nm/px) are
# defined in nm, and a px table cannot be placed on either without the camera pixel size.
NM_ONLY = ("x", "y", "z")
ALIASES = {"uncertainty_xy": "uncertainty"}
DEFAULT_UNITS = {
    "id": "", "frame": "", "x": "nm", "y": "nm", "z": "nm", "sigma": "nm",
    "intensity": "photon", "offset": "photon", "bkgstd": "photon", "chi2": "",
    "uncertainty": "nm", "uncertainty_z": "nm",
}  # fmt: skip

_CELL = re.compile(r"^\s*(?P<name>[^\[\]]*?)\s*(?:\[(?P<unit>[^\[\]]*)\])?\s*$")
_MAX_EXACT_INT = 2**53  # ids and frames are parsed as float64; beyond this they are not exact
# ThunderSTORM writes ~15 columns of ~20 characters; these limits are far above any export.
MAX_COLUMNS = 1000
MAX_LINE_BYTES = 1024 * 1024
MAX_BLANK_LINES = 10_000

_FIX_EXPORT = (
    "export the localisations again from ThunderSTORM (Results table > Export, CSV), "
    "or repair the file"
)


@dataclass(frozen=True, eq=False)
class LocTable:
    """A localisation table: one 1-D array per column, all the same length.

    ``columns`` uses canonical names (``uncertainty_xy`` becomes ``uncertainty``), in file
    order; ``units`` gives each column's unit (``""`` when the header has none);
    ``source_header`` keeps the header cells as written, for provenance.
    """

    columns: dict[str, np.ndarray]
    units: dict[str, str]
    source_header: list[str]

    def __post_init__(self) -> None:
        lengths = {name: len(col) for name, col in self.columns.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"LocTable columns differ in length: {lengths}")
        if set(self.units) != set(self.columns):
            raise ValueError("LocTable.units must name exactly the columns")

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    @classmethod
    def from_columns(
        cls, columns: dict[str, Iterable[float]], units: dict[str, str] | None = None
    ) -> LocTable:
        """Build a table from canonical columns (known ones get their dtype and unit)."""
        cols = {name: _as_column(name, values) for name, values in columns.items()}
        unit_of = {name: DEFAULT_UNITS.get(name, "") for name in cols} | dict(units or {})
        header = [_header_cell(name, unit_of[name]) for name in cols]
        return cls(cols, {name: unit_of[name] for name in cols}, header)


def _as_column(name: str, values: Iterable[float]) -> np.ndarray:
    dtype = np.int64 if name in INT_COLUMNS else np.float64
    return np.asarray(values, dtype=dtype).reshape(-1)


def _header_cell(name: str, unit: str) -> str:
    return f"{name} [{unit}]" if unit else name


# --- header -----------------------------------------------------------------------------


def _canonical(name: str) -> str:
    low = name.strip().lower()
    low = ALIASES.get(low, low)
    # Unknown columns (detections, sigma1, ...) keep a name that is safe as a Zarr key.
    safe = re.sub(r"[^0-9a-z_]+", "_", low).strip("_")
    if safe and safe[0].isdigit():
        safe = f"col_{safe}"
    return safe


def _sniff_delimiter(header_line: str) -> str:
    # The .xls export is the same table with tabs; commas never occur in tab-separated names.
    return "\t" if "\t" in header_line else ","


def _header_cells(line: str, delimiter: str, src: str) -> list[str]:
    if line.count(delimiter) >= MAX_COLUMNS:
        raise SourceError(
            src,
            f"the header has {line.count(delimiter) + 1:,} columns, more than the limit of "
            f"{MAX_COLUMNS:,} (ThunderSTORM writes about 15)",
            _FIX_EXPORT,
        )
    try:
        return next(csv.reader([line], delimiter=delimiter))
    except csv.Error as exc:  # e.g. a CR or NUL inside the header line
        raise SourceError(src, f"the header line cannot be read as CSV ({exc})",
                          _FIX_EXPORT) from None


def _parse_header(line: str, delimiter: str, src: str) -> tuple[list[str], list[str], list[str]]:
    """(canonical names, units, source cells) of the header line."""
    cells = _header_cells(line, delimiter, src)
    names: list[str] = []
    units: list[str] = []
    seen: dict[str, str] = {}  # name -> its cell: a list lookup made 40,000 columns quadratic
    for pos, cell in enumerate(cells, start=1):
        m = _CELL.match(cell)
        name = _canonical(m.group("name")) if m else ""
        if not name:
            raise SourceError(
                src,
                f"header cell {pos} ({cell[:80]!r}) is not a column name like 'x [nm]' "
                f"(header: {cells[:20]}{' ...' if len(cells) > 20 else ''})",
                _FIX_EXPORT,
            )
        if name in seen:
            raise SourceError(
                src,
                f"header has two columns for {name!r}: {seen[name]!r} and {cell!r}",
                "keep one of them (ThunderSTORM writes each column once)",
            )
        seen[name] = cell
        names.append(name)
        units.append((m.group("unit") or "").strip())
    return names, units, cells


def _check_columns(names: list[str], units: list[str], cells: list[str], src: str) -> None:
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        raise SourceError(
            src,
            f"not a ThunderSTORM localisation table: no column for {', '.join(missing)} "
            f"(needed: id, frame, x [nm], y [nm]); columns found: {cells}",
            "export the localisations from ThunderSTORM (Results table > Export) with the "
            "id, frame, x and y columns selected",
        )
    for name, unit, cell in zip(names, units, cells, strict=True):
        if name in NM_ONLY and unit != "nm":
            raise SourceError(
                src,
                f"column {cell!r} is in {unit or 'no unit'!s}, but only exports with "
                "coordinates in nm are supported",
                "in ThunderSTORM set the camera pixel size (Camera setup), switch the x/y "
                "columns of the results table to nm, and export again (or convert: "
                "x_nm = x_px * pixel size in nm, and name the columns 'x [nm]', 'y [nm]')",
            )


# --- body -------------------------------------------------------------------------------


class _Body(NamedTuple):
    """The table body: ``raw[start:]``, kept as an offset so it is never copied."""

    raw: bytes
    start: int


# Rows are parsed in slices of about this many bytes: np.loadtxt reads a str through an
# internal UCS-4 copy (4 bytes per character), so one pass over a 100 MB file would peak
# near half a GB; slices keep that transient small and the result is filled in place.
_SLICE_BYTES = 4 * 1024 * 1024


def _body_lines(body: _Body) -> Iterator[tuple[int, str]]:
    """(1-based file line number, text) of each non-empty body line; the header is line 1.

    Empty lines are skipped as np.loadtxt skips them, so row i of the table is entry i here.
    Only used to word errors, so the cost of a Python pass is paid on bad files alone; lazy,
    so that a bad file costs one line at a time, not a list of every line.
    """
    raw, pos, n = body.raw, body.start, 2
    while pos <= len(raw):
        end = raw.find(b"\n", pos)
        end = len(raw) if end < 0 else end
        line = raw[pos:end].decode("latin-1").rstrip("\r")
        if line:
            yield n, line
        pos, n = end + 1, n + 1


def _line_of_row(body: _Body, row: int) -> int:
    return next(islice(_body_lines(body), row, None))[0]


def _find_bad_line(body: _Body, delimiter: str, cells: list[str], src: str) -> SourceError:
    """Walk the body in Python to name the first line numpy could not parse."""
    for lineno, line in _body_lines(body):
        fields = line.split(delimiter)
        if len(fields) != len(cells):
            return SourceError(
                f"{src}, line {lineno}",
                f"the line has {len(fields)} fields, the header has {len(cells)}",
                _FIX_EXPORT,
            )
        for cell, field in zip(cells, fields, strict=True):
            try:
                # float() takes '1_000'; numpy's parser does not, so neither do we.
                if "_" in field:
                    raise ValueError(field)
                float(field)
            except ValueError:
                return SourceError(
                    f"{src}, line {lineno}",
                    f"{cell!r} is not a number: {field!r}",
                    _FIX_EXPORT,
                )
    return SourceError(src, "the table body cannot be parsed as numbers", _FIX_EXPORT)


def _parse_slice(text: str, delimiter: str) -> np.ndarray:
    # comments=None: a '#' is a malformed value here, not something to drop silently.
    return np.loadtxt(
        io.StringIO(text), delimiter=delimiter, dtype=np.float64, ndmin=2, comments=None
    )


def _parse_body(body: _Body, delimiter: str, cells: list[str], src: str) -> np.ndarray:
    """The body as a (columns, rows) float64 array, values exactly as ``float()`` reads them.

    Column-major so that each column is a contiguous row of the result, without a copy.
    """
    ncols = len(cells)
    raw, start, end = body.raw, body.start, len(body.raw)
    # Upper bounds on the rows: every row but the last ends with a newline, and takes at
    # least 2 bytes per column ("0," ... "0\n"), so blank lines cannot inflate the table.
    rows_max = min(raw.count(b"\n", start) + 1, (end - start) // (2 * ncols) + 1)
    out = np.empty((ncols, rows_max), dtype=np.float64)
    view, filled, blank = memoryview(raw), 0, 0
    while start < end:
        stop = raw.find(b"\n", start + _SLICE_BYTES)
        stop = end if stop < 0 else stop + 1
        if stop - start > _SLICE_BYTES + MAX_LINE_BYTES:
            raise _long_line(body, start + _SLICE_BYTES, src)
        # The numbers are ASCII; latin-1 maps any other byte to a character that fails to
        # parse, so a stray byte becomes a line-numbered error, not a decode error.
        text = str(view[start:stop], "latin-1")
        start = stop
        if not text.strip("\r\n"):
            continue
        try:
            rows = _parse_slice(text, delimiter)
        except ValueError:
            raise _find_bad_line(body, delimiter, cells, src) from None
        if rows.shape[1] != ncols or filled + len(rows) > rows_max:
            raise _find_bad_line(body, delimiter, cells, src)
        out[:, filled : filled + len(rows)] = rows.T
        filled += len(rows)
        blank += text.count("\n") + (not text.endswith("\n")) - len(rows)
        if blank > MAX_BLANK_LINES:
            raise SourceError(src, f"the table has more than {MAX_BLANK_LINES:,} empty lines",
                              "remove the empty lines, or " + _FIX_EXPORT)
    return out[:, :filled]


def _long_line(body: _Body, pos: int, src: str) -> SourceError:
    """The line holding byte ``pos`` is longer than MAX_LINE_BYTES."""
    first = body.raw.rfind(b"\n", body.start, pos) + 1 or body.start
    lineno = body.raw.count(b"\n", 0, first) + 1
    return SourceError(
        f"{src}, line {lineno}",
        f"the line is longer than {MAX_LINE_BYTES:,} bytes (a ThunderSTORM row has ~200)",
        _FIX_EXPORT,
    )


def _row_error(body: _Body, row: int, src: str, problem: str) -> SourceError:
    lineno = _line_of_row(body, row)
    return SourceError(f"{src}, line {lineno}", problem, _FIX_EXPORT)


def _int_column(values: np.ndarray, cell: str, body: _Body, src: str) -> np.ndarray:
    ok = np.isfinite(values) & (np.abs(values) < _MAX_EXACT_INT)
    ok[ok] = values[ok] == np.floor(values[ok])
    if not ok.all():
        row = int(np.flatnonzero(~ok)[0])
        raise _row_error(body, row, src, f"{cell!r} must be an integer, got {float(values[row])!r}")
    return values.astype(np.int64)


def _check_values(
    columns: dict[str, np.ndarray], cells: dict[str, str], body: _Body, src: str
) -> None:
    bad = np.flatnonzero(columns["frame"] < 1)
    if bad.size:
        row = int(bad[0])
        raise _row_error(
            body, row, src, f"frame {columns['frame'][row]} < 1 (ThunderSTORM frames start at 1)"
        )
    for name in ("x", "y"):
        bad = np.flatnonzero(~np.isfinite(columns[name]))
        if bad.size:
            row = int(bad[0])
            raise _row_error(body, row, src, f"{cells[name]!r} is {float(columns[name][row])!r}")
    ids = columns["id"]
    order = np.argsort(ids, kind="stable")
    dup = np.flatnonzero(ids[order][1:] == ids[order][:-1])
    if dup.size:
        first, second = int(order[dup[0]]), int(order[dup[0] + 1])
        raise SourceError(
            src,
            f"id {ids[first]} occurs twice (lines {_line_of_row(body, first)} and "
            f"{_line_of_row(body, second)}); "
            "ids must be unique",
            "remove the duplicate rows, or export the table again from ThunderSTORM",
        )


# --- public -----------------------------------------------------------------------------


def _read_source(source: str | os.PathLike[str] | IO, name: str | None) -> tuple[bytes, str]:
    if isinstance(source, (str, os.PathLike)):
        return Path(source).read_bytes(), name or str(source)
    raw = source.read()
    src = name or str(getattr(source, "name", "<stream>"))
    return (raw.encode("utf-8") if isinstance(raw, str) else bytes(raw)), src


def _decode_header(line: bytes, src: str) -> str:
    line = line.removeprefix(b"\xef\xbb\xbf").rstrip(b"\r")
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        # ThunderSTORM (Java) writes in the platform charset; only header units such as
        # 'µm' can be non-ASCII, and every byte is a valid latin-1 character.
        log.debug("%s: header is not UTF-8, reading it as latin-1", src)
        return line.decode("latin-1")


def read_thunderstorm(
    path_or_fileobj: str | os.PathLike[str] | IO, *, name: str | None = None
) -> LocTable:
    """Read a ThunderSTORM CSV (or tab-separated .xls) export into a :class:`LocTable`.

    ``path_or_fileobj`` is a path or an open file (binary or text). ``name`` labels the
    source in errors (default: the path or the file object's name).
    """
    raw, src = _read_source(path_or_fileobj, name)
    cut = raw.find(b"\n", 0, MAX_LINE_BYTES + 1)
    cut = min(len(raw), MAX_LINE_BYTES + 1) if cut < 0 else cut
    if cut > MAX_LINE_BYTES:
        raise SourceError(f"{src}, line 1", f"the header line is longer than {MAX_LINE_BYTES:,} "
                          "bytes (ThunderSTORM's has ~150)", _FIX_EXPORT)
    # The body stays inside the file's bytes (no copy of a 100 MB string).
    header, body = _decode_header(raw[:cut], src), _Body(raw, cut + 1)
    if not header.strip():
        raise SourceError(src, "the file is empty (no header line)", _FIX_EXPORT)
    delimiter = _sniff_delimiter(header)
    names, units, cells = _parse_header(header, delimiter, src)
    _check_columns(names, units, cells, src)
    data = _parse_body(body, delimiter, cells, src)
    columns: dict[str, np.ndarray] = {}
    for col, cell, values in zip(names, cells, data, strict=True):
        columns[col] = _int_column(values, cell, body, src) if col in INT_COLUMNS else values
    _check_values(columns, dict(zip(names, cells, strict=True)), body, src)
    log.debug("%s: %d localisations, columns %s", src, data.shape[1], names)
    return LocTable(columns, dict(zip(names, units, strict=True)), cells)


def _format_column(values: np.ndarray, is_int: bool) -> list[str]:
    if is_int:
        return list(map(str, values.tolist()))
    # repr() is the shortest text that float() reads back to the same double: exact round trip.
    out = list(map(repr, values.tolist()))
    for i in np.flatnonzero(~np.isfinite(values)).tolist():
        v = values[i]
        out[i] = "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
    return out


def write_thunderstorm(
    table: LocTable,
    path: str | os.PathLike[str] | IO[str],
    *,
    uncertainty_name: str = "uncertainty_xy",
    chi2: bool = True,
    delimiter: str = ",",
    newline: str = "\r\n",
) -> None:
    """Write ``table`` the way ThunderSTORM does: quoted ``"name [unit]"`` header, plain numbers.

    ``uncertainty_name`` picks the header variant (``uncertainty_xy`` or ``uncertainty``);
    ``chi2=False`` drops that column; ``delimiter="\\t"`` gives the ".xls" export. The
    default CRLF line ends match the real exports. Reading the file back gives the same
    values bit for bit (NaN aside, which reads back as NaN).
    """
    if uncertainty_name not in ("uncertainty_xy", "uncertainty"):
        raise ValueError(f"unknown uncertainty_name {uncertainty_name!r}")
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise ValueError(f"table lacks required columns {missing}")
    names = [n for n in table.columns if chi2 or n != "chi2"]
    header_names = [uncertainty_name if n == "uncertainty" else n for n in names]
    buf = io.StringIO()
    csv.writer(buf, delimiter=delimiter, quoting=csv.QUOTE_ALL, lineterminator=newline).writerow(
        [_header_cell(h, table.units.get(n, "")) for h, n in zip(header_names, names, strict=True)]
    )
    arrays = [np.asarray(table.columns[n]) for n in names]
    text_cols = [_format_column(a, a.dtype.kind in "iub") for a in arrays]
    rows = (delimiter.join(fields) for fields in zip(*text_cols, strict=True))
    body = newline.join(rows)
    content = buf.getvalue() + body + (newline if len(table) else "")
    if isinstance(path, (str, os.PathLike)):
        with open(path, "w", encoding="utf-8", newline="") as fh:
            fh.write(content)
    else:
        path.write(content)
