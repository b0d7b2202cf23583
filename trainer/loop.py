"""The one training loop: pretraining and fine-tuning, under torchrun, deepspeed or Ray Train.

Every launcher ends up in `train()` on each rank with torch.distributed initialised. One update =
`micro_batches` token-budget batches per rank; the loss is the NLL summed over the update's real
job-years divided by their all-reduced count. Checkpoints carry everything a resume needs (step,
tokens, loader state and RNG states of every rank, resolved config, vocabulary hash), so a stopped
run resumes exactly. At the end the best checkpoint (by validation perplexity) is exported as a
model package.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import socket
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from data_shards import storage
from data_shards.errors import StructuralError
from data_shards.manifest import MANIFEST, load_manifest
from data_shards.stream import CareerLoader, StreamConfig
from data_shards.vocab import Vocabulary
from trainer import engine as ds_engine
from trainer.checkpoint import CheckpointStore, tag_of
from trainer.config import TrainConfig
from trainer.finetune import adapt_to_dataset
from trainer.model import COVARIATES, Career, build_model
from trainer.monitor import Monitor, ProgressSink
from trainer.package import load_model, write_package


class NLLModule(nn.Module):
    """What the engine runs: the model's NLL sum and token count for a batch (ZeRO-3 safe)."""

    def __init__(self, model: Career):
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.nll(batch)


@dataclass
class RunInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def run_info() -> RunInfo:
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    return RunInfo(rank, world, local_rank, device)


def _to_device(
    batch: dict[str, Any], device: torch.device, names: tuple[str, ...]
) -> dict[str, torch.Tensor]:
    return {k: batch[k].to(device, non_blocking=True) for k in names if k in batch}


def _rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "numpy": [v.tolist() if isinstance(v, np.ndarray) else v for v in np.random.get_state()],
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (numpy_state[0], np.array(numpy_state[1], dtype=np.uint32), *numpy_state[2:])
    )
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))


def _all_gather(obj: Any) -> list[Any]:
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _sum(values: list[float], device: torch.device) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


class _Meter:
    """Loss and token counts of the updates since the last flush, kept on the device.

    `flush` is the only place training waits for the device; the seconds between flushes count
    as training time unless evaluation or checkpoints ran in between (`restart`).
    """

    def __init__(self) -> None:
        self.pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.window_start = time.perf_counter()
        self.seconds = 0.0
        self.timed_tokens = 0.0

    def add(self, nll_sum: torch.Tensor, token_count: torch.Tensor) -> None:
        self.pending.append((nll_sum, token_count))

    def flush(self, timed: bool = True) -> tuple[float, float]:
        """(mean loss per token, tokens) over the pending updates (at least one), loss all-reduced."""
        nll = torch.cat([n for n, _ in self.pending]).sum()
        tokens = torch.cat([t for _, t in self.pending]).sum()
        dist.all_reduce(nll)
        nll_value, token_value = torch.stack([nll, tokens]).tolist()
        if timed:
            self.seconds += time.perf_counter() - self.window_start
            self.timed_tokens += token_value
        self.pending.clear()
        self.window_start = time.perf_counter()
        return nll_value / token_value, token_value

    def restart(self) -> None:
        if not self.pending:
            self.window_start = time.perf_counter()

    def rate(self) -> float:
        return self.timed_tokens / self.seconds if self.seconds else 0.0


