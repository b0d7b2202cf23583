"""How hard the simulator is, fixed once: oracle vs an order-1 Markov model, per preset.

    python benchmarks/sim_difficulty.py [--seed 0]

For each survey preset at its default size: split people with the system's split function, fit
the Markov baseline on train (smoothing chosen on valid), and compare its test perplexity with the
oracle's (the best any model can score). Then check that resumes differ from surveys: a Markov
model fitted on resumes alone, scored on each survey's test split.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, save  # noqa: E402

from data_shards.schema import NON_EMPLOYMENT_STATES  # noqa: E402
from data_shards.splits import resolve_splits  # noqa: E402
from data_shards.synth.generate import simulate  # noqa: E402
from data_shards.synth.presets import PRESETS  # noqa: E402
from trainer.models.markov import fit_markov  # noqa: E402


def splits(table: pa.Table) -> dict[str, pa.Table]:
    names = resolve_splits(table).to_numpy(zero_copy_only=False)
    return {s: table.filter(pa.array(names == s)) for s in ("train", "valid", "test")}


def oracle_perplexity(table: pa.Table) -> float:
    values = (
        pc.list_flatten(table.column("oracle_logp"))
        .to_numpy(zero_copy_only=False)
        .astype(np.float64)
    )
    return math.exp(-values.mean())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    resumes = splits(
        pa.Table.from_batches(
            list(simulate(PRESETS["resumes"], PRESETS["resumes"].default_people, args.seed))
        )
    )
    resume_markov = fit_markov(resumes["train"], resumes["valid"])
    results = {
        "resumes": {
            "people": PRESETS["resumes"].default_people,
            "oracle_test_perplexity": round(oracle_perplexity(resumes["test"]), 4),
            "markov_test_perplexity": round(resume_markov.perplexity(resumes["test"]), 4),
        }
    }
    results["resumes"]["markov_over_oracle"] = round(
        results["resumes"]["markov_test_perplexity"] / results["resumes"]["oracle_test_perplexity"],
        4,
    )
    print(
        f"{'preset':8s} {'oracle':>8s} {'markov':>8s} {'ratio':>6s} {'resume-markov':>14s} {'non-employment':>15s} {'occ-own':>10s} {'occ-resume':>10s}"
    )
    for name in ("nlsy79", "nlsy97", "psid"):
        preset = PRESETS[name]
        parts = splits(
            pa.Table.from_batches(list(simulate(preset, preset.default_people, args.seed)))
        )
        markov = fit_markov(parts["train"], parts["valid"])
        oracle = oracle_perplexity(parts["test"])
        own = markov.perplexity(parts["test"])
        from_resumes = resume_markov.perplexity(parts["test"])
        jobs = pc.list_flatten(parts["test"].column("jobs")).to_numpy(zero_copy_only=False)
        non_employment = float(np.isin(jobs, NON_EMPLOYMENT_STATES).mean())
        # Occupation-to-occupation steps only (what resumes do show): the type mix still differs.
        employed = ~np.isin(jobs, NON_EMPLOYMENT_STATES)
        lengths = pc.list_value_length(parts["test"].column("jobs")).to_numpy(zero_copy_only=False)
        starts = np.zeros(len(jobs), dtype=bool)
        starts[np.r_[0, np.cumsum(lengths)[:-1]]] = True
        steps = employed & np.r_[False, employed[:-1]] & ~starts
        occ_own = math.exp(-markov.log_probs(parts["test"])[steps].mean())
        occ_resume = math.exp(-resume_markov.log_probs(parts["test"])[steps].mean())
        results[name] = {
            "people": preset.default_people,
            "test_people": parts["test"].num_rows,
            "oracle_test_perplexity": round(oracle, 4),
            "markov_test_perplexity": round(own, 4),
            "markov_over_oracle": round(own / oracle, 4),
            "markov_alpha": markov.alpha,
            "resume_markov_test_perplexity": round(from_resumes, 4),
            "non_employment_share_test": round(non_employment, 4),
            "occupation_steps_markov_perplexity": round(occ_own, 4),
            "occupation_steps_resume_markov_perplexity": round(occ_resume, 4),
        }
        print(
            f"{name:8s} {oracle:8.3f} {own:8.3f} {own / oracle:6.3f} {from_resumes:14.3f} {non_employment:15.3f}"
            f" {occ_own:10.3f} {occ_resume:10.3f}"
        )
    r = results["resumes"]
    print(
        f"{'resumes':8s} {r['oracle_test_perplexity']:8.3f} {r['markov_test_perplexity']:8.3f} {r['markov_over_oracle']:6.3f}"
    )
    path = save("sim_difficulty", {"seed": args.seed, "results": results})
    print(f"machine: {machine()}\nwrote {path}")


if __name__ == "__main__":
    main()
