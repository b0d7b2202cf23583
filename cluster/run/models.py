"""The models an experiment trains, and the `career pretrain|finetune` settings each trains with.

A `TrainSpec` (the experiment file's words) becomes a `trainer.config.TrainConfig` through typed
fields; only the spec's own `overrides` (user text, like the command line's KEY=VALUE) are parsed.
`career scale` trains its points through the same `train_settings`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cluster.run.experiment import BASELINE_KIND, Experiment
from cluster.settings import RaySettings, Resources, StorageSettings
from cluster.specs import TrainSpec
from cluster.train_settings import TrainingSettings
from eval.run_layout import BASELINES, FINETUNED

if TYPE_CHECKING:
    from trainer.config import TrainConfig


def spec_config(spec: TrainSpec, *, kind: str, recipe: str, on_gpu: bool) -> TrainConfig:
    """The training config of one of the experiment's models."""
    from trainer.config import make_config

    return make_config(
        recipe,
        spec.preset,
        spec.overrides,
        kind=kind,
        updates=spec.updates,
        tokens_per_update=spec.tokens_per_update,
        eval_every=spec.eval_every,
        patience=spec.patience,
        zero_stage=spec.zero_stage,
        loader_workers=0,
        cpu_threads=None if on_gpu else 1,
        optim={"lr": spec.lr, "weight_decay": spec.weight_decay},
    )


def train_settings(
    spec: TrainSpec,
    *,
    kind: str,
    recipe: str,
    data: str,
    out: str,
    resources: Resources,
    base: str | None = None,
    ray_address: str | None = None,
    storage_options: dict | None = None,
) -> TrainingSettings:
    """The `career pretrain` / `career finetune` settings one step trains with."""
    return TrainingSettings(
        recipe=recipe,
        config=spec_config(spec, kind=kind, recipe=recipe, on_gpu=resources.on_gpu),
        data=data,
        out=out,
        base=base,
        resources=resources,
        ray=RaySettings(ray_address=ray_address),
        storage=StorageSettings(storage_options=storage_options),
    )


def survey_models(experiment: Experiment) -> list[str]:
    """The models trained on every survey, in the table's order."""
    return [FINETUNED, *[b for b in BASELINES if b in experiment.baselines]]


def model_spec(experiment: Experiment, model: str) -> tuple[TrainSpec, str, str]:
    """How a survey model trains: its settings, model kind and recipe."""
    if model == FINETUNED:
        return experiment.finetune, "career", "finetune"
    return experiment.baseline_spec(model), BASELINE_KIND[model], "pretrain"


def check_trainable(experiment: Experiment) -> None:
    """Build every model's training config before anything runs, so that a preset a kind lacks or
    a misspelt override stops the run at once, naming its section, rather than a survey task
    after pretraining."""
    sections = [("pretrain", experiment.pretrain, "career", "pretrain")]
    sections += [
        ("finetune" if m == FINETUNED else f"baselines.{m}", *model_spec(experiment, m))
        for m in survey_models(experiment)
    ]
    if experiment.explain is not None:
        sections.append(("explain", experiment.explain_spec(), "career", "finetune"))
    on_gpu = experiment.gpus_per_worker > 0
    for where, spec, kind, recipe in sections:
        try:
            spec_config(spec, kind=kind, recipe=recipe, on_gpu=on_gpu)
        except ValueError as error:
            raise ValueError(f"experiment {where}: {error}") from None
