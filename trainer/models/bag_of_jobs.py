"""The paper's bag-of-jobs baseline: last year's job, the unordered set of earlier jobs, covariates.

At year t the model sees the embedding of last year's job `inputs[t]` and the mean of the
(separately learned) context embeddings of every earlier job `inputs[1..t-1]` (order ignored;
a zero vector when there is none), side by side, plus learned embeddings of the covariates of the
year being predicted (as CAREER adds them); one hidden layer (ReLU) reads that and feeds the
two-stage output every kind shares (`trainer.models.output`). The paper ran it with 1024-wide
current-job and context embeddings (`--current-job-embed-dim 1024 --context-embed-dim 1024`).
Causal by construction: position t reads `inputs[:t+1]`, i.e. targets before t.
Shapes: B people, T years, D = d_current + d_context, H hidden, V jobs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from data_shards.vocab import BOS_ID, PAD_ID
from trainer.models import dropout as hash_dropout
from trainer.models.career import COVARIATES
from trainer.models.output import Batch, JobModel, check_covariates, check_kind, check_sizes

KIND = "bag-of-jobs"


@dataclass
class BagOfJobsConfig:
    vocab_sizes: dict[str, int] = field(default_factory=dict)
    covariates: tuple[str, ...] = COVARIATES
    d_current: int = 1024  # last year's job embedding
    d_context: int = 1024  # embedding of earlier jobs, averaged
    d_hidden: int = 1024  # the hidden layer
    dropout: float = 0.0
    two_stage: bool = True
    kind: str = KIND

    def __post_init__(self) -> None:
        check_kind(self.kind, KIND)
        self.covariates = check_covariates(self.covariates, COVARIATES, KIND)
        if min(self.d_current, self.d_context, self.d_hidden) < 1:
            raise ValueError("d_current, d_context and d_hidden must be at least 1")
        if not 0 <= self.dropout < 1:
            raise ValueError("dropout must be in [0, 1)")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["covariates"] = list(self.covariates)
        return out


PRESETS: dict[str, dict] = {
    "tiny": dict(d_current=32, d_context=32, d_hidden=64),
    "small": dict(d_current=128, d_context=128, d_hidden=256),
    "paper": dict(d_current=1024, d_context=1024, d_hidden=1024),
}


def earlier_mean(embedded: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """(B, T, C) at each t the mean of `embedded` over the jobs before last year's, positions
    1..t-1 (real jobs only: not `<bos>` or padding); 0 where there is none."""
    real = (inputs > BOS_ID).unsqueeze(-1).to(embedded.dtype)  # (B, T, 1)
    total = (embedded * real).cumsum(dim=1)
    count = real.cumsum(dim=1)
    # shift by one: position t sums positions < t (last year's job, at t, is not "earlier")
    total = torch.cat([torch.zeros_like(total[:, :1]), total[:, :-1]], dim=1)
    count = torch.cat([torch.zeros_like(count[:, :1]), count[:, :-1]], dim=1)
    return total / count.clamp(min=1)


class BagOfJobs(JobModel):
    def __init__(self, config: BagOfJobsConfig):
        super().__init__()
        check_sizes(config.vocab_sizes, config.covariates, KIND)
        self.config = config
        V, D = config.vocab_sizes["job"], config.d_current + config.d_context
        self.job_embedding = nn.Embedding(V, config.d_current, padding_idx=PAD_ID)
        self.context_embedding = nn.Embedding(V, config.d_context, padding_idx=PAD_ID)
        self.covariate_embeddings = nn.ModuleDict(
            {
                name: nn.Embedding(config.vocab_sizes[name], D, padding_idx=PAD_ID)
                for name in config.covariates
            }
        )
        self.hidden = nn.Linear(D, config.d_hidden)
        self.dropout = hash_dropout.Dropout(config.dropout)
        self.head = nn.Linear(config.d_hidden, V)
        self.stay_head = nn.Linear(config.d_hidden, 1) if config.two_stage else None
        self.apply(self.init_weights)

    def represent(self, batch: Batch) -> torch.Tensor:
        """Hidden state at each year (B, T, H)."""
        inputs = batch["inputs"]
        current = self.job_embedding(inputs)  # (B, T, d_current)
        context = earlier_mean(self.context_embedding(inputs), inputs)  # (B, T, d_context)
        x = torch.cat([current, context], dim=-1)  # (B, T, D)
        for name in self.config.covariates:
            if name in batch:
                x = x + self.covariate_embeddings[name](batch[name])
        return self.dropout(torch.relu(self.hidden(self.dropout(x))))

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Job logits (B, T, V) and stay logits (B, T) (None for the one-stage model)."""
        h = self.represent(batch)
        stay = self.stay_head(h).squeeze(-1) if self.stay_head is not None else None
        return self.head(h), stay
