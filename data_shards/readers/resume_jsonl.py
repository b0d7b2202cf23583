"""Reader for resumes as JSON Lines, one person per line, converted to one job per calendar year.

    {"id": "p1", "jobs": [{"code": "15-1252", "start": "2012-06", "end": "2016"},
                          {"code": "11-3021", "start": "2016-07", "end": null}],
     "education": [{"degree": "bachelors", "end": "2012"}],
     "location": "CA", "gender": null, "ethnicity": null, "birth_year": 1990}

Dates are `YYYY` or `YYYY-MM` (a bare start year means January, a bare end year December); a job
with no end (null, missing, "present") is open and closed at the as-of year (`as_of`, else the
latest year the record mentions). As in the paper, each calendar year takes the job held the most
months that year; ties go to the job that started later (the newer job), then to the smaller code.
Years with no job are not observed. Education per year is the highest degree completed by the end
of that year (`less_than_high_school` before any).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from data_shards import storage
from data_shards.errors import StructuralError
from data_shards.quarantine import Quarantine, ReadReport
from data_shards.readers.common import (
    ReadResult,
    RecordBuilder,
    RecordError,
    check_year_value,
    check_years,
    concat_results,
    parse_int,
    static_text,
)
from data_shards.readers.lines import index_lines, read_line_range

_DATE = re.compile(r"^\s*(\d{4})(?:-(\d{1,2}))?(?:-\d{1,2})?\s*$")
_OPEN = (None, "", "present", "current", "now")
#: Degree spellings -> (rank, canonical name). The canonical names are the simulator's levels.
DEGREES = {
    "less_than_high_school": (0, "less_than_high_school"),
    "high_school": (1, "high_school"), "high_school_diploma": (1, "high_school"),
    "hs": (1, "high_school"), "ged": (1, "high_school"),
    "some_college": (2, "some_college"), "associate": (2, "some_college"),
    "associates": (2, "some_college"), "certificate": (2, "some_college"),
    "bachelors": (3, "bachelors"), "bachelor": (3, "bachelors"), "ba": (3, "bachelors"),
    "bs": (3, "bachelors"),
    "graduate": (4, "graduate"), "masters": (4, "graduate"), "master": (4, "graduate"),
    "mba": (4, "graduate"), "ms": (4, "graduate"), "ma": (4, "graduate"), "jd": (4, "graduate"),
    "md": (4, "graduate"), "phd": (4, "graduate"), "doctorate": (4, "graduate"),
}  # fmt: skip


@dataclass(frozen=True)
class ResumeOptions:
    as_of: int | None = field(
        default=None,
        metadata={
            "help": "year that closes open-ended jobs (default: the latest year each resume mentions)",
            "metavar": "YEAR",
        },
    )


def _month_index(value: Any, *, is_end: bool, what: str) -> int:
    """Months since year 0 of a `YYYY` / `YYYY-MM` date (bare years: Jan for starts, Dec for ends)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise RecordError(f"unparseable {what} date: {value!r}")
    match = _DATE.match(value)
    if not match:
        raise RecordError(f"unparseable {what} date: {value!r}")
    year = check_year_value(int(match.group(1)), f"{what} year")
    month = int(match.group(2)) if match.group(2) else (12 if is_end else 1)
    if not 1 <= month <= 12:
        raise RecordError(f"unparseable {what} date: {value!r} (month {month})")
    return year * 12 + (month - 1)


def _degree(name: Any) -> tuple[int, str]:
    if not isinstance(name, str):
        raise RecordError(f"unknown degree value type {type(name).__name__}: {name!r}")
    key = re.sub(r"[^a-z]+", "_", name.strip().lower()).strip("_")
    if key not in DEGREES:
        raise RecordError(f"unrecognised degree: {name!r} (known: {', '.join(sorted(DEGREES))})")
    return DEGREES[key]


def _mentioned_years(record: dict) -> list[int]:
    years = []
    items = [*_as_list(record.get("jobs"), "jobs"), *_as_list(record.get("education"), "education")]
    for item in items:
        for key in ("start", "end"):
            value = item.get(key) if isinstance(item, dict) else None
            match = _DATE.match(str(value)) if value not in _OPEN else None
            if match:
                years.append(int(match.group(1)))
    return years


