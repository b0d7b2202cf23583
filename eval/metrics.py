"""Every metric, computed from a scores table (`eval.scores`), never from a live model.

Perplexity is the paper's: exp of the mean negative log-likelihood over every job-year token of
the split, a person's first year included, no end-of-sequence token, padding ignored (a scores
table holds only real targets). It is broken down by token kind:

    first_year            a person's first observed year (no previous job)
    stay / move           the target is / is not last observation's job
    consecutive           the year right after the last observation (gap 1)
    non_consecutive       a gap of more than one year since the last observation
    stay_consecutive, stay_non_consecutive      the paper's consecutive and non-consecutive repeats

Accuracy is top-1 and top-5 (the target's rank <= k). Calibration is that of P(stay) over the
tokens that have a previous job: reliability bins (equal width), the expected calibration error
(sum over bins of |predicted - observed| weighted by the bin's share) and the Brier score.

Intervals: 95% percentile intervals of a person bootstrap (people resampled with replacement,
their tokens kept together) with a fixed seed. Every statistic here is a function of per-person
sums, so one resampling is a (replicates x people) matrix of counts times a (people x sums)
matrix. The draws depend only on the seed, the number of replicates and the number of people
(sorted by id), so two models scored on the same people are resampled alike: the paired
difference of their perplexities uses the same replicates, and a model against itself gives
exactly [0, 0].

Weights: with `weighted=True` every sum is weighted by the person's `weight` column (a survey's
sampling weight); a table without one counts every person once.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from eval.scores import check_scores

log = logging.getLogger(__name__)

LEVEL = 0.95
DEFAULT_REPLICATES = 1000
DEFAULT_SEED = 0
DEFAULT_BINS = 10
TOP_K = (1, 5)
SUBSETS = (
    "all",
    "first_year",
    "stay",
    "move",
    "consecutive",
    "non_consecutive",
    "stay_consecutive",
    "stay_non_consecutive",
)
#: Elements of one block of bootstrap counts (replicates x people), to bound memory.
_BLOCK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class Estimate:
    """A statistic and its 95% person-bootstrap interval (None without a bootstrap)."""

    value: float
    low: float | None = None
    high: float | None = None

    def to_dict(self) -> dict[str, float | None]:
        return {"value": _finite(self.value), "low": _finite(self.low), "high": _finite(self.high)}


def _finite(value: float | None) -> float | None:
    """JSON has no NaN or infinity: they are written as null."""
    return None if value is None or not math.isfinite(value) else float(value)


# ----------------------------------------------------------------------------- tokens
@dataclass
class Tokens:
    """A scores table as numpy arrays, sorted by person then position."""

    people: np.ndarray  # (P,) person ids, sorted
    person: np.ndarray  # (N,) index into `people` of each token
    key: np.ndarray  # (N,) position of each token (with `person`: which token it is)
    target: np.ndarray  # (N,) target job
    year: np.ndarray  # (N,) float, NaN where unknown
    first: np.ndarray  # (N,) bool: a person's first year
    stay: np.ndarray  # (N,) bool: target equals the previous job
    gap: np.ndarray  # (N,) years since the previous observation (0 at the first year)
    rank: np.ndarray  # (N,)
    p_stay: np.ndarray  # (N,) NaN at the first year
    weight: np.ndarray  # (N,) the person's weight, or 1
    weighted: bool
    table: pa.Table
    order: np.ndarray  # (N,) the table's rows in this order

    def nll(self, column: str = "logp") -> np.ndarray:
        """Negative log-probabilities of `column`, in token order."""
        if column not in self.table.column_names:
            raise ValueError(f"the scores have no {column} column")
        return -_floats(self.table.column(column))[self.order]

    def subset(self, name: str) -> np.ndarray:
        later = ~self.first
        masks = {
            "all": np.ones(len(self.first), dtype=bool),
            "first_year": self.first,
            "stay": later & self.stay,
            "move": later & ~self.stay,
            "consecutive": later & (self.gap == 1),
            "non_consecutive": later & (self.gap > 1),
            "stay_consecutive": later & self.stay & (self.gap == 1),
            "stay_non_consecutive": later & self.stay & (self.gap > 1),
        }
        if name not in masks:
            raise ValueError(f"unknown token subset {name!r}; choose from {', '.join(SUBSETS)}")
        return masks[name]


def _floats(column: pa.ChunkedArray) -> np.ndarray:
    return column.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)


def tokens(scores: pa.Table, weighted: bool = False) -> Tokens:
    """The arrays every metric reads, from a scores table in any row order."""
    check_scores(scores)
    ids = scores.column("person_id").to_numpy(zero_copy_only=False).astype(str)
    position = scores.column("position").to_numpy(zero_copy_only=False).astype(np.int64)
    people, person = np.unique(ids, return_inverse=True)
    order = np.lexsort((position, person))
    person, position = person[order], position[order]
    if len(person) > 1 and np.any((np.diff(person) == 0) & (np.diff(position) == 0)):
        raise ValueError("the scores hold a person's year twice")
    first = position == 0
    year = _floats(scores.column("year"))[order]
    previous = np.r_[np.nan, year[:-1]]
    gap = np.where(first, 0.0, year - previous)
    target = scores.column("target_job").to_numpy(zero_copy_only=False).astype(object)[order]
    prev = scores.column("prev_job").to_numpy(zero_copy_only=False).astype(object)[order]
    has_weight = "weight" in scores.column_names
    if weighted and not has_weight:
        log.warning("weighted metrics asked for, but the scores carry no weight: people count once")
    weight = _floats(scores.column("weight"))[order] if weighted and has_weight else None
    return Tokens(
        people=people,
        person=person,
        key=position,
        target=target,
        year=year,
        first=first,
        stay=~first & (target == prev),
        gap=gap,
        rank=scores.column("rank").to_numpy(zero_copy_only=False).astype(np.int64)[order],
        p_stay=_floats(scores.column("p_stay"))[order],
        weight=weight if weight is not None else np.ones(len(order)),
        weighted=weight is not None,
        table=scores,
        order=order,
    )


# ----------------------------------------------------------------------------- bootstrap
def person_sums(t: Tokens, columns: list[np.ndarray]) -> np.ndarray:
    """(P, K): per person, the weighted sum of each per-token column."""
    out = np.empty((len(t.people), len(columns)))
    for k, column in enumerate(columns):
        out[:, k] = np.bincount(t.person, weights=t.weight * column, minlength=len(t.people))
    return out


def resampled_sums(sums: np.ndarray, replicates: int, seed: int = DEFAULT_SEED) -> np.ndarray:
    """(R, K): column sums over people resampled with replacement, R times (vectorised).

    The draws depend only on (seed, R, P): tables of the same people are resampled alike."""
    people = sums.shape[0]
    out = np.empty((replicates, sums.shape[1]))
    if not replicates:
        return out
    rng = np.random.default_rng(seed)
    block = max(1, _BLOCK_ELEMENTS // max(people, 1))
    for start in range(0, replicates, block):
        n = min(block, replicates - start)
        draws = rng.integers(0, people, size=(n, people))
        counts = np.bincount((draws + people * np.arange(n)[:, None]).ravel(), minlength=n * people)
        out[start : start + n] = counts.reshape(n, people).astype(np.float64) @ sums
    return out


def _estimate(
    statistic: Callable[[np.ndarray], np.ndarray], sums: np.ndarray, replicated: np.ndarray
) -> Estimate:
    """`statistic` (of column sums, vectorised over rows) on the data and its interval."""
    value = float(statistic(sums.sum(0, keepdims=True))[0])
    if not len(replicated):
        return Estimate(value)
    draws = statistic(replicated)
    draws = draws[~np.isnan(draws)]
    if not len(draws):
        return Estimate(value)
    alpha = (1 - LEVEL) / 2
    low, high = np.quantile(draws, [alpha, 1 - alpha])
    return Estimate(value, float(low), float(high))


def _ratio(num: int, den: int) -> Callable[[np.ndarray], np.ndarray]:
    def statistic(s: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return s[:, num] / s[:, den]

    return statistic


def _perplexity(num: int, den: int) -> Callable[[np.ndarray], np.ndarray]:
    ratio = _ratio(num, den)

    def statistic(s: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            return np.exp(ratio(s))

    return statistic


# ----------------------------------------------------------------------------- metrics
def perplexity(
    scores: pa.Table,
    *,
    subset: str = "all",
    column: str = "logp",
    weighted: bool = False,
    bootstrap: int = DEFAULT_REPLICATES,
    seed: int = DEFAULT_SEED,
) -> Estimate:
    """exp(mean NLL) over the tokens of `subset` (the log-probabilities of `column`)."""
    t = tokens(scores, weighted)
    mask = t.subset(subset).astype(np.float64)
    sums = person_sums(t, [np.where(mask > 0, t.nll(column), 0.0), mask])
    return _estimate(_perplexity(0, 1), sums, resampled_sums(sums, bootstrap, seed))


def paired_difference(
    a: pa.Table,
    b: pa.Table,
    *,
    column_a: str = "logp",
    column_b: str = "logp",
    subset: str = "all",
    weighted: bool = False,
    bootstrap: int = DEFAULT_REPLICATES,
    seed: int = DEFAULT_SEED,
) -> Estimate:
    """perplexity(a) - perplexity(b) on the same tokens, each replicate resampling the same
    people for both. `b` may be `a` itself with another column (e.g. `oracle_logp`)."""
    ta, tb = tokens(a, weighted), tokens(b, weighted)
    same = (
        np.array_equal(ta.people, tb.people)
        and np.array_equal(ta.person, tb.person)
        and np.array_equal(ta.key, tb.key)
        and np.array_equal(ta.target, tb.target)
    )
    if not same:
        raise ValueError(
            "the two scores tables do not hold the same tokens (people, years and targets): "
            "a paired difference needs both models scored on the same split of the same data"
        )
    mask = ta.subset(subset).astype(np.float64)
    sums = person_sums(
        ta,
        [
            np.where(mask > 0, ta.nll(column_a), 0.0),
            np.where(mask > 0, tb.nll(column_b), 0.0),
            mask,
        ],
    )
    ppl_a, ppl_b = _perplexity(0, 2), _perplexity(1, 2)

    def difference(s: np.ndarray) -> np.ndarray:
        return ppl_a(s) - ppl_b(s)

    return _estimate(difference, sums, resampled_sums(sums, bootstrap, seed))


def has_oracle(scores: pa.Table) -> bool:
    """Whether every token carries the true process's log-probability (simulated data)."""
    if "oracle_logp" not in scores.column_names or not scores.num_rows:
        return False
    values = _floats(scores.column("oracle_logp"))
    return bool(np.isfinite(values).all())


