"""Checks and descriptions of a training run made before anything starts: what `career pretrain`,
`career finetune` and every training step of `career run` / `career scale` refuse, and what
`--dry-run` shows.

Everything that can be refused is refused here, before a worker starts and before anything is
written under `--out`: a dataset without a manifest, too few training blocks for the workers, a
vocabulary the package cannot extend to, a package of a kind that cannot be fine-tuned, a run
folder whose checkpoints are all incomplete (`complete.json`, `trainer.checkpoint_store`).
"""

from __future__ import annotations

from typing import Any

from data_shards import storage
from data_shards.errors import StructuralError
from data_shards.manifest import load_manifest
from data_shards.vocab import Vocabulary
from trainer.config import TrainConfig, precision_record


def check_checkpoint(out: str, storage_options) -> None:
    """A run folder being resumed must hold a complete checkpoint: one whose record
    (`complete.json`) lists files of the sizes found (the sha256 are compared when the run reads
    them, `trainer.elastic`). Newer incomplete tags are left to the run, which skips them with a
    note; a folder whose tags are all incomplete is refused.

    Reads only: a fresh `--out` is left untouched (nothing is created by a refused command)."""
    from trainer.checkpoint_store import CheckpointStore

    CheckpointStore(out, storage_options).check_resumable()


def check_run(
    config: TrainConfig,
    *,
    data: str,
    out: str,
    base: str | None,
    workers: int,
    storage_options=None,
) -> None:
    """Refuse before launching anything: no manifest, fewer training blocks than workers, a
    vocabulary the package cannot extend to, or a run folder with checkpoints but none complete."""
    from trainer.context import check_training_blocks

    manifest = load_manifest(data, storage_options)
    fitted = closed_form(config.kind)
    if not fitted:  # one process: no blocks to share out, no checkpoints to resume
        check_training_blocks(manifest, workers, config.loader_workers, data, config.train_people)
    if base:
        from trainer.context import check_finetune_kind
        from trainer.package import load_model

        package = load_model(base, storage_options)
        check_finetune_kind(package.kind, config.kind, base)
        vocab = Vocabulary.load(storage.join(data, "vocab.json"), storage_options)
        problem = vocab.incompatibility(package.vocab)
        if problem:
            raise StructuralError(
                f"the dataset's vocabulary does not extend the package's ({problem}); shard the data with "
                "--vocab pointing at the pretraining dataset's vocab.json",
                path=storage.redact(data),
            )
    if not fitted:
        check_checkpoint(out, storage_options)


def closed_form(kind: str) -> bool:
    """The kind is fitted by counting, in one process (markov)."""
    from trainer.models.registry import get_kind

    return get_kind(kind).closed_form


def describe_model(
    config: TrainConfig, *, data: str, base: str | None, storage_options=None
) -> dict[str, Any]:
    """The architecture training would build on this dataset (from the package when fine-tuning),
    with its parameter count."""
    from trainer.context import model_for

    manifest = load_manifest(data, storage_options)
    vocab = Vocabulary.load(storage.join(data, "vocab.json"), storage_options)
    model, adapt = model_for(config, vocab, manifest, base, storage_options)
    described = model.config.to_dict()
    described["parameters"] = model.num_parameters()
    if adapt:
        described["finetune"] = adapt
    return described


def describe_run(
    config: TrainConfig,
    *,
    data: str,
    base: str | None,
    workers: int,
    on_gpu: bool,
    storage_options=None,
) -> dict[str, Any]:
    """What `--dry-run` shows: the model, the resolved config, DeepSpeed's config, the precision
    and how batches are counted."""
    model = describe_model(config, data=data, base=base, storage_options=storage_options)
    if closed_form(config.kind) and not base:
        resolved = config.resolve(1, False)
        return {
            "model": model,
            "config": resolved.to_dict(),
            "fit": f"{config.kind}: closed form in this process, from counts over the train "
            "split read through the loader; smoothing chosen on the valid split (no workers, no "
            "DeepSpeed)",
            "workers": 1,
        }
    from trainer.engine import deepspeed_config

    resolved = config.resolve(workers, on_gpu)
    if not on_gpu:
        from trainer.models.dropout import kernel_status

        resolved.notes.append(f"dropout: {kernel_status(resolved.hash_dropout)}")
    per_micro_batch = resolved.tokens_per_update // (workers * resolved.micro_batches)
    return {
        "model": model,
        "config": resolved.to_dict(),
        "deepspeed": deepspeed_config(resolved, workers),
        "precision": precision_record(resolved),
        "batching": (
            f"batches are token budgets: one update = {resolved.tokens_per_update:,} job-years over "
            f"all workers; DeepSpeed's train_batch_size counts micro-batches ({workers} workers x "
            f"{resolved.micro_batches} accumulation steps), each of about {per_micro_batch:,} "
            "job-years, not people"
        ),
        "workers": workers,
    }
