"""The wage table: does CAREER's representation of a person's history predict wages better than
the Mincer regression?

    (a) mincer    log wage ~ Mincer terms (`eval.wages.design`), least squares
    (b) history   the same plus the representation of the history before that year
                  (`eval.wages.features`), ridge on the representation's standardised columns
                  (the Mincer terms unpenalised), the penalty chosen on the valid split

Both are fitted on the train split's person-years and judged on the test split's: R^2 (one minus
squared error over the squared deviations from the test mean) and mean squared error, with 95%
person-bootstrap intervals (a person's years resampled together, `eval.metrics.resampled_sums`),
and the paired difference (b) - (a) on the same draws. A (c), a wage head fine-tuned with the
model, is not part of this table.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from data_shards import storage
from data_shards.dataset import Dataset, load_dataset
from data_shards.errors import StructuralError
from data_shards.manifest import MANIFEST
from data_shards.schema import SPLITS
from eval.metrics import DEFAULT_REPLICATES, LEVEL, Estimate, resampled_sums
from eval.wages.design import MincerDesign
from eval.wages.features import (
    DEFAULT_POOLING,
    DEFAULT_TOKENS_PER_BATCH,
    PersonYears,
    check_representation,
    person_years,
)
from eval.wages.linear import (
    PENALTIES,
    Features,
    Gram,
    grams,
    predict,
    ridge_penalty,
    solve,
    squared_error,
)
from trainer.package import LoadedModel

MODELS = ("mincer", "history")


def json_ready(value: Any) -> Any:
    """`value` with every non-finite float (JSON has none) written as None, numpy scalars as
    Python numbers."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def check_splits_have_wages(rows: PersonYears, dataset: Dataset, splits=SPLITS) -> None:
    """Each split needs person-years with a wage: train to fit, valid to choose, test to judge."""
    for split in splits:
        if not (rows.split == split).any():
            raise StructuralError(
                f"the {split} split has no person-year with a log wage (all "
                f"{rows.counts[split].job_years:,} of its job-years lack one)",
                path=storage.redact(storage.join(dataset.url, MANIFEST)),
            )


def _mincer_part(gram: Gram, width: int) -> Gram:
    return Gram(gram.xx[:width, :width], gram.xy[:width], gram.yy, gram.ysum, gram.n)


