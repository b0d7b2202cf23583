"""The paper's table on the simulator: CAREER transferred from resumes against CAREER trained on
the survey alone and the econometric baselines, on each survey preset.

    python benchmarks/survey_table.py [--surveys nlsy79,nlsy97,psid] [--resumes 200000]
        [--preset small] [--pretrain-updates 600] [--survey-updates 300] [--survey-tokens 4000]
        [--lr 1e-3] [--regression-lrs 0.02,0.05] [--weight-decays 0,0.1] [--workers 2] [--keep DIR]

1. Shard `--resumes` simulated resumes, then each survey preset extending their vocabulary.
2. Pretrain CAREER (`--preset`) on the resumes once (`career pretrain`, Ray Train).
3. On each survey, with the same updates and early stopping on validation: CAREER fine-tuned
   from the resumes package (`career finetune`), CAREER from scratch, the regression baseline
   (`--model regression`; its peak learning rate and L2 penalty = weight decay chosen on
   validation among `--regression-lrs` x `--weight-decays`), bag-of-jobs (`--model bag-of-jobs`) and Markov (`--model markov`,
   closed form, smoothing chosen on validation).
4. `career evaluate` scores every package on the survey's test split; paired differences come
   from its per-token scores files (the same people resampled for both models).
Pass, per survey: transferred < from scratch < Markov and transferred < regression < Markov, each
beyond its 95% person-bootstrap interval, and transferred closes >= 70% of the Markov-to-oracle
gap. Figures go to benchmarks/results/survey_table.json (one entry per survey, so one survey per
invocation may be run and the file accumulates).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, best_valid, career, machine, save  # noqa: E402

from cluster.ray_session import connect_ray  # noqa: E402
from eval.metrics import paired_difference  # noqa: E402
from eval.scores import read_scores  # noqa: E402

#: (lower, higher): the lower model must beat the higher one beyond the interval.
ORDER = (
    ("finetuned", "scratch"),
    ("scratch", "markov"),
    ("finetuned", "regression"),
    ("regression", "markov"),
)


def survey_row(root: Path, survey: str, dataset: str, common: list[str], args) -> dict:
    """Train every model of one survey's table, evaluate them, and check the order."""
    runs, times = root / survey, {}
    runs.mkdir(parents=True, exist_ok=True)
    budget = [
        "--updates",
        str(args.survey_updates),
        "--tokens-per-update",
        str(args.survey_tokens),
        "--eval-every",
        "25",
        "patience=4",
    ]
    career_preset = ["--preset", args.preset]
    times["finetuned"] = career(
        "finetune",
        "--base",
        str(root / "pre" / "package"),
        "--data",
        dataset,
        "--out",
        str(runs / "finetuned"),
        *budget,
        *common,
        *career_preset,
    )
    times["scratch"] = career(
        "pretrain",
        "--data",
        dataset,
        "--out",
        str(runs / "scratch"),
        *budget,
        *common,
        *career_preset,
    )
    regression = {}  # run name -> best validation perplexity
    for lr in args.regression_lrs:
        for decay in args.weight_decays:
            out = runs / f"regression-lr{lr:g}-wd{decay:g}"
            times[out.name] = career(
                "pretrain",
                "--model",
                "regression",
                "--data",
                dataset,
                "--out",
                str(out),
                *budget,
                *common,
                "--preset",
                "paper",
                f"optim.lr={lr}",
                f"optim.weight_decay={decay}",
            )
            regression[out.name] = best_valid(out)
    chosen = min(regression, key=regression.get)
    times["bag"] = career(
        "pretrain",
        "--model",
        "bag-of-jobs",
        "--data",
        dataset,
        "--out",
        str(runs / "bag"),
        *budget,
        *common,
        "--preset",
        args.bag_preset,
    )
    times["markov"] = career(
        "pretrain", "--model", "markov", "--data", dataset, "--out", str(runs / "markov")
    )
    packages = {
        "finetuned": runs / "finetuned",
        "scratch": runs / "scratch",
        "regression": runs / chosen,
        "bag-of-jobs": runs / "bag",
        "markov": runs / "markov",
    }
    models = [f"{name}={path / 'package'}" for name, path in packages.items()]
    evaluation = runs / "evaluation"
    times["evaluate"] = career(
        "evaluate",
        *[a for m in models for a in ("--model", m)],
        "--data",
        dataset,
        "--out",
        str(evaluation),
        "--ray-address",
        args.ray_address,
    )
    metrics = json.loads((evaluation / "metrics.json").read_text())
    name = Path(dataset).name
    scores = {m: read_scores(str(evaluation / "scores" / f"{m}__{name}.parquet")) for m in packages}
    ppl = {m: metrics["metrics"][m][name]["perplexity"] for m in packages}
    oracle = metrics["datasets"][name]["oracle_perplexity"]
    differences = {}
    for low, high in ORDER:
        d = paired_difference(scores[low], scores[high]).to_dict()
        differences[f"{low} - {high}"] = {k: round(v, 4) for k, v in d.items()}
    gap = (ppl["markov"]["value"] - ppl["finetuned"]["value"]) / (ppl["markov"]["value"] - oracle)
    checks = {pair: d["high"] < 0 for pair, d in differences.items()}
    checks["gap_closed >= 0.7"] = gap >= 0.7
    runs_metrics = {m: json.loads((p / "metrics.json").read_text()) for m, p in packages.items()}
    return {
        "test_perplexity": {
            m: {k: round(float(v), 4) for k, v in e.items()} for m, e in ppl.items()
        },
        "oracle": oracle,
        "differences_95ci": differences,
        "gap_closed": round(gap, 4),
        "checks": checks,
        "pass": all(checks.values()),
        "regression_sweep": {"valid_perplexity": regression, "chosen": chosen},
        "tokens_seen": {m: r.get("tokens_seen") for m, r in runs_metrics.items()},
        "best_step": {m: r.get("best_step") for m, r in runs_metrics.items()},
        "wall_seconds": {k: round(v) for k, v in times.items()},
        "table_md": (evaluation / "table.md").read_text(),
        "settings": settings(args),
    }


