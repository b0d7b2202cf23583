"""Sharding throughput: simulated resumes end to end, wall clock including Ray start-up.

    python benchmarks/shard_throughput.py [--people 1000000] [--runs 3] [--num-cpus 2]

Each run is a fresh `career shard --format synth` process (a new local Ray instance with
`--num-cpus` CPUs: generate -> validate -> count -> vocabulary -> encode -> tar -> sha256 -> write),
once to a local folder and once to a local S3 server (moto on 127.0.0.1). Reports the median.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, save  # noqa: E402
from _s3 import local_s3  # noqa: E402

CAREER = str(Path(sys.executable).with_name("career"))


def one_run(people: int, out: str, name: str, num_cpus: int, storage_options: dict | None) -> float:
    command = [
        CAREER,
        "shard",
        "--format",
        "synth",
        "--sim-preset",
        "resumes",
        "--people",
        str(people),
        "--out",
        out,
        "--name",
        name,
        "--num-cpus",
        str(num_cpus),
    ]
    if storage_options:
        command += ["--storage-options", json.dumps(storage_options)]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--people", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--num-cpus", type=int, default=2)
    args = parser.parse_args()
    results: dict = {}
    tmp = Path(tempfile.mkdtemp(prefix="shard-bench-"))
    try:
        local = [
            one_run(args.people, str(tmp / f"run{i}"), "resumes", args.num_cpus, None)
            for i in range(args.runs)
        ]
        manifest = json.loads((tmp / "run0" / "resumes" / "manifest.json").read_text())
        with local_s3("bench") as options:
            s3 = [
                one_run(args.people, "s3://bench/datasets", f"resumes{i}", args.num_cpus, options)
                for i in range(args.runs)
            ]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for where, times in (("local", local), ("s3", s3)):
        median = statistics.median(times)
        results[where] = {
            "runs_seconds": [round(t, 2) for t in times],
            "median_seconds": round(median, 2),
            "people_per_second": round(args.people / median),
        }
        print(
            f"{where:5s} {args.people / median:>10,.0f} people/s  (median {median:.1f} s of {times})"
        )
    rate = results["local"]["people_per_second"] / args.num_cpus
    results["bytes_per_token"] = manifest["extra"]["bytes_per_token"]
    results["tokens"] = manifest["totals"]["tokens"]
    results["projected_24M_on_32_cores_seconds"] = round(24e6 / (rate * 32))
    print(
        f"bytes per job-year token: {results['bytes_per_token']}; "
        f"projected 24M people on 32 cores: {results['projected_24M_on_32_cores_seconds']} s"
    )
    path = save(
        "shard_throughput", {"people": args.people, "num_cpus": args.num_cpus, "results": results}
    )
    print(f"machine: {machine()}\nwrote {path}")


if __name__ == "__main__":
    main()
