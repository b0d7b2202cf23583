"""The transition aggregate: for a split's most common previous jobs, how often each next job
followed (observed) and the model's mean predicted probability of it (predicted).

A scores file holds only the probability of the target; a transition heatmap needs the whole
predicted distribution, and (V x V) sums would not fit for a vocabulary of 30,000 jobs. So the
aggregate is bounded whatever the vocabulary: K rows, the K most frequent previous jobs of the
split's scored tokens (ties by job id), and K + 1 columns, the same K jobs then `<other>` (every
other job, and what the model gives to codes it does not know). The rows are the dataset's, not
a model's: they are counted once per split, in one streamed pass without a model
(`frequent_previous_jobs`, through `eval.scores.split_transition_rows`), and every model's
scoring pass then hands each batch's log-probabilities to `TransitionSums.add`, which keeps per
row

    row_tokens  scored tokens whose previous job is the row's
    observed    (K, K + 1) counts of the next job
    predicted   (K, K + 1) sums of the model's probabilities

Only tokens with a real previous job count (a person's first year has none). `to_dict` is what
`career evaluate` writes as `OUT/transitions/<model>__<dataset>.json`: the row and column codes,
`row_tokens`, `observed` counts and `predicted` as the row's mean (each row sums to 1).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from data_shards.vocab import BOS_ID, PAD_ID, Vocabulary

OTHER = "<other>"
DEFAULT_JOBS = 20
FORMAT_VERSION = 1


def frequent_previous_jobs(batches: Iterable[dict[str, Any]], k: int, job_count: int) -> np.ndarray:
    """Dataset job ids of the (at most) `k` most frequent previous jobs of the batches' tokens,
    most frequent first, ties by id; jobs that never precede a token are left out. The batches
    are streamed: memory stays at one batch."""
    counts = np.zeros(job_count, dtype=np.int64)
    for batch in batches:
        inputs, targets = batch["inputs"].numpy(), batch["targets"].numpy()
        counts += np.bincount(inputs[(targets != PAD_ID) & (inputs > BOS_ID)], minlength=job_count)
    order = np.lexsort((np.arange(job_count), -counts))[:k]
    return order[counts[order] > 0]


class TransitionSums:
    """Observed counts and predicted probability sums of the next job, per frequent previous job.

    `jobs`: the rows' dataset job ids; `job_count`: the dataset's job field size; `model_jobs`:
    the model's (a dataset id below it names the same code for the model)."""

    def __init__(self, jobs: np.ndarray, job_count: int, model_jobs: int):
        k = len(jobs)
        self.jobs = np.asarray(jobs, dtype=np.int64)
        self.index = np.full(job_count, -1, dtype=np.int64)  # dataset job id -> row (-1: none)
        self.index[self.jobs] = np.arange(k)
        self.known = self.jobs < model_jobs  # columns the model can name
        self.model_columns = torch.as_tensor(self.jobs[self.known])
        self.tokens = np.zeros(k, dtype=np.int64)
        self.observed = np.zeros((k, k + 1), dtype=np.int64)
        self.predicted = np.zeros((k, k + 1), dtype=np.float64)

    def add(self, inputs: torch.Tensor, targets: torch.Tensor, log_probs: torch.Tensor) -> None:
        """One batch: `inputs`, `targets` (B, T) in dataset ids; `log_probs` (B, T, V) the
        model's (in its ids, on any device)."""
        k = len(self.jobs)
        inputs, targets = inputs.numpy(), targets.numpy()
        rows = self.index[inputs]  # (B, T); <pad> and <bos> are never rows
        b, t = np.nonzero((targets != PAD_ID) & (rows >= 0))
        if not len(b):
            return
        row = rows[b, t]
        column = self.index[targets[b, t]]
        column[column < 0] = k
        np.add.at(self.observed, (row, column), 1)
        self.tokens += np.bincount(row, minlength=k)
        device = log_probs.device
        picked = log_probs[:, :, self.model_columns.to(device)]  # (B, T, K known)
        picked = picked[torch.as_tensor(b, device=device), torch.as_tensor(t, device=device)]
        probs = np.zeros((len(b), k + 1))
        probs[:, :k][:, self.known] = picked.double().exp().cpu().numpy()
        probs[:, k] = np.clip(1.0 - probs[:, :k].sum(1), 0.0, 1.0)
        np.add.at(self.predicted, row, probs)

    def to_dict(self, vocab: Vocabulary) -> dict[str, Any]:
        codes = vocab.fields["job"]
        jobs = [codes[j] for j in self.jobs]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = self.predicted / self.tokens[:, None]
        return {
            "format_version": FORMAT_VERSION,
            "jobs": jobs,
            "columns": [*jobs, OTHER],
            "row_tokens": self.tokens.tolist(),
            "observed": self.observed.tolist(),
            "predicted": np.nan_to_num(mean).tolist(),
        }
