"""The sharding job's bookkeeping on the object store: the staging folder and the commit.

Staging: `NAME/_staging/plan.json` holds a fingerprint of the driver's plan; a shard finished by a
run of the same plan (its `done/` marker, its size and sha256 checked) is reused by a rerun, so a
killed job rerun ends with the same bytes as an uninterrupted one. Staging of another plan is
discarded.

Commit: quarantine.jsonl, vocab.json, removal of stale shards of an earlier, different run, then
manifest.json (the commit marker, written last) and the staging folder removed.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from typing import Any

from data_shards import storage
from data_shards.manifest import MANIFEST, QUARANTINE, STAGING, VOCAB, Manifest, ShardInfo
from data_shards.quarantine import (
    Quarantine,
    QuarantineEntry,
    quarantined_shares,
    write_quarantine,
)
from data_shards.schema import SPLITS
from data_shards.shard.plan import DatasetPlan
from data_shards.shard.write import ShardOutput, done_marker, file_digest

Outputs = dict[tuple[str, int], ShardOutput]  # (split, shard index) -> what its task wrote


# ----------------------------------------------------------------------------- staging
def _fingerprint(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def stage_plan(
    dataset_url: str, identity: dict[str, Any], plan: DatasetPlan, storage_options=None
) -> Outputs:
    """Record the plan in the staging folder; returns the shards a previous run of it finished."""
    staging = storage.join(dataset_url, STAGING)
    payload = {
        **identity,
        "vocab": plan.vocab.hash,
        "fields": plan.fields.to_dict(),
        "shards": [
            [t.split, t.index, t.first_block, [asdict(s) for s in t.segments]] for t in plan.tasks
        ],
    }
    fingerprint = _fingerprint(payload)
    plan_url = storage.join(staging, "plan.json")
    reusable = _reusable_shards(dataset_url, plan_url, fingerprint, plan, storage_options)
    storage.write_bytes_atomic(
        plan_url, json.dumps({"fingerprint": fingerprint, **payload}).encode(), storage_options
    )
    return reusable


def _reusable_shards(
    dataset_url: str, plan_url: str, fingerprint: str, plan: DatasetPlan, options
) -> Outputs:
    """Shards a previous run of the same plan finished, verified by size and sha256."""
    staging = storage.join(dataset_url, STAGING)
    if not storage.exists(plan_url, options):
        return {}
    previous = json.loads(storage.read_text(plan_url, options))
    if previous.get("fingerprint") != fingerprint:
        storage.remove_tree(staging, options)  # staging of another input/config: start afresh
        return {}
    reusable = {}
    for task in plan.tasks:
        marker = done_marker(staging, task)
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


# ----------------------------------------------------------------------------- the commit
@dataclass(frozen=True)
class Commit:
    """Everything the commit writes from: the dataset, its identity, the plan and pass 2's outputs."""

    dataset_url: str
    name: str
    identity: dict[str, Any]  # input, config and code version, as stored in the manifest
    plan: DatasetPlan
    outputs: Outputs
    storage_options: dict | None = None


def commit(job: Commit) -> Manifest:
    """Write quarantine.jsonl and vocab.json, drop stale shards, then manifest.json (last)."""
    plan, options = job.plan, job.storage_options
    write_quarantine(storage.join(job.dataset_url, QUARANTINE), _entries(plan), options)
    plan.vocab.save(storage.join(job.dataset_url, VOCAB), options)
    remove_stale_shards(job.dataset_url, {t.path for t in plan.tasks}, options)
    manifest = _manifest(job)
    storage.write_bytes_atomic(
        storage.join(job.dataset_url, MANIFEST), manifest.to_json().encode(), options
    )
    storage.remove_tree(storage.join(job.dataset_url, STAGING), options)
    return manifest


def _entries(plan: DatasetPlan) -> list[QuarantineEntry]:
    """Every quarantine entry, in input order: each block's, then its dropped duplicates."""
    entries: list[QuarantineEntry] = []
    for summary in plan.summaries:
        entries.extend(summary.entries)
        entries.extend(plan.duplicate_entries.get(summary.index, []))
    return entries


