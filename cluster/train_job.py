"""`career pretrain` / `career finetune` / `career export`: check, resolve, launch, report.

Every run is checked before a worker starts and before anything is written under `--out`
(`trainer.preflight.check_run`); a closed-form kind (`--model markov`) is then fitted in this
process (no workers, no DeepSpeed), the others launched with Ray Train or torchrun.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import Any

from cluster.console import console, print_rows
from cluster.train_settings import ExportSettings, TrainingSettings
from data_shards import storage
from data_shards.errors import StructuralError
from eval.run_layout import METRICS
from trainer.accelerator import accelerator_env, allocator_env
from trainer.launch import ERROR_FILE_ENV
from trainer.preemption import Preempted


# ----------------------------------------------------------------------------- launch
def _torchrun(settings: TrainingSettings) -> None:
    """One node, `--workers` processes. Storage options travel in a 0600 file, never in argv."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(settings.workers),
        "-m",
        "trainer.launch",
        "--data",
        settings.data,
        "--out",
        settings.out,
        "--config-json",
        json.dumps(settings.config.to_dict()),
        "--stop-after",
        str(settings.stop_after),
    ]
    if settings.base:
        command += ["--base", settings.base]
    with tempfile.TemporaryDirectory(prefix="career-launch-") as folder:
        errors = os.path.join(folder, "error")
        env = {
            **os.environ,
            **accelerator_env(settings.on_gpu),
            **allocator_env(),
            ERROR_FILE_ENV: errors,
        }
        if settings.storage_options:
            path = os.path.join(folder, "storage_options.json")
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
                json.dump(settings.storage_options, f)
            command += ["--storage-options-file", path]
        status, noticed = _run_passing_sigterm(command, env)
        if noticed:
            raise Preempted(None, storage.redact(settings.out))
        if status != 0:
            raise _worker_failure(folder)


def _run_passing_sigterm(command: list[str], env: dict[str, str]) -> tuple[int, bool]:
    """Run torchrun: (its exit status, whether this process got SIGTERM meanwhile). The signal
    (a preemption notice) is passed on to torchrun, which passes it to the workers: they
    checkpoint after their current update and stop."""
    import signal
    import threading

    child = subprocess.Popen(command, env=env)
    noticed = threading.Event()

    def pass_on(*_: object) -> None:
        noticed.set()
        child.send_signal(signal.SIGTERM)

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, pass_on)
    try:
        return child.wait(), noticed.is_set()
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _worker_failure(folder: str) -> Exception:
    """The first error of ours a torchrun worker reported (lowest rank), else a plain failure."""
    ranks = sorted(
        int(name.rsplit(".", 1)[1])
        for name in os.listdir(folder)
        if name.startswith("error.") and name.rsplit(".", 1)[1].isdigit()
    )
    if not ranks:
        return RuntimeError("a training worker failed (see its output above)")
    with open(os.path.join(folder, f"error.{ranks[0]}")) as f:
        report = json.load(f)
    kind = StructuralError if report["type"] == "StructuralError" else ValueError
    return kind(report["message"])


def _outcome(settings: TrainingSettings) -> dict[str, Any]:
    """A launched run's metrics.json, or `{"stopped_at": N}` when `--stop-after` ended it."""
    metrics_url = storage.join(settings.out, METRICS)
    if settings.stop_after and not storage.exists(metrics_url, settings.storage_options):
        return {"stopped_at": settings.stop_after}
    return json.loads(storage.read_text(metrics_url, settings.storage_options))


