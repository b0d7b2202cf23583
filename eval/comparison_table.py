"""The comparison table: models on one dataset as rows, sorted by test perplexity.

Each row holds the model's perplexity with its interval, its paired difference to the best model
(same tokens, same resampled people; the best model's is exactly 0 [0, 0]), top-1 and top-5
accuracy and the calibration error of P(stay). When the scores carry the simulator's
`oracle_logp` (every token), an `oracle` row gives the true process's perplexity and its
difference to the best model: how far the best model is from the best possible one.

Everything is computed from scores tables (`eval.metrics`); `markdown` and `to_json` render it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from data_shards import storage
from eval import metrics

ORACLE = "oracle"


def compare(
    scores: Mapping[str, pa.Table],
    *,
    summaries: Mapping[str, dict[str, Any]] | None = None,
    weighted: bool = False,
    bootstrap: int = metrics.DEFAULT_REPLICATES,
    seed: int = metrics.DEFAULT_SEED,
) -> dict[str, Any]:
    """The comparison of the models whose scores (on the same split of one dataset) are given.

    `summaries`: `metrics.summarize` of each table if already computed (same options)."""
    if not scores:
        raise ValueError("nothing to compare: no scores")
    options = dict(weighted=weighted, bootstrap=bootstrap, seed=seed)
    summaries = dict(summaries or {})
    for name, table in scores.items():
        if name not in summaries:
            summaries[name] = metrics.summarize(table, **options)
    if ORACLE in scores:
        raise ValueError(f"{ORACLE!r} names the oracle row: give the model another name")

    def perplexity_of(name: str) -> float:
        value = summaries[name]["perplexity"]["value"]
        return math.inf if value is None else value

    order = sorted(scores, key=lambda name: (perplexity_of(name), name))
    best = order[0]
    rows = []
    for name in order:
        summary = summaries[name]
        difference = metrics.paired_difference(scores[name], scores[best], **options)
        rows.append(
            {
                "model": name,
                "kind": "model",
                "perplexity": summary["perplexity"],
                "difference_to_best": difference.to_dict(),
                "top1": summary["accuracy"]["top1"],
                "top5": summary["accuracy"]["top5"],
                "ece_p_stay": summary["calibration"]["ece"],
                "people": summary["people"],
                "tokens": summary["tokens"],
            }
        )
    reference = scores[best]
    if metrics.has_oracle(reference):
        oracle = metrics.perplexity(reference, column="oracle_logp", **options)
        difference = metrics.paired_difference(
            reference, reference, column_a="oracle_logp", **options
        )
        rows.append(
            {
                "model": ORACLE,
                "kind": "oracle",
                "perplexity": oracle.to_dict(),
                "difference_to_best": difference.to_dict(),
                "top1": None,
                "top5": None,
                "ece_p_stay": None,
                "people": summaries[best]["people"],
                "tokens": summaries[best]["tokens"],
            }
        )
    return {
        "best": best,
        "weighted": summaries[best]["weighted"],
        "bootstrap": summaries[best]["bootstrap"],
        "people": summaries[best]["people"],
        "tokens": summaries[best]["tokens"],
        "rows": rows,
    }


# ----------------------------------------------------------------------------- rendering
def _number(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}g}"


def _interval(estimate: dict | None, digits: int = 4) -> str:
    if not estimate or estimate.get("low") is None:
        return "–"
    return f"[{_number(estimate['low'], digits)}, {_number(estimate['high'], digits)}]"


def _value(estimate: dict | None, digits: int = 4) -> str:
    return "–" if not estimate else _number(estimate.get("value"), digits)


COLUMNS = [
    "model",
    "perplexity",
    "95% CI",
    "Δ to best",
    "95% CI (paired)",
    "top-1",
    "top-5",
    "ECE P(stay)",
]


def row_cells(row: dict[str, Any]) -> list[str]:
    """A row's cells as text, in `COLUMNS` order (the terminal table prints the same)."""
    return [
        row["model"],
        _value(row["perplexity"]),
        _interval(row["perplexity"]),
        _value(row["difference_to_best"], 3),
        _interval(row["difference_to_best"], 3),
        _value(row["top1"], 3),
        _value(row["top5"], 3),
        _value(row["ece_p_stay"], 3),
    ]


def caption(dataset: str, split: str, comparison: dict[str, Any]) -> str:
    boot = comparison["bootstrap"]
    weighted = "weighted by person weight, " if comparison["weighted"] else ""
    return (
        f"{dataset} ({split} split: {comparison['people']:,} people, "
        f"{comparison['tokens']:,} job-years; {weighted}95% person-bootstrap intervals, "
        f"{boot['replicates']:,} replicates, seed {boot['seed']})"
    )


def markdown(tables: Mapping[str, dict[str, Any]], split: str) -> str:
    """One section per dataset: the comparison as a Markdown table."""
    lines = ["# Model comparison", ""]
    for dataset, comparison in tables.items():
        lines += [f"## {caption(dataset, split, comparison)}", ""]
        lines.append("| " + " | ".join(COLUMNS) + " |")
        lines.append("|" + "|".join(["---"] + ["---:"] * (len(COLUMNS) - 1)) + "|")
        for row in comparison["rows"]:
            cells = row_cells(row)
            if row["model"] == comparison["best"]:
                cells[0] = f"**{cells[0]}**"
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    note = (
        "Perplexity: exp of the mean negative log-likelihood over every job-year of the split "
        "(first years included). Δ: the model's perplexity minus the best model's, on the same "
        "people."
    )
    if any(row["model"] == ORACLE for c in tables.values() for row in c["rows"]):
        note += " The oracle row (simulated data) is the true process."
    lines.append(note)
    return "\n".join(lines) + "\n"


def to_json(value: Any) -> str:
    """A comparison (or a report holding them) in the JSON form of our files."""
    return storage.json_text(value)
