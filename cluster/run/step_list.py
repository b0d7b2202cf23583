"""The steps of `career run`, declared once: the run carries them out and `--dry-run` prints them.

    shard NAME            each dataset: the resumes, every survey, every survey cut at its
                          forecasting cutoff (marker: manifest.json)
    pretrain              CAREER on the resumes (marker: metrics.json)
    survey NAME           one Ray task per survey (`cluster.run.survey`): its models
                          (`trainings`), then `survey_steps`: evaluate, forecast, wages, explain
    report                rewritten by every invocation

Each step's folder and marker come from `eval.run_layout`; a step is skipped when its marker
exists, and a training step continues from its last checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cluster.run.experiment import Experiment
from cluster.run.models import model_spec, survey_models, train_settings
from cluster.specs import DatasetSpec, TrainSpec
from cluster.steps import Step
from cluster.train_settings import TrainingSettings
from data_shards import storage
from data_shards.manifest import MANIFEST
from eval.run_layout import DOWNSTREAM, METRICS, RunLayout, package_of


def dataset_steps(experiment: Experiment, layout: RunLayout, storage_options) -> list[Step]:
    """Shard the resumes, every survey (extending the resume vocabulary) and every cut survey."""
    from cluster.shard_job import shard_and_warn

    resume_vocab = storage.join(layout.dataset(experiment.resumes.name), "vocab.json")
    wanted: list[tuple[DatasetSpec, str, int | None]] = [
        (spec, spec.name, None) for spec in [experiment.resumes, *experiment.surveys]
    ]
    wanted += [
        (spec, experiment.forecast_name(spec), experiment.forecast_cutoff(spec))
        for spec in experiment.surveys
        if experiment.forecast_name(spec)
    ]
    steps = []
    for spec, name, until in wanted:
        parent = None if spec is experiment.resumes else resume_vocab
        steps.append(
            Step(
                f"shard {name}",
                layout.dataset(name),
                MANIFEST,
                lambda spec=spec, name=name, parent=parent, until=until: shard_and_warn(
                    "run",
                    spec.input_spec(storage_options),
                    storage.join(layout.url, "datasets"),
                    name,
                    spec.shard_config(until),
                    parent,
                    storage_options=storage_options,
                ),
                plan=None if until is None else f"shard {name} (cut at {until}, for forecasting)",
            )
        )
    return steps


def pretrain_settings(
    experiment: Experiment, layout: RunLayout, address: str | None, storage_options
) -> TrainingSettings:
    return train_settings(
        experiment.pretrain,
        kind="career",
        recipe="pretrain",
        data=layout.dataset(experiment.resumes.name),
        out=layout.pretrain,
        resources=experiment.pretrain_resources,
        ray_address=address,
        storage_options=storage_options,
    )


def pretrain_step(
    experiment: Experiment, layout: RunLayout, address: str | None, storage_options
) -> Step:
    from cluster import train_job

    settings = pretrain_settings(experiment, layout, address, storage_options)
    return Step("pretrain", layout.pretrain, METRICS, lambda: train_job.train(settings))


@dataclass(frozen=True)
class Training:
    """One model a survey task trains: its name in the step times, and how."""

    name: str
    data: str
    out: str
    spec: TrainSpec
    kind: str
    recipe: str


def trainings(experiment: Experiment, survey: DatasetSpec, layout: RunLayout) -> list[Training]:
    """Every model of the survey: its models, the forecasting models on the cut dataset, and the
    word-dropout model for rationales."""
    data = layout.dataset(survey.name)
    wanted = [
        Training(m, data, layout.model(survey.name, m), *model_spec(experiment, m))
        for m in survey_models(experiment)
    ]
    cut = experiment.forecast_name(survey)
    if cut is not None:
        wanted += [
            Training(
                f"forecast {m}",
                layout.dataset(cut),
                layout.forecast_model(survey.name, m),
                *model_spec(experiment, m),
            )
            for m in experiment.forecast.models
        ]
    if experiment.explain is not None and survey.downstream:
        wanted.append(
            Training(
                "explain model",
                data,
                layout.explain_model(survey.name),
                experiment.explain_spec(),
                "career",
                "finetune",
            )
        )
    return wanted


def training_settings(
    experiment: Experiment,
    training: Training,
    layout: RunLayout,
    address: str | None,
    storage_options,
) -> TrainingSettings:
    return train_settings(
        training.spec,
        kind=training.kind,
        recipe=training.recipe,
        data=training.data,
        out=training.out,
        resources=experiment.survey_resources,
        base=package_of(layout.pretrain) if training.recipe == "finetune" else None,
        ray_address=address,
        storage_options=storage_options,
    )


def trains_in_task(experiment: Experiment) -> bool:
    """Whether a survey task trains its models itself (one CPU worker each: a world of one, no
    Ray Train start-up) rather than on a Ray Train worker group (several workers, or GPUs)."""
    return experiment.survey_workers == 1 and experiment.gpus_per_worker == 0


def survey_steps(
    experiment: Experiment,
    survey: DatasetSpec,
    layout: RunLayout,
    address: str | None,
    storage_options,
) -> list[Step]:
    """What a survey task does after training its models, each step only where it applies (with
    `trains_in_task`, scoring in the task's process too)."""
    from cluster.run import uses

    in_task = trains_in_task(experiment)

    name = survey.name
    steps = [
        Step(
            "evaluate",
            layout.evaluation(name),
            METRICS,
            lambda: uses.evaluate(
                experiment, name, layout, address, storage_options, in_process=in_task
            ),
        )
    ]
    cut = experiment.forecast_name(survey)
    if cut is not None:
        retrained = ", ".join(experiment.forecast.models)
        steps.append(
            Step(
                "forecast",
                layout.forecast(name),
                DOWNSTREAM["forecast"],
                lambda: uses.forecast(experiment, name, layout, cut, storage_options),
                plan=f"forecast ({retrained} retrained on the cut)",
            )
        )
    if survey.downstream and experiment.wages is not None:
        steps.append(
            Step(
                "wages",
                layout.wages(name),
                DOWNSTREAM["wages"],
                lambda: uses.wages(experiment, name, layout, storage_options),
            )
        )
    if survey.downstream and experiment.explain is not None:
        steps.append(
            Step(
                "explain",
                layout.explain(name),
                DOWNSTREAM["explain"],
                lambda: uses.explain(experiment, name, layout, storage_options),
                plan="explain (a word-dropout fine-tune)",
            )
        )
    return steps


def plan(experiment: Experiment, layout: RunLayout) -> list[dict[str, Any]]:
    """The steps in order, each with what it writes (what `--dry-run` prints)."""
    listed = [
        {"step": step.plan or step.name, "writes": step.folder}
        for step in dataset_steps(experiment, layout, None)
    ]
    listed.append({"step": "pretrain", "writes": layout.pretrain})
    for survey in experiment.surveys:
        models = ", ".join(survey_models(experiment))
        then = [s.plan or s.name for s in survey_steps(experiment, survey, layout, None, None)]
        listed.append(
            {
                "step": f"survey {survey.name} (one Ray task: {models}, then {', '.join(then)})",
                "writes": layout.survey(survey.name),
            }
        )
    listed.append({"step": "report", "writes": layout.report})
    return [{k: storage.redact(v) for k, v in s.items()} for s in listed]
