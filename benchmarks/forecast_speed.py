"""Speed of Monte Carlo forecasting (`eval.forecast.sample`): incremental decoding vs recomputing.

    nice -n 10 python benchmarks/forecast_speed.py [--people 2000] [--paths 1000] [--horizon 6]

The issue's target: 1,000 paths for 2,000 people over a 6-year horizon with the `small` preset in
at most 5 minutes on this machine (2 threads). Randomly initialised models (speed does not depend
on the weights, except through how often paths repeat a history: see "stay-heavy"), a job
vocabulary the size of the simulator's survey one (330 occupations, 3 non-employment states, 3
specials), histories of 10-20 years up to 2014 and biennial future waves 2016, 2018, ... (years
past 2014 use 2014's embedding). Timed, in one process:
- small, cached: the whole task, with the key/value cache and identical paths merged;
- small, not merged: the cache, each path decoded on its own, on `--subset` people, scaled;
- small, full recompute: every path's whole sequence re-run each year, on `--full-subset` people,
  scaled; the share of its paths identical to the cached run's is recorded;
- small, stay-heavy: the cached run with the stay logit set to P(stay) = 0.8 (a trained model on
  survey data stays about that often), where merging saves more;
- paper, cached: on `--subset` people, scaled to the whole task.
Figures go to benchmarks/results/forecast_speed.json.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, save  # noqa: E402

from data_shards.synth.world import World  # noqa: E402
from data_shards.vocab import BOS_ID, SPECIALS, YEAR_SPAN  # noqa: E402
from eval.forecast.sample import sample_futures  # noqa: E402
from trainer.models.career import build_model  # noqa: E402

YEARS = YEAR_SPAN[1] - YEAR_SPAN[0] + 1 + len(SPECIALS)
SIZES = {
    "job": World.build().num_occupations + 3 + len(SPECIALS),
    "year": YEARS,
    "education": 8,
    "location": 55,
    "gender": 5,
    "ethnicity": 7,
    "birth_year": YEARS,
}
CUTOFF = 2014


def year_id(year: int) -> int:
    return len(SPECIALS) + year - YEAR_SPAN[0]


def people(N: int, horizon: int, seed: int = 0) -> tuple[dict, dict]:
    """Histories of 10-20 years ending in 2014 (right-padded batches) and biennial futures."""
    g = torch.Generator().manual_seed(seed)
    K = torch.randint(10, 21, (N,), generator=g)
    T = int(K.max())
    real = torch.arange(T)[None] < K[:, None]
    jobs = torch.randint(len(SPECIALS), SIZES["job"], (N, T), generator=g)
    stay = torch.rand(N, T, generator=g) < 0.7
    for t in range(1, T):
        jobs[:, t] = torch.where(stay[:, t], jobs[:, t - 1], jobs[:, t])
    targets = torch.where(real, jobs, 0)
    inputs = torch.where(real, torch.cat([torch.full((N, 1), BOS_ID), targets[:, :-1]], 1), 0)
    years = year_id(CUTOFF) - K[:, None] + 1 + torch.arange(T)[None]
    history = {
        "inputs": inputs,
        "targets": targets,
        "lengths": K,
        "year": torch.where(real, years, 0),
    }
    for name in ("education", "location", "gender", "ethnicity", "birth_year"):
        history[name] = torch.where(real, torch.randint(3, SIZES[name], (N, T), generator=g), 0)
    future = {"year": year_id(CUTOFF) + 2 * torch.arange(1, horizon + 1).repeat(N, 1)}
    return history, future


def subset(batch: dict, n: int) -> dict:
    return {name: values[:n] for name, values in batch.items()}


def timed(model, history, future, paths: int, **options) -> tuple[float, object]:
    start = time.perf_counter()
    forecast = sample_futures(
        model, history, future, paths=paths, seed=0, last_year_id=year_id(CUTOFF), **options
    )
    return time.perf_counter() - start, forecast


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--people", type=int, default=2000)
    parser.add_argument("--paths", type=int, default=1000)
    parser.add_argument("--horizon", type=int, default=6)
    parser.add_argument("--subset", type=int, default=100, help="people for scaled figures")
    parser.add_argument("--full-subset", type=int, default=10, help="people for full recompute")
    args = parser.parse_args()
    torch.set_num_threads(2)
    N, P, S = args.people, args.paths, args.horizon
    history, future = people(N, S)
    torch.manual_seed(0)
    small = build_model(SIZES, "small").eval()
    rows: dict[str, dict] = {}

    def record(name: str, seconds: float, measured: int, forecast) -> None:
        scaled = seconds * N / measured
        rows[name] = {
            "people_timed": measured,
            "seconds_timed": round(seconds, 2),
            "seconds_for_all": round(scaled, 1),
            "states_decoded_per_path_step": round(forecast.decoded / (measured * P * (S - 1)), 3),
        }
        print(
            f"{name:28s} {measured:5d} people {seconds:8.1f} s -> {scaled:8.1f} s for {N}",
            flush=True,
        )

    timed(small, subset(history, 8), subset(future, 8), P)  # warm-up
    seconds, cached = timed(small, history, future, P)
    record("small cached", seconds, N, cached)
    n = min(args.subset, N)
    seconds, forecast = timed(small, subset(history, n), subset(future, n), P, merge_paths=False)
    record("small cached, not merged", seconds, n, forecast)
    n = min(args.full_subset, N)
    seconds, full = timed(small, subset(history, n), subset(future, n), P, full_recompute=True)
    record("small full recompute", seconds, n, full)
    # The same uniforms drive both; a draw can differ only within float rounding of a CDF step.
    same = round(float((full.paths == cached.paths[:n]).all(-1).float().mean()), 4)
    with torch.no_grad():
        small.stay_head.bias.fill_(math.log(0.8 / 0.2))
    seconds, forecast = timed(small, history, future, P)
    record("small cached, stay-heavy", seconds, N, forecast)
    torch.manual_seed(0)
    paper = build_model(SIZES, "paper").eval()
    n = min(args.subset, N)
    seconds, forecast = timed(paper, subset(history, n), subset(future, n), P)
    record("paper cached", seconds, n, forecast)

    full_s = rows["small full recompute"]["seconds_for_all"]
    speedup = full_s / rows["small cached"]["seconds_for_all"]
    cache_alone = full_s / rows["small cached, not merged"]["seconds_for_all"]
    print(
        f"speed-up over full recompute: {speedup:.1f}x ({cache_alone:.1f}x from the cache "
        f"alone, without merging paths); share of paths drawn identically: {same}"
    )
    path = save(
        "forecast_speed",
        {
            "command": "nice -n 10 python benchmarks/forecast_speed.py " + " ".join(sys.argv[1:]),
            "machine": machine(),
            "threads": 2,
            "load_average_after": os.getloadavg(),
            "people": N,
            "paths": P,
            "horizon": S,
            "job_vocab": SIZES["job"],
            "target_seconds": 300,
            "runs": rows,
            "speedup_over_full_recompute": round(speedup, 1),
            "speedup_cache_alone": round(cache_alone, 1),
            "full_recompute_identical_path_share": same,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
