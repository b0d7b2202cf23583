"""The settings of the training commands: `career pretrain`, `career finetune`, `career export`."""

from __future__ import annotations

from dataclasses import dataclass, field

from cluster.flags import option
from cluster.settings import RaySettings, Resources, StorageSettings
from data_shards import storage
from trainer.config import TrainConfig

#: TrainConfig fields offered as flags of pretrain/finetune (anything else: key=value overrides).
TRAIN_FLAGS = (
    "kind",
    "preset",
    "zero_stage",
    "updates",
    "tokens_per_update",
    "micro_batches",
    "precision",
    "seed",
    "eval_every",
    "checkpoint_every",
    "train_people",
)


@dataclass(kw_only=True)
class TrainingSettings:
    """Pretrain or fine-tune with DeepSpeed ZeRO (Ray Train workers by default)."""

    #: "pretrain" or "finetune": the recipe `config` started from
    recipe: str = field(metadata={"skip": True})
    #: the recipe, then the TRAIN_FLAGS given, then the key=value overrides
    config: TrainConfig = field(metadata={"skip": True})
    data: str = option(help="dataset folder (made by career shard)", metavar="URL", path=True)
    out: str = option(
        help="run folder: checkpoints/, package/, tb/, metrics.json", metavar="URL", path=True
    )
    base: str | None = option(None, help="model package to start from", metavar="URL", path=True)
    resources: Resources = field(default_factory=Resources)
    launcher: str = option(
        "ray",
        help="ray: Ray Train workers (local Ray unless --ray-address); torchrun: this node",
        choices=("ray", "torchrun"),
    )
    stop_after: int = option(
        0,
        help="stop after update N with a checkpoint (rerun the command to resume, with any --workers)",
        metavar="N",
    )
    dry_run: bool = option(
        False, help="print the resolved model, config and DeepSpeed config, then exit"
    )
    overrides: list[str] = option(
        help="dotted overrides, e.g. optim.lr=1e-4 model.dropout=0.2",
        default_factory=list,
        positional=True,
        metavar="KEY=VALUE",
    )
    ray: RaySettings = field(default_factory=RaySettings)
    storage: StorageSettings = field(default_factory=StorageSettings)

    def paths_read(self) -> dict[str, str | None]:
        return {"--data": self.data, "--base": self.base}

    def paths_written(self) -> dict[str, str | None]:
        return {"--out": self.out}

    @property
    def workers(self) -> int:
        return self.resources.workers

    @property
    def on_gpu(self) -> bool:
        return self.resources.on_gpu

    @property
    def storage_options(self) -> dict | None:
        return self.storage.storage_options


@dataclass(kw_only=True)
class ExportSettings:
    """Consolidate a training run's checkpoint (any ZeRO stage) into a model package."""

    run: str = option(help="the training run's --out folder", metavar="URL", path=True)
    tag: str | None = option(
        None, help="checkpoint tag, e.g. step0001000 (default: the best, else the latest)"
    )
    package: str | None = option(
        None, help="where to write the package (default: RUN/package)", metavar="URL", path=True
    )
    storage: StorageSettings = field(default_factory=StorageSettings)

    def paths_read(self) -> dict[str, str | None]:
        """The run's checkpoints (the default package, RUN/package, sits beside them)."""
        return {"--run (its checkpoints)": storage.join(self.run, "checkpoints")}

    def paths_written(self) -> dict[str, str | None]:
        return {"--package": self.package}
