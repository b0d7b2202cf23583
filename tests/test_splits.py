"""The split function: stable, independent of order and batching, close to the fractions."""

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data_shards.splits import DEFAULT_SALT, resolve_splits, split_of, unit_hash


def reference_unit_hash(person_id: str, salt: str = DEFAULT_SALT) -> float:
    """Pure-Python FNV-1a 64 + the same finaliser, written independently of the numpy version."""
    mask = (1 << 64) - 1
    h = 0xCBF29CE484222325
    for byte in salt.encode() + person_id.encode():
        h = ((h ^ byte) * 0x100000001B3) & mask
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & mask
    h ^= h >> 33
    return (h >> 11) / float(1 << 53)


@settings(deadline=None)  # the first call pays numpy's warm-up
@given(st.lists(st.text(min_size=0, max_size=30), min_size=1, max_size=50))
def test_vectorised_hash_matches_reference(ids):
    got = unit_hash(ids)
    want = np.array([reference_unit_hash(i) for i in ids])
    np.testing.assert_array_equal(got, want)


def test_split_is_independent_of_order_and_batch():
    ids = [f"person-{i}" for i in range(5000)]
    whole = split_of(ids)
    reversed_ = split_of(ids[::-1])[::-1]
    halves = np.concatenate([split_of(ids[:1234]), split_of(ids[1234:])])
    np.testing.assert_array_equal(whole, reversed_)
    np.testing.assert_array_equal(whole, halves)


def test_split_fractions_are_respected():
    ids = pa.array([f"id{i:07d}" for i in range(200_000)])
    splits = split_of(ids, (0.8, 0.1, 0.1))
    shares = np.bincount(splits, minlength=3) / len(splits)
    np.testing.assert_allclose(shares, [0.8, 0.1, 0.1], atol=0.005)


def test_salt_changes_assignment_and_bad_fractions_fail():
    ids = [f"p{i}" for i in range(1000)]
    assert (split_of(ids, salt="a") != split_of(ids, salt="b")).any()
    with pytest.raises(ValueError, match="sum to 1"):
        split_of(ids, (0.5, 0.2, 0.2))


def test_own_splits_win_over_hash():
    table = pa.table({"person_id": ["a", "b", "c"], "split": ["test", None, "valid"]})
    got = resolve_splits(table).to_pylist()
    assert got[0] == "test" and got[2] == "valid"
    assert got[1] == ["train", "valid", "test"][split_of(["b"])[0]]
