"""Launchers: Ray Train (clusters and the local default) and torchrun/deepspeed (one node).

Both run `trainer.loop.train` on every worker with torch.distributed initialised (gloo on CPU,
NCCL on GPU). Configuration travels as plain dicts in `train_loop_config`, never through globals.

    torchrun --nproc_per_node 2 -m trainer.launch --data D --out O --config-json '{...}'
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from typing import Any

from data_shards import storage
from data_shards.errors import StructuralError
from trainer.config import TrainConfig

log = logging.getLogger("career.launch")


def _worker(payload: dict[str, Any], progress_sink=None) -> dict[str, Any]:
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
    )
    dist.barrier()
    return metrics


def _ray_worker(payload: dict[str, Any]) -> None:
    """Every training run of `payload["jobs"]`, one after another, on the same workers and
    process group (one Ray Train start-up for a survey's models instead of one per model)."""
    # No ray.train.report: in Ray Train V2 it is a collective, and the run's metrics and
    # checkpoints already live under --out (metrics.json, checkpoints/).
    import gc

    relay = payload.get("progress")

    def sink(step: int, total: int, detail: str, message: str | None) -> None:
        relay.update.remote(step, total, detail, message)  # fire and forget

    for job in payload["jobs"]:
        _worker(job, sink if relay is not None else None)
        gc.collect()  # the finished run's engine, optimizer and loader before the next


class ProgressRelay:
    """A Ray actor holding rank 0's latest progress, which the driver polls and draws."""

    def __init__(self) -> None:
        self.state: dict[str, Any] = {"step": 0, "total": 0, "detail": ""}
        self.messages: list[str] = []

    def update(self, step: int, total: int, detail: str, message: str | None) -> None:
        if message is not None:
            self.messages.append(message)
        else:
            self.state = {"step": step, "total": total, "detail": detail}

    def read(self) -> tuple[dict[str, Any], list[str]]:
        messages, self.messages = self.messages, []
        return self.state, messages


class DriverProgress:
    """Draw the relayed progress in the driver's terminal (a thread polling the relay)."""

    def __init__(self, relay, interval: float = 0.5):
        import threading

        from rich.console import Console

        from trainer.monitor import training_progress

        self.relay = relay
        self.interval = interval
        self.progress = training_progress(Console(stderr=True))
        self.task = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _poll(self) -> None:
        import ray

        state, messages = ray.get(self.relay.read.remote())
        for message in messages:
            self.progress.console.print(message)
        if state["total"]:
            if self.task is None:
                self.task = self.progress.add_task(
                    "train", total=state["total"], completed=state["step"], detail=""
                )
            self.progress.update(self.task, completed=state["step"], detail=state["detail"])

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                self._poll()
            except Exception as error:  # the bar is a convenience: never let it end a run
                log.warning("progress bar stopped: %s", error)
                return

    def __enter__(self) -> DriverProgress:
        self.progress.start()
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        try:
            self._poll()  # the last state and messages
        except Exception as error:  # e.g. the relay's node was lost: the run's result stands
            log.warning("could not read the final progress: %s", error)
        finally:
            self.progress.stop()


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


def ray_train_jobs(
    jobs: list[dict[str, Any]],
    workers: int = 2,
    gpus_per_worker: float = 0,
    cpus_per_worker: float = 1,
) -> None:
    """Run the training runs `jobs` (`job_payload`s) in turn on one set of `workers` Ray Train
    workers (the Ray instance this process is connected to): each resumes from its own
    checkpoints and writes its own metrics and package. `cpus_per_worker`: the Ray CPUs a CPU
    worker holds (below 1: runs share cores). A worker's error of ours (bad input, a refused
    checkpoint) is raised here as itself."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    use_gpu = gpus_per_worker > 0
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    relay = ray.remote(num_cpus=0)(ProgressRelay).options(scheduling_strategy=here).remote()
    payload = {"jobs": jobs, "progress": relay}
    trainer = TorchTrainer(
        _ray_worker,
        train_loop_config=payload,
        scaling_config=ScalingConfig(
            num_workers=workers,
            use_gpu=use_gpu,
            resources_per_worker={"GPU": gpus_per_worker} if use_gpu else {"CPU": cpus_per_worker},
        ),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(
            storage_path=tempfile.mkdtemp(prefix="career-raytrain-"), name="career"
        ),
    )
    try:
        with DriverProgress(relay):
            trainer.fit()
    except Exception as failure:
        cause = worker_error(failure)
        if cause is None or os.environ.get("CAREER_DEBUG"):
            raise
        raise cause from None
    finally:
        ray.kill(relay)


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
        _worker(payload)
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
    _exit_now()


def _exit_now() -> None:
    """Leave without the interpreter's teardown. Everything the run keeps is written and closed
    by now (checkpoints, package, metrics.json, TensorBoard); tearing down the C++ objects of
    gloo and DeepSpeed at exit sometimes aborted a finished worker ("terminate called without an
    active exception", SIGABRT: seen about once in 30 runs, more often on a loaded machine), and
    torchrun then failed the whole command."""
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(0)


if __name__ == "__main__":
    main()
