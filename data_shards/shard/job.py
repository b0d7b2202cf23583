"""`shard_dataset`: the Ray sharding job, input -> webdataset shards + manifest, from the driver.

    plan (driver)   structural checks, input cut into blocks             (exit 2 before any shard)
    pass 1 (tasks)  `plan.read_and_split`, one task per input block
    driver          no record accepted: refused (exit 2, nothing written: `_refuse_no_record`)
    driver          `plan.plan_dataset`: vocabulary, duplicates, shards
    pass 2 (tasks)  `write.write_task`, one task per shard not reusable from an earlier run
    commit          `commit.commit`: quarantine.jsonl, vocab.json, then manifest.json

It runs on the Ray instance this process is already connected to (the CLI, benchmarks and tests
connect through `cluster.ray_session.connect_ray`); Ray is imported only when the job runs.
Everything written depends only on the input order and the config, never on the number of tasks
or CPUs, so reruns are byte-identical.
"""

from __future__ import annotations

import collections
import json
from typing import Any

from data_shards import storage
from data_shards.errors import StructuralError
from data_shards.formats import no_record_error
from data_shards.inputs import InputBlock, InputSpec, input_digest, plan_blocks
from data_shards.manifest import MANIFEST, STAGING, load_manifest
from data_shards.schema import SPLITS
from data_shards.shard.commit import Commit, Outputs, commit, stage_plan
from data_shards.shard.config import Progress, ShardConfig, ShardResult, code_version
from data_shards.shard.plan import (
    BlockSummary,
    DatasetPlan,
    fold_counts,
    plan_dataset,
    read_and_split,
)
from data_shards.shard.write import WriteContext, write_task
from data_shards.tasks import as_completed, on_node
from data_shards.vocab import Counts, Vocabulary, merge_counts


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
    """Run the sharding job on the Ray instance this process is connected to.

    `storage_options` are for the output (and `parent_vocab_url`); default: the input's.
    """
    config = config or ShardConfig()
    options = storage_options if storage_options is not None else spec.storage_options
    dataset_url = storage.join(out, name)
    progress = on_progress or (lambda *_: None)
    parent = _load_parent(parent_vocab_url, options)
    blocks, identity = _plan_input(spec, config, parent, dataset_url, options)
    existing = _existing_dataset(dataset_url, identity, overwrite, options)
    if existing is not None:
        return existing

    import ray

    nodes: set[str] = set()  # where the tasks ran
    summaries, counts, table_refs = _read_pass(
        ray, spec, blocks, config, dataset_url, options, progress, nodes
    )
    _refuse_no_record(summaries, spec, dataset_url)
    _check_cutoff(summaries, config, spec, dataset_url, options)
    if overwrite:  # the new input read cleanly: only now de-commit the old dataset
        storage.remove_tree(storage.join(dataset_url, MANIFEST), options)
    plan = plan_dataset(summaries, config, parent, ray, table_refs, counts)
    reusable = stage_plan(dataset_url, identity, plan, options)
    context = WriteContext(
        dataset_url, plan.vocab.to_json(), plan.fields, config.people_per_block, options
    )
    outputs = _write_pass(ray, context, plan, table_refs, reusable, progress, nodes)
    manifest = commit(Commit(dataset_url, name, identity, plan, outputs, options))
    written = len(plan.tasks) - len(reusable)
    return ShardResult(manifest, dataset_url, written, len(reusable), nodes=sorted(nodes))


def _load_parent(parent_vocab_url: str | None, options) -> Vocabulary | None:
    """The vocabulary to extend (`--vocab`), refused as a structural error when unusable."""
    if not parent_vocab_url:
        return None
    try:
        return Vocabulary.load(parent_vocab_url, options)
    except (ValueError, KeyError, json.JSONDecodeError) as exc:
        raise StructuralError(
            f"--vocab is not a usable vocabulary: {exc}", path=storage.redact(parent_vocab_url)
        ) from None


def _plan_input(
    spec: InputSpec, config: ShardConfig, parent: Vocabulary | None, dataset_url: str, options
) -> tuple[list[InputBlock], dict[str, Any]]:
    """The input's blocks (every structural check, before any work) and the dataset's identity:
    its input (content included), config, parent vocabulary and code."""
    try:
        blocks = plan_blocks(spec, config.lines_per_block)
        description = {**spec.describe(), "digest": input_digest(spec, blocks)}
    except StructuralError:
        storage.remove_tree(storage.join(dataset_url, STAGING), options)
        raise
    identity = json.loads(
        json.dumps(
            {
                "input": description,
                "config": {**config.to_dict(), "parent_vocab": parent.hash if parent else None},
                "code_version": code_version(),
            }
        )
    )
    return blocks, identity


def _existing_dataset(
    dataset_url: str, identity: dict[str, Any], overwrite: bool, options
) -> ShardResult | None:
    """The dataset already committed here with the same identity; refuses a different one."""
    if not storage.exists(storage.join(dataset_url, MANIFEST), options):
        return None
    existing = load_manifest(dataset_url, options)
    same = (existing.input, existing.config, existing.code_version) == (
        identity["input"],
        identity["config"],
        identity["code_version"],
    )
    if same and not overwrite:
        return ShardResult(existing, dataset_url, 0, len(existing.shards), already_complete=True)
    if not overwrite:
        raise StructuralError(
            "a dataset with a different input, config or code version is already here; "
            "pass --overwrite to replace it",
            path=storage.redact(dataset_url),
        )
    return None


