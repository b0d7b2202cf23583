"""Reader for the text layout of the public CAREER code (github.com/keyonvafa/career-code).

A directory of `{split}.{field}` files, one person per line: time-varying fields space-separated
(`job`, `year`, `education`, and our extras `log_wage`, `oracle_logp`), static fields one value per
line (`location`, `gender`, `ethnicity`, and our extras `id`, `birth_year`, `weight`). `job` and
`year` are required; the other files are optional but the same set must exist for every split.
Splits present in the directory are kept as the records' `split`.

Structural problems (no job/year files, line counts that differ, a field present for one split
only) stop the read with the file and line. A malformed person (lengths that disagree, an
unparseable year, years out of order, an empty line, a duplicate id) is quarantined with
`file:line`: the file holding the bad value where one does (a line that is not UTF-8, a NUL or
other control character, a repeated id), else the person's `.job` line. A byte-order mark at the
start of any file is dropped. Other files in the folder (`dev.job`, `train.foo`, a README) are not
read: the plan logs a warning naming them and a whole-folder read counts each in its `notes`.

A field file may be compressed (`train.job.gz`, `.bz2`, `.xz`, `.zst`; `readers.compressed`): it
is read decompressed, and a split with a compressed file is read as one block. A field given both
plain and compressed (`train.job` and `train.job.gz`) is refused: which one to read is unknown.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
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
    parse_optional_float,
)
from data_shards.readers.compressed import lines_per_block_of, uncompressed_name
from data_shards.readers.lines import index_lines, read_line_bytes
from data_shards.schema import SPLITS

TIME_VARYING = ("job", "year", "education", "log_wage", "oracle_logp")
STATIC = ("id", "location", "gender", "ethnicity", "birth_year", "weight")
FIELDS = TIME_VARYING + STATIC
#: The `notes` key counting a file of the folder that is not read (the file name follows).
IGNORED_NOTE = "ignored file (not a split/field): "
_EXPECTED = "--format career-code expects a folder of {train,valid,test}.{job,year,...} files"

log = logging.getLogger(__name__)


def _list_fields(url: str, storage_options) -> tuple[dict[str, dict[str, str]], list[str]]:
    """The fields present per split (field -> its file's name), and the names of the folder's
    other entries (not read)."""
    fs, root = storage.filesystem(url, storage_options)
    if not fs.isdir(root):
        what = "is a file, not a folder" if fs.exists(root) else "does not exist"
        raise StructuralError(f"{what} ({_EXPECTED})", path=storage.redact(url))
    present: dict[str, dict[str, str]] = {}
    ignored: list[str] = []
    for path in sorted(fs.ls(root, detail=False)):
        name = path.rstrip("/").rsplit("/", 1)[-1]
        split, dot, suffix = uncompressed_name(name).partition(".")
        if dot and split in SPLITS and suffix in FIELDS:
            other = present.setdefault(split, {}).setdefault(suffix, name)
            if other != name:
                raise StructuralError(
                    f"both {other} and {name}: which one to read is unknown; remove one",
                    path=storage.redact(url),
                )
        elif name:
            ignored.append(name)
    return present, sorted(ignored)


@dataclass(frozen=True)
class CareerCodeBlock:
    """Lines [first_line, first_line + count) of one split: a byte range in each field file."""

    split: str
    first_line: int
    count: int
    byte_ranges: tuple[tuple[str, str, int, int], ...]  # (field, file name, start, stop)
    digest: str = ""  # sha256 over the split's files: what the block was cut from


def plan_career_code(url: str, lines_per_block: int, storage_options=None) -> list[CareerCodeBlock]:
    """Check the layout (structural errors raise here, before any work) and cut it into blocks."""
    return _plan(url, lines_per_block, storage_options)[0]


def _plan(
    url: str, lines_per_block: int, storage_options
) -> tuple[list[CareerCodeBlock], list[str]]:
    """The blocks, and the folder's entries that are not read (warned about here, once per plan:
    the blocks do not carry them, so reading blocks never counts them more than once)."""
    present, ignored = _list_fields(url, storage_options)
    if not present:
        found = f" (found: {', '.join(ignored)})" if ignored else " (the folder is empty)"
        raise StructuralError(
            "no {train,valid,test}.{job,year} files found" + found, path=storage.redact(url)
        )
    if ignored:
        log.warning(
            "%s: not reading %d file(s) that are not {train,valid,test}.{%s}: %s",
            storage.redact(url),
            len(ignored),
            ",".join(FIELDS),
            ", ".join(ignored),
        )
    fields = set().union(*(set(have) for have in present.values()))
    for split, have in sorted(present.items()):
        for required in ("job", "year"):
            if required not in have:
                raise StructuralError(
                    "required file missing",
                    path=storage.redact(storage.join(url, f"{split}.{required}")),
                )
        if set(have) != fields:
            missing = ", ".join(f"{split}.{m}" for m in sorted(fields - set(have)))
            raise StructuralError(
                f"optional files must exist for every split; {split} lacks {missing}",
                path=storage.redact(url),
            )
    blocks: list[CareerCodeBlock] = []
    names = sorted(fields, key=FIELDS.index)
    for split in [s for s in SPLITS if s in present]:
        files = present[split]
        urls = {name: storage.join(url, files[name]) for name in names}
        per_block = lines_per_block_of(list(urls.values()), lines_per_block)
        indexes = {name: index_lines(urls[name], per_block, storage_options) for name in names}
        reference = indexes["job"].lines
        for name, index in indexes.items():
            if index.lines != reference:
                line = min(index.lines, reference) + 1
                raise StructuralError(
                    f"{index.lines} lines but {split}.job has {reference}: line {line} has no counterpart",
                    path=storage.redact(urls[name]),
                    line=line,
                )
        ranges = {name: index.ranges() for name, index in indexes.items()}
        digest = hashlib.sha256("".join(indexes[n].sha256 for n in names).encode()).hexdigest()
        for b, (first, _, _) in enumerate(ranges["job"]):
            count = min(per_block, reference - first + 1)
            byte_ranges = tuple(
                (name, files[name], ranges[name][b][1], ranges[name][b][2]) for name in names
            )
            blocks.append(CareerCodeBlock(split, first, count, byte_ranges, digest))
    return blocks, ignored


def read_career_code_block(
    url: str, block: CareerCodeBlock, storage_options=None, seen: set[str] | None = None
) -> ReadResult:
    """Read and validate the people of one block. `seen`: ids accepted by earlier blocks of the
    same read (updated), so that a repeated id is quarantined here, with its `file:line`."""
    data: dict[str, list[bytes]] = {}
    files = {name: file for name, file, _, _ in block.byte_ranges}
    for name, file, start, stop in block.byte_ranges:
        file_url = storage.join(url, file)
        data[name] = read_line_bytes(file_url, start, stop, storage_options)
        if len(data[name]) != block.count:
            raise StructuralError(
                f"expected {block.count} lines from line {block.first_line} (file changed while reading?)",
                path=storage.redact(file_url),
                line=block.first_line,
            )
    seen = set() if seen is None else seen
    quarantine = Quarantine()
    builder = RecordBuilder()
    split = block.split
    for i in range(block.count):
        line = block.first_line + i
        raw = {name: lines[i] for name, lines in data.items()}
        person_id = f"{split}-{line:09d}"
        try:
            values = {name: _decode_field(value, files[name]) for name, value in raw.items()}
            person_id = values.get("id", "").strip() or person_id
            if person_id in seen:
                raise FieldError(f"duplicate person id: {person_id!r}", files["id"])
            record = _parse_person(values, split, line)
        except RecordError as exc:
            file = exc.file if isinstance(exc, FieldError) else files["job"]
            shown = {n: v.decode("utf-8", "backslashreplace") for n, v in raw.items()}
            where = f"{storage.redact(storage.join(url, file))}:{line}"
            quarantine.add(where, str(exc), person_id=person_id, record=shown)
            continue
        seen.add(person_id)
        builder.add(person_id=person_id, split=split, **record)
    report = ReadReport(storage.redact(url), block.count, len(builder), len(quarantine))
    return ReadResult(builder.build(), quarantine, report)


class FieldError(RecordError):
    """A malformed person whose fault is in one field file: the quarantine names that file's
    line, where the user has to look, rather than the person's `.job` line."""

    def __init__(self, message: str, file: str):
        super().__init__(message)
        self.file = file


def _decode_field(raw: bytes, file: str) -> str:
    """One line of field file `file` as text: UTF-8, without the CR of a CRLF ending, and no
    control characters (no code, label or number holds one: such a line is corrupted)."""
    try:
        return check_text(decode_line(raw, file).removesuffix("\r"), file)
    except RecordError as exc:
        raise FieldError(str(exc), file) from None


def read_career_code(url: str, storage_options=None) -> ReadResult:
    """Read a whole career-code folder in this process (the sharding job reads blocks in parallel).

    The files not read are counted in the report's `notes`, once each."""
    blocks, ignored = _plan(url, 1 << 30, storage_options)
    seen: set[str] = set()
    results = [read_career_code_block(url, b, storage_options, seen) for b in blocks]
    result = concat_results(results, storage.redact(url))
    for name in ignored:
        result.report.notes[IGNORED_NOTE + name] = 1
    return result


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
