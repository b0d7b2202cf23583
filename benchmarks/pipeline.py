"""Where the time of `career run` goes, step by step, and how much of it is orchestration.

    python benchmarks/pipeline.py [--size demo] [--run EXISTING_RUN_FOLDER]

Runs `career run --size SIZE` in a fresh store with its own local Ray instance (or reads a run
folder that already finished, with `--run`), then splits its wall time:
- each step's wall time (steps.json), and for the survey tasks, how they overlapped;
- inside each training step, the training loop's own time (metrics.json `wall_seconds`: updates,
  validation, checkpoints) against its start-up (worker processes, DeepSpeed, the dataset's
  first read) and, for the survey tasks, the evaluation;
- orchestration overhead: the run's wall time minus the steps' own work (shard jobs, the
  pretraining loop, the survey phase's wall time times the share of the survey tasks' time spent
  in training loops and evaluation, the report), i.e. Ray start-up, Ray Train and DeepSpeed
  start-ups, exports, waiting for workers and the driver's glue.
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


def loop_seconds(run: Path, *parts: str) -> float:
    metrics = run.joinpath(*parts, "metrics.json")
    return json.loads(metrics.read_text()).get("wall_seconds") or 0.0 if metrics.exists() else 0.0


def analyse(run: Path, total: float | None) -> dict:
    steps = json.loads((run / "steps.json").read_text())
    by_name = {s["step"]: s for s in steps}
    shard = sum(s["seconds"] for s in steps if s["step"].startswith("shard "))
    pretrain_step = by_name.get("pretrain", {}).get("seconds", 0.0)
    pretrain_loop = loop_seconds(run, "pretrain")
    surveys = {
        s["step"].removeprefix("survey "): s for s in steps if s["step"].startswith("survey ")
    }
    phase = max((s["seconds"] for s in surveys.values()), default=0.0)  # since pretraining ended
    tasks = {}
    for name, s in surveys.items():
        models = s.get("models", {})  # each model's training loop, "start-ups", "evaluate"
        loops = {
            m: loop_seconds(run, "surveys", name, m)
            for m in models
            if m not in ("evaluate", "start-ups")
        }
        tasks[name] = {
            "task_seconds": round(sum(models.values()), 1),
            "training_loops_seconds": round(sum(loops.values()), 1),
            "start_ups_seconds": round(
                sum(models.values()) - sum(loops.values()) - models.get("evaluate", 0.0), 1
            ),
            "evaluate_seconds": round(models.get("evaluate", 0.0), 1),
            "started": s.get("started"),
            "ended": s.get("ended"),
        }
    # The survey tasks run side by side, so their work is not a sum: the phase's own work is its
    # wall time times the share of the tasks' time spent in their training loops and evaluation
    # (the rest: Ray Train start-ups, DeepSpeed set-up, exports, waiting for a worker).
    task_time = sum(t["task_seconds"] for t in tasks.values())
    task_work = sum(t["training_loops_seconds"] + t["evaluate_seconds"] for t in tasks.values())
    phase_work = phase * task_work / task_time if task_time else 0.0
    report = by_name.get("report", {}).get("seconds", 0.0)
    total = total or sum(s["seconds"] for s in steps if not s["step"].startswith("survey ")) + phase
    own = shard + pretrain_loop + phase_work + report
    overlap = None
    spans = [(t["started"], t["ended"]) for t in tasks.values() if t["started"] and t["ended"]]
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
            "loop_seconds": round(pretrain_loop, 1),
            "start_up_seconds": round(pretrain_step - pretrain_loop, 1),
        },
        "survey_phase_seconds": phase,
        "survey_phase_own_work_seconds": round(phase_work, 1),
        "survey_tasks": tasks,
        "survey_tasks_side_by_side": overlap,
        "report_seconds": report,
        "own_work_seconds": round(own, 1),
        "orchestration_share": round(1 - own / total, 3) if total else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="demo")
    parser.add_argument("--run", default=None, help="analyse this finished run instead")
    args = parser.parse_args()
    if args.run:
        if not (Path(args.run) / "steps.json").exists():
            raise SystemExit(f"{args.run}: not a career run folder (no steps.json)")
        result = analyse(Path(args.run).resolve(), None)
    else:
        store = Path(tempfile.mkdtemp(prefix="pipeline-bench-"))
        try:
            run, total = run_demo(args.size, store)
            result = analyse(run, total)
        finally:
            shutil.rmtree(store, ignore_errors=True)
    print(json.dumps(result, indent=1))
    out = save("pipeline", {"results": {"size": args.size, "analysed": args.run, **result}})
    print(f"machine: {machine()}\nwrote {out}")


if __name__ == "__main__":
    main()
