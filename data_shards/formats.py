"""The input formats, in one registry: name -> how to check, plan, read, digest and describe it.

Every place that needs the list of formats or behaves per format reads it from `FORMATS`: the
sharding job's input blocks (`data_shards.inputs`), `data_shards.readers.read`, and the CLI's
`--format` choices and help (`READABLE_FORMATS`, `ALL_FORMATS`, `describe_formats`). Adding a
format is adding one entry here. `InputSpec` (an input: a format and its options) is defined here
too, beside the registry that validates and describes it (`data_shards.inputs` re-exports it).

`synth` (the simulator) is an input of the sharding job but not a readable file format: its
blocks are generated on the workers, and it has no `read` and no URL.

`no_record_error` is what an input that yields no accepted record gets, from `career shard` (and
every job that shards) and `career inspect`: the input, the counts, the first reasons with their
`file:line`, and the likely cause (the format, the years, the encoding, the column mapping).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa

from data_shards import storage
from data_shards.errors import StructuralError
from data_shards.quarantine import (
    Quarantine,
    QuarantineEntry,
    ReadReport,
    high_share_warning,
    quarantined_shares,
)
from data_shards.readers.career_code import (
    plan_career_code,
    read_career_code,
    read_career_code_block,
)
from data_shards.readers.common import ReadResult
from data_shards.readers.compressed import compression, read_input, sniff, uncompressed_name
from data_shards.readers.panel import PanelMapping, check_panel, read_panel
from data_shards.readers.resume_jsonl import (
    ResumeOptions,
    plan_resume_jsonl,
    read_resume_block,
    read_resume_jsonl,
)
from data_shards.schema import YEAR_RANGE
from data_shards.synth.generate import chunk_sizes, simulate_chunk
from data_shards.synth.presets import get_preset

#: A block's part (what a task reads) and its expected people (or lines), for progress bars.
PlannedBlock = tuple[Any, int]


@dataclass(frozen=True)
class InputFormat:
    """One input format. Functions taking an `InputSpec` serve the sharding job; `read` reads a
    whole file input in this process (`readers.read`), None for a format that is not a file."""

    name: str
    description: str  # one line, for `--format` help
    check: Callable[[InputSpec], None]  # refuse an incomplete spec (ValueError)
    describe: Callable[[InputSpec], dict[str, Any]]  # the manifest's description, after "format"
    plan_blocks: Callable[[InputSpec, int], list[PlannedBlock]]  # every structural check
    read_block: Callable[[InputSpec, Any], ReadResult]  # read, validate, quarantine one part
    digest: Callable[[InputSpec, list[Any]], str | None]  # sha256 of the content (None: synth)
    read: Callable[..., ReadResult] | None = None  # (url, *, panel, resume, storage_options)

    @property
    def readable(self) -> bool:
        """A file format, read from `--input` (not generated)."""
        return self.read is not None


@dataclass(frozen=True)
class InputSpec:
    """An input and how to read it. `storage_options` never enters a manifest or a log."""

    format: str
    url: str | None = None
    panel: PanelMapping | None = None
    resume: ResumeOptions | None = None
    preset: str | None = None
    people: int | None = None
    seed: int = 0
    storage_options: dict | None = None

    def __post_init__(self) -> None:
        input_format(self.format).check(self)

    def describe(self) -> dict[str, Any]:
        """A description safe to store in the manifest (URL redacted, no storage options)."""
        out: dict[str, Any] = {"format": self.format, **input_format(self.format).describe(self)}
        return json.loads(json.dumps(out))  # the form it has once stored in a manifest


# ----------------------------------------------------------------------------- file formats
def _check_file(spec: InputSpec) -> None:
    if not spec.url:
        raise ValueError(f"--input is required for --format {spec.format}")


def _describe_url(spec: InputSpec) -> dict[str, Any]:
    return {"url": storage.redact(spec.url or "")}


def _digest_of_parts(spec: InputSpec, parts: list[Any]) -> str:
    """Text inputs: the files' sha256, taken while their lines were indexed, each with the split
    it was read as (swapping the train and valid files' contents is another dataset)."""
    digests = sorted({(getattr(part, "split", ""), getattr(part, "digest", "")) for part in parts})
    return hashlib.sha256(json.dumps(digests).encode()).hexdigest()


def _plan_career_code(spec: InputSpec, lines_per_block: int) -> list[PlannedBlock]:
    parts = plan_career_code(spec.url or "", lines_per_block, spec.storage_options)
    return [(part, part.count) for part in parts]


def _read_career_code_block(spec: InputSpec, part: Any) -> ReadResult:
    return read_career_code_block(spec.url or "", part, spec.storage_options)


def _read_career_code(url: str, *, panel=None, resume=None, storage_options=None) -> ReadResult:
    return read_career_code(url, storage_options)


def _describe_panel(spec: InputSpec) -> dict[str, Any]:
    return {**_describe_url(spec), "mapping": asdict(spec.panel or PanelMapping())}


def _plan_panel(spec: InputSpec, lines_per_block: int) -> list[PlannedBlock]:
    # Panels hold a survey (tens of thousands of people) and rows of one person may be anywhere
    # in the file: one block reads it whole.
    check_panel(spec.url or "", spec.panel or PanelMapping(), spec.storage_options)
    return [(None, 0)]


def _read_panel_block(spec: InputSpec, part: Any) -> ReadResult:
    return read_panel(spec.url or "", spec.panel, spec.storage_options)


def _digest_panel(spec: InputSpec, parts: list[Any]) -> str:
    """A panel (a survey, small) is hashed whole."""
    return hashlib.sha256(read_input(spec.url or "", spec.storage_options)).hexdigest()


def _read_panel(url: str, *, panel=None, resume=None, storage_options=None) -> ReadResult:
    return read_panel(url, panel, storage_options)


def _describe_resume(spec: InputSpec) -> dict[str, Any]:
    return {**_describe_url(spec), "as_of": (spec.resume or ResumeOptions()).as_of}


def _plan_resume(spec: InputSpec, lines_per_block: int) -> list[PlannedBlock]:
    parts = plan_resume_jsonl(spec.url or "", lines_per_block, spec.storage_options)
    return [(part, lines_per_block) for part in parts]


def _read_resume_block(spec: InputSpec, part: Any) -> ReadResult:
    options = spec.resume or ResumeOptions()
    return read_resume_block(spec.url or "", part, options, spec.storage_options)


def _read_resume(url: str, *, panel=None, resume=None, storage_options=None) -> ReadResult:
    return read_resume_jsonl(url, resume, storage_options)


# ----------------------------------------------------------------------------- the simulator
def _synth_sizes(spec: InputSpec) -> list[int]:
    preset = get_preset(spec.preset or "")
    return chunk_sizes(spec.people or preset.default_people)


def _check_synth(spec: InputSpec) -> None:
    get_preset(spec.preset or "")
    if spec.people is not None and spec.people <= 0:
        raise ValueError("--people must be positive")


def _describe_synth(spec: InputSpec) -> dict[str, Any]:
    preset = get_preset(spec.preset or "")
    return {
        "preset": preset.name,
        "people": spec.people or preset.default_people,
        "seed": spec.seed,
    }


def _plan_synth(spec: InputSpec, lines_per_block: int) -> list[PlannedBlock]:
    return [(chunk, people) for chunk, people in enumerate(_synth_sizes(spec))]


def _read_synth_block(spec: InputSpec, part: Any) -> ReadResult:
    preset = get_preset(spec.preset or "")
    chunk = int(part)
    batch = simulate_chunk(preset, _synth_sizes(spec)[chunk], spec.seed, chunk)
    report = ReadReport(f"synth:{preset.name}", batch.num_rows, batch.num_rows, 0)
    return ReadResult(pa.Table.from_batches([batch]), Quarantine(), report)


def _digest_synth(spec: InputSpec, parts: list[Any]) -> None:
    """The simulator's description (preset, people, seed) identifies its content."""
    return None


# ----------------------------------------------------------------------------- the registry
FORMATS: dict[str, InputFormat] = {
    f.name: f
    for f in (
        InputFormat(
            "career-code",
            "folder of {train,valid,test}.{job,year,...}",
            _check_file,
            _describe_url,
            _plan_career_code,
            _read_career_code_block,
            _digest_of_parts,
            _read_career_code,
        ),
        InputFormat(
            "panel",
            "CSV or Parquet person-year rows",
            _check_file,
            _describe_panel,
            _plan_panel,
            _read_panel_block,
            _digest_panel,
            _read_panel,
        ),
        InputFormat(
            "resume-jsonl",
            "one resume per line",
            _check_file,
            _describe_resume,
            _plan_resume,
            _read_resume_block,
            _digest_of_parts,
            _read_resume,
        ),
        InputFormat(
            "synth",
            "the simulator, generated on the workers",
            _check_synth,
            _describe_synth,
            _plan_synth,
            _read_synth_block,
            _digest_synth,
        ),
    )
}
#: Every input of the sharding job, and the file formats among them (`inspect`, `readers.read`).
ALL_FORMATS: tuple[str, ...] = tuple(FORMATS)
READABLE_FORMATS: tuple[str, ...] = tuple(n for n, f in FORMATS.items() if f.readable)


def input_format(name: str, among: tuple[str, ...] = ALL_FORMATS) -> InputFormat:
    """The registered format `name`, if it is one of `among`; else a ValueError naming them."""
    if name not in among:
        raise ValueError(f"unknown input format {name!r}; choose from {', '.join(among)}")
    return FORMATS[name]


def describe_formats(names: tuple[str, ...] = ALL_FORMATS) -> str:
    """One line of help for `--format`: "name: description; ..." for `names`, in that order."""
    return "; ".join(f"{name}: {FORMATS[name].description}" for name in names)


# ----------------------------------------------------------------------------- no record accepted
#: File name endings (once decompressed) that say which format a file is, for the likely cause.
_SUFFIX_FORMATS = {
    ".csv": "panel",
    ".tsv": "panel",
    ".parquet": "panel",
    ".pq": "panel",
    ".jsonl": "resume-jsonl",
    ".ndjson": "resume-jsonl",
    ".json": "resume-jsonl",
}
#: The first quarantine entries a refusal shows (each with its `file:line`).
SHOWN_ENTRIES = 3


def _likely_cause(
    fmt: str, url: str, entries: list[QuarantineEntry], year_base: int | None, storage_options
) -> str:
    """Why an input yields no record, from its name, its first bytes and its most common
    quarantine reason."""
    codec = None if compression(url) else sniff(url, storage_options)
    if codec:
        suffix = {"gzip": "gz", "bz2": "bz2", "xz": "xz", "zstd": "zst", "zip": "zip"}[codec]
        return (
            f"the file's name: it holds {codec} data, and a compressed input is read only when "
            f"its name says so (rename it to end in .{suffix})"
        )
    name = uncompressed_name(url).rstrip("/").lower()
    guess = next((f for suffix, f in _SUFFIX_FORMATS.items() if name.endswith(suffix)), None)
    if guess and guess != fmt:
        return (
            f"the --format: the file's name says --format {guess} ({FORMATS[guess].description}), "
            f"but it was read as --format {fmt}"
        )
    top = Quarantine(entries).top_reasons(1)
    reason = top[0][0] if top else ""
    if "out of range" in reason and "year" in reason:
        low, high = YEAR_RANGE
        if fmt != "panel":
            return f"the years: they are not calendar years in {low}-{high}"
        if year_base is None:
            return (
                f"--year-base: the years are outside {low}-{high}; two-digit years (80 for 1980, "
                "also in the birth-year column) need --year-base 1900"
            )
        return f"--year-base {year_base}: with it the years are still outside {low}-{high}"
    if "not UTF-8" in reason:
        return (
            "the encoding: the text is not UTF-8 (a compressed input is read only when its name "
            "ends in .gz, .bz2, .xz or .zst; other encodings need converting to UTF-8)"
        )
    if reason.startswith("invalid JSON"):
        return (
            "the --format: the lines are not JSON (--format resume-jsonl reads one JSON object "
            "per line; CSV or Parquet rows are --format panel)"
        )
    if fmt == "panel":
        return (
            "the column mapping (--person, --year, --occupation, ...) or the --format: "
            f"the most common reason is {reason!r}"
        )
    return f"the --format ({fmt}) or the options: the most common reason is {reason!r}"


def no_record_error(
    fmt: str,
    url: str,
    *,
    people_read: int,
    rows_read: int,
    entries: list[QuarantineEntry],
    year_base: int | None = None,
    then: str = "",
    storage_options=None,
) -> StructuralError:
    """The error for an input that yields no accepted record: the counts, the first entries with
    their `file:line`, the most common reasons and the likely cause; `then` says what was done
    (or what to do) about it. It names the input (redacted)."""
    shown = storage.redact(url)
    if not entries:  # nothing read, nothing quarantined
        what = "yields no record: every line is blank"
    elif rows_read:
        what = (
            f"no record accepted: read as --format {fmt}, all {rows_read:,} rows "
            f"({people_read:,} people) were quarantined"
        )
    else:
        what = (
            f"no record accepted: read as --format {fmt}, all {people_read:,} records were "
            "quarantined"
        )
    lines = [what]
    if entries:
        lines.append("first reasons:")
        lines += [f"  {e.source}: {e.reason[:200]}" for e in entries[:SHOWN_ENTRIES]]
        top = Quarantine(entries).top_reasons(3)
        lines.append("most common: " + "; ".join(f"{r} ({c:,})" for r, c in top))
    lines.append("likely cause: " + _likely_cause(fmt, url, entries, year_base, storage_options))
    if then:
        lines.append(then)
    return StructuralError("\n".join(lines), path=shown)


def check_read(
    result: ReadResult, fmt: str, url: str, year_base: int | None = None, storage_options=None
) -> None:
    """Refuse a whole-input read that accepted no record (`no_record_error`), as the sharding
    job would (`career inspect`)."""
    if result.report.people_accepted:
        return
    raise no_record_error(
        fmt,
        url,
        people_read=result.report.people_read,
        rows_read=result.report.rows_read,
        entries=list(result.quarantine),
        year_base=year_base,
        then="career shard refuses such an input (exit 2, nothing written)",
        storage_options=storage_options,
    )


def read_warning(result: ReadResult, evidence: str) -> str | None:
    """`high_share_warning` for a whole-input read (`career inspect`)."""
    report = result.report
    shares = quarantined_shares(
        report.people_read, report.people_quarantined, report.rows_read, report.rows_quarantined
    )
    return high_share_warning(shares, result.quarantine.top_reasons(), evidence)
