"""Resuming on another number of workers: ZeRO partitions re-cut through DeepSpeed's universal
checkpoint format.

ZeRO partitions fit only the number of ranks that wrote them. When a run resumes on another
number, the node-local rank 0 of every node rewrites the checkpoint in the universal format (a
fresh private folder per node, beside the staging folder, in case that is on a filesystem several
nodes share), which loads on any number of ranks. Rank 0 decides, so that every rank takes the
same path through the collectives; a conversion that fails on one node is raised on every rank.

Before any of it, the tag is verified on every node against its record (`complete.json`,
`trainer.checkpoint_store`): a truncated, missing or corrupt file, or a tag whose save never
finished, is skipped with a note in the resume message, and the newest earlier complete tag is
used; a run whose tags are all incomplete is refused (exit 2), never restarted from scratch.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from trainer import engine as ds_engine
from trainer.checkpoint_store import CheckpointStore
from trainer.distributed import RunInfo, all_gather, any_rank, from_rank0


@dataclass(frozen=True)
class ResumeSource:
    """Where a resume loads its checkpoint from: the staging folder, or a universal copy of it."""

    tag: str
    folder: str
    universal: bool
    #: why newer tags were not used (`prepare_resume`), for the resume message
    skipped: tuple[str, ...] = ()

    def cleanup(self, info: RunInfo) -> None:
        """Remove the universal copy once every rank has loaded it."""
        if self.universal and info.local_rank == 0:
            shutil.rmtree(self.folder, ignore_errors=True)


def unshare_optimizer_steps(engine) -> int:
    """Give each optimizer state its own `step` tensor again; returns how many were shared.

    DeepSpeed 0.19.8's ZeRO-3 universal load (`load_hp_checkpoint_state_from_checkpoint_dir_stage3`)
    assigns one `step` tensor to every parameter sub-group; torch's Adam increments it in place
    once per sub-group, so Adam's bias correction ran ahead (36 updates counted as 54 here)."""
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
    seen, shared = set(), 0
    for state in getattr(inner, "state", {}).values():
        step = state.get("step")
        if torch.is_tensor(step):
            if id(step) in seen:
                state["step"], shared = step.clone(), shared + 1
            seen.add(id(step))
    return shared


def from_local_rank0(obj: Any, info: RunInfo) -> Any:
    """The `obj` of this node's local rank 0, on every rank of the node (a collective): for the
    folders that rank makes with `tempfile.mkdtemp`, whose names no other rank can compute."""
    host = socket.gethostname()
    found = [
        value
        for other, local_rank, value in all_gather((host, info.local_rank, obj))
        if other == host and local_rank == 0
    ]
    if len(found) != 1:
        raise RuntimeError(f"{len(found)} workers with local rank 0 on host {host}, not 1")
    return found[0]


def needs_conversion(saved_world_size: int, world_size: int) -> bool:
    """`saved_world_size` 0: a ZeRO stage 0 checkpoint, which loads on any number of ranks."""
    return bool(saved_world_size) and saved_world_size != world_size


def verified_tag(store: CheckpointStore, newest: str, info: RunInfo) -> tuple[str, tuple[str, ...]]:
    """The newest tag up to `newest` that every node verified against its record, and a note
    for each newer one skipped (a collective). Node-local rank 0 of each node fetches its own
    copy (a remote store's download) and checks it; a tag fails if it fails on any node. When
    the run has tags but none is complete the resume is refused (every rank raises the same
    StructuralError): starting over from scratch would silently throw the run's progress away."""
    candidates = from_rank0(
        [t for t in store.candidates() if t <= newest] if info.rank == 0 else None
    )
    problems: list[tuple[str, str]] = []
    for tag in candidates:
        reason = store.fetch(tag) if info.local_rank == 0 else None
        reasons = [r for r in all_gather(reason) if r]
        if not reasons:
            return tag, tuple(
                f"checkpoint {bad} skipped, not complete: {why}" for bad, why in problems
            )
        problems.append((tag, reasons[0]))
    raise store.describe_incomplete(problems)


def prepare_resume(store: CheckpointStore, tag: str, info: RunInfo) -> ResumeSource:
    """Fetch the newest complete checkpoint (`tag`, the newest there is, or an earlier one when
    it fails its record: `verified_tag`) to each node and, for another number of ranks, convert
    it."""
    tag, skipped = verified_tag(store, tag, info)
    dist.barrier()
    saved = from_rank0(ds_engine.checkpoint_world_size(os.path.join(store.local, tag)))
    if not needs_conversion(saved, info.world_size):
        return ResumeSource(tag, store.local, False, skipped)
    staging = Path(store.local)
    made = None
    if info.local_rank == 0:
        prefix = f"{staging.name}-universal-{socket.gethostname()}-"
        made = tempfile.mkdtemp(prefix=prefix, dir=staging.parent)
    folder = from_local_rank0(made, info)
    failure = None
    if info.local_rank == 0:
        try:
            ds_engine.to_universal(store.local, tag, folder)
        except Exception as error:  # reported on every rank below, not left waiting
            failure = error
            shutil.rmtree(folder, ignore_errors=True)
    failed_somewhere = any_rank(failure is not None, info.device)
    if failure is not None:
        raise failure
    if failed_somewhere:
        raise RuntimeError(
            "converting the checkpoint for another number of workers failed on another node"
        )
    return ResumeSource(tag, folder, True, skipped)
