"""What `career run` and `career scale` share of their spec files: a corpus to shard
(`DatasetSpec`) and how a kind of model trains (`TrainSpec`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from cluster.spec_files import build_strict


@dataclass
class DatasetSpec:
    """One corpus: simulated (`simulate`: a simulator preset) or read from `input` with `format`."""

    name: str
    simulate: str | None = None
    people: int | None = None
    seed: int = 0
    input: str | None = None
    format: str | None = None
    panel: dict[str, Any] = field(default_factory=dict)  # data_shards.readers.PanelMapping fields
    resume: dict[str, Any] = field(default_factory=dict)  # ResumeOptions fields (e.g. as_of)
    people_per_block: int | None = None
    split_fractions: tuple[float, float, float] | None = None
    #: This survey's forecasting cutoff, instead of the experiment's (`forecast.cutoff`); a panel
    #: whose years end before it sets its own, or `downstream: false` skips it.
    forecast_cutoff: int | None = None
    #: Forecasting, the wage model and rationalization on this survey (see `Experiment`).
    downstream: bool = True

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ValueError(f"dataset name {self.name!r} must be a plain folder name")
        if bool(self.simulate) == bool(self.input):
            raise ValueError(f"{self.name}: give either `simulate` (a preset) or `input` (a URL)")
        if self.input and not self.format:
            raise ValueError(
                f"{self.name}: `input` needs `format` (resume-jsonl, panel, career-code)"
            )
        if self.split_fractions is not None:
            self.split_fractions = tuple(float(x) for x in self.split_fractions)  # type: ignore[assignment]

    def input_spec(self, storage_options: dict | None = None):
        from data_shards.inputs import InputSpec
        from data_shards.readers import PanelMapping
        from data_shards.readers.resume_jsonl import ResumeOptions

        if self.simulate:
            return InputSpec(
                format="synth", preset=self.simulate, people=self.people, seed=self.seed
            )
        panel = PanelMapping(**_tuples(self.panel)) if self.format == "panel" else None
        resume = ResumeOptions(**self.resume) if self.format == "resume-jsonl" else None
        return InputSpec(
            format=self.format or "",
            url=self.input,
            panel=panel,
            resume=resume,
            storage_options=storage_options,
        )

    def shard_config(self, until: int | None = None):
        """How this dataset is cut; `until`: its forecasting twin, cut at that year."""
        from data_shards.shard import ShardConfig

        given = {
            "people_per_block": self.people_per_block,
            "split_fractions": self.split_fractions,
            "until": until,
        }
        return ShardConfig(**{k: v for k, v in given.items() if v is not None})


def _tuples(mapping: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in mapping.items()}


@dataclass
class TrainSpec:
    """How one kind of run trains (the `career pretrain` flags that matter, and overrides)."""

    preset: str = "small"
    updates: int = 200
    tokens_per_update: int = 8000
    lr: float = 1e-3
    weight_decay: float | None = None
    eval_every: int = 50
    patience: int = 0
    zero_stage: int = 1
    overrides: list[str] = field(default_factory=list)  # dotted, e.g. model.dropout=0.2

    def __post_init__(self) -> None:
        if min(self.updates, self.tokens_per_update, self.eval_every) < 1 or self.lr <= 0:
            raise ValueError("updates, tokens_per_update and eval_every must be >= 1, lr > 0")

    def with_changes(self, changes: dict[str, Any], where: str) -> TrainSpec:
        return build_strict(TrainSpec, {**dataclasses.asdict(self), **changes}, where)
