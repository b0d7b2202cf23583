"""`CareerStream`: one rank's iterable of batches over a split, split over slots and resumable.

Subsets: `StreamConfig.people` keeps the first N people of the split (`subset.prefix_of`), so
a scaling study's corpus sizes are nested prefixes of one sharded corpus.

Splitting: every (rank, DataLoader worker) pair is a *slot*; slot g of G takes shards g, g+G, ...
of the epoch's (seeded) shard order, or, when a split has fewer shards than slots, every G-th block
of every shard. Either way each block is read by exactly one slot per epoch. Running under
torch.distributed with a world size the config does not name is an error.

Batching: a slot reads `buffer_blocks` blocks at a time (a *group*), shuffles people with a seed
of (seed, epoch, slot, group), sorts them by length so batches pad little, cuts batches by the
token budget and shuffles the batch order (`collate.make_batches`). Each batch carries its
`Position`; `slot_batches` restarts a slot right after a given position, and the catch-up epochs
of an elastic resume (`elastic.remaining_plan`) replace the plan of the epochs they cover.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from data_shards import storage
from data_shards.blocks import Block, decode_block
from data_shards.manifest import Manifest, ShardInfo, load_manifest
from data_shards.stream.collate import collate, decode_group, make_batches
from data_shards.stream.config import Piece, Position, StreamConfig, seeded_rng
from data_shards.stream.sources import shard_members
from data_shards.stream.subset import Prefix, prefix_of


class CareerStream(IterableDataset):
    """One rank's stream of batches (dicts) over a split; see the module docstring."""

    def __init__(
        self,
        data_url: str,
        config: StreamConfig,
        storage_options: dict | None = None,
        manifest: Manifest | None = None,
    ):
        super().__init__()
        self.data_url = data_url
        self.config = config
        self.storage_options = storage_options
        self.manifest = manifest or load_manifest(data_url, storage_options)
        self.shards: list[ShardInfo] = self.manifest.shards_of(config.split)
        self.prefix: Prefix | None = None
        if config.people is not None:
            self.prefix = prefix_of(self.manifest, config.split, config.people)
            self.shards = self.prefix.shards
        self.fields = self.manifest.fields
        self.resume: dict[int, Position] = {}
        self.rotation = 0
        self.catchup: dict[int, list[Piece]] = {}  # epoch -> pieces left by another slot layout
        self.block_base = np.concatenate([[0], np.cumsum([s.blocks for s in self.shards])])
        if not self.shards:
            raise ValueError(f"split {config.split!r} of {storage.redact(data_url)} has no shards")

    def _check_distributed(self) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            world = torch.distributed.get_world_size()
            if world != self.config.world_size or torch.distributed.get_rank() != self.config.rank:
                raise RuntimeError(
                    f"torch.distributed runs {world} ranks but the loader was configured for rank "
                    f"{self.config.rank} of {self.config.world_size}: pass rank and world_size explicitly"
                )

    def _shard_order(self, epoch: int) -> list[int]:
        if not self.config.shuffle:
            return list(range(len(self.shards)))
        return [
            int(i)
            for i in seeded_rng(self.config.seed, epoch, 0xC0FFEE).permutation(len(self.shards))
        ]

    def plan(self, slot: int, slots: int, epoch: int) -> list[Piece]:
        """The blocks `slot` of `slots` reads in `epoch`, in reading order.

        Slot g takes shards g, g+G, ... of the epoch's shard order, or every G-th block when there
        are fewer shards than slots. A catch-up epoch (after resuming with another number of
        slots) deals out what the earlier layout had not read yet instead.
        """
        if epoch in self.catchup:  # contiguous runs, so that a slot opens few shards
            left = self.catchup[epoch]
            return left[slot * len(left) // slots : (slot + 1) * len(left) // slots]
        order = self._shard_order(epoch)
        whole_shards = len(order) >= slots
        if whole_shards:
            order = order[slot::slots]
        ids = [int(self.block_base[i]) + b for i in order for b in range(self.shards[i].blocks)]
        if not whole_shards:
            ids = ids[slot::slots]
        skipped = self.prefix.skipped if self.prefix else {}
        return [(block_id, skipped.get(block_id, ())) for block_id in ids]

    def tokens(self) -> int:
        """Job-year tokens of this stream's people: the manifest's, and for a subset that cuts a
        shard, that shard's blocks read and counted (the manifest has no per-block counts)."""
        if self.prefix is None:
            return sum(s.tokens for s in self.shards)
        if self.prefix.cut_shard is None:
            return self.prefix.whole_shard_tokens
        base = int(self.block_base[len(self.shards) - 1])
        pieces = [
            (base + b, self.prefix.skipped.get(base + b, ()))
            for b in range(self.prefix.cut_shard.blocks)
        ]
        counted = 0
        for (_, skipped), data in self.read_pieces(pieces):
            lengths = decode_block(data).lengths
            counted += int(lengths.sum()) - int(lengths[list(skipped)].sum())
        return self.prefix.whole_shard_tokens + counted

    def read_pieces(self, pieces: list[Piece]) -> Iterator[tuple[Piece, bytes]]:
        """The encoded blocks of `pieces`, in order: consecutive pieces of a shard share one read."""
        start = 0
        while start < len(pieces):
            shard = int(np.searchsorted(self.block_base, pieces[start][0], side="right")) - 1
            stop = start
            while (
                stop < len(pieces)
                and self.block_base[shard] <= pieces[stop][0] < self.block_base[shard + 1]
            ):
                stop += 1
            wanted = {piece[0] - int(self.block_base[shard]): piece for piece in pieces[start:stop]}
            info = self.shards[shard]
            url = storage.join(self.data_url, info.path)
            members = shard_members(url, info.sha256, self.storage_options)
            found = 0
            try:
                for index, data in enumerate(members):
                    if index in wanted:
                        yield wanted[index], data
                        found += 1
                        if found == len(wanted):
                            break
            finally:
                members.close()
            if found < len(wanted):
                raise ValueError(
                    f"shard {storage.redact(url)} has fewer blocks than its manifest lists"
                )
            start = stop

    def _groups(self, plan: list[Piece]) -> Iterator[tuple[int, list[tuple[Piece, bytes]]]]:
        group, pending = 0, []
        for item in self.read_pieces(plan):
            pending.append(item)
            if len(pending) == self.config.buffer_blocks:
                yield group, pending
                group, pending = group + 1, []
        if pending:
            yield group, pending

    def batch_order(self, people: Block, slot: int, epoch: int, group: int) -> list[np.ndarray]:
        """The batches (people indices) a group is cut into: seeded by (seed, epoch, slot, group)."""
        rng = seeded_rng(self.config.seed, epoch, slot, group) if self.config.shuffle else None
        return make_batches(people.lengths, self.config.tokens_per_batch, rng)

    @property
    def first_epoch(self) -> int:
        return min(self.catchup, default=0)

    def slot_batches(
        self, slot: int, slots: int, start: Position | None = None
    ) -> Iterator[tuple[Position, dict]]:
        """Batches of one slot, from just after `start` (or the beginning)."""
        epoch = start.epoch if start else self.first_epoch
        while True:
            groups = 0
            for group, items in self._groups(self.plan(slot, slots, epoch)):
                groups += 1
                if start and (epoch, group) < (start.epoch, start.group):
                    continue  # skip whole groups without decoding their people
                people = decode_group(items, self.fields)[0]
                for index, members in enumerate(self.batch_order(people, slot, epoch, group)):
                    if (
                        start
                        and (epoch, group) == (start.epoch, start.group)
                        and index <= start.index
                    ):
                        continue
                    position = Position(slot, epoch, group, index)
                    batch = collate(people, members, self.fields)
                    batch["position"] = asdict(position)
                    yield position, batch
            if not self.config.loop:
                return
            if not groups and epoch not in self.catchup:
                raise ValueError(
                    f"split {self.config.split!r} has too few blocks for {slots} loader slots "
                    f"(ranks x workers): slot {slot} would wait forever; use fewer DataLoader workers "
                    "or reshard with a smaller --people-per-block"
                )
            epoch += 1
            start = None

    def __iter__(self) -> Iterator[dict]:
        self._check_distributed()
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        local = (worker + self.rotation) % workers
        slots = self.config.world_size * workers
        slot = self.config.rank * workers + local
        for _, batch in self.slot_batches(slot, slots, self.resume.get(slot)):
            yield batch
