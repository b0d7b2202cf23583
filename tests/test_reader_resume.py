"""Resume JSON Lines: the one-job-per-year rules, education, quarantine, and round trip."""

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from data_shards.errors import StructuralError
from data_shards.readers import ResumeOptions, read
from data_shards.readers.common import RecordError, concat_results
from data_shards.readers.resume_jsonl import plan_resume_jsonl, read_resume_block, resume_to_record
from data_shards.synth.generate import simulate
from data_shards.synth.presets import PRESETS
from data_shards.writers import write_resume_jsonl


def convert(record, as_of=None):
    return resume_to_record(record, ResumeOptions(as_of=as_of))


def test_longest_held_job_wins_each_year():
    r = convert(
        {
            "jobs": [
                {"code": "A", "start": "2010-01", "end": "2012-04"},
                {"code": "B", "start": "2012-05", "end": "2013-02"},
            ]
        }
    )
    # 2012: A 4 months, B 8 months -> B. 2013: only B.
    assert r["years"] == [2010, 2011, 2012, 2013] and r["jobs"] == ["A", "A", "B", "B"]


def test_ties_go_to_the_newer_job_then_the_smaller_code():
    r = convert(
        {
            "jobs": [
                {"code": "A", "start": "2010-01", "end": "2010-06"},
                {"code": "B", "start": "2010-07", "end": "2010-12"},
            ]
        }
    )
    assert r["jobs"] == ["B"]
    r = convert(
        {
            "jobs": [
                {"code": "Z", "start": "2010", "end": "2010"},
                {"code": "Y", "start": "2010", "end": "2010"},
            ]
        }
    )
    assert r["jobs"] == ["Y"]


def test_gaps_are_unobserved_and_open_jobs_close_at_as_of():
    r = convert(
        {
            "jobs": [
                {"code": "A", "start": "2001", "end": "2002"},
                {"code": "B", "start": "2005-03", "end": None},
            ]
        },
        as_of=2007,
    )
    assert r["years"] == [2001, 2002, 2005, 2006, 2007]
    r = convert(
        {
            "jobs": [
                {"code": "A", "start": "2001", "end": "2002"},
                {"code": "B", "start": "2004", "end": "present"},
            ]
        }
    )
    assert r["years"][-1] == 2004  # default as-of: the latest year the resume mentions
    r = convert(
        {
            "jobs": [
                {"code": "A", "start": "2001", "end": None},
                {"code": "B", "start": "2030", "end": None},
            ]
        },
        as_of=2003,
    )
    assert r["jobs"] == ["A", "A", "A"]  # a job starting after the as-of year is not yet held


def test_education_is_highest_degree_completed_by_each_year():
    r = convert(
        {
            "jobs": [{"code": "A", "start": "2008", "end": "2013"}],
            "education": [
                {"degree": "Bachelors", "end": "2009"},
                {"degree": "high school", "end": "2005"},
                {"degree": "MBA", "end": "2012-05"},
                {"degree": "PhD", "end": None},
            ],
        }
    )
    assert r["education"] == [
        "high_school",
        "bachelors",
        "bachelors",
        "bachelors",
        "graduate",
        "graduate",
    ]


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({"jobs": []}, "empty sequence"),
        ({"jobs": [{"code": "A", "start": "20x1"}]}, "unparseable job 0 start date"),
        ({"jobs": [{"code": "A", "start": "2001-13", "end": "2002"}]}, "month 13"),
        ({"jobs": [{"code": "A", "start": "2005", "end": "2001"}]}, "ends before it starts"),
        ({"jobs": [{"start": "2005", "end": "2006"}]}, "has no code"),
        (
            {
                "jobs": [{"code": "A", "start": "2005", "end": "2006"}],
                "education": [{"degree": "wizard", "end": "2001"}],
            },
            "unrecognised degree",
        ),
        (
            {"jobs": [{"code": "A", "start": "2005", "end": "2006"}], "location": {"state": "CA"}},
            "unknown location value type",
        ),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_malformed_resumes_raise_record_errors(record, reason):
    with pytest.raises(RecordError, match=reason):
        convert(record)


def test_bad_lines_are_quarantined_with_line_numbers(store):
    import fsspec

    lines = [
        json.dumps(
            {"id": "ok", "jobs": [{"code": "A", "start": "2001", "end": "2003"}], "location": "CA"}
        ),
        "{not json",
        json.dumps({"id": "bad-date", "jobs": [{"code": "A", "start": "2001-99", "end": "2003"}]}),
        "",
        json.dumps({"id": "ok", "jobs": [{"code": "B", "start": "2001", "end": "2003"}]}),
        json.dumps(
            {
                "id": "ok2",
                "jobs": [{"code": "B", "start": "2001", "end": None}],
                "birth_year": "1980",
            }
        ),
    ]
    url = store.url("resumes.jsonl")
    fs, path = fsspec.core.url_to_fs(url, **(store.storage_options or {}))
    fs.pipe_file(path, ("\n".join(lines) + "\n").encode())
    result = read(url, "resume-jsonl", storage_options=store.storage_options)
    r = result.report
    assert (r.people_read, r.people_accepted, r.people_quarantined) == (5, 2, 3)
    reasons = {e.source.rsplit(":", 1)[1]: e.reason for e in result.quarantine}
    assert reasons["2"].startswith("invalid JSON")
    assert "unparseable" in reasons["3"]
    assert reasons["5"] == "duplicate person id: 'ok'"
    rows = result.table.to_pylist()
    assert (
        rows[0]["location"] == "CA" and rows[1]["birth_year"] == 1980 and rows[1]["years"] == [2001]
    )


