"""A scaling study's grid (`career scale`): models x corpus sizes x token budgets, one YAML file
or flags, a dataclass underneath.

    models:                            # presets, or explicit widths/depths over a preset
      - tiny
      - {name: mini, preset: tiny, n_layer: 3, d_model: 64, n_head: 2, d_ff: 256}
      - small
    people: [10000, 50000, 200000]     # corpus sizes: nested prefixes of one sharded corpus
    tokens: []                         # token budgets (job-years); empty: `pretrain.updates` each
    corpus: {name: corpus, simulate: resumes}   # sharded once (people: enough for the largest)
    data: null                         # or an existing resume dataset to draw the subsets from
    pretrain: {updates: 600, tokens_per_update: 8000, lr: 0.001, eval_every: 50, patience: 3}
    survey: {name: nlsy79, simulate: nlsy79}    # optional: fine-tune every point on it
    finetune: {updates: 200, tokens_per_update: 4000, lr: 0.001, eval_every: 25, patience: 3}
    workers_per_point: 1               # Ray Train workers of each point (points run side by side)
    cpus_per_worker: 1
    gpus_per_worker: 0

Every key is checked, as in `career run`'s experiment file (`cluster.run.experiment`), whose dataset
and training sections this reuses. `--grid small|paper` starts from a built-in grid (`GRIDS`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from cluster.settings import Resources
from cluster.spec_files import build_strict, read_mapping
from cluster.specs import DatasetSpec, TrainSpec

#: Architecture settings a model of the grid may give over its preset.
WIDTHS = ("n_layer", "d_model", "n_head", "d_ff")
#: The share of a simulated corpus the train split gets (the sharding default, 0.9) less a margin
#: for the split's randomness, so that the largest subset fits.
TRAIN_SHARE = 0.88


@dataclass
class ModelSpec:
    """One model size: a CAREER preset, with optional explicit widths/depths."""

    name: str
    preset: str = "small"
    n_layer: int | None = None
    d_model: int | None = None
    n_head: int | None = None
    d_ff: int | None = None

    def __post_init__(self) -> None:
        from trainer.models.career import PRESETS

        if self.preset not in PRESETS:
            raise ValueError(
                f"model {self.name}: unknown preset {self.preset!r}; choose from "
                f"{', '.join(PRESETS)}"
            )
        if not self.name or "/" in self.name:
            raise ValueError(f"model name {self.name!r} must be a plain name")
        if any(v is not None and v < 1 for v in self.widths().values()):
            raise ValueError(f"model {self.name}: widths and depths must be >= 1")

    def widths(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in WIDTHS if getattr(self, k) is not None}

    def overrides(self) -> list[str]:
        return [f"model.{k}={v}" for k, v in self.widths().items()]


@dataclass(frozen=True)
class Point:
    """One run of the study: a model trained on the first `people` people of the corpus."""

    name: str
    model: ModelSpec
    people: int
    tokens: int | None  # the token budget, or None: `updates` updates
    updates: int


def count_label(n: int) -> str:
    """10000 -> 10k, 24000000 -> 24M, 2500 -> 2.5k (point names)."""
    for size, unit in ((10**9, "G"), (10**6, "M"), (10**3, "k")):
        if n >= size:
            text = f"{n / size:.3g}"
            return f"{text}{unit}"
    return str(n)


@dataclass
class Study:
    models: list[ModelSpec] = field(default_factory=list)
    people: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    corpus: DatasetSpec = field(default_factory=lambda: DatasetSpec("corpus", simulate="resumes"))
    data: str | None = None
    pretrain: TrainSpec = field(
        default_factory=lambda: TrainSpec(
            updates=600, tokens_per_update=8000, eval_every=50, patience=3
        )
    )
    survey: DatasetSpec | None = None
    finetune: TrainSpec = field(
        default_factory=lambda: TrainSpec(
            updates=200, tokens_per_update=4000, eval_every=25, patience=3
        )
    )
    workers_per_point: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0

    def __post_init__(self) -> None:
        if not self.models or not self.people:
            raise ValueError("a study needs at least one model and one corpus size (people)")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must differ: {names}")
        if min(self.people) < 1 or (self.tokens and min(self.tokens) < 1):
            raise ValueError("corpus sizes (people) and token budgets must be >= 1")
        if len(set(self.people)) != len(self.people) or len(set(self.tokens)) != len(self.tokens):
            raise ValueError("corpus sizes and token budgets must not repeat")
        self.people, self.tokens = sorted(self.people), sorted(self.tokens)
        if self.workers_per_point < 1 or self.cpus_per_worker <= 0 or self.gpus_per_worker < 0:
            raise ValueError("workers_per_point >= 1, cpus_per_worker > 0, gpus_per_worker >= 0")
        if self.data and self.corpus.input:
            raise ValueError("give `data` (a sharded dataset) or `corpus` to shard, not both")
        if self.survey is not None and self.survey.name == self.corpus.name:
            raise ValueError("the survey and the corpus need different names")

    @property
    def resources(self) -> Resources:
        """What each point's training holds (points run side by side)."""
        return Resources(
            workers=self.workers_per_point,
            gpus_per_worker=self.gpus_per_worker,
            cpus_per_worker=self.cpus_per_worker,
        )

    def points(self) -> list[Point]:
        budgets: list[int | None] = list(self.tokens) or [None]
        points = []
        for model in self.models:
            for people in self.people:
                for budget in budgets:
                    name = f"{model.name}-{count_label(people)}"
                    updates = self.pretrain.updates
                    if budget is not None:
                        name += f"-t{count_label(budget)}"
                        updates = max(1, math.ceil(budget / self.pretrain.tokens_per_update))
                    points.append(Point(name, model, people, budget, updates))
        return points

    def corpus_people(self) -> int:
        """People to simulate: the corpus's `people`, or enough for the largest subset."""
        return self.corpus.people or math.ceil(max(self.people) / TRAIN_SHARE)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def _model(value: Any, where: str) -> ModelSpec:
    if isinstance(value, str):  # a preset by name
        return ModelSpec(name=value, preset=value)
    if isinstance(value, dict) and "name" in value and "preset" not in value:
        value = {**value, "preset": value["name"]}
    return build_strict(ModelSpec, value, where)


