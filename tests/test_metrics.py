"""Metrics from scores tables (no model, no data): hand-computable tables, the person bootstrap,
paired differences and the comparison table.

The hand table: person a (weight 1) works x in 2000 and 2001, then y in 2003; person b (weight 3)
works z in 2000 and 2001. Log-probabilities are powers of 1/2, so every perplexity is a power of 2.
"""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pyarrow as pa
import pytest

from data_shards.errors import StructuralError
from eval import comparison_table as table
from eval import metrics
from eval.scores import read_scores, write_scores

LN2 = math.log(2)


def hand_table(weights=(1.0, 3.0), shift: float = 0.0, oracle: bool = False) -> pa.Table:
    columns = {
        "person_id": ["a", "a", "a", "b", "b"],
        "position": [0, 1, 2, 0, 1],
        "year": [2000, 2001, 2003, 2000, 2001],
        "prev_job": [None, "x", "x", None, "z"],
        "target_job": ["x", "x", "y", "z", "z"],
        "logp": [-LN2 - shift, -2 * LN2, -3 * LN2, -LN2, -LN2],
        "p_stay": [math.nan, 0.8, 0.6, math.nan, 0.3],
        "rank": [1, 2, 3, 1, 1],
        "weight": [weights[0]] * 3 + [weights[1]] * 2,
    }
    if oracle:
        columns["oracle_logp"] = [-LN2 / 2] * 5
    return pa.table(columns)


def shuffled(t: pa.Table, seed: int = 0) -> pa.Table:
    return t.take(np.random.default_rng(seed).permutation(t.num_rows))


def test_perplexity_and_its_breakdowns_by_hand():
    s = metrics.summarize(shuffled(hand_table()), bootstrap=0)  # any row order
    assert s["people"] == 2 and s["tokens"] == 5 and s["weighted"] is False
    assert s["perplexity"]["value"] == pytest.approx(2 ** (8 / 5))  # (1+2+3+1+1) ln2 / 5 tokens
    assert s["perplexity"]["low"] is None and s["perplexity"]["high"] is None  # no bootstrap
    by = s["perplexity_by"]
    assert by["first_year"]["value"] == pytest.approx(2.0) and by["first_year"]["tokens"] == 2
    assert by["stay"]["value"] == pytest.approx(2**1.5) and by["stay"]["tokens"] == 2
    assert by["move"]["value"] == pytest.approx(8.0) and by["move"]["tokens"] == 1
    assert by["consecutive"]["value"] == pytest.approx(2**1.5)  # a 2001, b 2001
    assert by["non_consecutive"]["value"] == pytest.approx(8.0)  # a 2003: two years after 2001
    assert by["stay_consecutive"]["tokens"] == 2
    assert by["stay_non_consecutive"] == {"value": None, "low": None, "high": None, "tokens": 0}
    assert metrics.perplexity(hand_table(), subset="move", bootstrap=0).value == pytest.approx(8)


def test_accuracy_and_calibration_by_hand():
    s = metrics.summarize(hand_table(), bootstrap=0)
    assert s["accuracy"]["top1"]["value"] == pytest.approx(3 / 5)  # ranks 1, 2, 3, 1, 1
    assert s["accuracy"]["top5"]["value"] == pytest.approx(1.0)
    calibration = s["calibration"]
    # P(stay) .8 (stayed), .6 (moved), .3 (stayed): one token each in bins 8, 6 and 3.
    assert calibration["tokens"] == 3
    assert calibration["ece"]["value"] == pytest.approx((0.2 + 0.6 + 0.7) / 3)
    assert calibration["brier"]["value"] == pytest.approx((0.04 + 0.36 + 0.49) / 3)
    assert calibration["mean_p_stay"] == pytest.approx(1.7 / 3)
    assert calibration["stay_share"] == pytest.approx(2 / 3)
    bins = calibration["bins"]
    assert len(bins) == 10 and [b["tokens"] for b in bins] == [0, 0, 0, 1, 0, 0, 1, 0, 1, 0]
    assert bins[8]["predicted"] == pytest.approx(0.8) and bins[8]["observed"] == 1.0
    assert bins[6]["observed"] == 0.0 and bins[0]["predicted"] is None
    assert metrics.calibration_bins(np.array([0.0, 0.05, 0.1, 0.999, 1.0]), 10).tolist() == [
        0,
        0,
        1,
        9,
        9,
    ]


