"""Scores of a forecast, and every forecast metric computed from them (never from a live model).

A forecast's scores table has the columns of a scores table (`eval.scores`), one row per scored
person and future year, so perplexity, its person-bootstrap interval and the paired difference of
two models (`eval.metrics`) read it unchanged:

    person_id, position, year          the future year (position: its place in the whole sequence)
    prev_job, target_job               the realised jobs of the year before and of that year
    logp                               log of the path-averaged probability of the realised job
    p_stay                             the forecast probability of the realised previous job
    rank                               the realised job's rank in the forecast distribution
    step                               1 for the first year after the cutoff, 2 for the next, ...
    p_<state>                          the forecast probability of each non-employment state
    weight                             the person's survey weight, when the data has them

Beside it, the per-path rates (`path_rates`): for each calendar year and state, the share of the
year's scored people in that state along each sampled path. Their spread over paths is the band
of the forecast rate (what the population could look like), which path-averaged probabilities
alone cannot give.

Binary scores for a state s: the negative log-likelihood of "in s or not" under the forecast
probability, and the ROC AUC of that probability (Mann-Whitney: the chance a person in s gets a
higher probability than one who is not, ties counted half).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa

from data_shards.vocab import BOS_ID, Vocabulary
from eval import metrics
from eval.forecast.protocol import ForecastPeople
from eval.forecast.sample import Forecast

#: Probabilities are floored here before a log (a model may give a realised job almost nothing).
FLOOR = 1e-12
#: The band of the forecast rates: this share of paths lies inside it.
BAND = 0.95


def forecast_scores(
    forecast: Forecast, people: ForecastPeople, vocab: Vocabulary, states: dict[str, int]
) -> pa.Table:
    """The scores table of a forecast (see the module); rows sorted by person, then position."""
    steps = people.steps.numpy()
    rows, cols = np.nonzero(steps)
    realised = people.realised.numpy()[rows, cols]
    previous = people.previous.numpy()[rows, cols]
    probs = forecast.probs.numpy()
    at = probs[rows, cols]  # (tokens, V)
    target_p = at[np.arange(len(rows)), realised]
    rank = (at > target_p[:, None]).sum(1) + 1
    jobs = pa.array(vocab.fields["job"], pa.string())
    columns: dict[str, pa.Array] = {
        "person_id": pa.array(np.asarray(people.person_id, dtype=object)[rows], pa.string()),
        "position": pa.array(people.positions[rows, cols].astype(np.int32)),
        "year": pa.array(people.years[rows, cols].astype(np.int32)),
        "prev_job": jobs.take(pa.array(previous, mask=previous <= BOS_ID)),
        "target_job": jobs.take(pa.array(realised)),
        "logp": pa.array(np.log(np.maximum(target_p, FLOOR)).astype(np.float64)),
        "p_stay": pa.array(at[np.arange(len(rows)), previous].astype(np.float64)),
        "rank": pa.array(rank.astype(np.int32)),
        "step": pa.array((cols + 1).astype(np.int32)),
    }
    for state, job_id in states.items():
        columns[f"p_{state}"] = pa.array(at[:, job_id].astype(np.float64))
    if people.weight is not None:
        columns["weight"] = pa.array(people.weight[rows].astype(np.float64))
    table = pa.table(columns)
    return table.sort_by([("person_id", "ascending"), ("position", "ascending")])


def path_rates(
    forecast: Forecast, people: ForecastPeople, states: dict[str, int]
) -> dict[str, dict[str, list[float]]]:
    """Per state and calendar year, the rate along each path: {state: {year: [P rates]}}."""
    if forecast.paths is None:
        raise ValueError("the forecast kept no paths (keep_paths=False): no rate bands")
    paths = forecast.paths.numpy()  # (N, P, S)
    out: dict[str, dict[str, list[float]]] = {state: {} for state in states}
    for year in sorted(set(people.years[people.steps.numpy()].tolist())):
        who, step = np.nonzero((people.years == year) & people.steps.numpy())
        drawn = paths[who, :, step]  # (people that year, P)
        for state, job_id in states.items():
            out[state][str(year)] = (drawn == job_id).mean(0).round(6).tolist()
    return out


# ----------------------------------------------------------------------------- metrics
def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of `scores` for binary `labels` (Mann-Whitney U with average ranks for ties);
    NaN when one class is absent."""
    labels = np.asarray(labels, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if not positives or not negatives:
        return math.nan
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    start = 0
    for end in np.r_[np.nonzero(np.diff(sorted_scores))[0] + 1, len(scores)]:
        ranks[order[start:end]] = (start + end + 1) / 2  # average 1-based rank of the tie group
        start = end
    u = ranks[labels].sum() - positives * (positives + 1) / 2
    return float(u / (positives * negatives))


def binary_nll(labels: np.ndarray, p: np.ndarray) -> float:
    """Mean negative log-likelihood of binary `labels` under probabilities `p`."""
    p = np.clip(np.asarray(p, dtype=np.float64), FLOOR, 1 - FLOOR)
    y = np.asarray(labels, dtype=bool)
    return float(-np.mean(np.where(y, np.log(p), np.log1p(-p)))) if len(y) else math.nan


def _band(rates: list[float]) -> tuple[float, float]:
    low, high = np.quantile(np.asarray(rates), [(1 - BAND) / 2, 1 - (1 - BAND) / 2])
    return float(low), float(high)


def summarize(
    scores: pa.Table,
    rates: dict[str, dict[str, list[float]]],
    *,
    bootstrap: int = metrics.DEFAULT_REPLICATES,
    seed: int = metrics.DEFAULT_SEED,
) -> dict[str, Any]:
    """Every forecast metric of one model (JSON-ready; NaN written as null):

    {"tokens", "people", "perplexity": Estimate, "nll",
     "by_year": {year: {"tokens", "nll", "perplexity"}},
     "states": {state: {"nll", "auc", "by_year": {year: {"nll", "auc", "realised", "forecast",
                                                         "band": [low, high]}}}}}
    """
    year = scores.column("year").to_numpy()
    target = scores.column("target_job").to_numpy(zero_copy_only=False).astype(str)
    logp = scores.column("logp").to_numpy()
    overall = metrics.perplexity(scores, bootstrap=bootstrap, seed=seed)
    out: dict[str, Any] = {
        "tokens": scores.num_rows,
        "people": len(set(scores.column("person_id").to_pylist())),
        "perplexity": overall.to_dict(),
        "nll": metrics._finite(-float(logp.mean())) if len(logp) else None,
        "by_year": {},
        "states": {},
    }
    for y in sorted(set(year.tolist())):
        mask = year == y
        nll = -float(logp[mask].mean())
        out["by_year"][str(y)] = {
            "tokens": int(mask.sum()),
            "nll": nll,
            "perplexity": math.exp(nll),
        }
    for state in rates:
        p = scores.column(f"p_{state}").to_numpy()
        labels = target == state
        entry: dict[str, Any] = {
            "nll": metrics._finite(binary_nll(labels, p)),
            "auc": metrics._finite(auc(labels, p)),
            "by_year": {},
        }
        for y in sorted(set(year.tolist())):
            mask = year == y
            path = rates[state].get(str(y), [])
            low, high = _band(path) if path else (math.nan, math.nan)
            entry["by_year"][str(y)] = {
                "nll": metrics._finite(binary_nll(labels[mask], p[mask])),
                "auc": metrics._finite(auc(labels[mask], p[mask])),
                "realised": float(labels[mask].mean()),
                "forecast": float(p[mask].mean()),
                "band": [metrics._finite(low), metrics._finite(high)],
            }
        out["states"][state] = entry
    return out
