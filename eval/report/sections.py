"""The report's sections: blocks to render (`eval.report.render`) and the PNG files their figures
need (`eval.report.plots`), from a run read back by `eval.report.run` and nothing else.

    status        what the run holds and everything it lacks (yet)
    comparison    per survey, `eval.comparison_table`'s comparison (95% intervals, the oracle row)
    learning      training and validation loss of pretraining and of each survey's models
    perplexity    test perplexity per model with its interval, the oracle as a line
    calibration   reliability diagram of P(stay) per survey, with ECE and Brier score
    transitions   observed vs predicted next job after the most common jobs
    forecast      per survey, the forecast comparison and forecast vs realised rates
                  (`eval.report.downstream`, with the wage model and the rationales)
    data          each dataset's people, job-years, quarantine and splits; step times
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import eval.report.downstream as downstream
import eval.report.plots as plots
from eval import comparison_table as table
from eval.report.render import Block, Heading, Image, Missing, Table, Text
from eval.report.run import EVALUATION, Run, Survey

SECTIONS = (
    ("status", "Status"),
    ("comparison", "Model comparison"),
    ("learning", "Learning curves"),
    ("perplexity", "Test perplexity"),
    ("calibration", "P(stay) calibration"),
    ("transitions", "Transitions between the most common jobs"),
    ("forecast", "Forecasting"),
    ("wages", "Wage model and wage gap"),
    ("explain", "Rationales"),
    ("data", "Data and steps"),
)


@dataclass
class Document:
    title: str
    blocks: list[Block] = field(default_factory=list)
    plots: dict[str, bytes] = field(default_factory=dict)  # relative path -> PNG
    missing: list[str] = field(default_factory=list)

    def add(self, *blocks: Block) -> None:
        self.blocks.extend(blocks)

    def figure(self, name: str, png: bytes | None, alt: str, caption: str = "") -> None:
        if png is None:
            self.add(Missing(f"{alt}: nothing to draw"))
            return
        path = f"plots/{_slug(name)}.png"
        self.plots[path] = png
        self.add(Image(path, alt, caption))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "plot"


def _n(value: Any, digits: int = 4) -> str:
    if value is None or isinstance(value, bool):
        return "–" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–"
        if value.is_integer() and abs(value) >= 10**digits:  # a count held as a float
            return f"{int(value):,}"
        return f"{value:,.{digits}g}"
    return str(value)


def build(run: Run) -> Document:
    doc = Document(f"Run report: {run.url}")
    doc.missing = run.every_missing
    builders: dict[str, Callable[[Document, Run], None]] = {
        "status": _status,
        "comparison": _comparison,
        "learning": _learning,
        "perplexity": _perplexity,
        "calibration": _calibration,
        "transitions": _transitions,
        "forecast": downstream.forecast,
        "wages": downstream.wages,
        "explain": downstream.explain,
        "data": _data,
    }
    for anchor, title in SECTIONS:
        doc.add(Heading(title, 2, anchor))
        builders[anchor](doc, run)
    return doc


def _evaluated(survey: Survey) -> list[tuple[str, dict[str, Any]]]:
    """(dataset, comparison) of a survey's evaluation, [] without one."""
    return list(((survey.evaluation or {}).get("comparison") or {}).items())


def _no_evaluation(doc: Document, survey: Survey) -> None:
    doc.add(
        Missing(
            f"{survey.name}: no evaluation yet (surveys/{survey.name}/{EVALUATION}/metrics.json)"
        )
    )


# ----------------------------------------------------------------------------- sections
def _status(doc: Document, run: Run) -> None:
    doc.add(
        Text(
            "Built from the run's metrics.json files, manifests and evaluation alone: no "
            "model was run to make it."
        )
    )
    experiment = run.experiment or {}
    if experiment:
        rows = [
            [key, value if isinstance(value, str) else json.dumps(value)[:160]]
            for key, value in sorted(experiment.items())
        ]
        doc.add(Table(["experiment", "value"], rows, css="plain"))
    if not run.every_missing:
        doc.add(Text("Nothing is missing: every step has its output."))
    for note in run.every_missing:
        doc.add(Missing(note))


def _comparison(doc: Document, run: Run) -> None:
    for survey in run.surveys:
        doc.add(Heading(survey.name, 3))
        if not survey.evaluation:
            _no_evaluation(doc, survey)
            continue
        split = survey.evaluation.get("split", "test")
        for dataset, comparison in _evaluated(survey):
            rows = comparison["rows"]
            best = {i for i, row in enumerate(rows) if row["model"] == comparison["best"]}
            doc.add(
                Table(
                    table.COLUMNS,
                    [table.row_cells(r) for r in rows],
                    table.caption(dataset, split, comparison),
                    best,
                )
            )
    if not any(s.evaluation for s in run.surveys):
        return
    doc.add(
        Text(
            "Perplexity: exp of the mean negative log-likelihood over every job-year of the "
            "split (first years included). Δ: the model's perplexity minus the best model's "
            "(in bold), on the same people. The oracle row (simulated data) is the true "
            "process."
        )
    )


