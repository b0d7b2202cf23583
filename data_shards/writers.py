"""Write records out as a career-code folder, a person-year panel (Parquet/CSV) or resume JSON Lines.

The layouts, in one registry (`LAYOUTS`: name -> writer, description, the input format that
reads it back), serve `career synth --layout`. Every writer takes a table or an iterable of record batches and streams it, so a corpus larger
than memory (`career synth --people 24000000`) is written one chunk at a time. Outputs appear
whole or not at all: files are written through `storage.open_atomic`, and a career-code folder is
written beside its destination and moved into place.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from data_shards import storage
from data_shards.errors import StructuralError
from data_shards.schema import SPLITS
from data_shards.splits import DEFAULT_FRACTIONS, check_fractions, resolve_splits

Records = pa.Table | Iterable[pa.RecordBatch]

_TIME_VARYING_FILES = {
    "year": "years",
    "job": "jobs",
    "education": "education",
    "log_wage": "log_wage",
    "oracle_logp": "oracle_logp",
}
_STATIC_FILES = {
    "id": "person_id",
    "location": "location",
    "gender": "gender",
    "ethnicity": "ethnicity",
    "birth_year": "birth_year",
    "weight": "weight",
}
_PANEL_STATIC = ("location", "gender", "ethnicity", "birth_year", "weight", "split")


def _batches(records: Records) -> tuple[pa.Table | None, Iterator[pa.RecordBatch]]:
    """(first batch as a table, iterator over all batches); the first decides the columns written."""
    iterator = iter(records.to_batches()) if isinstance(records, pa.Table) else iter(records)
    first = next(iterator, None)
    if first is None:
        return None, iter(())
    return pa.Table.from_batches([first]), itertools.chain([first], iterator)


def _present(table: pa.Table | None, columns: Iterable[str]) -> list[str]:
    """Columns with at least one value (written); columns entirely null are left out."""
    if table is None:
        return []
    return [c for c in columns if table.column(c).null_count < table.num_rows]


def _token(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    if isinstance(value, float):
        return repr(float(np.float32(value)))
    text = str(value)
    if not text or any(ch.isspace() for ch in text):
        raise ValueError(f"value {text!r} cannot be written to the career-code layout (whitespace)")
    return text


def is_career_code_file(name: str) -> bool:
    """Whether `name` is a file of the career-code layout (`{split}.{field}`)."""
    split, dot, suffix = name.partition(".")
    return bool(dot) and split in SPLITS and suffix in {*_TIME_VARYING_FILES, *_STATIC_FILES}


def check_replaceable_folder(url: str, storage_options=None) -> None:
    """Refuse to replace a folder that holds anything but career-code files: `--out ~` or
    `--out .` must not delete a home or project folder to write a simulated corpus there."""
    fs, path = storage.filesystem(url, storage_options)
    if not fs.exists(path):
        return
    if not fs.isdir(path):
        raise StructuralError(
            "exists and is a file; the career-code layout is a folder", path=storage.redact(url)
        )
    others = sorted(
        n
        for n in (p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))
        if not is_career_code_file(n)
    )
    if others:
        shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
        raise StructuralError(
            f"exists and holds other files ({shown}): refusing to replace it; "
            "choose a new or career-code folder",
            path=storage.redact(url),
        )


def write_career_code(
    records: Records, url: str, fractions=DEFAULT_FRACTIONS, storage_options=None
) -> list[str]:
    """Write records as a career-code folder at `url` (replacing a career-code folder there; a
    folder holding anything else is refused). Returns the file names.

    People go to the split given by `splits.resolve_splits` (their own, else the split function).
    """
    check_fractions(fractions)
    check_replaceable_folder(url, storage_options)
    first, batches = _batches(records)
    time_varying = [f for f, c in _TIME_VARYING_FILES.items() if c in _present(first, [c])]
    static = [f for f, c in _STATIC_FILES.items() if c in _present(first, [c])]
    staging = url.rstrip("/") + f".partial-{uuid.uuid4().hex[:12]}"
    names = [f"{split}.{field}" for split in SPLITS for field in time_varying + static]
    try:
        with contextlib.ExitStack() as stack:
            handles = {
                name: stack.enter_context(
                    storage.open_atomic(storage.join(staging, name), storage_options)
                )
                for name in names
            }
            for batch in batches:
                table = pa.Table.from_batches([batch])
                splits = resolve_splits(table, fractions).to_numpy(zero_copy_only=False)
                for split in SPLITS:
                    part = table.filter(pa.array(splits == split))
                    for field in time_varying:
                        column = part.column(_TIME_VARYING_FILES[field])
                        if column.null_count and field not in ("log_wage", "oracle_logp"):
                            raise ValueError(
                                f"column {_TIME_VARYING_FILES[field]!r} is null for some people: not representable"
                            )
                        lines = (
                            " ".join(_token(v) for v in (row or [])) + "\n"
                            for row in column.to_pylist()
                        )
                        handles[f"{split}.{field}"].write("".join(lines).encode())
                    for field in static:
                        values = part.column(_STATIC_FILES[field]).to_pylist()
                        lines = (("" if v is None else _token(v)) + "\n" for v in values)
                        handles[f"{split}.{field}"].write("".join(lines).encode())
        storage.move_tree(staging, url, storage_options)
    finally:
        storage.remove_tree(staging, storage_options)
    return sorted(names)


def to_panel(table: pa.Table, columns: list[str] | None = None) -> pa.Table:
    """One row per person-year, with our own column names (what `read_panel` maps by default).

    `columns` fixes the optional columns written (all batches of one file must agree).
    """
    parents = pc.list_parent_indices(table.column("years"))
    out = {
        "person_id": table.column("person_id").take(parents),
        "year": pc.list_flatten(table.column("years")),
        "job": pc.list_flatten(table.column("jobs")),
    }
    wanted = (
        columns
        if columns is not None
        else _present(table, ("education", "log_wage", "oracle_logp", *_PANEL_STATIC))
    )
    for name in ("education", "log_wage", "oracle_logp"):
        if name in wanted:
            column = table.column(name)
            lengths = pc.list_value_length(column).fill_null(0)
            if pc.any(pc.not_equal(lengths, pc.list_value_length(table.column("years")))).as_py():
                raise ValueError(
                    f"column {name!r} does not have one value per year for every person"
                )
            out[name] = pc.list_flatten(column)
    for name in _PANEL_STATIC:
        if name in wanted:
            out[name] = table.column(name).take(parents)
    return pa.table(out)


def _write_panel(records: Records, url: str, storage_options, make_writer) -> int:
    first, batches = _batches(records)
    columns = _present(first, ("education", "log_wage", "oracle_logp", *_PANEL_STATIC))
    rows = 0
    with storage.open_atomic(url, storage_options) as handle:
        writer = None
        for batch in batches:
            panel = to_panel(pa.Table.from_batches([batch]), columns)
            if writer is None:
                writer = make_writer(handle, panel.schema)
            writer.write_table(panel)
            rows += panel.num_rows
        if writer is None:  # no records: still a valid, empty file
            writer = make_writer(
                handle, to_panel(pa.Table.from_batches([], schema=_EMPTY.schema), []).schema
            )
        writer.close()
    return rows


def write_panel(records: Records, url: str, storage_options=None) -> int:
    """Write records as a Parquet person-year panel at `url`; returns the number of rows."""
    return _write_panel(
        records,
        url,
        storage_options,
        lambda h, schema: pq.ParquetWriter(h, schema, compression="zstd"),
    )


def write_panel_csv(records: Records, url: str, storage_options=None) -> int:
    """Write records as a CSV person-year panel at `url`; returns the number of rows."""
    return _write_panel(records, url, storage_options, lambda h, schema: pacsv.CSVWriter(h, schema))


def resume_json_lines(table: pa.Table) -> list[str]:
    """Each record as a resume: consecutive years in the same job become one spell.

    Spells run from January of their first year to December of their last, so reading the lines
    back with `read_resume_jsonl` gives the same years and jobs; each education level's completion
    is the first observed year it appears, which gives back the same per-year education.
    """
    lines = []
    for row in table.to_pylist():
        spells: list[dict] = []
        for year, job in zip(row["years"], row["jobs"], strict=True):
            last = spells[-1] if spells else None
            if last and last["code"] == job and int(last["end"]) == year - 1:
                last["end"] = str(year)
            else:
                spells.append({"code": job, "start": str(year), "end": str(year)})
        resume: dict = {"id": row["person_id"], "jobs": spells}
        if row["education"] is not None:
            first_year: dict[str, int] = {}
            for year, level in zip(row["years"], row["education"], strict=True):
                first_year.setdefault(level, year)
            resume["education"] = [
                {"degree": level, "end": str(year)}
                for level, year in first_year.items()
                if level != "less_than_high_school"
            ]
        for name in ("location", "gender", "ethnicity", "birth_year"):
            if row[name] is not None:
                resume[name] = row[name]
        lines.append(json.dumps(resume, sort_keys=True))
    return lines


def write_resume_jsonl(records: Records, url: str, storage_options=None) -> int:
    """Write records as resume JSON Lines at `url`; returns the number of people."""
    _, batches = _batches(records)
    people = 0
    with storage.open_atomic(url, storage_options) as handle:
        for batch in batches:
            lines = resume_json_lines(pa.Table.from_batches([batch]))
            handle.write("".join(line + "\n" for line in lines).encode())
            people += len(lines)
    return people


_EMPTY = pa.table(
    {
        "person_id": pa.array([], pa.string()),
        "years": pa.array([], pa.list_(pa.int32())),
        "jobs": pa.array([], pa.list_(pa.string())),
    }
)


# ----------------------------------------------------------------------------- the layouts
LayoutWriter = Callable[[Records, str, tuple[float, float, float], storage.StorageOptions], object]


@dataclass(frozen=True)
class Layout:
    """One layout records can be written in; `reads_as` is the input format that reads it back."""

    name: str
    description: str  # a few words, for `--layout` help
    reads_as: str
    write: LayoutWriter  # (records, url, split fractions, storage options)


def _without_fractions(writer: Callable[[Records, str, storage.StorageOptions], object]):
    """A writer of a layout that keeps no split: the split fractions do not apply."""
    return lambda records, url, fractions, storage_options: writer(records, url, storage_options)


LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        Layout("career-code", "career-code folder", "career-code", write_career_code),
        Layout("parquet", "person-year Parquet panel", "panel", _without_fractions(write_panel)),
        Layout("csv", "person-year CSV panel", "panel", _without_fractions(write_panel_csv)),
        Layout(
            "resume-jsonl",
            "resume JSON Lines",
            "resume-jsonl",
            _without_fractions(write_resume_jsonl),
        ),
    )
}
LAYOUT_NAMES: tuple[str, ...] = tuple(LAYOUTS)


def describe_layouts(names: tuple[str, ...] = LAYOUT_NAMES) -> str:
    """One line of help for `--layout`: "name: description; ..." for `names`, in that order."""
    return "; ".join(f"{name}: {LAYOUTS[name].description}" for name in names)


def write_layout(
    records: Records,
    url: str,
    layout: str,
    fractions=DEFAULT_FRACTIONS,
    storage_options=None,
) -> None:
    """Write a table or a stream of record batches at `url` in `layout` (one of `LAYOUTS`).

    `fractions` split people without their own split (career-code only: the others keep no split).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUT_NAMES)}")
    LAYOUTS[layout].write(records, url, fractions, storage_options)
