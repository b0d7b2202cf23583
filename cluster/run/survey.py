"""One survey of `career run`, as one Ray task: train its models, then its remaining steps.

With one CPU worker per model (`survey_workers: 1`, the default) the task trains its models in
its own process and holds that worker's CPUs (`survey_worker_cpus`); with several workers or GPUs
it holds nothing itself and starts one Ray Train worker group for all of them. Either way the
surveys run side by side as far as the cluster's CPUs and GPUs allow, and a task lost with its
process or node runs again (its steps are idempotent, its models resume from checkpoints).
"""

from __future__ import annotations

import time
from typing import Any

from cluster.run.experiment import from_dict
from cluster.run.step_list import survey_steps, training_settings, trainings, trains_in_task
from eval.run_layout import METRICS, RunLayout, finished


def survey_task(
    experiment_dict: dict[str, Any],
    survey: str,
    *,
    run_url: str,
    ray_address: str | None,
    storage_options: dict | None,
) -> dict[str, Any]:
    """Train every model of one survey not trained before, then carry out its steps; the seconds
    each took and the Ray node it ran on (the survey's entry in steps.json)."""
    from cluster import train_job

    began = time.time()
    experiment = from_dict(experiment_dict)
    spec = next(s for s in experiment.surveys if s.name == survey)
    layout = RunLayout(run_url)
    times: dict[str, float] = {}
    pending = {
        t.name: training_settings(experiment, t, layout, ray_address, storage_options)
        for t in trainings(experiment, spec, layout)
        if not finished(t.out, METRICS, storage_options)
    }
    if pending:
        # One Ray Train start-up for all of them (train_job.launch_together); each model's time
        # is its training loop, and "start-ups" the rest (workers, DeepSpeed, exports).
        started = time.perf_counter()
        metrics = train_job.train_all(list(pending.values()), in_process=trains_in_task(experiment))
        times.update(
            {m: r.get("wall_seconds") or 0.0 for m, r in zip(pending, metrics, strict=True)}
        )
        times["start-ups"] = max(0.0, time.perf_counter() - started - sum(times.values()))
    for step in survey_steps(experiment, spec, layout, ray_address, storage_options):
        if step.finished(storage_options):
            continue
        started = time.perf_counter()
        step.action()
        times[step.name] = time.perf_counter() - started
    import ray

    node = ray.get_runtime_context().get_node_id()  # where it ran (steps.json)
    return {
        "survey": survey,
        "seconds": times,
        "started": round(began, 1),
        "node": node,
    }