def settings(args) -> dict:
    """What one survey's row was run with (rows of several invocations accumulate)."""
    return {
        "resumes": args.resumes,
        "preset": args.preset,
        "bag_preset": args.bag_preset,
        "peak_lr": args.lr,
        "regression_lrs": args.regression_lrs,
        "weight_decays": args.weight_decays,
        "updates": {"pretrain": args.pretrain_updates, "survey": args.survey_updates},
        "survey_tokens_per_update": args.survey_tokens,
        "survey_people": args.survey_people,
        "workers": args.workers,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--surveys", default="nlsy79,nlsy97,psid")
    parser.add_argument("--resumes", type=int, default=200_000)
    parser.add_argument(
        "--survey-people",
        type=int,
        default=None,
        help="people per survey (default: the preset's size)",
    )
    parser.add_argument(
        "--people-per-block",
        type=int,
        default=None,
        help="smaller blocks for small smoke runs (default: the shard default)",
    )
    parser.add_argument("--preset", default="small", help="CAREER's preset")
    parser.add_argument("--bag-preset", default="paper", help="bag-of-jobs preset (paper: 1024)")
    parser.add_argument("--pretrain-updates", type=int, default=600)
    parser.add_argument("--survey-updates", type=int, default=300)
    parser.add_argument(
        "--survey-tokens",
        type=int,
        default=4000,
        help="job-years per update of the survey runs (pretraining: 16,000)",
    )
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of every run")
    parser.add_argument(
        "--weight-decays",
        default="0,0.1",
        help="regression L2 penalties tried, chosen on validation",
    )
    parser.add_argument(
        "--regression-lrs",
        default="0.02,0.05",
        help="regression peak learning rates tried (its effects start at 0, so "
        "it needs a higher one than CAREER), chosen on validation",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--keep",
        default=None,
        help="keep the runs in this folder (and reuse its resumes dataset and pretrained package)",
    )
    args = parser.parse_args()
    args.weight_decays = [float(x) for x in args.weight_decays.split(",")]
    args.regression_lrs = [float(x) for x in args.regression_lrs.split(",")]
    args.ray_address = connect_ray(num_cpus=args.workers)
    root = Path(args.keep or tempfile.mkdtemp(prefix="survey-table-")).resolve()
    started = time.perf_counter()
    ray = ["--ray-address", args.ray_address]
    if args.people_per_block:
        ray_shard = [*ray, "--people-per-block", str(args.people_per_block)]
    else:
        ray_shard = ray
    store = root / "store"
    if not (store / "resumes" / "manifest.json").exists():
        career(
            "shard",
            "--format",
            "synth",
            "--sim-preset",
            "resumes",
            "--people",
            str(args.resumes),
            "--out",
            str(store),
            "--name",
            "resumes",
            *ray_shard,
        )
    common = [
        "--workers",
        str(args.workers),
        "--zero-stage",
        "1",
        *ray,
        "loader_workers=0",
        "cpu_threads=1",
        f"optim.lr={args.lr}",
    ]
    pretrain_seconds = 0.0
    if not (root / "pre" / "package" / "config.json").exists():
        pretrain_seconds = career(
            "pretrain",
            "--data",
            str(store / "resumes"),
            "--out",
            str(root / "pre"),
            "--updates",
            str(args.pretrain_updates),
            "--eval-every",
            "100",
            *common,
            "--preset",
            args.preset,
        )
    path = RESULTS / "survey_table.json"
    previous = json.loads(path.read_text())["results"] if path.exists() else {}
    results = dict(previous.get("surveys", {}))
    for survey in args.surveys.split(","):
        people = ["--people", str(args.survey_people)] if args.survey_people else []
        if not (store / survey / "manifest.json").exists():
            career(
                "shard",
                "--format",
                "synth",
                "--sim-preset",
                survey,
                *people,
                "--out",
                str(store),
                "--name",
                survey,
                "--vocab",
                str(store / "resumes" / "vocab.json"),
                *ray_shard,
            )
        results[survey] = survey_row(root, survey, str(store / survey), common, args)
        print(results[survey]["table_md"])
        print(json.dumps({k: v for k, v in results[survey].items() if k != "table_md"}, indent=1))
    out = save(
        "survey_table",
        {
            "results": {
                "surveys": results,
                "pretrain_seconds": round(pretrain_seconds),
                "wall_seconds": round(time.perf_counter() - started),
            }
        },
    )
    print(f"machine: {machine()}\nwrote {out}")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
