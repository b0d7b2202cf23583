"""The settings of the data commands: `career inspect`, `career synth`, `career shard` (and the
input and simulator parts they compose)."""

from __future__ import annotations

from dataclasses import dataclass, field

from cluster.flags import option
from cluster.settings import RaySettings, StorageSettings
from data_shards import storage
from data_shards.readers.panel import PanelMapping
from data_shards.readers.resume_jsonl import ResumeOptions
from data_shards.shard import ShardConfig
from data_shards.synth.presets import PRESETS as SIM_PRESETS
from data_shards.writers import LAYOUT_NAMES, describe_layouts

SIM_PRESET_NAMES = tuple(sorted(SIM_PRESETS))


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
        None,
        help="local path, file:// or s3:// URL of the input; a name ending in .gz, .bz2, .xz or "
        ".zst is read decompressed",
        metavar="URL",
        path=True,
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
