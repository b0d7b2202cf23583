"""Reader for resumes as JSON Lines, one person per line, converted to one job per calendar year.

    {"id": "p1", "jobs": [{"code": "15-1252", "start": "2012-06", "end": "2016"},
                          {"code": "11-3021", "start": "2016-07", "end": null}],
     "education": [{"degree": "bachelors", "end": "2012"}],
     "location": "CA", "gender": null, "ethnicity": null, "birth_year": 1990}

Dates are `YYYY`, `YYYY-MM` or `YYYY-MM-DD` naming a real calendar day (a bare start year means
January, a bare end year December; the day is checked, then dropped: careers are read by month).
A job with no end (null, missing, "present") is open and closed at the as-of date (`as_of`: a year
closes in December, a `YYYY-MM[-DD]` in that month; else the latest year the record mentions);
a job starting after the as-of date is not yet held. As in the paper, each calendar year takes the
job held the most months that year; ties go to the job that started later (the newer job), then to
the smaller code. Years with no job are not observed. Education per year is the highest degree
completed by the end of that year (`less_than_high_school` before any).

The id is a string or an integer (taken as its decimal text). A resume without an `"id"` key is
named by its line, `line-NNNNNNNNN` (as career-code folders without `.id` files are); any other id
(null, empty, a boolean, a float, an array or object) is quarantined, as is a line that is not
UTF-8 or not JSON, an impossible date, and a code or label holding a control character. A
byte-order mark at the start of the file is dropped. A compressed file (`people.jsonl.gz`, `.bz2`,
`.xz`, `.zst`) is read decompressed, as one block (`readers.compressed`).
"""

from __future__ import annotations

import calendar
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
    check_text,
    check_year_value,
    check_years,
    concat_results,
    decode_line,
    parse_int,
    static_text,
)
from data_shards.readers.compressed import lines_per_block_of
from data_shards.readers.lines import index_lines, read_line_bytes
from data_shards.schema import YEAR_RANGE

_DATE = re.compile(r"^\s*(\d{4})(?:-(\d{1,2})(?:-(\d{1,2}))?)?\s*$")
_OPEN = (None, "", "present", "current", "now")
#: Degree spellings -> (rank, canonical name). The canonical names are the simulator's levels.
DEGREES = {
    "less_than_high_school": (0, "less_than_high_school"),
    "high_school": (1, "high_school"),
    "high_school_diploma": (1, "high_school"),
    "hs": (1, "high_school"),
    "ged": (1, "high_school"),
    "some_college": (2, "some_college"),
    "associate": (2, "some_college"),
    "associates": (2, "some_college"),
    "certificate": (2, "some_college"),
    "bachelors": (3, "bachelors"),
    "bachelor": (3, "bachelors"),
    "ba": (3, "bachelors"),
    "bs": (3, "bachelors"),
    "graduate": (4, "graduate"),
    "masters": (4, "graduate"),
    "master": (4, "graduate"),
    "mba": (4, "graduate"),
    "ms": (4, "graduate"),
    "ma": (4, "graduate"),
    "jd": (4, "graduate"),
    "md": (4, "graduate"),
    "phd": (4, "graduate"),
    "doctorate": (4, "graduate"),
}


def _date_parts(text: str) -> tuple[int, int | None, int | None]:
    """(year, month, day) of a `YYYY` / `YYYY-MM` / `YYYY-MM-DD` text (absent parts None); a
    ValueError saying why when it is none of them or names no real day (month 13, 30 February)."""
    match = _DATE.match(text)
    if not match:
        raise ValueError("not YYYY, YYYY-MM or YYYY-MM-DD")
    year = int(match.group(1))
    month, day = (int(part) if part else None for part in match.groups()[1:])
    if month is not None and not 1 <= month <= 12:
        raise ValueError(f"month {month}")
    if month is not None and day is not None:  # the pattern has a day only after a month
        days = calendar.monthrange(year, month)[1]
        if not 1 <= day <= days:
            raise ValueError(f"day {day}: {year:04d}-{month:02d} has {days} days")
    return year, month, day


