"""What a lost worker costs: the time from its death to training again, and the updates lost.

On a Ray cluster of three nodes started on this machine (tests/ray_cluster.py), `career pretrain`
runs with a checkpoint every `--checkpoint-every` updates; once its first checkpoint is written
and a few more updates are done, one Ray Train worker is SIGKILLed. The driver's stderr is read
line by line with a clock: the time from the kill to "worker group restarted ... resumed from" is
the recovery (Ray Train notices the death, tears the group down, starts new workers, the process
group, the DeepSpeed engine, and loads the checkpoint). A SIGTERM to the driver (a preemption
notice) is timed the same way: the time to the checkpoint and the exit.

    python benchmarks/recovery.py            # figures -> benchmarks/results/recovery.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _common import machine, save  # noqa: E402
from ray_cluster import start_cluster  # noqa: E402

CAREER = str(Path(sys.executable).with_name("career"))


class Driver:
    """A `career` command whose stderr lines are kept with the time each arrived."""

    def __init__(self, args: list[str], cwd: Path):
        self.proc = subprocess.Popen(
            [CAREER, *args], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        self.lines: list[tuple[float, str]] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append((time.monotonic(), line.rstrip()))

    def first(self, text: str, after: float = 0.0) -> tuple[float, str] | None:
        return next(((t, line) for t, line in self.lines if t >= after and text in line), None)

    def wait(self, timeout: float = 1800) -> int:
        code = self.proc.wait(timeout=timeout)
        self.reader.join(timeout=10)
        return code


def latest_step(run: Path) -> int:
    pointer = run / "checkpoints" / "latest.json"
    return json.loads(pointer.read_text())["step"] if pointer.exists() else 0


def wait_for_step(run: Path, driver: Driver, step: int) -> int:
    while latest_step(run) < step:
        if driver.proc.poll() is not None:
            raise SystemExit("\n".join(line for _, line in driver.lines[-30:]))
        time.sleep(0.05)
    return latest_step(run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--updates", type=int, default=60)
    parser.add_argument("--checkpoint-every", type=int, default=20)
    parser.add_argument("--people", type=int, default=4000)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the cluster is shut down below

    cluster = start_cluster(workers=2)
    work = Path(tempfile.mkdtemp(prefix="career-recovery-"))
    ray = ["--ray-address", cluster.address, "--shared-fs"]  # one machine: its disk is shared
    try:
        subprocess.run(
            [CAREER, "shard", "--format", "synth", "--sim-preset", "resumes"]
            + ["--people", str(args.people), "--name", "resumes", "--out", "data", *ray],
            cwd=work,
            check=True,
            capture_output=True,
        )
        train = ["pretrain", "--data", "data/resumes", "--preset", args.preset]
        train += ["--updates", str(args.updates), *ray]
        train += [f"checkpoint_every={args.checkpoint_every}", f"eval_every={args.updates}"]

        # 1. A worker SIGKILLed a few updates after the first checkpoint.
        killed = Driver([*train, "--out", "killed"], work)
        wait_for_step(work / "killed", killed, args.checkpoint_every)
        time.sleep(2.0)  # some updates past the checkpoint: they are lost
        workers = cluster.worker_processes("RayTrainWorker")
        died = time.monotonic()
        workers[-1].send_signal(signal.SIGKILL)
        assert killed.wait() == 0, "\n".join(line for _, line in killed.lines[-30:])
        restarted = killed.first("worker group restarted after failure 1", after=died)
        metrics = json.loads((work / "killed" / "metrics.json").read_text())
        seconds_per_update = metrics["train_seconds"] / max(
            metrics["updates"] - metrics["resumed_from"], 1
        )

        # 2. A preemption notice (SIGTERM to the driver) at the same point.
        preempted = Driver([*train, "--out", "preempted"], work)
        at = wait_for_step(work / "preempted", preempted, args.checkpoint_every)
        time.sleep(2.0)
        noticed = time.monotonic()
        preempted.proc.send_signal(signal.SIGTERM)
        code = preempted.wait()
        stopped_after = time.monotonic() - noticed
        stopped_at = latest_step(work / "preempted")
    finally:
        cluster.shutdown()
        shutil.rmtree(work, ignore_errors=True)

    result = {
        "preset": args.preset,
        "nodes": 3,
        "workers": 2,
        "checkpoint_every": args.checkpoint_every,
        "worker_killed": {
            "seconds_to_training_again": round(restarted[0] - died, 1) if restarted else None,
            "resumed_from": metrics["resumed_from"],
            "failures_survived": metrics["failures_survived"],
            "seconds_per_update": round(seconds_per_update, 3),
        },
        "preempted": {
            "exit_status": code,
            "seconds_to_exit": round(stopped_after, 1),
            "checkpoint_step": stopped_at,
            "scheduled_checkpoint_before": at,
        },
        # What a lost worker costs at the default interval (1000 updates): on average half of
        # it, at worst all of it; a preemption notice costs none (a checkpoint at the next update).
        "lost_updates_at_default_interval": {"mean": 500, "worst": 1000},
        "lost_seconds_at_default_interval": {
            "mean": round(500 * seconds_per_update),
            "worst": round(1000 * seconds_per_update),
        },
    }
    path = save("recovery", result)
    print(json.dumps(result, indent=1))
    print(f"{machine()}\n-> {path}")


if __name__ == "__main__":
    main()
