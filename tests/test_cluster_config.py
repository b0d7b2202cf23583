"""ray_cluster.yaml, the AWS cluster-launcher config, checked offline by Ray's own launcher code.

`ray up` turns a config into the cluster's with `prepare_config` (Ray's AWS defaults merged in,
setup commands merged per node kind, per-type worker bounds filled), then asks the provider to
autodetect node resources (an EC2 call), then runs `validate_config` (ray-schema.json plus its
cross-field checks), then bootstraps AWS (IAM, subnets, key pair: network). Here the two offline
steps run, in that order, on the file as `ray up` would load it; the config declares every node
type's resources, so the schema's demand for them holds without the autodetection. Broken copies
must be rejected, so these checks are shown to bite. No Ray instance is started, nothing is sent.
"""

from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import check_legacy_fields, prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
CONFIG_PATH = ROOT / "ray_cluster.yaml"
# What each instance type the config uses has (vCPUs, GPUs): declared resources must not exceed it.
INSTANCES = {"m7i.2xlarge": (8, 0), "c7i.16xlarge": (64, 0), "p5.48xlarge": (192, 8)}
CREDENTIAL_KEY = re.compile(r"access_?key|secret|token|passw(or)?d|credential", re.IGNORECASE)
CREDENTIAL_TEXT = re.compile(
    r"\b(AKIA|ASIA)[0-9A-Z]{16}\b|aws_access_key_id|aws_secret_access_key|-----BEGIN",
    re.IGNORECASE,
)
DASHBOARD_HOST = re.compile(r"--dashboard-host[= ](\S+)")
RAY_PIN = re.compile(r'"?ray\[([\w,]+)\]==([\w.]+)"?')


def load() -> dict[str, Any]:
    return yaml.safe_load(CONFIG_PATH.read_text())


def ray_checked(config: dict[str, Any]) -> dict[str, Any]:
    """The config `ray up` would go on with (before its AWS calls); raises where `ray up` would."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    check_legacy_fields(prepared)  # the AWS bootstrap's first, offline, step
    return prepared


def bound_errors(prepared: dict[str, Any]) -> list[str]:
    """Worker bounds Ray accepts but that make no sense (Ray only checks the sum of min_workers
    against the global max_workers)."""
    return [
        f"{name}: min_workers {kind['min_workers']} > max_workers {kind['max_workers']}"
        for name, kind in prepared["available_node_types"].items()
        if not 0 <= kind["min_workers"] <= kind["max_workers"]
    ]


def credential_keys(node: Any, path: str = "") -> list[str]:
    """Every key, at any depth, whose name looks like it holds a secret."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}.{key}" if path else str(key)
            if CREDENTIAL_KEY.search(str(key)):
                found.append(where)
            found += credential_keys(value, where)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            found += credential_keys(item, f"{path}[{i}]")
    return found


def head_start_command(config: dict[str, Any]) -> str:
    (command,) = [c for c in config["head_start_ray_commands"] if "ray start --head" in c]
    return command


def dashboard_host(config: dict[str, Any]) -> str | None:
    match = DASHBOARD_HOST.search(head_start_command(config))
    return match.group(1) if match else None


def worker_types(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: kind
        for name, kind in config["available_node_types"].items()
        if name != config["head_node_type"]
    }


def test_ray_accepts_the_config():
    prepared = ray_checked(load())
    assert prepared["provider"]["type"] == "aws"
    assert bound_errors(prepared) == []
    # The merge `ray up` does: what each kind of node really runs holds the common setup.
    assert prepared["head_setup_commands"] == load()["setup_commands"]
    assert prepared["worker_setup_commands"] == load()["setup_commands"]


def _misspelled_top_key(c):
    c["max_worker"] = c.pop("max_workers")


def _misspelled_node_type_key(c):
    kind = c["available_node_types"]["gpu_h100x8"]
    kind["min_worker"] = kind.pop("min_workers")


def _misspelled_auth_key(c):
    c["auth"]["ssh_usr"] = c["auth"].pop("ssh_user")


def _undeclared_head_type(c):
    c["head_node_type"] = "head_node"


def _min_workers_over_global_max(c):
    c["available_node_types"]["cpu_shard"]["min_workers"] = c["max_workers"] + 1


def _fractional_gpu_resource(c):
    c["available_node_types"]["gpu_h100x8"]["resources"]["GPU"] = 0.5


def _resources_left_out(c):
    del c["available_node_types"]["cpu_shard"]["resources"]


@pytest.mark.parametrize(
    ("breakage", "error", "message"),
    [
        (_misspelled_top_key, jsonschema.ValidationError, "'max_worker' was unexpected"),
        (_misspelled_node_type_key, jsonschema.ValidationError, "'min_worker' was unexpected"),
        (_misspelled_auth_key, jsonschema.ValidationError, "'ssh_usr' was unexpected"),
        (_undeclared_head_type, ValueError, "must be one of `available_node_types`"),
        (_min_workers_over_global_max, ValueError, "smaller than the sum of `min_workers`"),
        (_fractional_gpu_resource, jsonschema.ValidationError, "is not of type 'integer'"),
        (_resources_left_out, jsonschema.ValidationError, "'resources' is a required property"),
    ],
)
def test_ray_rejects_a_broken_copy(breakage, error, message):
    broken = load()
    breakage(broken)
    with pytest.raises(error, match=re.escape(message)):
        ray_checked(broken)


