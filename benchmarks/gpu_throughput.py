"""GPU training throughput and MFU: our DeepSpeed trainer vs a bare PyTorch loop, bf16, one GPU.

    python benchmarks/gpu_throughput.py --prepare DIR     # on any machine (Ray): shard the data
    python benchmarks/gpu_throughput.py --data DIR/resumes [--preset paper] [--updates 100]

For each token budget (16k and 64k job-years per update), in one run on one GPU:
- `bare`: the model in one process, bf16 autocast over fp32 weights, fused AdamW, the same
  loader and token budget;
- `bare+compile`: the same under `torch.compile(dynamic=True)` (what a compiled model would gain);
- `zero1`, `zero2`: `trainer.launch` under torchrun (1 process, NCCL, DeepSpeed bf16).
Tokens/s are job-year tokens (padding excluded) per second of update time after warm-up updates;
MFU is tokens/s x training FLOPs per token (6 x parameters + attention) over the GPU's dense bf16
peak. Also checks that scaled_dot_product_attention runs the flash kernel for the model's shapes.
Results go to benchmarks/results/gpu_throughput.json (or `--out`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, save  # noqa: E402

from data_shards.manifest import load_manifest  # noqa: E402
from data_shards.stream import CareerLoader, StreamConfig  # noqa: E402
from data_shards.vocab import Vocabulary  # noqa: E402
from trainer.config import TrainConfig, make_config  # noqa: E402
from trainer.context import model_for  # noqa: E402
from trainer.monitor import PEAK_FLOPS, flops_per_token  # noqa: E402

WARMUP_UPDATES = 10


def prepare(folder: str, people: int) -> None:
    from cluster.ray_session import connect_ray
    from data_shards.inputs import InputSpec
    from data_shards.shard import shard_dataset

    connect_ray(num_cpus=os.cpu_count() or 2)
    url = shard_dataset(
        InputSpec(format="synth", preset="resumes", people=people), folder, "resumes"
    ).dataset_url
    print(f"prepared {url}")


def _mean_padded_length(data: str, batches: int = 50) -> float:
    """Mean padded length T of the loader's batches, weighted by job-years (as training logs it):
    the attention term of the FLOP estimate depends on it."""
    loader = CareerLoader(data, StreamConfig(split="train", loop=False), num_workers=0)
    weighted = tokens = 0.0
    for _, batch in zip(range(batches), loader, strict=False):
        real = float(batch["lengths"].sum())
        weighted += real * batch["inputs"].shape[1]
        tokens += real
    return weighted / tokens


def _model(data: str, preset: str):
    """The model `career pretrain --preset PRESET` builds on this dataset."""
    vocab = Vocabulary.load(f"{data}/vocab.json")
    return model_for(TrainConfig(preset=preset), vocab, load_manifest(data))[0]


def flash_check(data: str, preset: str) -> dict:
    """Run one forward with SDPA restricted to the flash kernel: it raises if flash cannot run."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = _model(data, preset).cuda()
    batch = next(iter(CareerLoader(data, StreamConfig(split="valid", loop=False), num_workers=0)))
    names = ("inputs", "targets", *model.config.covariates)
    inputs = {k: batch[k].cuda() for k in names if k in batch}
    try:
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]), torch.autocast("cuda", torch.bfloat16):
            model(inputs)
        return {"flash_attention": True}
    except RuntimeError as error:  # the kernel refused these shapes or this device
        return {"flash_attention": False, "reason": str(error).splitlines()[0]}


def _optimizer(model) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        model.parameters(), lr=5e-4, betas=(0.9, 0.98), weight_decay=0.01, fused=True
    )


def _bf16_step(model, step_model, optimizer, inputs: dict, count: int) -> None:
    """One bare update: bf16 autocast forward (through `step_model`, maybe compiled), backward."""
    with torch.autocast("cuda", torch.bfloat16):
        logits, stay = step_model(inputs)
    logp = model.target_log_probs(logits, stay, inputs["inputs"], inputs["targets"])
    (-logp.sum() / count).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def bare(data: str, preset: str, tokens_per_update: int, updates: int, compile_: bool) -> float:
    torch.manual_seed(0)
    model = _model(data, preset).cuda()
    names = ("inputs", "targets", *model.config.covariates)
    optimizer = _optimizer(model)
    step_model = torch.compile(model, dynamic=True) if compile_ else model
    loader = iter(
        CareerLoader(
            data, StreamConfig(split="train", tokens_per_update=tokens_per_update), num_workers=2
        )
    )
    tokens = 0
    for update in range(WARMUP_UPDATES + updates):
        if update == WARMUP_UPDATES:
            torch.cuda.synchronize()
            start = time.perf_counter()
            tokens = 0
        batch = next(loader)
        inputs = {k: batch[k].cuda(non_blocking=True) for k in names if k in batch}
        count = int(batch["lengths"].sum())
        _bf16_step(model, step_model, optimizer, inputs, count)
        tokens += count
    torch.cuda.synchronize()
    return tokens / (time.perf_counter() - start)


def loader_only(data: str, tokens_per_update: int, updates: int, workers: int) -> float:
    """Job-years/s of the loader alone: the ceiling for any loop fed by it."""
    loader = iter(
        CareerLoader(
            data,
            StreamConfig(split="train", tokens_per_update=tokens_per_update),
            num_workers=workers,
        )
    )
    for _ in range(WARMUP_UPDATES):
        next(loader)
    start, tokens = time.perf_counter(), 0
    for _ in range(updates):
        tokens += int(next(loader)["lengths"].sum())
    return tokens / (time.perf_counter() - start)