def calibration_bins(p: np.ndarray, bins: int) -> np.ndarray:
    """Equal-width bin of each probability in [0, 1] (1 falls in the last bin)."""
    return np.clip(np.floor(p * bins), 0, bins - 1).astype(np.int64)


def summarize(
    scores: pa.Table,
    *,
    weighted: bool = False,
    bootstrap: int = DEFAULT_REPLICATES,
    seed: int = DEFAULT_SEED,
    bins: int = DEFAULT_BINS,
) -> dict[str, Any]:
    """Every metric of one scores table, each with its interval (one resampling for all)."""
    if bins < 1:
        raise ValueError("bins must be at least 1")
    t = tokens(scores, weighted)
    nll = t.nll()
    columns: list[np.ndarray] = []
    index: dict[str, int] = {}

    def add(name: str, values: np.ndarray) -> None:
        index[name] = len(columns)
        columns.append(np.asarray(values, dtype=np.float64))

    for name in SUBSETS:
        mask = t.subset(name)
        add(f"nll:{name}", np.where(mask, nll, 0.0))
        add(f"n:{name}", mask)
    for k in TOP_K:
        add(f"top{k}", t.rank <= k)
    later = ~t.first
    p = np.where(later, t.p_stay, 0.0)
    stayed = (later & t.stay).astype(np.float64)
    add("n:later", later)
    add("p_stay", p)
    add("stayed", stayed)
    add("brier", np.where(later, (p - stayed) ** 2, 0.0))
    which = calibration_bins(p, bins)
    for b in range(bins):
        in_bin = later & (which == b)
        add(f"bin_n:{b}", in_bin)
        add(f"bin_p:{b}", np.where(in_bin, p, 0.0))
        add(f"bin_y:{b}", np.where(in_bin, stayed, 0.0))
    oracle = has_oracle(scores)
    if oracle:
        add("nll:oracle", t.nll("oracle_logp"))
    sums = person_sums(t, columns)
    replicated = resampled_sums(sums, bootstrap, seed)

    def estimate(statistic: Callable[[np.ndarray], np.ndarray]) -> dict[str, float | None]:
        return _estimate(statistic, sums, replicated).to_dict()

    def ece(s: np.ndarray) -> np.ndarray:
        gaps = sum(
            np.abs(s[:, index[f"bin_p:{b}"]] - s[:, index[f"bin_y:{b}"]]) for b in range(bins)
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            return gaps / s[:, index["n:later"]]

    counts = {name: int(t.subset(name).sum()) for name in SUBSETS}
    total = sums.sum(0)
    out: dict[str, Any] = {
        "people": len(t.people),
        "tokens": counts["all"],
        "weighted": t.weighted,
        "bootstrap": {"replicates": bootstrap, "seed": seed, "level": LEVEL, "unit": "person"},
        "perplexity": estimate(_perplexity(index["nll:all"], index["n:all"])),
        "perplexity_by": {
            name: {
                **estimate(_perplexity(index[f"nll:{name}"], index[f"n:{name}"])),
                "tokens": counts[name],
            }
            for name in SUBSETS
            if name != "all"
        },
        "accuracy": {f"top{k}": estimate(_ratio(index[f"top{k}"], index["n:all"])) for k in TOP_K},
        "calibration": {
            "tokens": counts["all"] - counts["first_year"],
            "ece": estimate(ece),
            "brier": estimate(_ratio(index["brier"], index["n:later"])),
            "mean_p_stay": _finite(_safe_div(total[index["p_stay"]], total[index["n:later"]])),
            "stay_share": _finite(_safe_div(total[index["stayed"]], total[index["n:later"]])),
            "bins": [
                {
                    "low": b / bins,
                    "high": (b + 1) / bins,
                    "tokens": int((later & (which == b)).sum()),
                    "predicted": _finite(
                        _safe_div(total[index[f"bin_p:{b}"]], total[index[f"bin_n:{b}"]])
                    ),
                    "observed": _finite(
                        _safe_div(total[index[f"bin_y:{b}"]], total[index[f"bin_n:{b}"]])
                    ),
                }
                for b in range(bins)
            ],
        },
    }
    if oracle:
        out["oracle_perplexity"] = estimate(_perplexity(index["nll:oracle"], index["n:all"]))
    return out


def _safe_div(num: float, den: float) -> float:
    return num / den if den else float("nan")
