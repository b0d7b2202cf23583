"""Streaming loader: dataset shards -> token-budget batches of the `Batch` contract, resumable.

One module per concern, imported in this order (each imports only those above it):

    config.py    `StreamConfig`, `Position`, `Piece`, the seeded generator
    collate.py   blocks -> batches: merge, select people, cut by token budget, pad, to tensors
    sources.py   reading a shard's block members (any URL): read whole, retried, and checked
                 against the manifest's sha256 before any block is used
    subset.py    nested corpus sizes: the first N people of a split (whole blocks, one cut)
    elastic.py   resuming with another number of slots: the catch-up epochs
    dataset.py   `CareerStream`: one rank's batches, slots (rank x DataLoader worker), groups
    loader.py    `CareerLoader`: the DataLoader, its state, exact and elastic resume; and
                 `read_split`: one pass over a split, in order (evaluation)

Batching (as in the paper): a budget of `tokens_per_update` job-year tokens per update (padding
excluded) is divided over ranks and micro-batches.

Evaluation (`loop=False`): one pass; ranks may get different numbers of batches (shards differ in
size), so a distributed evaluation sums its NLL and token counts locally and all-reduces once at
the end, never per batch. When a split has fewer shards than slots, every slot reads every shard
and keeps its blocks: more reading, which only small (evaluation) splits need.
"""

from data_shards.stream.collate import (
    collate,
    decode_group,
    make_batches,
    merge_blocks,
    select_people,
    to_tensors,
)
from data_shards.stream.config import STATE_FORMAT, Piece, Position, StreamConfig
from data_shards.stream.dataset import CareerStream
from data_shards.stream.loader import CareerLoader, read_split

__all__ = [
    "STATE_FORMAT",
    "CareerLoader",
    "CareerStream",
    "Piece",
    "Position",
    "StreamConfig",
    "collate",
    "decode_group",
    "make_batches",
    "merge_blocks",
    "read_split",
    "select_people",
    "to_tensors",
]
