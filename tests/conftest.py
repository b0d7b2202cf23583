"""Shared fixtures: one real S3 HTTP endpoint (moto's server on 127.0.0.1) per test session.

Storage tests take the `store` fixture, parametrised over a local folder and that S3 server, so
every storage path is exercised against both.

`--cpu bf16|fp32` runs the whole suite as on a CPU with (or without) native bf16: every process
the suite starts (commands, torchrun and Ray workers) reads its CPU flags from a copy of such a
machine's /proc/cpuinfo (`CAREER_CPUINFO`), so `precision: auto` picks bf16-autocast (or fp32)
whatever the machine at hand is. Tests that assert fp32-level agreement pin their precision and
hold either way; `make test-bf16` is the suite as on a bf16 machine.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import BF16_CPU, FP32_CPU, new_bucket

# Never reach a real AWS account from a test, whatever the developer's environment holds.
for _name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
    os.environ.pop(_name, None)
os.environ["AWS_ACCESS_KEY_ID"] = "testing"
os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
# Anything that forgets its endpoint goes to a closed local port, never to AWS.
os.environ["AWS_ENDPOINT_URL"] = "http://127.0.0.1:9"


CPU_FILES = {"bf16": BF16_CPU["CAREER_CPUINFO"], "fp32": FP32_CPU["CAREER_CPUINFO"]}


def pytest_addoption(parser):
    parser.addoption(
        "--cpu",
        choices=("host", *CPU_FILES),
        default=os.environ.get("CAREER_TEST_CPU", "host"),
        help="run as on a CPU with native bf16 (bf16), without (fp32), or as this one is (host)",
    )


def pytest_configure(config):
    from trainer.accelerator import CPUINFO_ENV

    cpu = config.getoption("--cpu")
    if cpu != "host":  # before any fixture starts a process: they all inherit it
        os.environ[CPUINFO_ENV] = CPU_FILES[cpu]


def pytest_report_header(config):
    from trainer.config import TrainConfig

    resolved = TrainConfig().resolve(2, on_gpu=False)
    note = next(n for n in resolved.notes if n.startswith("precision auto"))
    return f"cpu: {config.getoption('--cpu')}; {note}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1 for the whole session; yields its endpoint URL."""
    port = _free_port()
    moto = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen(
        [str(moto), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("moto_server exited at start-up") from None
            time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError("moto_server did not start within 30 s")
    yield endpoint
    proc.terminate()
    proc.wait(timeout=10)


@dataclass
class Store:
    """A place to write test data: `url(name)` gives a fresh URL under it."""

    kind: str
    root: str
    storage_options: dict | None

    def url(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> Store:
    if request.param == "local":
        return Store("local", str(tmp_path), None)
    url, options = new_bucket(request.getfixturevalue("s3_endpoint"))
    return Store("s3", url, options)


@pytest.fixture(scope="session")
def ray_address():
    """One local Ray instance (2 CPUs, small object store) for the whole session; yields its address."""
    import ray

    from cluster.ray_session import connect_ray

    address = connect_ray(num_cpus=2, object_store_memory=512 * 2**20)
    yield address
    ray.shutdown()


@pytest.fixture(scope="module")
def single_process_group():
    """torch.distributed on one rank in this process (gloo), for one test module, then gone (the
    loader tests check behaviour without a process group). DeepSpeed keeps a clone of the first
    world group it sees (`deepspeed.utils.groups._WORLD_GROUP`), which would be dead in the next
    module's group ("Group ... is not registered"): it is forgotten with the group."""
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()
    groups = sys.modules.get("deepspeed.utils.groups")
    if groups is not None:
        groups._WORLD_GROUP = None


@pytest.fixture(scope="session")
def ray_cluster():
    """A head and two worker nodes for the whole session (the slow cluster tests share them); a
    test that loses a node adds one back before it ends."""
    from ray_cluster import start_cluster

    nodes = start_cluster(workers=2)
    yield nodes
    nodes.shutdown()
