"""One point of a scaling study, as a Ray task: pretrain its model on its corpus prefix
(continuing from its checkpoints), then, with a survey, fine-tune it and score the survey's test
split (survey.json)."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from cluster.run.models import train_settings
from cluster.scale.grid import Point, Study, from_dict
from cluster.scale.layout import StudyLayout, write_json
from cluster.train_settings import TrainingSettings
from data_shards import storage
from eval.run_layout import METRICS, finished, package_of


def point_settings(
    study: Study, point: Point, *, data: str, out: str, address: str | None, storage_options
) -> TrainingSettings:
    """The `career pretrain` settings of one point: its model on the first `people` people."""
    spec = dataclasses.replace(
        study.pretrain,
        preset=point.model.preset,
        updates=point.updates,
        overrides=[
            *study.pretrain.overrides,
            *point.model.overrides(),
            f"train_people={point.people}",
        ],
    )
    return train_settings(
        spec,
        kind="career",
        recipe="pretrain",
        data=data,
        out=out,
        resources=study.resources,
        ray_address=address,
        storage_options=storage_options,
    )


def run_point(
    study_dict: dict[str, Any],
    name: str,
    *,
    url: str,
    data: str,
    survey: str | None,
    address: str | None,
    storage_options,
) -> dict[str, Any]:
    """Pretrain one point (continuing from its checkpoints), then fine-tune it on the survey and
    score the survey's test split (a Ray task, or in the driver)."""
    from cluster import train_job

    study = from_dict(study_dict)
    point = next(p for p in study.points() if p.name == name)
    layout = StudyLayout(url)
    out = layout.point(name)
    started = time.perf_counter()
    if not finished(out, METRICS, storage_options):
        train_job.train(
            point_settings(
                study, point, data=data, out=out, address=address, storage_options=storage_options
            )
        )
    if survey is not None and not storage.exists(layout.survey_result(name), storage_options):
        from trainer.closed_form import package_perplexity

        tuned = layout.finetune(name, study.survey.name)
        if not finished(tuned, METRICS, storage_options):
            train_job.train(
                train_settings(
                    study.finetune,
                    kind="career",
                    recipe="finetune",
                    data=survey,
                    out=tuned,
                    resources=study.resources,
                    base=package_of(out),
                    ray_address=address,
                    storage_options=storage_options,
                )
            )
        test = package_perplexity(
            package_of(tuned), survey, "test", study.finetune.tokens_per_update, storage_options
        )
        write_json(
            layout.survey_result(name),
            {
                "survey": study.survey.name,
                "test_perplexity": test,
                "finetune": storage.redact(tuned),
            },
            storage_options,
        )
    return {"point": name, "seconds": time.perf_counter() - started}
