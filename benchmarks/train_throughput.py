"""Training throughput: our DeepSpeed trainer (2 CPU workers through Ray Train) vs a bare loop.

    python benchmarks/train_throughput.py [--people 50000] [--runs 3]

For the `small` and `paper` presets: a bare PyTorch loop in one process with 2 threads (AdamW,
the same token budget of 16,000 job-years per update, the same loader) against `career pretrain`
with ZeRO-1 and ZeRO-2 on 2 Ray Train workers (gloo, 1 thread each). Tokens/s are job-year tokens
per second of update time (the first update of each run, which pays one-off set-up, excluded;
evaluation and checkpoints excluded), median of `--runs` runs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, save  # noqa: E402

from cluster.ray_session import connect_ray  # noqa: E402
from data_shards.inputs import InputSpec  # noqa: E402
from data_shards.manifest import load_manifest  # noqa: E402
from data_shards.shard import shard_dataset  # noqa: E402
from data_shards.stream import CareerLoader, StreamConfig  # noqa: E402
from data_shards.vocab import Vocabulary  # noqa: E402
from trainer.config import TrainConfig  # noqa: E402
from trainer.context import model_for  # noqa: E402

CAREER = str(Path(sys.executable).with_name("career"))
UPDATES = {"small": 12, "paper": 5}


def bare_loop(data: str, preset: str, updates: int) -> float:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    vocab = Vocabulary.load(f"{data}/vocab.json")
    model = model_for(TrainConfig(preset=preset), vocab, load_manifest(data))[0]
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, betas=(0.9, 0.98), weight_decay=0.01)
    loader = iter(
        CareerLoader(data, StreamConfig(split="train", tokens_per_update=16_000), num_workers=0)
    )
    tokens, seconds = 0, 0.0
    for update in range(updates + 1):
        start = time.perf_counter()
        batch = next(loader)
        nll, count = model.nll({k: v for k, v in batch.items() if isinstance(v, torch.Tensor)})
        (nll / count).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if update:  # the first update pays one-off set-up
            seconds += time.perf_counter() - start
            tokens += int(count)
    return tokens / seconds


def ours(data: str, preset: str, stage: int, updates: int, out: str, ray_address: str) -> float:
    command = [CAREER, "pretrain", "--data", data, "--out", out, "--preset", preset, "--zero-stage", str(stage),
               "--updates", str(updates + 1), "--tokens-per-update", "16000", "--workers", "2",
               "--eval-every", "100000", "--checkpoint-every", "100000", "--ray-address", ray_address,
               "loader_workers=0", "cpu_threads=1"]  # fmt: skip
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads((Path(out) / "metrics.json").read_text())["tokens_per_second"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--people", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    connect_ray(num_cpus=2)
    import ray

    address = ray.get_runtime_context().gcs_address
    tmp = Path(tempfile.mkdtemp(prefix="train-bench-"))
    results: dict = {}
    try:
        data = shard_dataset(
            InputSpec(format="synth", preset="resumes", people=args.people), str(tmp), "resumes"
        ).dataset_url
        for preset, updates in UPDATES.items():
            runs = {"bare": [], "zero1": [], "zero2": []}
            for i in range(args.runs):  # interleaved, so that all three see the same machine load
                runs["bare"].append(bare_loop(data, preset, updates))
                for stage in (1, 2):
                    out = str(tmp / f"{preset}-z{stage}-{i}")
                    runs[f"zero{stage}"].append(ours(data, preset, stage, updates, out, address))
                    shutil.rmtree(out, ignore_errors=True)
            medians = {k: statistics.median(v) for k, v in runs.items()}
            results[preset] = {
                "updates_timed": updates,
                "runs_tokens_per_second": {k: [round(x) for x in v] for k, v in runs.items()},
                "median_tokens_per_second": {k: round(v) for k, v in medians.items()},
                "overhead_vs_bare": {
                    k: round(1 - medians[k] / medians["bare"], 3) for k in ("zero1", "zero2")
                },
            }
            print(f"{preset:6s} bare {medians['bare']:>9,.0f}  zero1 {medians['zero1']:>9,.0f}  "
                  f"zero2 {medians['zero2']:>9,.0f} tokens/s  overhead {results[preset]['overhead_vs_bare']}")  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    path = save("train_throughput", {"people": args.people, "runs": args.runs, "results": results})
    print(f"machine: {machine()}\nwrote {path}")


if __name__ == "__main__":
    main()
