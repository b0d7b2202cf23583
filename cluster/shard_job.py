"""`career shard`: run the Ray sharding job with a progress bar and print a summary."""

from __future__ import annotations

import time

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from cluster.report import console, print_rows, progress_console
from data_shards import storage
from data_shards.inputs import InputSpec
from data_shards.shard import ShardConfig, ShardResult, ensure_ray, shard_dataset


def run_shard(
    spec: InputSpec,
    out: str,
    name: str,
    config: ShardConfig,
    parent_vocab: str | None = None,
    overwrite: bool = False,
    ray_address: str | None = None,
    num_cpus: int | None = None,
) -> ShardResult:
    start = time.perf_counter()
    ensure_ray(ray_address, num_cpus)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=progress_console,
    ) as bar:
        tasks: dict[str, int] = {}

        def on_progress(stage: str, done: int, total: int, people: int) -> None:
            label = {"read": "reading blocks", "write": "writing shards"}[stage]
            if stage not in tasks:
                tasks[stage] = bar.add_task(label, total=total, detail="")
            elapsed = max(time.perf_counter() - start, 1e-9)
            bar.update(
                tasks[stage],
                completed=done,
                total=total,
                detail=f"{people:,} people, {people / elapsed:,.0f}/s",
            )

        result = shard_dataset(spec, out, name, config, parent_vocab, overwrite, on_progress)
    elapsed = time.perf_counter() - start
    manifest = result.manifest
    if result.already_complete:
        console.print(
            f"{storage.redact(result.dataset_url)} is already complete (same input and config): nothing to do"
        )
        return result
    rows = []
    for split, info in manifest.splits.items():
        rows.append([split, info["people_in"], info["people"], info["people_quarantined"], info["tokens"], info["shards"],
                     info["bytes"], (manifest.oracle_perplexity or {}).get(split)])  # fmt: skip
    print_rows(
        f"dataset {storage.redact(result.dataset_url)}",
        [
            "split",
            "people in",
            "written",
            "quarantined",
            "job-years",
            "shards",
            "bytes",
            "oracle ppl",
        ],
        rows,
    )
    totals = manifest.totals
    console.print(
        f"{totals['people_read']:,} people in {elapsed:,.1f} s ({totals['people_read'] / elapsed:,.0f} people/s); "
        f"{manifest.extra.get('bytes_per_token')} bytes per job-year; vocab {manifest.vocab_hash[:12]}"
        + (f" extends {manifest.parent_hash[:12]}" if manifest.parent_hash else "")
        + (
            f"; reused {result.shards_reused} shards from an interrupted run"
            if result.shards_reused
            else ""
        )
    )
    return result
