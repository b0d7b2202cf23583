"""The experiment `career run` carries out: one YAML file, a dataclass underneath.

    store: career_run                  # a local folder or s3://bucket/prefix; the run is STORE/RUN_ID
    resumes: {name: resumes, simulate: resumes, people: 20000}
    surveys:
      - {name: nlsy79, simulate: nlsy79, people: 3000}
      - name: wagepan                  # a real panel: input URL, reader format and column mapping
        input: wagepan.csv
        format: panel
        panel: {person: nr, occupation_dummies: [occ1, occ2, ...], education: educ}
    pretrain: {preset: small, updates: 200, tokens_per_update: 8000, lr: 0.001, eval_every: 50}
    finetune: {updates: 100, tokens_per_update: 4000, lr: 0.001, eval_every: 20, patience: 3}
    baselines:                         # trained like fine-tuning, with these changes
      scratch: {}                      # CAREER on the survey alone
      regression: {preset: paper, lr: 0.05}
      bag-of-jobs: {preset: small}
      markov: {}                       # closed form
    forecast: {cutoff: 2014, models: [finetuned, regression, markov], paths: 1000}
    wages: {gap: gender}               # the wage model, and the history-adjusted gender gap
    explain: {people: 5, word_dropout: 0.5}   # rationales from a word-dropout fine-tune
    workers: 2                         # Ray Train workers of pretraining
    survey_workers: 1                  # ... of each survey run (survey tasks run side by side)
    survey_worker_cpus: 1              # Ray CPUs each of them holds (0.5: two share a core)
    gpus_per_worker: 0
    max_failures: 3                    # worker/node losses each Ray Train run survives

Every key is checked: a misspelt one is an error naming the file and the key, never a silent
default. `--size demo|small|paper` starts from a built-in experiment (`SIZES`); a file given with
`--config` replaces it whole (`cluster.run.sizes`). The resolved experiment is written to RUN/experiment.json and a
resumed run must match it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from cluster.settings import Resources
from cluster.spec_files import build_strict, read_mapping
from cluster.specs import DatasetSpec, TrainSpec
from data_shards.errors import StructuralError
from eval.run_layout import BASELINES

#: baseline -> the model kind it trains
BASELINE_KIND = {
    "scratch": "career",
    "regression": "regression",
    "bag-of-jobs": "bag-of-jobs",
    "markov": "markov",
}


@dataclass
class ForecastSpec:
    """Forecasting on each survey: its models retrained on the survey cut at `cutoff` (the
    dataset `NAME-until-YEAR`), then `career forecast` of them all (the first is the reference)."""

    cutoff: int = 2014
    models: list[str] = field(default_factory=lambda: ["finetuned", "regression", "markov"])
    paths: int = 1000
    future_education: str = "carried"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.paths < 1:
            raise ValueError("forecast.paths must be at least 1")
        from eval.forecast.protocol import FUTURE_EDUCATION

        if self.future_education not in FUTURE_EDUCATION:
            raise ValueError("forecast.future_education is carried or observed")
        if not self.models:
            raise ValueError("forecast.models needs at least one model")


@dataclass
class WagesSpec:
    """The wage model on each survey with wages (`career wages` with the fine-tuned model);
    `gap`: a group for the history-adjusted wage gap (gender), or null for none."""

    gap: str | None = "gender"
    bootstrap: int = 200
    folds: int = 5


@dataclass
class ExplainSpec:
    """Rationalization on each survey: CAREER fine-tuned again with word dropout (fine-tuning's
    settings with `changes`), then the rationales of `people` test people."""

    people: int = 5
    word_dropout: float = 0.5
    changes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.people < 1 or not 0 < self.word_dropout < 1:
            raise ValueError("explain.people must be >= 1 and explain.word_dropout in (0, 1)")


@dataclass
class Experiment:
    store: str = "career_run"
    resumes: DatasetSpec = field(
        default_factory=lambda: DatasetSpec("resumes", simulate="resumes", people=20_000)
    )
    surveys: list[DatasetSpec] = field(default_factory=list)
    pretrain: TrainSpec = field(default_factory=TrainSpec)
    finetune: TrainSpec = field(default_factory=TrainSpec)
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)
    workers: int = 2
    survey_workers: int = 1
    gpus_per_worker: float = 0
    #: Ray CPUs each CPU worker of a survey run holds: below 1, more surveys train side by side
    #: than there are cores (the demo's three surveys share 2 cores instead of two at a time).
    survey_worker_cpus: float = 1.0
    cpus_per_evaluation: int = 1
    #: Worker or node losses each Ray Train run survives (resumed from its latest checkpoint).
    max_failures: int = 3
    #: Downstream uses per survey (issue 12); null (absent) turns one off.
    forecast: ForecastSpec | None = None
    wages: WagesSpec | None = None
    explain: ExplainSpec | None = None

    def __post_init__(self) -> None:
        names = [self.resumes.name, *(s.name for s in self.surveys)]
        if len(set(names)) != len(names):
            raise ValueError(f"dataset names must differ: {names}")
        if not self.surveys:
            raise ValueError("an experiment needs at least one survey")
        unknown = sorted(set(self.baselines) - set(BASELINES))
        if unknown:
            raise ValueError(f"unknown baselines {unknown}; choose from {', '.join(BASELINES)}")
        if self.workers < 1 or self.survey_workers < 1 or self.gpus_per_worker < 0:
            raise ValueError("workers and survey_workers must be >= 1, gpus_per_worker >= 0")
        if self.survey_worker_cpus <= 0:
            raise ValueError("survey_worker_cpus must be > 0")
        if self.max_failures < -1:
            raise ValueError("max_failures must be -1 (no limit) or more")
        if self.forecast is not None:
            trained = {"finetuned", *self.baselines}
            unknown = [m for m in self.forecast.models if m not in trained]
            if unknown:
                raise ValueError(
                    f"forecast.models {unknown} are not models of this experiment "
                    f"({', '.join(sorted(trained))})"
                )

    @property
    def pretrain_resources(self) -> Resources:
        """What pretraining holds: `workers` Ray Train workers of one CPU (or GPUs) each."""
        return Resources(
            workers=self.workers,
            gpus_per_worker=self.gpus_per_worker,
            max_failures=self.max_failures,
        )

    @property
    def survey_resources(self) -> Resources:
        """What each survey's training holds (the survey tasks run side by side)."""
        return Resources(
            workers=self.survey_workers,
            gpus_per_worker=self.gpus_per_worker,
            cpus_per_worker=self.survey_worker_cpus,
            max_failures=self.max_failures,
        )

    def forecast_cutoff(self, survey: DatasetSpec) -> int | None:
        """The cutoff `survey` is forecast from, or None when it is not forecast."""
        if self.forecast is None or not survey.downstream:
            return None
        return survey.forecast_cutoff or self.forecast.cutoff

    def forecast_name(self, survey: DatasetSpec) -> str | None:
        """The name of the survey's cutoff dataset (None when it is not forecast)."""
        cutoff = self.forecast_cutoff(survey)
        return None if cutoff is None else f"{survey.name}-until-{cutoff}"

    def explain_spec(self) -> TrainSpec:
        """How the word-dropout model for rationales trains: fine-tuning's settings, changed."""
        assert self.explain is not None
        spec = self.finetune.with_changes(self.explain.changes, "explain.changes")
        overrides = [o for o in spec.overrides if not o.startswith("model.word_dropout=")]
        return dataclasses.replace(
            spec, overrides=[*overrides, f"model.word_dropout={self.explain.word_dropout}"]
        )

    def baseline_spec(self, baseline: str) -> TrainSpec:
        """How `baseline` trains: fine-tuning's settings with its changes."""
        return self.finetune.with_changes(self.baselines.get(baseline, {}), f"baselines.{baseline}")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def paths_read(self) -> dict[str, str | None]:
        """The input files its tasks read (`cluster.guards`)."""
        return {f"{d.name}: input": d.input for d in (self.resumes, *self.surveys)}

    def paths_written(self) -> dict[str, str | None]:
        return {"store": self.store}

    def fingerprint(self) -> dict[str, Any]:
        """What a resumed run must share with the run it continues (the store may move, and how
        many failures a run survives changes no result)."""
        return {k: v for k, v in self.to_dict().items() if k not in ("store", "max_failures")}


