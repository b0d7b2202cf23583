"""The one function that decides a person's split, from `person_id` alone.

A stable 64-bit FNV-1a hash of the id's UTF-8 bytes (salted) mapped to [0, 1) and cut by the split
fractions. It is vectorised over an Arrow string array (one numpy pass per character position), so
24M ids cost seconds, and it gives the same answer on every machine, process and Python version
(unlike `hash()`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from data_shards.schema import SPLITS

DEFAULT_FRACTIONS = (0.9, 0.05, 0.05)
DEFAULT_SALT = "career-split-v1"

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if len(fractions) != 3 or not all(math.isfinite(f) and f >= 0 for f in fractions):
        raise ValueError(
            f"split fractions must be three finite non-negative numbers, got {fractions!r}"
        )
    if abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"split fractions must sum to 1, got {fractions!r} (sum {sum(fractions)})")
    return (float(fractions[0]), float(fractions[1]), float(fractions[2]))


def _fnv1a(data: np.ndarray, offsets: np.ndarray, seed: np.uint64) -> np.ndarray:
    starts, ends = offsets[:-1], offsets[1:]
    lengths = ends - starts
    hashes = np.full(len(starts), seed, dtype=np.uint64)
    for k in range(int(lengths.max(initial=0))):
        active = np.nonzero(lengths > k)[0]
        byte = data[starts[active] + k].astype(np.uint64)
        hashes[active] = (hashes[active] ^ byte) * _FNV_PRIME
    return hashes


def hash64(person_ids: pa.Array | Sequence[str], salt: str = DEFAULT_SALT) -> np.ndarray:
    """A stable 64-bit hash (uint64) per id."""
    ids = pa.array(person_ids, pa.string()) if not isinstance(person_ids, pa.Array) else person_ids
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    ids = ids.cast(pa.large_string())
    if ids.null_count:
        raise ValueError("person_id must not be null")
    _, offsets_buf, data_buf = ids.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64)[ids.offset : ids.offset + len(ids) + 1]
    data = (
        np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    )
    with np.errstate(over="ignore"):
        seed = _FNV_OFFSET
        for byte in salt.encode():
            seed = (seed ^ np.uint64(byte)) * _FNV_PRIME
        hashes = _fnv1a(data, offsets, seed)
        # One extra multiply-xorshift round so that ids differing only in the last byte spread out.
        hashes ^= hashes >> np.uint64(33)
        hashes *= np.uint64(0xFF51AFD7ED558CCD)
        hashes ^= hashes >> np.uint64(33)
    return hashes


def unit_hash(person_ids: pa.Array | Sequence[str], salt: str = DEFAULT_SALT) -> np.ndarray:
    """A float64 in [0, 1) per id, uniform and stable."""
    return (hash64(person_ids, salt) >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def split_of(
    person_ids: pa.Array | Sequence[str],
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    salt: str = DEFAULT_SALT,
) -> np.ndarray:
    """Split index per person (0 train, 1 valid, 2 test), see `SPLITS`."""
    train, valid, _ = check_fractions(fractions)
    u = unit_hash(person_ids, salt)
    return np.where(u < train, 0, np.where(u < train + valid, 1, 2)).astype(np.int8)


def split_names(
    person_ids: pa.Array | Sequence[str],
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    salt: str = DEFAULT_SALT,
) -> pa.Array:
    """Split name per person as an Arrow string array."""
    return pa.array(
        np.array(SPLITS, dtype=object)[split_of(person_ids, fractions, salt)], pa.string()
    )


def resolve_splits(table: pa.Table, fractions=DEFAULT_FRACTIONS, salt=DEFAULT_SALT) -> pa.Array:
    """The split of each record: the input's own where it carries one, else `split_of`."""
    computed = split_names(table.column("person_id"), fractions, salt)
    if "split" not in table.column_names:
        return computed
    own = table.column("split").combine_chunks()
    return pa.compute.if_else(pa.compute.is_null(own), computed, own)
