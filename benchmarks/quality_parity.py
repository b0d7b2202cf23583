"""Quality parity: the faster CPU defaults reach the validation perplexity of the fp32 run.

    python benchmarks/quality_parity.py [--people 50000] [--preset paper] [--updates 250]

Two `career pretrain` runs on the same simulated resumes, same seed, same number of updates
(16,000 job-years each, the paper's recipe with the short-run warmup): the previous CPU path
(fp32, torch's dropout: `hash_dropout=False`) and the new default (whatever `precision: auto`
picks on this CPU, hash dropout, packed rows). The runs differ only in their dropout masks (and
in bf16 rounding where the CPU has native bf16), so the gap is what the defaults cost, plus the
seed-to-seed noise of one run. Requirement: within 1% of the fp32 run's best validation
perplexity. Also reports each run's tokens/s and the simulator's oracle perplexity.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import career, machine, save  # noqa: E402

SETTINGS = {
    "fp32, torch dropout (before)": ["--precision", "fp32", "hash_dropout=False"],
    "default": [],
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--people", type=int, default=50_000)
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--updates", type=int, default=250)
    parser.add_argument("--eval-every", type=int, default=50)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="parity-"))
    runs: dict[str, dict] = {}
    try:
        career(
            "shard",
            "--format",
            "synth",
            "--sim-preset",
            "resumes",
            "--people",
            str(args.people),
            "--out",
            str(tmp),
            "--name",
            "resumes",
        )
        data = tmp / "resumes"
        oracle = json.loads((data / "manifest.json").read_text())["oracle_perplexity"]["valid"]
        for name, extra in SETTINGS.items():
            out = tmp / name.split(",")[0].replace(" ", "-")
            wall = career(
                "pretrain",
                "--data",
                str(data),
                "--out",
                str(out),
                "--preset",
                args.preset,
                "--updates",
                str(args.updates),
                "--eval-every",
                str(args.eval_every),
                "--checkpoint-every",
                str(args.updates),
                *extra,
            )
            metrics = json.loads((out / "metrics.json").read_text())
            runs[name] = {
                "precision": metrics["config"]["precision"],
                "notes": metrics["config"]["notes"],
                "best_valid_perplexity": metrics["best_valid_perplexity"],
                "valid_history": metrics["valid_history"],
                "tokens_per_second": metrics["tokens_per_second"],
                "wall_seconds": round(wall, 1),
            }
            print(
                f"{name:32s} {runs[name]['precision']:14s} best valid ppl "
                f"{metrics['best_valid_perplexity']:.4f}  {metrics['tokens_per_second']:,.0f} tokens/s"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    before, after = (runs[n]["best_valid_perplexity"] for n in SETTINGS)
    gap = after / before - 1
    print(
        f"default vs before: {gap:+.2%} (requirement: within 1%: {'met' if abs(gap) <= 0.01 else 'NOT met'})"
    )
    path = save(
        "quality_parity",
        {
            "people": args.people,
            "preset": args.preset,
            "updates": args.updates,
            "oracle_valid_perplexity": oracle,
            "runs": runs,
            "relative_gap": round(gap, 5),
        },
    )
    print(f"machine: {machine()}\nwrote {path}")


if __name__ == "__main__":
    main()
