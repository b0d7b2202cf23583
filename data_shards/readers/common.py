"""Pieces every reader shares: the result type, row-wise record building and value checks."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from data_shards.quarantine import Quarantine, ReadReport
from data_shards.schema import RECORD_SCHEMA, YEAR_RANGE, conform


@dataclass
class ReadResult:
    """Accepted records (record schema), the quarantine, and the counts that tie them together."""

    table: pa.Table
    quarantine: Quarantine
    report: ReadReport


def quarantine_duplicate_ids(result: ReadResult, seen: set[str]) -> ReadResult:
    """Quarantine people whose id was already accepted (in `seen`, or earlier in this result).

    The first occurrence in input order is kept: which one is right is unknown, but keeping one
    makes reruns agree, and the others stay in the quarantine with their source.
    """
    ids = result.table.column("person_id").to_pylist()
    keep = []
    dropped = 0
    for person_id in ids:
        if person_id in seen:
            result.quarantine.add(
                result.report.source, f"duplicate person id: {person_id!r}", person_id=person_id
            )
            dropped += 1
            keep.append(False)
        else:
            seen.add(person_id)
            keep.append(True)
    if not dropped:
        return result
    report = result.report
    report.people_accepted -= dropped
    report.people_quarantined += dropped
    return ReadResult(result.table.filter(pa.array(keep)), result.quarantine, report)


def concat_results(results: list[ReadResult], source: str) -> ReadResult:
    """One result from the results of consecutive blocks of the same input (ids made unique)."""
    seen: set[str] = set()
    results = [quarantine_duplicate_ids(r, seen) for r in results]
    quarantine = Quarantine([e for r in results for e in r.quarantine])
    tables = [r.table for r in results if r.table.num_rows] or [RECORD_SCHEMA.empty_table()]
    report = ReadReport(
        source,
        sum(r.report.people_read for r in results),
        sum(r.report.people_accepted for r in results),
        sum(r.report.people_quarantined for r in results),
        sum(r.report.rows_read for r in results),
        sum(r.report.rows_quarantined for r in results),
    )
    for r in results:
        for key, value in r.report.notes.items():
            report.notes[key] = report.notes.get(key, 0) + value
    return ReadResult(pa.concat_tables(tables), quarantine, report)


class RecordError(ValueError):
    """A record is malformed; the message is the quarantine reason."""


def parse_int(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise RecordError(f"unparseable {what}: {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    try:
        return int(str(value).strip())
    except ValueError:
        raise RecordError(f"unparseable {what}: {value!r}") from None


def parse_optional_float(value: Any, what: str) -> float | None:
    """A float, or None for the usual spellings of missing (empty, NA, nan, null)."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return None if math.isnan(value) else float(value)
    text = str(value).strip()
    if text.lower() in ("", "na", "nan", "null", "none", "."):
        return None
    try:
        number = float(text)
    except ValueError:
        raise RecordError(f"unparseable {what}: {value!r}") from None
    if math.isinf(number):
        raise RecordError(f"infinite {what}: {value!r}")
    return None if math.isnan(number) else number


def check_year_value(year: int, what: str = "year") -> int:
    if not YEAR_RANGE[0] <= year <= YEAR_RANGE[1]:
        raise RecordError(f"{what} out of range {YEAR_RANGE[0]}-{YEAR_RANGE[1]}: {year}")
    return year


def check_years(years: list[int]) -> None:
    if not years:
        raise RecordError("empty sequence")
    for year in years:
        check_year_value(year)
    for a, b in zip(years, years[1:], strict=False):
        if b <= a:
            raise RecordError(f"years not strictly increasing: {a} then {b}")


def static_text(value: Any, what: str) -> str | None:
    """A static categorical value: strings and integers are accepted, containers are not."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise RecordError(f"unknown {what} value type {type(value).__name__}: {value!r}")
    text = str(value).strip()
    return text or None


@dataclass
class RecordBuilder:
    """Accumulates accepted people row by row, then builds one record table."""

    columns: dict[str, list] = field(default_factory=lambda: {f.name: [] for f in RECORD_SCHEMA})

    def add(self, **record: Any) -> None:
        for name, values in self.columns.items():
            values.append(record.get(name))

    def __len__(self) -> int:
        return len(self.columns["person_id"])

    def build(self) -> pa.Table:
        arrays = {}
        for f in RECORD_SCHEMA:
            values = self.columns[f.name]
            if f.name == "weight":
                values = [1.0 if v is None else v for v in values]
            arrays[f.name] = pa.array(values, f.type)
        return conform(pa.table(arrays))


#: The UTF-8 byte-order mark some editors put at the start of a file (`utf-8-sig`).
BOM = "\ufeff"
BOM_BYTES = BOM.encode("utf-8")
#: The control characters no code, id or label holds (tab and line feed excepted), as the body of
#: a regex character class (Python's `re` and Arrow's RE2 both read it).
CONTROL_CHARACTERS = r"\x00-\x08\x0b-\x1f\x7f-\x9f"
_CONTROL = re.compile(f"[{CONTROL_CHARACTERS}]")


def strip_bom(text: str) -> str:
    """`text` without a leading byte-order mark. Every reader calls this on the first line (or
    header) of every file, so a file saved by Excel reads the same as one saved without a BOM."""
    return text[len(BOM) :] if text.startswith(BOM) else text


def strip_bom_bytes(data: bytes) -> bytes:
    """`data` without a leading UTF-8 byte-order mark (for readers that parse bytes)."""
    return data[len(BOM_BYTES) :] if data.startswith(BOM_BYTES) else data


def check_text(value: str, what: str) -> str:
    """`value` unless it holds a NUL or other control character (tab excepted), which no code,
    id or label contains: such a value is a corrupted record, quarantined with this reason."""
    found = _CONTROL.search(value)
    if found:
        raise RecordError(f"{what} contains control character {found.group()!r}: {value!r}")
    return value


def decode_line(raw: bytes, what: str = "line") -> str:
    """One line of a UTF-8 file, or a RecordError naming the byte that is not UTF-8 (one bad
    line is quarantined; the rest of the file is read)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordError(
            f"{what} is not UTF-8 text (byte {raw[exc.start]:#04x} at column {exc.start + 1})"
        ) from None
