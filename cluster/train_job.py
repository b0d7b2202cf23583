"""`career pretrain` / `career finetune` / `career export`: check, resolve, launch, report.

Everything that can be refused is refused here, before a worker starts and before anything is
written under `--out`: a dataset without a manifest, a vocabulary the package cannot extend to,
a package of a kind that cannot be fine-tuned, a corrupt checkpoint to resume from, a config that
does not resolve. A closed-form kind (`--model markov`) is fitted here, in this process: no
workers, no DeepSpeed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import zipfile
from typing import Any

from cluster.report import console, print_rows
from cluster.settings import ExportSettings, TrainingSettings
from data_shards import storage
from data_shards.errors import StructuralError
from data_shards.manifest import load_manifest
from data_shards.vocab import Vocabulary
from trainer.accelerator import accelerator_env
from trainer.config import precision_record
from trainer.launch import ERROR_FILE_ENV


def check_checkpoint(out: str, storage_options) -> None:
    """A run folder being resumed must hold a complete, readable latest checkpoint.

    Reads only: a fresh `--out` is left untouched (nothing is created by a refused command)."""
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
        # torch.save writes zip files; remote stores are checked for size only
        ok = fs.size(path) > 0 if store.remote else zipfile.is_zipfile(path)
        if not ok:
            raise StructuralError(
                f"checkpoint is corrupt: {path.rsplit('/', 1)[-1]} is truncated or damaged",
                path=shown,
            )


def check_inputs(s: TrainingSettings) -> None:
    """Refuse before launching anything: no manifest, fewer training blocks than workers, a
    vocabulary the package cannot extend to, or a corrupt checkpoint to resume from."""
    from trainer.context import check_training_blocks

    data, base, storage_options = s.data, s.base, s.storage_options
    manifest = load_manifest(data, storage_options)
    if not closed_form(s):  # one process: no blocks to share out, no checkpoints to resume
        check_training_blocks(
            manifest, s.workers, s.config.loader_workers, data, s.config.train_people
        )
    if base:
        from trainer.context import check_finetune_kind
        from trainer.package import load_model

        package = load_model(base, storage_options)
        check_finetune_kind(package.kind, s.config.kind, base)
        vocab = Vocabulary.load(storage.join(data, "vocab.json"), storage_options)
        problem = vocab.incompatibility(package.vocab)
        if problem:
            raise StructuralError(
                f"the dataset's vocabulary does not extend the package's ({problem}); shard the data with "
                "--vocab pointing at the pretraining dataset's vocab.json",
                path=storage.redact(data),
            )
    if not closed_form(s):
        check_checkpoint(s.out, storage_options)


def closed_form(s: TrainingSettings) -> bool:
    """The kind is fitted by counting, in this process (markov)."""
    from trainer.models.registry import get_kind

    return get_kind(s.config.kind).closed_form


# ----------------------------------------------------------------------------- dry run
def describe_model(s: TrainingSettings) -> dict[str, Any]:
    """The architecture training would build on this dataset (from the package when fine-tuning),
    with its parameter count: what `--dry-run` shows."""
    from trainer.context import model_for

    manifest = load_manifest(s.data, s.storage_options)
    vocab = Vocabulary.load(storage.join(s.data, "vocab.json"), s.storage_options)
    model, adapt = model_for(s.config, vocab, manifest, s.base, s.storage_options)
    described = model.config.to_dict()
    described["parameters"] = model.num_parameters()
    if adapt:
        described["finetune"] = adapt
    return described


def dry_run(s: TrainingSettings) -> dict[str, Any]:
    if closed_form(s) and not s.base:
        resolved = s.config.resolve(1, False)
        return {
            "model": describe_model(s),
            "config": resolved.to_dict(),
            "fit": f"{s.config.kind}: closed form in this process, from counts over the train "
            "split read through the loader; smoothing chosen on the valid split (no workers, no "
            "DeepSpeed)",
            "workers": 1,
        }
    from trainer.engine import deepspeed_config

    resolved = s.config.resolve(s.workers, s.on_gpu)
    if not s.on_gpu:
        from trainer.models.dropout import kernel_status

        resolved.notes.append(f"dropout: {kernel_status(resolved.hash_dropout)}")
    per_micro_batch = resolved.tokens_per_update // (s.workers * resolved.micro_batches)
    return {
        "model": describe_model(s),
        "config": resolved.to_dict(),
        "deepspeed": deepspeed_config(resolved, s.workers),
        "precision": precision_record(resolved),
        "batching": (
            f"batches are token budgets: one update = {resolved.tokens_per_update:,} job-years over "
            f"all workers; DeepSpeed's train_batch_size counts micro-batches ({s.workers} workers x "
            f"{resolved.micro_batches} accumulation steps), each of about {per_micro_batch:,} "
            "job-years, not people"
        ),
        "workers": s.workers,
    }


# ----------------------------------------------------------------------------- launch
def _torchrun(s: TrainingSettings) -> None:
    """One node, `--workers` processes. Storage options travel in a 0600 file, never in argv."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(s.workers),
        "-m",
        "trainer.launch",
        "--data",
        s.data,
        "--out",
        s.out,
        "--config-json",
        json.dumps(s.config.to_dict()),
        "--stop-after",
        str(s.stop_after),
    ]
    if s.base:
        command += ["--base", s.base]
    with tempfile.TemporaryDirectory(prefix="career-launch-") as folder:
        errors = os.path.join(folder, "error")
        env = {**os.environ, **accelerator_env(s.on_gpu), ERROR_FILE_ENV: errors}
        if s.storage_options:
            path = os.path.join(folder, "storage_options.json")
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
                json.dump(s.storage_options, f)
            command += ["--storage-options-file", path]
        if subprocess.run(command, env=env).returncode != 0:
            raise _worker_failure(folder)


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


