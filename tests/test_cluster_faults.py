"""Faults on a multi-node Ray cluster started on this machine (`ray_cluster` in conftest.py):
what is recovered without a person, and that the result is the uninterrupted run's.

Every command joins the cluster with `--ray-address`, and writes to moto's S3 server: on more
than one node a local folder is not where every node can read it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest
import s3fs
import torch
from helpers import CAREER, career, new_bucket
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

#: A run long enough to be hit four times while it trains, checkpointing every 4 updates.
TRAIN = [
    "--preset",
    "tiny",
    "--updates",
    "40",
    "--tokens-per-update",
    "1500",
    "--zero-stage",
    "1",
    "--eval-every",
    "12",
    "checkpoint_every=4",
    "loader_workers=1",  # the default: a killed worker's loader process must go with it
    "cpu_threads=1",
    "precision=fp32",
]


class S3:
    """A bucket on the session's moto server, and the flags that reach it."""

    def __init__(self, endpoint: str):
        self.url, self.options = new_bucket(endpoint, prefix="faults")
        self.fs = s3fs.S3FileSystem(**self.options)
        self.flags = [
            "--storage-options",
            json.dumps({"client_kwargs": self.options["client_kwargs"]}),
        ]

    def json(self, *parts: str) -> dict:
        return json.loads(self.fs.cat_file("/".join([self.url, *parts]).removeprefix("s3://")))

    def exists(self, *parts: str) -> bool:
        return self.fs.exists("/".join([self.url, *parts]).removeprefix("s3://"))

    def weights(self, run: str) -> dict[str, torch.Tensor]:
        local = f"/tmp/{run.replace('/', '_')}-{time.time_ns()}.safetensors"
        self.fs.get_file(f"{self.url.removeprefix('s3://')}/{run}/package/model.safetensors", local)
        return load_file(local)


@pytest.fixture(scope="module")
def s3(s3_endpoint) -> S3:
    return S3(s3_endpoint)


@pytest.fixture(scope="module")
def resumes(s3, ray_cluster) -> str:
    """A small resume dataset, sharded on the cluster to S3 (small blocks: one per worker)."""
    url = f"{s3.url}/data"
    career(
        "shard",
        "--format",
        "synth",
        "--sim-preset",
        "resumes",
        "--people",
        "600",
        "--people-per-block",
        "64",
        "--blocks-per-shard",
        "2",
        "--name",
        "resumes",
        "--out",
        url,
        "--ray-address",
        ray_cluster.address,
        *s3.flags,
    )
    return f"{url}/resumes"


def _pretrain(s3: S3, data: str, out: str, address: str, *extra: str) -> list[str]:
    return [
        CAREER,
        "pretrain",
        "--data",
        data,
        "--out",
        f"{s3.url}/{out}",
        "--ray-address",
        address,
        *s3.flags,
        *TRAIN,
        *extra,
    ]