def diagnose(data: str, preset: str, tokens_per_update: int, updates: int) -> dict:
    """Where an update's time goes: loader alone, model on preloaded batches, a profiler table."""
    from torch.profiler import ProfilerActivity, profile

    out = {
        f"loader_{w}_workers": round(loader_only(data, tokens_per_update, updates, w))
        for w in (1, 2, 6)
    }
    model = _model(data, preset).cuda()
    names = ("inputs", "targets", *model.config.covariates)
    optimizer = _optimizer(model)
    loader = iter(
        CareerLoader(data, StreamConfig(split="train", tokens_per_update=tokens_per_update), 2)
    )
    batches = []
    for _ in range(WARMUP_UPDATES + updates):
        batch = next(loader)
        batches.append(
            ({k: batch[k].cuda() for k in names if k in batch}, int(batch["lengths"].sum()))
        )

    def step(inputs, count):
        _bf16_step(model, model, optimizer, inputs, count)

    for inputs, count in batches[:WARMUP_UPDATES]:
        step(inputs, count)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for inputs, count in batches[WARMUP_UPDATES:]:
        step(inputs, count)
    torch.cuda.synchronize()
    out["preloaded_bare"] = round(
        sum(c for _, c in batches[WARMUP_UPDATES:]) / (time.perf_counter() - start)
    )
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for inputs, count in batches[WARMUP_UPDATES : WARMUP_UPDATES + 5]:
            step(inputs, count)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=12), flush=True)
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12), flush=True)
    return out


def ours(data: str, preset: str, tokens_per_update: int, updates: int, variant: str) -> float:
    """`trainer.launch` under torchrun, one process; tokens/s from its metrics.json.

    `variant`: zero{stage}, then -autocast (bf16-autocast precision) and/or -compile."""
    out = tempfile.mkdtemp(prefix="gpu-bench-")
    config = make_config(
        "pretrain",
        preset,
        ["loader_workers=2"],
        updates=WARMUP_UPDATES + updates,
        tokens_per_update=tokens_per_update,
        zero_stage=int(variant[4]),
        precision="bf16-autocast" if "-autocast" in variant else "bf16",
        compile="-compile" in variant,
        eval_every=10**6,
        checkpoint_every=10**6,
        log_every=50,
    )
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "1",
        "-m",
        "trainer.launch",
        "--data",
        data,
        "--out",
        out,
        "--config-json",
        json.dumps(config.to_dict()),
    ]
    try:
        subprocess.run(command, check=True)
        metrics = json.loads((Path(out) / "metrics.json").read_text())
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return metrics["tokens_per_second"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prepare", help="shard simulated resumes into this folder and stop")
    parser.add_argument("--people", type=int, default=100_000)
    parser.add_argument("--data", help="a sharded dataset (from --prepare)")
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--tokens", type=int, nargs="+", default=[16_000, 64_000])
    parser.add_argument("--updates", type=int, default=100, help="timed updates per measurement")
    parser.add_argument(
        "--variants",
        nargs="*",
        default=["bare", "zero1", "zero2", "bare+compile"],
        choices=[
            "bare",
            "zero1",
            "zero2",
            "bare+compile",
            "zero1-autocast",
            "zero1-autocast-compile",
            "zero2-autocast",
        ],
        help="what to measure (default: bare, zero1, zero2, bare+compile)",
    )
    parser.add_argument("--out", help="also write the results JSON here")
    parser.add_argument(
        "--diagnose",
        action="store_true",
        help="also time the loader alone and the model on preloaded batches, and print a profile",
    )
    args = parser.parse_args()
    if args.prepare:
        prepare(args.prepare, args.people)
        return
    if not args.data:
        parser.error("--data is required (or --prepare)")
    if not torch.cuda.is_available():
        sys.exit("no GPU: this benchmark measures the GPU path")
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_FLOPS.items() if k in name), None)
    model = _model(args.data, args.preset)
    seq_len = _mean_padded_length(args.data)
    flops = flops_per_token(model, seq_len)
    results: dict = {
        "device": name,
        "torch": torch.__version__,
        "preset": args.preset,
        "parameters": model.num_parameters(),
        "flops_per_token": flops,
        "mean_padded_length": seq_len,
        "peak_flops": peak,
        **flash_check(args.data, args.preset),
        "runs": {},
    }
    print(json.dumps(results), flush=True)
    if args.diagnose:
        for tokens in args.tokens:
            results[f"diagnosis_{tokens}"] = diagnose(args.data, args.preset, tokens, args.updates)
            print(json.dumps(results[f"diagnosis_{tokens}"]), flush=True)
    variants = args.variants
    for tokens in args.tokens if variants else []:
        row = {}
        for variant in variants:
            started = time.perf_counter()
            if variant.startswith("bare"):
                rate = bare(
                    args.data, args.preset, tokens, args.updates, variant.endswith("compile")
                )
            else:
                rate = ours(args.data, args.preset, tokens, args.updates, variant)
            row[variant] = {
                "tokens_per_second": round(rate),
                "mfu": round(rate * flops / peak, 4) if peak else None,
                "wall_seconds": round(time.perf_counter() - started, 1),
            }
            print(
                f"{tokens:>7,} tokens/update  {variant:13s} {rate:>12,.0f} tokens/s  "
                f"MFU {row[variant]['mfu']}",
                flush=True,
            )
            results["runs"][str(tokens)] = row
            if args.out:  # after every measurement: a run cut short keeps what it measured
                Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    payload = {"results": results, "host": machine()}
    path = save("gpu_throughput", payload)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
