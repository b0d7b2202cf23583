"""Time per greedy rationale (`eval.explain.rationalize`), the `small` and `paper` presets.

    nice -n 10 python benchmarks/explain_speed.py [--people 50] [--threads 2]

Randomly initialised models with word dropout 0.5 (speed depends on the weights only through how
many years greedy adds), a job vocabulary the size of the simulator's survey one (330
occupations, 3 states), histories of n = 10 and 20 years with random jobs. Two cases per history
length: the model's top job ("predicted": an untrained model's top job needs no year, so this is
the floor, two forward passes) and its least likely job ("worst case": never on top, so greedy
adds all n-1 candidate years, one batched forward of the remaining candidates per step: n-1
forwards of n-1, n-2, ..., 1 rows). A real rationale of k years costs k+1 such forwards after
the first two.
Figures go to benchmarks/results/explain_speed.json.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import save  # noqa: E402

from data_shards.vocab import build_vocabulary  # noqa: E402
from eval.explain import rationalize  # noqa: E402
from eval.predict import Query  # noqa: E402
from trainer.models.career import build_model  # noqa: E402
from trainer.package import LoadedModel  # noqa: E402

JOBS = [str(1000 + i) for i in range(330)] + ["unemployed", "not_in_labor_force", "education"]


def loaded_model(preset: str) -> LoadedModel:
    counts = {
        "job": collections.Counter(dict.fromkeys(JOBS, 1)),
        "year": collections.Counter({"2000": 1}),
    }
    vocab = build_vocabulary(counts)
    torch.manual_seed(0)
    sizes = {"job": vocab.size("job"), "year": vocab.size("year")}
    model = build_model(sizes, preset, covariates=("year",), word_dropout=0.5).eval()
    return LoadedModel(model, vocab, {"kind": "career"}, {})


def time_case(loaded: LoadedModel, years: int, people: int, worst: bool) -> dict:
    rng = np.random.default_rng(years)
    seconds, kept = [], []
    for _ in range(people):
        history = tuple(
            zip(rng.choice(JOBS, years).tolist(), range(1995, 1995 + years), strict=True)
        )
        query = Query(history)
        target = None
        if worst:  # the model's least likely job: never on top, so every year is added
            with torch.inference_mode():
                full = loaded.model.log_probs(_batch(loaded, query))[0, -1]
            target = loaded.vocab.fields["job"][int(full[3:].argmin()) + 3]
        start = time.perf_counter()
        rationale = rationalize(loaded, query, target)
        seconds.append(time.perf_counter() - start)
        kept.append(len(rationale.kept_years))
    return {
        "years": years,
        "case": "worst case" if worst else "predicted",
        "people": people,
        "ms_median": 1000 * statistics.median(seconds),
        "ms_mean": 1000 * statistics.fmean(seconds),
        "kept_years_mean": statistics.fmean(kept),
    }


def _batch(loaded: LoadedModel, query: Query) -> dict:
    from eval.predict import build_batch

    batch, _ = build_batch(loaded.vocab, [query])
    return {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for preset in ("small", "paper"):
        loaded = loaded_model(preset)
        for years in (10, 20):
            for worst in (False, True):
                row = {"preset": preset, **time_case(loaded, years, args.people, worst)}
                rows.append(row)
                print(
                    f"{preset:6} {years:2} years {row['case']:10}: {row['ms_median']:7.1f} ms "
                    f"median, {row['kept_years_mean']:.1f} years kept"
                )
    path = save("explain_speed", {"threads": args.threads, "rows": rows})
    print(f"figures in {path}")


if __name__ == "__main__":
    main()
