"""Pass 1 of the sharding job and the driver's plan between the passes (no Ray import here).

    pass 1 (one task per input block)  `read_and_split`: read + validate + quarantine + count,
                                       records split by person, a `BlockSummary` for the driver
    driver                             `plan_dataset`: merge counts -> vocabulary (or extend the
                                       parent), find duplicate ids, merge the optional fields,
                                       cut each split into `ShardTask`s of
                                       `blocks_per_shard` x `people_per_block` people

The record tables stay in Ray's object store; the driver only fetches the person ids it must
compare. Everything here depends on the input order alone, never on which task finished first.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from data_shards.blocks import PERSON_FIELDS
from data_shards.cutoff import CUT_SPLITS, cut_after, year_span
from data_shards.encode import FieldSet
from data_shards.inputs import InputBlock, InputSpec, read_block
from data_shards.quarantine import QuarantineEntry
from data_shards.readers.compressed import uncompressed_name
from data_shards.schema import SPLITS
from data_shards.shard.config import ShardConfig
from data_shards.shard.write import Segment, ShardTask, oracle_complete
from data_shards.splits import hash64, resolve_splits, split_names
from data_shards.vocab import Counts, Vocabulary, build_vocabulary, count_tokens, merge_counts

#: Rows to drop per (input block, split): every occurrence of a person id after its first.
Drops = dict[tuple[int, str], np.ndarray]


# ----------------------------------------------------------------------------- pass 1
@dataclass
class BlockSummary:
    """What the driver needs from one input block (the tables stay in the object store)."""

    index: int
    people_read: int
    rows_read: int
    entries: list[QuarantineEntry]
    counts: Counts
    split_rows: dict[str, int]
    id_hashes: dict[str, np.ndarray]
    fields: FieldSet
    oracle_complete: bool
    quarantined_split: dict[str, int] = field(default_factory=dict)
    rows_quarantined_split: dict[str, int] = field(default_factory=dict)
    # A cutoff (`ShardConfig.until`): people dropped and job-years removed, per split.
    cut_people: dict[str, int] = field(default_factory=dict)
    cut_tokens: dict[str, int] = field(default_factory=dict)
    year_span: tuple[int, int] | None = None  # before any cutoff


def _quarantine_split(entry: QuarantineEntry, own_split: str | None, config: ShardConfig) -> str:
    if own_split:
        return own_split
    key = entry.person_id if entry.person_id is not None else _source_key(entry.source)
    return str(split_names([key], config.split_fractions, config.split_salt)[0])


def _source_key(source: str) -> str:
    """A record without a person id is counted in a split drawn from its file's name and line,
    not its path: the same input, moved or compressed (`x.jsonl.gz`), gives the same dataset."""
    path, sep, line = source.rpartition(":")
    if not sep:
        return source
    return f"{uncompressed_name(path).rsplit('/', 1)[-1]}:{line}"


def read_and_split(
    spec: InputSpec, block: InputBlock, config: ShardConfig
) -> tuple[BlockSummary, dict[str, pa.Table]]:
    """Pass 1 for one block: validated records per split, and the block's summary."""
    result = read_block(spec, block)
    table = result.table
    splits = resolve_splits(table, config.split_fractions, config.split_salt).to_numpy(
        zero_copy_only=False
    )
    tables = {s: table.filter(pa.array(splits == s)) for s in SPLITS}
    cut_people: dict[str, int] = {}
    cut_tokens: dict[str, int] = {}
    if config.until is not None:
        for split in CUT_SPLITS:
            tables[split], cut_people[split], cut_tokens[split] = cut_after(
                tables[split], config.until
            )
    own_split = getattr(block.part, "split", None)
    quarantined: dict[str, int] = collections.Counter()
    rows_quarantined: dict[str, int] = collections.Counter()
    for entry in result.quarantine:
        split = _quarantine_split(entry, own_split, config)
        if entry.kind == "person":
            quarantined[split] += 1
        else:
            rows_quarantined[split] += 1
    summary = BlockSummary(
        index=block.index,
        people_read=result.report.people_read,
        rows_read=result.report.rows_read,
        entries=list(result.quarantine),
        counts=merge_counts(count_tokens(t) for t in tables.values()),
        split_rows={s: t.num_rows for s, t in tables.items()},
        id_hashes={s: _id_hash(t) for s, t in tables.items()},
        fields=FieldSet.of([table]),
        oracle_complete=oracle_complete(table),
        quarantined_split=dict(quarantined),
        rows_quarantined_split=dict(rows_quarantined),
        cut_people=cut_people,
        cut_tokens=cut_tokens,
        year_span=year_span(table),
    )
    return summary, tables


