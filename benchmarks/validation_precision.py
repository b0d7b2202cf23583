"""What the precision contract costs: validation in fp32 instead of the training precision.

    python benchmarks/validation_precision.py [--people 20000] [--preset paper] [--repeats 3]

Validation runs the package's fp32 master weights with autocast off (trainer.evaluation), so the
perplexity a run records is the one `career evaluate` gives its package. On a CPU with native bf16
training runs in bf16 autocast, and validating in bf16 would be faster. This measures, on one
rank, a whole validation split of simulated resumes scored both ways (the same batches the
training loop's validation reads), the tokens/s of each and their ratio, and the gap between the
two perplexities (what a bf16 validation would have recorded wrongly); and the time to load the
master weights into the fp32 replica (ZeRO 0 here: a copy; ZeRO 1-3 add one gather per weight).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, save  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--people", type=int, default=20_000)
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from data_shards.dataset import covariates_of, load_dataset
    from data_shards.inputs import InputSpec
    from data_shards.shard import ShardConfig, shard_dataset
    from data_shards.stream import CareerLoader, StreamConfig
    from trainer.accelerator import cpu_bf16_flags
    from trainer.models.registry import build
    from trainer.step import NLLModule

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as root:
        spec = InputSpec(format="synth", preset="resumes", people=args.people, seed=0)
        url = shard_dataset(spec, root, "resumes", ShardConfig()).dataset_url
        dataset = load_dataset(url)
        covariates = covariates_of(dataset.manifest)
        sizes = {name: dataset.vocab.size(name) for name in ("job", *covariates)}
        torch.manual_seed(0)
        module = NLLModule(build("career", sizes, args.preset, covariates=covariates)).eval()
        names = ("inputs", "targets", *covariates)
        stream = StreamConfig(split="valid", tokens_per_update=16_000, shuffle=False, loop=False)
        batches = [{k: b[k] for k in names} for b in CareerLoader(url, stream, num_workers=0)]

        def score(autocast: bool) -> tuple[float, float, float]:
            nll = tokens = 0.0
            start = time.perf_counter()
            with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=autocast):
                for batch in batches:
                    loss, count = module(batch)
                    nll, tokens = nll + float(loss), tokens + float(count)
            return time.perf_counter() - start, math.exp(nll / tokens), tokens

        results = {}
        for label, autocast in (("fp32 (the contract)", False), ("bf16 autocast", True)):
            score(autocast)  # warm-up
            runs = [score(autocast) for _ in range(args.repeats)]
            seconds = sorted(r[0] for r in runs)[len(runs) // 2]
            results[label] = {
                "seconds": round(seconds, 3),
                "perplexity": runs[0][1],
                "tokens_per_second": round(runs[0][2] / seconds),
            }
        replica = NLLModule(build("career", sizes, args.preset, covariates=covariates))
        start = time.perf_counter()
        with torch.no_grad():
            for (_, target), (_, source) in zip(
                replica.named_parameters(), module.named_parameters(), strict=True
            ):
                target.copy_(source.detach().float())
        load_seconds = time.perf_counter() - start
    fp32, bf16 = results["fp32 (the contract)"], results["bf16 autocast"]
    payload = {
        "preset": args.preset,
        "valid_tokens": int(batches and sum(int(b["targets"].ne(0).sum()) for b in batches)),
        "cpu_native_bf16": cpu_bf16_flags(),
        "results": results,
        "fp32_over_bf16_time": round(fp32["seconds"] / bf16["seconds"], 3),
        "bf16_perplexity_error": abs(bf16["perplexity"] / fp32["perplexity"] - 1),
        "replica_load_seconds": round(load_seconds, 4),
    }
    print(f"{machine()}; native bf16: {', '.join(payload['cpu_native_bf16']) or 'none'}")
    for label, row in results.items():
        print(
            f"{label:>22}: {row['seconds']:.2f} s, {row['tokens_per_second']:,} tokens/s, "
            f"perplexity {row['perplexity']:.5f}"
        )
    print(
        f"fp32 validation takes {payload['fp32_over_bf16_time']:.2f}x the bf16 time; bf16 "
        f"would have recorded a perplexity off by {payload['bf16_perplexity_error']:.2e} "
        f"(relative); loading the replica: {load_seconds * 1e3:.1f} ms"
    )
    print(f"written to {save('validation_precision', payload)}")


if __name__ == "__main__":
    main()
