"""Blocks of people -> batches of the `Batch` contract: grouping, selecting, cutting, padding.

Pure numpy functions of decoded blocks (`blocks.decode_block`), with no reading and no state:
merge the blocks of a group, keep the people not yet read, cut the group into token-budget
batches of similar lengths, pad a batch (`<bos>` first, pad id 0 everywhere) and hand it over as
torch tensors.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from data_shards.blocks import Block, decode_block
from data_shards.stream.config import Piece
from data_shards.vocab import BOS_ID, PAD_ID


def merge_blocks(blocks: list[Block]) -> Block:
    """One block holding the people of several (a group), arrays concatenated."""
    if len(blocks) == 1:
        return blocks[0]
    return Block(
        person_id=np.concatenate([b.person_id for b in blocks]),
        lengths=np.concatenate([b.lengths for b in blocks]),
        arrays={
            name: np.concatenate([b.arrays[name] for b in blocks]) for name in blocks[0].arrays
        },
    )


def select_people(block: Block, keep: np.ndarray, fields: dict[str, Any]) -> Block:
    """The people `keep` (indices, ascending) of `block`, token and person arrays cut to match."""
    starts = block.offsets[:-1][keep]
    lengths = block.lengths[keep]
    token_index = np.repeat(starts, lengths) + (
        np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    )
    per_token = set(fields["token_fields"]) | set(fields["float_token_fields"])
    arrays = {
        name: values[token_index] if name in per_token else values[keep]
        for name, values in block.arrays.items()
    }
    return Block(person_id=block.person_id[keep], lengths=lengths, arrays=arrays)


def decode_group(
    items: list[tuple[Piece, bytes]], fields: dict[str, Any]
) -> tuple[Block, np.ndarray, np.ndarray]:
    """The people of a group's pieces, merged; and for each, its block id and index in the block."""
    blocks, block_ids, indices = [], [], []
    for (block_id, skipped), data in items:
        block = decode_block(data)
        keep = np.arange(block.num_people)
        if skipped:
            keep = np.setdiff1d(keep, np.asarray(skipped, dtype=np.int64))
            block = select_people(block, keep, fields)
        blocks.append(block)
        block_ids.append(np.full(len(keep), block_id, dtype=np.int64))
        indices.append(keep)
    return merge_blocks(blocks), np.concatenate(block_ids), np.concatenate(indices)


def collate(group: Block, people: np.ndarray, fields: dict[str, Any]) -> dict[str, Any]:
    """Pad people `people` (indices into `group`) into the Batch contract. Pad id 0 everywhere.

    Arrays stay numpy here (cheap to send from a DataLoader worker in one pickle);
    `to_tensors` turns them into torch tensors without a copy in the consuming process.
    """
    lengths = group.lengths[people]
    starts = group.offsets[:-1][people]
    B, T = len(people), int(lengths.max(initial=1))
    total = int(lengths.sum())
    rows = np.repeat(np.arange(B), lengths)
    cols = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    token_index = np.repeat(starts, lengths) + cols

    targets = np.zeros((B, T), dtype=np.int64)
    targets[rows, cols] = group.arrays["job"][token_index]
    inputs = np.full((B, T), PAD_ID, dtype=np.int64)
    inputs[:, 0] = BOS_ID
    inputs[:, 1:] = targets[:, :-1]
    pad = np.arange(T)[None, :] >= lengths[:, None]
    inputs[pad] = PAD_ID
    batch: dict[str, Any] = {
        "inputs": inputs,
        "targets": targets,
        "lengths": lengths.astype(np.int64),
        "person_id": group.person_id[people],
    }
    for name in fields["token_fields"]:
        if name != "job":  # covariates of the year being predicted: aligned with targets
            values = np.zeros((B, T), dtype=np.int64)
            values[rows, cols] = group.arrays[name][token_index]
            batch[name] = values
    for name in fields["float_token_fields"]:  # padding 0; a real but missing wage is NaN
        values = np.zeros((B, T), dtype=np.float32)
        values[rows, cols] = group.arrays[name][token_index]
        batch[name] = values
    for name in fields["person_fields"]:
        per_person = group.arrays[name][people].astype(np.int64)
        batch[name] = np.where(pad, PAD_ID, per_person[:, None])  # static, repeated
    if fields["weight"]:
        batch["weight"] = group.arrays["weight"][people].astype(np.float32)
    batch["padding_share"] = float(pad.sum()) / max(B * T, 1)
    return batch


def to_tensors(batch: dict[str, Any]) -> dict[str, Any]:
    """numpy arrays -> torch tensors (zero-copy); `person_id` becomes a list of str."""
    out = {}
    for key, value in batch.items():
        if key == "person_id":
            out[key] = value.tolist()
        elif isinstance(value, np.ndarray):
            out[key] = torch.from_numpy(value)
        else:
            out[key] = value
    return out


def make_batches(
    lengths: np.ndarray, budget: int, rng: np.random.Generator | None
) -> list[np.ndarray]:
    """Indices of people grouped by similar length into batches of at most `budget` real tokens."""
    order = rng.permutation(len(lengths)) if rng is not None else np.arange(len(lengths))
    order = order[
        np.argsort(lengths[order], kind="stable")
    ]  # random tie-breaking among equal lengths
    cumulative = np.cumsum(lengths[order])
    batches = []
    start = 0
    while start < len(order):
        base = cumulative[start - 1] if start else 0
        stop = int(np.searchsorted(cumulative, base + budget, side="right"))
        stop = max(stop, start + 1)  # a person longer than the budget goes alone
        batches.append(order[start:stop])
        start = stop
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches
