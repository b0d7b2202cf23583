"""Transfer quality on the simulator: pretrain on resumes, fine-tune on NLSY79, vs the survey alone.

    python benchmarks/transfer_quality.py [--resumes 200000] [--preset small] [--pretrain-updates 600]
                                          [--finetune-updates 300] [--lr 1e-3] [--workers 2]

1. Shard 200,000 simulated resumes, and the `nlsy79` preset extending their vocabulary.
2. Pretrain `--preset` on the resumes (`career pretrain`, Ray Train, ZeRO-1), fine-tune the package
   on NLSY79 (`career finetune`), and train the same architecture on NLSY79 alone. Both survey
   runs get the same updates, peak learning rate and early stopping (patience 4 evaluations of
   25 updates); each keeps its best validation checkpoint. Runs this short use a peak learning
   rate of `--lr` (the paper's 5e-4 / 1e-4 assume 85,000 / 5,000 updates; the warmup is 10%).
3. On the NLSY79 test split: perplexity of both models, of an order-1 Markov model (counts,
   smoothing chosen on validation) and of the oracle; a 95% person-bootstrap interval of the
   fine-tuned minus survey-only perplexity; the share of the Markov-to-oracle gap closed.
Pass: the fine-tuned model closes >= 70% of the gap and beats the survey-only model beyond the
bootstrap interval. Figures go to benchmarks/results/transfer_quality.json.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, save  # noqa: E402

from cluster.ray_session import connect_ray  # noqa: E402
from data_shards.inputs import InputSpec  # noqa: E402
from data_shards.shard import shard_dataset  # noqa: E402
from data_shards.splits import resolve_splits  # noqa: E402
from data_shards.stream import CareerLoader, StreamConfig  # noqa: E402
from data_shards.synth.generate import simulate  # noqa: E402
from data_shards.synth.presets import PRESETS  # noqa: E402
from trainer.models.markov import fit_markov  # noqa: E402
from trainer.package import load_model  # noqa: E402

CAREER = str(Path(sys.executable).with_name("career"))


def per_person_nll(package: str, data: str) -> dict[str, tuple[float, int]]:
    model = load_model(package).model
    torch.set_num_threads(2)
    out = {}
    loader = CareerLoader(
        data, StreamConfig(split="test", loop=False, shuffle=False), num_workers=0
    )
    with torch.no_grad():
        for batch in loader:
            logp = model.token_log_probs(
                {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
            )
            for i, person in enumerate(batch["person_id"]):
                n = int(batch["lengths"][i])
                out[person] = (-float(logp[i, :n].sum()), n)
    return out


def bootstrap_difference(
    a: dict, b: dict, resamples: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """95% interval of perplexity(a) - perplexity(b) over people resampled with replacement."""
    people = sorted(a)
    nll_a = np.array([a[p][0] for p in people])
    nll_b = np.array([b[p][0] for p in people])
    tokens = np.array([a[p][1] for p in people])
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(resamples):
        idx = rng.integers(0, len(people), len(people))
        t = tokens[idx].sum()
        diffs.append(math.exp(nll_a[idx].sum() / t) - math.exp(nll_b[idx].sum() / t))
    return float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))


def perplexity(scores: dict) -> float:
    return math.exp(sum(v[0] for v in scores.values()) / sum(v[1] for v in scores.values()))


def career(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run(
        [CAREER, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--resumes", type=int, default=200_000)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--pretrain-updates", type=int, default=600)
    parser.add_argument("--finetune-updates", type=int, default=300)
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of every run")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--keep", default=None, help="keep the runs in this folder")
    args = parser.parse_args()
    connect_ray(num_cpus=args.workers)
    import ray

    address = ray.get_runtime_context().gcs_address
    root = Path(args.keep or tempfile.mkdtemp(prefix="transfer-"))
    started = time.perf_counter()
    resumes = shard_dataset(
        InputSpec(format="synth", preset="resumes", people=args.resumes), str(root), "resumes"
    ).dataset_url
    survey = shard_dataset(
        InputSpec(format="synth", preset="nlsy79"),
        str(root),
        "nlsy79",
        parent_vocab_url=f"{resumes}/vocab.json",
    ).dataset_url
    common = [
        "--preset",
        args.preset,
        "--workers",
        str(args.workers),
        "--zero-stage",
        "1",
        "--ray-address",
        address,
        "loader_workers=0",
        "cpu_threads=1",
        f"optim.lr={args.lr}",
    ]
    survey_runs = ["--updates", str(args.finetune_updates), "--eval-every", "25", "patience=4"]
    times = {}
    times["pretrain"] = career(
        "pretrain",
        "--data",
        resumes,
        "--out",
        str(root / "pre"),
        "--updates",
        str(args.pretrain_updates),
        "--eval-every",
        "100",
        *common,
    )
    times["finetune"] = career(
        "finetune",
        "--base",
        str(root / "pre" / "package"),
        "--data",
        survey,
        "--out",
        str(root / "fine"),
        *survey_runs,
        *common,
    )
    times["survey_only"] = career(
        "pretrain", "--data", survey, "--out", str(root / "alone"), *survey_runs, *common
    )

    fine = per_person_nll(str(root / "fine" / "package"), survey)
    alone = per_person_nll(str(root / "alone" / "package"), survey)
    table = pa.Table.from_batches(
        list(simulate(PRESETS["nlsy79"], PRESETS["nlsy79"].default_people, 0))
    )
    split = resolve_splits(table).to_numpy(zero_copy_only=False)
    parts = {s: table.filter(pa.array(split == s)) for s in ("train", "valid", "test")}
    markov = fit_markov(parts["train"], parts["valid"]).perplexity(parts["test"])
    oracle = json.loads((Path(survey) / "manifest.json").read_text())["oracle_perplexity"]["test"]
    ppl_fine, ppl_alone = perplexity(fine), perplexity(alone)
    low, high = bootstrap_difference(fine, alone)
    gap_closed = (markov - ppl_fine) / (markov - oracle)
    metrics = {
        name: json.loads((root / name / "metrics.json").read_text())
        for name in ("pre", "fine", "alone")
    }
    results = {
        "preset": args.preset,
        "resumes": args.resumes,
        "updates": {"pretrain": args.pretrain_updates, "survey": args.finetune_updates},
        "peak_lr": args.lr,
        "best_step": {k: m["best_step"] for k, m in metrics.items()},
        "test_perplexity": {
            "finetuned": round(ppl_fine, 4),
            "survey_only": round(ppl_alone, 4),
            "markov": round(markov, 4),
            "oracle": oracle,
        },
        "finetuned_minus_survey_only_95ci": [round(low, 4), round(high, 4)],
        "gap_closed": round(gap_closed, 4),
        "pass": bool(gap_closed >= 0.7 and high < 0),
        "tokens_seen": {k: m["tokens_seen"] for k, m in metrics.items()},
        "best_valid": {k: m["best_valid_perplexity"] for k, m in metrics.items()},
        "wall_seconds": {
            **{k: round(v) for k, v in times.items()},
            "total": round(time.perf_counter() - started),
        },
    }
    print(json.dumps(results, indent=1))
    path = save("transfer_quality", {"results": results})
    print(f"machine: {machine()}\nwrote {path}")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