# ----------------------------------------------------------------------------- evaluation
def evaluate(
    engine, data_url: str, split: str, info: RunInfo, config: TrainConfig, storage_options, names
) -> float:
    """Perplexity over a whole split: every rank reads its part; one all-reduce at the end.

    Ranks may hold different numbers of batches; under ZeRO-3 every forward is collective, so a
    rank out of data runs its last batch again (ignored) until every rank is done.
    """
    stream = StreamConfig(split=split, tokens_per_update=config.tokens_per_update, rank=info.rank,
                          world_size=info.world_size, shuffle=False, loop=False)  # fmt: skip
    loader = CareerLoader(data_url, stream, num_workers=0, storage_options=storage_options)
    iterator = iter(loader)
    nll = tokens = 0.0
    last = None
    engine.eval()
    with torch.no_grad():
        while True:
            batch = next(iterator, None)
            more = torch.tensor([batch is not None], dtype=torch.int32, device=info.device)
            dist.all_reduce(more, op=dist.ReduceOp.MAX)
            if not more.item():
                break
            if batch is not None:
                last = batch
            if last is None:  # this rank has no data at all in the split
                continue
            loss_sum, count = engine(_to_device(last, info.device, names))
            if batch is not None:
                nll += float(loss_sum)
                tokens += float(count)
    engine.train()
    nll, tokens = _sum([nll, tokens], info.device)
    return math.exp(nll / tokens) if tokens else float("nan")


# ----------------------------------------------------------------------------- training
def _model_for(
    config: TrainConfig, vocab: Vocabulary, manifest, base_package: str | None, storage_options
) -> tuple[Career, dict]:
    present = set(manifest.fields["token_fields"]) | set(manifest.fields["person_fields"])
    covariates = tuple(c for c in COVARIATES if c in present)
    if base_package:
        base = load_model(base_package, storage_options)
        model, notes = adapt_to_dataset(base.model, base.vocab, vocab, covariates)
        return model, {
            "base_package": storage.redact(base_package),
            "base_vocab_hash": base.vocab.hash,
            "adapt": notes,
        }
    sizes = {name: vocab.size(name) for name in ("job", *covariates)}
    return build_model(sizes, config.preset, covariates=covariates, **config.model), {}