def test_weighted_metrics_weight_each_person():
    s = metrics.summarize(hand_table(), weighted=True, bootstrap=0)
    assert s["weighted"] is True
    # a: 1 x (1+2+3) ln2 over 3 tokens; b: 3 x (1+1) ln2 over 2 tokens -> 12 ln2 / 9
    assert s["perplexity"]["value"] == pytest.approx(2 ** (12 / 9))
    assert s["accuracy"]["top1"]["value"] == pytest.approx((1 + 3 * 2) / 9)
    equal = metrics.summarize(hand_table(weights=(2.0, 2.0)), weighted=True, bootstrap=0)
    assert equal["perplexity"]["value"] == pytest.approx(
        2 ** (8 / 5)
    )  # equal weights: as unweighted


def test_weighted_without_a_weight_column_counts_people_once(caplog):
    t = hand_table().drop_columns(["weight"])
    with caplog.at_level(logging.WARNING, logger="eval.metrics"):
        s = metrics.summarize(t, weighted=True, bootstrap=0)
    assert s["weighted"] is False and s["perplexity"]["value"] == pytest.approx(2 ** (8 / 5))
    assert "no weight" in caplog.text


def test_the_bootstrap_resamples_people_not_tokens():
    t = metrics.tokens(hand_table())
    sums = metrics.person_sums(t, [t.nll(), np.ones(len(t.nll()))])
    draws = metrics.resampled_sums(sums, 400, seed=3)
    ppl = np.exp(draws[:, 0] / draws[:, 1])
    # Two people drawn with replacement: aa, ab or bb; nothing in between.
    possible = np.array([2 ** (12 / 6), 2 ** (8 / 5), 2 ** (4 / 4)])
    nearest = np.abs(ppl[:, None] - possible[None]).min(1)
    assert nearest.max() < 1e-9
    counts = [np.isclose(ppl, p).sum() for p in possible]
    assert all(c > 50 for c in counts)  # 1/4, 1/2, 1/4 of 400
    assert counts[1] > counts[0] and counts[1] > counts[2]
    again = metrics.resampled_sums(sums, 400, seed=3)
    assert np.array_equal(draws, again)  # a fixed seed: the same draws
    assert not np.array_equal(draws, metrics.resampled_sums(sums, 400, seed=4))


def test_the_interval_brackets_the_value_and_shrinks_with_more_people():
    rng = np.random.default_rng(0)

    def people(n: int) -> pa.Table:
        ids = np.repeat([f"p{i:05d}" for i in range(n)], 4)
        logp = -rng.exponential(1.0, size=len(ids))
        return pa.table(
            {
                "person_id": ids,
                "position": np.tile(np.arange(4), n),
                "year": np.tile(2000 + np.arange(4), n),
                "prev_job": pa.array([None, "a", "a", "a"] * n, pa.string()),
                "target_job": ["a"] * len(ids),
                "logp": logp,
                "p_stay": np.tile([np.nan, 0.5, 0.5, 0.5], n),
                "rank": np.ones(len(ids), np.int32),
            }
        )

    small, large = metrics.perplexity(people(40)), metrics.perplexity(people(4000))
    for estimate in (small, large):
        assert estimate.low < estimate.value < estimate.high
    assert (large.high - large.low) < (small.high - small.low) / 4  # ~ 1/sqrt(100)
    assert large.low < math.e < large.high  # exponential NLL: mean 1


