"""Resume JSON Lines: the one-job-per-year rules, education, quarantine, and round trip."""

import json

import pyarrow as pa
import pytest

from data_shards.readers import ResumeOptions, read
from data_shards.readers.common import RecordError
from data_shards.readers.resume_jsonl import resume_to_record
from data_shards.synth.generate import simulate
from data_shards.synth.presets import PRESETS
from data_shards.writers import write_resume_jsonl


def convert(record, as_of=None):
    return resume_to_record(record, ResumeOptions(as_of=as_of))


def test_longest_held_job_wins_each_year():
    r = convert({"jobs": [{"code": "A", "start": "2010-01", "end": "2012-04"},
                          {"code": "B", "start": "2012-05", "end": "2013-02"}]})  # fmt: skip
    # 2012: A 4 months, B 8 months -> B. 2013: only B.
    assert r["years"] == [2010, 2011, 2012, 2013] and r["jobs"] == ["A", "A", "B", "B"]


def test_ties_go_to_the_newer_job_then_the_smaller_code():
    r = convert({"jobs": [{"code": "A", "start": "2010-01", "end": "2010-06"},
                          {"code": "B", "start": "2010-07", "end": "2010-12"}]})  # fmt: skip
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
    r = convert({
        "jobs": [{"code": "A", "start": "2008", "end": "2013"}],
        "education": [{"degree": "Bachelors", "end": "2009"}, {"degree": "high school", "end": "2005"},
                      {"degree": "MBA", "end": "2012-05"}, {"degree": "PhD", "end": None}],
    })  # fmt: skip
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
            row["years"], row["jobs"], row["education"], row["location"], row["birth_year"])  # fmt: skip


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
    r = convert({
        "jobs": [{"code": "Z", "start": "2010", "end": "2012"}, {"code": "A", "start": "2010", "end": "2015"}],
        "education": [{"degree": "bachelors", "end": "Present"}],
    })  # fmt: skip
    assert r["jobs"][0] == "A"  # same months, same start: the smaller code
    assert set(r["education"]) == {"less_than_high_school"}


def test_deeply_nested_line_is_quarantined(tmp_path):
    path = tmp_path / "deep.jsonl"
    path.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    result = read(str(path), "resume-jsonl")
    assert result.report.people_quarantined == 1
    assert result.quarantine.entries[0].reason.startswith("invalid JSON")
