"""Reader for the text layout of the public CAREER code (github.com/keyonvafa/career-code).

A directory of `{split}.{field}` files, one person per line: time-varying fields space-separated
(`job`, `year`, `education`, and our extras `log_wage`, `oracle_logp`), static fields one value per
line (`location`, `gender`, `ethnicity`, and our extras `id`, `birth_year`, `weight`). `job` and
`year` are required; the other files are optional but the same set must exist for every split.
Splits present in the directory are kept as the records' `split`.

Structural problems (no job/year files, line counts that differ, a field present for one split
only) stop the read with the file and line. A malformed person (lengths that disagree, an
unparseable year, years out of order, an empty line) is quarantined with `file:line`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
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
    parse_optional_float,
)
from data_shards.readers.lines import index_lines, read_line_range
from data_shards.schema import SPLITS

TIME_VARYING = ("job", "year", "education", "log_wage", "oracle_logp")
STATIC = ("id", "location", "gender", "ethnicity", "birth_year", "weight")
FIELDS = TIME_VARYING + STATIC


def _list_fields(url: str, storage_options) -> dict[str, set[str]]:
    fs, root = storage.filesystem(url, storage_options)
    if not fs.isdir(root):
        raise StructuralError(
            "not a directory (expected a career-code folder)", path=storage.redact(url)
        )
    present: dict[str, set[str]] = {}
    for path in fs.ls(root, detail=False):
        name = path.rstrip("/").rsplit("/", 1)[-1]
        split, dot, suffix = name.partition(".")
        if dot and split in SPLITS and suffix in FIELDS:
            present.setdefault(split, set()).add(suffix)
    return present


@dataclass(frozen=True)
class CareerCodeBlock:
    """Lines [first_line, first_line + count) of one split: a byte range in each field file."""

    split: str
    first_line: int
    count: int
    byte_ranges: tuple[tuple[str, int, int], ...]  # (field, start, stop)
    digest: str = ""  # sha256 over the split's files: what the block was cut from


def plan_career_code(url: str, lines_per_block: int, storage_options=None) -> list[CareerCodeBlock]:
    """Check the layout (structural errors raise here, before any work) and cut it into blocks."""
    present = _list_fields(url, storage_options)
    if not present:
        raise StructuralError(
            "no {train,valid,test}.{job,year} files found (is this a career-code folder?)",
            path=storage.redact(url),
        )
    fields = set().union(*present.values())
    for split, have in sorted(present.items()):
        for required in ("job", "year"):
            if required not in have:
                raise StructuralError(
                    "required file missing",
                    path=storage.redact(storage.join(url, f"{split}.{required}")),
                )
        if have != fields:
            missing = ", ".join(f"{split}.{m}" for m in sorted(fields - have))
            raise StructuralError(
                f"optional files must exist for every split; {split} lacks {missing}",
                path=storage.redact(url),
            )
    blocks: list[CareerCodeBlock] = []
    names = sorted(fields, key=FIELDS.index)
    for split in [s for s in SPLITS if s in present]:
        indexes = {
            name: index_lines(
                storage.join(url, f"{split}.{name}"), lines_per_block, storage_options
            )
            for name in names
        }
        reference = indexes["job"].lines
        for name, index in indexes.items():
            if index.lines != reference:
                line = min(index.lines, reference) + 1
                raise StructuralError(
                    f"{index.lines} lines but {split}.job has {reference}: line {line} has no counterpart",
                    path=storage.redact(storage.join(url, f"{split}.{name}")),
                    line=line,
                )
        ranges = {name: index.ranges() for name, index in indexes.items()}
        digest = hashlib.sha256("".join(indexes[n].sha256 for n in names).encode()).hexdigest()
        for b, (first, _, _) in enumerate(ranges["job"]):
            count = min(lines_per_block, reference - first + 1)
            byte_ranges = tuple((name, ranges[name][b][1], ranges[name][b][2]) for name in names)
            blocks.append(CareerCodeBlock(split, first, count, byte_ranges, digest))
    return blocks


def read_career_code_block(url: str, block: CareerCodeBlock, storage_options=None) -> ReadResult:
    """Read and validate the people of one block."""
    data: dict[str, list[str]] = {}
    for name, start, stop in block.byte_ranges:
        file_url = storage.join(url, f"{block.split}.{name}")
        data[name] = read_line_range(file_url, start, stop, storage_options, block.first_line)
        if len(data[name]) != block.count:
            raise StructuralError(
                f"expected {block.count} lines from line {block.first_line} (file changed while reading?)",
                path=storage.redact(file_url),
                line=block.first_line,
            )
    quarantine = Quarantine()
    builder = RecordBuilder()
    split = block.split
    for i in range(block.count):
        line = block.first_line + i
        source = storage.redact(storage.join(url, f"{split}.job")) + f":{line}"
        values = {name: lines[i] for name, lines in data.items()}
        person_id = values.get("id", "").strip() or f"{split}-{line:09d}"
        try:
            record = _parse_person(values, split, line)
        except RecordError as exc:
            quarantine.add(source, str(exc), person_id=person_id, record=values)
            continue
        builder.add(person_id=person_id, split=split, **record)
    report = ReadReport(storage.redact(url), block.count, len(builder), len(quarantine))
    return ReadResult(builder.build(), quarantine, report)


def read_career_code(url: str, storage_options=None) -> ReadResult:
    """Read a whole career-code folder in this process (the sharding job reads blocks in parallel)."""
    blocks = plan_career_code(url, 1 << 30, storage_options)
    results = [read_career_code_block(url, b, storage_options) for b in blocks]
    return concat_results(results, storage.redact(url))


def _parse_person(values: dict[str, str], split: str, line: int) -> dict[str, Any]:
    jobs = values["job"].split()
    years = [parse_int(y, "year") for y in values["year"].split()]
    check_years(years)
    record: dict[str, Any] = {"jobs": jobs, "years": years}
    for name in ("education", "log_wage", "oracle_logp"):
        if name not in values:
            continue
        tokens = values[name].split()
        if name != "education":
            tokens = [parse_optional_float(t, name) for t in tokens]
        record[name] = tokens
    for name, tokens in (
        ("job", jobs),
        *((n, record[n]) for n in ("education", "log_wage", "oracle_logp") if n in record),
    ):
        if len(tokens) != len(years):
            raise RecordError(
                f"length mismatch: {split}.{name}:{line} has {len(tokens)} values, {split}.year:{line} has {len(years)}"
            )
    for name in ("location", "gender", "ethnicity"):
        if name in values:
            record[name] = values[name].strip() or None
    if "birth_year" in values and values["birth_year"].strip():
        record["birth_year"] = check_year_value(
            parse_int(values["birth_year"], "birth_year"), "birth_year"
        )
    if "weight" in values:
        weight = parse_optional_float(values["weight"], "weight")
        if weight is not None and weight <= 0:
            raise RecordError(f"non-positive weight: {weight}")
        record["weight"] = weight
    return record
