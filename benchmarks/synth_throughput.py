"""Simulator throughput on one core: people per second, oracle and Arrow conversion included.

    python benchmarks/synth_throughput.py [--people 200000] [--runs 3]

Pins BLAS/OpenMP to one thread (set before numpy loads), generates the corpus chunk by chunk as the
sharding job's workers will, and reports the median of `--runs` runs per preset.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, save  # noqa: E402

from data_shards.synth.generate import default_world, simulate  # noqa: E402
from data_shards.synth.presets import PRESETS  # noqa: E402


def run_once(preset_name: str, people: int, seed: int) -> tuple[float, int]:
    start = time.perf_counter()
    tokens = 0
    for batch in simulate(PRESETS[preset_name], people, seed=seed):
        tokens += len(batch.column("jobs").values)
    return time.perf_counter() - start, tokens


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--people", type=int, default=200_000, help="people per run (default 200000)"
    )
    parser.add_argument(
        "--runs", type=int, default=3, help="runs per preset; the median is reported (default 3)"
    )
    parser.add_argument(
        "--presets", default="resumes,nlsy79,nlsy97,psid", help="comma-separated presets"
    )
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    default_world()
    results = {}
    for name in args.presets.split(","):
        runs = [run_once(name, args.people, seed) for seed in range(args.runs)]
        seconds = statistics.median(r[0] for r in runs)
        tokens = statistics.median(r[1] for r in runs)
        results[name] = {
            "people": args.people,
            "runs_seconds": [round(r[0], 3) for r in runs],
            "median_seconds": round(seconds, 3),
            "people_per_second": round(args.people / seconds),
            "job_years_per_second": round(tokens / seconds),
        }
        print(
            f"{name:8s} {args.people / seconds:>10,.0f} people/s  {tokens / seconds:>12,.0f} job-years/s  (median of {args.runs})"
        )
    path = save("synth_throughput", {"one_core": True, "results": results})
    print(f"machine: {machine()}\nwrote {path}")


if __name__ == "__main__":
    main()