def from_dict(values: dict[str, Any], where: str = "study") -> Study:
    values = dict(values)
    try:
        if "models" in values:
            if not isinstance(values["models"], list):
                raise ValueError(f"{where}: models must be a list")
            values["models"] = [
                _model(m, f"{where}: models[{i}]") for i, m in enumerate(values["models"])
            ]
        for key in ("corpus", "survey"):
            if values.get(key) is not None:
                values[key] = build_strict(DatasetSpec, values[key], f"{where}: {key}")
        for key in ("pretrain", "finetune"):
            if key in values:
                values[key] = build_strict(TrainSpec, values[key], f"{where}: {key}")
        return build_strict(Study, values, where)
    except ValueError as error:
        message = str(error)
        raise ValueError(message if message.startswith(where) else f"{where}: {message}") from None


def load(path: str) -> dict[str, Any]:
    """The grid in a YAML (or JSON) file, as a mapping (flags may change it before it is built);
    any problem names the file."""
    return read_mapping(path, "grid", "models:, people:, ...")


#: Built-in grids. small: this 2-core CPU machine in under 45 minutes; paper: the paper-scale
#: study for a GPU cluster (`career submit`), presets up to `large`, up to 24M resumes.
GRIDS: dict[str, dict[str, Any]] = {
    "small": {
        "models": [
            "tiny",
            {
                "name": "mini",
                "preset": "tiny",
                "n_layer": 2,
                "d_model": 64,
                "n_head": 2,
                "d_ff": 256,
            },
            "small",
        ],
        "people": [10_000, 50_000, 200_000],
        "corpus": {"name": "corpus", "simulate": "resumes"},
        "pretrain": {
            "updates": 300,
            "tokens_per_update": 8000,
            "lr": 2e-3,
            "eval_every": 50,
            "patience": 2,
        },
        "workers_per_point": 1,
        "cpus_per_worker": 1,
    },
    "paper": {
        "models": ["small", "paper", "medium", "large"],
        "people": [100_000, 1_000_000, 4_000_000, 24_000_000],
        "corpus": {"name": "corpus", "simulate": "resumes", "people": 27_000_000},
        "pretrain": {
            "updates": 85_000,
            "tokens_per_update": 16_000,
            "lr": 5e-4,
            "eval_every": 1000,
            "patience": 5,
            "zero_stage": 2,
        },
        "survey": {"name": "nlsy79", "simulate": "nlsy79"},
        "finetune": {
            "updates": 5000,
            "tokens_per_update": 16_000,
            "lr": 1e-4,
            "eval_every": 250,
            "patience": 5,
        },
        "workers_per_point": 1,
        "gpus_per_worker": 1,
    },
}
