"""Turn the people of one shard into a deterministic webdataset tar and write it (no Ray here).

A shard is a list of segments (rows of validated record tables, in input order); its people are
cut into blocks of `people_per_block`, each block encoded (`blocks.encode_block`) as one tar
member named by its global block number. Same segments, vocabulary and config -> same bytes.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_shards import storage
from data_shards.blocks import MEMBER_SUFFIX, encode_block
from data_shards.encode import FieldSet, dtypes_for, table_to_ids
from data_shards.manifest import ShardInfo, shard_path
from data_shards.tarfiles import tar_bytes
from data_shards.vocab import Vocabulary


@dataclass(frozen=True)
class Segment:
    """Rows [start, stop) of input block `block`'s table for one split (after duplicate removal)."""

    block: int
    start: int
    stop: int


@dataclass(frozen=True)
class ShardTask:
    split: str
    index: int  # shard number within the split
    first_block: int  # global number (within the split) of the shard's first member
    segments: tuple[Segment, ...]

    @property
    def path(self) -> str:
        return shard_path(self.split, self.index)

    @property
    def people(self) -> int:
        return sum(s.stop - s.start for s in self.segments)


@dataclass
class ShardOutput:
    info: ShardInfo
    oracle_sum: (
        float  # sum of oracle log-probabilities over the shard's job-years (NaN if any missing)
    )


def build_shard(
    task: ShardTask,
    tables: list[pa.Table],
    vocab: Vocabulary,
    fields: FieldSet,
    people_per_block: int,
) -> tuple[bytes, int, float]:
    """Tar bytes of the shard, its job-year count and oracle log-probability sum."""
    parts = [t.slice(s.start, s.stop - s.start) for t, s in zip(tables, task.segments, strict=True)]
    people = pa.concat_tables(parts) if parts else None
    dtypes = dtypes_for(vocab, fields)
    members = []
    tokens = 0
    oracle_sum = 0.0
    n = people.num_rows if people is not None else 0
    for b, start in enumerate(range(0, n, people_per_block)):
        chunk = people.slice(start, people_per_block)  # type: ignore[union-attr]
        lengths, arrays = table_to_ids(chunk, vocab, fields)
        key = f"{task.split}-{task.first_block + b:09d}"
        members.append(
            (
                f"{key}.{MEMBER_SUFFIX}",
                encode_block(chunk.column("person_id").to_pylist(), lengths, arrays, dtypes),
            )
        )
        tokens += int(lengths.sum())
        if fields.oracle_logp:
            oracle_sum += float(np.sum(arrays["oracle_logp"], dtype=np.float64))
    if not fields.oracle_logp:
        oracle_sum = math.nan
    return tar_bytes(members), tokens, oracle_sum


def write_shard(
    dataset_url: str,
    task: ShardTask,
    tables: list[pa.Table],
    vocab: Vocabulary,
    fields: FieldSet,
    people_per_block: int,
    storage_options=None,
) -> ShardOutput:
    """Build the shard and write it under its final name atomically (never half-visible)."""
    data, tokens, oracle_sum = build_shard(task, tables, vocab, fields, people_per_block)
    url = storage.join(dataset_url, task.path)
    storage.write_bytes_atomic(url, data, storage_options)
    blocks = math.ceil(task.people / people_per_block) if task.people else 0
    info = ShardInfo(
        task.split,
        task.path,
        len(data),
        hashlib.sha256(data).hexdigest(),
        task.people,
        tokens,
        blocks,
    )
    return ShardOutput(info, oracle_sum)


def file_digest(url: str, storage_options=None) -> tuple[int, str] | None:
    """(size, sha256) of a file, or None if it does not exist."""
    if not storage.exists(url, storage_options):
        return None
    data = storage.read_bytes(url, storage_options)
    return len(data), hashlib.sha256(data).hexdigest()


def oracle_complete(table: pa.Table) -> bool:
    """True when every job-year of `table` carries an oracle log-probability."""
    column = table.column("oracle_logp")
    if column.null_count:
        return False
    values = pc.list_flatten(column)
    return values.null_count == 0 and not pc.any(pc.is_nan(values)).as_py()