def test_round_trip_from_simulated_records(tmp_path):
    table = pa.Table.from_batches(list(simulate(PRESETS["resumes"], 500, seed=5)))
    write_resume_jsonl(table, str(tmp_path / "r.jsonl"))
    back = read(str(tmp_path / "r.jsonl"), "resume-jsonl")
    assert back.report.people_accepted == 500
    got = {r["person_id"]: r for r in back.table.to_pylist()}
    for row in table.to_pylist():
        b = got[row["person_id"]]
        assert (b["years"], b["jobs"], b["education"], b["location"], b["birth_year"]) == (
            row["years"],
            row["jobs"],
            row["education"],
            row["location"],
            row["birth_year"],
        )


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (
            {"jobs": [{"code": "A", "start": "2001", "end": "2002"}], "education": 5},
            "education must be a list",
        ),
        ({"jobs": {"code": "A"}}, "jobs must be a list"),
        ({"jobs": [{"code": "A", "start": "0001", "end": "0002"}]}, "out of range"),
        (
            {"jobs": [{"code": "A", "start": "2001", "end": "2002"}], "birth_year": 19999},
            "birth_year out of range",
        ),
    ],
)
def test_more_malformed_resumes(record, reason):
    with pytest.raises(RecordError, match=reason):
        convert(record)


def test_open_education_and_tie_break_by_code_not_end():
    r = convert(
        {
            "jobs": [
                {"code": "Z", "start": "2010", "end": "2012"},
                {"code": "A", "start": "2010", "end": "2015"},
            ],
            "education": [{"degree": "bachelors", "end": "Present"}],
        }
    )
    assert r["jobs"][0] == "A"  # same months, same start: the smaller code
    assert set(r["education"]) == {"less_than_high_school"}


def test_deeply_nested_line_is_quarantined(tmp_path):
    path = tmp_path / "deep.jsonl"
    path.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    result = read(str(path), "resume-jsonl")
    assert result.report.people_quarantined == 1
    assert result.quarantine.entries[0].reason.startswith("invalid JSON")


CAREER = str(Path(sys.executable).with_name("career"))


def job(code="A", start="2001", end="2002"):
    return {"code": code, "start": start, "end": end}


def write_jsonl(path, lines):
    """`lines`: JSON-able objects, or bytes written as they are (one line each)."""
    data = b"".join((x if isinstance(x, bytes) else json.dumps(x).encode()) + b"\n" for x in lines)
    path.write_bytes(data)
    return str(path)


def read_in_blocks(url, lines_per_block, options=None):
    """The sharding job's path: blocks planned and read one by one, then combined."""
    blocks = plan_resume_jsonl(url, lines_per_block)
    results = [read_resume_block(url, b, options or ResumeOptions()) for b in blocks]
    return concat_results(results, url)


def reasons_by_line(result):
    return {int(e.source.rsplit(":", 1)[1]): e.reason for e in result.quarantine}


def test_undecodable_line_is_quarantined_with_its_line(tmp_path):
    url = write_jsonl(
        tmp_path / "r.jsonl",
        [
            {"id": "a", "jobs": [job()]},
            b'{"id": "b\xff", "jobs": []}',
            {"id": "c", "jobs": [job()]},
        ],
    )
    for result in (read(url, "resume-jsonl"), read_in_blocks(url, 1)):
        r = result.report
        assert (r.people_read, r.people_accepted, r.people_quarantined) == (3, 2, 1)
        (entry,) = result.quarantine
        assert entry.source == f"{url}:2" and "not UTF-8" in entry.reason
        assert "\\xff" in entry.record


def test_number_python_refuses_is_quarantined_not_fatal(tmp_path):
    huge = '{"id": ' + "1" * 5000 + ', "jobs": []}'
    url = write_jsonl(tmp_path / "r.jsonl", [huge.encode(), {"id": "a", "jobs": [job()]}])
    result = read(url, "resume-jsonl")
    assert result.report.people_accepted == 1
    assert reasons_by_line(result)[1].startswith("invalid JSON: Exceeds the limit")


def test_impossible_dates_are_quarantined_and_real_ones_accepted():
    for bad in (
        "2020-02-30",
        "2020-01-45",
        "2021-02-29",
        "2020-04-31",
        "2020-00",
        "2020--5",
        "2020-01-01T00",
        "2020-1-",
    ):
        with pytest.raises(RecordError, match="unparseable job 0 start date"):
            convert({"jobs": [job(start=bad, end="2021")]})
        with pytest.raises(RecordError, match="unparseable education 0 end date"):
            convert({"jobs": [job()], "education": [{"degree": "ba", "end": bad}]})
    for good, year in (
        ("2020", 2020),
        ("2020-06", 2020),
        ("2020-02-29", 2020),
        ("2019-12-31", 2019),
    ):
        assert convert({"jobs": [job(start=good, end="2021")]})["years"][0] == year


