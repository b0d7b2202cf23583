"""What the sharding job reads, cut into input blocks that Ray tasks process independently.

`plan_blocks` does every structural check (files, columns, layout) before any work starts; a
structural error raised there stops the job with exit code 2 before the first shard is written.
Blocks are numbered in input order and the whole job's output is a function of that order only,
never of how many tasks or CPUs ran it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa

from data_shards import storage
from data_shards.quarantine import Quarantine, ReadReport
from data_shards.readers.career_code import (
    CareerCodeBlock,
    plan_career_code,
    read_career_code_block,
)
from data_shards.readers.common import ReadResult
from data_shards.readers.panel import PanelMapping, check_panel, read_panel
from data_shards.readers.resume_jsonl import (
    JsonlBlock,
    ResumeOptions,
    plan_resume_jsonl,
    read_resume_block,
)
from data_shards.synth.generate import CHUNK_PEOPLE, chunk_sizes, simulate_chunk
from data_shards.synth.presets import get_preset

INPUT_FORMATS = ("career-code", "panel", "resume-jsonl", "synth")
#: Lines of a text input per block: the same people per block as a simulator chunk.
LINES_PER_BLOCK = CHUNK_PEOPLE


@dataclass(frozen=True)
class InputSpec:
    """An input and how to read it. `storage_options` never enters a manifest or a log."""

    format: str
    url: str | None = None
    panel: PanelMapping | None = None
    resume: ResumeOptions | None = None
    preset: str | None = None
    people: int | None = None
    seed: int = 0
    storage_options: dict | None = None

    def __post_init__(self) -> None:
        if self.format not in INPUT_FORMATS:
            raise ValueError(
                f"unknown input format {self.format!r}; choose from {', '.join(INPUT_FORMATS)}"
            )
        if self.format == "synth":
            get_preset(self.preset or "")
            if self.people is not None and self.people <= 0:
                raise ValueError("--people must be positive")
        elif not self.url:
            raise ValueError(f"--input is required for --format {self.format}")

    def describe(self) -> dict[str, Any]:
        """A description safe to store in the manifest (URL redacted, no storage options)."""
        out: dict[str, Any] = {"format": self.format}
        if self.format == "synth":
            preset = get_preset(self.preset or "")
            out.update(
                preset=preset.name, people=self.people or preset.default_people, seed=self.seed
            )
        else:
            out["url"] = storage.redact(self.url or "")
        if self.format == "panel":
            out["mapping"] = asdict(self.panel or PanelMapping())
        if self.format == "resume-jsonl":
            out["as_of"] = (self.resume or ResumeOptions()).as_of
        return json.loads(json.dumps(out))  # the form it has once stored in a manifest


@dataclass(frozen=True)
class InputBlock:
    index: int
    part: CareerCodeBlock | JsonlBlock | int | None  # synth: the chunk; panel: None (whole file)
    people_hint: int  # people (or lines) expected, for progress bars


def plan_blocks(spec: InputSpec, lines_per_block: int = LINES_PER_BLOCK) -> list[InputBlock]:
    """Check the input's structure and cut it into blocks (in input order)."""
    if spec.format == "synth":
        preset = get_preset(spec.preset or "")
        sizes = chunk_sizes(spec.people or preset.default_people)
        return [InputBlock(i, i, n) for i, n in enumerate(sizes)]
    if spec.format == "career-code":
        parts = plan_career_code(spec.url or "", lines_per_block, spec.storage_options)
        return [InputBlock(i, p, p.count) for i, p in enumerate(parts)]
    if spec.format == "resume-jsonl":
        parts = plan_resume_jsonl(spec.url or "", lines_per_block, spec.storage_options)
        return [InputBlock(i, p, lines_per_block) for i, p in enumerate(parts)]
    # Panels hold a survey (tens of thousands of people) and rows of one person may be anywhere
    # in the file: one block reads it whole.
    check_panel(spec.url or "", spec.panel or PanelMapping(), spec.storage_options)
    return [InputBlock(0, None, 0)]


def input_digest(spec: InputSpec, blocks: list[InputBlock]) -> str | None:
    """sha256 identifying the input's content (None for the simulator: its description is enough).

    Text inputs were hashed while their lines were indexed; a panel (a survey, small) is hashed here.
    """
    if spec.format == "synth":
        return None
    if spec.format == "panel":
        return hashlib.sha256(storage.read_bytes(spec.url or "", spec.storage_options)).hexdigest()
    digests = sorted({getattr(b.part, "digest", "") for b in blocks})
    return hashlib.sha256("".join(digests).encode()).hexdigest()


def read_block(spec: InputSpec, block: InputBlock) -> ReadResult:
    """Read, validate and quarantine one block."""
    if spec.format == "synth":
        preset = get_preset(spec.preset or "")
        sizes = chunk_sizes(spec.people or preset.default_people)
        chunk = int(block.part)  # type: ignore[arg-type]
        batch = simulate_chunk(preset, sizes[chunk], spec.seed, chunk)
        report = ReadReport(f"synth:{preset.name}", batch.num_rows, batch.num_rows, 0)
        return ReadResult(pa.Table.from_batches([batch]), Quarantine(), report)
    if spec.format == "career-code":
        return read_career_code_block(spec.url or "", block.part, spec.storage_options)  # type: ignore[arg-type]
    if spec.format == "resume-jsonl":
        return read_resume_block(
            spec.url or "", block.part, spec.resume or ResumeOptions(), spec.storage_options
        )  # type: ignore[arg-type]
    return read_panel(spec.url or "", spec.panel, spec.storage_options)
