"""A scaling study's report: STUDY/report.html and its Markdown twin, with STUDY/plots/*.png,
built with the run report's blocks and renderers (`eval.report.render`) from the points table
and the fit alone."""

from __future__ import annotations

import math
from typing import Any

from data_shards import storage
from eval.report import render
from eval.report.render import Heading, Image, Missing, Table, Text

CAPTIONS = {
    "loss_vs_parameters.png": "Best validation loss against non-embedding parameters, one line "
    "per corpus size; dashed: the fitted law at that corpus's tokens; dotted: the oracle floor.",
    "loss_vs_tokens.png": "Best validation loss against unique training job-years, one line per "
    "model; dashed: the fitted law.",
    "iso_loss.png": "Iso-loss contours of the fitted L(N, D), with the points.",
    "iso_flop.png": "The fitted loss along iso-FLOP curves (C = 6ND), the optimum of each marked.",
    "survey_vs_corpus.png": "Survey test perplexity after fine-tuning against the pretraining "
    "corpus size, one line per model.",
}


def _n(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _count(value: Any) -> str:
    """A rate or a duration, to the unit."""
    if value is None or not math.isfinite(float(value)):
        return "–"
    return f"{float(value):,.0f}"


def _interval(estimate: dict | None) -> str:
    if not estimate or estimate.get("low") is None:
        return "–"
    return f"[{estimate['low']:.4g}, {estimate['high']:.4g}]"


def blocks(
    points, fit: dict[str, Any], floor: float | None, study: dict[str, Any], plots: list[str]
) -> list:
    """The report's blocks: the grid, the points, the fits and the figures."""
    out: list = [
        Text(
            f"{len(study['models'])} models x {len(study['people'])} corpus sizes"
            + (f" x {len(study['tokens'])} token budgets" if study.get("tokens") else "")
            + f"; {len(points)} points finished. Loss: best validation loss in nats per job-year "
            "(log perplexity). N: non-embedding parameters. D: unique job-years trained on up to the "
            "best validation (the corpus subset's size once past one epoch)."
        )
    ]
    out.append(Heading("Points"))
    columns = [
        "point",
        "N",
        "people",
        "D",
        "epochs",
        "valid nats",
        "best step / updates",
        "FLOPs",
        "tokens/s",
        "wall s",
    ]
    if points["survey_test_perplexity"].notna().any():
        columns.append("survey test ppl")
    rows = []
    for _, p in points.iterrows():
        row = [
            p["name"],
            _n(int(p["non_embedding_parameters"])),
            _n(int(p["people"])),
            _n(float(p["unique_tokens"]), 3),
            _n(p["epochs"], 3),
            f"{p['best_valid_loss']:.4f}",
            f"{int(p['best_step'])} / {int(p['updates'])}",
            f"{p['flops']:.2e}",
            _count(p["tokens_per_second"]),
            _count(p["wall_seconds"]),
        ]
        if "survey test ppl" in columns:
            rows.append([*row, _n(p["survey_test_perplexity"], 4)])
        else:
            rows.append(row)
    out.append(Table(columns, rows))
    out.append(Heading("Fitted laws"))
    law = fit.get("law")
    if law:
        intervals = law.get("intervals") or {}
        out.append(
            Text(
                f"L(N, D) = E + A/N^α + B/D^β, fitted as Hoffmann et al. (2022), approach 3 (Huber "
                f"loss on log-loss, δ = 1e-3, summed over points; L-BFGS-B from a grid of starts); "
                f"95% intervals from a bootstrap over points ({intervals.get('replicates', '–')} "
                f"replicates). RMS log residual {law.get('log_residual_rms', float('nan')):.4f}."
            )
        )
        out.append(
            Table(
                ["parameter", "estimate", "95% interval"],
                [
                    [name, _n(law[key]), _interval(intervals.get(key))]
                    for name, key in (
                        ("E", "E"),
                        ("A", "A"),
                        ("B", "B"),
                        ("α", "alpha"),
                        ("β", "beta"),
                    )
                ],
            )
        )
    else:
        out.append(Missing("no L(N, D) fit (the notes below say why)"))
    if floor is not None:
        verdict = ""
        if law:
            inside = fit.get("floor_in_E_interval")
            verdict = f" The fitted E is {law['E']:.4f}, {fit['E_minus_floor']:+.4f} from it" + (
                ""
                if inside is None
                else "; the floor lies inside E's interval."
                if inside
                else "; the floor lies outside E's interval."
            )
        out.append(
            Text(
                f"Oracle floor: {floor:.4f} nats per job-year, the simulator's exact per-token "
                f"entropy on the validation split (no model can do better on average).{verdict}"
            )
        )
    for key, title in (
        ("power_law_n", "in N (largest corpus)"),
        ("power_law_d", "in D (largest model)"),
    ):
        power = fit.get(key)
        if power:
            out.append(
                Text(
                    f"Kaplan et al. (2020) power law {title}: L = (x_c / x)^{power['exponent']:.4f}, "
                    f"x_c = {_n(power['x_c'])}, R² {_n(power['r2'], 3)} over {power['points']} points"
                    + (
                        f", exponent 95% interval {_interval(power.get('exponent_interval'))}."
                        if power.get("exponent_interval")
                        else "."
                    )
                )
            )
    optimal = fit.get("compute_optimal")
    if optimal:
        picks = list(range(0, len(optimal["flops"]), max(1, len(optimal["flops"]) // 6)))
        out.append(
            Table(
                ["compute (FLOPs)", "N optimal", "D optimal", "loss"],
                [
                    [
                        f"{optimal['flops'][i]:.2e}",
                        _n(optimal["n_opt"][i], 3),
                        _n(optimal["d_opt"][i], 3),
                        _n(optimal["loss"][i], 4),
                    ]
                    for i in picks
                ],
                caption="Compute-optimal allocations (C = 6ND)",
            )
        )
    for note in fit.get("notes") or []:
        out.append(Text(f"Note: {note}"))
    out.append(Heading("Plots"))
    for name in plots:
        out.append(
            Image(
                f"plots/{name}", name.removesuffix(".png").replace("_", " "), CAPTIONS.get(name, "")
            )
        )
    if not plots:
        out.append(Missing("no plots: no finished points"))
    return out


def write_report(
    url: str,
    points,
    fit: dict[str, Any],
    floor: float | None,
    study: dict[str, Any],
    storage_options=None,
) -> str:
    """Write STUDY/plots/*.png, STUDY/report.md, then STUDY/report.html; the page's URL."""
    from eval.scaling.plots import write_plots

    plots = write_plots(points, fit, floor) if len(points) else {}
    for name, png in sorted(plots.items()):
        storage.write_bytes_atomic(storage.join(url, "plots", name), png, storage_options)
    title = "Scaling study"
    order = list(CAPTIONS)
    shown = sorted(plots, key=lambda n: order.index(n) if n in order else len(order))
    content = blocks(points, fit, floor, study, shown)
    storage.write_bytes_atomic(
        storage.join(url, "report.md"), render.to_markdown(title, content).encode(), storage_options
    )
    page = storage.join(url, "report.html")
    storage.write_bytes_atomic(page, render.to_html(title, content).encode(), storage_options)
    return page