def test_a_model_against_itself_is_exactly_zero_and_a_better_one_is_not():
    t = hand_table()
    same = metrics.paired_difference(t, shuffled(t, 1), bootstrap=500)
    assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0)
    worse = hand_table(shift=LN2)  # a's first year is half as probable
    diff = metrics.paired_difference(worse, t, bootstrap=500)
    expected = 2 ** (9 / 5) - 2 ** (8 / 5)
    assert diff.value == pytest.approx(expected)
    assert 0 <= diff.low <= diff.value <= diff.high
    # Paired: the same people for both in each replicate, so never below 0 here.
    reversed_ = metrics.paired_difference(t, worse, bootstrap=500)
    assert reversed_.value == pytest.approx(-expected) and reversed_.high <= 0


def test_a_paired_difference_needs_the_same_tokens():
    t = hand_table()
    other = t.set_column(4, "target_job", pa.array(["x", "x", "y", "z", "q"]))
    with pytest.raises(ValueError, match="same tokens"):
        metrics.paired_difference(t, other)
    with pytest.raises(ValueError, match="same tokens"):
        metrics.paired_difference(t, t.slice(0, 4))


def test_the_oracle_column():
    with_oracle = hand_table(oracle=True)
    assert metrics.has_oracle(with_oracle) and not metrics.has_oracle(hand_table())
    s = metrics.summarize(with_oracle, bootstrap=0)
    assert s["oracle_perplexity"]["value"] == pytest.approx(2**0.5)
    assert "oracle_perplexity" not in metrics.summarize(hand_table(), bootstrap=0)
    partial = with_oracle.set_column(
        with_oracle.column_names.index("oracle_logp"),
        "oracle_logp",
        pa.array([-1.0, None, -1, -1, -1]),
    )
    assert not metrics.has_oracle(partial)


def test_comparison_table_sorted_by_perplexity_with_differences_and_the_oracle():
    best, worse = hand_table(oracle=True), hand_table(shift=3 * LN2, oracle=True)
    comparison = table.compare({"worse": worse, "best": best}, bootstrap=200)
    rows = comparison["rows"]
    assert [r["model"] for r in rows] == ["best", "worse", "oracle"] and comparison[
        "best"
    ] == "best"
    assert rows[0]["difference_to_best"] == {"value": 0.0, "low": 0.0, "high": 0.0}
    assert rows[1]["difference_to_best"]["value"] == pytest.approx(2 ** (11 / 5) - 2 ** (8 / 5))
    assert rows[2]["kind"] == "oracle" and rows[2]["perplexity"]["value"] == pytest.approx(2**0.5)
    assert rows[2]["difference_to_best"]["value"] == pytest.approx(2**0.5 - 2 ** (8 / 5))
    assert rows[2]["top1"] is None
    md = table.markdown({"toy": comparison}, "test")
    lines = [line for line in md.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| model | perplexity")
    assert lines[1].startswith("| **best** | 3.031 |") and lines[3].startswith("| oracle | 1.414 |")
    assert "2 people, 5 job-years" in md and "200 replicates" in md
    assert json.loads(table.to_json(comparison))["rows"][0]["model"] == "best"
    no_oracle = table.compare({"best": hand_table()}, bootstrap=0)
    assert [r["model"] for r in no_oracle["rows"]] == ["best"]
    with pytest.raises(ValueError, match="oracle"):
        table.compare({"oracle": hand_table()}, bootstrap=0)


def test_scores_files_round_trip_and_others_are_refused(tmp_path):
    url = str(tmp_path / "s.parquet")
    write_scores(hand_table(), url)
    back, original = read_scores(url), hand_table()
    assert back.schema.names == original.schema.names
    for name in original.column_names:  # NaN P(stay) at first years: equal as arrays
        np.testing.assert_array_equal(
            back.column(name).to_numpy(zero_copy_only=False),
            original.column(name).to_numpy(zero_copy_only=False),
        )
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(StructuralError, match="bad.parquet"):
        read_scores(str(tmp_path / "bad.parquet"))
    write_scores(hand_table().drop_columns(["rank"]), str(tmp_path / "norank.parquet"))
    with pytest.raises(StructuralError, match="no column rank"):
        read_scores(str(tmp_path / "norank.parquet"))
    with pytest.raises(StructuralError, match="no such scores file"):
        read_scores(str(tmp_path / "missing.parquet"))