def _id_hash(table: pa.Table) -> np.ndarray:
    """64-bit hashes of person ids, for finding duplicates across blocks without moving strings."""
    if not table.num_rows:
        return np.zeros(0, dtype=np.uint64)
    return hash64(table.column("person_id"), salt="career-dedupe")


# ----------------------------------------------------------------------------- the driver's plan
@dataclass(frozen=True)
class DatasetPlan:
    """What the driver decided between the passes; pass 2 and the commit carry it out."""

    summaries: list[BlockSummary]  # one per input block, in input order
    vocab: Vocabulary
    fields: FieldSet
    drops: Drops
    duplicate_entries: dict[int, list[QuarantineEntry]]  # per input block
    tasks: list[ShardTask]


def plan_dataset(
    summaries: list[BlockSummary],
    config: ShardConfig,
    parent: Vocabulary | None,
    ray=None,
    table_refs=None,
    counts: Counts | None = None,
) -> DatasetPlan:
    """The vocabulary, the duplicates to drop, the dataset's fields and its shards.

    `counts`: the blocks' token counts already merged (the job folds them in as blocks arrive,
    `fold_counts`); default: merged here from the summaries. Once the duplicates are found, the
    summaries' id hashes (8 bytes a person) are dropped: the driver holds nothing per person
    through pass 2 and the commit.
    """
    if counts is None:
        counts = merge_counts(s.counts for s in summaries)
    vocab = build_vocabulary(counts, min_count=config.min_count, parent=parent)
    drops = find_duplicates(summaries, ray, table_refs)
    for summary in summaries:
        summary.id_hashes = {}
    fields = merge_fields([s.fields for s in summaries])
    tasks = plan_shards(summaries, drops, config)
    duplicates = duplicate_entries(ray, drops, table_refs)
    return DatasetPlan(summaries, vocab, fields, drops, duplicates, tasks)


def fold_counts(total: Counts, summary: BlockSummary) -> None:
    """Add a block's token counts to `total` and drop them from its summary: the driver keeps one
    merged counter per field, not one per input block (a few hundred codes each, thousands of
    blocks at paper scale). Counter sums do not depend on the order the blocks arrive in."""
    for name, counter in summary.counts.items():
        total.setdefault(name, collections.Counter()).update(counter)
    summary.counts = {}


def find_duplicates(summaries: list[BlockSummary], ray=None, table_refs=None) -> Drops:
    """Rows to drop per (block, split): every occurrence of an id after its first, in input order.

    Candidates share a 64-bit hash; their id strings are then fetched and compared, so two
    different people whose hashes collide are both kept. Usually no hash repeats: that is found
    from one sorted copy of the hashes, and the per-row positions (three more arrays of 8 bytes a
    person, and their sort order) are built only when one does.
    """
    if not _any_hash_repeated(summaries):
        return {}
    keys, owners, rows = [], [], []
    for summary in summaries:
        for split in SPLITS:
            hashes = summary.id_hashes[split]
            keys.append(hashes)
            owners.append(
                np.full(
                    len(hashes), summary.index * len(SPLITS) + SPLITS.index(split), dtype=np.int64
                )
            )
            rows.append(np.arange(len(hashes)))
    if not keys:
        return {}
    hashes, owner, row = np.concatenate(keys), np.concatenate(owners), np.concatenate(rows)
    order = np.argsort(hashes, kind="stable")  # stable: input order within equal hashes
    sorted_hashes = hashes[order]
    repeated = np.zeros(len(hashes), dtype=bool)
    repeated[order[1:][sorted_hashes[1:] == sorted_hashes[:-1]]] = True
    if not repeated.any():
        return {}
    candidates = np.isin(hashes, hashes[repeated])
    ids = _fetch_ids(owner[candidates], row[candidates], ray, table_refs)
    seen: set[str] = set()
    drop = np.zeros(len(hashes), dtype=bool)
    for position, person_id in zip(np.nonzero(candidates)[0], ids, strict=True):  # input order
        if person_id in seen:
            drop[position] = True
        seen.add(person_id)
    drops: Drops = {}
    for code in np.unique(owner[drop]):
        block, split = divmod(int(code), len(SPLITS))
        drops[(block, SPLITS[split])] = row[drop & (owner == code)]
    return drops


