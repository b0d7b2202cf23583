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

Every key is checked: a misspelt one is an error naming the file and the key, never a silent
default. `--size demo|small|paper` starts from a built-in experiment (`SIZES`); a file given with
`--config` replaces it whole. The resolved experiment is written to RUN/experiment.json and a
resumed run must match it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_shards.errors import StructuralError

#: The baselines a run can train next to fine-tuned CAREER, in the report's order.
BASELINES = ("scratch", "regression", "bag-of-jobs", "markov")
#: baseline -> the model kind it trains
BASELINE_KIND = {
    "scratch": "career",
    "regression": "regression",
    "bag-of-jobs": "bag-of-jobs",
    "markov": "markov",
}


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
        return _build(TrainSpec, {**dataclasses.asdict(self), **changes}, where)


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
        if self.future_education not in ("carried", "observed"):
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
        if self.forecast is not None:
            trained = {"finetuned", *self.baselines}
            unknown = [m for m in self.forecast.models if m not in trained]
            if unknown:
                raise ValueError(
                    f"forecast.models {unknown} are not models of this experiment "
                    f"({', '.join(sorted(trained))})"
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

    def fingerprint(self) -> dict[str, Any]:
        """What a resumed run must share with the run it continues (the store may move)."""
        return {k: v for k, v in self.to_dict().items() if k != "store"}


def _build(cls: type, values: Any, where: str):
    """`cls(**values)`, refusing keys `cls` does not have, with `where` in the message."""
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(values).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known: {', '.join(sorted(known))}")
    try:
        return cls(**values)
    except TypeError as error:  # a required key missing
        raise ValueError(f"{where}: {error}") from None


def from_dict(values: dict[str, Any], where: str = "experiment") -> Experiment:
    values = dict(values)
    if "resumes" in values:
        values["resumes"] = _build(DatasetSpec, values["resumes"], f"{where}: resumes")
    if "surveys" in values:
        if not isinstance(values["surveys"], list):
            raise ValueError(f"{where}: surveys must be a list")
        values["surveys"] = [
            _build(DatasetSpec, s, f"{where}: surveys[{i}]")
            for i, s in enumerate(values["surveys"])
        ]
    for key in ("pretrain", "finetune"):
        if key in values:
            values[key] = _build(TrainSpec, values[key], f"{where}: {key}")
    for key, cls in (("forecast", ForecastSpec), ("wages", WagesSpec), ("explain", ExplainSpec)):
        if values.get(key) is not None:
            values[key] = _build(cls, values[key], f"{where}: {key}")
    experiment = _build(Experiment, values, where)
    for baseline in experiment.baselines:  # every baseline's settings resolve
        experiment.baseline_spec(baseline)
    return experiment


def read_mapping(path: str, what: str, keys: str) -> dict[str, Any]:
    """The mapping in the YAML (or JSON) `what` file at `path` (an experiment, a scaling grid);
    an unreadable file, invalid YAML (with its line) or another top level stops naming the file."""
    import yaml

    try:
        text = Path(path).read_text()
    except OSError as error:
        raise StructuralError(f"cannot read the {what} file: {error.strerror}", path=path) from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise StructuralError(
            f"not valid YAML: {getattr(error, 'problem', error)}", path=path, line=line
        ) from None
    if not isinstance(values, dict):
        article = "an" if what[0] in "aeiou" else "a"
        raise StructuralError(f"{article} {what} file holds a mapping ({keys})", path=path)
    return values


def load(path: str) -> Experiment:
    """The experiment in a YAML (or JSON) file; any problem names the file."""
    values = read_mapping(path, "experiment", "store:, surveys:, ...")
    try:
        return from_dict(values, where=path)
    except ValueError as error:
        raise StructuralError(str(error), path=path) from None


#: Built-in experiments. demo: minutes on a laptop's CPU; small: about two hours on 2 cores;
#: paper: the paper's corpus and model (24M resumes, `paper` preset, 85,000 updates) for a GPU
#: cluster.
SIZES: dict[str, dict[str, Any]] = {
    "demo": {
        "resumes": {"name": "resumes", "simulate": "resumes", "people": 20_000},
        "surveys": [
            {"name": n, "simulate": n, "people": 2_500, "people_per_block": 128}
            for n in ("nlsy79", "nlsy97", "psid")
        ],
        "pretrain": {
            "preset": "small",
            "updates": 150,
            "tokens_per_update": 8000,
            "lr": 1e-3,
            "eval_every": 50,
        },
        "finetune": {
            "preset": "small",
            "updates": 60,
            "tokens_per_update": 4000,
            "lr": 1e-3,
            "eval_every": 20,
            "patience": 2,
        },
        "baselines": {
            "scratch": {},
            "regression": {"preset": "paper", "lr": 0.05},
            "bag-of-jobs": {"preset": "small"},
            "markov": {},
        },
        "workers": 2,
        "survey_workers": 1,
        "survey_worker_cpus": 0.5,
        "forecast": {"cutoff": 2014, "paths": 1000},
        "wages": {"gap": "gender"},
        "explain": {"people": 3, "changes": {"updates": 40}},
    },
    "small": {
        "resumes": {"name": "resumes", "simulate": "resumes", "people": 200_000},
        "surveys": [{"name": n, "simulate": n} for n in ("nlsy79", "nlsy97", "psid")],
        "pretrain": {
            "preset": "small",
            "updates": 800,
            "tokens_per_update": 16_000,
            "lr": 1e-3,
            "eval_every": 100,
        },
        "finetune": {
            "preset": "small",
            "updates": 600,
            "tokens_per_update": 4000,
            "lr": 1e-3,
            "eval_every": 25,
            "patience": 4,
        },
        "baselines": {
            "scratch": {},
            "regression": {"preset": "paper", "lr": 0.05, "weight_decay": 0.1},
            "bag-of-jobs": {"preset": "small"},
            "markov": {},
        },
        "workers": 2,
        "survey_workers": 2,
        "forecast": {"cutoff": 2014, "paths": 1000},
        "wages": {"gap": "gender"},
        "explain": {"people": 5},
    },
    "paper": {
        "resumes": {"name": "resumes", "simulate": "resumes", "people": 24_000_000},
        "surveys": [{"name": n, "simulate": n} for n in ("nlsy79", "nlsy97", "psid")],
        "pretrain": {
            "preset": "paper",
            "updates": 85_000,
            "tokens_per_update": 16_000,
            "lr": 5e-4,
            "eval_every": 1000,
            "zero_stage": 2,
        },
        "finetune": {
            "preset": "paper",
            "updates": 5_000,
            "tokens_per_update": 16_000,
            "lr": 1e-4,
            "eval_every": 250,
            "patience": 5,
        },
        "baselines": {
            "scratch": {"lr": 5e-4},
            "regression": {"lr": 0.05},
            "bag-of-jobs": {"lr": 5e-4},
            "markov": {},
        },
        "workers": 8,
        "survey_workers": 1,
        "gpus_per_worker": 1,
        "cpus_per_evaluation": 4,
        "forecast": {"cutoff": 2014, "paths": 1000},
        "wages": {"gap": "gender"},
        "explain": {"people": 10},
    },
}


def builtin(size: str) -> Experiment:
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose from {', '.join(SIZES)}")
    return from_dict(json.loads(json.dumps(SIZES[size])), where=f"--size {size}")
