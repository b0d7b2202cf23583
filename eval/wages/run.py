"""The wage use cases, from a package's URL: the table and the gap from one read of the dataset.

    wage_models   `career wages`: the wage table, the wage gap, or both (`career run`'s wages
                  step), from one stream of the dataset through the model
    run_payload   `career run`'s wages.json: the table, and the gap when asked for; a survey
                  without wages gets a note instead ("skipped"), a gap that cannot be estimated
                  one too ("gap_skipped")

The table reads every split with the whole representation; the gap reads its splits with the
group's covariate hidden and the model's likelihood ratio of the history. Together, one pass
gives both representations (`person_years(..., also_hide=...)`), each computed exactly as the
table or the gap alone computes it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from data_shards import storage
from data_shards.dataset import Dataset, load_dataset
from data_shards.errors import StructuralError
from data_shards.schema import SPLITS
from eval.metrics import DEFAULT_REPLICATES
from eval.wages.features import (
    DEFAULT_POOLING,
    DEFAULT_TOKENS_PER_BATCH,
    PersonYears,
    check_representation,
    person_years,
)
from eval.wages.gap import DEFAULT_FOLDS, GapGroups, gap_groups, gap_of
from eval.wages.table import table_of
from trainer.package import LoadedModel, load_model

Gap = tuple[str, str | None, str | None]  # (field, group, reference): None for the defaults


def _gap_rows(rows: PersonYears, splits: tuple[str, ...]) -> PersonYears:
    """The gap's person-years out of a read of every split: the rows of `splits` in that order
    (as reading those splits alone gives them), with the representation the gap reads."""
    index = np.concatenate([np.flatnonzero(rows.split == s) for s in splits])
    hidden = dataclasses.replace(
        rows,
        represent=rows.represent_hidden,
        represent_hidden=None,
        counts={s: rows.counts[s] for s in splits},
    )
    return hidden.take(index)


def _read(
    loaded: LoadedModel,
    data: str,
    dataset: Dataset,
    *,
    table: bool,
    groups: GapGroups | None,
    gap_splits: tuple[str, ...],
    pooling: str,
    tokens_per_batch: int,
    storage_options,
    on_progress: Callable[[int, int], None] | None,
) -> tuple[PersonYears | None, PersonYears | None]:
    """(the table's person-years, the gap's), each None when not asked for, from one read."""
    common = dict(
        storage_options=storage_options,
        pooling=pooling,
        tokens_per_batch=tokens_per_batch,
        dataset=dataset,
        on_progress=on_progress,
    )
    if groups is None:
        return person_years(loaded, data, SPLITS, **common), None
    hide = (groups.by,)
    if not table:
        return None, person_years(
            loaded, data, gap_splits, hide=hide, contrast=groups.contrast, **common
        )
    rows = person_years(loaded, data, SPLITS, also_hide=hide, contrast=groups.contrast, **common)
    return rows, _gap_rows(rows, gap_splits)


def wage_models(
    package: str,
    data: str,
    *,
    table: bool = True,
    gap: Gap | None = None,
    gap_splits: tuple[str, ...] = SPLITS,
    folds: int = DEFAULT_FOLDS,
    bootstrap: int = DEFAULT_REPLICATES,
    seed: int = 0,
    pooling: str = DEFAULT_POOLING,
    tokens_per_batch: int = DEFAULT_TOKENS_PER_BATCH,
    threads: int | None = None,
    storage_options=None,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """{"table": `wage_table`'s result or None, "gap": `wage_gap`'s of `gap` (field, group,
    reference) on `gap_splits`, or None} of the package at `package` on the dataset at `data`,
    from one read of the dataset. `threads`: torch's threads (default: torch's)."""
    if not table and gap is None:
        raise ValueError("ask for the wage table, the wage gap, or both")
    if gap is not None and folds < 2:
        raise ValueError(f"cross-fitting needs at least 2 folds, not {folds}")
    if threads:
        torch.set_num_threads(threads)
    loaded = load_model(package, storage_options)
    dataset = load_dataset(data, storage_options)
    check_representation(loaded, storage.redact(data))
    groups = None if gap is None else gap_groups(loaded, dataset, *gap)
    table_rows, gap_rows = _read(
        loaded,
        data,
        dataset,
        table=table,
        groups=groups,
        gap_splits=gap_splits,
        pooling=pooling,
        tokens_per_batch=tokens_per_batch,
        storage_options=storage_options,
        on_progress=on_progress,
    )
    result: dict[str, Any] = {"table": None, "gap": None}
    if table_rows is not None:
        result["table"] = table_of(
            table_rows, dataset, loaded.kind, data, bootstrap=bootstrap, seed=seed, pooling=pooling
        )
    if gap_rows is not None and groups is not None:
        result["gap"] = gap_of(
            gap_rows,
            dataset,
            groups,
            data,
            splits=gap_splits,
            folds=folds,
            seed=seed,
            pooling=pooling,
        )
    return result


def run_payload(
    package: str,
    data: str,
    *,
    gap_by: str | None,
    folds: int,
    bootstrap: int,
    storage_options=None,
) -> dict[str, Any]:
    """`career run`'s wages.json of the fine-tuned package at `package` (see the module):
    {"model": "finetuned", "table" or "skipped", and with `gap_by` "gap" or "gap_skipped"}."""
    loaded = load_model(package, storage_options)
    payload: dict[str, Any] = {"model": "finetuned"}
    try:
        dataset = load_dataset(data, storage_options)
        check_representation(loaded, storage.redact(data))
    except StructuralError as error:  # a survey without wages: the step is done all the same
        payload["skipped"] = str(error)
        return payload
    groups = gap_error = None
    if gap_by:
        try:
            if folds < 2:
                raise ValueError(f"cross-fitting needs at least 2 folds, not {folds}")
            groups = gap_groups(loaded, dataset, gap_by, None, None)
        except (StructuralError, ValueError) as error:
            gap_error = error
    try:
        table_rows, gap_rows = _read(
            loaded,
            data,
            dataset,
            table=True,
            groups=groups,
            gap_splits=SPLITS,
            pooling=DEFAULT_POOLING,
            tokens_per_batch=DEFAULT_TOKENS_PER_BATCH,
            storage_options=storage_options,
            on_progress=None,
        )
        assert table_rows is not None
        payload["table"] = table_of(table_rows, dataset, loaded.kind, data, bootstrap=bootstrap)
    except StructuralError as error:
        payload["skipped"] = str(error)
        return payload
    if not gap_by:
        return payload
    if gap_error is not None:
        payload["gap_skipped"] = str(gap_error)
        return payload
    try:
        assert groups is not None and gap_rows is not None
        payload["gap"] = gap_of(gap_rows, dataset, groups, data, folds=folds)
    except (StructuralError, ValueError) as error:
        payload["gap_skipped"] = str(error)
    return payload
