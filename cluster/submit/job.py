"""`career submit` and `career jobs`: any `career` command as a job on a Ray cluster (Ray Jobs API).

    career submit [--address http://HEAD:8265] [--working-dir .] [--no-wait] -- career shard …
    career jobs list | status ID | logs ID [--follow] | stop ID

`submit` ships the project folder (`--working-dir`, without `.venv`, `.git`, caches and run
outputs: runtime_env `excludes`, on top of the folder's `.gitignore`, which Ray also honours) to
the cluster, runs the command there, prints the job id as the first line of stdout, then follows
the job's logs until it ends (`--no-wait`: only the id). Its exit code is the job's: 0 if
SUCCEEDED, the command's own exit code if it failed (2: bad input), 1 if it was stopped.

Only `career` commands are submitted: the entrypoint is `career SUBCOMMAND …`, quoted argument by
argument (no shell syntax reaches the cluster). A command that takes `--ray-address` is given
`--ray-address auto` unless it names one, so that it joins the cluster its job runs on instead of
starting a Ray instance of its own. The job runs in a copy of the working dir on the cluster:
local paths in the command must be absolute paths that exist there (or object-store URLs).

Token authentication (Ray >= 2.52): with `RAY_AUTH_MODE=token`, the token is read as Ray reads it,
from `RAY_AUTH_TOKEN`, else the file `RAY_AUTH_TOKEN_PATH` names, else `~/.ray/auth_token`, and
sent as `Authorization: Bearer …` on every request, the log websocket included (what Ray's
`JobSubmissionClient` would add itself; passing it explicitly lets us name its source and keep it
out of every message). The token is never printed, logged or put into the job's environment; a
missing or refused token (HTTP 401/403) is exit 2 with what to do.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from cluster import flags
from cluster.settings import RaySettings
from cluster.submit.client import (
    Cluster,
    ClusterError,
    ClusterSettings,
    connect,
    exit_code_of,
    follow_logs,
    say,
)

#: What never travels to the cluster (gitignore-style patterns, relative to the working dir).
EXCLUDES = (
    ".venv",
    "venv",
    ".git",
    "__pycache__",
    "*.pyc",
    ".pytest_cache",
    ".ruff_cache",
    ".mypy_cache",
    ".hypothesis",
    "*.egg-info",
    "build",
    "dist",
    "career_run",
    "checkpoints",
    "*.tar",
    "*.safetensors",
    "*.pt",
    "*.parquet",
)
#: Commands that are not submitted (they talk to the cluster themselves).
NOT_SUBMITTED = ("submit", "jobs")


# ----------------------------------------------------------------------------- settings
@dataclass(kw_only=True)
class SubmitSettings:
    """Run a career command on a Ray cluster as a job (Ray Jobs API): the project folder is shipped
    with it, the job id printed, and its logs followed until it ends. Exit code: the job's (0 if it
    SUCCEEDED). Paths in the command must be absolute (the job runs in a copy of --working-dir) or
    object-store URLs. Example: career submit --address http://127.0.0.1:8265 -- career shard
    --format synth --sim-preset nlsy79 --out s3://bucket/datasets --name nlsy79"""

    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    working_dir: str = flags.option(
        ".",
        help="the folder shipped to the cluster as the job's working dir",
        metavar="DIR",
        path=True,
    )
    exclude: tuple[str, ...] = flags.option(
        (),
        help="more gitignore-style patterns left out of the working dir (comma-separated; "
        f"always left out: {', '.join(EXCLUDES)})",
        metavar="PATTERNS",
    )
    no_wait: bool = flags.option(False, help="print the job id and return; do not follow the logs")
    #: `career SUBCOMMAND …`, after `--` (added by `add_submit_flags`, not generated)
    entrypoint: list[str] = field(default_factory=list, metadata={"skip": True})

    def __post_init__(self) -> None:
        if self.entrypoint[:1] == ["--"]:
            self.entrypoint = self.entrypoint[1:]
        if not os.path.isdir(self.working_dir):
            raise ClusterError(f"--working-dir {self.working_dir} is not a folder")

    def paths_read(self) -> dict[str, str | None]:
        return {"--working-dir": self.working_dir}

    def paths_written(self) -> dict[str, str | None]:
        return {}


