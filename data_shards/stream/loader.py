"""`CareerLoader`: a DataLoader over `CareerStream` that knows where it is, and resumes there.

Resuming: each batch carries its position (slot, epoch, group, index in group); the loader
records the last position consumed per slot, and `load_state_dict` restarts every slot right
after it, with DataLoader workers rotated so that the next batch is exactly the one an
uninterrupted run would have yielded. `load_states` takes the states of every rank and also
resumes on another number of ranks or workers: the people the earlier slots had not read yet in
each begun epoch are dealt out as catch-up epochs (`elastic.remaining_plan`).

`read_split`: the one way to read a split once, in order (evaluation, scoring, closed-form fits).
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import torch
from torch.utils.data import DataLoader

from data_shards.manifest import Manifest
from data_shards.stream.collate import to_tensors
from data_shards.stream.config import STATE_FORMAT, Position, StreamConfig
from data_shards.stream.dataset import CareerStream
from data_shards.stream.elastic import plan_from_json, plan_to_json, remaining_plan


def _identity(batch: dict) -> dict:
    return batch


class CareerLoader:
    """A DataLoader over `CareerStream` that knows where it is (`state_dict` / `load_state_dict`)."""

    def __init__(
        self,
        data_url: str,
        config: StreamConfig,
        num_workers: int = 1,
        storage_options: dict | None = None,
        prefetch_factor: int = 4,
        manifest: Manifest | None = None,
    ):
        """`manifest`: the dataset's, when the caller has read it already (a training rank reads
        it once, with the vocabulary: `data_shards.dataset.load_dataset`); default: read here."""
        self.stream = CareerStream(data_url, config, storage_options, manifest=manifest)
        self.config = config
        self.num_workers = num_workers
        self.prefetch_factor = prefetch_factor
        self.consumed = 0
        self.last: dict[int, Position] = {}
        self.padding = [0.0, 0]  # sum of padding shares, batches

    @property
    def manifest(self) -> Manifest:
        return self.stream.manifest

    def __iter__(self) -> Iterator[dict]:
        workers = max(self.num_workers, 1)
        self.stream.rotation = self.consumed % workers
        self.stream.resume = dict(self.last)
        loader = DataLoader(
            self.stream,
            batch_size=None,
            num_workers=self.num_workers,
            collate_fn=_identity,
            prefetch_factor=self.prefetch_factor if self.num_workers else None,
            persistent_workers=False,
            # Our own seeds drive all randomness; a private generator keeps DataLoader from
            # drawing from the global torch RNG, which training restores exactly on resume.
            generator=torch.Generator().manual_seed(0),
            worker_init_fn=functools.partial(_die_with_parent, os.getpid()),
        )
        for batch in loader:
            batch = to_tensors(batch)
            position = Position(**batch.pop("position"))
            self.last[position.slot] = position
            self.consumed += 1
            self.padding[0] += batch["padding_share"]
            self.padding[1] += 1
            yield batch
        if not self.config.loop:  # a finished evaluation pass: the next one starts afresh
            self.last, self.consumed = {}, 0

    @property
    def padding_share(self) -> float:
        """Mean share of padded positions over the batches consumed so far."""
        return self.padding[0] / self.padding[1] if self.padding[1] else 0.0

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "config": asdict(self.config),
            "num_workers": self.num_workers,
            "manifest_shards": [s.sha256 for s in self.stream.shards],
            "consumed": self.consumed,
            "last": {str(slot): asdict(pos) for slot, pos in self.last.items()},
            "catchup": plan_to_json(self.stream.catchup),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not self.config.loop:
            raise ValueError(
                "a one-pass (evaluation) loader has nothing to resume: it restarts from the beginning"
            )
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"unsupported loader state format {state.get('format')!r}")
        if _saved_config(state) != asdict(self.config) or state["num_workers"] != self.num_workers:
            raise ValueError(
                "loader state was saved with a different configuration or number of DataLoader workers; "
                f"saved {state['config']} with {state['num_workers']} workers"
            )
        if state["manifest_shards"] != [s.sha256 for s in self.stream.shards]:
            raise ValueError("loader state belongs to a different dataset (shard hashes differ)")
        self.consumed = int(state["consumed"])
        self.last = {int(slot): Position(**pos) for slot, pos in state["last"].items()}
        self.stream.catchup = plan_from_json(state.get("catchup", {}))

    def load_states(self, states: list[dict[str, Any]]) -> str:
        """Resume from the loader states of every rank of an earlier run (as a checkpoint holds).

        The same ranks and DataLoader workers continue exactly at the next batch ("exact").
        Another number of either re-plans the rest of the current epochs so that every person is
        still read once per epoch ("elastic"; see `data_shards.stream.elastic`).
        """
        first = states[0]
        saved = {k: v for k, v in _saved_config(first).items() if k != "rank"}
        same_layout = (
            len(states) == self.config.world_size
            and first["num_workers"] == self.num_workers
            and saved == {k: v for k, v in asdict(self.config).items() if k != "rank"}
        )
        if same_layout:
            self.load_state_dict(states[self.config.rank])
            return "exact"
        if first.get("format") != STATE_FORMAT:
            raise ValueError(f"unsupported loader state format {first.get('format')!r}")
        # The earlier order is rebuilt from the saved config; only what is read must be the same.
        changed = [
            k for k in ("split", "loop", "people") if saved.get(k) != getattr(self.config, k)
        ]
        if changed:
            raise ValueError(f"loader state cannot continue with another {', '.join(changed)}")
        if first["manifest_shards"] != [s.sha256 for s in self.stream.shards]:
            raise ValueError("loader state belongs to a different dataset (shard hashes differ)")
        earlier = CareerStream(
            self.stream.data_url,
            StreamConfig(**{**saved, "rank": 0}),
            self.stream.storage_options,
            manifest=self.stream.manifest,
        )
        earlier.catchup = plan_from_json(first.get("catchup", {}))
        positions = {
            int(slot): Position(**pos) for state in states for slot, pos in state["last"].items()
        }
        slots = saved["world_size"] * max(first["num_workers"], 1)
        self.stream.catchup = remaining_plan(earlier, slots, positions)
        self.last, self.consumed = {}, 0
        return "elastic"


def read_split(
    data_url: str,
    split: str,
    *,
    tokens_per_batch: int = StreamConfig.tokens_per_update,
    people: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    storage_options: dict | None = None,
) -> CareerLoader:
    """One pass over a split's batches in order, each person once (no shuffling, no epochs, read
    in this process): of its first `people` people when given; of this rank's share when
    `world_size` > 1. `tokens_per_batch`: the token budget (`StreamConfig.tokens_per_update`)."""
    config = StreamConfig(
        split=split,
        tokens_per_update=tokens_per_batch,
        rank=rank,
        world_size=world_size,
        shuffle=False,
        loop=False,
        people=people,
    )
    return CareerLoader(data_url, config, num_workers=0, storage_options=storage_options)


def _saved_config(state: dict[str, Any]) -> dict[str, Any]:
    """A saved loader's `StreamConfig` fields, with those added since as their defaults (a state
    saved before `people` existed read every person)."""
    return {"people": None, **state["config"]}


def _die_with_parent(parent: int, _worker_id: int) -> None:
    """Make a loader worker process die with the process that started it (Linux).

    A training worker killed with SIGKILL (a lost Ray worker, the OOM killer) leaves its loader
    workers behind: they stop reading, then hang at exit on a queue only the dead parent read.
    They hold the sockets they inherited, so Ray never sees its worker gone and the run hangs
    instead of being restarted. With the parent-death signal they go with it."""
    if sys.platform != "linux":
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)