def _any_hash_repeated(summaries: list[BlockSummary]) -> bool:
    """Whether two rows of any blocks and splits share an id hash (one sorted copy, in place)."""
    parts = [summary.id_hashes[split] for summary in summaries for split in SPLITS]
    if not parts:
        return False
    hashes = np.concatenate(parts)
    hashes.sort()
    return bool(np.any(hashes[1:] == hashes[:-1]))


def _fetch_ids(owners: np.ndarray, rows: np.ndarray, ray, table_refs) -> list[str]:
    """The id strings at (block-split owner, row) positions, fetching each block's table once."""
    cache: dict[int, dict[str, pa.Table]] = {}
    out = []
    for code, row in zip(owners.tolist(), rows.tolist(), strict=True):
        block, split = divmod(code, len(SPLITS))
        if block not in cache:
            cache[block] = ray.get(table_refs[block])
        out.append(cache[block][SPLITS[split]].column("person_id")[row].as_py())
    return out


def duplicate_entries(ray, drops: Drops, table_refs) -> dict[int, list[QuarantineEntry]]:
    """Quarantine entries for dropped duplicates, per block (fetching only those ids)."""
    entries: dict[int, list[QuarantineEntry]] = collections.defaultdict(list)
    for (block, split), rows in sorted(drops.items()):
        table = ray.get(table_refs[block])[split]
        for row in rows:
            person_id = table.column("person_id")[int(row)].as_py()
            entries[block].append(
                QuarantineEntry(
                    f"input block {block}",
                    f"duplicate person id: {person_id!r}",
                    person_id,
                    "person",
                )
            )
    return entries


def merge_fields(sets: list[FieldSet]) -> FieldSet:
    """The optional fields of the dataset: those any block carries."""
    return FieldSet(
        education=any(f.education for f in sets),
        log_wage=any(f.log_wage for f in sets),
        oracle_logp=any(f.oracle_logp for f in sets),
        person_fields=tuple(p for p in PERSON_FIELDS if any(p in f.person_fields for f in sets)),
        weight=any(f.weight for f in sets),
    )


def plan_shards(
    summaries: list[BlockSummary], drops: Drops, config: ShardConfig
) -> list[ShardTask]:
    """Cut each split's people (input order) into shards of blocks_per_shard x people_per_block."""
    per_shard = config.people_per_block * config.blocks_per_shard
    tasks: list[ShardTask] = []
    for split in SPLITS:
        runs = []  # (block, kept rows) in input order
        for summary in summaries:
            kept = summary.split_rows[split] - len(drops.get((summary.index, split), ()))
            if kept:
                runs.append((summary.index, kept))
        total = sum(k for _, k in runs)
        run_iter = iter(runs)
        current = next(run_iter, None)
        offset = 0  # rows of `current` already assigned
        for index, start in enumerate(range(0, total, per_shard)):
            need = min(per_shard, total - start)
            segments = []
            while need:
                block, kept = current  # type: ignore[misc]
                take = min(need, kept - offset)
                segments.append(Segment(block, offset, offset + take))
                need -= take
                offset += take
                if offset == kept:
                    current, offset = next(run_iter, None), 0
            tasks.append(ShardTask(split, index, start // config.people_per_block, tuple(segments)))
    return tasks