def add_submit_flags(parser: argparse.ArgumentParser) -> None:
    parser.usage = (
        "%(prog)s [-h] [--address URL] [--working-dir DIR] [--exclude PATTERNS] [--no-wait] "
        "-- career COMMAND ..."
    )
    flags.add_flags(parser, SubmitSettings)
    parser.add_argument(
        "entrypoint",
        nargs=argparse.REMAINDER,
        metavar="-- career COMMAND ...",
        help="the career command to run on the cluster, after --",
    )


def submit_settings(namespace: argparse.Namespace) -> SubmitSettings:
    return flags.build(SubmitSettings, namespace, entrypoint=list(namespace.entrypoint))


# ----------------------------------------------------------------------------- the entrypoint
def takes_ray_address(settings: type) -> bool:
    """Whether a command's settings compose `RaySettings` (it has a `--ray-address` flag)."""
    hints = typing.get_type_hints(settings)
    for f in dataclasses.fields(settings):
        kinds = typing.get_args(hints[f.name]) or (hints[f.name],)  # X | None: X
        if any(k is RaySettings or (flags.is_settings(k) and takes_ray_address(k)) for k in kinds):
            return True
    return False


class HasSettings(typing.Protocol):
    settings: type


def entrypoint_of(argv: Sequence[str], commands: Mapping[str, HasSettings]) -> str:
    """The job's shell command for `career SUBCOMMAND …` (`commands`: the CLI's, each with its
    settings class); ClusterError (exit 2) for anything else, before the cluster is contacted."""
    argv = list(argv)
    example = "e.g. career submit -- career shard --format synth --sim-preset nlsy79 ..."
    if not argv:
        raise ClusterError(f"no command to submit: give one after --, {example}")
    if argv[0] != "career":
        raise ClusterError(
            f"only career commands can be submitted, not {shlex.join(argv[:1])!s}: "
            f"the entrypoint must start with `career`, {example}"
        )
    submittable = sorted(set(commands) - set(NOT_SUBMITTED))
    if len(argv) < 2 or argv[1] not in submittable:
        what = f"unknown career command {argv[1]!r}" if len(argv) > 1 else "no career command"
        raise ClusterError(f"{what} to submit; choose from {', '.join(submittable)}")
    name, rest = argv[1], argv[2:]
    given = any(a == "--ray-address" or a.startswith("--ray-address=") for a in rest)
    if takes_ray_address(commands[name].settings) and not given and "--help" not in rest:
        rest = ["--ray-address", "auto", *rest]
    return shlex.join(["career", name, *rest])


def _ended(cluster: Cluster, job_id: str, command: str) -> int:
    info = cluster.info(job_id)
    status = str(info.status.value)
    code = exit_code_of(info)
    if code == 0:
        say(f"career {command}: job {job_id} SUCCEEDED")
    else:
        reason = cluster.mask((info.message or "").strip())
        say(f"career {command}: error: job {job_id} {status}" + (f": {reason}" if reason else ""))
    return code


def run_submit(settings: SubmitSettings, commands: Mapping[str, HasSettings]) -> int:
    entrypoint = entrypoint_of(settings.entrypoint, commands)
    cluster = connect(settings.cluster.address)
    runtime_env = {"working_dir": settings.working_dir, "excludes": [*EXCLUDES, *settings.exclude]}
    with cluster.talking():
        job_id = cluster.client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
    print(job_id, flush=True)
    say(f"career submit: job {job_id} submitted to {cluster.address}: {entrypoint}")
    if settings.no_wait:
        say(f"follow it with: career jobs logs {job_id} --follow --address {cluster.address}")
        return 0
    try:
        follow_logs(cluster, job_id)
    except KeyboardInterrupt:
        say(
            f"career submit: stopped following job {job_id}; it keeps running "
            f"(career jobs stop {job_id} --address {cluster.address} stops it)"
        )
        return 130
    return _ended(cluster, job_id, "submit")