def _split_counts(job: Commit) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    """Per split: people in/written/quarantined, rows quarantined, tokens, shards, bytes; and the
    oracle perplexity of each split whose every job-year carries an oracle log-probability."""
    plan = job.plan
    splits: dict[str, dict[str, Any]] = {}
    oracle: dict[str, float] = {}
    for split in SPLITS:
        mine = [job.outputs[(t.split, t.index)] for t in plan.tasks if t.split == split]
        duplicates = sum(len(rows) for (b, s), rows in plan.drops.items() if s == split)
        quarantined = sum(s.quarantined_split.get(split, 0) for s in plan.summaries) + duplicates
        written = sum(o.info.people for o in mine)
        tokens = sum(o.info.tokens for o in mine)
        splits[split] = {
            "people_in": written + quarantined,
            "people": written,
            "people_quarantined": quarantined,
            "rows_quarantined": sum(s.rows_quarantined_split.get(split, 0) for s in plan.summaries),
            "tokens": tokens,
            "shards": len(mine),
            "bytes": sum(o.info.bytes for o in mine),
        }
        if job.identity["config"].get("until") is not None:
            splits[split]["people_cut"] = sum(s.cut_people.get(split, 0) for s in plan.summaries)
            splits[split]["tokens_cut"] = sum(s.cut_tokens.get(split, 0) for s in plan.summaries)
            splits[split]["people_in"] += splits[split]["people_cut"]
        complete = all(s.oracle_complete for s in plan.summaries) and plan.fields.oracle_logp
        if complete and tokens:
            oracle[split] = round(math.exp(-sum(o.oracle_sum for o in mine) / tokens), 6)
    return splits, oracle


def _manifest(job: Commit) -> Manifest:
    """The manifest of the committed dataset; refuses one that lost people on the way."""
    plan = job.plan
    shards = [job.outputs[(t.split, t.index)].info for t in plan.tasks]
    splits, oracle = _split_counts(job)
    total_tokens = sum(s["tokens"] for s in splits.values())
    total_bytes = sum(s["bytes"] for s in splits.values())
    totals = {
        "people_read": sum(s.people_read for s in plan.summaries),
        "people_written": sum(s["people"] for s in splits.values()),
        "people_quarantined": sum(s["people_quarantined"] for s in splits.values()),
        "rows_read": sum(s.rows_read for s in plan.summaries),
        "rows_quarantined": sum(s["rows_quarantined"] for s in splits.values()),
        "tokens": total_tokens,
        "bytes": total_bytes,
        "shards": len(shards),
    }
    cut = sum(s.get("people_cut", 0) for s in splits.values())
    if cut:
        totals["people_cut"] = cut
    if totals["people_read"] != totals["people_written"] + totals["people_quarantined"] + cut:
        raise RuntimeError(f"sharding lost people: {totals}")
    extra: dict[str, Any] = {
        "bytes_per_token": round(total_bytes / total_tokens, 3) if total_tokens else None,
        "quarantined_share": quarantined_shares(
            totals["people_read"],
            totals["people_quarantined"],
            totals["rows_read"],
            totals["rows_quarantined"],
        ),
    }
    top = Quarantine(_entries(plan)).top_reasons()
    if top:
        extra["top_quarantine_reasons"] = [{"reason": r, "count": c} for r, c in top]
    return Manifest(
        name=job.name,
        shards=shards,
        splits=splits,
        totals=totals,
        vocab_hash=plan.vocab.hash,
        parent_hash=plan.vocab.parent_hash,
        fields=plan.fields.to_dict(),
        input=job.identity["input"],
        config=job.identity["config"],
        code_version=job.identity["code_version"],
        oracle_perplexity=oracle or None,
        extra=extra,
    )


def remove_stale_shards(dataset_url: str, keep: set[str], options) -> None:
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
