"""The small scaling grid (issue 13): `career scale --grid small` end to end on this machine, then
its points, fit and the fitted E against the oracle floor.

    python benchmarks/scale_grid.py [--study EXISTING_STUDY_FOLDER] [--keep DIR]

Runs the study in a fresh folder (`--keep DIR` keeps it there; default: a temporary folder,
removed), or reads a finished one with `--study`. Figures go to benchmarks/results/scale_grid.json;
the points and the fit are printed as Markdown.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, save  # noqa: E402


def run_grid(folder: Path) -> float:
    command = [
        str(Path(sys.executable).with_name("career")),
        "scale",
        "--grid",
        "small",
        "--out",
        "study",
    ]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"career scale failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def summary(study: Path) -> dict:
    import pandas as pd

    points = pd.read_parquet(study / "points.parquet")
    fit = json.loads((study / "fit.json").read_text())
    columns = [
        "name",
        "non_embedding_parameters",
        "people",
        "unique_tokens",
        "epochs",
        "best_valid_loss",
        "best_step",
        "updates",
        "tokens_per_second",
        "wall_seconds",
    ]
    return {"points": points[columns].to_dict(orient="records"), "fit": fit}


def markdown(result: dict) -> str:
    lines = [
        "| point | N | people | D | epochs | valid nats | best step | tokens/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in result["points"]:
        lines.append(
            f"| {p['name']} | {p['non_embedding_parameters']:,} | {p['people']:,} | "
            f"{p['unique_tokens']:,.0f} | {p['epochs']:.2f} | {p['best_valid_loss']:.4f} "
            f"| {p['best_step']} / {p['updates']} | {p['tokens_per_second']:,.0f} |"
        )
    law = result["fit"].get("law")
    if law:
        intervals = law["intervals"]
        lines.append("")
        for key in ("E", "A", "B", "alpha", "beta"):
            i = intervals[key]
            lines.append(f"- {key} = {law[key]:.4g} [{i['low']:.4g}, {i['high']:.4g}]")
    floor = result["fit"].get("floor")
    if floor is not None:
        lines.append(
            f"- oracle floor {floor:.4f} nats; E − floor {result['fit'].get('E_minus_floor')}"
        )
    lines += [f"- note: {n}" for n in result["fit"].get("notes", [])]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", type=Path, help="a finished study folder to read instead")
    parser.add_argument("--keep", type=Path, help="run the study in this folder and keep it")
    args = parser.parse_args()
    seconds, temporary = None, None
    if args.study:
        study = args.study
    else:
        folder = args.keep or Path(tempfile.mkdtemp(prefix="scale-grid-"))
        temporary = None if args.keep else folder
        folder.mkdir(parents=True, exist_ok=True)
        seconds = run_grid(folder)
        study = folder / "study"
    try:
        result = summary(study)
        payload = {
            "machine": machine(),
            "grid": "small",
            "study": str(study),
            "run_seconds": seconds,
            **result,
        }
        print(markdown(result))
        print(f"written to {save('scale_grid', payload)}")
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)


if __name__ == "__main__":
    main()