def _r2(sse: np.ndarray, ysum: np.ndarray, yy: np.ndarray, n: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return 1.0 - sse / (yy - ysum**2 / n)


def _estimate(
    statistic: Callable[[np.ndarray], np.ndarray], sums: np.ndarray, draws: np.ndarray
) -> dict[str, float | None]:
    value = float(statistic(sums.sum(0, keepdims=True))[0])
    if not len(draws):
        return Estimate(value).to_dict()
    replicated = statistic(draws)
    replicated = replicated[np.isfinite(replicated)]
    alpha = (1 - LEVEL) / 2
    low, high = np.quantile(replicated, [alpha, 1 - alpha]) if len(replicated) else (None, None)
    return Estimate(value, low, high).to_dict()


def judge_on_test(
    person: np.ndarray, y: np.ndarray, fitted: np.ndarray, bootstrap: int, seed: int
) -> dict[str, Any]:
    """R^2 and MSE of each fitted column (mincer, history) and their paired differences, with
    person-bootstrap intervals (people sorted by id, so the draws depend on the people only)."""
    people, who = np.unique(person, return_inverse=True)
    columns = [(y - fitted[:, 0]) ** 2, (y - fitted[:, 1]) ** 2, y, y**2, np.ones_like(y)]
    sums = np.stack([np.bincount(who, weights=c, minlength=len(people)) for c in columns], 1)
    draws = resampled_sums(sums, bootstrap, seed)
    SSE_M, SSE_H, SY, SYY, N = range(5)

    def r2(k: int) -> Callable[[np.ndarray], np.ndarray]:
        return lambda s: _r2(s[:, k], s[:, SY], s[:, SYY], s[:, N])

    def mse(k: int) -> Callable[[np.ndarray], np.ndarray]:
        return lambda s: s[:, k] / s[:, N]

    models = {
        name: {"r2": _estimate(r2(k), sums, draws), "mse": _estimate(mse(k), sums, draws)}
        for name, k in (("mincer", SSE_M), ("history", SSE_H))
    }
    difference = {
        "r2": _estimate(lambda s: r2(SSE_H)(s) - r2(SSE_M)(s), sums, draws),
        "mse": _estimate(lambda s: mse(SSE_H)(s) - mse(SSE_M)(s), sums, draws),
    }
    return {"models": models, "difference": difference, "people": len(people)}


def wage_table(
    loaded: LoadedModel,
    data_url: str,
    storage_options=None,
    *,
    penalties: tuple[float, ...] = PENALTIES,
    bootstrap: int = DEFAULT_REPLICATES,
    seed: int = 0,
    pooling: str = DEFAULT_POOLING,
    tokens_per_batch: int = DEFAULT_TOKENS_PER_BATCH,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """The wage table of one package on one dataset (see the module), as a JSON-ready dict:

        dataset        {url, manifest_sha256}
        package        {kind, width, pooling}: the model kind, the representation's columns, and
                       how they are made (`eval.wages.features.POOLINGS`)
        person_years   {split: {people, people_with_wage, job_years, person_years_with_wage,
                                person_years_without_wage}}
        experience     which experience the Mincer terms use (potential or observed)
        columns        {mincer: {term: columns}, representation: width}
        penalty        {chosen, valid_mse: {penalty: MSE}}: the ridge strength per row
        models         {mincer | history: {label, valid: {r2, mse},
                                           test: {r2: EST, mse: EST}}}
        difference     {r2: EST, mse: EST}: history minus mincer on the test people, paired
        bootstrap      {replicates, seed, level, unit: "person", test_people}

    EST is {value, low, high} (a 95% person-bootstrap interval; low/high null without one).
    """
    dataset = load_dataset(data_url, storage_options)
    check_representation(loaded, storage.redact(data_url))
    rows = person_years(
        loaded,
        data_url,
        SPLITS,
        storage_options=storage_options,
        pooling=pooling,
        tokens_per_batch=tokens_per_batch,
        dataset=dataset,
        on_progress=on_progress,
    )
    return table_of(
        rows,
        dataset,
        loaded.kind,
        data_url,
        penalties=penalties,
        bootstrap=bootstrap,
        seed=seed,
        pooling=pooling,
    )


def table_of(
    rows: PersonYears,
    dataset: Dataset,
    kind: str,
    data_url: str,
    *,
    penalties: tuple[float, ...] = PENALTIES,
    bootstrap: int = DEFAULT_REPLICATES,
    seed: int = 0,
    pooling: str = DEFAULT_POOLING,
) -> dict[str, Any]:
    """`wage_table`'s result from the person-years of every split, already read (`rows`: with
    the representation of a package of `kind`, pooled by `pooling`)."""
    check_splits_have_wages(rows, dataset)
    train = rows.split == "train"
    design = MincerDesign.fit(rows, train, dataset.vocab)
    features = Features(design, rows.represent, train)
    groups = np.array([SPLITS.index(s) for s in rows.split])
    g_train, g_valid, _ = grams(
        features, rows.log_wage[:, None], groups, len(SPLITS), features.width
    )
    width = design.width
    mincer = np.zeros((features.width, 1))
    mincer[:width] = solve(_mincer_part(g_train, width))
    valid_mse = {}
    fits = {}
    for strength in penalties:
        fits[strength] = solve(g_train, ridge_penalty(features, strength, g_train.n))
        valid_mse[strength] = float(squared_error(g_valid, fits[strength])[0] / g_valid.n)
    chosen = min(penalties, key=valid_mse.get)
    beta = np.hstack([mincer, fits[chosen]])
    valid = {
        name: float(squared_error(g_valid, beta[:, [k]])[0] / g_valid.n)
        for k, name in enumerate(MODELS)
    }
    valid_var = g_valid.yy[0] / g_valid.n - (g_valid.ysum[0] / g_valid.n) ** 2
    test = np.flatnonzero(rows.split == "test")
    fitted = predict(features, test, beta)
    judged = judge_on_test(rows.person[test], rows.log_wage[test], fitted, bootstrap, seed)
    labels = {"mincer": "Mincer", "history": f"Mincer + {kind} representation"}
    return json_ready(
        {
            "dataset": {"url": storage.redact(data_url), "manifest_sha256": dataset.manifest_sha},
            "package": {
                "kind": kind,
                "width": int(rows.represent.shape[1]),
                "pooling": pooling,
            },
            "person_years": {split: c.to_dict() for split, c in rows.counts.items()},
            "experience": design.experience_kind,
            "columns": {"mincer": design.columns(), "representation": int(rows.represent.shape[1])},
            "penalty": {"chosen": chosen, "valid_mse": {f"{k:g}": v for k, v in valid_mse.items()}},
            "models": {
                name: {
                    "label": labels[name],
                    "valid": {"r2": 1.0 - valid[name] / valid_var, "mse": valid[name]},
                    "test": judged["models"][name],
                }
                for name in MODELS
            },
            "difference": judged["difference"],
            "bootstrap": {
                "replicates": bootstrap,
                "seed": seed,
                "level": LEVEL,
                "unit": "person",
                "test_people": judged["people"],
            },
        }
    )
