"""The scaling study's figures, as PNG bytes: matplotlib's object API on the Agg canvas (no
pyplot, no display, no global backend switch), as in `eval.report.plots`.

Each takes the study's points (one row per trained model: name, preset, people, parameters,
non_embedding_parameters, unique_tokens, tokens_seen, flops, best_valid_loss,
survey_test_perplexity) and, where it draws the fitted law, `fit_study`'s dict. Each returns None
when it has nothing to draw.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from eval.figures import NATS
from eval.figures import png as _png
from eval.scaling.fit import LawFit, compute_optimal
from eval.scaling.fit import iso_flop as iso_flop_losses

N_LABEL = "non-embedding parameters"
D_LABEL = "unique training job-years"
LOSS_LABEL = f"best validation loss ({NATS})"
SURVEY = "survey_test_perplexity"


def _columns(fit: Mapping[str, Any] | None) -> tuple[str, str, str]:
    columns = (fit or {}).get("columns") or {}
    return (
        columns.get("n", "non_embedding_parameters"),
        columns.get("d", "unique_tokens"),
        columns.get("loss", "best_valid_loss"),
    )


def _law(fit: Mapping[str, Any] | None) -> LawFit | None:
    law = (fit or {}).get("law")
    return None if law is None else LawFit.from_dict(law)


def _rows(points: pd.DataFrame | None, columns: list[str]) -> pd.DataFrame:
    """The rows whose `columns` are all finite and positive, those columns as floats."""
    if points is None or not len(points) or any(c not in points.columns for c in columns):
        return pd.DataFrame(columns=columns)
    rows = points.copy()
    for column in columns:
        rows[column] = pd.to_numeric(rows[column], errors="coerce")
    keep = (np.isfinite(rows[columns]) & (rows[columns] > 0)).all(axis=1)
    return rows.loc[keep]


def _positive(rows: pd.DataFrame, column: str) -> np.ndarray:
    """A column's finite positive values (empty when the column is missing)."""
    if column not in rows.columns:
        return np.array([])
    values = pd.to_numeric(rows[column], errors="coerce").to_numpy(dtype=float)
    return values[np.isfinite(values) & (values > 0)]


def _median(rows: pd.DataFrame, column: str) -> float:
    values = _positive(rows, column)
    return float(np.median(values)) if values.size else math.inf


def _span(values: Any, pad: float = 1.5, count: int = 100) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    return np.geomspace(values.min() / pad, values.max() * pad, count)


def _floor(ax: Any, floor: float | None) -> None:
    if floor is not None and math.isfinite(floor):
        ax.axhline(floor, color="k", ls=":", lw=1.3, label=f"oracle floor {floor:.4g}")


def _groups(rows: pd.DataFrame, column: str) -> list[tuple[Any, pd.DataFrame]]:
    if column not in rows.columns:
        return [(None, rows)]
    return sorted(rows.groupby(column, dropna=False), key=lambda item: str(item[0]))


def _people(value: Any) -> str:
    return f"{int(value):,} people" if isinstance(value, int | float | np.number) else str(value)


