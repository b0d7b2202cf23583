"""Nested corpus sizes: the first N people of a split, as whole blocks and one cut block.

A scaling study trains on several corpus sizes of one sharded corpus. Taking a *prefix* of the
split's people, in manifest order (shards in order, blocks in order, people in block order),
makes the subsets nested (a larger subset holds every smaller one) and deterministic (the same N
gives the same people on any machine, with any number of ranks) without resharding, and costs
no extra reading: the loader opens only the shards the prefix touches and skips the tail of the
one block it cuts (the `Piece` skip list that elastic resumption uses too).

The sharding job keeps each split in input order, so a prefix is a random sample only when the
input's order is random, as the simulator's is; a corpus sorted by, say, country should be
shuffled before sharding. Block sizes follow from the shard layout: every block of a shard holds
`people_per_block` people but its last (`data_shards.shard.write`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from data_shards.manifest import Manifest, ShardInfo


def block_sizes(shard: ShardInfo, people_per_block: int) -> list[int]:
    """People in each block of `shard`: full blocks, then the rest."""
    sizes = [people_per_block] * max(shard.blocks - 1, 0)
    if shard.blocks:
        sizes.append(shard.people - people_per_block * (shard.blocks - 1))
    return sizes


@dataclass(frozen=True)
class Prefix:
    """The first `people` people of a split: its shards (the last one shortened to the blocks the
    prefix reaches) and, for the one block it cuts, the people skipped (by global block id)."""

    people: int
    shards: list[ShardInfo]
    skipped: dict[int, tuple[int, ...]]
    #: Job-year tokens of the whole shards of the prefix (from the manifest); the cut shard's are
    #: not in the manifest, so `subset_tokens` reads that one shard.
    whole_shard_tokens: int
    cut_shard: ShardInfo | None


def prefix_of(manifest: Manifest, split: str, people: int) -> Prefix:
    """The first `people` people of `split` (a ValueError when it has fewer)."""
    shards = manifest.shards_of(split)
    total = sum(s.people for s in shards)
    if people < 1:
        raise ValueError(f"a corpus subset needs at least 1 person, not {people}")
    if people > total:
        raise ValueError(
            f"the {split} split of {manifest.name} has {total:,} people: a subset of {people:,} "
            "needs a larger corpus"
        )
    per_block = int(manifest.config.get("people_per_block") or 0)
    if per_block < 1:
        raise ValueError(f"{manifest.name}: the manifest does not record people_per_block")
    kept: list[ShardInfo] = []
    skipped: dict[int, tuple[int, ...]] = {}
    left, block_base, whole_tokens, cut = people, 0, 0, None
    for shard in shards:
        if left >= shard.people:
            kept.append(shard)
            whole_tokens += shard.tokens
            left -= shard.people
            block_base += shard.blocks
            if left == 0:
                break
            continue
        sizes = block_sizes(shard, per_block)
        blocks, reached = 0, 0
        while reached < left:
            reached += sizes[blocks]
            blocks += 1
        if reached > left:  # the last block reached is cut: skip its tail
            size = sizes[blocks - 1]
            keep = size - (reached - left)
            skipped[block_base + blocks - 1] = tuple(range(keep, size))
        cut = dataclasses.replace(shard, blocks=blocks, people=left, tokens=0)
        kept.append(cut)
        break
    return Prefix(people, kept, skipped, whole_tokens, cut)
