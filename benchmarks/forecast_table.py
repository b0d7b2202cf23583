"""The forecasting table: CAREER transferred from resumes against the Markov and regression
baselines, forecasting each simulated survey's years after the cutoff (issue 12).

    python benchmarks/forecast_table.py [--size demo | --config FILE] [--run EXISTING_RUN_FOLDER]

Runs `career run --size SIZE` or `career run --config FILE` (its forecast step: every survey cut at 2014, fine-tuned CAREER,
the regression and Markov retrained on the cut, 1,000 paths per person), or reads a finished run
with `--run`, and tabulates each survey's forecast.json: the forecast perplexity of the realised
jobs with its person-bootstrap interval, each baseline's paired difference to CAREER, the AUC
and binary NLL of unemployment / out of the labor force / school, and the mean absolute gap
between the forecast and realised rates over the future years. Figures go to
benchmarks/results/forecast_table.json; the Markdown table is printed. The table in BENCHMARKS.md
comes from `--config benchmarks/configs/forecast_small.yaml` (the `small` size's training on the
full survey presets, only the baselines the forecast needs).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, save  # noqa: E402
from pipeline import run_demo  # noqa: E402

STATES = ("unemployed", "not_in_labor_force", "education")


def _interval(estimate: dict | None) -> str:
    if not estimate or estimate.get("value") is None:
        return "–"
    return f"{estimate['value']:.3f} [{estimate['low']:.3f}, {estimate['high']:.3f}]"


def rate_gap(summary: dict, state: str) -> float | None:
    """Mean |forecast rate - realised rate| over the future years of one state."""
    years = (summary["states"].get(state) or {}).get("by_year") or {}
    gaps = [abs(v["forecast"] - v["realised"]) for v in years.values()]
    return sum(gaps) / len(gaps) if gaps else None


def table(run: Path) -> dict:
    surveys = {}
    for folder in sorted((run / "surveys").iterdir()):
        result = folder / "forecast" / "forecast.json"
        if result.exists():
            surveys[folder.name] = json.loads(result.read_text())
    if not surveys:
        raise SystemExit(f"{run}: no surveys/*/forecast/forecast.json (was forecasting on?)")
    return surveys


def markdown(surveys: dict) -> str:
    head = (
        "| survey | model | forecast perplexity [95%] | − CAREER [95%] | "
        + " | ".join(f"{s}: AUC / NLL / rate gap" for s in STATES)
        + " |"
    )
    lines = [head, "|" + "---|" * (4 + len(STATES))]
    for survey, result in surveys.items():
        for name, summary in result["models"].items():
            cells = []
            for state in STATES:
                entry = summary["states"].get(state)
                if not entry:
                    cells.append("–")
                    continue
                gap = rate_gap(summary, state)
                auc = "–" if entry["auc"] is None else f"{entry['auc']:.3f}"
                cells.append(f"{auc} / {entry['nll']:.3f} / {gap:.3f}")
            difference = result["difference_to_reference"].get(name)
            lines.append(
                f"| {survey} | {name} | {_interval(summary['perplexity'])} | "
                f"{_interval(difference) if difference else '–'} | " + " | ".join(cells) + " |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="demo")
    parser.add_argument("--config", type=Path, help="an experiment file to run instead of --size")
    parser.add_argument("--run", type=Path, help="a finished run folder to read instead")
    args = parser.parse_args()
    seconds = None
    temporary = None
    if args.run:
        if not (args.run / "experiment.json").exists():
            raise SystemExit(f"{args.run}: not a finished run folder (no experiment.json)")
        run = args.run
    else:
        temporary = Path(tempfile.mkdtemp(prefix="forecast-table-"))
        run, seconds = run_demo(args.size, temporary / "store", config=args.config)
    try:
        surveys = table(run)
        first = next(iter(surveys.values()))["models"]
        reference = next(iter(first.values()))
        payload = {
            "machine": machine(),
            "size": None if args.run else str(args.config) if args.config else args.size,
            "run": str(args.run) if args.run else None,
            "experiment": json.loads((run / "experiment.json").read_text())["experiment"],
            "run_seconds": seconds,
            "cutoff": reference["cutoff"],
            "paths": reference["paths"],
            "future_education": reference["future_education"],
            "surveys": {
                name: {
                    "scored_people": next(iter(r["models"].values()))["scored_people"],
                    "models": {
                        m: {
                            "perplexity": s["perplexity"],
                            "kind": s["kind"],
                            "sampling_seconds": s["sampling_seconds"],
                            "difference_to_career": r["difference_to_reference"].get(m),
                            "states": {
                                st: {"auc": e["auc"], "nll": e["nll"], "rate_gap": rate_gap(s, st)}
                                for st, e in s["states"].items()
                            },
                        }
                        for m, s in r["models"].items()
                    },
                }
                for name, r in surveys.items()
            },
        }
        print(markdown(surveys))
        print(f"written to {save('forecast_table', payload)}")
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)


if __name__ == "__main__":
    main()