def _as_list(value: Any, what: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise RecordError(f"{what} must be a list, got {type(value).__name__}")
    return value


def _is_open(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in _OPEN)


def resume_to_record(record: Any, options: ResumeOptions) -> dict[str, Any]:
    """One resume -> record fields (years, jobs, education, statics). Raises RecordError."""
    if not isinstance(record, dict):
        raise RecordError(f"a resume must be a JSON object, got {type(record).__name__}")
    jobs = _as_list(record.get("jobs"), "jobs")
    if not jobs:
        raise RecordError("empty sequence: no jobs")
    mentioned = _mentioned_years(record)
    as_of = options.as_of if options.as_of is not None else max(mentioned, default=None)
    spells = []
    for i, job in enumerate(jobs):
        if not isinstance(job, dict):
            raise RecordError(f"job {i} is not an object")
        code = static_text(job.get("code"), "job code")
        if code is None:
            raise RecordError(f"job {i} has no code")
        start = _month_index(job.get("start"), is_end=False, what=f"job {i} start")
        end_raw = job.get("end")
        is_open = _is_open(end_raw)
        if is_open and as_of is None:
            raise RecordError(f"job {i} is open-ended and no as-of year is known")
        end = (
            as_of * 12 + 11 if is_open else _month_index(end_raw, is_end=True, what=f"job {i} end")
        )
        if end < start and not is_open:
            raise RecordError(f"job {i} ends before it starts")
        if as_of is not None:
            if start // 12 > as_of:
                continue  # starts after the as-of year: not yet held
            end = min(end, as_of * 12 + 11)
        spells.append((start, end, code))
    if not spells:
        raise RecordError("empty sequence: every job starts after the as-of year")
    # Per year: most months, then the later start (the newer job), then the smaller code. Spells are
    # visited by (start, code) and only a strictly better (months, start) replaces the holder.
    best: dict[int, tuple[int, int, str]] = {}
    for start, end, code in sorted(spells, key=lambda spell: (spell[0], spell[2])):
        for year in range(start // 12, end // 12 + 1):
            months = min(end, year * 12 + 11) - max(start, year * 12) + 1
            if year not in best or (months, start) > best[year][:2]:
                best[year] = (months, start, code)
    years = sorted(best)
    check_years(years)
    fields: dict[str, Any] = {"years": years, "jobs": [best[y][2] for y in years]}

    if record.get("education") is not None:
        education = _as_list(record.get("education"), "education")
        done = []
        for i, item in enumerate(education):
            if not isinstance(item, dict):
                raise RecordError(f"education {i} is not an object")
            rank, name = _degree(item.get("degree"))
            if _is_open(item.get("end")):
                continue  # not completed
            done.append(
                (
                    _month_index(item.get("end"), is_end=True, what=f"education {i} end") // 12,
                    rank,
                    name,
                )
            )
        per_year = []
        for year in years:
            held = [(rank, name) for end, rank, name in done if end <= year]
            per_year.append(max(held)[1] if held else "less_than_high_school")
        fields["education"] = per_year
    for name in ("location", "gender", "ethnicity"):
        fields[name] = static_text(record.get(name), name)
    if record.get("birth_year") is not None:
        fields["birth_year"] = check_year_value(
            parse_int(record.get("birth_year"), "birth_year"), "birth_year"
        )
    return fields


def _person_id(record: Any, fallback: str) -> str:
    if (
        isinstance(record, dict)
        and isinstance(record.get("id"), str | int)
        and str(record["id"]).strip()
    ):
        return str(record["id"]).strip()
    return fallback


@dataclass(frozen=True)
class JsonlBlock:
    first_line: int
    start: int
    stop: int
    digest: str = ""  # sha256 of the whole file


def plan_resume_jsonl(url: str, lines_per_block: int, storage_options=None) -> list[JsonlBlock]:
    """Cut the file into blocks of lines (the file must exist and be readable)."""
    fs, path = storage.filesystem(url, storage_options)
    if not fs.exists(path) or fs.isdir(path):
        raise StructuralError("file not found", path=storage.redact(url))
    index = index_lines(url, lines_per_block, storage_options)
    return [JsonlBlock(first, start, stop, index.sha256) for first, start, stop in index.ranges()]


def read_resume_block(
    url: str, block: JsonlBlock, options: ResumeOptions, storage_options=None
) -> ReadResult:
    """Read and convert the resumes of one block; blank lines are not people."""
    shown = storage.redact(url)
    lines = read_line_range(url, block.start, block.stop, storage_options, block.first_line)
    quarantine = Quarantine()
    builder = RecordBuilder()
    seen: set[str] = set()
    people_read = 0
    for number, line in enumerate(lines, start=block.first_line):
        if not line.strip():
            continue
        people_read += 1
        source = f"{shown}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            quarantine.add(source, f"invalid JSON: {exc.msg}", record=line)
            continue
        except RecursionError:
            quarantine.add(source, "invalid JSON: nested too deeply", record=line)
            continue
        person_id = _person_id(record, f"line-{number:09d}")
        try:
            if person_id in seen:
                raise RecordError(f"duplicate person id: {person_id!r}")
            fields = resume_to_record(record, options)
        except RecordError as exc:
            quarantine.add(source, str(exc), person_id=person_id, record=line)
            continue
        seen.add(person_id)
        builder.add(person_id=person_id, **fields)
    report = ReadReport(shown, people_read, len(builder), len(quarantine))
    return ReadResult(builder.build(), quarantine, report)


def read_resume_jsonl(
    url: str, options: ResumeOptions | None = None, storage_options=None
) -> ReadResult:
    """Read a whole file in this process (the sharding job reads blocks in parallel)."""
    options = options or ResumeOptions()
    blocks = plan_resume_jsonl(url, 1 << 30, storage_options)
    results = [read_resume_block(url, b, options, storage_options) for b in blocks]
    return concat_results(results, storage.redact(url))
