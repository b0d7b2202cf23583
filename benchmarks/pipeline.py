"""Where the time of `career run` goes, and how much of it is orchestration.

    python benchmarks/pipeline.py [--size demo] [--keep DIR] [--run EXISTING_RUN_FOLDER]

Runs `career run --size SIZE` in a fresh store with its own local Ray instance (or reads a run
folder that already finished, with `--run`), then splits its wall time into
- training: the optimizer updates (each run's `phase_seconds.updates` in metrics.json; a
  closed-form fit's whole time);
- evaluation: validation inside the training loops, and the survey steps that score models
  (`evaluate`, `wages`, `explain`);
- sampling: the Monte Carlo paths of `forecast` (its models' `sampling_seconds`);
- sharding: the dataset steps;
- orchestration: everything else: Ray's and the driver's start, Ray Train's worker groups, each
  run's start-up (dataset, model, DeepSpeed engine), checkpoint saves and exports (I/O), the
  forecast step's loading, the report, and waiting.
The survey tasks run side by side, so their work is not a sum: the survey phase's work is its wall
time times the share of the tasks' own time spent in training, evaluation and sampling.
Figures go to benchmarks/results/pipeline.json.
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

from eval.run_layout import RunLayout  # noqa: E402


def run_demo(size: str, store: Path, config: Path | None = None) -> tuple[Path, float]:
    """`career run` of a built-in size (or of the experiment file `config`) in `store`."""
    chosen = ["--config", str(config.resolve())] if config else ["--size", size]
    command = [
        str(Path(sys.executable).with_name("career")),
        "run",
        *chosen,
        "--store",
        str(store),
        "--run-id",
        "bench",
    ]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"career run failed:\n{done.stderr[-3000:]}")
    return store / "bench", time.perf_counter() - start


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def training_split(metrics: dict) -> dict[str, float]:
    """One training run's seconds by kind (rank 0's `phase_seconds`; a closed-form fit is all
    training)."""
    phases = metrics.get("phase_seconds")
    if phases is None:  # a closed-form fit (markov): no loop, no engine
        return {"training": metrics.get("wall_seconds") or 0.0}
    return {
        "training": phases["updates"],
        "evaluation": phases["validation"],
        "start_ups": phases["start_up"],
        "io": phases["checkpoints"] + phases.get("export", 0.0),
    }


def add(total: dict[str, float], part: dict[str, float]) -> None:
    for key, value in part.items():
        total[key] = total.get(key, 0.0) + value


def survey_task_split(run: Path, name: str, entry: dict) -> dict[str, float]:
    """One survey task's own seconds by kind; `launch` is Ray Train's worker group (start,
    between runs, shutdown): the task's training time not inside any run."""
    times, split = entry.get("models", {}), {}
    trained = {m: t for m, t in times.items() if m not in STEP_NAMES and m != "start-ups"}
    within_runs = 0.0
    layout = RunLayout(str(run))
    for model in trained:
        if model.startswith("forecast "):
            folder = layout.forecast_model(name, model.removeprefix("forecast "))
        elif model == "explain model":
            folder = layout.explain_model(name)
        else:
            folder = layout.model(name, model)
        folder = Path(folder)
        part = training_split(read_json(folder / "metrics.json"))
        within_runs += sum(part.values())
        add(split, part)
    launched = sum(trained.values()) + times.get("start-ups", 0.0)
    split["launch"] = max(0.0, launched - within_runs)
    for step in ("evaluate", "wages", "explain"):
        add(split, {"evaluation": times.get(step, 0.0)})
    if "forecast" in times:
        summary = read_json(Path(layout.forecast(name)) / "forecast.json").get("models", {})
        sampling = sum(m.get("sampling_seconds", 0.0) for m in summary.values())
        scoring = sum(m.get("scoring_seconds", 0.0) for m in summary.values())
        add(
            split,
            {
                "sampling": sampling,
                "evaluation": scoring,
                "io": times["forecast"] - sampling - scoring,
            },
        )
    return {k: round(v, 1) for k, v in split.items()}


STEP_NAMES = ("evaluate", "forecast", "wages", "explain")
WORK = ("training", "evaluation", "sampling")


def analyse(run: Path, total: float | None) -> dict:
    steps = json.loads((run / "steps.json").read_text())
    by_name = {s["step"]: s for s in steps}
    shard = sum(s["seconds"] for s in steps if s["step"].startswith("shard "))
    pretrain_step = by_name.get("pretrain", {}).get("seconds", 0.0)
    pretrain = training_split(read_json(run / "pretrain" / "metrics.json"))
    pretrain["launch"] = max(0.0, pretrain_step - sum(pretrain.values()))
    surveys = {
        s["step"].removeprefix("survey "): s for s in steps if s["step"].startswith("survey ")
    }
    phase = max((s["seconds"] for s in surveys.values()), default=0.0)  # since pretraining ended
    tasks = {name: survey_task_split(run, name, entry) for name, entry in surveys.items()}
    task_time = sum(sum(t.values()) for t in tasks.values())
    task_work = sum(t.get(k, 0.0) for t in tasks.values() for k in WORK)
    phase_work = phase * task_work / task_time if task_time else 0.0
    report = by_name.get("report", {}).get("seconds", 0.0)
    total = total or sum(s["seconds"] for s in steps if not s["step"].startswith("survey ")) + phase
    pretrain_work = sum(pretrain.get(k, 0.0) for k in WORK)
    own = shard + pretrain_work + phase_work
    summed: dict[str, float] = {}
    for part in (pretrain, *tasks.values()):
        add(summed, part)
    overlap = None
    spans = [(s["started"], s["ended"]) for s in surveys.values() if s.get("started")]
    if len(spans) > 1:
        busy = sum(end - start for start, end in spans)
        wall = max(end for _, end in spans) - min(start for start, _ in spans)
        overlap = round(busy / wall, 2)  # 1: one after another; N: N side by side all along
    return {
        "total_seconds": round(total, 1),
        "steps": {s["step"]: s["seconds"] for s in steps},
        "shard_seconds": round(shard, 1),
        "pretrain": {
            "step_seconds": pretrain_step,
            **{k: round(v, 1) for k, v in pretrain.items()},
        },
        "survey_phase_seconds": phase,
        "survey_phase_work_seconds": round(phase_work, 1),
        "survey_tasks": tasks,
        "survey_tasks_side_by_side": overlap,
        "report_seconds": report,
        "task_seconds_by_kind": {k: round(v, 1) for k, v in summed.items()},
        "work_seconds": round(own, 1),
        "orchestration_seconds": round(total - own, 1),
        "orchestration_share": round(1 - own / total, 3) if total else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="demo")
    parser.add_argument("--run", default=None, help="analyse this finished run instead")
    parser.add_argument("--keep", default=None, help="keep the run's store in this folder")
    args = parser.parse_args()
    if args.run:
        if not (Path(args.run) / "steps.json").exists():
            raise SystemExit(f"{args.run}: not a career run folder (no steps.json)")
        result = analyse(Path(args.run).resolve(), None)
    else:
        store = Path(args.keep or tempfile.mkdtemp(prefix="pipeline-bench-"))
        try:
            run, total = run_demo(args.size, store)
            result = analyse(run, total)
        finally:
            if not args.keep:
                shutil.rmtree(store, ignore_errors=True)
    print(json.dumps(result, indent=1))
    out = save("pipeline", {"results": {"size": args.size, "analysed": args.run, **result}})
    print(f"machine: {machine()}\nwrote {out}")


if __name__ == "__main__":
    main()