def _wait_for_checkpoint(s3: S3, run: str, proc: subprocess.Popen, step: int) -> int:
    """Block until the run's latest checkpoint is at least `step`; the step it is at."""
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before its checkpoint: {proc.stderr.read()}")
        if s3.exists(run, "checkpoints", "latest.json"):
            latest = s3.json(run, "checkpoints", "latest.json")["step"]
            if latest >= step:
                return latest
        time.sleep(0.05)
    raise AssertionError("no checkpoint within 300 s")


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _popen(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_preemption_notice_then_lost_workers_and_a_lost_node(s3, resumes, ray_cluster):
    """Four faults in one run, each after a checkpoint, and nobody's help but one rerun:

    1. a preemption notice (SIGTERM to the driver): the workers checkpoint after the update in
       progress (not at the next scheduled checkpoint), the command exits 143 within seconds;
    2. in its rerun, SIGKILL to a Ray Train worker, then 3. SIGTERM to another (its node being
       drained), then 4. the loss of a node holding one (its raylet and every process on it):
       each time a new worker group resumes from the last checkpoint by itself, on the nodes
       left.

    The run ends where an uninterrupted one did (torchrun on this machine, side by side: the
    launcher changes nothing), bit for bit."""
    whole = _popen(_pretrain(s3, resumes, "whole", ray_cluster.address, "--launcher", "torchrun"))
    command = _pretrain(s3, resumes, "faults", ray_cluster.address)
    proc = _popen(command)
    at = _wait_for_checkpoint(s3, "faults", proc, 4)
    noticed = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    took = time.monotonic() - noticed
    assert proc.returncode == 143, err[-3000:]
    assert took < 60, took
    stopped = s3.json("faults", "checkpoints", "latest.json")["step"]
    assert stopped <= at + 4, (at, stopped)  # within a few updates of the notice
    assert f"stopped on SIGTERM after update {stopped} with a checkpoint" in err, err[-2000:]
    assert not s3.exists("faults", "metrics.json")  # stopped, not finished

    # Each fault after a checkpoint the rerun itself wrote, 8 updates apart, the last one at
    # least 8 updates before the end (the notice lands after an update or a few, as the relay's
    # answer arrives).
    first = stopped - stopped % 4 + 4
    assert first + 16 <= 32, stopped
    proc = _popen(command)
    _wait_for_checkpoint(s3, "faults", proc, first)
    workers = ray_cluster.worker_processes("RayTrainWorker")
    assert len(workers) == 2, workers
    # The two workers are on two nodes (one CPU each): the run is spread over the cluster.
    assert len({ray_cluster.node_of(w) for w in workers}) == 2
    workers[-1].send_signal(signal.SIGKILL)
    _wait_for_checkpoint(s3, "faults", proc, first + 8)
    ray_cluster.worker_processes("RayTrainWorker")[0].send_signal(signal.SIGTERM)
    _wait_for_checkpoint(s3, "faults", proc, first + 16)
    on_workers = {ray_cluster.node_of(w) for w in ray_cluster.worker_processes("RayTrainWorker")}
    lost = next(n for n in ray_cluster.workers if n.node_id in on_workers)
    try:
        ray_cluster.kill_worker(lost)
        out, err = proc.communicate(timeout=420)
    finally:
        ray_cluster.add_worker()  # the next test gets three nodes again
    assert proc.returncode == 0, err[-3000:]
    assert f"resumed from step{stopped:07d}" in err, err[-3000:]
    # (A node lost in the middle of a save leaves a tag without its record: the restart says
    # it skipped it and resumes from the one before.)
    for failure in (1, 2, 3):
        assert f"worker group restarted after failure {failure}: " in err, err[-3000:]
    assert err.count("resumed from step") == 4, err[-3000:]
    metrics = s3.json("faults", "metrics.json")
    assert metrics["failures_survived"] == 3
    assert metrics["updates"] == 40 and metrics["resumed_from"] >= first + 16
    assert len(set(metrics["worker_nodes"])) == 2 and lost.node_id not in metrics["worker_nodes"]
    _, whole_err = whole.communicate(timeout=420)
    assert whole.returncode == 0, whole_err[-3000:]
    assert _same_weights(s3.weights("faults"), s3.weights("whole"))


def test_a_local_folder_is_refused_on_a_cluster_of_several_nodes(tmp_path, ray_cluster):
    """Workers on the other nodes would not see it; `--shared-fs` says every node mounts it."""
    shard = [
        "shard",
        "--format",
        "synth",
        "--sim-preset",
        "nlsy79",
        "--people",
        "60",
        "--name",
        "survey",
        "--out",
        "store",
        "--ray-address",
        ray_cluster.address,
    ]
    refused = career(*shard, check=False, cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "--out/--name is a local folder, but the Ray cluster has 3 nodes" in refused.stderr
    assert "--shared-fs" in refused.stderr and not (tmp_path / "store").exists()
    run = career(
        "run", "--store", "runs", "--ray-address", ray_cluster.address, check=False, cwd=tmp_path
    )
    assert run.returncode == 2 and "store is a local folder" in run.stderr, run.stderr[-2000:]
    assert not (tmp_path / "runs").exists()
    career(*shard, "--shared-fs", cwd=tmp_path)  # one machine: the folder is shared indeed
    assert (tmp_path / "store" / "survey" / "manifest.json").exists()


def test_a_node_lost_while_sharding_changes_no_byte(s3, ray_cluster):
    """A worker node lost in the middle of `career shard` (its tasks, and the block tables its
    read tasks held in its object store): Ray runs them again elsewhere, and the dataset is byte
    for byte the one sharded without the fault."""
    shard = [
        CAREER,
        "shard",
        "--format",
        "synth",
        "--sim-preset",
        "resumes",
        "--people",
        "6000",
        "--people-per-block",
        "128",
        "--blocks-per-shard",
        "2",
        "--ray-address",
        ray_cluster.address,
        *s3.flags,
    ]
    career(*shard[1:], "--out", f"{s3.url}/sharded", "--name", "whole")
    proc = subprocess.Popen(
        [*shard, "--out", f"{s3.url}/sharded", "--name", "lost"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while not s3.fs.glob(f"{s3.url.removeprefix('s3://')}/sharded/lost/_staging/done/*"):
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()
        time.sleep(0.05)
        s3.fs.invalidate_cache()
    busy = {ray_cluster.node_of(p) for p in ray_cluster.worker_processes("ray::")}
    lost = next((n for n in ray_cluster.workers if n.node_id in busy), ray_cluster.workers[0])
    try:
        ray_cluster.kill_worker(lost)
        out, err = proc.communicate(timeout=420)
    finally:
        ray_cluster.add_worker()
    assert proc.returncode == 0, err[-3000:]
    s3.fs.invalidate_cache()
    root = s3.url.removeprefix("s3://") + "/sharded"
    whole = sorted(p.removeprefix(f"{root}/whole/") for p in s3.fs.find(f"{root}/whole"))
    lost_files = sorted(p.removeprefix(f"{root}/lost/") for p in s3.fs.find(f"{root}/lost"))
    assert whole == lost_files
    for name in whole:
        a, b = s3.fs.cat_file(f"{root}/whole/{name}"), s3.fs.cat_file(f"{root}/lost/{name}")
        if name == "manifest.json":  # it names its own folder
            a, b = (json.loads(x) for x in (a, b))
            for m in (a, b):
                m.pop("name", None), m.pop("url", None)
        assert a == b, name
