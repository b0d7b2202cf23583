"""The report's sections on the downstream uses of each survey's models (issue 12): forecasting,
the wage model and the wage gap, rationales. Each is built from the step's JSON alone
(`eval.report.run.Survey.downstream`); a survey without the step gets a note."""

from __future__ import annotations

from typing import Any

import eval.report.plots as plots
from eval.report.render import Heading, Missing, Table, Text
from eval.report.run import Run

STATES = ("unemployed", "not_in_labor_force", "education")


def _x(value: Any, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _interval(estimate: dict | None, digits: int = 3) -> str:
    if not estimate or estimate.get("value") is None:
        return "–"
    text = _x(estimate["value"], digits)
    if estimate.get("low") is not None and estimate.get("high") is not None:
        text += f" [{_x(estimate['low'], digits)}, {_x(estimate['high'], digits)}]"
    return text


def forecast(doc: Any, run: Run) -> None:  # doc: sections.Document (which imports this)
    """Per survey: the forecast comparison table and the forecast vs realised rates."""
    shown = False
    for survey in run.surveys:
        result = survey.downstream.get("forecast")
        doc.add(Heading(survey.name, 3))
        if not result:
            doc.add(Missing(f"{survey.name}: no forecast (surveys/{survey.name}/forecast/)"))
            continue
        shown = True
        models, reference = result["models"], result["reference"]
        first = models[reference]
        states = [s for s in STATES if s in first["states"]]
        rows = []
        for name, summary in models.items():
            rows.append(
                [
                    name,
                    summary.get("kind", ""),
                    _interval(summary["perplexity"]),
                    _interval(result["difference_to_reference"].get(name)),
                    *(
                        f"{_x(summary['states'][s]['auc'])} / {_x(summary['states'][s]['nll'])}"
                        for s in states
                    ),
                ]
            )
        excluded = ", ".join(f"{n:,} {why}" for why, n in first["excluded"].items() if n)
        caption = (
            f"Forecast from {first['cutoff']} to {first['last_year']}: {first['scored_people']:,} "
            f"of {first['test_people']:,} test people ({first['future_years']:,} future years), "
            f"{first['paths']:,} paths each, education {first['future_education']}"
            + (f"; not scored: {excluded}" if excluded else "")
        )
        doc.add(
            Table(
                [
                    "model",
                    "kind",
                    "forecast perplexity [95%]",
                    f"Δ vs {reference} [95%]",
                    *(f"{s}: AUC / binary NLL" for s in states),
                ],
                rows,
                caption,
            )
        )
        png = plots.forecast_rates(models, f"{survey.name}: forecast after {first['cutoff']}")
        doc.figure(
            f"forecast_{survey.name}",
            png,
            f"{survey.name}: forecast vs realised rates",
            "Realised share of the scored people in each state (black) and each model's "
            "forecast (the path-averaged probability), with the band that 95% of the "
            "sampled paths fall in.",
        )
    if shown:
        doc.add(
            Text(
                "Models trained only on years up to the cutoff (train and valid people cut "
                "there) forecast each test person's years after it by Monte Carlo: each "
                "path draws a job per future wave and feeds it back. Forecast perplexity: "
                "exp of the mean negative log of the path-averaged probability of the "
                "realised job. Δ: paired over people (person bootstrap)."
            )
        )


def explain(doc: Any, run: Run) -> None:
    """Per survey: the rationales of a few test people's last-year job changes."""
    shown = False
    for survey in run.surveys:
        result = survey.downstream.get("explain")
        doc.add(Heading(survey.name, 3))
        if not result:
            doc.add(Missing(f"{survey.name}: no rationales (surveys/{survey.name}/explain/)"))
            continue
        shown = True
        rows = []
        for person in result.get("people") or []:
            history = {row["year"]: row["job"] for row in person.get("rows") or []}
            kept = ", ".join(f"{y}: {history.get(y, '?')}" for y in person.get("kept_years") or [])
            last = next((r for r in person.get("rows") or [] if r.get("last")), None)
            rows.append(
                [
                    person.get("id") or "",
                    str(person.get("year")),
                    person.get("target") or "",
                    f"{last['year']}: {last['job']}" if last else "–",
                    kept or "(none)",
                    _x(person.get("p_target_kept")),
                    _x(person.get("p_target_full")),
                    "yes" if person.get("is_top") else f"no ({person.get('top_kept')})",
                ]
            )
        if not rows:
            doc.add(Missing(f"{survey.name}: no test person changed jobs in their last year"))
            continue
        doc.add(
            Table(
                [
                    "person",
                    "year",
                    "job moved to",
                    "last year (always seen)",
                    "rationale: the years kept",
                    "P with them",
                    "P with all",
                    "top job?",
                ],
                rows,
                f"CAREER fine-tuned with word dropout "
                f"{result.get('word_dropout')}: the fewest earlier years that, with last "
                "year, make the realised job the model's top choice (greedy)",
            )
        )
    if shown:
        doc.add(
            Text(
                "Greedy rationalization (Vafa et al. 2021): starting from last year alone, "
                "the earlier year that raises the job's probability most is added until the "
                "job is the model's top prediction. A model fine-tuned with word dropout "
                "predicts from such subsets as it was trained to."
            )
        )


def wages(doc: Any, run: Run) -> None:
    """Per survey: the wage table (Mincer vs Mincer + CAREER's representation) and the gap."""
    shown = False
    for survey in run.surveys:
        result = survey.downstream.get("wages")
        doc.add(Heading(survey.name, 3))
        if not result:
            doc.add(Missing(f"{survey.name}: no wage model (surveys/{survey.name}/wages/)"))
            continue
        if "table" not in result:
            doc.add(Missing(f"{survey.name}: no wage model: {result.get('skipped', '?')}"))
            continue
        shown = True
        table = result["table"]
        rows = []
        for name, entry in table["models"].items():
            test = entry.get("test") or {}
            rows.append(
                [
                    entry.get("label", name),
                    _x((entry.get("valid") or {}).get("r2")),
                    _interval(test.get("r2")),
                    _interval(test.get("mse")),
                ]
            )
        difference = table.get("difference") or {}
        rows.append(
            [
                "difference (history − Mincer)",
                "",
                _interval(difference.get("r2")),
                _interval(difference.get("mse")),
            ]
        )
        test_rows = (table.get("person_years") or {}).get("test") or {}
        doc.add(
            Table(
                ["wage model", "valid R²", "test R² [95%]", "test MSE [95%]"],
                rows,
                f"log wages of {_count(test_rows.get('person_years_with_wage'))} test "
                f"person-years ({_count(test_rows.get('people_with_wage'))} people); ridge "
                f"penalty {(table.get('penalty') or {}).get('chosen')} chosen on valid; "
                "person-bootstrap intervals",
            )
        )
        gap = result.get("gap")
        if gap:
            truth = gap.get("truth")
            covers = gap.get("covers_truth") or {}
            gap_rows = [
                [
                    name.replace("_", " "),
                    _x(e.get("estimate"), 4),
                    _x(e.get("se"), 4),
                    f"[{_x(e.get('low'), 4)}, {_x(e.get('high'), 4)}]",
                    ("yes" if covers.get(name) else "no") if truth is not None else "–",
                ]
                for name, e in gap["estimates"].items()
            ]
            doc.add(
                Table(
                    ["estimate", "gap", "SE", "95% interval", "covers the truth"],
                    gap_rows,
                    f"{gap.get('by')} log-wage gap, {gap.get('group')} minus "
                    f"{gap.get('reference')}"
                    + (
                        f"; the simulator's true gap given history: {truth:.4f}"
                        if truth is not None
                        else ""
                    ),
                )
            )
        elif result.get("gap_skipped"):
            doc.add(Missing(f"{survey.name}: no wage gap: {result['gap_skipped']}"))
    if shown:
        doc.add(
            Text(
                "Mincer: education, experience and its square, occupation and year effects "
                "and demographic controls, fitted on the train people. History: the same "
                "plus the fine-tuned CAREER's representation of the job history up to that "
                "year (ridge). Gap: raw difference, OLS with the Mincer controls, and a "
                "partially linear model whose nuisance functions use the representation, "
                "cross-fitted over person folds (double machine learning)."
            )
        )


def _count(value: Any) -> str:
    return "–" if value is None else f"{value:,}"
