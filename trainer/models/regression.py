"""The paper's econometric baseline: a two-stage multinomial logit over next year's job.

Additive and linear in one-hot features, as in the paper's code (`--arch regression` of its fairseq
fork, run with every feature on): the job logits and the stay logit (V + 1 numbers) are an
intercept plus one learned vector per value of each feature, clamped to [-10, 10], then read by
the two-stage output every kind shares (`trainer.models.output`). The features, each a small
function of the Batch below (position t predicts the job of the year `year[t]`):

    last_job           last year's job, `inputs[t]` (`<bos>` at the first year)
    job_before         the job before it, `inputs[t-1]` (second-order Markov; `<bos>`: none)
    tenure             years in the current job: how many observed years in a row, ending with
                       last year's, held that job (0 at the first year), capped at `max_tenure`
    years_observed     years observed so far, t, capped at `max_years`
    year               the calendar year predicted (the `year` covariate)
    gap                1 when more than one calendar year passed since the last observation
                       (year ids are consecutive for consecutive years: data_shards.vocab)
    education          education in the year predicted (the `education` covariate)
    education_changed  1 when that differs from last observation's education
    ethnicity, gender, location  the static covariates

Features of covariates the dataset lacks are left out (and, as CAREER does, those of covariates a
batch lacks add nothing). Departures from the paper's code, on
purpose: tenure and years observed get one vector per (capped) value rather than a single
linear slope, and birth year is not used (the paper's regression has none).

The L2 penalty of the regression is the optimizer's weight decay (`optim.weight_decay=...`, 0.01
by default as in the paper's runs): AdamW's decoupled decay, as fairseq's Adam applies it, on every
effect table (names without "embedding": `trainer.engine` decays those); the intercept is not
penalised. Choosing it on validation data is a sweep over that override. Effects start at 0
(uniform predictions): the problem is convex, so no random start is needed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from data_shards.vocab import BOS_ID, PAD_ID, UNK_ID
from trainer.models.output import (
    Batch,
    JobModel,
    check_covariates,
    check_kind,
    check_sizes,
    log_probs_from_logits,
)

KIND = "regression"
#: The covariates of the paper's regression (no birth year).
COVARIATES = ("year", "education", "location", "gender", "ethnicity")
STATIC = ("location", "gender", "ethnicity")


@dataclass
class RegressionConfig:
    vocab_sizes: dict[str, int] = field(default_factory=dict)
    covariates: tuple[str, ...] = COVARIATES
    second_order: bool = True  # the job before last year's
    max_tenure: int = 10  # tenure buckets 0..max_tenure (the last: that many years or more)
    max_years: int = 20  # years-observed buckets 0..max_years
    two_stage: bool = True
    clamp: float = 10.0  # logits clamped to [-clamp, clamp] (the paper's code: 10)
    kind: str = KIND

    def __post_init__(self) -> None:
        check_kind(self.kind, KIND)
        self.covariates = check_covariates(self.covariates, COVARIATES, KIND)
        if self.max_tenure < 1 or self.max_years < 1:
            raise ValueError("max_tenure and max_years must be at least 1")
        if self.clamp <= 0:
            raise ValueError("clamp must be positive")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["covariates"] = list(self.covariates)
        return out


#: Regression has no width: presets differ only in how far tenure and years are resolved.
PRESETS: dict[str, dict] = {
    "tiny": dict(max_tenure=5, max_years=10),
    "paper": dict(max_tenure=10, max_years=20),
}


# ----------------------------------------------------------------------------- features
def last_job(batch: Batch) -> torch.Tensor:
    """(B, T) last year's job id; `<bos>` at the first year."""
    return batch["inputs"]


def job_before(batch: Batch) -> torch.Tensor:
    """(B, T) the job of the year before last year's observation: `inputs[t-1]`, `<bos>` when
    there is none (the first two years), `<pad>` at padding."""
    inputs = batch["inputs"]
    before = torch.cat([torch.full_like(inputs[:, :1], BOS_ID), inputs[:, :-1]], dim=1)
    return torch.where(inputs == PAD_ID, torch.zeros_like(before), before)


def tenure(batch: Batch, cap: int) -> torch.Tensor:
    """(B, T) years in the current job: the length of the run of equal jobs ending with last
    year's (counted in observed years), 0 when there is no last job; capped at `cap`."""
    inputs = batch["inputs"]
    T = inputs.shape[1]
    position = torch.arange(T, device=inputs.device).expand_as(inputs)
    starts = torch.ones_like(inputs, dtype=torch.bool)
    starts[:, 1:] = inputs[:, 1:] != inputs[:, :-1]
    run_start = torch.where(starts, position, torch.zeros_like(position)).cummax(dim=1).values
    run = position - run_start + 1
    return torch.where(inputs > BOS_ID, run, torch.zeros_like(run)).clamp(max=cap)


