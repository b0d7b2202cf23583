"""Scoring speed of `career evaluate` against training throughput, per CAREER preset.

    python benchmarks/eval_throughput.py [--people 8000] [--presets small,paper] [--runs 3]

On a simulated NLSY79 dataset (`career shard`), for each preset, in one process with 2 threads:
- training: a bare PyTorch loop (AdamW, 16,000 job-years per update, the loader): the training
  job-years per second `benchmarks/train_throughput.py` compares our trainer with;
- scoring: `eval.scores.score_split` on the train split (the per-token scores `career evaluate`
  writes: log-probability, P(stay), rank), job-years per second, the model in inference mode;
- end to end: `career evaluate` on a package of the same model (a Ray task with 2 CPUs, writing
  the scores file, metrics with 1,000 person-bootstrap replicates, the table), job-years per
  second of its wall time, Ray start-up included.
Forward-only work is about a third of a training step, so scoring should run at least 3x the
training throughput. Medians of `--runs` interleaved runs; figures go to
benchmarks/results/eval_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import career, machine, save  # noqa: E402
from train_throughput import UPDATES, bare_loop  # noqa: E402

from cluster.ray_session import connect_ray  # noqa: E402
from data_shards.dataset import load_dataset  # noqa: E402
from eval.scores import score_split  # noqa: E402
from trainer.config import TrainConfig  # noqa: E402
from trainer.context import model_for  # noqa: E402
from trainer.package import load_model, write_package  # noqa: E402


def make_package(data: str, preset: str, out: str) -> None:
    """A freshly initialised CAREER of `preset` as a package (speed does not depend on weights)."""
    torch.manual_seed(0)
    dataset = load_dataset(data)
    model = model_for(TrainConfig(preset=preset), dataset.vocab, dataset.manifest)[0]
    write_package(out, model.state_dict(), model.config, dataset.vocab, {}, dataset.manifest_sha)


def scoring_rate(data: str, package: str) -> float:
    """Job-years per second of `score_split` on the train split, in this process."""
    torch.set_num_threads(2)
    loaded = load_model(package)
    score_split(loaded, data, "valid")  # warm-up: first calls pay one-off allocation
    start = time.perf_counter()
    table = score_split(loaded, data, "train")
    return table.num_rows / (time.perf_counter() - start)


def evaluate_rate(data: str, package: str, out: str, ray_address: str, tokens: int) -> float:
    """Job-years per second of a whole `career evaluate` on the train split."""
    shutil.rmtree(out, ignore_errors=True)
    seconds = career(
        "evaluate",
        "--model",
        f"m={package}",
        "--data",
        data,
        "--split",
        "train",
        "--out",
        out,
        "--cpus-per-task",
        "2",
        "--ray-address",
        ray_address,
    )
    return tokens / seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--people", type=int, default=8000)
    parser.add_argument("--presets", default="small,paper")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    ray_address = connect_ray(num_cpus=2)
    root = Path(tempfile.mkdtemp(prefix="eval-throughput-"))
    try:
        career(
            "shard",
            "--format",
            "synth",
            "--sim-preset",
            "nlsy79",
            "--people",
            str(args.people),
            "--out",
            str(root),
            "--name",
            "nlsy79",
            "--ray-address",
            ray_address,
        )
        data = str(root / "nlsy79")
        tokens = json.loads((root / "nlsy79" / "manifest.json").read_text())["splits"]["train"][
            "tokens"
        ]
        results = {}
        for preset in args.presets.split(","):
            package = str(root / f"package-{preset}")
            make_package(data, preset, package)
            train, score, evaluate = [], [], []
            for _ in range(args.runs):
                train.append(bare_loop(data, preset, UPDATES.get(preset, 12)))
                score.append(scoring_rate(data, package))
                evaluate.append(
                    evaluate_rate(data, package, str(root / "eval"), ray_address, tokens)
                )
            row = {
                "train_tokens_per_s": round(statistics.median(train)),
                "score_tokens_per_s": round(statistics.median(score)),
                "evaluate_tokens_per_s": round(statistics.median(evaluate)),
                "runs": {"train": train, "score": score, "evaluate": evaluate},
            }
            row["score_over_train"] = round(
                row["score_tokens_per_s"] / row["train_tokens_per_s"], 2
            )
            row["evaluate_over_train"] = round(
                row["evaluate_tokens_per_s"] / row["train_tokens_per_s"], 2
            )
            results[preset] = row
            print(preset, json.dumps({k: v for k, v in row.items() if k != "runs"}))
        out = save(
            "eval_throughput",
            {"results": {"people": args.people, "train_tokens": tokens, "presets": results}},
        )
        print(f"machine: {machine()}\nwrote {out}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
