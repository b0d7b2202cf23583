"""The downstream steps of a survey in `career run`: the same eval use cases the commands call
(`career evaluate|forecast|wages|explain`), with the experiment's settings; nothing printed."""

from __future__ import annotations

from cluster.run.experiment import Experiment
from cluster.run.models import survey_models
from cluster.settings import RaySettings, StorageSettings
from data_shards import storage
from eval.run_layout import DOWNSTREAM, FINETUNED, RunLayout, package_of


def evaluate(
    experiment: Experiment,
    survey: str,
    layout: RunLayout,
    address: str | None,
    storage_options,
    in_process: bool = False,
) -> None:
    """`career evaluate` of every model of the survey on its test split (scoring as Ray tasks, or
    `in_process`)."""
    from cluster import evaluate_job

    evaluate_job.evaluate(
        evaluate_job.EvaluateSettings(
            model=[f"{m}={package_of(layout.model(survey, m))}" for m in survey_models(experiment)],
            data=[layout.dataset(survey)],
            out=layout.evaluation(survey),
            cpus_per_task=experiment.cpus_per_evaluation,
            gpus_per_task=experiment.gpus_per_worker,
            ray=RaySettings(ray_address=address),
            storage=StorageSettings(storage_options=storage_options),
        ),
        in_process=in_process,
    )


def forecast(
    experiment: Experiment, survey: str, layout: RunLayout, cut: str, storage_options
) -> None:
    """`career forecast` of the survey's forecasting models on its cutoff dataset (the command's
    defaults for what the experiment does not set: chunk size, bootstrap)."""
    from cluster import forecast_job

    spec = experiment.forecast
    settings = forecast_job.ForecastSettings(
        model=[f"{m}={package_of(layout.forecast_model(survey, m))}" for m in spec.models],
        data=layout.dataset(cut),
        out=layout.forecast(survey),
        paths=spec.paths,
        seed=spec.seed,
        future_education=spec.future_education,
        storage=StorageSettings(storage_options=storage_options),
    )
    forecast_job.forecast(settings, title=f"{survey}: forecast after {{cutoff}}")


def wages(experiment: Experiment, survey: str, layout: RunLayout, storage_options) -> None:
    """The wage table of the fine-tuned model and, with `wages.gap`, the history-adjusted gap."""
    from eval.wages import run_payload

    settings = experiment.wages
    payload = run_payload(
        package_of(layout.model(survey, FINETUNED)),
        layout.dataset(survey),
        gap_by=settings.gap,
        folds=settings.folds,
        bootstrap=settings.bootstrap,
        storage_options=storage_options,
    )
    storage.write_json(
        storage.join(layout.wages(survey), DOWNSTREAM["wages"]), payload, storage_options
    )


def explain(experiment: Experiment, survey: str, layout: RunLayout, storage_options) -> None:
    """Rationales of the first test people who changed jobs in their last year."""
    from eval.explain import rationales_payload

    payload = rationales_payload(
        package_of(layout.explain_model(survey)),
        layout.dataset(survey),
        people=experiment.explain.people,
        storage_options=storage_options,
    )
    storage.write_json(
        storage.join(layout.explain(survey), DOWNSTREAM["explain"]), payload, storage_options
    )