def loss_vs_parameters(
    points: pd.DataFrame, fit: Mapping[str, Any] | None, floor: float | None
) -> bytes | None:
    """Validation loss against non-embedding parameters, one line per corpus size (people), the
    fitted law at that corpus's unique tokens dashed in the same colour; the oracle floor dotted."""
    n_col, d_col, loss_col = _columns(fit)
    rows = _rows(points, [n_col, loss_col])
    if not len(rows):
        return None
    law = _law(fit)
    figure = Figure(figsize=(7.0, 4.4), layout="constrained")
    ax = figure.add_subplot()
    groups = _groups(rows, "people")
    if "people" in rows.columns:
        groups = sorted(groups, key=lambda item: float(pd.to_numeric(item[0], errors="coerce")))
    for i, (people, group) in enumerate(groups):
        group = group.sort_values(n_col)
        color = f"C{i % 10}"
        label = "points" if people is None else _people(people)
        ax.plot(group[n_col], group[loss_col], color=color, marker="o", ms=4, lw=1.3, label=label)
        d = _positive(group, d_col)
        if law is not None and d.size:
            grid = _span(group[n_col])
            ax.plot(grid, law.predict(grid, float(np.median(d))), color=color, ls="--", lw=1)
    _floor(ax, floor)
    ax.set_xscale("log")
    ax.set(xlabel=N_LABEL, ylabel=LOSS_LABEL, title="loss against model size (dashed: fitted law)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, ncols=2)
    return _png(figure)


def loss_vs_tokens(
    points: pd.DataFrame, fit: Mapping[str, Any] | None, floor: float | None
) -> bytes | None:
    """Validation loss against unique training tokens, one line per model (name), the fitted
    law at that model's non-embedding parameters dashed in the same colour."""
    n_col, d_col, loss_col = _columns(fit)
    rows = _rows(points, [d_col, loss_col])
    if not len(rows):
        return None
    law = _law(fit)
    figure = Figure(figsize=(7.0, 4.4), layout="constrained")
    ax = figure.add_subplot()
    groups = _groups(rows, "name")
    if n_col in rows.columns:  # smallest model first
        groups = sorted(groups, key=lambda item: _median(item[1], n_col))
    for i, (name, group) in enumerate(groups):
        group = group.sort_values(d_col)
        color = f"C{i % 10}"
        ax.plot(
            group[d_col],
            group[loss_col],
            color=color,
            marker="o",
            ms=4,
            lw=1.3,
            label="points" if name is None else str(name),
        )
        n = _positive(group, n_col)
        if law is not None and n.size:
            grid = _span(group[d_col])
            ax.plot(grid, law.predict(float(np.median(n)), grid), color=color, ls="--", lw=1)
    _floor(ax, floor)
    ax.set_xscale("log")
    ax.set(xlabel=D_LABEL, ylabel=LOSS_LABEL, title="loss against corpus size (dashed: fitted law)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, ncols=2)
    return _png(figure)


def iso_loss(points: pd.DataFrame, fit: Mapping[str, Any] | None) -> bytes | None:
    """Contours of the fitted L(N, D) over parameters and unique tokens (log-log), with the
    points at their (N, D), each labelled by its measured loss."""
    law = _law(fit)
    n_col, d_col, loss_col = _columns(fit)
    rows = _rows(points, [n_col, d_col, loss_col])
    if law is None or not len(rows):
        return None
    n_grid, d_grid = _span(rows[n_col], 3.0, 120), _span(rows[d_col], 3.0, 120)
    losses = law.predict(n_grid[None, :], d_grid[:, None])  # (D, N)
    figure = Figure(figsize=(6.6, 5.0), layout="constrained")
    ax = figure.add_subplot()
    contours = ax.contour(n_grid, d_grid, losses, levels=12, cmap="viridis", linewidths=1)
    ax.clabel(contours, fontsize=7, fmt="%.3g")
    ax.scatter(rows[n_col], rows[d_col], color="k", s=18, zorder=3, label="trained models")
    for _, row in rows.iterrows():
        ax.annotate(
            f"{row[loss_col]:.3f}",
            (row[n_col], row[d_col]),
            fontsize=7,
            xytext=(4, 4),
            textcoords="offset points",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set(
        xlabel=N_LABEL, ylabel=D_LABEL, title=f"fitted loss ({NATS}): contours; measured: labels"
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left")
    return _png(figure)


def iso_flop(points: pd.DataFrame, fit: Mapping[str, Any] | None) -> bytes | None:
    """The fitted loss along N at a few fixed compute budgets C = 6 N D (D = C / (6 N)), over
    the points' FLOPs range, each curve's closed-form optimum (`compute_optimal`) starred."""
    law = _law(fit)
    rows = _rows(points, ["flops"])
    if law is None or not len(rows):
        return None
    flops = rows["flops"].to_numpy(dtype=float)
    low, high = flops.min(), flops.max()
    budgets = np.geomspace(low, high, 4) if high > low else np.array([low])
    try:
        optimum = compute_optimal(law, budgets)
    except ValueError:
        return None
    figure = Figure(figsize=(7.0, 4.4), layout="constrained")
    ax = figure.add_subplot()
    for i, (c, n_opt, loss_opt) in enumerate(
        zip(budgets, optimum["n_opt"], optimum["loss"], strict=True)
    ):
        color = f"C{i % 10}"
        grid = np.geomspace(n_opt / 30.0, n_opt * 30.0, 200)
        ax.plot(
            grid,
            iso_flop_losses(law, [c], grid)[0],
            color=color,
            lw=1.3,
            label=f"C = {c:.3g} FLOPs",
        )
        ax.plot([n_opt], [loss_opt], color=color, marker="*", ms=12, mec="k", mew=0.6)
    ax.set_xscale("log")
    ax.set(
        xlabel=N_LABEL,
        ylabel=f"fitted loss ({NATS})",
        title="iso-FLOP profiles of the fitted law (star: compute-optimal N)",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _png(figure)


def survey_vs_corpus(points: pd.DataFrame) -> bytes | None:
    """Survey test perplexity against the pretraining corpus's people (log-x), one line per
    model; None when the study has no survey perplexities."""
    rows = _rows(points, ["people", SURVEY])
    if not len(rows):
        return None
    figure = Figure(figsize=(7.0, 4.4), layout="constrained")
    ax = figure.add_subplot()
    for i, (name, group) in enumerate(_groups(rows, "name")):
        group = group.sort_values("people")
        ax.plot(
            group["people"],
            group[SURVEY],
            color=f"C{i % 10}",
            marker="o",
            ms=4,
            lw=1.3,
            label="points" if name is None else str(name),
        )
    ax.set_xscale("log")
    ax.set(
        xlabel="people in the pretraining corpus",
        ylabel="survey test perplexity",
        title="survey test perplexity against pretraining corpus size",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, ncols=2)
    return _png(figure)


def write_plots(
    points: pd.DataFrame, fit: Mapping[str, Any] | None, floor: float | None
) -> dict[str, bytes]:
    """File name -> PNG bytes, for each figure that has something to draw."""
    figures = {
        "loss_vs_parameters.png": lambda: loss_vs_parameters(points, fit, floor),
        "loss_vs_tokens.png": lambda: loss_vs_tokens(points, fit, floor),
        "iso_loss.png": lambda: iso_loss(points, fit),
        "iso_flop.png": lambda: iso_flop(points, fit),
        "survey_vs_corpus.png": lambda: survey_vs_corpus(points),
    }
    drawn = {name: draw() for name, draw in figures.items()}
    return {name: png for name, png in drawn.items() if png is not None}