def _check_as_of(value: Any) -> int | str:
    """The as-of date as a year (int) or a canonical `YYYY-MM[-DD]`; else a ValueError saying what
    is accepted. Its years are the record years (`schema.YEAR_RANGE`): an open job is held up to
    the as-of year, so a later one would make years no record may hold (and a huge one would
    loop over them), and an earlier one would leave every resume without a job."""
    low, high = YEAR_RANGE
    detail = ""
    if not isinstance(value, bool) and isinstance(value, int | str):
        try:
            year, month, day = _date_parts(str(value))
            if low <= year <= high:
                if month is None:
                    return year
                return f"{year:04d}-{month:02d}" + (f"-{day:02d}" if day is not None else "")
        except ValueError as exc:
            detail = f" ({exc})"
    raise ValueError(
        f"as_of (--as-of) must be a year {low}-{high} or a date YYYY-MM / YYYY-MM-DD in those "
        f"years (the years a record may hold, data_shards.schema.YEAR_RANGE); got {value!r}{detail}"
    )


@dataclass(frozen=True)
class ResumeOptions:
    as_of: int | str | None = field(
        default=None,
        metadata={
            "help": "date that closes open-ended jobs: a year (its December) or YYYY-MM[-DD] (that "
            "month); jobs starting later are not yet held (default: the latest year each resume "
            "mentions)",
            "metavar": "DATE",
            "parse": str,  # checked, and a bare year made an int, below
        },
    )

    def __post_init__(self) -> None:
        """Refuse a bad as-of date when the options are built (the CLI: exit 2), not per record."""
        if self.as_of is not None:
            object.__setattr__(self, "as_of", _check_as_of(self.as_of))

    @property
    def as_of_month(self) -> int | None:
        """Months since year 0 of the as-of date's month (December of a bare year), or None."""
        if self.as_of is None:
            return None
        if isinstance(self.as_of, int):
            return self.as_of * 12 + 11
        year, month, _ = _date_parts(self.as_of)
        return year * 12 + (month or 12) - 1


def _month_index(value: Any, *, is_end: bool, what: str) -> int:
    """Months since year 0 of a `YYYY` / `YYYY-MM` / `YYYY-MM-DD` date (bare years: Jan for
    starts, Dec for ends)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise RecordError(f"unparseable {what} date: {value!r}")
    try:
        year, month, _ = _date_parts(value)
    except ValueError as exc:
        raise RecordError(f"unparseable {what} date: {value!r} ({exc})") from None
    year = check_year_value(year, f"{what} year")
    if month is None:
        month = 12 if is_end else 1
    return year * 12 + (month - 1)


def _text(value: Any, what: str) -> str | None:
    """A code or label (`static_text`), refusing control characters anywhere in it: checked
    before stripping, which would silently drop some of them (\\x1c-\\x1f, \\x85)."""
    if isinstance(value, str):
        check_text(value, what)
    return static_text(value, what)


def _degree(name: Any) -> tuple[int, str]:
    if not isinstance(name, str):
        raise RecordError(f"unknown degree value type {type(name).__name__}: {name!r}")
    check_text(name, "degree")
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
            try:
                years.append(_date_parts(str(value))[0])
            except ValueError:
                continue  # open, or bad: a bad date is quarantined where it is read
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
    as_of = options.as_of_month  # the last month held, as a month index
    if as_of is None and (mentioned := _mentioned_years(record)):
        as_of = max(mentioned) * 12 + 11
    spells = []
    for i, job in enumerate(jobs):
        if not isinstance(job, dict):
            raise RecordError(f"job {i} is not an object")
        code = _text(job.get("code"), f"job {i} code")
        if code is None:
            raise RecordError(f"job {i} has no code")
        start = _month_index(job.get("start"), is_end=False, what=f"job {i} start")
        end_raw = job.get("end")
        is_open = _is_open(end_raw)
        if is_open and as_of is None:
            raise RecordError(f"job {i} is open-ended and no as-of year is known")
        end = as_of if is_open else _month_index(end_raw, is_end=True, what=f"job {i} end")
        if end < start and not is_open:
            raise RecordError(f"job {i} ends before it starts")
        if as_of is not None:
            if start > as_of:
                continue  # starts after the as-of date: not yet held
            end = min(end, as_of)
        spells.append((start, end, code))
    if not spells:
        raise RecordError("empty sequence: every job starts after the as-of date")
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
            if not _is_open(item.get("start")):  # not used, but a bad one is a corrupted record
                _month_index(item.get("start"), is_end=False, what=f"education {i} start")
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
        fields[name] = _text(record.get(name), name)
    if record.get("birth_year") is not None:
        fields["birth_year"] = check_year_value(
            parse_int(record.get("birth_year"), "birth_year"), "birth_year"
        )
    return fields


#: JSON's names for the types of a parsed value, for messages about the input.
_JSON_TYPES = {bool: "boolean", float: "number", list: "array", dict: "object", type(None): "null"}


def _person_id(record: Any, fallback: str) -> str:
    """The resume's id: a string (stripped) or an integer (its decimal text: ids exported from a
    database often are numbers). Without an "id" key the resume is named by its line
    (`fallback`); any other id would be a made-up or colliding name ("True", "1.5"): a
    RecordError."""
    if not isinstance(record, dict) or "id" not in record:
        return fallback
    value = record["id"]
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and value.strip():
        return check_text(value, "person id").strip()
    kind = "empty string" if isinstance(value, str) else _JSON_TYPES.get(type(value), "value")
    raise RecordError(f"unusable person id ({kind}): {json.dumps(value)}")


def _parse_json(line: str) -> Any:
    """The JSON value on a line; a RecordError for text that is not one (or one Python refuses:
    nested too deeply, an integer of more than 4300 digits)."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise RecordError(f"invalid JSON: {exc.msg}") from None
    except RecursionError:
        raise RecordError("invalid JSON: nested too deeply") from None
    except ValueError as exc:
        raise RecordError(f"invalid JSON: {exc}") from None


