"""career-code folders: exact round trip (local and S3), structural errors, quarantine."""

import json
import logging

import fsspec
import pyarrow as pa
import pytest

from data_shards.errors import StructuralError
from data_shards.quarantine import write_quarantine
from data_shards.readers import read
from data_shards.readers.career_code import plan_career_code, read_career_code_block
from data_shards.readers.common import concat_results
from data_shards.splits import resolve_splits
from data_shards.synth.generate import simulate
from data_shards.synth.presets import PRESETS
from data_shards.writers import write_career_code


def write_files(store, folder, files):
    fs, root = fsspec.core.url_to_fs(store.url(folder), **(store.storage_options or {}))
    fs.makedirs(root, exist_ok=True)
    for name, text in files.items():
        with fs.open(f"{root}/{name}", "w") as handle:
            handle.write(text)
    return store.url(folder)


def by_person(table):
    return {row["person_id"]: row for row in table.to_pylist()}


def test_round_trip_is_exact(store):
    table = pa.Table.from_batches(list(simulate(PRESETS["nlsy79"], 300, seed=4)))
    url = store.url("nlsy79")
    write_career_code(table, url, storage_options=store.storage_options)
    result = read(url, "career-code", storage_options=store.storage_options)
    assert result.report.people_read == result.report.people_accepted == 300
    got = by_person(result.table)
    splits = dict(
        zip(table.column("person_id").to_pylist(), resolve_splits(table).to_pylist(), strict=True)
    )
    for row in table.to_pylist():
        back = got[row["person_id"]]
        for field in (
            "years",
            "jobs",
            "education",
            "location",
            "gender",
            "ethnicity",
            "birth_year",
            "weight",
            "oracle_logp",
        ):
            assert back[field] == row[field], field
        assert back["log_wage"] == row["log_wage"]
        assert back["split"] == splits[row["person_id"]]


