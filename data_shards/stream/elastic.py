"""Resuming a loader with another number of slots (ranks x DataLoader workers).

An exact resume needs the same slots: each slot continues right after its last batch. With
another layout there is no "next batch" of a slot to continue from, so the unit that is kept is
the person: for every epoch the earlier slots had begun, work out which people they had already
handed to training, and deal everything else out to the new slots as *catch-up epochs*. After
them, epochs start afresh with the new layout. Every person is read exactly once per epoch; the
batches themselves differ from an uninterrupted run (they are cut by the new layout).

What was read is recomputed, not stored: a slot's position (epoch, group, index) and the
seeded batch order of its group say exactly which people its batches 0..index held.

This module knows the stream only through `PlannedStream` (what `dataset.CareerStream` offers) and
imports only `config` and `collate`, so the package has no import cycle.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np

from data_shards.blocks import Block, decode_block
from data_shards.stream.collate import decode_group
from data_shards.stream.config import Piece, Position, StreamConfig


class PlannedStream(Protocol):
    """The part of a stream the re-planning reads: its plan, its blocks and its batch order."""

    config: StreamConfig
    fields: dict[str, Any]
    catchup: dict[int, list[Piece]]

    @property
    def first_epoch(self) -> int: ...

    def plan(self, slot: int, slots: int, epoch: int) -> list[Piece]: ...

    def read_pieces(self, pieces: list[Piece]) -> Iterator[tuple[Piece, bytes]]: ...

    def batch_order(self, people: Block, slot: int, epoch: int, group: int) -> list[np.ndarray]: ...


def people_read(
    stream: PlannedStream, slot: int, epoch: int, group: int, index: int, pieces: list[Piece]
) -> tuple[dict[int, set[int]], dict[int, int]]:
    """Of the group `pieces`: the people `slot` handed out in batches 0..index (block -> indices
    in the block), and the number of people in each block."""
    items = list(stream.read_pieces(pieces))
    sizes = {piece[0]: decode_block(data).num_people for piece, data in items}
    people, block_ids, indices = decode_group(items, stream.fields)
    batches = stream.batch_order(people, slot, epoch, group)[: index + 1]
    read: dict[int, set[int]] = {}
    for member in np.concatenate(batches) if batches else []:
        read.setdefault(int(block_ids[member]), set()).add(int(indices[member]))
    return read, sizes


def remaining_plan(
    stream: PlannedStream, slots: int, positions: dict[int, Position]
) -> dict[int, list[Piece]]:
    """Catch-up epochs: for each epoch begun by `slots` slots of `stream`, what they had not read.

    `stream` is configured as the earlier run was (its catch-up epochs included); `positions`
    holds the last batch each slot handed to training (a slot without one had read nothing).
    """
    start = stream.first_epoch
    # Catch-up epochs not begun by any slot yet still hold what an earlier layout left.
    last = max([p.epoch for p in positions.values()] + list(stream.catchup), default=start)
    plan: dict[int, list[Piece]] = {}
    size = stream.config.buffer_blocks
    for epoch in range(start, last + 1):
        left: list[Piece] = []
        for slot in range(slots):
            pieces = stream.plan(slot, slots, epoch)
            position = positions.get(slot)
            if position is None or position.epoch < epoch:
                left += pieces
                continue
            if position.epoch > epoch:
                continue
            current = pieces[position.group * size : (position.group + 1) * size]
            left += pieces[(position.group + 1) * size :]
            read, sizes = people_read(stream, slot, epoch, position.group, position.index, current)
            for block_id, skipped in current:
                gone = set(skipped) | read.get(block_id, set())
                if len(gone) < sizes[block_id]:
                    left.append((block_id, tuple(sorted(gone))))
        plan[epoch] = sorted(left)
    return plan


def plan_to_json(plan: dict[int, list[Piece]]) -> dict[str, list]:
    return {
        str(epoch): [[b, list(skipped)] for b, skipped in pieces] for epoch, pieces in plan.items()
    }


def plan_from_json(payload: dict[str, list]) -> dict[int, list[Piece]]:
    return {
        int(epoch): [(int(b), tuple(int(i) for i in skipped)) for b, skipped in pieces]
        for epoch, pieces in payload.items()
    }
