"""`career pretrain` / `career finetune` / `career export`: check, resolve, launch, report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from cluster.report import console, print_rows
from data_shards import storage
from data_shards.errors import StructuralError
from data_shards.manifest import load_manifest
from data_shards.vocab import Vocabulary
from trainer.config import TrainConfig, make_config


def check_checkpoint(out: str, storage_options) -> None:
    """A run folder being resumed must hold a complete, readable latest checkpoint."""
    import zipfile

    from trainer.checkpoint import CheckpointStore

    store = CheckpointStore(out, storage_options)
    tag = store.latest()
    if tag is None:
        return
    shown = storage.redact(storage.join(store.url, tag))
    store.read_sidecar(tag)
    fs, root = storage.filesystem(storage.join(store.url, tag), storage_options)
    files = fs.ls(root, detail=False) if fs.exists(root) else []
    states = [f for f in files if f.endswith(".pt")]
    if not any(f.endswith("mp_rank_00_model_states.pt") for f in states):
        raise StructuralError(
            "checkpoint is incomplete: no model states; remove it or use another --out", path=shown
        )
    for path in states:
        ok = (
            fs.size(path) > 0 if store.remote else zipfile.is_zipfile(path)
        )  # torch.save writes zips
        if not ok:
            raise StructuralError(
                f"checkpoint is corrupt: {path.rsplit('/', 1)[-1]} is truncated or damaged",
                path=shown,
            )


def check_inputs(data: str, base: str | None, storage_options, out: str | None = None) -> None:
    """Refuse before launching anything: no manifest, a vocabulary the package cannot extend to,
    or a corrupt checkpoint to resume from."""
    load_manifest(data, storage_options)
    if out:
        check_checkpoint(out, storage_options)
    if base:
        from trainer.package import load_model

        package = load_model(base, storage_options)
        vocab = Vocabulary.load(storage.join(data, "vocab.json"), storage_options)
        problem = vocab.incompatibility(package.vocab)
        if problem:
            raise StructuralError(
                f"the dataset's vocabulary does not extend the package's ({problem}); shard the data with "
                "--vocab pointing at the pretraining dataset's vocab.json",
                path=storage.redact(data),
            )


def build_config(recipe: str, args) -> TrainConfig:
    return make_config(
        recipe,
        args.preset,
        args.overrides,
        zero_stage=args.zero_stage,
        updates=args.updates,
        tokens_per_update=args.tokens_per_update,
        micro_batches=args.micro_batches,
        precision=args.precision,
        seed=args.seed,
        eval_every=args.eval_every,
        checkpoint_every=args.checkpoint_every,
    )


def dry_run(config: TrainConfig, workers: int, on_gpu: bool) -> dict[str, Any]:
    from trainer.engine import deepspeed_config

    resolved = config.resolve(workers, on_gpu)
    return {
        "config": resolved.to_dict(),
        "deepspeed": deepspeed_config(resolved, workers),
        "workers": workers,
    }


def launch(config: TrainConfig, args, base: str | None = None) -> dict[str, Any]:
    """Run training with the chosen launcher and return the run's metrics.json."""
    payload_config = config.to_dict()
    if args.launcher == "torchrun":
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.workers),
            "-m", "trainer.launch", "--data", args.data, "--out", args.out,
            "--config-json", json.dumps(payload_config), "--stop-after", str(args.stop_after),
        ]  # fmt: skip
        if base:
            command += ["--base", base]
        if args.storage_options:
            command += ["--storage-options", json.dumps(args.storage_options)]
        env = {**os.environ}
        if args.gpus_per_worker == 0:
            env["DS_ACCELERATOR"] = "cpu"
        subprocess.run(command, check=True, env=env)
    else:
        from data_shards.shard import ensure_ray
        from trainer.launch import ray_train

        ensure_ray(args.ray_address, args.num_cpus)
        ray_train(
            config,
            args.data,
            args.out,
            args.workers,
            args.gpus_per_worker,
            base,
            args.storage_options,
            args.stop_after,
        )
    metrics_url = storage.join(args.out, "metrics.json")
    if args.stop_after and not storage.exists(metrics_url, args.storage_options):
        return {"stopped_at": args.stop_after}
    return json.loads(storage.read_text(metrics_url, args.storage_options))


def run_training(recipe: str, args) -> int:
    base = getattr(args, "base", None)
    config = build_config(recipe, args)
    if args.dry_run:
        print(
            json.dumps(
                dry_run(config, args.workers, args.gpus_per_worker > 0), indent=1, sort_keys=True
            )
        )
        return 0
    check_inputs(args.data, base, args.storage_options, args.out)
    config.resolve(args.workers, args.gpus_per_worker > 0)  # config errors surface before launching
    metrics = launch(config, args, base)
    if "stopped_at" in metrics:
        console.print(
            f"stopped after update {metrics['stopped_at']} with a checkpoint in {storage.redact(args.out)}/checkpoints"
        )
        return 0
    print_rows(
        f"{recipe} -> {storage.redact(args.out)}",
        ["updates", "tokens seen", "best valid ppl", "best step", "final valid ppl", "wall s"],
        [[metrics["updates"], int(metrics["tokens_seen"]), metrics["best_valid_perplexity"], metrics["best_step"],
          metrics["final_valid_perplexity"], metrics["wall_seconds"]]],
    )  # fmt: skip
    console.print(f"model package: {storage.redact(storage.join(args.out, 'package'))}")
    return 0


def run_export(args) -> int:
    from trainer.export import export_run

    target = export_run(args.run, args.tag, args.package, args.storage_options)
    console.print(f"model package written to {storage.redact(target)}")
    return 0