def _training_row(name: str, metrics: dict[str, Any]) -> list[str]:
    kind = metrics.get("kind") or (metrics.get("config") or {}).get("kind") or "career"
    return [
        name,
        kind,
        _n(metrics.get("updates")),
        _n(metrics.get("tokens_seen")),
        _n(metrics.get("best_step")),
        _n(metrics.get("best_valid_perplexity")),
        _n(metrics.get("wall_seconds")),
    ]


def _learning(doc: Document, run: Run) -> None:
    doc.add(
        Text(
            f"Training loss (mean of each logging interval) and validation loss (the log of "
            f"the validation perplexity), both in {plots.NATS}."
        )
    )
    rows = []
    doc.add(Heading("pretraining", 3))
    if run.pretrain is None:
        doc.add(Missing("pretraining: no metrics.json yet (pretrain/)"))
    else:
        rows.append(_training_row("pretraining", run.pretrain))
        _no_history(doc, "pretraining", run.pretrain)
        doc.figure(
            "learning-pretrain",
            plots.learning_curves({"pretraining": run.pretrain}, "pretraining"),
            "learning curves of pretraining",
        )
    for survey in run.surveys:
        doc.add(Heading(survey.name, 3))
        if not survey.models:
            doc.add(Missing(f"{survey.name}: no trained model yet (surveys/{survey.name}/)"))
            continue
        for model, metrics in survey.models.items():
            rows.append(_training_row(f"{survey.name}: {model}", metrics))
            _no_history(doc, f"{survey.name}: {model}", metrics)
        doc.figure(
            f"learning-{survey.name}",
            plots.learning_curves(survey.models, survey.name),
            f"learning curves on {survey.name}",
            "fine-tuned, from scratch and baselines; a dotted level is a closed-form fit",
        )
    if rows:
        doc.add(
            Table(
                [
                    "run",
                    "kind",
                    "updates",
                    "tokens seen",
                    "best step",
                    "best valid perplexity",
                    "wall seconds",
                ],
                rows,
                "training runs",
            )
        )


def _no_history(doc: Document, name: str, metrics: dict[str, Any]) -> None:
    closed_form = metrics.get("fit") == "closed form"
    if not closed_form and not metrics.get("train_history"):
        doc.add(
            Missing(
                f"{name}: no training-loss history in metrics.json (a run from before "
                "train_history was recorded): validation only"
            )
        )


def _perplexity(doc: Document, run: Run) -> None:
    for survey in run.surveys:
        doc.add(Heading(survey.name, 3))
        if not survey.evaluation:
            _no_evaluation(doc, survey)
            continue
        for dataset, comparison in _evaluated(survey):
            doc.figure(
                f"perplexity-{survey.name}-{dataset}",
                plots.perplexity_bars(comparison, f"{dataset}: test perplexity"),
                f"test perplexity on {dataset}",
                "95% person-bootstrap intervals; the best model in orange; dashed: the "
                "oracle (simulated data), its interval shaded",
            )


def _get(calibration: dict[str, Any], name: str) -> float | None:
    return (calibration.get(name) or {}).get("value")


def _interval(estimate: dict[str, Any] | None) -> str:
    if not estimate or estimate.get("low") is None:
        return "–"
    return f"[{_n(estimate['low'], 3)}, {_n(estimate['high'], 3)}]"


def _calibration(doc: Document, run: Run) -> None:
    for survey in run.surveys:
        doc.add(Heading(survey.name, 3))
        if not survey.evaluation:
            _no_evaluation(doc, survey)
            continue
        per_model = survey.evaluation.get("metrics") or {}
        for dataset, _ in _evaluated(survey):
            calibration = {
                m: d[dataset]["calibration"]
                for m, d in per_model.items()
                if dataset in d and "calibration" in d[dataset]
            }
            doc.figure(
                f"calibration-{survey.name}-{dataset}",
                plots.reliability(calibration, f"{dataset}: P(stay)"),
                f"reliability of P(stay) on {dataset}",
                "equal-width bins of the predicted P(stay) over the tokens with a "
                "previous job; marker area: the bin's tokens",
            )
            rows = [
                [
                    m,
                    _n(_get(c, "ece"), 3),
                    _interval(c.get("ece")),
                    _n(_get(c, "brier"), 3),
                    _n(c.get("mean_p_stay"), 3),
                    _n(c.get("stay_share"), 3),
                    _n(c.get("tokens")),
                ]
                for m, c in calibration.items()
            ]
            doc.add(
                Table(
                    ["model", "ECE", "95% CI", "Brier", "mean P(stay)", "share staying", "tokens"],
                    rows,
                    f"{dataset}: calibration of P(stay)",
                )
            )