def test_worker_bounds_are_consistent_and_a_broken_copy_is_caught():
    config = load()
    assert config["max_workers"] >= 1
    assert config["idle_timeout_minutes"] > 0
    for name, kind in worker_types(config).items():
        assert 1 <= kind["max_workers"] <= config["max_workers"], name
    assert sum(k["max_workers"] for k in worker_types(config).values()) <= config["max_workers"]
    broken = load()
    broken["available_node_types"]["gpu_h100x8"]["min_workers"] = 5  # max_workers is 4
    assert bound_errors(ray_checked(broken)) == ["gpu_h100x8: min_workers 5 > max_workers 4"]


def test_node_types_head_gpu_and_sharding():
    config = load()
    kinds = config["available_node_types"]
    for name, kind in kinds.items():
        instance = kind["node_config"]["InstanceType"]
        assert instance in INSTANCES, f"{name}: add {instance}'s vCPUs and GPUs to INSTANCES"
        vcpus, gpus = INSTANCES[instance]
        assert kind["resources"].get("CPU", 0) <= vcpus, name
        assert kind["resources"].get("GPU", 0) == gpus, name
        assert kind["node_config"]["ImageId"], name  # Ray's default AMI is an Ubuntu 18.04 one

    head = kinds[config["head_node_type"]]
    assert head["max_workers"] == 0 and "GPU" not in head["resources"]

    gpu = {n: k for n, k in worker_types(config).items() if k["resources"].get("GPU", 0) > 0}
    assert len(gpu) == 1, gpu
    (gpu_kind,) = gpu.values()
    assert gpu_kind["node_config"]["InstanceType"].startswith("p5")  # 8x H100 class
    assert gpu_kind["resources"]["GPU"] == 8
    assert gpu_kind["resources"]["accelerator_type:H100"] == 1
    assert gpu_kind["min_workers"] == 0  # no idle 8-GPU node when nothing runs

    cpu = {n: k for n, k in worker_types(config).items() if not k["resources"].get("GPU")}
    assert len(cpu) == 1, cpu
    (cpu_kind,) = cpu.values()
    assert re.fullmatch(r"[cm]7i\.\w+", cpu_kind["node_config"]["InstanceType"])
    assert cpu_kind["resources"]["CPU"] > 0


def test_no_credentials_anywhere():
    text = CONFIG_PATH.read_text()
    config = load()
    # file_mounts maps node paths to local paths (the token travels as a file, by SSH): its keys
    # are paths, not settings, and its values must be paths too, never an inline value.
    mounts = config.pop("file_mounts")
    assert credential_keys(config) == []
    assert all(isinstance(v, str) and v.startswith((".", "~", "/")) for v in mounts.values())
    assert not CREDENTIAL_TEXT.search(text)
    # The detectors see what they are for.
    broken = load()
    broken.pop("file_mounts")
    broken["provider"]["aws_credentials"] = {"aws_session_token": "x"}
    broken["available_node_types"]["head"]["node_config"]["UserData"] = {"db_password": "x"}
    assert credential_keys(broken) == [
        "provider.aws_credentials",
        "provider.aws_credentials.aws_session_token",
        "available_node_types.head.node_config.UserData.db_password",
    ]
    assert CREDENTIAL_TEXT.search(text + "\n# AKIAIOSFODNN7EXAMPLE")


def test_dashboard_only_on_loopback_and_the_head_autoscales():
    config = load()
    assert dashboard_host(config) == "127.0.0.1"
    for command in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        assert "0.0.0.0" not in command, command
    head = head_start_command(config)
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    assert any("--address=$RAY_HEAD_IP:6379" in c for c in config["worker_start_ray_commands"])
    assert "ray dashboard ray_cluster.yaml" in CONFIG_PATH.read_text()  # how users reach it
    broken = load()
    broken["head_start_ray_commands"] = [
        c.replace("--dashboard-host=127.0.0.1", "--dashboard-host=0.0.0.0")
        for c in broken["head_start_ray_commands"]
    ]
    assert dashboard_host(broken) == "0.0.0.0"


def test_setup_commands_install_this_project():
    config = load()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    commands = ray_checked(config)["worker_setup_commands"]
    installs = [
        m for c in commands if (m := re.search(r"\bcd (\S+) && .*\bpip install .*-e \.(\s|$)", c))
    ]
    assert len(installs) == 1, commands
    remote = installs[0].group(1)
    # The folder it installs from is the one file_mounts fills from this repository.
    assert remote in config["file_mounts"]
    assert (ROOT / config["file_mounts"][remote]).resolve() == ROOT
    assert ".gitignore" in config["rsync_filter"]  # .venv and career_run/ stay behind
    # The Python check matches the project's floor.
    floor = re.fullmatch(r">=(\d+)\.(\d+)", pyproject["project"]["requires-python"])
    assert floor, pyproject["project"]["requires-python"]
    assert any(f"sys.version_info >= ({floor[1]}, {floor[2]})" in c for c in commands)


def test_cluster_ray_is_the_launchers_ray():
    """`ray up` and the cluster must run one Ray version; the pin's extras are the project's."""
    pins = [m for c in load()["setup_commands"] for m in RAY_PIN.finditer(c)]
    assert len(pins) == 1, pins
    extras, version = pins[0].groups()
    assert version == ray.__version__
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"ray[{extras}]" in dependencies


def test_ray_token_authentication_on_every_node():
    """Every node gets the user's token file and starts Ray with RAY_AUTH_MODE=token."""
    config = load()
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    for command in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        if "ray start" in command:
            assert "RAY_AUTH_MODE=token ray start" in command, command