def train(
    config: TrainConfig,
    data_url: str,
    out_url: str,
    base_package: str | None = None,
    storage_options: dict | None = None,
    stop_after: int = 0,
    progress_sink: ProgressSink | None = None,
) -> dict[str, Any]:
    """Train on this rank (torch.distributed initialised). Returns the run's metrics.

    `progress_sink`: where rank 0 sends its progress instead of drawing a bar (Ray Train)."""
    info = run_info()
    on_gpu = info.device.type == "cuda"
    config = config.resolve(info.world_size, on_gpu)
    if not on_gpu:
        threads = config.cpu_threads or max(
            1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", info.world_size))
        )
        torch.set_num_threads(threads)
    torch.manual_seed(config.seed)  # same initial weights on every rank
    np.random.seed(config.seed)
    random.seed(config.seed)

    manifest = load_manifest(data_url, storage_options)
    vocab = Vocabulary.load(storage.join(data_url, "vocab.json"), storage_options)
    if vocab.hash != manifest.vocab_hash:
        raise StructuralError(
            "vocab.json does not match the manifest", path=storage.redact(data_url)
        )
    manifest_bytes = storage.read_bytes(storage.join(data_url, MANIFEST), storage_options)
    manifest_sha = hashlib.sha256(manifest_bytes).hexdigest()
    model, adapt = _model_for(config, vocab, manifest, base_package, storage_options)
    names = ("inputs", "targets", *model.config.covariates)

    stream = StreamConfig(split="train", tokens_per_update=config.tokens_per_update, rank=info.rank,
                          world_size=info.world_size, micro_batches=config.micro_batches, seed=config.seed)  # fmt: skip
    loader = CareerLoader(
        data_url, stream, num_workers=config.loader_workers, storage_options=storage_options
    )
    checkpoints = CheckpointStore(out_url, storage_options)
    monitor = Monitor(out_url, info.rank, config, model, storage_options, progress_sink)

    step, tokens_seen, best = 0, 0.0, checkpoints.best()
    history: list[list[float]] = []  # [update, validation perplexity], carried by checkpoints
    resume_tag = checkpoints.latest()
    load_dir = checkpoints.local
    if resume_tag:
        if info.local_rank == 0:
            checkpoints.download(resume_tag)
        dist.barrier()
        # Rank 0 decides, so that every rank takes the same path through the collectives below.
        decided = [ds_engine.checkpoint_world_size(os.path.join(checkpoints.local, resume_tag))]
        dist.broadcast_object_list(decided, src=0)
        if decided[0] and decided[0] != info.world_size:
            # ZeRO partitions fit only the number of ranks that wrote them: re-partition through
            # DeepSpeed's universal format, once per node (a folder of its own, in case the
            # staging folder is on a filesystem that several nodes share).
            load_dir = f"{checkpoints.local.rstrip('/')}-universal-{socket.gethostname()}"
            failure = None
            if info.local_rank == 0:
                try:
                    ds_engine.to_universal(checkpoints.local, resume_tag, load_dir)
                except Exception as error:  # reported on every rank below, not left waiting
                    failure = error
            failed = torch.tensor([failure is not None], dtype=torch.int32, device=info.device)
            dist.all_reduce(failed)
            if failure is not None:
                raise failure
            if failed.item():
                raise RuntimeError(
                    "converting the checkpoint for another number of workers failed on another node"
                )
    engine, _, _ = ds_engine.initialize(
        NLLModule(model).to(info.device), config, info.world_size,
        load_universal=load_dir != checkpoints.local,
    )  # fmt: skip
    if resume_tag:
        _, client = engine.load_checkpoint(load_dir, tag=resume_tag)
        dist.barrier()
        if load_dir != checkpoints.local and info.local_rank == 0:
            shutil.rmtree(load_dir, ignore_errors=True)
        if client is None:
            raise StructuralError(
                f"checkpoint {resume_tag} is unreadable or incomplete",
                path=storage.redact(checkpoints.url),
            )
        if client["vocab_hash"] != vocab.hash:
            raise StructuralError(
                "the checkpoint was trained on another vocabulary",
                path=storage.redact(checkpoints.url),
            )
        step, tokens_seen = client["step"], client["tokens_seen"]
        history = list(client.get("valid_history", []))
        # The same workers continue exactly; another number re-plans the rest of the epoch so
        # that no person is skipped or read twice (data_shards.elastic).
        mode = loader.load_states(client["loader"])
        if client["world_size"] == info.world_size:
            _set_rng_state(client["rng"][info.rank])
        else:  # fresh dropout streams per rank, derived from the run's seed and the step
            torch.manual_seed(config.seed * 1_000_003 + step * 1009 + info.rank)
            mode += f": {client['world_size']} -> {info.world_size} workers"
        monitor.print0(f"resumed from {resume_tag} (update {step}, {mode})")

    def save(tag_step: int, valid_ppl: float | None) -> None:
        nonlocal best
        client = {
            "step": tag_step, "tokens_seen": tokens_seen, "world_size": info.world_size,
            "loader": _all_gather(loader.state_dict()), "rng": _all_gather(_rng_state()),
            "config": config.to_dict(), "vocab_hash": vocab.hash, "valid_perplexity": valid_ppl,
            "valid_history": history,
        }  # fmt: skip
        tag = tag_of(tag_step)
        engine.save_checkpoint(checkpoints.local, tag=tag, client_state=client, save_latest=False)
        if info.rank == 0:  # what `career export` needs, readable without unpickling anything
            checkpoints.write_sidecar(tag, {
                "model_config": model.config.to_dict(), "vocab_hash": vocab.hash, "dataset": storage.redact(data_url),
                "dataset_manifest_sha256": manifest_sha, "step": tag_step, "tokens_seen": tokens_seen,
                "valid_perplexity": valid_ppl, "config": config.to_dict(),
            }, vocab)  # fmt: skip
        dist.barrier()
        if info.local_rank == 0:
            checkpoints.upload(tag)
        dist.barrier()
        if info.rank == 0:
            checkpoints.set_latest(tag, tag_step)
            if valid_ppl is not None and (best is None or valid_ppl < best["valid_perplexity"]):
                checkpoints.set_best(tag, tag_step, valid_ppl)
            checkpoints.prune(config.keep_checkpoints)
        dist.barrier()
        best = checkpoints.best()

    start = time.perf_counter()
    iterator = iter(loader)
    stale = 0
    last_valid = history[-1][1] if history else None
    last_saved = step if resume_tag else -1
    monitor.start(step, config.updates)
    meter = _Meter()
    first_step = step
    while step < config.updates:
        micro = [next(iterator) for _ in range(config.micro_batches)]
        # The update's token count is all-reduced on the device and used as a tensor: nothing
        # here waits for the GPU, so the host queues the next update while this one runs.
        token_count = torch.tensor(
            [float(sum(int(b["lengths"].sum()) for b in micro))],
            dtype=torch.float64,
            device=info.device,
        )
        dist.all_reduce(token_count)
        scale = (info.world_size * config.micro_batches / token_count).float()
        nll_sum = torch.zeros(1, dtype=torch.float64, device=info.device)
        for batch in micro:
            loss_sum, _ = engine(_to_device(batch, info.device, names))
            engine.backward(loss_sum * scale)
            engine.step()
            nll_sum += loss_sum.detach().double()
        step += 1
        meter.add(nll_sum, token_count)
        monitor.advance(step)
        evaluate_now = step % config.eval_every == 0 or step == config.updates
        stopping = stop_after and step >= stop_after
        saving = step % config.checkpoint_every == 0 or step == config.updates or stopping
        if step == first_step + 1 or step % config.log_every == 0 or evaluate_now or saving:
            # One host sync per window. The run's first update pays one-off set-up: not timed.
            loss, tokens = meter.flush(timed=step > first_step + 1)
            tokens_seen += tokens
            monitor.log(step, loss, meter.rate(), engine)

        valid_ppl = None
        if evaluate_now:
            valid_ppl = evaluate(engine, data_url, "valid", info, config, storage_options, names)
            monitor.scalar("valid/perplexity", valid_ppl, step)
            improved = best is None or valid_ppl < best["valid_perplexity"]
            stale = 0 if improved else stale + 1
            last_valid = valid_ppl
            history.append([step, valid_ppl])
        early = config.patience and stale >= config.patience
        if saving or early or evaluate_now:
            save(step, valid_ppl)
            last_saved = step
        meter.restart()  # evaluation and checkpoints are not training time
        if early:
            monitor.print0(f"early stopping: no improvement in {stale} evaluations")
            break
        if stopping:
            monitor.close()
            return {"stopped_at": step}
    if last_saved != step:
        save(step, last_valid)
    wall = time.perf_counter() - start
    best = checkpoints.best() or {"tag": tag_of(step), "step": step, "valid_perplexity": last_valid}
    metrics = {
        "final_valid_perplexity": last_valid,
        "best_valid_perplexity": best["valid_perplexity"],
        "best_step": best["step"],
        "valid_history": history,
        "updates": step,
        "tokens_seen": tokens_seen,
        "wall_seconds": round(wall, 3),
        "train_seconds": round(meter.seconds, 3),
        "tokens_per_second": round(meter.rate(), 1) if meter.seconds else None,
        "world_size": info.world_size,
        "config": config.to_dict(),
        **({"finetune": adapt} if adapt else {}),
    }
    export(
        checkpoints,
        best["tag"],
        model.config,
        vocab,
        metrics,
        manifest_sha,
        out_url,
        info,
        storage_options,
    )
    monitor.close()
    return metrics


def export(
    checkpoints: CheckpointStore,
    tag: str,
    model_config,
    vocab,
    metrics,
    manifest_sha,
    out_url,
    info,
    storage_options,
) -> None:
    """Consolidate `tag` (any ZeRO stage) to fp32 and write OUT/package and OUT/metrics.json."""
    dist.barrier()
    if info.rank == 0:
        if checkpoints.remote:
            checkpoints.download(tag)
        state = ds_engine.consolidated_state_dict(checkpoints.local, tag)
        state = {k.removeprefix("model."): v for k, v in state.items()}
        write_package(storage.join(out_url, "package"), state, model_config, vocab, metrics, manifest_sha,
                      {"checkpoint": tag}, storage_options)  # fmt: skip
        storage.write_bytes_atomic(
            storage.join(out_url, "metrics.json"),
            json.dumps(metrics, indent=1, sort_keys=True, default=str).encode(),
            storage_options,
        )
    dist.barrier()