def test_public_sample_layout(tmp_path):
    """The layout of the public code's sample-data: no ids, three splits, gender only in some."""
    files = {
        "train.job": "31-2021 31-2021 35-3011\n25-9044 23-1012\n",
        "train.year": "2001 2002 2003\n2010 2012\n",
        "train.education": "bachelors bachelors masters\nmasters doctorate\n",
        "train.location": "MO\nCA\n",
        "valid.job": "41-9041\n",
        "valid.year": "1999\n",
        "valid.education": "associates\n",
        "valid.location": "AL\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    result = read(str(tmp_path), "career-code")
    rows = result.table.to_pylist()
    assert [r["person_id"] for r in rows] == [
        "train-000000001",
        "train-000000002",
        "valid-000000001",
    ]
    assert rows[1]["years"] == [2010, 2012] and rows[1]["education"] == ["masters", "doctorate"]
    assert rows[2]["split"] == "valid" and rows[2]["location"] == "AL"


def test_line_count_mismatch_names_file_and_line(tmp_path):
    (tmp_path / "train.job").write_text("a b\nc\nd\n")
    (tmp_path / "train.year").write_text("2000 2001\n2002\n")
    with pytest.raises(StructuralError) as err:
        read(str(tmp_path), "career-code")
    assert "train.year:3" in str(err.value)


def test_optional_file_must_exist_for_every_split(tmp_path):
    for split in ("train", "valid"):
        (tmp_path / f"{split}.job").write_text("a\n")
        (tmp_path / f"{split}.year").write_text("2000\n")
    (tmp_path / "train.gender").write_text("female\n")
    with pytest.raises(StructuralError, match="valid.gender"):
        read(str(tmp_path), "career-code")


def test_missing_folder_and_missing_required_file(tmp_path):
    with pytest.raises(StructuralError, match="does not exist"):
        read(str(tmp_path / "nope"), "career-code")
    (tmp_path / "train.job").write_text("a\n")
    with pytest.raises(StructuralError, match="train.year"):
        read(str(tmp_path), "career-code")
    with pytest.raises(StructuralError, match="is a file, not a folder"):
        read(str(tmp_path / "train.job"), "career-code")


def test_malformed_people_are_quarantined_and_counted(store):
    url = write_files(
        store,
        "bad",
        {
            "train.job": "a b\nc d e\nf g\n\nh\ni j\n",
            "train.year": "2000 2001\n2000 2001\n2001 19x9\n\n1999\n2005 2003\n",
            "train.birth_year": "1970\n1970\n1970\n1970\nsoon\n1970\n",
        },
    )
    result = read(url, "career-code", storage_options=store.storage_options)
    report = result.report
    assert (report.people_read, report.people_accepted, report.people_quarantined) == (6, 1, 5)
    reasons = {e.source.rsplit(":", 1)[1]: e.reason for e in result.quarantine}
    assert "length mismatch: train.job:2 has 3 values, train.year:2 has 2" in reasons["2"]
    assert "unparseable year" in reasons["3"]
    assert "empty sequence" in reasons["4"]
    assert "unparseable birth_year" in reasons["5"]
    assert "not strictly increasing" in reasons["6"]
    out = store.url("quarantine.jsonl")
    assert write_quarantine(out, result.quarantine, store.storage_options) == 5
    fs, path = fsspec.core.url_to_fs(out, **(store.storage_options or {}))
    lines = [json.loads(x) for x in fs.cat_file(path).decode().splitlines()]
    assert {x["person_id"] for x in lines} == {f"train-00000000{i}" for i in (2, 3, 4, 5, 6)}
    assert all(x["source"].endswith(tuple("23456")) and x["record"] for x in lines)


def test_duplicate_ids_and_empty_files(tmp_path):
    (tmp_path / "train.job").write_text("a\nb\nc\n")
    (tmp_path / "train.year").write_text("2000\n2001\n1700\n")
    (tmp_path / "train.id").write_text("x\nx\ny\n")
    (tmp_path / "valid.job").write_text("")
    (tmp_path / "valid.year").write_text("")
    (tmp_path / "valid.id").write_text("")
    result = read(str(tmp_path), "career-code")
    assert (result.report.people_read, result.report.people_accepted) == (3, 1)
    reasons = sorted(e.reason for e in result.quarantine)
    assert reasons[0] == "duplicate person id: 'x'" and reasons[1].startswith("year out of range")


def write_bytes(folder, files):
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return str(folder)


def read_in_blocks(url, lines_per_block):
    """The sharding job's path: blocks planned and read one by one, then combined."""
    blocks = plan_career_code(url, lines_per_block)
    return concat_results([read_career_code_block(url, b) for b in blocks], url)


def test_undecodable_line_quarantines_that_person_only(tmp_path):
    url = write_bytes(
        tmp_path,
        {
            "train.job": b"a b\nc\nd\n",
            "train.year": b"2000 2001\n2002\n2003\n",
            "train.education": b"hs hs\nb\xffa\nphd\n",
        },
    )
    for result in (read(url, "career-code"), read_in_blocks(url, 1)):
        r = result.report
        assert (r.people_read, r.people_accepted, r.people_quarantined) == (3, 2, 1)
        (entry,) = result.quarantine
        assert entry.source == f"{tmp_path / 'train.education'}:2"
        assert "not UTF-8" in entry.reason and "0xff" in entry.reason
        assert entry.person_id == "train-000000002" and "\\xff" in entry.record
        assert [row["jobs"] for row in result.table.to_pylist()] == [["a", "b"], ["d"]]


def test_control_characters_in_codes_and_labels_are_quarantined(tmp_path):
    url = write_bytes(
        tmp_path,
        {
            "train.job": b"a\x00b c\nd\ne\nf\ng\r\n",
            "train.year": b"2000 2001\n2002\n2003\n2004\n2005\r\n",
            "train.education": b"hs hs\nb\x01\nb\nb\nb\r\n",
            "train.location": b"CA\nCA\nC\x1bA\nCA\nCA\r\n",
            "train.id": b"p1\np2\np3\np\x074\np5\r\n",
        },
    )
    result = read(url, "career-code")
    assert [row["person_id"] for row in result.table.to_pylist()] == ["p5"]  # CRLF is fine
    assert result.table.to_pylist()[0]["location"] == "CA"
    reasons = {e.source.rsplit("/", 1)[1]: e.reason for e in result.quarantine}
    assert sorted(reasons) == ["train.education:2", "train.id:4", "train.job:1", "train.location:3"]
    assert all("control character" in reason for reason in reasons.values())


def test_duplicate_ids_are_quarantined_with_file_and_line(tmp_path):
    url = write_bytes(
        tmp_path,
        {
            "train.job": b"a\nb\nc\n",
            "train.year": b"2000\n2001\n2002\n",
            "train.id": b"x\ny\nx\n",
            "valid.job": b"d\n",
            "valid.year": b"2003\n",
            "valid.id": b"y\n",
        },
    )
    result = read(url, "career-code")  # across splits too (the sharding job's plan finds those)
    entries = sorted((e.source, e.reason) for e in result.quarantine)
    assert entries == [
        (f"{tmp_path / 'train.id'}:3", "duplicate person id: 'x'"),
        (f"{tmp_path / 'valid.id'}:1", "duplicate person id: 'y'"),
    ]
    assert result.report.people_accepted == 2


def test_bom_is_stripped_at_the_start_of_every_field_file(tmp_path):
    bom = "\ufeff".encode()
    url = write_bytes(
        tmp_path,
        {
            "train.job": bom + b"270 271\n272\n",
            "train.year": bom + b"2000 2001\n2002\n",
            "train.location": bom + b"CA\nNY\n",
            "train.id": bom + b"p1\np2\n",
        },
    )
    for result in (read(url, "career-code"), read_in_blocks(url, 1)):
        assert result.report.people_quarantined == 0
        rows = result.table.to_pylist()
        assert [(r["person_id"], r["jobs"], r["years"], r["location"]) for r in rows] == [
            ("p1", ["270", "271"], [2000, 2001], "CA"),
            ("p2", ["272"], [2002], "NY"),
        ]


def test_extra_files_are_noted_once_and_warned_at_plan_time(tmp_path, caplog):
    url = write_bytes(
        tmp_path,
        {
            "train.job": b"a\nb\nc\n",
            "train.year": b"2000\n2001\n2002\n",
            "train.foo": b"x\n",
            "dev.job": b"d\n",
            "dev.year": b"2003\n",
        },
    )
    with caplog.at_level(logging.WARNING, logger="data_shards.readers.career_code"):
        result = read(url, "career-code")
    assert result.report.notes == {
        "ignored file (not a split/field): dev.job": 1,
        "ignored file (not a split/field): dev.year": 1,
        "ignored file (not a split/field): train.foo": 1,
    }
    assert "dev.job, dev.year, train.foo" in caplog.text
    assert result.report.people_accepted == 3
    assert read_in_blocks(url, 1).report.notes == {}  # per block: never counted once per block
