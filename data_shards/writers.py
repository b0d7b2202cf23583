"""Write record tables back out as a career-code folder or a person-year Parquet panel.

Both writers are atomic at the level a reader sees: the career-code folder is written beside its
destination and moved into place; a Parquet file is one object written at once.
"""

from __future__ import annotations

import io
import math
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_shards import storage
from data_shards.schema import SPLITS
from data_shards.splits import DEFAULT_FRACTIONS, resolve_splits

_TIME_VARYING_FILES = {"year": "years", "job": "jobs", "education": "education",
                       "log_wage": "log_wage", "oracle_logp": "oracle_logp"}  # fmt: skip
_STATIC_FILES = {"id": "person_id", "location": "location", "gender": "gender",
                 "ethnicity": "ethnicity", "birth_year": "birth_year", "weight": "weight"}  # fmt: skip


def _has_values(table: pa.Table, column: str) -> bool:
    return table.column(column).null_count < table.num_rows


def _token(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    if isinstance(value, float):
        return repr(float(np.float32(value)))
    text = str(value)
    if not text or any(ch.isspace() for ch in text):
        raise ValueError(f"value {text!r} cannot be written to the career-code layout (whitespace)")
    return text


def career_code_files(table: pa.Table, fractions=DEFAULT_FRACTIONS) -> dict[str, bytes]:
    """File name -> contents of the career-code layout of `table`."""
    splits = resolve_splits(table, fractions).to_numpy(zero_copy_only=False)
    present_tv = [f for f, c in _TIME_VARYING_FILES.items() if _has_values(table, c)]
    present_static = [f for f, c in _STATIC_FILES.items() if _has_values(table, c)]
    files: dict[str, bytes] = {}
    for split in SPLITS:
        part = table.filter(pa.array(splits == split))
        for name in present_tv:
            column = table.column(_TIME_VARYING_FILES[name])
            if column.null_count and name not in ("log_wage", "oracle_logp"):
                raise ValueError(f"column {column!r} is null for some people: not representable")
            rows = part.column(_TIME_VARYING_FILES[name]).to_pylist()
            lines = [" ".join(_token(v) for v in (row or [])) for row in rows]
            files[f"{split}.{name}"] = "".join(line + "\n" for line in lines).encode()
        for name in present_static:
            values = part.column(_STATIC_FILES[name]).to_pylist()
            lines = ["" if v is None else _token(v) for v in values]
            files[f"{split}.{name}"] = "".join(line + "\n" for line in lines).encode()
    return files


def write_career_code(
    table: pa.Table, url: str, fractions=DEFAULT_FRACTIONS, storage_options=None
) -> list[str]:
    """Write `table` as a career-code folder at `url` (replacing it). Returns the file names."""
    files = career_code_files(table, fractions)
    staging = url.rstrip("/") + f".partial-{uuid.uuid4().hex[:12]}"
    try:
        for name, data in files.items():
            storage.write_bytes_atomic(storage.join(staging, name), data, storage_options)
        storage.move_tree(staging, url, storage_options)
    finally:
        storage.remove_tree(staging, storage_options)
    return sorted(files)


def to_panel(table: pa.Table) -> pa.Table:
    """One row per person-year, with our own column names (what `read_panel` maps by default)."""
    parents = pc.list_parent_indices(table.column("years"))
    columns = {
        "person_id": table.column("person_id").take(parents),
        "year": pc.list_flatten(table.column("years")),
        "job": pc.list_flatten(table.column("jobs")),
    }
    for name in ("education", "log_wage", "oracle_logp"):
        if _has_values(table, name):
            column = table.column(name)
            lengths = pc.list_value_length(column).fill_null(0)
            if pc.any(pc.not_equal(lengths, pc.list_value_length(table.column("years")))).as_py():
                raise ValueError(
                    f"column {name!r} does not have one value per year for every person"
                )
            columns[name] = pc.list_flatten(column)
    for name in ("location", "gender", "ethnicity", "birth_year", "weight", "split"):
        if _has_values(table, name):
            columns[name] = table.column(name).take(parents)
    return pa.table(columns)


def write_panel(table: pa.Table, url: str, storage_options=None) -> int:
    """Write `table` as a Parquet person-year panel at `url`; returns the number of rows."""
    panel = to_panel(table)
    buffer = io.BytesIO()
    pq.write_table(panel, buffer, compression="zstd")
    storage.write_bytes_atomic(url, buffer.getvalue(), storage_options)
    return panel.num_rows


def resume_json_lines(table: pa.Table) -> list[str]:
    """Each record as a resume: consecutive years in the same job become one spell.

    Spells run from January of their first year to December of their last, so reading the lines
    back with `read_resume_jsonl` gives the same years and jobs; each education level's completion
    is the first observed year it appears, which gives back the same per-year education.
    """
    import json

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


def write_resume_jsonl(table: pa.Table, url: str, storage_options=None) -> int:
    lines = resume_json_lines(table)
    storage.write_bytes_atomic(
        url, "".join(line + "\n" for line in lines).encode(), storage_options
    )
    return len(lines)


def write_panel_csv(table: pa.Table, url: str, storage_options=None) -> int:
    """Write `table` as a CSV person-year panel at `url`; returns the number of rows."""
    import pyarrow.csv as pacsv

    panel = to_panel(table)
    buffer = io.BytesIO()
    pacsv.write_csv(panel, buffer)
    storage.write_bytes_atomic(url, buffer.getvalue(), storage_options)
    return panel.num_rows
