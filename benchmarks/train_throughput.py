"""Training throughput on CPU: a bare PyTorch loop and `career pretrain`, lever by lever.

    python benchmarks/train_throughput.py [--people 50000] [--runs 2] [--presets paper]

One run measures, interleaved so that every setting sees the same machine load:

- bare loop (one process, 2 intra-op threads, AdamW, the same loader and 16,000 job-years per
  update): eager fp32 with torch's dropout on padded batches (what the public fairseq code does:
  the anchor), then with hash dropout, then also packed rows, then also `torch.compile`, and with
  bf16 autocast where the CPU has native bf16;
- our trainer (`career pretrain` through Ray Train with the settings a user gets): the previous
  CPU path (fp32, torch's dropout, padded), the default, the default on 1 worker x 2 threads
  instead of 2 workers x 1 thread, and the default with `compile=True`.

Tokens/s are job-year tokens per second of update time (the first updates of each run, which pay
one-off set-up and compilation, excluded; evaluation and checkpoints excluded); the table gives
the median over `--runs` and each setting's ratio to the anchor measured in the same run.
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
from collections.abc import Callable
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
from trainer.accelerator import cpu_bf16_flags  # noqa: E402
from trainer.config import TrainConfig  # noqa: E402
from trainer.context import model_for  # noqa: E402
from trainer.models import dropout as hash_dropout  # noqa: E402

CAREER = str(Path(sys.executable).with_name("career"))
UPDATES = {"tiny": 20, "small": 10, "paper": 6}  # timed updates per run
WARMUP = 2  # untimed first updates (compilation happens there)
ANCHOR = "bare: eager fp32, torch dropout, padded"


def bare_loop(
    data: str,
    preset: str,
    updates: int,
    *,
    hash_drop: bool = False,
    packed: bool = False,
    compiled: bool = False,
    bf16: bool = False,
) -> float:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    hash_dropout.use(hash_drop)
    vocab = Vocabulary.load(f"{data}/vocab.json")
    model = model_for(TrainConfig(preset=preset), vocab, load_manifest(data))[0].train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, betas=(0.9, 0.98), weight_decay=0.01)
    loader = iter(
        CareerLoader(data, StreamConfig(split="train", tokens_per_update=16_000), num_workers=0)
    )
    nll = torch.compile(model.nll, dynamic=True) if compiled else model.nll
    skip = () if packed else ("lengths",)  # without `lengths` the model keeps the padded layout
    tokens, seconds = 0, 0.0
    for update in range(updates + WARMUP):
        batch = {k: v for k, v in next(loader).items() if torch.is_tensor(v) and k not in skip}
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss_sum, count = nll(batch)
        (loss_sum / count).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if update >= WARMUP:
            seconds += time.perf_counter() - start
            tokens += int(count)
    hash_dropout.use(True)
    return tokens / seconds


def ours(data: str, preset: str, updates: int, out: str, ray_address: str, *extra: str) -> float:
    command = [
        CAREER,
        "pretrain",
        "--data",
        data,
        "--out",
        out,
        "--preset",
        preset,
        "--updates",
        str(updates + WARMUP),
        "--tokens-per-update",
        "16000",
        "--eval-every",
        "100000",
        "--checkpoint-every",
        "100000",
        "--ray-address",
        ray_address,
        *extra,
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"career pretrain {' '.join(extra)} failed:\n{done.stderr[-3000:]}")
    return json.loads((Path(out) / "metrics.json").read_text())["tokens_per_second"]


def settings(
    data: str, preset: str, updates: int, tmp: Path, address: str
) -> dict[str, Callable[[], float]]:
    def trainer(*extra: str) -> Callable[[], float]:
        def run() -> float:
            out = tmp / f"run-{time.monotonic_ns()}"
            try:
                return ours(data, preset, updates, str(out), address, *extra)
            finally:
                shutil.rmtree(out, ignore_errors=True)

        return run

    def bare(**levers: bool) -> Callable[[], float]:
        return lambda: bare_loop(data, preset, updates, **levers)

    table = {
        ANCHOR: bare(),
        "bare: + hash dropout": bare(hash_drop=True),
        "bare: + hash dropout + packed rows": bare(hash_drop=True, packed=True),
        "bare: + hash dropout + packed rows + compile": bare(
            hash_drop=True, packed=True, compiled=True
        ),
        "trainer: before (fp32, torch dropout, padded)": trainer(
            "--precision", "fp32", "hash_dropout=False", "pack_rows=False"
        ),
        "trainer: default": trainer(),
        "trainer: default, 1 worker x 2 threads": trainer("--workers", "1"),
        "trainer: default + compile": trainer("compile=True"),
    }
    if cpu_bf16_flags():  # emulated bf16 is slower than fp32: measured only where it is native
        table["bare: + hash dropout + packed rows, bf16 autocast"] = bare(
            hash_drop=True, packed=True, bf16=True
        )
        table["trainer: default, fp32"] = trainer("--precision", "fp32")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--people", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--presets", default="paper", help="comma-separated: tiny, small, paper")
    parser.add_argument(
        "--only",
        action="append",
        default=None,
        metavar="SETTING",
        help="measure only this setting (repeatable; the anchor always runs), e.g. "
        "'trainer: default'; results then go to train_throughput_subset.json",
    )
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
        for preset in args.presets.split(","):
            table = settings(data, preset, UPDATES[preset], tmp, address)
            if args.only:
                unknown = set(args.only) - set(table)
                if unknown:
                    raise SystemExit(f"--only {sorted(unknown)}: not among {sorted(table)}")
                table = {k: v for k, v in table.items() if k == ANCHOR or k in args.only}
            runs: dict[str, list[float]] = {name: [] for name in table}
            for _ in range(args.runs):  # interleaved: every setting sees the same machine load
                for name, measure in table.items():
                    runs[name].append(measure())
                    print(f"  {preset} {name}: {runs[name][-1]:,.0f} tokens/s", flush=True)
            medians = {name: statistics.median(v) for name, v in runs.items()}
            results[preset] = {
                "updates_timed": UPDATES[preset],
                "runs_tokens_per_second": {k: [round(x) for x in v] for k, v in runs.items()},
                "median_tokens_per_second": {k: round(v) for k, v in medians.items()},
                "ratio_to_anchor": {k: round(v / medians[ANCHOR], 3) for k, v in medians.items()},
            }
            print(f"\n{preset}: median job-year tokens/s (ratio to the anchor)")
            for name, value in medians.items():
                print(f"  {name:55s} {value:>8,.0f}  {value / medians[ANCHOR]:.2f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    path = save(
        "train_throughput_subset" if args.only else "train_throughput",
        {
            "people": args.people,
            "runs": args.runs,
            "cpu_bf16_flags": cpu_bf16_flags(),
            "results": results,
        },
    )
    print(f"machine: {machine()}, torch {torch.__version__}\nwrote {path}")


if __name__ == "__main__":
    main()