def from_dict(values: dict[str, Any], where: str = "experiment") -> Experiment:
    values = dict(values)
    if "resumes" in values:
        values["resumes"] = build_strict(DatasetSpec, values["resumes"], f"{where}: resumes")
    if "surveys" in values:
        if not isinstance(values["surveys"], list):
            raise ValueError(f"{where}: surveys must be a list")
        values["surveys"] = [
            build_strict(DatasetSpec, s, f"{where}: surveys[{i}]")
            for i, s in enumerate(values["surveys"])
        ]
    for key in ("pretrain", "finetune"):
        if key in values:
            values[key] = build_strict(TrainSpec, values[key], f"{where}: {key}")
    for key, cls in (("forecast", ForecastSpec), ("wages", WagesSpec), ("explain", ExplainSpec)):
        if values.get(key) is not None:
            values[key] = build_strict(cls, values[key], f"{where}: {key}")
    experiment = build_strict(Experiment, values, where)
    for baseline in experiment.baselines:  # every baseline's settings resolve
        experiment.baseline_spec(baseline)
    return experiment


def load(path: str) -> Experiment:
    """The experiment in a YAML (or JSON) file; any problem names the file."""
    values = read_mapping(path, "experiment", "store:, surveys:, ...")
    try:
        return from_dict(values, where=path)
    except ValueError as error:
        raise StructuralError(str(error), path=path) from None
