"""`career shard`: run the Ray sharding job with a progress bar and print a summary."""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from cluster.console import console, print_rows, progress_console
from cluster.data_settings import ShardSettings
from cluster.ray_session import connect_ray
from data_shards import storage
from data_shards.inputs import InputSpec
from data_shards.shard import ShardResult, shard_dataset


def input_spec(settings: ShardSettings) -> InputSpec:
    """What to read (or simulate), from the shard command's settings."""
    source, sim = settings.source, settings.simulator
    if source.format == "synth" and not sim.sim_preset:
        raise ValueError("--format synth needs --sim-preset")
    return InputSpec(
        format=source.format,
        url=source.input,
        panel=source.panel_mapping(),
        resume=source.resume if source.format == "resume-jsonl" else None,
        preset=sim.sim_preset,
        people=sim.people,
        seed=sim.seed,
        storage_options=source.storage.storage_options,
    )


def run_shard(settings: ShardSettings) -> ShardResult:
    """Run the sharding job for `career shard` with a progress bar and print a summary."""
    spec = input_spec(settings)
    start = time.perf_counter()
    connect_ray(
        settings.ray.ray_address,
        settings.ray.num_cpus,
        paths=settings,
        shared_fs=settings.ray.shared_fs,
    )
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

        result = shard_dataset(
            spec,
            settings.out,
            settings.name,
            settings.config,
            settings.vocab,
            settings.overwrite,
            on_progress,
        )
    elapsed = time.perf_counter() - start
    manifest = result.manifest
    if result.already_complete:
        console.print(
            f"{storage.redact(result.dataset_url)} is already complete (same input and config): nothing to do"
        )
        warn_quarantined(result)
        return result
    rows = []
    for split, info in manifest.splits.items():
        rows.append(
            [
                split,
                info["people_in"],
                info["people"],
                info["people_quarantined"],
                info["tokens"],
                info["shards"],
                info["bytes"],
                (manifest.oracle_perplexity or {}).get(split),
            ]
        )
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
    until = manifest.config.get("until")
    if until is not None:
        cut = {split: info.get("people_cut", 0) for split, info in manifest.splits.items()}
        gone = {split: info.get("tokens_cut", 0) for split, info in manifest.splits.items()}
        console.print(
            f"cutoff {until}: train/valid keep their years <= {until}; people with none dropped: "
            f"{cut['train']:,} train, {cut['valid']:,} valid; job-years after it removed: "
            f"{gone['train']:,} train, {gone['valid']:,} valid; test people keep their future"
        )
    console.print(
        f"{totals['people_read']:,} people in {elapsed:,.1f} s ({totals['people_read'] / elapsed:,.0f} people/s); "
        f"{manifest.extra.get('bytes_per_token')} bytes per job-year; vocab {manifest.vocab_hash[:12]}"
        + (f" extends {manifest.parent_hash[:12]}" if manifest.parent_hash else "")
        + (
            f"; reused {result.shards_reused} shards from an interrupted run"
            if result.shards_reused
            else ""
        )
        + (f"; tasks on {len(result.nodes)} Ray nodes" if len(result.nodes) > 1 else "")
    )
    warn_quarantined(result)
    return result


def warn_quarantined(result: ShardResult, command: str = "shard") -> None:
    """On stderr, at the end: more than half of the input was quarantined (`ShardResult.warning`)."""
    if result.warning:
        name = result.manifest.name
        print(f"career {command}: warning: dataset {name}: {result.warning}", file=sys.stderr)


def shard_and_warn(command: str, *args: Any, **kwargs: Any) -> ShardResult:
    """`shard_dataset` for `career run` and `career scale`, then `warn_quarantined` (an input that
    yields no record is refused by `shard_dataset` itself: exit 2, nothing written)."""
    result = shard_dataset(*args, **kwargs)
    warn_quarantined(result, command)
    return result