def launch_together(runs: list[TrainingSettings], in_process: bool = False) -> list[dict[str, Any]]:
    """Run checked, resolved training runs with their launcher; their metrics, in order.

    Ray Train runs that share workers and GPUs go to one set of workers, one after another:
    starting Ray Train costs about 10 s of a quiet CPU (its controller, the worker processes, the
    process group, and their shutdown), which a survey's few short runs would otherwise pay each.
    `in_process`: one-worker CPU runs train in this process instead (`trainer.launch.
    in_process_jobs`: a Ray task that is retried as a whole when lost, a survey of `career run`)."""
    if in_process and any(s.workers != 1 or s.on_gpu or s.launcher == "torchrun" for s in runs):
        raise ValueError("only one-worker CPU runs on Ray train in this process")
    together = [s for s in runs if s.launcher != "torchrun"]
    for s in runs:
        if s.launcher == "torchrun":
            _torchrun(s)
    if together:
        from trainer.launch import in_process_jobs, job_payload, ray_train_jobs

        jobs = [
            job_payload(s.config, s.data, s.out, s.base, s.storage_options, s.stop_after)
            for s in together
        ]
        if in_process:
            import ray

            in_process_jobs(
                jobs, ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
            )
        else:
            from cluster.ray_session import connect_ray

            first = together[0]
            if any(s.resources != first.resources for s in together):
                raise ValueError("runs launched together must use the same workers, GPUs and CPUs")
            connect_ray(
                first.ray.ray_address,
                first.ray.num_cpus,
                paths=first,
                shared_fs=first.ray.shared_fs,
            )
            held = first.resources
            ray_train_jobs(
                jobs, held.workers, held.gpus_per_worker, held.cpus_per_worker, held.max_failures
            )
    return [_outcome(s) for s in runs]


def launch(settings: TrainingSettings) -> dict[str, Any]:
    """Run training with the chosen launcher and return the run's metrics.json."""
    return launch_together([settings])[0]


def train_all(runs: list[TrainingSettings], in_process: bool = False) -> list[dict[str, Any]]:
    """Check every run, then fit the closed-form ones here and launch the rest together
    (`launch_together`, `in_process` or not); their metrics, in order. Nothing starts before
    every run is checked."""
    from trainer.closed_form import fit_closed_form
    from trainer.preflight import check_run, closed_form

    for s in runs:
        check_run(
            s.config,
            data=s.data,
            out=s.out,
            base=s.base,
            workers=s.workers,
            storage_options=s.storage_options,
        )
        s.config.resolve(s.workers, s.on_gpu)  # config errors surface before launching

    def fitted_here(s: TrainingSettings) -> bool:
        return closed_form(s.config.kind) and not s.base

    launched = iter(launch_together([s for s in runs if not fitted_here(s)], in_process))
    return [
        fit_closed_form(s.config, s.data, s.out, s.storage_options)
        if fitted_here(s)
        else next(launched)
        for s in runs
    ]


def train(settings: TrainingSettings) -> dict[str, Any]:
    """Check, then fit (closed-form kinds) or launch training; the run's metrics."""
    return train_all([settings])[0]


def run_training(settings: TrainingSettings) -> int:
    if settings.dry_run:
        from trainer.preflight import describe_run

        described = describe_run(
            settings.config,
            data=settings.data,
            base=settings.base,
            workers=settings.workers,
            on_gpu=settings.on_gpu,
            storage_options=settings.storage_options,
        )
        print(json.dumps(described, indent=1, sort_keys=True))
        return 0
    metrics = train(settings)
    if "stopped_at" in metrics:
        console.print(
            f"stopped after update {metrics['stopped_at']} with a checkpoint in {storage.redact(settings.out)}/checkpoints"
        )
        return 0
    print_rows(
        f"{settings.recipe} -> {storage.redact(settings.out)}",
        ["updates", "tokens seen", "best valid ppl", "best step", "final valid ppl", "wall s"],
        [
            [
                metrics["updates"],
                int(metrics["tokens_seen"]),
                metrics["best_valid_perplexity"],
                metrics["best_step"],
                metrics["final_valid_perplexity"],
                metrics["wall_seconds"],
            ]
        ],
    )
    console.print(f"model package: {storage.redact(storage.join(settings.out, 'package'))}")
    return 0


def run_export(settings: ExportSettings) -> int:
    from trainer.export import export_run

    target = export_run(
        settings.run, settings.tag, settings.package, settings.storage.storage_options
    )
    console.print(f"model package written to {storage.redact(target)}")
    return 0
