"""A forecasting cutoff as a property of the dataset (`career shard --until YEAR`).

The paper's forecasting protocol trains only on years up to a cutoff (2014): the train and
validation people keep their years <= the cutoff, and people with no such year are dropped; the
test people keep their whole sequences, because their years after the cutoff are what a forecast
is scored against. Doing this when the dataset is cut (and recording the cutoff and what it
removed in the manifest) keeps it out of training code, where it would be a hidden filter: a model
trained on such a dataset cannot have seen a post-cutoff year, and anyone can check which cutoff a
dataset has.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_shards.schema import TIME_VARYING_FIELDS

#: The splits a cutoff shortens; the test split keeps its future for scoring.
CUT_SPLITS = ("train", "valid")


def cut_after(table: pa.Table, until: int) -> tuple[pa.Table, int, int]:
    """`table` with every person's years after `until` removed, and people left with no year
    dropped. Returns (table, people dropped, job-years removed, those of dropped people included).

    Years are strictly increasing in a record, so what is kept is a prefix of each list.
    """
    if not table.num_rows:
        return table, 0, 0
    years = table.column("years").combine_chunks()
    offsets = years.offsets.to_numpy()
    flat = years.values.to_numpy(zero_copy_only=False)
    keep_value = flat <= until
    kept_per_person = np.add.reduceat(keep_value, offsets[:-1]) if len(flat) else np.zeros(0)
    kept_per_person = np.where(np.diff(offsets) > 0, kept_per_person, 0).astype(np.int64)
    removed = int(len(flat) - keep_value.sum())
    if not removed:
        return table, 0, 0
    new_offsets = pa.array(np.concatenate([[0], np.cumsum(kept_per_person)]).astype(np.int32))
    take = pa.array(np.nonzero(keep_value)[0])
    columns = {}
    for name in table.column_names:
        column = table.column(name)
        if name in TIME_VARYING_FIELDS and pa.types.is_list(column.type):
            combined = column.combine_chunks()
            if combined.null_count == len(combined):  # a field nobody has: stays all null
                columns[name] = column
                continue
            if combined.null_count:  # a null list (a field the person lacks) stays null
                valid = combined.is_valid()
                values = _prefix_values(combined, keep_value, offsets)
                cut = pa.ListArray.from_arrays(new_offsets, values, mask=pc.invert(valid))
            else:
                cut = pa.ListArray.from_arrays(new_offsets, combined.flatten().take(take))
            columns[name] = cut.cast(column.type)
        else:
            columns[name] = column
    shortened = pa.table(columns, schema=table.schema)
    people = pa.array(kept_per_person > 0)
    return shortened.filter(people), int((kept_per_person == 0).sum()), removed


def _prefix_values(lists: pa.ListArray, keep_value: np.ndarray, year_offsets: np.ndarray):
    """The kept values of a list column with nulls, whose non-null lists align with `years`."""
    parts = []
    for row in range(len(lists)):
        start, stop = year_offsets[row], year_offsets[row + 1]
        kept = int(keep_value[start:stop].sum())
        if lists[row].is_valid:
            parts.append(lists[row].values.slice(0, kept))
        else:
            parts.append(pa.nulls(kept, lists.type.value_type))
    return pa.concat_arrays(parts) if parts else pa.array([], lists.type.value_type)


def year_span(table: pa.Table) -> tuple[int, int] | None:
    """(first, last) calendar year in a record table (None when it has no years)."""
    years = pc.list_flatten(table.column("years"))
    if not len(years):
        return None
    bounds = pc.min_max(years)
    return int(bounds["min"].as_py()), int(bounds["max"].as_py())
