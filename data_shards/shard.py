"""The Ray sharding job: input -> validated records -> vocabulary -> webdataset shards + manifest.

    plan (driver)   structural checks, input cut into blocks             (exit 2 before any shard)
    pass 1 (tasks)  read + validate + quarantine + count, one task per input block
    driver          merge counts -> vocabulary (or extend --vocab), drop duplicate ids,
                    cut each split into shards of `blocks_per_shard` x `people_per_block` people
    pass 2 (tasks)  encode + tar + sha256 + atomic write, one task per shard
    commit          quarantine.jsonl, vocab.json, then manifest.json (the commit marker)

Everything written depends only on the input order and the config, never on the number of tasks
or CPUs, so reruns are byte-identical. Work in progress is tracked in `NAME/_staging/`: a killed
job rerun with the same input and config reuses every shard already written (checked by size and
sha256) and ends with the same bytes as an uninterrupted run.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import Any

import numpy as np
import pyarrow as pa

from data_shards import storage
from data_shards.blocks import FORMAT_VERSION as BLOCK_FORMAT
from data_shards.blocks import PEOPLE_PER_BLOCK
from data_shards.encode import FieldSet
from data_shards.errors import StructuralError
from data_shards.inputs import (
    LINES_PER_BLOCK,
    InputBlock,
    InputSpec,
    input_digest,
    plan_blocks,
    read_block,
)
from data_shards.manifest import (
    MANIFEST,
    QUARANTINE,
    STAGING,
    VOCAB,
    Manifest,
    ShardInfo,
    load_manifest,
)
from data_shards.quarantine import QuarantineEntry, write_quarantine
from data_shards.schema import FORMAT_VERSION as RECORD_FORMAT
from data_shards.schema import SPLITS
from data_shards.shard_write import (
    Segment,
    ShardOutput,
    ShardTask,
    file_digest,
    oracle_complete,
    write_shard,
)
from data_shards.splits import (
    DEFAULT_FRACTIONS,
    DEFAULT_SALT,
    check_fractions,
    hash64,
    resolve_splits,
    split_names,
)
from data_shards.vocab import Counts, Vocabulary, build_vocabulary, count_tokens, merge_counts

Progress = Callable[[str, int, int, int], None]  # (stage, done, total, people so far)


@dataclass(frozen=True)
class ShardConfig:
    """How a dataset is cut. Part of the manifest: a different config is a different dataset."""

    people_per_block: int = PEOPLE_PER_BLOCK
    blocks_per_shard: int = 64
    split_fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
    split_salt: str = DEFAULT_SALT
    min_count: int = 1
    lines_per_block: int = LINES_PER_BLOCK

    def __post_init__(self) -> None:
        check_fractions(self.split_fractions)
        for name in ("people_per_block", "blocks_per_shard", "min_count", "lines_per_block"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["split_fractions"] = list(self.split_fractions)
        return out


def code_version() -> str:
    try:
        version = metadata.version("career-at-scale")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return f"career-at-scale {version}; records v{RECORD_FORMAT}; blocks v{BLOCK_FORMAT}"


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


def _quarantine_split(entry: QuarantineEntry, own_split: str | None, config: ShardConfig) -> str:
    if own_split:
        return own_split
    key = entry.person_id if entry.person_id is not None else entry.source
    return str(split_names([key], config.split_fractions, config.split_salt)[0])


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
        counts=count_tokens(table),
        split_rows={s: t.num_rows for s, t in tables.items()},
        id_hashes={s: _id_hash(t) for s, t in tables.items()},
        fields=FieldSet.of([table]),
        oracle_complete=oracle_complete(table),
        quarantined_split=dict(quarantined),
        rows_quarantined_split=dict(rows_quarantined),
    )
    return summary, tables


def _id_hash(table: pa.Table) -> np.ndarray:
    """64-bit hashes of person ids, for finding duplicates across blocks without moving strings."""
    if not table.num_rows:
        return np.zeros(0, dtype=np.uint64)
    return hash64(table.column("person_id"), salt="career-dedupe")


# ----------------------------------------------------------------------------- planning
def find_duplicates(
    summaries: list[BlockSummary], ray=None, table_refs=None
) -> dict[tuple[int, str], np.ndarray]:
    """Rows to drop per (block, split): every occurrence of an id after its first, in input order.

    Candidates share a 64-bit hash; their id strings are then fetched and compared, so two
    different people whose hashes collide are both kept.
    """
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
    drops: dict[tuple[int, str], np.ndarray] = {}
    for code in np.unique(owner[drop]):
        block, split = divmod(int(code), len(SPLITS))
        drops[(block, SPLITS[split])] = row[drop & (owner == code)]
    return drops


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


def plan_shards(
    summaries: list[BlockSummary], drops: dict[tuple[int, str], np.ndarray], config: ShardConfig
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
        shard_starts = range(0, total, per_shard)
        position = 0  # global person position within the split
        run_iter = iter(runs)
        current = next(run_iter, None)
        offset = 0  # rows of `current` already assigned
        for index, start in enumerate(shard_starts):
            need = min(per_shard, total - start)
            segments = []
            while need:
                block, kept = current  # type: ignore[misc]
                take = min(need, kept - offset)
                segments.append(Segment(block, offset, offset + take))
                need -= take
                offset += take
                position += take
                if offset == kept:
                    current, offset = next(run_iter, None), 0
            tasks.append(ShardTask(split, index, start // config.people_per_block, tuple(segments)))
    return tasks


# ----------------------------------------------------------------------------- the job
@dataclass
class ShardResult:
    manifest: Manifest
    dataset_url: str
    shards_written: int
    shards_reused: int
    already_complete: bool = False


def _fingerprint(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _ray():
    import ray

    return ray


def _remote_functions():
    """Ray remote wrappers, made on first use so that importing this module does not need Ray."""
    ray = _ray()

    @ray.remote(num_returns=2)
    def pass1(spec: InputSpec, block: InputBlock, config: ShardConfig):
        return read_and_split(spec, block, config)

    @ray.remote
    def pass2(
        dataset_url,
        task,
        vocab_json,
        fields,
        people_per_block,
        storage_options,
        drop_rows,
        *block_tables,
    ):
        vocab = Vocabulary.from_json(vocab_json)
        kept = []
        for tables, rows in zip(block_tables, drop_rows, strict=True):
            table = tables[task.split]
            if rows is not None and len(rows):
                mask = np.ones(table.num_rows, dtype=bool)
                mask[rows] = False
                table = table.filter(pa.array(mask))
            kept.append(table)
        output = write_shard(
            dataset_url, task, kept, vocab, fields, people_per_block, storage_options
        )
        done = storage.join(dataset_url, STAGING, "done", f"{task.split}-{task.index:06d}.json")
        storage.write_bytes_atomic(done, json.dumps(asdict(output)).encode(), storage_options)
        return output

    return pass1, pass2


def shard_dataset(
    spec: InputSpec,
    out: str,
    name: str,
    config: ShardConfig | None = None,
    parent_vocab_url: str | None = None,
    overwrite: bool = False,
    on_progress: Progress | None = None,
    storage_options: dict | None = None,
) -> ShardResult:
    """Run the sharding job on the Ray instance this process is connected to (see `ensure_ray`).

    `storage_options` are for the output (and `parent_vocab_url`); default: the input's.
    """
    config = config or ShardConfig()
    options = storage_options if storage_options is not None else spec.storage_options
    dataset_url = storage.join(out, name)
    staging = storage.join(dataset_url, STAGING)
    progress = on_progress or (lambda *_: None)
    parent = None
    parent_hash = None
    if parent_vocab_url:
        try:
            parent = Vocabulary.load(parent_vocab_url, options)
        except (ValueError, KeyError, json.JSONDecodeError) as exc:
            raise StructuralError(
                f"--vocab is not a usable vocabulary: {exc}", path=storage.redact(parent_vocab_url)
            ) from None
        parent_hash = parent.hash

    try:
        blocks = plan_blocks(
            spec, config.lines_per_block
        )  # every structural check, before any work
        description = {**spec.describe(), "digest": input_digest(spec, blocks)}
    except StructuralError:
        storage.remove_tree(staging, options)
        raise
    # What makes a dataset: its input (content included), config, parent vocabulary and code.
    identity = json.loads(json.dumps({
        "input": description,
        "config": {**config.to_dict(), "parent_vocab": parent_hash},
        "code_version": code_version(),
    }))  # fmt: skip

    if storage.exists(storage.join(dataset_url, MANIFEST), options):
        existing = load_manifest(dataset_url, options)
        same = (existing.input, existing.config, existing.code_version) == (
            identity["input"], identity["config"], identity["code_version"])  # fmt: skip
        if same and not overwrite:
            return ShardResult(
                existing, dataset_url, 0, len(existing.shards), already_complete=True
            )
        if not overwrite:
            raise StructuralError(
                "a dataset with a different input, config or code version is already here; "
                "pass --overwrite to replace it",
                path=storage.redact(dataset_url),
            )

    ray = _ray()
    pass1, pass2 = _remote_functions()
    refs = [pass1.remote(spec, block, config) for block in blocks]
    pending = {r[0]: i for i, r in enumerate(refs)}
    done_summaries: dict[int, BlockSummary] = {}
    people = 0
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                summary = ray.get(ref)
                done_summaries[pending.pop(ref)] = summary
                people += summary.people_read
                progress("read", len(done_summaries), len(blocks), people)
    except ray.exceptions.RayTaskError as exc:
        # The other read tasks are left to finish (they are short); cancelling them raced with
        # their completion and could take the driver down.
        cause = getattr(exc, "cause", None)
        if isinstance(cause, StructuralError):  # e.g. text that is not UTF-8, found while reading
            storage.remove_tree(staging, options)
            raise StructuralError(str(cause)) from None
        raise
    summaries = [done_summaries[i] for i in range(len(blocks))]
    table_refs = [r[1] for r in refs]
    if overwrite:  # the new input read cleanly: only now de-commit the old dataset
        storage.remove_tree(storage.join(dataset_url, MANIFEST), options)

    counts = merge_counts(s.counts for s in summaries)
    vocab = build_vocabulary(counts, min_count=config.min_count, parent=parent)
    drops = find_duplicates(summaries, ray, table_refs)
    fields = _merge_fields([s.fields for s in summaries])
    tasks = plan_shards(summaries, drops, config)
    duplicate_entries = _duplicate_entries(ray, drops, table_refs, summaries)

    plan = {
        **identity,
        "vocab": vocab.hash,
        "fields": fields.to_dict(),
        "shards": [
            [t.split, t.index, t.first_block, [asdict(s) for s in t.segments]] for t in tasks
        ],
    }
    fingerprint = _fingerprint(plan)
    plan_url = storage.join(staging, "plan.json")
    reusable = _reusable_shards(dataset_url, staging, plan_url, fingerprint, tasks, options)
    storage.write_bytes_atomic(
        plan_url, json.dumps({"fingerprint": fingerprint, **plan}).encode(), options
    )

    outputs: dict[tuple[str, int], ShardOutput] = dict(reusable)
    vocab_json = vocab.to_json()
    people_written = sum(o.info.people for o in outputs.values())
    progress("write", len(outputs), len(tasks), people_written)
    futures = {}
    for task in tasks:
        if (task.split, task.index) in outputs:
            continue
        drop_rows = [drops.get((s.block, task.split)) for s in task.segments]
        tables = [
            table_refs[s.block] for s in task.segments
        ]  # resolved to per-split dicts in the task
        future = pass2.remote(
            dataset_url,
            task,
            vocab_json,
            fields,
            config.people_per_block,
            options,
            drop_rows,
            *tables,
        )
        futures[future] = task
    while futures:
        ready, _ = ray.wait(list(futures), num_returns=1)
        for ref in ready:
            task = futures.pop(ref)
            output = ray.get(ref)
            outputs[(task.split, task.index)] = output
            people_written += output.info.people
            progress("write", len(outputs), len(tasks), people_written)

    manifest = _commit(
        dataset_url,
        name,
        config,
        identity,
        vocab,
        fields,
        tasks,
        outputs,
        summaries,
        drops,
        duplicate_entries,
        options,
    )
    return ShardResult(manifest, dataset_url, len(tasks) - len(reusable), len(reusable))


def _merge_fields(sets: list[FieldSet]) -> FieldSet:
    from data_shards.blocks import PERSON_FIELDS

    return FieldSet(
        education=any(f.education for f in sets),
        log_wage=any(f.log_wage for f in sets),
        oracle_logp=any(f.oracle_logp for f in sets),
        person_fields=tuple(p for p in PERSON_FIELDS if any(p in f.person_fields for f in sets)),
        weight=any(f.weight for f in sets),
    )


def _duplicate_entries(ray, drops, table_refs, summaries) -> dict[int, list[QuarantineEntry]]:
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


def _reusable_shards(
    dataset_url, staging, plan_url, fingerprint, tasks, options
) -> dict[tuple[str, int], ShardOutput]:
    """Shards a previous run of the same plan finished, verified by size and sha256."""
    if not storage.exists(plan_url, options):
        return {}
    previous = json.loads(storage.read_text(plan_url, options))
    if previous.get("fingerprint") != fingerprint:
        storage.remove_tree(staging, options)  # staging of another input/config: start afresh
        return {}
    reusable = {}
    for task in tasks:
        marker = storage.join(staging, "done", f"{task.split}-{task.index:06d}.json")
        if not storage.exists(marker, options):
            continue
        payload = json.loads(storage.read_text(marker, options))
        output = ShardOutput(ShardInfo(**payload["info"]), payload["oracle_sum"])
        if file_digest(storage.join(dataset_url, task.path), options) == (
            output.info.bytes,
            output.info.sha256,
        ):
            reusable[(task.split, task.index)] = output
    return reusable


def _commit(
    dataset_url,
    name,
    config,
    identity,
    vocab,
    fields,
    tasks,
    outputs,
    summaries,
    drops,
    duplicate_entries,
    options,
) -> Manifest:
    entries: list[QuarantineEntry] = []
    for summary in summaries:
        entries.extend(summary.entries)
        entries.extend(duplicate_entries.get(summary.index, []))
    write_quarantine(storage.join(dataset_url, QUARANTINE), entries, options)
    vocab.save(storage.join(dataset_url, VOCAB), options)
    _remove_stale_shards(dataset_url, {t.path for t in tasks}, options)

    shards = [outputs[(t.split, t.index)].info for t in tasks]
    splits: dict[str, dict[str, Any]] = {}
    oracle: dict[str, float] = {}
    for split in SPLITS:
        mine = [outputs[(t.split, t.index)] for t in tasks if t.split == split]
        duplicates = sum(len(rows) for (b, s), rows in drops.items() if s == split)
        quarantined = sum(s.quarantined_split.get(split, 0) for s in summaries) + duplicates
        written = sum(o.info.people for o in mine)
        tokens = sum(o.info.tokens for o in mine)
        splits[split] = {
            "people_in": written + quarantined,
            "people": written,
            "people_quarantined": quarantined,
            "rows_quarantined": sum(s.rows_quarantined_split.get(split, 0) for s in summaries),
            "tokens": tokens,
            "shards": len(mine),
            "bytes": sum(o.info.bytes for o in mine),
        }
        complete = all(s.oracle_complete for s in summaries) and fields.oracle_logp
        if complete and tokens:
            oracle[split] = round(math.exp(-sum(o.oracle_sum for o in mine) / tokens), 6)
    total_tokens = sum(s["tokens"] for s in splits.values())
    total_bytes = sum(s["bytes"] for s in splits.values())
    people_read = sum(s.people_read for s in summaries)
    totals = {
        "people_read": people_read,
        "people_written": sum(s["people"] for s in splits.values()),
        "people_quarantined": sum(s["people_quarantined"] for s in splits.values()),
        "rows_read": sum(s.rows_read for s in summaries),
        "rows_quarantined": sum(s["rows_quarantined"] for s in splits.values()),
        "tokens": total_tokens,
        "bytes": total_bytes,
        "shards": len(shards),
    }
    if totals["people_read"] != totals["people_written"] + totals["people_quarantined"]:
        raise RuntimeError(f"sharding lost people: {totals}")
    manifest = Manifest(
        name=name,
        shards=shards,
        splits=splits,
        totals=totals,
        vocab_hash=vocab.hash,
        parent_hash=vocab.parent_hash,
        fields=fields.to_dict(),
        input=identity["input"],
        config=identity["config"],
        code_version=identity["code_version"],
        oracle_perplexity=oracle or None,
        extra={"bytes_per_token": round(total_bytes / total_tokens, 3) if total_tokens else None},
    )
    storage.write_bytes_atomic(
        storage.join(dataset_url, MANIFEST), manifest.to_json().encode(), options
    )
    storage.remove_tree(storage.join(dataset_url, STAGING), options)
    return manifest


def _remove_stale_shards(dataset_url: str, keep: set[str], options) -> None:
    """Shards left by an earlier, different run (e.g. more shards) are not part of this dataset."""
    fs, root = storage.filesystem(dataset_url, options)
    for split in SPLITS:
        folder = f"{root.rstrip('/')}/{split}"
        if not fs.exists(folder):
            continue
        for path in fs.ls(folder, detail=False):
            relative = f"{split}/{path.rstrip('/').rsplit('/', 1)[-1]}"
            if relative not in keep:
                fs.rm(path)


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to `address`, or start a local Ray instance (no dashboard, bounded object store)."""
    ray = _ray()
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False)
        return
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=False,
        object_store_memory=2 * 1024**3,
        log_to_driver=False,
        configure_logging=False,
    )