def _refuse_no_record(summaries: list[BlockSummary], spec: InputSpec, dataset_url: str) -> None:
    """An input that yields no accepted record is not a dataset: refused before anything is
    written (the dataset folder is left as it was, an older dataset there too)."""
    accepted = sum(sum(s.split_rows.values()) + sum(s.cut_people.values()) for s in summaries)
    if accepted:
        return
    raise no_record_error(
        spec.format,
        spec.url or f"--format {spec.format}",
        people_read=sum(s.people_read for s in summaries),
        rows_read=sum(s.rows_read for s in summaries),
        entries=[e for s in summaries for e in s.entries],
        year_base=spec.panel.year_base if spec.panel else None,
        then=f"nothing was written to {storage.redact(dataset_url)}; `career inspect` with the "
        "same input flags and --quarantine-out FILE writes every quarantined record",
        storage_options=spec.storage_options,
    )


def _check_cutoff(
    summaries: list[BlockSummary], config: ShardConfig, spec: InputSpec, dataset_url: str, options
) -> None:
    """A cutoff must leave years on both sides: some to train on, some to forecast."""
    if config.until is None:
        return
    spans = [s.year_span for s in summaries if s.year_span is not None]
    first, last = min(a for a, _ in spans), max(b for _, b in spans)
    problem = None
    if config.until < first:
        problem = "no year to train on"
    elif config.until >= last:
        problem = "no year after it to forecast"
    elif not sum(s.split_rows["train"] for s in summaries):
        problem = "no training person has a year up to it"
    if problem:
        storage.remove_tree(storage.join(dataset_url, STAGING), options)
        raise StructuralError(
            f"--until {config.until} is outside the data's years {first}-{last}: {problem}",
            path=spec.describe().get("url") or f"--format {spec.format}",
        )


def _read_pass(
    ray,
    spec: InputSpec,
    blocks: list[InputBlock],
    config: ShardConfig,
    dataset_url: str,
    options,
    progress: Progress,
    nodes: set[str],
) -> tuple[list[BlockSummary], Counts, list]:
    """Pass 1: block summaries in input order, their token counts merged (`fold_counts`, as
    they arrive), and refs to each block's per-split tables; the Ray nodes the tasks ran on are
    added to `nodes`."""
    # SPREAD: a cluster's nodes read (and below, write) side by side, each with its own I/O.
    read_task = ray.remote(num_returns=3, scheduling_strategy="SPREAD")(on_node(read_and_split))
    refs = [read_task.remote(spec, block, config) for block in blocks]
    done: dict[int, BlockSummary] = {}
    counts = merge_counts([])
    people = 0
    try:
        for index, summary in as_completed({r[0]: i for i, r in enumerate(refs)}):
            fold_counts(counts, summary)
            done[index] = summary
            people += summary.people_read
            progress("read", len(done), len(blocks), people)
    except ray.exceptions.RayTaskError as exc:
        # The other read tasks are left to finish (they are short); cancelling them raced with
        # their completion and could take the driver down.
        cause = getattr(exc, "cause", None)
        if isinstance(cause, StructuralError):  # e.g. text that is not UTF-8, found while reading
            storage.remove_tree(storage.join(dataset_url, STAGING), options)
            raise StructuralError(str(cause)) from None
        raise
    nodes.update(ray.get([r[2] for r in refs]))
    return [done[i] for i in range(len(blocks))], counts, [r[1] for r in refs]


def _write_pass(
    ray,
    context: WriteContext,
    plan: DatasetPlan,
    table_refs: list,
    reusable: Outputs,
    progress: Progress,
    nodes: set[str],
) -> Outputs:
    """Pass 2: one task per shard not already written by an earlier run of the same plan.

    Tasks go out in the order of the last input block they read, and a block's tables are let go
    (its ref in `table_refs` set to None) once every shard reading it is written: the object
    store, spilled to disk beyond its size at paper scale, empties as the pass goes instead of
    holding the whole corpus to the end. What is written does not depend on that order.
    """
    outputs: Outputs = dict(reusable)
    people = sum(o.info.people for o in outputs.values())
    progress("write", len(outputs), len(plan.tasks), people)
    shard_task = ray.remote(num_returns=2, scheduling_strategy="SPREAD")(on_node(write_task))
    pending = [t for t in plan.tasks if (t.split, t.index) not in outputs]
    pending.sort(key=lambda t: (t.segments[-1].block, SPLITS.index(t.split), t.index))
    readers = collections.Counter(s.block for t in pending for s in t.segments)
    _release_unread(table_refs, readers)
    futures = {}
    placed = []
    for task in pending:
        drop_rows = [plan.drops.get((s.block, task.split)) for s in task.segments]
        tables = [table_refs[s.block] for s in task.segments]  # per-split dicts, resolved by Ray
        output_ref, node_ref = shard_task.remote(context, task, drop_rows, *tables)
        futures[output_ref] = task
        placed.append(node_ref)
    for task, output in as_completed(futures):
        outputs[(task.split, task.index)] = output
        people += output.info.people
        progress("write", len(outputs), len(plan.tasks), people)
        for segment in task.segments:
            readers[segment.block] -= 1
        _release_unread(table_refs, readers)
    nodes.update(ray.get(placed))
    return outputs


def _release_unread(table_refs: list, readers: collections.Counter) -> None:
    """Drop the refs of blocks no pending shard reads, so that Ray may free their tables."""
    for block, ref in enumerate(table_refs):
        if ref is not None and readers[block] <= 0:
            table_refs[block] = None
