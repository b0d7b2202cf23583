"""The input blocks of the sharding job: an input (`InputSpec`) cut into parts that Ray tasks read.

`plan_blocks` does every structural check (files, columns, layout) before any work starts; a
structural error raised there stops the job with exit code 2 before the first shard is written.
Blocks are numbered in input order and the whole job's output is a function of that order only,
never of how many tasks or CPUs ran it. What each format does is its `data_shards.formats`
entry's; this module only dispatches to it (and re-exports `InputSpec`, defined there).
"""

from __future__ import annotations

from dataclasses import dataclass

from data_shards.formats import InputSpec, input_format
from data_shards.readers.career_code import CareerCodeBlock
from data_shards.readers.common import ReadResult
from data_shards.readers.resume_jsonl import JsonlBlock
from data_shards.synth.generate import CHUNK_PEOPLE

__all__ = [
    "LINES_PER_BLOCK",
    "InputBlock",
    "InputSpec",
    "input_digest",
    "plan_blocks",
    "read_block",
]

#: Lines of a text input per block: the same people per block as a simulator chunk.
LINES_PER_BLOCK = CHUNK_PEOPLE


@dataclass(frozen=True)
class InputBlock:
    index: int
    part: CareerCodeBlock | JsonlBlock | int | None  # synth: the chunk; panel: None (whole file)
    people_hint: int  # people (or lines) expected, for progress bars


def plan_blocks(spec: InputSpec, lines_per_block: int = LINES_PER_BLOCK) -> list[InputBlock]:
    """Check the input's structure and cut it into blocks (in input order)."""
    planned = input_format(spec.format).plan_blocks(spec, lines_per_block)
    return [InputBlock(i, part, hint) for i, (part, hint) in enumerate(planned)]


def input_digest(spec: InputSpec, blocks: list[InputBlock]) -> str | None:
    """sha256 identifying the input's content (None for the simulator: its description is enough).

    Text inputs were hashed while their lines were indexed; a panel (a survey, small) is hashed here.
    """
    return input_format(spec.format).digest(spec, [b.part for b in blocks])


def read_block(spec: InputSpec, block: InputBlock) -> ReadResult:
    """Read, validate and quarantine one block."""
    return input_format(spec.format).read_block(spec, block.part)