_EXPECTED = "--format resume-jsonl expects one JSON Lines file, one resume per line"


@dataclass(frozen=True)
class JsonlBlock:
    first_line: int
    start: int
    stop: int
    digest: str = ""  # sha256 of the whole file


def plan_resume_jsonl(url: str, lines_per_block: int, storage_options=None) -> list[JsonlBlock]:
    """Cut the file into blocks of lines (the file must exist, be readable and not be empty)."""
    fs, path = storage.filesystem(url, storage_options)
    if fs.isdir(path):
        raise StructuralError(
            f"is a folder, not a file ({_EXPECTED}; a career-code folder is --format career-code)",
            path=storage.redact(url),
        )
    if not fs.exists(path):
        raise StructuralError(f"does not exist ({_EXPECTED})", path=storage.redact(url))
    index = index_lines(url, lines_per_block_of([url], lines_per_block), storage_options)
    if not index.size:
        raise StructuralError(f"empty file: no resumes ({_EXPECTED})", path=storage.redact(url))
    return [JsonlBlock(first, start, stop, index.sha256) for first, start, stop in index.ranges()]


def read_resume_block(
    url: str, block: JsonlBlock, options: ResumeOptions, storage_options=None
) -> ReadResult:
    """Read and convert the resumes of one block; blank lines are not people."""
    shown = storage.redact(url)
    lines = read_line_bytes(url, block.start, block.stop, storage_options)
    quarantine = Quarantine()
    builder = RecordBuilder()
    seen: set[str] = set()
    people_read = 0
    for number, raw in enumerate(lines, start=block.first_line):
        if not raw.strip():
            continue
        people_read += 1
        person_id = None
        try:
            record = _parse_json(decode_line(raw))
            person_id = _person_id(record, f"line-{number:09d}")
            if person_id in seen:
                raise RecordError(f"duplicate person id: {person_id!r}")
            fields = resume_to_record(record, options)
        except RecordError as exc:
            text = raw.decode("utf-8", "backslashreplace")
            quarantine.add(f"{shown}:{number}", str(exc), person_id=person_id, record=text)
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
