"""Pass 2 of the sharding job, for one shard: its people -> a deterministic webdataset tar (no Ray here).

A shard is a list of segments (rows of validated record tables, in input order); its people are
cut into blocks of `people_per_block`, each block encoded (`blocks.encode_block`) as one tar
member named by its global block number. Same segments, vocabulary and config -> same bytes.
A written shard leaves a marker in `_staging/done/`, which lets a rerun of a killed job reuse it.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_shards import storage
from data_shards.blocks import MEMBER_SUFFIX, encode_block
from data_shards.encode import FieldSet, dtypes_for, table_to_ids
from data_shards.manifest import STAGING, ShardInfo, shard_path
from data_shards.shard.tarfiles import tar_bytes
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


@dataclass(frozen=True)
class WriteContext:
    """What every pass-2 task of one job shares (the vocabulary travels as its JSON)."""

    dataset_url: str
    vocab_json: str
    fields: FieldSet
    people_per_block: int
    storage_options: dict | None


def done_marker(staging_url: str, task: ShardTask) -> str:
    """URL of the marker a finished shard leaves in the job's staging folder."""
    return storage.join(staging_url, "done", f"{task.split}-{task.index:06d}.json")


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


def write_task(
    context: WriteContext, task: ShardTask, drop_rows: list, *block_tables: dict[str, pa.Table]
) -> ShardOutput:
    """One pass-2 task: drop duplicate rows from the segments' blocks, write the shard, mark it done.

    `block_tables` are pass 1's per-split tables of the segments' blocks (Ray resolves them).
    """
    vocab = Vocabulary.from_json(context.vocab_json)
    kept = []
    for tables, rows in zip(block_tables, drop_rows, strict=True):
        table = tables[task.split]
        if rows is not None and len(rows):
            mask = np.ones(table.num_rows, dtype=bool)
            mask[rows] = False
            table = table.filter(pa.array(mask))
        kept.append(table)
    options = context.storage_options
    output = write_shard(
        context.dataset_url, task, kept, vocab, context.fields, context.people_per_block, options
    )
    done = done_marker(storage.join(context.dataset_url, STAGING), task)
    storage.write_bytes_atomic(done, json.dumps(asdict(output)).encode(), options)
    return output


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
