"""Loader throughput at the DataLoader's output (one worker): local shards vs the local S3 server.

    python benchmarks/loader_throughput.py [--people 1000000] [--runs 3]

Shards a simulated resume corpus once to a local folder and once to moto's S3 server (same
bytes), then reads the train split for one epoch through `CareerLoader` with one DataLoader
worker, alternating local and S3 runs so both see the same machine load. Tokens are job-years
(padding excluded); the median of `--runs` runs is reported with the S3/local ratio.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, save  # noqa: E402
from _s3 import local_s3  # noqa: E402

from cluster.ray_session import connect_ray  # noqa: E402
from data_shards.inputs import InputSpec  # noqa: E402
from data_shards.shard import shard_dataset  # noqa: E402
from data_shards.stream import CareerLoader, StreamConfig  # noqa: E402


def epoch(url: str, options: dict | None) -> tuple[float, int, float]:
    loader = CareerLoader(
        url, StreamConfig(split="train", loop=False), num_workers=1, storage_options=options
    )
    start = time.perf_counter()
    tokens = sum(int(batch["lengths"].sum()) for batch in loader)
    return time.perf_counter() - start, tokens, loader.padding_share


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--people", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    connect_ray(num_cpus=2)
    tmp = Path(tempfile.mkdtemp(prefix="loader-bench-"))
    try:
        spec = InputSpec(format="synth", preset="resumes", people=args.people)
        local = shard_dataset(spec, str(tmp), "resumes").dataset_url
        with local_s3("bench") as options:
            remote = shard_dataset(
                spec, "s3://bench/datasets", "resumes", storage_options=options
            ).dataset_url
            runs = {"local": [], "s3": []}
            for _ in range(args.runs):
                runs["local"].append(epoch(local, None))
                runs["s3"].append(epoch(remote, options))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    results = {}
    for where, measured in runs.items():
        seconds = statistics.median(r[0] for r in measured)
        tokens = measured[0][1]
        results[where] = {
            "runs_seconds": [round(r[0], 3) for r in measured],
            "tokens": tokens,
            "tokens_per_second": round(tokens / seconds),
            "padding_share": round(measured[0][2], 4),
        }
        print(
            f"{where:5s} {tokens / seconds:>12,.0f} tokens/s  (median of {args.runs}; padding {measured[0][2]:.3f})"
        )
    ratio = results["local"]["tokens_per_second"] / results["s3"]["tokens_per_second"]
    results["local_over_s3"] = round(ratio, 3)
    print(f"S3 is {ratio:.2f}x slower than local")
    path = save("loader_throughput", {"people": args.people, "num_workers": 1, "results": results})
    print(f"machine: {machine()}\nwrote {path}")


if __name__ == "__main__":
    main()