def _outcome(s: TrainingSettings) -> dict[str, Any]:
    """A launched run's metrics.json, or `{"stopped_at": N}` when `--stop-after` ended it."""
    metrics_url = storage.join(s.out, "metrics.json")
    if s.stop_after and not storage.exists(metrics_url, s.storage_options):
        return {"stopped_at": s.stop_after}
    return json.loads(storage.read_text(metrics_url, s.storage_options))


def launch_together(runs: list[TrainingSettings]) -> list[dict[str, Any]]:
    """Run checked, resolved training runs with their launcher; their metrics, in order.

    Ray Train runs that share workers and GPUs go to one set of workers, one after another:
    starting Ray Train costs about 10 s of a quiet CPU (its controller, the worker processes, the
    process group, and their shutdown), which a survey's few short runs would otherwise pay each."""
    together = [s for s in runs if s.launcher != "torchrun"]
    for s in runs:
        if s.launcher == "torchrun":
            _torchrun(s)
    if together:
        from cluster.ray_session import connect_ray
        from trainer.launch import job_payload, ray_train_jobs

        first = together[0]
        if any(s.resources != first.resources for s in together):
            raise ValueError("runs launched together must use the same workers, GPUs and CPUs")
        connect_ray(first.ray.ray_address, first.ray.num_cpus)
        jobs = [
            job_payload(s.config, s.data, s.out, s.base, s.storage_options, s.stop_after)
            for s in together
        ]
        held = first.resources
        ray_train_jobs(jobs, held.workers, held.gpus_per_worker, held.cpus_per_worker)
    return [_outcome(s) for s in runs]


def launch(s: TrainingSettings) -> dict[str, Any]:
    """Run training with the chosen launcher and return the run's metrics.json."""
    return launch_together([s])[0]


def train_all(runs: list[TrainingSettings]) -> list[dict[str, Any]]:
    """Check every run, then fit the closed-form ones here and launch the rest together
    (`launch_together`); their metrics, in order. Nothing starts before every run is checked."""
    for s in runs:
        check_inputs(s)
        s.config.resolve(s.workers, s.on_gpu)  # config errors surface before launching
    from trainer.closed_form import fit_closed_form

    def fitted_here(s: TrainingSettings) -> bool:
        return closed_form(s) and not s.base

    launched = iter(launch_together([s for s in runs if not fitted_here(s)]))
    return [
        fit_closed_form(s.config, s.data, s.out, s.storage_options)
        if fitted_here(s)
        else next(launched)
        for s in runs
    ]


def train(s: TrainingSettings) -> dict[str, Any]:
    """Check, then fit (closed-form kinds) or launch training; the run's metrics."""
    return train_all([s])[0]


def run_training(s: TrainingSettings) -> int:
    if s.dry_run:
        print(json.dumps(dry_run(s), indent=1, sort_keys=True))
        return 0
    metrics = train(s)
    if "stopped_at" in metrics:
        console.print(
            f"stopped after update {metrics['stopped_at']} with a checkpoint in {storage.redact(s.out)}/checkpoints"
        )
        return 0
    print_rows(
        f"{s.recipe} -> {storage.redact(s.out)}",
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
    console.print(f"model package: {storage.redact(storage.join(s.out, 'package'))}")
    return 0


def run_export(s: ExportSettings) -> int:
    from trainer.export import export_run

    target = export_run(s.run, s.tag, s.package, s.storage.storage_options)
    console.print(f"model package written to {storage.redact(target)}")
    return 0
