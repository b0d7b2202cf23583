"""The report's figures, as PNG bytes: matplotlib's object API on the Agg canvas (no pyplot, no
display, no global backend switch), from metrics dictionaries alone.

Each function returns None when it has nothing to draw.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from eval.figures import NATS
from eval.figures import png as _png


def _pairs(history: Any) -> list[tuple[float, float]]:
    """(update, value) pairs of a history, without missing or infinite values."""
    return [(float(s), float(v)) for s, v in history or [] if v is not None and math.isfinite(v)]


def _xy(pairs: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    return [s for s, _ in pairs], [v for _, v in pairs]


def learning_curves(runs: Mapping[str, Mapping[str, Any]], title: str) -> bytes | None:
    """Training loss (solid) and validation loss, log of the validation perplexity (dashed), per
    run; a closed-form fit (one validation point at update 0) is a dotted level."""
    figure = Figure(figsize=(7.5, 4.2), layout="constrained")
    ax = figure.add_subplot()
    drawn = False
    for i, (name, metrics) in enumerate(runs.items()):
        color = f"C{i % 10}"
        train = _pairs(metrics.get("train_history"))
        if train:
            ax.plot(*_xy(train), color=color, lw=1.3, alpha=0.85, label=f"{name}: train")
            drawn = True
        valid = [(s, math.log(p)) for s, p in _pairs(metrics.get("valid_history")) if p > 0]
        if not valid:
            continue
        if len(valid) == 1 and valid[0][0] == 0 and not train:
            ax.axhline(valid[0][1], color=color, ls=":", lw=1.5, label=f"{name}: valid (fitted)")
        else:
            ax.plot(*_xy(valid), color=color, ls="--", marker="o", ms=3, label=f"{name}: valid")
        drawn = True
    if not drawn:
        return None
    ax.set(xlabel="update", ylabel=NATS, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncols=2)
    return _png(figure)


def _value(estimate: Mapping[str, Any] | None, key: str = "value") -> float:
    value = (estimate or {}).get(key)
    return math.nan if value is None else float(value)


def perplexity_bars(comparison: Mapping[str, Any], title: str) -> bytes | None:
    """Test perplexity per model with its 95% interval; the oracle (simulated data) as a line."""
    rows = [r for r in comparison["rows"] if r["kind"] == "model"]
    if not rows:
        return None
    values = np.array([_value(r["perplexity"]) for r in rows])
    low = np.array([_value(r["perplexity"], "low") for r in rows])
    high = np.array([_value(r["perplexity"], "high") for r in rows])
    errors = np.nan_to_num(np.vstack([values - low, high - values]), nan=0.0)
    figure = Figure(figsize=(max(4.5, 1.1 * len(rows) + 2), 4.0), layout="constrained")
    ax = figure.add_subplot()
    x = np.arange(len(rows))
    colors = ["C1" if r["model"] == comparison["best"] else "C0" for r in rows]
    ax.bar(x, np.nan_to_num(values), yerr=errors, capsize=5, color=colors, alpha=0.85)
    for r in comparison["rows"]:
        if r["kind"] == "oracle":
            oracle = _value(r["perplexity"])
            ax.axhline(oracle, color="k", ls="--", lw=1.2, label=f"oracle {oracle:.4g}")
            if r["perplexity"].get("low") is not None:
                ax.axhspan(
                    _value(r["perplexity"], "low"),
                    _value(r["perplexity"], "high"),
                    color="k",
                    alpha=0.08,
                )
            ax.legend(fontsize=8, loc="upper left")
    ax.set_xticks(x, [r["model"] for r in rows], rotation=15)
    ax.set(ylabel="test perplexity", title=title)
    ax.grid(axis="y", alpha=0.3)
    return _png(figure)


def reliability(calibration: Mapping[str, Mapping[str, Any]], title: str) -> bytes | None:
    """Reliability diagram of P(stay): each model's bins, mean predicted against observed share
    of stays (marker area by tokens), with its ECE; the diagonal is perfect calibration."""
    figure = Figure(figsize=(5.2, 5.0), layout="constrained")
    ax = figure.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.5", ls=":", lw=1, label="perfectly calibrated")
    drawn = False
    for i, (name, cal) in enumerate(calibration.items()):
        bins = [
            b
            for b in cal.get("bins") or []
            if b.get("tokens") and b.get("predicted") is not None and b.get("observed") is not None
        ]
        if not bins:
            continue
        predicted = [b["predicted"] for b in bins]
        observed = [b["observed"] for b in bins]
        sizes = np.array([b["tokens"] for b in bins], dtype=float)
        ece = _value(cal.get("ece"))
        color = f"C{i % 10}"
        ax.plot(predicted, observed, color=color, lw=1, label=f"{name} (ECE {ece:.3f})")
        ax.scatter(predicted, observed, s=12 + 80 * sizes / sizes.max(), color=color, alpha=0.7)
        drawn = True
    if not drawn:
        return None
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="predicted P(stay)",
        ylabel="observed share staying",
        title=title,
        aspect="equal",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return _png(figure)


def transition_heatmaps(aggregate: Mapping[str, Any], model: str, title: str) -> bytes | None:
    """Observed next-job shares after each frequent job (rows normalised) beside the model's mean
    predicted probabilities, on one colour scale."""
    rows, columns = aggregate.get("jobs") or [], aggregate.get("columns") or []
    if not rows:
        return None
    observed = np.array(aggregate["observed"], dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        observed = np.nan_to_num(observed / observed.sum(1, keepdims=True))
    predicted = np.array(aggregate["predicted"], dtype=float)
    top = max(float(observed.max()), float(predicted.max()), 1e-9)
    size = 0.28 * len(columns) + 2.5
    figure = Figure(figsize=(2 * size + 1.2, size), layout="constrained")
    axes = figure.subplots(1, 2, sharey=True)
    for ax, matrix, name in zip(
        axes, (observed, predicted), ("observed (test split)", model), strict=True
    ):
        image = ax.imshow(matrix, vmin=0, vmax=top, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(columns)), columns, rotation=90, fontsize=7)
        ax.set_yticks(range(len(rows)), rows, fontsize=7)
        ax.set(title=name, xlabel="next job")
    axes[0].set_ylabel("previous job")
    figure.colorbar(image, ax=axes, shrink=0.8, label="P(next job | previous job)")
    figure.suptitle(title)
    return _png(figure)


def forecast_rates(models: Mapping[str, Mapping[str, Any]], title: str) -> bytes | None:
    """Per non-employment state, the realised rate by calendar year (black) and each model's
    forecast rate (path-averaged probability) with its band over paths (`eval.forecast.score`)."""
    states = sorted({s for m in models.values() for s in (m.get("states") or {})})
    if not states:
        return None
    figure = Figure(figsize=(4.0 * len(states), 3.6), layout="constrained")
    axes = figure.subplots(1, len(states), squeeze=False)[0]
    for ax, state in zip(axes, states, strict=True):
        realised_drawn = False
        for i, (name, summary) in enumerate(models.items()):
            by_year = ((summary.get("states") or {}).get(state) or {}).get("by_year") or {}
            years = sorted(by_year, key=int)
            if not years:
                continue
            x = [int(y) for y in years]
            if not realised_drawn:
                ax.plot(
                    x,
                    [by_year[y]["realised"] for y in years],
                    color="black",
                    marker="o",
                    ms=4,
                    lw=1.6,
                    label="realised",
                )
                realised_drawn = True
            color = f"C{i % 10}"
            ax.plot(
                x,
                [by_year[y]["forecast"] for y in years],
                color=color,
                marker=".",
                lw=1.3,
                label=name,
            )
            low = [by_year[y]["band"][0] for y in years]
            high = [by_year[y]["band"][1] for y in years]
            if all(v is not None for v in (*low, *high)):
                ax.fill_between(x, low, high, color=color, alpha=0.15, lw=0)
        ax.set(xlabel="year", ylabel="share of people", title=state.replace("_", " "))
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="best")
    figure.suptitle(title)
    return _png(figure)
