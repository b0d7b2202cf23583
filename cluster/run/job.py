"""`career run`: the whole experiment as resumable steps on Ray, ending in one table per survey.

The run lives in RUN = STORE/RUN_ID (a local folder or an object-store prefix), laid out as
`eval.run_layout` says; its steps are `cluster.run.step_list`'s. A step is complete only when its
marker is written (a dataset's manifest.json, a run's metrics.json), so a run stopped anywhere
(Ctrl-C, a lost node, a killed driver) is continued by `career run --run-id ID`: completed steps
are skipped, and pretraining and fine-tuning continue from their last checkpoint (every
evaluation writes one).

After pretraining, one Ray task per survey (`cluster.run.survey`) trains that survey's models and
carries out its steps; the tasks run side by side as far as the cluster's CPUs and GPUs allow.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cluster import flags
from cluster.run.experiment import Experiment
from cluster.run.models import check_trainable
from cluster.run.sizes import SIZES
from cluster.run.step_list import (
    dataset_steps,
    plan,
    pretrain_step,
    survey_steps,
    trainings,
    trains_in_task,
)
from cluster.settings import RaySettings, StorageSettings
from cluster.specs import DatasetSpec
from cluster.steps import Runner, StepLog, record_or_check
from data_shards import storage
from data_shards.errors import StructuralError
from eval.run_layout import EXPERIMENT, METRICS, STEPS, RunLayout, finished
from trainer.preemption import PREEMPTED_EXIT, Preempted

RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_experiment(layout: RunLayout, experiment: Experiment, storage_options) -> bool:
    """Write experiment.json, or check that a resumed run's matches; True when resuming."""
    return record_or_check(
        layout.file(EXPERIMENT),
        {"experiment": experiment.to_dict(), "fingerprint": experiment.fingerprint()},
        "fingerprint",
        "this run was started with another experiment: resume it with the same --config / "
        "--size, or start a new run (another --run-id)",
        storage_options,
        sort_keys=False,
        newline=False,
    )


def survey_pending(
    experiment: Experiment, survey: DatasetSpec, layout: RunLayout, storage_options
) -> bool:
    """Whether any model or step of the survey is unfinished (a task killed after its evaluation
    still has its forecast, wages or rationales to write)."""
    trained = all(
        finished(t.out, METRICS, storage_options) for t in trainings(experiment, survey, layout)
    )
    steps = survey_steps(experiment, survey, layout, None, storage_options)
    return not trained or not all(step.finished(storage_options) for step in steps)


