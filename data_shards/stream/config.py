"""What a loader is asked for and where a batch came from: `StreamConfig`, `Position`, `Piece`.

The vocabulary of the stream package, shared by every other module of it and importing none of
them; also the seeded generator every random choice of the loader draws from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Version of `CareerLoader.state_dict()`'s layout.
STATE_FORMAT = 1


@dataclass(frozen=True)
class StreamConfig:
    """What a rank's loader reads and how it batches it."""

    split: str = "train"
    tokens_per_update: int = 16_000  # job-year tokens per optimizer update, all ranks, no padding
    rank: int = 0
    world_size: int = 1
    micro_batches: int = 1  # gradient accumulation steps per update
    shuffle: bool = True
    loop: bool = True  # endless epochs (training); False: one pass (evaluation)
    seed: int = 0
    buffer_blocks: int = 16
    #: Only the first `people` people of the split (`subset.prefix_of`: nested corpus sizes of
    #: a scaling study); None: all of them.
    people: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in [0, world_size={self.world_size})")
        if self.tokens_per_update < self.world_size * self.micro_batches:
            raise ValueError("tokens_per_update is smaller than world_size x micro_batches")
        if self.buffer_blocks < 1:
            raise ValueError("buffer_blocks must be at least 1")
        if self.people is not None and self.people < 1:
            raise ValueError(f"people must be at least 1 (or None: all), not {self.people}")

    @property
    def tokens_per_batch(self) -> int:
        return self.tokens_per_update // (self.world_size * self.micro_batches)


@dataclass(frozen=True)
class Position:
    """Where a batch came from; batches of one slot are ordered by (epoch, group, index)."""

    slot: int
    epoch: int
    group: int
    index: int


#: A block of the split (its index over the split's shards in manifest order) and the people of it
#: (indices within the block) that were already read this epoch and are skipped.
Piece = tuple[int, tuple[int, ...]]


def seeded_rng(*key: int) -> np.random.Generator:
    """A generator seeded by `key` alone (e.g. seed, epoch, slot, group): same key, same draws."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(k) for k in key])))