def years_observed(batch: Batch, cap: int) -> torch.Tensor:
    """(B, T) years observed before the one predicted (the position t), capped at `cap`."""
    inputs = batch["inputs"]
    position = torch.arange(inputs.shape[1], device=inputs.device).expand_as(inputs)
    return position.clamp(max=cap)


def _previous(values: torch.Tensor) -> torch.Tensor:
    """(B, T) the value at t-1 (`<pad>` at t = 0)."""
    return torch.cat([torch.zeros_like(values[:, :1]), values[:, :-1]], dim=1)


def gap(batch: Batch) -> torch.Tensor:
    """(B, T) 1 when the year predicted is more than one calendar year after the last observed
    one (a non-consecutive year), else 0. Year ids are consecutive for consecutive years."""
    year = batch["year"]
    before = _previous(year)
    known = (year > UNK_ID) & (before > UNK_ID)
    return (known & (year - before > 1)).long()


def education_changed(batch: Batch) -> torch.Tensor:
    """(B, T) 1 when education in the year predicted differs from the last observation's (both
    known), else 0 (also at the first year)."""
    education = batch["education"]
    before = _previous(education)
    known = (education != PAD_ID) & (before != PAD_ID)
    return (known & (education != before)).long()


def static(name: str) -> Callable[[Batch], torch.Tensor]:
    def feature(batch: Batch) -> torch.Tensor:
        return batch[name]

    feature.__name__ = name
    feature.__doc__ = f"(B, T) the `{name}` covariate"
    return feature


@dataclass(frozen=True)
class Feature:
    """One feature: its values (a function of the batch) and how many values it takes."""

    values: Callable[[Batch], torch.Tensor]
    size: int
    padding: bool  # value 0 is `<pad>` (a vocabulary field): its effect stays 0
    reads: str = "inputs"  # the batch tensor it is computed from


def features(config: RegressionConfig) -> dict[str, Feature]:
    """The features of a regression on `config.covariates`, in a fixed order."""
    sizes, covariates = config.vocab_sizes, config.covariates
    out = {"last_job": Feature(last_job, sizes["job"], True)}
    if config.second_order:
        out["job_before"] = Feature(job_before, sizes["job"], True)
    out["tenure"] = Feature(lambda b: tenure(b, config.max_tenure), config.max_tenure + 1, False)
    out["years_observed"] = Feature(
        lambda b: years_observed(b, config.max_years), config.max_years + 1, False
    )
    if "year" in covariates:
        out["year"] = Feature(static("year"), sizes["year"], True, "year")
        out["gap"] = Feature(gap, 2, False, "year")
    if "education" in covariates:
        out["education"] = Feature(static("education"), sizes["education"], True, "education")
        out["education_changed"] = Feature(education_changed, 2, False, "education")
    for name in STATIC:
        if name in covariates:
            out[name] = Feature(static(name), sizes[name], True, name)
    return out


class Regression(JobModel):
    def __init__(self, config: RegressionConfig):
        super().__init__()
        check_sizes(config.vocab_sizes, config.covariates, KIND)
        self.config = config
        self.features = features(config)
        V = config.vocab_sizes["job"]
        width = V + 1 if config.two_stage else V  # the job logits, then the stay logit
        self.bias = nn.Parameter(torch.zeros(width))
        self.effects = nn.ModuleDict(
            {
                name: nn.Embedding(f.size, width, padding_idx=PAD_ID if f.padding else None)
                for name, f in self.features.items()
            }
        )
        for table in self.effects.values():
            nn.init.zeros_(table.weight)

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Job logits (B, T, V) and stay logits (B, T) (None for the one-stage model)."""
        return self._logits(batch, lambda values: values)

    def _logits(
        self, batch: Batch, pick: Callable[[torch.Tensor], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The logits at the positions `pick` keeps of each (B, T) feature."""
        logits = self.bias
        for name, feature in self.features.items():
            if feature.reads in batch:
                logits = logits + self.effects[name](pick(feature.values(batch)))
        shape = (*pick(batch["inputs"]).shape, -1)
        logits = logits.expand(shape).clamp(-self.config.clamp, self.config.clamp)
        if not self.config.two_stage:
            return logits, None
        return logits[..., :-1], logits[..., -1]

    def log_probs_at(self, batch: Batch, at: torch.Tensor) -> torch.Tensor:
        """log P(job) (B, V) at position `at` (B,): the features need the whole history, the
        (B, V) logits only that position (not the (B, T, V) of every one)."""
        rows = torch.arange(at.shape[0], device=at.device)

        def pick(values: torch.Tensor) -> torch.Tensor:
            return values[rows, at]

        logits, stay = self._logits(batch, pick)
        return log_probs_from_logits(logits, stay, pick(batch["inputs"]))
