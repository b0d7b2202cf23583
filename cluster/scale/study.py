"""A scaling study's work: shard its corpus, train its points as Ray tasks side by side (on the
shared step runner), then write the points table, the fitted laws and the report. The folder:

    study.json                  the resolved grid (a resumed study must match it)
    datasets/corpus/            the corpus, sharded once (unless `data` names one); the points
                                train on nested prefixes of its train split (`train_people`)
    datasets/SURVEY/            the survey, when each point is fine-tuned on one
    points/NAME/                each point: a normal `career pretrain` run folder (metrics.json
                                last), and with a survey, finetune-SURVEY/ and survey.json
    points.parquet              one row per point (`eval.scaling.table`)
    fit.json                    the fitted laws (`eval.scaling.fit`)
    report.html, report.md, plots/*.png
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from typing import Any

from cluster.guards import HasPaths
from cluster.scale.grid import Point, Study
from cluster.scale.layout import StudyLayout, write_json
from cluster.scale.point import run_point
from cluster.steps import Runner, record_or_check
from data_shards import storage
from data_shards.errors import StructuralError
from eval.run_layout import MANIFEST, METRICS, finished


def check_study(layout: StudyLayout, study: Study, storage_options) -> bool:
    """Write study.json, or check that a resumed study's matches; True when resuming."""
    return record_or_check(
        layout.file("study.json"),
        {"study": study.to_dict()},
        "study",
        "this study was started with another grid: rerun it with the same --grid / --config "
        "and flags, or give another --out",
        storage_options,
        default=str,
    )


def shard_inputs(study: Study, layout: StudyLayout, storage_options, say) -> tuple[str, str | None]:
    """Shard the corpus (unless the study names a dataset) and the survey, once; their URLs."""
    from cluster.shard_job import shard_and_warn

    datasets = storage.join(layout.url, "datasets")
    data = study.data or layout.dataset(study.corpus.name)
    if not study.data and not finished(data, MANIFEST, storage_options):
        spec = dataclasses.replace(study.corpus, people=study.corpus_people())
        started = time.perf_counter()
        shard_and_warn(
            "scale",
            spec.input_spec(storage_options),
            datasets,
            spec.name,
            spec.shard_config(),
            storage_options=storage_options,
        )
        say(f"  shard {spec.name} ({spec.people:,} people): {time.perf_counter() - started:,.0f} s")
    survey = None
    if study.survey is not None:
        survey = layout.dataset(study.survey.name)
        if not finished(survey, MANIFEST, storage_options):
            started = time.perf_counter()
            shard_and_warn(
                "scale",
                study.survey.input_spec(storage_options),
                datasets,
                study.survey.name,
                study.survey.shard_config(),
                storage.join(data, "vocab.json"),
                storage_options=storage_options,
            )
            say(f"  shard {study.survey.name}: {time.perf_counter() - started:,.0f} s")
    return data, survey


def run_study(
    study: Study,
    url: str,
    *,
    ray_address: str | None = None,
    num_cpus: int | None = None,
    paths: HasPaths | None = None,
    shared_fs: bool = False,
    storage_options: dict | None = None,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every point not finished, then write the table, the fit and the report."""
    import ray

    from cluster.ray_session import connect_ray
    from cluster.scale.plan import plan, slots_for, totals
    from data_shards.stream.subset import prefix_of

    layout = StudyLayout(storage.absolute(url))
    address = connect_ray(ray_address, num_cpus, paths=paths, shared_fs=shared_fs)
    resuming = check_study(layout, study, storage_options)
    say(f"study {storage.redact(layout.url)}{' (resumed)' if resuming else ''}")
    data, survey = shard_inputs(study, layout, storage_options, say)
    from eval.scaling.corpus import corpus_facts

    facts = corpus_facts(data, storage_options)
    try:
        prefix_of(facts["manifest"], "train", max(study.people))
    except ValueError as error:
        raise StructuralError(str(error), path=storage.redact(data)) from None
    rows = {r["point"]: r for r in plan(study, facts["vocab_sizes"], facts["mean_length"])}
    resources = ray.cluster_resources()
    slots = slots_for(study, resources.get("CPU", 1), resources.get("GPU", 0))
    cost = totals(study, list(rows.values()), slots)
    points = study.points()
    done = [p.name for p in points if _point_done(layout, p, survey, storage_options)]
    todo = sorted(
        (p for p in points if p.name not in done), key=lambda p: -rows[p.name]["estimated_seconds"]
    )
    say(
        f"  {len(points)} points, {len(done)} done before; {slots} side by side; estimated "
        f"{cost['wall_seconds'] / 60:,.0f} min for all of them"
    )
    task = ray.remote(num_cpus=0)(run_point)
    started = time.perf_counter()
    finished = Runner(say=say).tasks(
        todo,
        lambda point: task.remote(
            study.to_dict(),
            point.name,
            url=layout.url,
            data=data,
            survey=survey,
            address=address,
            storage_options=storage_options,
        ),
        slots=slots,
    )
    for point, result in finished:
        done.append(point.name)
        say(
            f"  point {point.name}: {result['seconds']:,.0f} s ({len(done)}/{len(points)}, "
            f"{time.perf_counter() - started:,.0f} s since the first)"
        )
    return write_results(study, layout, rows, facts, storage_options, say)


def _point_done(layout: StudyLayout, point: Point, survey: str | None, storage_options) -> bool:
    if not finished(layout.point(point.name), METRICS, storage_options):
        return False
    return survey is None or storage.exists(layout.survey_result(point.name), storage_options)


def write_results(
    study: Study, layout: StudyLayout, rows: dict[str, dict], facts: dict, storage_options, say
) -> dict[str, Any]:
    """points.parquet, fit.json and the report, from the finished points."""
    import io

    from eval.scaling.fit import fit_study
    from eval.scaling.report import write_report
    from eval.scaling.table import point_row, points_frame

    table = []
    for point in study.points():
        metrics_url = storage.join(layout.point(point.name), METRICS)
        if not storage.exists(metrics_url, storage_options):
            continue
        metrics = json.loads(storage.read_text(metrics_url, storage_options))
        result_url = layout.survey_result(point.name)
        result = (
            json.loads(storage.read_text(result_url, storage_options))
            if storage.exists(result_url, storage_options)
            else None
        )
        planned = rows[point.name]
        table.append(
            point_row(
                {**planned, "name": point.name, "token_budget": point.tokens}, metrics, result
            )
        )
    frame = points_frame(table)
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    storage.write_bytes_atomic(layout.file("points.parquet"), buffer.getvalue(), storage_options)
    fit = fit_study(frame, floor=facts["floor"])
    write_json(layout.file("fit.json"), fit, storage_options)
    report = write_report(layout.url, frame, fit, facts["floor"], study.to_dict(), storage_options)
    say(
        f"  table {storage.redact(layout.file('points.parquet'))}, fit "
        f"{storage.redact(layout.file('fit.json'))}, report {storage.redact(report)}"
    )
    return {"points": table, "fit": fit, "report": report}
