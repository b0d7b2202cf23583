"""What a sharding job is asked for and what it answers: `ShardConfig`, `ShardResult`, the code version.

The config is part of a dataset's identity (stored in its manifest), so it holds only what changes
the bytes written; the CLI's flags are generated from its field metadata.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import Any

from data_shards import storage
from data_shards.blocks import FORMAT_VERSION as BLOCK_FORMAT
from data_shards.blocks import PEOPLE_PER_BLOCK
from data_shards.inputs import LINES_PER_BLOCK
from data_shards.manifest import QUARANTINE, Manifest
from data_shards.quarantine import high_share_warning
from data_shards.schema import FORMAT_VERSION as RECORD_FORMAT
from data_shards.schema import YEAR_RANGE
from data_shards.splits import DEFAULT_FRACTIONS, DEFAULT_SALT, check_fractions

Progress = Callable[[str, int, int, int], None]  # (stage, done, total, people so far)


@dataclass(frozen=True)
class ShardConfig:
    """How a dataset is cut. Part of the manifest: a different config is a different dataset."""

    people_per_block: int = field(
        default=PEOPLE_PER_BLOCK, metadata={"help": "people per tar sample", "metavar": "N"}
    )
    blocks_per_shard: int = field(
        default=64, metadata={"help": "tar samples per shard", "metavar": "N"}
    )
    split_fractions: tuple[float, float, float] = field(
        default=DEFAULT_FRACTIONS,
        metadata={
            "help": "train/valid/test fractions for inputs without their own splits",
            "metavar": "TR,VA,TE",
            "parse": "fractions",
        },
    )
    split_salt: str = DEFAULT_SALT
    min_count: int = field(
        default=1, metadata={"help": "codes seen fewer times map to <unk>", "metavar": "N"}
    )
    lines_per_block: int = field(
        default=LINES_PER_BLOCK,
        metadata={"help": "lines of a text input per Ray task", "metavar": "N"},
    )
    until: int | None = field(
        default=None,
        metadata={
            "help": "forecasting cutoff: train and valid people keep their years <= YEAR (people "
            "with none are dropped and counted); test people keep everything (their future is "
            "what `career forecast` scores). Recorded in the manifest",
            "metavar": "YEAR",
        },
    )

    def __post_init__(self) -> None:
        check_fractions(self.split_fractions)
        for name in ("people_per_block", "blocks_per_shard", "min_count", "lines_per_block"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.until is not None and not YEAR_RANGE[0] <= self.until <= YEAR_RANGE[1]:
            raise ValueError(f"--until {self.until} is not a calendar year in {YEAR_RANGE}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["split_fractions"] = list(self.split_fractions)
        if out["until"] is None:  # datasets without a cutoff keep the identity they had
            del out["until"]
        return out


@dataclass
class ShardResult:
    manifest: Manifest
    dataset_url: str
    shards_written: int
    shards_reused: int
    already_complete: bool = False
    #: the Ray nodes its tasks ran on (none when nothing was read: a dataset already complete)
    nodes: list[str] = field(default_factory=list)

    @property
    def warning(self) -> str | None:
        """`high_share_warning` when more than half of the input was quarantined (from the
        manifest: also for a dataset already complete), else None."""
        shares = self.manifest.extra.get("quarantined_share")
        if not shares:  # a dataset made before the share was recorded
            return None
        top = [
            (r["reason"], r["count"]) for r in self.manifest.extra.get("top_quarantine_reasons", [])
        ]
        where = storage.redact(storage.join(self.dataset_url, QUARANTINE))
        return high_share_warning(shares, top, f"every entry is in {where}")


def code_version() -> str:
    try:
        version = metadata.version("career-at-scale")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return f"career-at-scale {version}; records v{RECORD_FORMAT}; blocks v{BLOCK_FORMAT}"