def _transition_model(survey: Survey, dataset: str, models: dict[str, Any]) -> str:
    """The fine-tuned model's aggregate if there is one, else the best model's, else any."""
    best = ((survey.evaluation or {}).get("comparison") or {}).get(dataset, {}).get("best")
    for name in ("finetuned", best):
        if name in models:
            return name
    return sorted(models)[0]


def _transitions(doc: Document, run: Run) -> None:
    for survey in run.surveys:
        doc.add(Heading(survey.name, 3))
        if not survey.evaluation:
            _no_evaluation(doc, survey)
            continue
        if not survey.transitions:
            doc.add(
                Missing(
                    f"{survey.name}: no transition aggregate in its evaluation "
                    f"(surveys/{survey.name}/{EVALUATION}/transitions/)"
                )
            )
        for dataset, models in survey.transitions.items():
            model = _transition_model(survey, dataset, models)
            aggregate = models[model]
            k, tokens = len(aggregate.get("jobs") or []), sum(aggregate.get("row_tokens") or [])
            doc.figure(
                f"transitions-{survey.name}-{dataset}-{model}",
                plots.transition_heatmaps(aggregate, model, f"{dataset}: next job"),
                f"transitions on {dataset}: observed and {model}",
                f"rows: the {k} most common previous jobs of the {aggregate.get('split', 'test')} "
                f"split ({tokens:,} job-years after them); columns: the same jobs, then every "
                f"other job; left: the observed share of each next job, right: {model}'s mean "
                "predicted probability",
            )


def busy_seconds(steps: list[dict[str, Any]]) -> float:
    """Wall time the steps covered: the union of their [ended - seconds, ended] spans, so survey
    tasks that ran side by side count once and the pause before a resume not at all. A step
    recorded without its end time adds its own seconds."""
    spans, loose = [], 0.0
    for step in steps:
        seconds, ended = step.get("seconds") or 0.0, step.get("ended")
        if isinstance(ended, int | float):
            spans.append((ended - seconds, ended))
        else:
            loose += seconds
    covered, reach = 0.0, -math.inf
    for start, end in sorted(spans):
        if end > reach:
            covered += end - max(start, reach)
            reach = end
    return covered + loose


def _split_cell(split: dict[str, Any] | None) -> str:
    if not split:
        return "–"
    return f"{_n(split.get('people'))} / {_n(split.get('tokens'))}"


def _data(doc: Document, run: Run) -> None:
    rows = []
    for name, manifest in run.datasets.items():
        totals, splits = manifest.get("totals") or {}, manifest.get("splits") or {}
        oracle = (manifest.get("oracle_perplexity") or {}).get("test")
        rows.append(
            [
                name,
                _n(totals.get("people_written")),
                _n(totals.get("tokens")),
                _n(totals.get("people_quarantined")),
                _n(totals.get("rows_quarantined")),
                *(_split_cell(splits.get(s)) for s in ("train", "valid", "test")),
                _n(oracle),
            ]
        )
    if rows:
        doc.add(
            Table(
                [
                    "dataset",
                    "people",
                    "job-years",
                    "people quarantined",
                    "rows quarantined",
                    "train people / job-years",
                    "valid",
                    "test",
                    "oracle perplexity (test)",
                ],
                rows,
                "datasets (from each manifest.json)",
            )
        )
    else:
        doc.add(Missing("datasets: none sharded yet (datasets/)"))
    if run.steps:
        steps = [
            [str(s.get("step", "?")), _n(s.get("seconds"), 5), str(s.get("status", "–"))]
            for s in run.steps
            if isinstance(s, dict)
        ]
        recorded = [s for s in run.steps if isinstance(s, dict)]
        wall, added = busy_seconds(recorded), sum(s.get("seconds") or 0 for s in recorded)
        side = f"; {added:,.1f} s added up: steps ran side by side" if added > wall + 0.5 else ""
        doc.add(
            Table(["step", "seconds", "status"], steps, f"steps ({wall:,.1f} s of wall time{side})")
        )
    else:
        doc.add(Text("No step times recorded (steps.json)."))
