"""Typed settings: the parts several commands share, and the data and training commands' own.

The parsers and `--help` are generated from settings dataclasses (`cluster.flags`); handlers take
these objects, never an `argparse.Namespace`. The shared parts are declared once here and
composed: `RaySettings`, `StorageSettings`, `Resources` (training workers), `InputSettings` and
`SimulatorSettings`. The settings of `inspect`, `synth`, `shard`, `pretrain`/`finetune` and
`export` live here too; every other command's settings live beside its handler
(`cluster/*_job.py`, `cluster/run/job.py`, `cluster/scale/job.py`, `cluster/submit/`). Domain
settings are declared where they live (`ShardConfig`, `PanelMapping`, `ResumeOptions`,
`TrainConfig`) and turned into flags from there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cluster.flags import option
from data_shards import storage
from data_shards.readers.panel import PanelMapping
from data_shards.readers.resume_jsonl import ResumeOptions
from data_shards.shard import ShardConfig
from data_shards.synth.presets import PRESETS as SIM_PRESETS
from data_shards.writers import LAYOUT_NAMES, describe_layouts
from trainer.config import TrainConfig

SIM_PRESET_NAMES = tuple(sorted(SIM_PRESETS))


@dataclass(kw_only=True)
class RaySettings:
    """Ray."""

    ray_address: str | None = option(
        None, help="Ray cluster to run on (default: start a local one)", metavar="ADDR"
    )
    num_cpus: int | None = option(
        None, help="CPUs of the local Ray instance (default: all)", metavar="N"
    )


@dataclass(kw_only=True)
class StorageSettings:
    """Object storage."""

    storage_options: dict | None = option(
        None,
        help='fsspec options for the URLs, e.g. \'{"client_kwargs": {"endpoint_url": '
        '"http://127.0.0.1:9000"}}\', or @FILE to read them from a JSON file. Credentials are '
        "better left in the standard AWS environment variables (or in @FILE: never in argv).",
        metavar="JSON",
    )


@dataclass(kw_only=True, frozen=True)
class Resources:
    """Training workers.

    What a training run asks of the cluster: pretraining, a survey's models, a scaling point."""

    workers: int = option(
        2, help="training workers (a run may resume on another number)", metavar="N"
    )
    gpus_per_worker: float = option(0, help="GPUs per worker (default 0: CPU, gloo)", metavar="G")
    cpus_per_worker: float = option(
        1,
        help="Ray CPUs a CPU worker asks for (default 1; below 1 lets runs share a core)",
        metavar="C",
    )

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"--workers must be at least 1, not {self.workers}")
        if self.gpus_per_worker < 0:
            raise ValueError(f"--gpus-per-worker must not be negative, not {self.gpus_per_worker}")
        if self.cpus_per_worker <= 0:
            raise ValueError(f"--cpus-per-worker must be positive, not {self.cpus_per_worker}")

    @property
    def on_gpu(self) -> bool:
        return self.gpus_per_worker > 0


@dataclass(kw_only=True)
class SimulatorSettings:
    """Simulator (--format synth)."""

    sim_preset: str | None = option(None, help="what to simulate", choices=SIM_PRESET_NAMES)
    people: int | None = option(None, help="people (default: the preset's size)", metavar="N")
    seed: int = option(0, help="simulator seed")


@dataclass(kw_only=True)
class InputSettings:
    """Input."""

    input: str | None = option(
        None, help="local path, file:// or s3:// URL of the input", metavar="URL", path=True
    )
    format: str = option(help="input format", required=True)
    panel: PanelMapping = field(
        default_factory=PanelMapping, metadata={"title": "panel column mapping (--format panel)"}
    )
    resume: ResumeOptions = field(
        default_factory=ResumeOptions,
        metadata={"title": "resume options (--format resume-jsonl)"},
    )
    storage: StorageSettings = field(default_factory=StorageSettings)

    def panel_mapping(self) -> PanelMapping | None:
        """The column mapping, for panels only."""
        return self.panel if self.format == "panel" else None


@dataclass(kw_only=True)
class InspectSettings:
    """Summarise an input corpus before training: counts, coverage, vocabularies, quarantine."""

    source: InputSettings = field(default_factory=InputSettings)
    json: bool = option(False, help="print one JSON object instead of a table")
    quarantine_out: str | None = option(
        None,
        help="also write the quarantined records as JSON Lines here",
        metavar="URL",
        path=True,
    )

    def paths_read(self) -> dict[str, str | None]:
        return {"--input": self.source.input}

    def paths_written(self) -> dict[str, str | None]:
        return {"--quarantine-out": self.quarantine_out}


@dataclass(kw_only=True)
class SynthSettings:
    """Simulate careers with the exact oracle and write them in a readable layout."""

    preset: str = option(help="what to simulate", choices=SIM_PRESET_NAMES)
    out: str = option(
        help="output folder (career-code) or file (.parquet, .csv, .jsonl)",
        metavar="URL",
        path=True,
    )
    people: int | None = option(
        None, help="people to simulate (default: the preset's size)", metavar="N"
    )
    seed: int = option(0, help="random seed; with it the output is deterministic")
    layout: str = option(
        "career-code",
        help=describe_layouts(),
        choices=LAYOUT_NAMES,
    )
    split_fractions: tuple[float, float, float] = option(
        (0.9, 0.05, 0.05),
        help="train/valid/test fractions for the career-code layout",
        metavar="TR,VA,TE",
        parse="fractions",
    )
    storage: StorageSettings = field(default_factory=StorageSettings)

    def paths_read(self) -> dict[str, str | None]:
        return {}

    def paths_written(self) -> dict[str, str | None]:
        return {"--out": self.out}


@dataclass(kw_only=True)
class ShardSettings:
    """Shard an input into a webdataset dataset (URL/NAME/) with a Ray job; resumable and deterministic."""

    source: InputSettings = field(default_factory=InputSettings)
    simulator: SimulatorSettings = field(default_factory=SimulatorSettings)
    out: str = option(
        help="where datasets live (local folder, s3://bucket/prefix, ...)",
        metavar="URL",
        path=True,
    )
    name: str = option(help="dataset name: the dataset is the folder URL/NAME/")
    vocab: str | None = option(
        None,
        help="parent vocabulary (e.g. the pretraining dataset's vocab.json) to extend; ids never move",
        metavar="URL",
        path=True,
    )
    config: ShardConfig = field(
        default_factory=ShardConfig, metadata={"title": "how the dataset is cut"}
    )
    overwrite: bool = option(
        False, help="replace an existing dataset made from a different input/config"
    )
    ray: RaySettings = field(default_factory=RaySettings)

    def paths_read(self) -> dict[str, str | None]:
        return {"--input": self.source.input, "--vocab": self.vocab}

    def paths_written(self) -> dict[str, str | None]:
        """The dataset folder `OUT/NAME` (other folders under `--out` are left alone)."""
        return {"--out/--name": storage.join(self.out, self.name)}


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
