"""Memory of a training worker (issue 27): peak resident memory of each Ray Train worker of
`career pretrain` by preset, and what it consists of.

    python benchmarks/worker_memory.py [--people 20000] [--presets tiny small paper]
        [--tokens 16000 8000] [--updates 30] [--allocators glibc jemalloc] [--work DIR]

For every preset x tokens per update x allocator, `career pretrain` runs on a local Ray instance
(2 workers, ZeRO-1, the CPU's default precision, one validation and one checkpoint at the end) on
simulated resumes while this script samples, every 0.5 s, /proc/PID/smaps_rollup of each Ray
Train worker (`ray::RayTrainWorker`) and of its DataLoader process (a forked child): the peak
RSS, USS and PSS of each, with each allocator: `glibc` (the default) and `jemalloc`
(`CAREER_ALLOCATOR=jemalloc`: `trainer.accelerator.allocator_env`).

The breakdown comes from the same training run replayed under torchrun (2 ranks, the real
`trainer.loop.train`, with Ray Train imported as in a Ray worker), marking the resident memory
after each phase: imports (torch, DeepSpeed, Ray Train, torch._dynamo, the trainer), the model
with the DeepSpeed engine and optimizer (and the dataset's manifest and vocabulary), and the
activations an update saves for its backward (`torch.autograd.graph.saved_tensors_hooks`: the
largest over the run's updates, weights excluded). "Other" is the Ray run's peak less those:
the backward's transient gradients, gloo's and Ray's buffers, and what the allocator holds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import career, save  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MB = 2**20


# ----------------------------------------------------------------------------- sampling
def rollup(pid: int | str) -> dict[str, int] | None:
    """Resident memory of a process (bytes): rss, uss, pss, anon, and its peak RSS (hwm)."""
    fields: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[-1] == "kB":
                    fields[parts[0].rstrip(":")] = int(parts[1]) * 1024
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM"):
                    fields["hwm"] = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    if "Rss" not in fields:
        return None
    return {
        "rss": fields["Rss"],
        "uss": fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0),
        "pss": fields.get("Pss", 0),
        "anon": fields.get("Anonymous", 0),
        "hwm": fields.get("hwm", fields["Rss"]),
    }


def sample_training(command: list[str], env: dict[str, str]) -> tuple[int, str, dict]:
    """Run `command`, sampling its Ray Train workers and their DataLoader children; (exit
    status, output tail, {worker pid: peaks})."""
    import psutil

    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    root = psutil.Process(proc.pid)
    peaks: dict[int, dict] = {}
    output = bytearray()
    os.set_blocking(proc.stdout.fileno(), False)
    while proc.poll() is None:
        output += proc.stdout.read() or b""
        try:
            procs = root.children(recursive=True)
        except psutil.Error:
            break
        names = {}
        for p in procs:
            try:
                names[p.pid] = (p.name(), " ".join(p.cmdline()[:1]), p.ppid())
            except psutil.Error:
                continue
        workers = {
            pid for pid, (_, cmd, _) in names.items() if cmd.startswith("ray::RayTrainWorker")
        }
        for pid in workers:
            parent = names[pid][2]
            role = "loader" if parent in workers else "worker"
            owner = parent if role == "loader" else pid
            memory = rollup(pid)
            if memory is None:
                continue
            entry = peaks.setdefault(owner, {"worker": {}, "loader": {}})[role]
            for key, value in memory.items():
                entry[key] = max(entry.get(key, 0), value)
            if role == "worker" and not entry.get("jemalloc"):
                with contextlib.suppress(OSError):
                    entry["jemalloc"] = int("libjemalloc" in Path(f"/proc/{pid}/maps").read_text())
        time.sleep(0.5)
    output += proc.stdout.read() or b""
    return proc.returncode, output.decode(errors="replace")[-3000:], peaks


def ray_run(data: Path, out: Path, preset: str, tokens: int, updates: int, allocator: str) -> dict:
    """One `career pretrain` on Ray, sampled; the peaks over its 2 workers (MB)."""
    command = [
        str(Path(sys.executable).with_name("career")),
        "pretrain",
        "--data",
        str(data),
        "--out",
        str(out),
        "--preset",
        preset,
        "--workers",
        "2",
        "--num-cpus",
        "2",
        "--zero-stage",
        "1",
        "--updates",
        str(updates),
        "--tokens-per-update",
        str(tokens),
        "--eval-every",
        str(updates),
        "--checkpoint-every",
        str(updates),
    ]
    env = {**os.environ}
    env["CAREER_ALLOCATOR"] = allocator
    for _attempt in range(3):  # a local Ray start times out (30 s) on a loaded machine
        subprocess.run(["rm", "-rf", str(out)], check=True)
        status, tail, peaks = sample_training(command, env)
        if status == 0:
            break
        if "timed out during startup" not in tail:
            raise SystemExit(f"career pretrain failed:\n{tail}")
    else:
        raise SystemExit(f"career pretrain could not start Ray:\n{tail}")
    metrics = json.loads((out / "metrics.json").read_text())
    workers = [p for p in peaks.values() if p["worker"]]
    if len(workers) != 2:
        raise SystemExit(f"expected 2 Ray Train workers, sampled {len(workers)}")

    def top(role: str, key: str) -> int:
        return round(max(w[role].get(key, 0) for w in workers) / MB)

    return {
        "worker_peak_rss_mb": top("worker", "hwm"),
        "worker_peak_uss_mb": top("worker", "uss"),
        "worker_peak_pss_mb": top("worker", "pss"),
        "loader_peak_rss_mb": top("loader", "rss"),
        "loader_peak_uss_mb": top("loader", "uss"),
        "loader_peak_pss_mb": top("loader", "pss"),
        "pair_peak_pss_mb": round(
            max(w["worker"].get("pss", 0) + w["loader"].get("pss", 0) for w in workers) / MB
        ),
        "jemalloc": all(w["worker"].get("jemalloc") for w in workers),
        "tokens_per_second": metrics["tokens_per_second"],
        "precision": metrics["precision"]["training"],
    }


# ----------------------------------------------------------------------------- breakdown
def probe_run(data: Path, out: Path, preset: str, tokens: int, updates: int, allocator: str):
    """The run replayed under torchrun with phase marks (`_probe`); rank 0's marks."""
    from trainer.accelerator import allocator_env

    env = {k: v for k, v in os.environ.items() if k not in ("CAREER_ALLOCATOR", "LD_PRELOAD")}
    if allocator == "jemalloc":
        env.update(allocator_env("jemalloc"))
    env.update({"DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO)})
    subprocess.run(["rm", "-rf", str(out)], check=True)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            __file__,
            "--probe",
            str(data),
            str(out),
            preset,
            str(tokens),
            str(updates),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"probe failed:\n{done.stderr[-3000:]}")
    ranks = [json.loads(Path(f"{out}.rank{r}.json").read_text()) for r in (0, 1)]
    marks = {m["phase"]: m for m in ranks[0]["marks"]}
    imports = max(r["marks"][0]["rss"] for r in ranks if r["marks"][0]["phase"] == "imports")
    started = max({m["phase"]: m for m in r["marks"]}["engine"]["rss"] for r in ranks)
    return {
        "imports_mb": imports,
        "model_optimizer_mb": started - imports,
        "activations_mb": max(r["saved_mb"] for r in ranks),
        "largest_batch": ranks[0]["largest_batch"],
        "probe_peak_rss_mb": max(m["hwm"] for r in ranks for m in r["marks"]),
        "probe_marks_rank0": list(marks.values()),
    }


def _probe(data: str, out: str, preset: str, tokens: int, updates: int) -> None:
    """One torchrun rank: the real training loop with memory marks at its phases (MB)."""
    marks: list[dict] = []

    def mark(phase: str, **extra) -> None:
        memory = rollup("self")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak: the next mark's hwm is the peak of its phase
        marks.append({"phase": phase, **{k: round(v / MB) for k, v in memory.items()}, **extra})

    import ray.train.torch  # noqa: F401  (what a Ray Train worker has imported)
    import torch
    import torch._dynamo  # noqa: F401  (DeepSpeed's engine and AdamW import it)

    import trainer.loop as loop
    from trainer import engine as ds_engine
    from trainer.config import make_config

    mark("imports")
    largest = {"saved": 0, "batch": None}

    def marked(name, fn):
        def call(*args, **kwargs):
            result = fn(*args, **kwargs)
            mark(name)
            return result

        return call

    loop._start = marked("engine", loop._start)
    run_update = loop.run_update

    def update(engine, micro, info, names):
        weights = {p.untyped_storage().data_ptr() for p in engine.module.parameters()}
        saved: dict[int, int] = {}

        def pack(tensor):
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in weights:
                saved[storage.data_ptr()] = storage.nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            result = run_update(engine, micro, info, names)
        total = sum(saved.values())
        if total > largest["saved"]:
            largest["saved"] = total
            largest["batch"] = list(micro[0]["inputs"].shape)
        mark("update")
        return result

    loop.run_update = update
    config = make_config(
        "pretrain",
        preset=preset,
        tokens_per_update=tokens,
        updates=updates,
        zero_stage=1,
        eval_every=updates,
        checkpoint_every=updates,
    )
    ds_engine.init_distributed()
    loop.train(config, data, out)
    mark("end")
    rank = int(os.environ.get("RANK", "0"))
    Path(f"{out}.rank{rank}.json").write_text(
        json.dumps(
            {
                "marks": marks,
                "saved_mb": round(largest["saved"] / MB),
                "largest_batch": largest["batch"],
            }
        )
    )
    os._exit(0)  # as trainer.launch does: no teardown of gloo and DeepSpeed


# ----------------------------------------------------------------------------- main
def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--probe":
        data, out, preset, tokens, updates = sys.argv[2:7]
        _probe(data, out, preset, int(tokens), int(updates))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--people", type=int, default=20_000)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small", "paper"])
    parser.add_argument("--tokens", nargs="+", type=int, default=[16_000, 8_000])
    parser.add_argument("--updates", type=int, default=30)
    parser.add_argument("--allocators", nargs="+", default=["glibc", "jemalloc"])
    parser.add_argument("--no-breakdown", action="store_true", help="the Ray runs only")
    parser.add_argument("--work", default="/tmp/worker_memory")
    args = parser.parse_args()
    work = Path(args.work)
    data = work / "data" / "resumes"
    if not (data / "manifest.json").exists():
        career(
            "shard",
            "--format",
            "synth",
            "--sim-preset",
            "resumes",
            "--people",
            str(args.people),
            "--out",
            str(work / "data"),
            "--name",
            "resumes",
            "--num-cpus",
            "2",
        )
    bare = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os; os.environ['DS_ACCELERATOR'] = 'cpu'; import torch, deepspeed; "
            "print(open('/proc/self/status').read())",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    bare_rss = next(int(ln.split()[1]) for ln in bare.splitlines() if ln.startswith("VmRSS"))
    rows = []
    for preset in args.presets:
        for tokens in args.tokens:
            row: dict = {"preset": preset, "tokens_per_update": tokens}
            for allocator in args.allocators:
                began = time.perf_counter()
                row[allocator] = ray_run(
                    data, work / "run", preset, tokens, args.updates, allocator
                )
                print(
                    preset,
                    tokens,
                    allocator,
                    row[allocator],
                    f"{time.perf_counter() - began:.0f} s",
                    flush=True,
                )
            if not args.no_breakdown:
                row["breakdown"] = probe_run(
                    data, work / "probe", preset, tokens, args.updates, args.allocators[-1]
                )
                print(
                    preset,
                    tokens,
                    {k: v for k, v in row["breakdown"].items() if k != "probe_marks_rank0"},
                    flush=True,
                )
            rows.append(row)
    path = save(
        "worker_memory",
        {
            "people": args.people,
            "updates": args.updates,
            "workers": 2,
            "zero_stage": 1,
            "bare_import_torch_deepspeed_rss_mb": round(bare_rss / 1024),
            "rows": rows,
        },
    )
    print(f"bare `import torch, deepspeed`: {bare_rss / 1024:.0f} MB RSS")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
