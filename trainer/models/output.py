"""The output every model kind shares: the paper's two-stage distribution over next year's job.

A model's `forward(batch)` gives job logits (B, T, V) and, for the two-stage output, a stay logit
(B, T): π = sigmoid(stay) is P(same job as last year), and otherwise a softmax over the other jobs
with last year's masked, P(j) = (1 − π)·softmax(logits with prev = −∞)[j]. At the first year
(`<bos>` input) there is no last job and the plain softmax is used; a one-stage model (stay None)
always uses it. `<pad>` and `<bos>` are never targets and get probability 0.

`JobModel` turns that forward into what training and evaluation read: `log_probs` (B, T, V),
`token_log_probs` (B, T) and `nll`. Every kind (`trainer.models.registry`) derives from it.
Shapes: B people, T years, V jobs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from data_shards.vocab import BOS_ID, PAD_ID

Batch = dict[str, torch.Tensor]


def mask_specials(logits: torch.Tensor) -> torch.Tensor:
    """float32 logits with <pad> and <bos> impossible (never targets); a new tensor."""
    special = torch.zeros(logits.shape[-1], dtype=torch.float32, device=logits.device)
    special[PAD_ID] = float("-inf")  # scalar indices: a list index would copy from host and sync
    special[BOS_ID] = float("-inf")
    return logits.float() + special


def log_probs_from_logits(
    logits: torch.Tensor, stay: torch.Tensor | None, inputs: torch.Tensor
) -> torch.Tensor:
    """log P(job at year t | history) over all jobs (B, T, V) from the model's logits."""
    logits = mask_specials(logits)
    plain = F.log_softmax(logits, dim=-1)
    if stay is None:
        return plain
    prev = inputs.unsqueeze(-1)  # last year's job (<bos> at the first year)
    has_prev = inputs > BOS_ID  # (B, T): a real previous job
    masked = logits.scatter(-1, prev, float("-inf"))
    move = F.log_softmax(masked, dim=-1) + F.logsigmoid(-stay.float()).unsqueeze(-1)
    two_stage = move.scatter(-1, prev, F.logsigmoid(stay.float()).unsqueeze(-1))
    return torch.where(has_prev.unsqueeze(-1), two_stage, plain)


def target_log_probs(
    logits: torch.Tensor, stay: torch.Tensor | None, inputs: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """log P(target) at each year (B, T), 0 at padding, without building (B, T, V) twice."""
    logits = mask_specials(logits)
    real = targets != PAD_ID
    safe_targets = targets.clamp(min=0)
    plain = F.log_softmax(logits, dim=-1).gather(-1, safe_targets.unsqueeze(-1)).squeeze(-1)
    if stay is None:
        return torch.where(real, plain, torch.zeros_like(plain))
    stay = stay.float()
    has_prev = inputs > BOS_ID
    prev = inputs.clamp(min=0).unsqueeze(-1)
    masked = logits.scatter(-1, prev, float("-inf"))
    move = F.log_softmax(masked, dim=-1).gather(-1, safe_targets.unsqueeze(-1)).squeeze(-1)
    same = targets == inputs
    two_stage = torch.where(same, F.logsigmoid(stay), F.logsigmoid(-stay) + move)
    out = torch.where(has_prev, two_stage, plain)
    return torch.where(real, out, torch.zeros_like(out))


class JobModel(nn.Module):
    """A model of next year's job: subclasses define `forward(batch) -> (logits, stay or None)`
    and carry a `config` (a dataclass with `kind`, `vocab_sizes`, `covariates`, `to_dict()`)."""

    config: object

    @staticmethod
    def init_weights(module: nn.Module) -> None:
        """GPT-style initialisation (`self.apply(self.init_weights)`): linear layers N(0, 0.02)
        with zero bias, embeddings N(0, 1/width) with the padding row zero."""
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=module.embedding_dim**-0.5)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()

    def log_probs(self, batch: Batch) -> torch.Tensor:
        """log P(job at year t | history) over all jobs: (B, T, V). Special tokens get -inf."""
        logits, stay = self(batch)
        return log_probs_from_logits(logits, stay, batch["inputs"])

    def log_probs_at(self, batch: Batch, at: torch.Tensor) -> torch.Tensor:
        """log P(job) over all jobs (B, V) at one position `at` (B,) of each row: what sampling
        needs (`eval.forecast`). Kinds whose output at a position is cheap to compute alone
        override it; this default computes every position and keeps one."""
        rows = torch.arange(at.shape[0], device=at.device)
        return self.log_probs(batch)[rows, at]

    def token_log_probs(self, batch: Batch) -> torch.Tensor:
        """log P(target) at each year (B, T); 0 at padded positions."""
        logits, stay = self(batch)
        return target_log_probs(logits, stay, batch["inputs"], batch["targets"])

    def nll(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of negative log-likelihood over real job-years, number of real job-years)."""
        logp = self.token_log_probs(batch)
        real = batch["targets"] != PAD_ID
        return -(logp * real).sum(), real.sum()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: float) -> float:
        """Training FLOPs per job-year token: 6 x parameters (forward and backward of every
        weight once; a nominal upper bound for lookup tables, which touch one row per token).
        Models with attention add its cost over `seq_len` positions."""
        del seq_len
        return 6.0 * self.num_parameters()


def check_sizes(vocab_sizes: dict[str, int], covariates: tuple[str, ...], kind: str) -> None:
    """`vocab_sizes` holds the job field and every covariate the model embeds."""
    if "job" not in vocab_sizes:
        raise ValueError(f"{kind}: vocab_sizes must include 'job'")
    missing = [c for c in covariates if c not in vocab_sizes]
    if missing:
        raise ValueError(f"{kind}: vocab_sizes lacks covariates {missing}")


def check_covariates(covariates, known: tuple[str, ...], kind: str) -> tuple[str, ...]:
    """`covariates` as a tuple, refused when the kind does not use one of them."""
    unknown = set(covariates) - set(known)
    if unknown:
        raise ValueError(f"{kind}: unknown covariates {sorted(unknown)}; known: {known}")
    return tuple(covariates)


def check_kind(kind: str, expected: str) -> None:
    if kind != expected:
        raise ValueError(f"a {expected} config cannot have kind {kind!r}")
