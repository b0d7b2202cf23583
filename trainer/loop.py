"""The one training loop: pretraining and fine-tuning, under torchrun, deepspeed or Ray Train.

Every launcher ends up in `train()` on each rank with torch.distributed initialised. The loop
runs updates (`trainer.step`) and hands each one to the parts of the run, each with one job:

    trainer.context        the resolved config, the dataset, the model (fresh or adapted)
    trainer.elastic        converting a checkpoint for another number of workers
    trainer.checkpointer   saving with client state, and resuming (weights, optimizer, loader, RNG)
    trainer.evaluation     validation perplexity, early stopping, which checkpoint is the best
    trainer.meter          loss, tokens/s and padded length between host syncs
    trainer.monitor        progress bar and TensorBoard on rank 0
    trainer.export         the best checkpoint -> a model package, at the end

A stopped run resumes exactly; at the end the best checkpoint (by validation perplexity) is
exported as a model package and the run's metrics are written to `OUT/metrics.json`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import torch.distributed as dist

from data_shards import storage
from trainer import engine as ds_engine
from trainer.checkpoint_store import tag_of
from trainer.checkpointer import Checkpointer, TrainState
from trainer.config import TrainConfig, precision_record
from trainer.context import RunContext, prepare, training_loader
from trainer.distributed import any_rank
from trainer.elastic import prepare_resume
from trainer.evaluation import Replica, Validator
from trainer.export import export_run
from trainer.meter import Meter
from trainer.monitor import Monitor, ProgressSink
from trainer.preemption import StopRequest
from trainer.step import NLLModule, run_update


@dataclass(frozen=True)
class Due:
    """What runs after an update besides the update itself."""

    evaluate: bool
    save: bool
    stop: bool  # `stop_after` reached: checkpoint and leave without exporting
    log: bool


def _due(
    step: int, first_step: int, config: TrainConfig, validator, checkpointer, stop_after: int
) -> Due:
    stop = bool(stop_after) and step >= stop_after
    evaluate = validator.due(step)
    save = checkpointer.due(step, stop) or evaluate  # every evaluation is a checkpoint
    # One host sync per window. The run's first update pays one-off set-up (not timed).
    log = step == first_step + 1 or step % config.log_every == 0 or save
    return Due(evaluate, save, stop, log)


def _start(run: RunContext, checkpointer: Checkpointer, monitor: Monitor, restarts: int):
    """The DeepSpeed engine, the fp32 replica validation runs, and the state to continue from
    (the latest checkpoint, if any). `restarts`: the worker-group failures this run survived so
    far (Ray Train started this group again)."""
    tag = checkpointer.store.latest()
    source = prepare_resume(checkpointer.store, tag, run.info) if tag else None
    module = NLLModule(run.model).to(run.info.device)
    replica = Replica(module, run.info.device)  # before DeepSpeed partitions or casts the module
    engine, _, _ = ds_engine.initialize(
        module, run.config, run.info.world_size, load_universal=bool(source and source.universal)
    )
    restarted = f"worker group restarted after failure {restarts}: " if restarts else ""
    if source is None:
        cut_short = checkpointer.store.unfinished_saves()
        if cut_short:  # never silently: the folders are replaced by this run's saves
            monitor.print0(
                f"checkpoint {', '.join(cut_short)} skipped, not complete: no save of this run "
                "ever finished; starting from update 0"
            )
        if restarts:
            monitor.print0(f"{restarted}no checkpoint yet, starting from update 0")
        return engine, replica, TrainState()
    state, message = checkpointer.resume(engine, source)
    monitor.print0(restarted + message)
    return engine, replica, state


def train(
    config: TrainConfig,
    data_url: str,
    out_url: str,
    base_package: str | None = None,
    storage_options: dict | None = None,
    stop_after: int = 0,
    progress_sink: ProgressSink | None = None,
    stop_request: StopRequest | None = None,
    restarts: int = 0,
    worker_nodes: list[str] | None = None,
) -> dict[str, Any]:
    """Train on this rank (torch.distributed initialised). Returns the run's metrics, or
    `{"stopped_at": update}` when `stop_after` ended it (with a checkpoint), and with
    `"preempted": True` when a stop request did (`trainer.preemption`).

    `progress_sink`: where rank 0 sends its progress instead of drawing a bar (Ray Train);
    `stop_request`: asked after every update (every rank has one or none); `restarts`: the
    worker-group failures survived so far; `worker_nodes`: where each rank runs (Ray node ids),
    for metrics.json."""
    entered = time.perf_counter()
    run = prepare(config, data_url, out_url, base_package, storage_options)
    config = run.config
    loader = training_loader(run)
    # What it trains on (a scaling study's corpus size): people and job-years of the split or
    # of its first `train_people`.
    corpus = {
        "people": config.train_people or run.data.manifest.splits["train"]["people"],
        "tokens": loader.stream.tokens(),
    }
    checkpointer = Checkpointer(run, loader)
    monitor = Monitor(out_url, run.info.rank, config, run.model, storage_options, progress_sink)
    engine, replica, state = _start(run, checkpointer, monitor, restarts)
    best = checkpointer.store.best()
    validator = Validator(
        engine,
        replica,
        data_url,
        run.info,
        config,
        run.names,
        storage_options,
        history=state.valid_history,
        best=best and best["valid_perplexity"],
    )
    checkpointer.repair_best(validator.best_step, validator.best)
    started, meter, first_step = time.perf_counter(), Meter(), state.step
    phases = {"start_up": started - entered, "validation": 0.0, "checkpoints": 0.0}
    iterator = iter(loader)
    monitor.start(state.step, config.updates)
    while state.step < config.updates and not validator.should_stop:  # (a rerun of a stopped run)
        update = run_update(
            engine, [next(iterator) for _ in range(config.micro_batches)], run.info, run.names
        )
        state.step += 1
        meter.add(update)
        monitor.advance(state.step)
        due = _due(state.step, first_step, config, validator, checkpointer, stop_after)
        preempted = stop_request is not None and any_rank(stop_request(), run.info.device)
        if preempted:  # every rank saw it after this update: checkpoint here and stop
            due = Due(evaluate=due.evaluate, save=True, stop=True, log=True)
        if due.log:
            loss, tokens, seq_len = meter.flush(timed=state.step > first_step + 1)
            state.tokens_seen += tokens
            state.train_history.append([state.step, round(loss, 5)])
            monitor.log(state.step, loss, meter.rate(), engine, seq_len)
        began = time.perf_counter()
        valid = validator.run(state.step) if due.evaluate else None
        if valid is not None:
            monitor.scalar("valid/perplexity", valid, state.step)
        saving = time.perf_counter()
        if due.save:
            checkpointer.save(engine, state, valid, is_best=due.evaluate and validator.improved)
        phases["validation"] += saving - began
        phases["checkpoints"] += time.perf_counter() - saving
        meter.restart()  # evaluation and checkpoints are not training time
        if validator.should_stop:
            monitor.print0(f"early stopping: no improvement in {validator.stale} evaluations")
            break
        if due.stop:
            if preempted:
                monitor.print0(f"preemption notice: checkpoint at update {state.step}, stopping")
            monitor.close()
            return {"stopped_at": state.step, **({"preempted": True} if preempted else {})}
    best, metrics = _metrics(
        run, checkpointer, validator, state, meter, time.perf_counter() - started
    )
    metrics["train_corpus"] = corpus
    metrics["phase_seconds"] = _phase_seconds(phases, metrics["wall_seconds"])
    metrics["failures_survived"] = restarts
    if worker_nodes:
        metrics["worker_nodes"] = worker_nodes
    if first_step:
        metrics["resumed_from"] = first_step  # the update its last checkpoint had reached
    _finish(run, best["tag"], metrics)
    monitor.close()
    return metrics


def _metrics(
    run: RunContext,
    checkpointer: Checkpointer,
    validator: Validator,
    state: TrainState,
    meter: Meter,
    wall: float,
) -> tuple[dict, dict[str, Any]]:
    """The best checkpoint's pointer, and the run's metrics."""
    last = validator.last
    best = checkpointer.store.best() or {
        "tag": tag_of(state.step),
        "step": state.step,
        "valid_perplexity": last,
    }
    return best, {
        "final_valid_perplexity": last,
        "best_valid_perplexity": best["valid_perplexity"],
        "best_step": best["step"],
        "valid_history": state.valid_history,
        "train_history": state.train_history,
        "updates": state.step,
        "tokens_seen": state.tokens_seen,
        "wall_seconds": round(wall, 3),
        "train_seconds": round(meter.seconds, 3),
        "tokens_per_second": round(meter.rate(), 1) if meter.seconds else None,
        "world_size": run.info.world_size,
        "precision": precision_record(run.config),
        "config": run.config.to_dict(),
        **({"finetune": run.adapt} if run.adapt else {}),
    }


def _phase_seconds(phases: dict[str, float], loop_wall: float) -> dict[str, float]:
    """Where this rank's time went (what `benchmarks/pipeline.py` splits a run's time by): the
    start-up (dataset, model, DeepSpeed engine, resuming), the updates, validation, checkpoint
    saves; `export` is added by `_finish`."""
    updates = loop_wall - phases["validation"] - phases["checkpoints"]
    return {k: round(v, 3) for k, v in {**phases, "updates": updates}.items()}


def _finish(run: RunContext, best_tag: str, metrics: dict[str, Any]) -> None:
    """Rank 0 exports the best checkpoint as OUT/package and writes OUT/metrics.json (with the
    export's seconds)."""
    dist.barrier()
    if run.info.rank == 0:
        began = time.perf_counter()
        export_run(run.out_url, best_tag, storage_options=run.storage_options, metrics=metrics)
        metrics["phase_seconds"]["export"] = round(time.perf_counter() - began, 3)
        storage.write_bytes_atomic(
            storage.join(run.out_url, "metrics.json"),
            json.dumps(metrics, indent=1, sort_keys=True, default=str).encode(),
            run.storage_options,
        )
    dist.barrier()
