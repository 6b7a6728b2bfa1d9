import csv
import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudmic.errors import SourceError
from cloudmic.formats.thunderstorm import LocTable, read_thunderstorm, write_thunderstorm
from realdata import COLICOORDS, real_path

REAL_HEADER = [
    "id", "frame", "x [nm]", "y [nm]", "sigma [nm]", "intensity [photon]", "offset [photon]",
    "bkgstd [photon]", "chi2", "uncertainty_xy [nm]",
]  # fmt: skip
CANONICAL = [
    "id", "frame", "x", "y", "sigma", "intensity", "offset", "bkgstd", "chi2", "uncertainty",
]  # fmt: skip
UNITS = {
    "id": "", "frame": "", "x": "nm", "y": "nm", "sigma": "nm", "intensity": "photon",
    "offset": "photon", "bkgstd": "photon", "chi2": "", "uncertainty": "nm",
}  # fmt: skip


def real_file(rel: str) -> Path:
    return real_path(COLICOORDS / rel)


def csv_module_values(path: Path) -> tuple[list[str], np.ndarray]:
    """The reference reading: Python's csv module and float(), cell by cell."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    return rows[0], np.array([[float(v) for v in row] for row in rows[1:]], dtype=np.float64)


def assert_matches_reference(table: LocTable, path: Path) -> None:
    header, ref = csv_module_values(path)
    assert table.source_header == header
    assert len(table) == ref.shape[0]
    for j, name in enumerate(table.columns):
        col = table.columns[name]
        if name in ("id", "frame"):
            assert col.dtype == np.int64
            assert np.array_equal(col, ref[:, j].astype(np.int64))
            assert np.array_equal(col.astype(np.float64), ref[:, j])
        else:
            assert col.dtype == np.float64
            assert np.array_equal(col, ref[:, j])  # exact, not approx


def test_real_colicoords_export():
    path = real_file("examples/data/06/03_storm.csv")
    table = read_thunderstorm(path)
    assert len(table) == 17_361
    assert list(table.columns) == CANONICAL
    assert table.units == UNITS
    assert table.source_header == REAL_HEADER
    assert (table["frame"].min(), table["frame"].max()) == (1, 1850)
    ids = table["id"]
    assert ids.max() == 17_365 and len(np.unique(ids)) == 17_361  # gaps kept, not renumbered
    assert not np.array_equal(ids, np.arange(1, 17_362))
    assert_matches_reference(table, path)


def test_real_colicoords_test_table_from_file_object():
    path = real_file("test/test_data/ds3/storm_table.csv")
    with open(path, "rb") as fh:
        table = read_thunderstorm(fh)
    assert len(table) == 48
    assert set(table.columns) == set(CANONICAL)
    assert table.units == UNITS
    assert (table["frame"].min(), table["frame"].max()) == (1, 4)
    assert_matches_reference(table, path)


def test_real_table_tab_separated_xls(tmp_path):
    path = real_file("test/test_data/ds3/storm_table.csv")
    xls = tmp_path / "storm_table.xls"
    xls.write_text(path.read_text().replace(",", "\t"))
    a, b = read_thunderstorm(path), read_thunderstorm(xls)
    assert a.source_header == b.source_header and a.units == b.units
    for name in a.columns:
        assert np.array_equal(a[name], b[name])


VARIANT_2D = (
    '"id","frame","x [nm]","y [nm]","sigma [nm]","intensity [photon]","offset [photon]",'
    '"bkgstd [photon]","uncertainty [nm]"\n'
    "1,1,100.5,200.25,120.0,1500.0,10.0,2.5,8.1\n"
    "3,2,0.0,33279.999,130.0,900.0,11.0,2.0,12.4\n"
)


def test_uncertainty_without_chi2_variant():
    table = read_thunderstorm(io.StringIO(VARIANT_2D), name="SR_locs.csv")
    assert list(table.columns) == [
        "id", "frame", "x", "y", "sigma", "intensity", "offset", "bkgstd", "uncertainty",
    ]  # fmt: skip
    assert table.units["uncertainty"] == "nm" and "chi2" not in table.columns
    assert table["uncertainty"].tolist() == [8.1, 12.4]
    assert table["id"].tolist() == [1, 3]


def test_3d_variant_and_unknown_columns():
    text = (
        '"id","frame","x [nm]","y [nm]","z [nm]","sigma1 [nm]","sigma2 [nm]",'
        '"intensity [photon]","offset [photon]","bkgstd [photon]","chi2",'
        '"uncertainty_xy [nm]","uncertainty_z [nm]","detections"\r\n'
        "1,1,10.0,20.0,-350.5,110.0,140.0,800.0,5.0,1.5,3.2,7.5,25.0,2\r\n"
    )
    table = read_thunderstorm(io.StringIO(text), name="3d.csv")
    assert list(table.columns) == [
        "id", "frame", "x", "y", "z", "sigma1", "sigma2", "intensity", "offset", "bkgstd",
        "chi2", "uncertainty", "uncertainty_z", "detections",
    ]  # fmt: skip
    assert table.units["z"] == "nm" and table.units["uncertainty_z"] == "nm"
    assert table.units["sigma1"] == "nm" and table.units["detections"] == ""
    assert table["z"].tolist() == [-350.5] and table["detections"].tolist() == [2.0]


def test_header_only_is_an_empty_table():
    table = read_thunderstorm(io.StringIO(",".join(f'"{c}"' for c in REAL_HEADER) + "\r\n"))
    assert len(table) == 0 and list(table.columns) == CANONICAL
    assert table["id"].dtype == np.int64 and table["x"].dtype == np.float64


def test_utf8_bom_and_blank_trailing_lines():
    raw = ("\ufeff" + VARIANT_2D + "\n\n").encode("utf-8")
    table = read_thunderstorm(io.BytesIO(raw), name="bom.csv")
    assert len(table) == 2 and "id" in table.columns


def test_missing_x_lists_the_columns_found():
    text = '"id","frame","y [nm]","intensity [photon]"\n1,1,2.0,3.0\n'
    with pytest.raises(SourceError) as e:
        read_thunderstorm(io.StringIO(text), name="cell1/SR_locs.csv")
    msg = str(e.value)
    assert "cell1/SR_locs.csv" in msg and "no column for x" in msg
    assert "'id', 'frame', 'y [nm]', 'intensity [photon]'" in msg


def test_pixel_units_are_refused_with_how_to_reexport():
    text = '"id","frame","x [px]","y [px]"\n1,1,2.0,3.0\n'
    with pytest.raises(SourceError) as e:
        read_thunderstorm(io.StringIO(text), name="px.csv")
    msg = str(e.value)
    assert "px.csv" in msg and "'x [px]'" in msg and "only exports with coordinates in nm" in msg
    assert "export again" in msg


@pytest.mark.parametrize(
    ("bad_row", "problem"),
    [
        ("5,2,1.0,2.0,3.0,4.0,5.0,6.0", "has 8 fields, the header has 9"),
        ("5,2,1.0,2.0,3.0,4.0,5.0,6.0,7.0,8.0", "has 10 fields, the header has 9"),
        ("5,2,1.0,abc,3.0,4.0,5.0,6.0,7.0", "'y [nm]' is not a number: 'abc'"),
        ("5,2,1.0,,3.0,4.0,5.0,6.0,7.0", "'y [nm]' is not a number: ''"),
        ("5,2,1_0,2.0,3.0,4.0,5.0,6.0,7.0", "'x [nm]' is not a number"),
        ("5,0,1.0,2.0,3.0,4.0,5.0,6.0,7.0", "frame 0 < 1"),
        ("5,2.5,1.0,2.0,3.0,4.0,5.0,6.0,7.0", "'frame' must be an integer"),
        ("5,2,nan,2.0,3.0,4.0,5.0,6.0,7.0", "'x [nm]' is nan"),
    ],
)
def test_malformed_row_names_file_and_line(bad_row, problem):
    # Line 1 header, lines 2-3 good, line 4 empty (skipped, but still counted), line 5 bad.
    text = VARIANT_2D + "\n" + bad_row + "\n"
    with pytest.raises(SourceError) as e:
        read_thunderstorm(io.StringIO(text), name="SR_locs.csv")
    msg = str(e.value)
    assert "SR_locs.csv, line 5" in msg and problem in msg, msg


def test_duplicate_ids_are_refused_with_both_lines():
    text = VARIANT_2D + "1,3,1.0,2.0,3.0,4.0,5.0,6.0,7.0\n"
    with pytest.raises(SourceError, match=r"id 1 occurs twice \(lines 2 and 4\)"):
        read_thunderstorm(io.StringIO(text), name="dup.csv")


def test_duplicate_column_names_are_refused():
    text = '"id","frame","x [nm]","y [nm]","uncertainty [nm]","uncertainty_xy [nm]"\n'
    with pytest.raises(SourceError, match="two columns for 'uncertainty'"):
        read_thunderstorm(io.StringIO(text), name="two.csv")


def test_writer_header_variants(tmp_path):
    table = read_thunderstorm(io.StringIO(VARIANT_2D))
    table = LocTable.from_columns(
        {**table.columns, "chi2": np.array([1.5, 2.5])}, units={"chi2": ""}
    )
    out = tmp_path / "a.csv"
    write_thunderstorm(table, out)
    first = out.read_bytes().split(b"\r\n")[0].decode()
    assert first == (
        '"id","frame","x [nm]","y [nm]","sigma [nm]","intensity [photon]","offset [photon]",'
        '"bkgstd [photon]","uncertainty_xy [nm]","chi2"'
    )
    write_thunderstorm(table, out, uncertainty_name="uncertainty", chi2=False)
    assert out.read_text().splitlines()[0] == VARIANT_2D.splitlines()[0]
    assert out.read_text().splitlines()[1:] == VARIANT_2D.splitlines()[1:]


def test_writer_reproduces_the_real_file_bytes(tmp_path):
    path = real_file("test/test_data/ds3/storm_table.csv")
    table = read_thunderstorm(path)
    out = tmp_path / "copy.csv"
    write_thunderstorm(table, out)
    # Same header and same values; the number text may differ (0 vs 0.0), values may not.
    again = read_thunderstorm(out)
    assert again.source_header == table.source_header
    for name in table.columns:
        assert np.array_equal(again[name], table[name])


finite = st.floats(allow_nan=False, allow_infinity=False)
anything = st.floats(allow_nan=True, allow_infinity=True)
row = st.tuples(st.integers(1, 10**6), finite, finite, anything, anything, anything)


@settings(max_examples=60, deadline=None)
@given(
    ids=st.lists(st.integers(-(2**53) + 1, 2**53 - 1), unique=True, max_size=30),
    rows=st.lists(row, min_size=30, max_size=30),
    delimiter=st.sampled_from([",", "\t"]),
    uncertainty_name=st.sampled_from(["uncertainty_xy", "uncertainty"]),
    chi2=st.booleans(),
)
def test_round_trip_is_exact(ids, rows, delimiter, uncertainty_name, chi2):
    rows = rows[: len(ids)]
    cols = list(zip(*rows, strict=True)) if rows else [[]] * 6
    table = LocTable.from_columns(
        {
            "id": ids,
            "frame": cols[0],
            "x": cols[1],
            "y": cols[2],
            "intensity": cols[3],
            "chi2": cols[4],
            "uncertainty": cols[5],
        }  # fmt: skip
    )
    buf = io.StringIO()
    write_thunderstorm(
        table, buf, uncertainty_name=uncertainty_name, chi2=chi2, delimiter=delimiter
    )
    back = read_thunderstorm(io.StringIO(buf.getvalue()), name="roundtrip")
    expected = [n for n in table.columns if chi2 or n != "chi2"]
    assert list(back.columns) == expected
    assert back.units == {n: table.units[n] for n in expected}
    for name in expected:
        a, b = table[name], back[name]
        assert a.dtype == b.dtype
        assert np.array_equal(a, b, equal_nan=True)
        if a.dtype == np.float64:  # -0.0 stays -0.0 (NaN's sign is not kept: it is NaN)
            keep = ~np.isnan(a)
            assert np.array_equal(np.signbit(a[keep]), np.signbit(b[keep]))


def test_slices_agree_with_one_pass_and_keep_line_numbers(monkeypatch):
    from cloudmic.formats import thunderstorm

    lines = [f"{i},{1 + i // 7},{i * 1.25},{i * 0.5}" for i in range(1, 400)]
    text = '"id","frame","x [nm]","y [nm]"\r\n' + "\r\n".join(lines[:200]) + "\r\n\r\n"
    text += "\r\n".join(lines[200:]) + "\r\n"
    whole = read_thunderstorm(io.StringIO(text))
    monkeypatch.setattr(thunderstorm, "_SLICE_BYTES", 64)  # many slices, blank line inside
    sliced = read_thunderstorm(io.StringIO(text))
    assert len(sliced) == len(whole) == 399
    for name in whole.columns:
        assert np.array_equal(sliced[name], whole[name])
    bad = text.replace("\r\n350,", "\r\n350,x", 1)
    with pytest.raises(SourceError, match=r"t.csv, line 352: 'frame' is not a number"):
        read_thunderstorm(io.StringIO(bad), name="t.csv")


# --- issue 14: bounded parsing --------------------------------------------------------------


def test_cr_inside_header_is_a_source_error_naming_the_file():
    raw = b'id,fr\rame,x [nm],y [nm]\n1,1,1,1\n'
    with pytest.raises(SourceError, match=r"locs\.csv: the header line cannot be read as CSV"):
        read_thunderstorm(io.BytesIO(raw), name="locs.csv")


def test_40000_columns_are_refused_at_once():
    import time

    cells = ['"id"', '"frame"', '"x [nm]"', '"y [nm]"'] + [f'"c{i}"' for i in range(40_000)]
    start = time.monotonic()
    with pytest.raises(SourceError, match="40,004 columns"):
        read_thunderstorm(io.BytesIO((",".join(cells) + "\n").encode()), name="locs.csv")
    assert time.monotonic() - start < 2


def test_many_columns_below_the_limit_parse_in_linear_time():
    import time

    cells = ['"id"', '"frame"', '"x [nm]"', '"y [nm]"'] + [f'"c{i}"' for i in range(990)]
    raw = (",".join(cells) + "\n" + ",".join(["1"] * len(cells)) + "\n").encode()
    start = time.monotonic()
    table = read_thunderstorm(io.BytesIO(raw), name="locs.csv")
    assert len(table) == 1 and len(table.columns) == 994
    assert time.monotonic() - start < 2


def test_blank_lines_do_not_size_the_table():
    # 200 columns + 3 MB of blank lines asked for 200 x 3,000,002 float64 (4.5 GiB); the
    # 30 MB case of the issue (45 GiB) runs under a memory cap in tests/fuzz/test_bombs.py.
    cells = ['"id"', '"frame"', '"x [nm]"', '"y [nm]"'] + [f'"c{i}"' for i in range(196)]
    raw = (",".join(cells) + "\n").encode() + b"\n" * 3_000_000 + b"1," * 199 + b"1\n"
    with pytest.raises(SourceError, match=r"locs\.csv: the table has more than 10,000 empty"):
        read_thunderstorm(io.BytesIO(raw), name="locs.csv")


def test_a_few_blank_lines_are_still_fine():
    raw = b'"id","frame","x [nm]","y [nm]"\r\n1,1,2.5,3\r\n\r\n\r\n2,1,4,5\r\n\r\n'
    table = read_thunderstorm(io.BytesIO(raw), name="locs.csv")
    assert table["id"].tolist() == [1, 2]


def test_overlong_line_is_refused_with_its_line_number():
    raw = b'"id","frame","x [nm]","y [nm]"\n1,1,1,1\n' + b"1" * 6_000_000 + b",1,1,1\n"
    with pytest.raises(SourceError, match=r"locs\.csv, line 3: the line is longer"):
        read_thunderstorm(io.BytesIO(raw), name="locs.csv")


def test_bad_value_is_still_named_by_line_after_blank_lines():
    raw = b'"id","frame","x [nm]","y [nm]"\n1,1,1,1\n\n\n2,1,x,1\n'
    with pytest.raises(SourceError, match=r"locs\.csv, line 5: .*'x'"):
        read_thunderstorm(io.BytesIO(raw), name="locs.csv")
