"""Order-1 Markov baseline as a model kind: P(job_t | job_{t-1}) by counting, smoothed.

Fitted in closed form on the train split through the loader (`trainer.closed_form`), so it is
scored on exactly the job-year tokens the other kinds are. Counts are taken in the dataset's
vocabulary ids: C[p, j] = how often job j followed last year's job p (p = `<bos>` counts first
years), and each row is smoothed toward the unigram u (job frequencies over all training tokens,
+0.5 per job so that no job is impossible):

    P(j | p) = (C[p, j] + alpha * u[j]) / (sum_j C[p, j] + alpha)

A last job never seen in training (an empty row) falls back to the unigram. `alpha` is chosen on
the validation split among `alphas` (never on test), unless given (`model.alpha=...`). The
fitted log-probability table is a buffer, so the model saves as safetensors like every kind.

`fit_markov` fits the same closed form on Arrow record tables (a `jobs` list column of job
strings; tests and benchmarks): the jobs seen in training get ids after the specials, any other
job is `<unk>`, whose only counts are the unigram's pseudo-count.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from data_shards.vocab import BOS_ID, PAD_ID, SPECIALS, UNK_ID
from trainer.models.output import (
    Batch,
    JobModel,
    check_covariates,
    check_kind,
    check_sizes,
    log_probs_from_logits,
)

KIND = "markov"
ALPHAS = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
UNIGRAM_PRIOR = 0.5  # pseudo-count of every job in the unigram


@dataclass
class MarkovConfig:
    vocab_sizes: dict[str, int] = field(default_factory=dict)
    covariates: tuple[str, ...] = ()  # none: the Markov chain reads last year's job only
    alpha: float | None = None  # smoothing toward the unigram; None: chosen on validation
    alphas: tuple[float, ...] = ALPHAS  # the candidates for alpha
    kind: str = KIND

    def __post_init__(self) -> None:
        check_kind(self.kind, KIND)
        self.covariates = check_covariates(self.covariates, (), KIND)
        self.alphas = tuple(float(a) for a in self.alphas)
        if not self.alphas or min(self.alphas) <= 0 or (self.alpha is not None and self.alpha <= 0):
            raise ValueError("alpha and every candidate in alphas must be positive")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["covariates"] = list(self.covariates)
        out["alphas"] = list(self.alphas)
        return out


#: Nothing to size: presets exist so that every kind accepts the same names.
PRESETS: dict[str, dict] = {"tiny": {}, "panel": {}, "small": {}, "paper": {}}


def count_transitions(batch: Batch, vocab_size: int) -> torch.Tensor:
    """(V, V) float64 counts of (last year's job, job) over the real job-years of a batch."""
    inputs, targets = batch["inputs"], batch["targets"]
    real = targets != PAD_ID
    pairs = inputs[real].long() * vocab_size + targets[real].long()
    counts = torch.bincount(pairs, minlength=vocab_size * vocab_size)
    return counts.double().view(vocab_size, vocab_size)


def unigram(counts: torch.Tensor) -> torch.Tensor:
    """(V,) float64 job frequencies over all counted tokens, +UNIGRAM_PRIOR for every job
    (`<unk>` included); 0 for `<pad>` and `<bos>`, which are never targets."""
    jobs = counts.sum(0)
    jobs[:UNK_ID] = 0
    prior = torch.zeros_like(jobs)
    prior[UNK_ID:] = UNIGRAM_PRIOR
    return (jobs + prior) / (jobs + prior).sum()


def smoothed_log_table(counts: torch.Tensor, alpha: float) -> torch.Tensor:
    """(V, V) float64 log P(job | last job) from transition counts (-inf for the specials)."""
    u = unigram(counts)
    probs = (counts + alpha * u[None, :]) / (counts.sum(1, keepdim=True) + alpha)
    return probs.log()


def perplexity(log_table: torch.Tensor, counts: torch.Tensor) -> float:
    """Perplexity of the tokens counted in `counts` under `log_table` (nan without tokens)."""
    tokens = float(counts.sum())
    if not tokens:
        return float("nan")
    seen = counts > 0
    nll = -float((counts[seen] * log_table[seen]).sum())
    return math.exp(nll / tokens)


def choose_alpha(
    train: torch.Tensor, valid: torch.Tensor, alphas: tuple[float, ...]
) -> tuple[float, dict[float, float]]:
    """The alpha of least validation perplexity (the smallest on ties), and each one's."""
    scores = {alpha: perplexity(smoothed_log_table(train, alpha), valid) for alpha in alphas}
    if any(math.isnan(s) for s in scores.values()):  # no validation tokens: nothing to choose on
        return 1.0, scores
    return min(scores, key=lambda a: (scores[a], a)), scores


class Markov(JobModel):
    def __init__(self, config: MarkovConfig):
        super().__init__()
        check_sizes(config.vocab_sizes, config.covariates, KIND)
        self.config = config
        V = config.vocab_sizes["job"]
        # log P(job | last job): row p = last job p, row <bos> = the first year; until fitted,
        # the unigram of no counts (uniform over the jobs).
        self.register_buffer(
            "log_table", smoothed_log_table(torch.zeros(V, V, dtype=torch.float64), 1.0).float()
        )

    def fit(self, train: torch.Tensor, alpha: float) -> None:
        """Set the table from training transition counts (V, V) and the smoothing `alpha`."""
        self.log_table.copy_(smoothed_log_table(train, alpha).float())
        self.config.alpha = alpha

    def forward(self, batch: Batch) -> tuple[torch.Tensor, None]:
        """Log-probabilities as one-stage logits (B, T, V): the table's row of last year's job
        (they are normalised already; the output's softmax leaves them as they are)."""
        return self.log_table[batch["inputs"]], None

    def log_probs_at(self, batch: Batch, at: torch.Tensor) -> torch.Tensor:
        """log P(job) (B, V) at position `at` (B,): the table's row of that position's input."""
        rows = torch.arange(at.shape[0], device=at.device)
        inputs = batch["inputs"][rows, at]
        return log_probs_from_logits(self.log_table[inputs], None, inputs)

    def num_parameters(self) -> int:
        """The table's entries (fitted by counting, not by gradient)."""
        return self.log_table.numel()

    def flops_per_token(self, seq_len: float) -> float:
        """No gradient training: fitting is counting, so 0 training FLOPs."""
        del seq_len
        return 0.0


# ----------------------------------------------------------------------------- on record tables
@dataclass
class TableMarkov:
    """The closed form fitted on record tables: `jobs[i]` has id len(SPECIALS) + i."""

    jobs: list[str]
    log_table: torch.Tensor  # (V, V) float64 log P(job | last job), as `Markov.log_table`
    alpha: float

    def transitions(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """(last job, job) ids of every job-year of `table`, in order (`<bos>` before a first
        year, `<unk>` for a job not seen in training)."""
        index = pa.array(self.jobs, pa.string())
        flat = pc.list_flatten(table.column("jobs"))
        found = pc.index_in(flat, value_set=index).fill_null(-1).to_numpy(zero_copy_only=False)
        ids = np.where(found < 0, UNK_ID, found + len(SPECIALS)).astype(np.int64)
        lengths = pc.list_value_length(table.column("jobs")).to_numpy(zero_copy_only=False)
        prev = np.r_[BOS_ID, ids[:-1]].astype(np.int64)
        prev[np.r_[0, np.cumsum(lengths)[:-1]][lengths > 0]] = BOS_ID
        return prev, ids

    def counts(self, table: pa.Table) -> torch.Tensor:
        """(V, V) float64 counts of (last job, job) over `table`'s job-years."""
        V = self.log_table.shape[0]
        prev, ids = self.transitions(table)
        pairs = torch.from_numpy(prev * V + ids)
        return torch.bincount(pairs, minlength=V * V).double().view(V, V)

    def log_probs(self, table: pa.Table) -> np.ndarray:
        """log P(job | last job) of every job-year of `table`, in order."""
        prev, ids = self.transitions(table)
        return self.log_table[torch.from_numpy(prev), torch.from_numpy(ids)].numpy()

    def perplexity(self, table: pa.Table) -> float:
        logp = self.log_probs(table)
        return math.exp(-float(np.mean(logp))) if len(logp) else float("nan")


def fit_markov(
    train: pa.Table, valid: pa.Table | None = None, alpha: float | None = None
) -> TableMarkov:
    """Count transitions in `train`; choose alpha among `ALPHAS` on `valid` when given (else
    `alpha`, or 1), as the model kind does on the splits."""
    jobs = sorted(set(pc.list_flatten(train.column("jobs")).drop_null().to_pylist()))
    V = len(SPECIALS) + len(jobs)
    model = TableMarkov(jobs, torch.zeros(V, V, dtype=torch.float64), 1.0)
    counts = model.counts(train)
    if valid is not None and alpha is None:
        alpha, _ = choose_alpha(counts, model.counts(valid), ALPHAS)
    model.alpha = alpha if alpha is not None else 1.0
    model.log_table = smoothed_log_table(counts, model.alpha)
    return model
