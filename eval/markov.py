"""Order-1 Markov baseline: P(job_t | job_{t-1}), fitted by counting, on Arrow record tables.

The first year of a sequence uses the marginal distribution of first jobs. Both are smoothed by
interpolating counts with the overall job frequencies (add-`alpha` toward the unigram), so a
transition never seen in training keeps a small probability. `alpha` is chosen on validation data
by `fit_markov(..., valid=...)`, never on the test split.

The same closed form is also a model kind (`career pretrain --model markov`,
trainer/models/markov.py), fitted through the loader in vocabulary ids and saved as a model
package; the two differ only in the jobs the unigram prior covers (here those seen in training,
there the vocabulary's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from trainer.models.markov import ALPHAS  # one grid of candidates for both

__all__ = ["ALPHAS", "MarkovModel", "fit_markov"]


def _encode(table: pa.Table, index: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """(ids, first) per job-year: ids -1 for jobs outside the index, first marks sequence starts."""
    jobs = pc.list_flatten(table.column("jobs"))
    ids = pc.index_in(jobs, value_set=pa.array(list(index), pa.string())).fill_null(-1)
    lengths = pc.list_value_length(table.column("jobs")).to_numpy(zero_copy_only=False)
    first = np.zeros(len(jobs), dtype=bool)
    first[np.r_[0, np.cumsum(lengths)[:-1]][lengths > 0]] = True
    return ids.to_numpy(zero_copy_only=False).astype(np.int64), first


@dataclass
class MarkovModel:
    jobs: list[str]
    transitions: np.ndarray  # (V, V) counts
    first: np.ndarray  # (V,) counts of first jobs
    unigram: np.ndarray  # (V,) smoothed probabilities
    unseen: float  # probability given to a job absent from training (same smoothing as unigram)
    alpha: float = 1.0

    def log_probs(self, table: pa.Table) -> np.ndarray:
        """log P(job_t | job_{t-1}) for every job-year of `table` (unknown jobs: the unigram floor)."""
        index = {job: i for i, job in enumerate(self.jobs)}
        ids, first = _encode(table, index)
        prev = np.r_[-1, ids[:-1]]
        known = ids >= 0
        uni = np.where(known, self.unigram[np.maximum(ids, 0)], self.unseen)
        row_total = self.transitions.sum(1)
        start_p = (self.first[np.maximum(ids, 0)] * known + self.alpha * uni) / (
            self.first.sum() + self.alpha
        )
        has_prev = ~first & (prev >= 0)
        pair = self.transitions[np.maximum(prev, 0), np.maximum(ids, 0)] * known
        step_p = (pair + self.alpha * uni) / (row_total[np.maximum(prev, 0)] + self.alpha)
        # A previous job never seen in training: fall back to the unigram.
        step_p = np.where(has_prev, step_p, uni)
        return np.log(np.where(first, start_p, step_p))

    def perplexity(self, table: pa.Table) -> float:
        logp = self.log_probs(table)
        return math.exp(-float(np.mean(logp))) if len(logp) else float("nan")


def fit_markov(
    train: pa.Table, valid: pa.Table | None = None, alpha: float | None = None
) -> MarkovModel:
    """Count transitions in `train`; pick alpha on `valid` when given (else `alpha` or 1)."""
    jobs = sorted(set(pc.list_flatten(train.column("jobs")).to_pylist()))
    index = {job: i for i, job in enumerate(jobs)}
    ids, first = _encode(train, index)
    V = len(jobs)
    transitions = np.zeros((V, V))
    cont = ~first
    np.add.at(transitions, (ids[:-1][cont[1:]], ids[1:][cont[1:]]), 1.0)
    first_counts = np.bincount(ids[first], minlength=V).astype(float)
    unigram = (np.bincount(ids, minlength=V) + 0.5) / (len(ids) + 0.5 * V)
    unseen = 0.5 / (len(ids) + 0.5 * V)
    model = MarkovModel(
        jobs, transitions, first_counts, unigram, unseen, alpha if alpha is not None else 1.0
    )
    if valid is not None and alpha is None:
        scores = {}
        for candidate in ALPHAS:
            model.alpha = candidate
            scores[candidate] = model.perplexity(valid)
        model.alpha = min(scores, key=scores.get)
    return model
