"""Scaling-law fits (`eval.scaling`): points drawn from a KNOWN law are fitted back.

The truth is L = 1.2 + 400 / N^0.35 + 2000 / D^0.4 on a 4 x 4 grid of N, D in 1e7 .. 1e10, with
lognormal multiplicative noise of sd 0.005 (seed 3). Tolerances: E within 0.05 nats, alpha and
beta within 0.05. Measured on noise seeds 0-7, the errors were at most 0.040 in E (0.004 on
seed 3) and 0.021 in the exponents, so the tolerances hold on every seed tried; and they can
fail: points from a law with alpha = 0.7 fit an alpha 0.35 away, far outside them (checked
below). The bootstrap's 95% intervals are checked as a coverage RATE over noise seeds 0-7, not
on one seed: with 100 replicates, E's covered the truth on 7 of 8 (seed 7 missed by 0.002 nats,
seed 0 covered by 0.001: a percentile interval from 16 points is a little narrow), alpha's and
beta's on 8 of 8 (with 200 replicates, 7 of 8 each). The test asks for at least 6 of 8 per
parameter (see the test for why). CPU only, no Ray: three full-grid fits (5400 starts each), one
smaller one, eight 235-start fits with their bootstraps (~12 s of the file's time), and
fit_study's own small bootstrap.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from eval.scaling import fit as scaling
from eval.scaling import plots
from eval.scaling.fit import (
    LawFit,
    bootstrap_law,
    compute_optimal,
    fit_law,
    fit_study,
    grid_starts,
    iso_flop,
    power_law,
)

#: full-grid fits (5400 starts) and bootstraps
pytestmark = pytest.mark.slow

TRUTH = {"E": 1.2, "A": 400.0, "B": 2000.0, "alpha": 0.35, "beta": 0.4}
SIZES = np.array([1e7, 1e8, 1e9, 1e10])
E_TOLERANCE, EXPONENT_TOLERANCE = 0.05, 0.05
PNG = b"\x89PNG"


def law_points(truth=TRUTH, sizes=SIZES, sd=0.005, seed=3):
    """(n, d, loss) on the grid sizes x sizes, the loss from `truth` times lognormal noise."""
    n, d = (v.ravel() for v in np.meshgrid(sizes, sizes))
    loss = truth["E"] + truth["A"] / n ** truth["alpha"] + truth["B"] / d ** truth["beta"]
    return n, d, loss * np.exp(np.random.default_rng(seed).normal(0.0, sd, n.size))


@pytest.fixture(scope="module")
def points():
    return law_points()


@pytest.fixture(scope="module")
def fitted(points):
    return fit_law(*points)


def test_fit_recovers_the_law(fitted):
    assert fitted.converged
    assert fitted.starts == 5400 and fitted.points == 16
    assert abs(fitted.E - TRUTH["E"]) < E_TOLERANCE
    assert abs(fitted.alpha - TRUTH["alpha"]) < EXPONENT_TOLERANCE
    assert abs(fitted.beta - TRUTH["beta"]) < EXPONENT_TOLERANCE
    n, d, loss = law_points(sd=0.0)
    assert np.allclose(fitted.predict(n, d), loss, rtol=0.02)
    again = LawFit.from_dict(fitted.to_dict())
    assert again == fitted


def test_fit_of_another_law_fails_the_tolerances():
    """The recovery test could fail: a law with alpha = 0.7 is fitted as such, not as 0.35."""
    other = {**TRUTH, "alpha": 0.7, "A": 4e4}
    fit = fit_law(*law_points(other), starts=grid_starts()[::5])
    assert abs(fit.alpha - 0.7) < EXPONENT_TOLERANCE
    assert abs(fit.alpha - TRUTH["alpha"]) > 5 * EXPONENT_TOLERANCE


def test_objective_is_the_sum_of_huber_terms(points, fitted):
    n, d, loss = points
    delta = fitted.delta
    r = np.log(fitted.predict(n, d)) - np.log(loss)
    huber = np.where(np.abs(r) <= delta, 0.5 * r**2, delta * (np.abs(r) - 0.5 * delta))
    assert fitted.objective == pytest.approx(huber.sum(), rel=1e-6)
    # Every point twice: the same optimum, twice the objective (a mean would not change).
    twice = fit_law(np.tile(n, 2), np.tile(d, 2), np.tile(loss, 2), starts=fitted.theta)
    assert twice.objective == pytest.approx(2 * fitted.objective, rel=1e-6)
    assert twice.alpha == pytest.approx(fitted.alpha, abs=1e-4)
    assert abs(twice.E - fitted.E) < 1e-4


def test_analytic_gradient_matches_finite_differences(points):
    n, d, loss = points
    data = (np.log(n), np.log(d), np.log(loss))
    rng = np.random.default_rng(1)
    theta = grid_starts()[rng.choice(5400, 6, replace=False)] + rng.normal(0, 0.1, (6, 5))
    theta[:, 3:] = np.abs(theta[:, 3:]) + 0.05
    _, gradient = scaling._objective(theta, *data, np.ones(n.size), 1e-3)
    numeric = np.zeros_like(gradient)
    for k in range(5):
        step = np.zeros(5)
        step[k] = 1e-6
        up, _ = scaling._objective(theta + step, *data, np.ones(n.size), 1e-3)
        down, _ = scaling._objective(theta - step, *data, np.ones(n.size), 1e-3)
        numeric[:, k] = (up - down) / 2e-6
    assert np.allclose(gradient, numeric, atol=1e-8, rtol=1e-5)


COVERAGE_SEEDS = range(8)
COVERAGE_REPLICATES = 100
COVERAGE_AT_LEAST = 6  # of the 8 seeds, for each of E, alpha and beta


def test_bootstrap_intervals_cover_the_truth_at_their_rate():
    """The 95% intervals of E, alpha and beta cover the truth on at least 6 of 8 noise seeds.

    Why 6 of 8: were each interval a true 95% one, its coverage count over 8 independent seeds
    would be Binomial(8, 0.95), >= 6 with probability 0.994 (0.96 for an interval as narrow as
    a 90% one), so the bound does not rest on lucky seeds; an interval covering half the time
    passes it with probability 0.14, a quarter of the time 0.004, and a zero-width one (low ==
    high == the estimate) never covers a continuous truth. Measured here: E 7 of 8, alpha and
    beta 8 of 8. Two broken intervals built from the same bootstraps fail it: the interval
    moved up by its own width covered 0 of 8 for each parameter (asserted below), one a quarter
    as wide about the same estimate 3, 5 and 2 of 8 (E, alpha, beta).

    Cheap enough for 8 seeds: each fit starts from every 23rd grid point (235 starts, every
    grid value of each coordinate among them; on seeds 0-7 the estimates agreed with the full
    5400-start grid's to 4 decimals, all converged), and each bootstrap has 100 replicates (the
    descent's cost is per iteration more than per replicate: 200 cost ~1.8 s a seed, 100
    ~1.2 s)."""
    covered = {name: 0 for name in ("E", "alpha", "beta")}
    shifted = dict(covered)
    for seed in COVERAGE_SEEDS:
        points = law_points(seed=seed)
        fit = fit_law(*points, starts=grid_starts()[::23])
        assert fit.converged, seed
        intervals = bootstrap_law(*points, replicates=COVERAGE_REPLICATES, seed=0, fit=fit)
        assert intervals["replicates"] + intervals["skipped"] == COVERAGE_REPLICATES
        assert intervals["replicates"] >= 0.95 * COVERAGE_REPLICATES
        for name in covered:
            estimate = intervals[name]
            assert estimate["value"] == getattr(fit, name), (seed, name)
            low, high = estimate["low"], estimate["high"]
            assert low < high, (seed, name)
            covered[name] += low <= TRUTH[name] <= high
            shifted[name] += high <= TRUTH[name] <= 2 * high - low
    for name, count in covered.items():
        assert count >= COVERAGE_AT_LEAST, (name, covered)
        assert shifted[name] < COVERAGE_AT_LEAST, (name, shifted)


def test_fit_law_refuses_an_undetermined_study():
    n, d, loss = law_points()
    with pytest.raises(ValueError, match="at least 5 points"):
        fit_law(n[:4], d[:4], loss[:4])
    same_d = d == d[0]
    with pytest.raises(ValueError, match="2 distinct D"):
        fit_law(n[same_d], d[same_d], loss[same_d])
    with pytest.raises(ValueError, match="finite and positive"):
        fit_law(n, d, -loss)


def test_power_law_recovers_an_exact_exponent():
    x = np.geomspace(1e6, 1e9, 5)
    loss = (3e4 / x) ** 0.076
    law = power_law(x, loss)
    assert law["exponent"] == pytest.approx(0.076, rel=1e-9)
    assert law["x_c"] == pytest.approx(3e4, rel=1e-6)
    assert law["r2"] == pytest.approx(1.0)
    assert law["points"] == 5 and law["note"] is None
    interval = law["exponent_interval"]
    assert interval["low"] == pytest.approx(0.076) and interval["high"] == pytest.approx(0.076)
    few = power_law(x[:3], loss[:3])
    assert few["exponent_interval"] is None and "needs at least 4" in few["note"]
    with pytest.raises(ValueError, match="2 distinct x"):
        power_law([1e6, 1e6], [2.0, 2.1])


def test_compute_optimal_is_the_iso_flop_minimum(fitted):
    flops = np.array([1e17, 1e19, 1e21])
    optimum = compute_optimal(fitted, flops)
    n_opt, d_opt = np.array(optimum["n_opt"]), np.array(optimum["d_opt"])
    assert np.allclose(6 * n_opt * d_opt, flops, rtol=1e-12)
    s = fitted.alpha + fitted.beta
    assert optimum["n_exponent"] == pytest.approx(fitted.beta / s)
    for c, n_best, loss_best in zip(flops, n_opt, optimum["loss"], strict=True):
        grid = np.geomspace(n_best / 100, n_best * 100, 4001)  # ratio 1.0023 between neighbours
        losses = iso_flop(fitted, [c], grid)[0]
        assert losses.min() >= loss_best - 1e-12
        assert grid[np.argmin(losses)] == pytest.approx(n_best, rel=0.003)
        assert fitted.predict(n_best, c / (6 * n_best)) == pytest.approx(loss_best)
    flat = LawFit(**{**fitted.to_dict(), "alpha": 0.0})
    with pytest.raises(ValueError, match="no compute-optimal"):
        compute_optimal(flat, flops)


def study_points(sizes=(1e7, 1e8, 1e9), people=(5e5, 5e6, 5e7), survey=True) -> pd.DataFrame:
    """A study table as the scaling sweep writes it, losses from the known law (no noise)."""
    rows = []
    for i, n in enumerate(sizes):
        for p in people:
            d = 20 * p  # twenty job-years each
            loss = TRUTH["E"] + TRUTH["A"] / n ** TRUTH["alpha"] + TRUTH["B"] / d ** TRUTH["beta"]
            rows.append(
                {
                    "name": f"model{i}",
                    "preset": f"preset{i}",
                    "people": int(p),
                    "parameters": 1.1 * n,
                    "non_embedding_parameters": n,
                    "unique_tokens": d,
                    "tokens_seen": 2 * d,
                    "flops": 6 * n * 2 * d,
                    "best_valid_loss": loss,
                    "survey_test_perplexity": math.exp(loss) if survey else None,
                }
            )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def study():
    return fit_study(study_points(), floor=1.15, replicates=20)


def test_fit_study_keys_and_notes(study):
    assert set(study) == {
        "law",
        "power_law_n",
        "power_law_d",
        "compute_optimal",
        "floor",
        "E_minus_floor",
        "floor_in_E_interval",
        "points",
        "columns",
        "notes",
    }
    assert study["points"] == 9
    assert study["law"]["E"] == pytest.approx(TRUTH["E"], abs=E_TOLERANCE)
    assert set(study["law"]["intervals"]) == {
        "E",
        "A",
        "B",
        "alpha",
        "beta",
        "replicates",
        "skipped",
    }
    assert study["floor"] == 1.15
    assert study["E_minus_floor"] == pytest.approx(study["law"]["E"] - 1.15)
    assert isinstance(study["floor_in_E_interval"], bool)
    assert "5 parameters from 9 points: the fit is barely determined" in study["notes"]
    assert study["power_law_n"]["fixed"]["people"] == 50_000_000
    assert study["power_law_n"]["points"] == 3
    assert study["power_law_d"]["fixed"]["non_embedding_parameters"] == 1e9
    budgets = study["compute_optimal"]["flops"]
    assert budgets[0] == pytest.approx(6 * 1e7 * 2 * 1e7)
    assert budgets[-1] == pytest.approx(100 * 6 * 1e9 * 2 * 1e9)


def test_fit_study_with_too_few_points_has_no_law():
    few = study_points(sizes=(1e7, 1e8), people=(5e5, 5e6))
    study = fit_study(few, floor=1.15, replicates=5)
    assert study["law"] is None and study["compute_optimal"] is None
    assert any("no law fitted" in note and "at least 5 points" in note for note in study["notes"])
    assert study["power_law_n"]["points"] == 2 and study["points"] == 4
    empty = fit_study(few.iloc[0:0])
    assert empty["law"] is None and empty["points"] == 0
    assert any(note.startswith("no points") for note in empty["notes"])


def test_write_plots_draws_every_figure(study):
    written = plots.write_plots(study_points(), study, 1.15)
    assert set(written) == {
        "loss_vs_parameters.png",
        "loss_vs_tokens.png",
        "iso_loss.png",
        "iso_flop.png",
        "survey_vs_corpus.png",
    }
    for name, png in written.items():
        assert png.startswith(PNG) and len(png) > 1000, name


def test_survey_plot_needs_survey_perplexities(study):
    points = study_points(survey=False)
    assert plots.survey_vs_corpus(points) is None
    assert plots.survey_vs_corpus(points.drop(columns="survey_test_perplexity")) is None
    written = plots.write_plots(points, study, None)
    assert "survey_vs_corpus.png" not in written and "loss_vs_parameters.png" in written
    no_law = {**study, "law": None}
    assert plots.iso_loss(points, no_law) is None and plots.iso_flop(points, no_law) is None
    assert plots.loss_vs_parameters(points, no_law, None).startswith(PNG)
