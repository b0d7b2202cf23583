"""What every part of a training run shares: this rank, the resolved config, the dataset, the model.

`prepare` runs first on every rank: it resolves the config for the run's world size and device,
seeds every generator alike (every rank builds the same initial weights), checks the dataset (its
vocabulary against the manifest, enough training blocks for every rank) and builds the model: a
fresh one of the config's kind (`trainer.models.registry`), or a model package adapted to the
dataset's vocabulary (fine-tuning: CAREER packages only).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch

from data_shards import storage
from data_shards.dataset import Dataset, load_dataset
from data_shards.errors import StructuralError
from data_shards.manifest import Manifest
from data_shards.stream import CareerLoader, StreamConfig
from data_shards.stream.subset import prefix_of
from data_shards.vocab import Vocabulary
from trainer import rng
from trainer.config import TrainConfig
from trainer.distributed import RunInfo, run_info
from trainer.finetune import adapt_to_dataset
from trainer.models import dropout as hash_dropout
from trainer.models.output import JobModel
from trainer.models.registry import build, covariates_of, get_kind
from trainer.package import load_model


@dataclass
class RunContext:
    info: RunInfo
    config: TrainConfig  # resolved
    data_url: str
    out_url: str
    storage_options: dict | None
    data: Dataset
    model: JobModel
    adapt: dict[str, Any] = field(default_factory=dict)  # fine-tuning: what adapting changed

    @property
    def names(self) -> tuple[str, ...]:
        """The batch tensors the model reads (`lengths`, where the padding starts, lets it pack
        the real rows: `TrainConfig.pack_rows`)."""
        lengths = ("lengths",) if self.config.pack_rows else ()
        return ("inputs", "targets", *lengths, *self.model.config.covariates)


def check_training_blocks(
    manifest: Manifest, workers: int, loader_workers: int, url: str, people: int | None = None
) -> None:
    """Every (worker, DataLoader worker) reads whole blocks of the train split (of its first
    `people` people): with fewer blocks than that, one would wait forever for data. Refuse before
    any collective starts; a subset larger than the split is refused too."""
    shards = manifest.shards_of("train")
    if people is not None:
        try:
            shards = prefix_of(manifest, "train", people).shards
        except ValueError as error:
            raise StructuralError(f"train_people: {error}", path=storage.redact(url)) from None
    blocks = sum(shard.blocks for shard in shards)
    readers = workers * max(loader_workers, 1)
    if blocks < readers:
        per = f" x {loader_workers} loader workers" if loader_workers > 1 else ""
        raise StructuralError(
            f"the {'subset' if people else 'dataset'} has fewer training blocks ({blocks}) than "
            f"workers ({workers}{per}): "
            "some would get no training data. Shard it with a smaller --people-per-block, or "
            "train with fewer --workers (or loader_workers)",
            path=storage.redact(url),
        )


def model_for(
    config: TrainConfig,
    vocab: Vocabulary,
    manifest: Manifest,
    base_package: str | None = None,
    storage_options=None,
) -> tuple[JobModel, dict[str, Any]]:
    """The model a run trains on this dataset: fresh, of `config.kind` (seeded by the caller),
    or the package `base_package` adapted to the dataset's vocabulary; and notes on the
    adaptation. Only CAREER packages can be fine-tuned: another kind is refused."""
    if not base_package:
        covariates = covariates_of(manifest, config.kind)
        sizes = {name: vocab.size(name) for name in ("job", *covariates)}
        model = build(config.kind, sizes, config.preset, covariates=covariates, **config.model)
        return model, {}
    base = load_model(base_package, storage_options)
    check_finetune_kind(base.kind, config.kind, base_package)
    model, notes = adapt_to_dataset(
        base.model, base.vocab, vocab, covariates_of(manifest), config.model
    )
    return model, {
        "base_package": storage.redact(base_package),
        "base_vocab_hash": base.vocab.hash,
        "adapt": notes,
    }


def check_finetune_kind(package_kind: str, config_kind: str, base_package: str) -> None:
    """Fine-tuning adapts CAREER packages only, and keeps the package's kind."""
    shown = storage.redact(base_package)
    if package_kind != "career":
        raise StructuralError(
            f"fine-tuning a {package_kind} package is not implemented (only career packages adapt "
            f"to a new vocabulary); train the {package_kind} baseline on the dataset itself with "
            f"`career pretrain --model {package_kind}`",
            path=shown,
        )
    if config_kind != package_kind:
        raise StructuralError(
            f"--model {config_kind} does not match the package's kind ({package_kind}): "
            "fine-tuning keeps the package's kind",
            path=shown,
        )


def prepare(
    config: TrainConfig,
    data_url: str,
    out_url: str,
    base_package: str | None = None,
    storage_options: dict | None = None,
) -> RunContext:
    """This rank's run context (torch.distributed initialised)."""
    if get_kind(config.kind).closed_form:
        raise ValueError(
            f"model kind {config.kind} is fitted in closed form, not trained by the training loop "
            "(career pretrain fits it in one process: trainer.closed_form)"
        )
    info = run_info()
    on_gpu = info.device.type == "cuda"
    config = config.resolve(info.world_size, on_gpu)
    if not on_gpu:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", info.world_size))
        torch.set_num_threads(config.cpu_threads or max(1, (os.cpu_count() or 1) // local_world))
        hash_dropout.use(config.hash_dropout)
        config.notes.append(f"dropout: {hash_dropout.kernel_status(config.hash_dropout)}")
    rng.seed_everything(config.seed)  # same initial weights on every rank
    data = load_dataset(data_url, storage_options)
    check_training_blocks(
        data.manifest, info.world_size, config.loader_workers, data_url, config.train_people
    )
    model, adapt = model_for(config, data.vocab, data.manifest, base_package, storage_options)
    return RunContext(info, config, data_url, out_url, storage_options, data, model, adapt)


def training_loader(run: RunContext) -> CareerLoader:
    """This rank's endless, shuffled, resumable stream of training batches."""
    config, info = run.config, run.info
    stream = StreamConfig(
        split="train",
        tokens_per_update=config.tokens_per_update,
        rank=info.rank,
        world_size=info.world_size,
        micro_batches=config.micro_batches,
        seed=config.seed,
        people=config.train_people,
    )
    return CareerLoader(
        run.data_url,
        stream,
        num_workers=config.loader_workers,
        storage_options=run.storage_options,
        manifest=run.data.manifest,  # read once per rank, by load_dataset
    )
