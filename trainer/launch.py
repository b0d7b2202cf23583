"""Launchers: Ray Train (clusters and the local default) and torchrun/deepspeed (one node).

Both run `trainer.loop.train` on every worker with torch.distributed initialised (gloo on CPU,
NCCL on GPU). Configuration travels as plain dicts in `train_loop_config`, never through globals.

    torchrun --nproc_per_node 2 -m trainer.launch --data D --out O --config-json '{...}'
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

from data_shards import storage
from data_shards.errors import StructuralError
from trainer.accelerator import allocator_env
from trainer.config import TrainConfig
from trainer.preemption import PREEMPTED_EXIT, Preempted, SignalStop, StopRequest
from trainer.relay import DriverProgress, DriverStop, RelayStop, RunRelay

log = logging.getLogger("career.launch")


def _worker(
    payload: dict[str, Any],
    progress_sink=None,
    stop_request: StopRequest | None = None,
    restarts: int = 0,
) -> dict[str, Any]:
    """Body of every worker: join the process group, train, leave cleanly."""
    from trainer.accelerator import select_accelerator

    select_accelerator()  # before DeepSpeed is imported
    import torch.distributed as dist

    from trainer import engine
    from trainer.loop import train

    engine.init_distributed()
    # No barrier in a `finally`: a rank that fails must not wait for the others forever. Its
    # exception ends this worker and the launcher (torchrun or Ray Train) stops the rest.
    metrics = train(
        TrainConfig.from_dict(payload["config"]),
        payload["data"],
        payload["out"],
        base_package=payload.get("base"),
        storage_options=payload.get("storage_options"),
        stop_after=payload.get("stop_after", 0),
        progress_sink=progress_sink,
        stop_request=stop_request,
        restarts=restarts,
        worker_nodes=payload.get("worker_nodes"),
    )
    dist.barrier()
    return metrics


def _ray_worker(payload: dict[str, Any]) -> None:
    """Every training run of `payload["jobs"]`, one after another, on the same workers and
    process group (one Ray Train start-up for a survey's models instead of one per model).

    Ray Train runs this again on a new worker group after a failure: each run not finished
    resumes from its own latest checkpoint, and the relay says which runs are finished."""
    # No ray.train.report: in Ray Train V2 it is a collective, and the run's metrics and
    # checkpoints already live under --out (metrics.json, checkpoints/).
    import gc

    import ray
    import torch.distributed as dist

    from trainer.distributed import all_gather, from_rank0

    relay = payload["relay"]
    rank = dist.get_rank()
    attempt = from_rank0(ray.get(relay.begin_attempt.remote()) if rank == 0 else None)
    if attempt["give_up"]:  # an error of ours, or a stop, in an earlier group: not retried
        return
    nodes = all_gather(ray.get_runtime_context().get_node_id())

    def sink(step: int, total: int, detail: str, message: str | None) -> None:
        relay.update.remote(step, total, detail, message)  # fire and forget

    stop = RelayStop(relay)
    for index, job in enumerate(payload["jobs"]):
        if index in attempt["finished"]:
            continue
        try:
            metrics = _worker(
                {**job, "worker_nodes": nodes}, sink, stop, attempt["restarts"][index]
            )
        except USER_ERRORS as error:
            ray.get(relay.fail.remote(error))  # recorded before this group is torn down
            raise
        if rank == 0:
            ray.get(relay.finish.remote(index, metrics.get("stopped_at")))
        if metrics.get("preempted"):
            return  # the driver got SIGTERM: every rank stopped with a checkpoint
        gc.collect()  # the finished run's engine, optimizer and loader before the next


def _messages_only(step: int, total: int, detail: str, message: str | None) -> None:
    """The progress sink of a run in a Ray task: its messages (a resume, early stopping) reach
    the driver's console through Ray's log forwarding; a bar drawn there would not."""
    if message:
        print(message, flush=True)


@contextlib.contextmanager
def world_of_one() -> Iterator[None]:
    """A process group of this process alone (gloo over an in-memory store: no port, no other
    process), with the environment a rank reads; both removed on leaving."""
    import torch.distributed as dist

    if dist.is_initialized():
        raise RuntimeError("a process group is already initialised in this process")
    names = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"}
    before = {name: os.environ.get(name) for name in names}
    os.environ.update(names)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def in_process_jobs(jobs: list[dict[str, Any]], node: str | None = None) -> None:
    """Run the training runs `jobs` (`job_payload`s) one after another in this process, as a
    world of one; each writes its metrics.json under its `out`. `node`: where this process runs
    (metrics.json `worker_nodes`).

    For a Ray task that trains on one CPU worker (a survey of `career run`): a Ray Train run
    would start a controller and a worker process for it, about 10 s of a quiet core each time
    (30 s with three surveys starting side by side on 2 cores). Faults stay covered: a lost
    process or node is the task's loss, and Ray runs the task again (`max_retries`), whose
    unfinished runs resume from their latest checkpoints."""
    import gc

    from trainer.accelerator import select_accelerator

    select_accelerator()  # before DeepSpeed is imported
    with world_of_one():
        for job in jobs:
            _worker({**job, "worker_nodes": [node] if node else None}, _messages_only)
            gc.collect()  # the finished run's engine, optimizer and loader before the next


#: torchrun workers write an error of ours to `$CAREER_ERROR_FILE.<rank>` for the driver.
ERROR_FILE_ENV = "CAREER_ERROR_FILE"
#: Errors of ours whose message is meant for the user (a worker's is re-raised on the driver).
USER_ERRORS = (StructuralError, ValueError, FileNotFoundError, PermissionError)


def worker_error(failure: BaseException) -> BaseException | None:
    """The user-facing error behind a failed Ray Train run, if a worker raised one of ours.

    Ray Train wraps worker exceptions in a `WorkerGroupError` holding each rank's exception; when
    one rank fails on bad input the others often fail only because it left the process group,
    so the first error of ours, lowest rank first, is the cause."""
    failures = getattr(failure, "worker_failures", None) or {}
    for rank in sorted(failures):
        error = failures[rank]
        while error is not None and not isinstance(error, USER_ERRORS):
            error = getattr(error, "cause", None)  # Ray's wrappers (RayTaskError) hold it here
        if error is not None:
            return error
    return None


def job_payload(
    config: TrainConfig,
    data: str,
    out: str,
    base: str | None = None,
    storage_options: dict | None = None,
    stop_after: int = 0,
) -> dict[str, Any]:
    """One training run as the workers receive it (local paths made absolute: the workers run in
    another working directory)."""
    return {
        "config": config.to_dict(),
        "data": storage.absolute(data),
        "out": storage.absolute(out),
        "base": storage.absolute(base),
        "storage_options": storage_options,
        "stop_after": stop_after,
    }


#: Worker-group failures a Ray Train run survives by default (`--max-failures`).
MAX_FAILURES = 3
#: Seconds the driver waits, after SIGTERM, for the workers' checkpoint before leaving anyway.
PREEMPTION_GRACE = 120.0


def ray_train_jobs(
    jobs: list[dict[str, Any]],
    workers: int = 2,
    gpus_per_worker: float = 0,
    cpus_per_worker: float = 1,
    max_failures: int = MAX_FAILURES,
) -> None:
    """Run the training runs `jobs` (`job_payload`s) in turn on one set of `workers` Ray Train
    workers (the Ray instance this process is connected to): each resumes from its own
    checkpoints and writes its own metrics and package. `cpus_per_worker`: the Ray CPUs a CPU
    worker holds (below 1: runs share cores).

    A worker or node lost: Ray Train starts a new worker group (on the nodes left) up to
    `max_failures` times, and each unfinished run resumes from its latest checkpoint. A worker's
    error of ours (bad input, a refused checkpoint) is not retried and is raised here as itself.
    SIGTERM to this process (a preemption notice): the workers checkpoint after their current
    update and stop, and `Preempted` is raised."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    use_gpu = gpus_per_worker > 0
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    relay = ray.remote(num_cpus=0)(RunRelay).options(scheduling_strategy=here).remote(len(jobs))
    trainer = TorchTrainer(
        _ray_worker,
        train_loop_config={"jobs": jobs, "relay": relay},
        scaling_config=ScalingConfig(
            num_workers=workers,
            use_gpu=use_gpu,
            resources_per_worker={"GPU": gpus_per_worker} if use_gpu else {"CPU": cpus_per_worker},
        ),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(
            storage_path=tempfile.mkdtemp(prefix="career-raytrain-"),
            name="career",
            failure_config=FailureConfig(max_failures=max_failures),
            # $CAREER_ALLOCATOR=jemalloc: less memory, slower on `paper` (trainer.accelerator);
            # none by default: the workers' runtime environment stays the instance's own
            worker_runtime_env={"env_vars": allocated} if (allocated := allocator_env()) else None,
        ),
    )
    try:
        with DriverProgress(relay), DriverStop(relay, PREEMPTION_GRACE):
            trainer.fit()
        outcome = ray.get(relay.outcome.remote())
    except Exception as failure:
        cause = worker_error(failure)
        if cause is None or os.environ.get("CAREER_DEBUG"):
            raise
        raise cause from None
    finally:
        ray.kill(relay)
    if outcome["error"] is not None:  # raised on a worker; its group's restart gave up at once
        raise outcome["error"]
    if outcome["stop"]:
        stopped = [jobs[i]["out"] for i in outcome["stopped_at"]]
        steps = list(outcome["stopped_at"].values())
        raise Preempted(
            steps[-1] if steps else None, storage.redact(stopped[-1] if stopped else jobs[0]["out"])
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description="one training worker (run under torchrun or deepspeed)"
    )
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--config-json", required=True, help="a resolved TrainConfig as JSON")
    parser.add_argument("--base", default=None, help="model package to fine-tune")
    parser.add_argument(
        "--storage-options-file",
        default=None,
        help="fsspec options as a JSON file (0600; secrets never travel on the command line)",
    )
    parser.add_argument(
        "--stop-after", type=int, default=0, help="stop (with a checkpoint) after this update"
    )
    args = parser.parse_args()
    options = None
    if args.storage_options_file:
        with open(args.storage_options_file) as f:
            options = json.load(f)
    payload = {
        "config": json.loads(args.config_json),
        "data": args.data,
        "out": args.out,
        "base": args.base,
        "storage_options": options,
        "stop_after": args.stop_after,
    }
    try:
        metrics = _worker(payload, stop_request=SignalStop())  # torchrun passes SIGTERM on
    except USER_ERRORS as error:
        # Our message for the user, picked up by the driver (`career pretrain`) from this file;
        # torchrun's own report of the failed child stays on stderr.
        report = os.environ.get(ERROR_FILE_ENV)
        if report:
            target = f"{report}.{os.environ.get('RANK', '0')}"
            with open(f"{target}.tmp", "w") as f:  # whole or absent: torchrun may kill us
                json.dump({"type": type(error).__name__, "message": str(error)}, f)
            os.replace(f"{target}.tmp", target)
        raise
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    _exit_now(PREEMPTED_EXIT if metrics.get("preempted") else 0)


def _exit_now(status: int) -> None:
    """Leave without the interpreter's teardown. Everything the run keeps is written and closed
    by now (checkpoints, package, metrics.json, TensorBoard); tearing down the C++ objects of
    gloo and DeepSpeed at exit sometimes aborted a finished worker ("terminate called without an
    active exception", SIGABRT: seen about once in 30 runs, more often on a loaded machine), and
    torchrun then failed the whole command."""
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(status)


if __name__ == "__main__":
    main()