def run_experiment(
    experiment: Experiment,
    run_url: str,
    *,
    ray_address: str | None = None,
    num_cpus: int | None = None,
    shared_fs: bool = False,
    storage_options: dict | None = None,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Carry out every step not yet complete; the per-survey evaluation metrics."""
    from cluster.ray_session import connect_ray
    from cluster.run.survey import survey_task

    layout = RunLayout(storage.absolute(run_url))
    # Ray first: a store the cluster's nodes cannot share is refused before anything is written.
    address = connect_ray(ray_address, num_cpus, paths=experiment, shared_fs=shared_fs)
    resuming = check_experiment(layout, experiment, storage_options)
    log = StepLog.continued(layout.file(STEPS), storage_options, resuming)
    say(f"run {storage.redact(layout.url)}{' (resumed)' if resuming else ''}")
    runner = Runner(log, storage_options, say)
    for step in dataset_steps(experiment, layout, storage_options):
        runner.step(step)
    runner.step(pretrain_step(experiment, layout, address, storage_options))

    import ray

    # Spread: each survey's training and scoring on another node where there are several. A
    # survey task lost with its node is started again elsewhere (its steps are idempotent and its
    # models resume from their checkpoints).
    cpus = experiment.survey_worker_cpus if trains_in_task(experiment) else 0
    task = ray.remote(num_cpus=cpus)(survey_task).options(
        scheduling_strategy="SPREAD", max_retries=experiment.max_failures
    )
    pending = [
        s.name for s in experiment.surveys if survey_pending(experiment, s, layout, storage_options)
    ]
    for s in experiment.surveys:
        if s.name not in pending:
            say(f"  survey {s.name}: done before, skipped")
    started = time.perf_counter()
    surveys = runner.tasks(
        pending,
        lambda name: task.remote(
            experiment.to_dict(),
            name,
            run_url=layout.url,
            ray_address=address,
            storage_options=storage_options,
        ),
    )
    for name, result in surveys:
        seconds = time.perf_counter() - started
        log.record(
            f"survey {name}",
            "done",
            seconds,
            models=result["seconds"],
            started=result["started"],
            node=result["node"],
        )
        say(
            f"  survey {name}: {seconds:,.0f} s since pretraining "
            + ", ".join(f"{m} {t:,.0f} s" for m, t in result["seconds"].items())
        )
    results = {
        s.name: json.loads(
            storage.read_text(storage.join(layout.evaluation(s.name), METRICS), storage_options)
        )
        for s in experiment.surveys
    }
    # The report is rewritten by every invocation: it shows the run as it now stands.
    from eval.report import build_report

    started = time.perf_counter()
    written = build_report(layout.url, layout.report, storage_options)
    log.record("report", "done", time.perf_counter() - started)
    say(f"  report: {storage.redact(written.html)}")
    return results


@dataclass(kw_only=True)
class RunSettings:
    """Run the whole experiment: shard the resumes and the surveys, pretrain CAREER, then on each
    survey (side by side) fine-tune it, train the baselines and evaluate them all, and write the
    report. Resumable: `--run-id ID` (or `--resume`) continues a stopped run where it stopped."""

    config: str | None = flags.option(
        None,
        help="experiment file (YAML; see cluster/run/experiment.py); default: --size",
        metavar="FILE",
        path=True,
    )
    size: str = flags.option(
        "demo",
        help="built-in experiment: demo (minutes on a laptop CPU), small (about two hours on a 2-core "
        "machine), paper (24M resumes and the paper's model and updates, for a GPU cluster)",
        choices=tuple(SIZES),
    )
    store: str | None = flags.option(
        None,
        help="where runs live, a folder or s3:// prefix (default: the experiment's, ./career_run)",
        metavar="URL",
        path=True,
    )
    run_id: str | None = flags.option(
        None,
        help="the run to start or continue (default: a new one, named by date and time)",
        metavar="ID",
    )
    resume: bool = flags.option(False, help="continue the store's most recent run")
    dry_run: bool = flags.option(
        False, help="print the resolved experiment and the plan of steps, then exit"
    )
    ray: RaySettings = field(default_factory=RaySettings)
    storage: StorageSettings = field(default_factory=StorageSettings)

    def __post_init__(self) -> None:
        if self.run_id is not None and not RUN_ID.fullmatch(self.run_id):
            raise ValueError(f"--run-id {self.run_id!r}: letters, digits, '-', '_' and '.' only")
        if self.run_id and self.resume:
            raise ValueError("give --run-id or --resume, not both")

    def experiment(self) -> Experiment:
        from cluster.run.experiment import load
        from cluster.run.sizes import builtin

        experiment = load(self.config) if self.config else builtin(self.size)
        if self.store:
            experiment.store = self.store
        experiment.store = storage.absolute(experiment.store)
        check_trainable(experiment)
        return experiment

    def paths_read(self) -> dict[str, str | None]:
        return {"--config": self.config}

    def paths_written(self) -> dict[str, str | None]:
        return {"--store": self.store}


def latest_run(store: str, storage_options) -> str:
    """The most recent run in `store` (run ids sort by the time they were started)."""
    fs, root = storage.filesystem(store, storage_options)
    runs = sorted(
        path.rstrip("/").rsplit("/", 1)[-1]
        for path in (fs.ls(root, detail=False) if fs.exists(root) else [])
        if fs.exists(f"{path.rstrip('/')}/experiment.json")
    )
    if not runs:
        raise StructuralError(
            "no run to resume here (no folder with an experiment.json)", path=storage.redact(store)
        )
    return runs[-1]


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


def print_tables(results: dict[str, dict[str, Any]]) -> None:
    from cluster.console import print_rows
    from eval import comparison_table as table

    for survey, metrics in results.items():
        split = metrics["split"]
        for dataset, comparison in metrics["comparison"].items():
            print_rows(
                table.caption(f"{survey}: {dataset}", split, comparison),
                table.COLUMNS,
                [table.row_cells(row) for row in comparison["rows"]],
            )


def run_command(settings: RunSettings) -> int:
    from cluster.console import console

    experiment = settings.experiment()
    options = settings.storage.storage_options
    run_id = (
        latest_run(experiment.store, options)
        if settings.resume
        else settings.run_id or new_run_id()
    )
    layout = RunLayout(storage.join(experiment.store, run_id))
    if settings.dry_run:
        print(
            json.dumps(
                {
                    "run": storage.redact(layout.url),
                    "experiment": experiment.to_dict(),
                    "steps": plan(experiment, layout),
                },
                indent=1,
            )
        )
        return 0
    started = time.perf_counter()
    try:
        results = run_experiment(
            experiment,
            layout.url,
            ray_address=settings.ray.ray_address,
            num_cpus=settings.ray.num_cpus,
            shared_fs=settings.ray.shared_fs,
            storage_options=options,
            say=console.print,
        )
    except (KeyboardInterrupt, Preempted) as stop:
        preempted = isinstance(stop, Preempted)
        console.print(
            f"{'stopped on SIGTERM' if preempted else 'interrupted'}: continue with "
            f"`career run --run-id {run_id}`"
            + (f" --store {storage.redact(experiment.store)}" if settings.store else "")
        )
        return PREEMPTED_EXIT if preempted else 130
    print_tables(results)
    console.print(
        f"run {run_id} done in {time.perf_counter() - started:,.0f} s: {storage.redact(layout.url)}"
    )
    return 0
