"""What a user wants to know about a corpus before training on it (`career inspect`)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_shards.quarantine import Quarantine, ReadReport
from data_shards.schema import NON_EMPLOYMENT_STATES
from data_shards.splits import resolve_splits
from data_shards.vocab import build_vocabulary, count_tokens

#: Categorical fields whose values `career inspect` lists with their counts: a label spelled two
#: ways, or one the user did not expect, shows up here before it becomes a token.
LABEL_FIELDS = ("education", "location", "gender", "ethnicity")
#: The most values listed per field; the rest are counted under "(N more values)".
MAX_LABELS = 30


def label_counts(column: pa.ChunkedArray) -> dict[str, int]:
    """Count per value of a categorical column (per job-year for a list column), most common
    first; missing values are counted as "(missing)"; empty for a field with no values at all."""
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        column = pc.list_flatten(column)
    if len(column) == 0:
        return {}
    counted = pc.value_counts(column).to_pylist()
    if all(c["values"] is None for c in counted):
        return {}  # a field the input does not have
    pairs = sorted(
        (
            ("(missing)" if c["values"] is None else str(c["values"]), int(c["counts"]))
            for c in counted
        ),
        key=lambda pair: (-pair[1], pair[0]),
    )
    shown = dict(pairs[:MAX_LABELS])
    if len(pairs) > MAX_LABELS:
        shown[f"({len(pairs) - MAX_LABELS} more values)"] = sum(c for _, c in pairs[MAX_LABELS:])
    return shown


def summarize(
    table: pa.Table, report: ReadReport | None = None, quarantine: Quarantine | None = None
) -> dict[str, Any]:
    """Counts, coverage, vocabulary sizes, stay/move and non-employment shares, quarantine reasons."""
    jobs = pc.list_flatten(table.column("jobs")).to_numpy(zero_copy_only=False)
    years = pc.list_flatten(table.column("years")).to_numpy(zero_copy_only=False)
    parents = pc.list_parent_indices(table.column("jobs")).to_numpy(zero_copy_only=False)
    same_person = parents[1:] == parents[:-1]
    stays = int(np.sum((jobs[1:] == jobs[:-1]) & same_person))
    transitions = int(np.sum(same_person))
    gaps = years[1:][same_person] - years[:-1][same_person]
    vocab = build_vocabulary(count_tokens(table))
    summary: dict[str, Any] = {
        "people": table.num_rows,
        "job_years": int(len(jobs)),
        "mean_years_per_person": round(len(jobs) / table.num_rows, 3) if table.num_rows else 0.0,
        "years_covered": [int(years.min()), int(years.max())] if len(years) else None,
        "vocabulary_sizes": {
            name: len(tokens) - 3 for name, tokens in vocab.fields.items() if name != "year"
        },
        "distinct_years": int(len(np.unique(years))),
        "stay_share": round(stays / transitions, 4) if transitions else None,
        "move_share": round(1 - stays / transitions, 4) if transitions else None,
        "non_consecutive_share": round(float(np.mean(gaps > 1)), 4) if len(gaps) else None,
        "non_employment_shares": {
            state: round(float(np.mean(jobs == state)), 4) if len(jobs) else 0.0
            for state in NON_EMPLOYMENT_STATES
        },
        "people_per_split": {},
    }
    if table.num_rows:
        splits, counts = np.unique(
            resolve_splits(table).to_numpy(zero_copy_only=False).astype(str), return_counts=True
        )
        summary["people_per_split"] = {str(s): int(c) for s, c in zip(splits, counts, strict=True)}
    oracle = table.column("oracle_logp")
    if table.num_rows and oracle.null_count == 0:
        values = pc.list_flatten(oracle).to_numpy(zero_copy_only=False)
        if len(values) and not np.isnan(values).any():
            summary["oracle_perplexity"] = round(
                math.exp(-float(np.mean(values.astype(np.float64)))), 4
            )
    for name in LABEL_FIELDS:
        counts = label_counts(table.column(name)) if name in table.column_names else {}
        if counts:
            summary[f"{name}_labels"] = counts
    if report is not None:
        summary["read"] = report.as_dict()
    if quarantine is not None:
        summary["quarantined"] = len(quarantine)
        summary["quarantined_people"] = sum(1 for e in quarantine if e.kind == "person")
        summary["quarantined_rows"] = sum(1 for e in quarantine if e.kind == "row")
        summary["top_quarantine_reasons"] = [
            {"reason": r, "count": c} for r, c in quarantine.top_reasons()
        ]
    return summary