def test_person_ids_must_be_strings_or_integers(tmp_path):
    ids = [True, 1.5, {"a": 1}, [1], None, "  ", 42, "  p7 "]
    lines = [{"id": person_id, "jobs": [job()]} for person_id in ids]
    url = write_jsonl(tmp_path / "r.jsonl", [*lines, {"jobs": [job()]}])
    result = read(url, "resume-jsonl")
    reasons = reasons_by_line(result)
    assert sorted(reasons) == [1, 2, 3, 4, 5, 6]
    assert reasons[1] == "unusable person id (boolean): true"
    assert reasons[5] == "unusable person id (null): null"
    assert reasons[6] == 'unusable person id (empty string): "  "'
    assert [r["person_id"] for r in result.table.to_pylist()] == ["42", "p7", "line-000000009"]


def test_control_characters_in_codes_and_labels_are_quarantined(tmp_path):
    url = write_jsonl(
        tmp_path / "r.jsonl",
        [
            {"id": "a", "jobs": [job(code="A\x00")]},
            {"id": "b", "jobs": [job()], "location": "C\x1bA"},
            {"id": "c", "jobs": [job()], "education": [{"degree": "bachelors\x00", "end": "2001"}]},
            {"id": "d\x07", "jobs": [job()]},
            {"id": "e", "jobs": [job()], "gender": "f\x85"},
            {"id": "f", "jobs": [job(code="A")], "location": "CA"},
        ],
    )
    result = read(url, "resume-jsonl")
    reasons = reasons_by_line(result)
    assert sorted(reasons) == [1, 2, 3, 4, 5]
    assert all("control character" in reason for reason in reasons.values())
    assert [r["person_id"] for r in result.table.to_pylist()] == ["f"]


def test_bom_is_stripped_only_at_file_start(tmp_path):
    bom = "\ufeff".encode()
    url = write_jsonl(
        tmp_path / "r.jsonl",
        [
            bom + json.dumps({"id": "a", "jobs": [job()]}).encode(),
            bom + json.dumps({"id": "b", "jobs": [job()]}).encode(),
        ],
    )
    for result in (read(url, "resume-jsonl"), read_in_blocks(url, 1)):
        assert [r["person_id"] for r in result.table.to_pylist()] == ["a"]
        assert reasons_by_line(result) == {
            2: "invalid JSON: Unexpected UTF-8 BOM (decode using utf-8-sig)"
        }


@pytest.mark.parametrize(
    "bad", [100000000, -5, 3000, 1849, 2101, True, "soon", "2020-13", "2020-02-30", "20-01"]
)
def test_as_of_is_validated_when_options_are_built(bad):
    with pytest.raises(ValueError, match=r"as_of \(--as-of\) must be a year 1850-2100"):
        ResumeOptions(as_of=bad)


def test_as_of_accepts_years_and_dates_in_the_record_year_range():
    assert ResumeOptions(as_of="2007").as_of == 2007  # what the command line passes
    assert [ResumeOptions(as_of=v).as_of for v in (1850, 2100, " 2020-6 ", "2020-02-29")] == [
        1850,
        2100,
        "2020-06",
        "2020-02-29",
    ]
    record = {"jobs": [job("A", "2006-01", "2007-08"), job("B", "2007-03", None)]}
    assert convert(record, as_of=2007)["jobs"] == ["A", "B"]  # 2007: A 8 months, B 10
    assert convert(record, as_of="2007-05")["jobs"] == ["A", "A"]  # A Jan-May, B Mar-May
    assert convert(record, as_of="2007-02-15")["jobs"] == ["A", "A"]  # B starts after
    open_ended = {"jobs": [job("A", "2006-01", None)]}
    assert convert(open_ended, as_of="2008-01")["years"] == [2006, 2007, 2008]


def test_cli_refuses_a_bad_as_of_at_once(tmp_path):
    url = write_jsonl(tmp_path / "x.jsonl", [{"id": "a", "jobs": [job(end=None)]}])
    proc = subprocess.run(
        [CAREER, "inspect", "--input", url, "--format", "resume-jsonl", "--as-of", "100000000"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "as_of (--as-of) must be a year 1850-2100" in proc.stderr and "100000000" in proc.stderr


def test_input_messages_say_what_is_wrong(tmp_path):
    with pytest.raises(StructuralError, match="does not exist"):
        read(str(tmp_path / "nope.jsonl"), "resume-jsonl")
    with pytest.raises(
        StructuralError, match="is a folder.*resume-jsonl expects one JSON Lines file"
    ):
        read(str(tmp_path), "resume-jsonl")
    (tmp_path / "empty.jsonl").write_bytes(b"")
    with pytest.raises(StructuralError, match="empty"):
        read(str(tmp_path / "empty.jsonl"), "resume-jsonl")
