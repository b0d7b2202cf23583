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
import asyncio
import contextlib
import dataclasses
import logging
import os
import shlex
import sys
import time
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cluster import flags
from cluster.settings import RaySettings
from data_shards.storage import mask_secrets

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
ADDRESS_ENV = "RAY_ADDRESS"
AUTH_MODE_ENV = "RAY_AUTH_MODE"
TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
DEFAULT_TOKEN_PATH = "~/.ray/auth_token"
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
JOB_ACTIONS = ("list", "status", "logs", "stop")
STOP_WAIT_S = 60.0
TOKEN_WHERE = (
    f"give the cluster's token in {TOKEN_ENV}, in a file named by {TOKEN_PATH_ENV}, or in "
    f"{DEFAULT_TOKEN_PATH} (`ray get-auth-token` on the head node prints it)"
)


class ClusterError(ValueError):
    """The cluster refused us, cannot be reached, or was asked something wrong: exit 2."""


# ----------------------------------------------------------------------------- settings
@dataclass(kw_only=True)
class ClusterSettings:
    """Ray cluster (Jobs API)."""

    address: str | None = flags.option(
        None,
        help=f"the cluster's dashboard URL (default: ${ADDRESS_ENV}, else {DEFAULT_ADDRESS}); "
        "forward it with `ray dashboard ray_cluster.yaml`",
        metavar="URL",
    )

    def __post_init__(self) -> None:
        self.address = (self.address or os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS).rstrip("/")


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


@dataclass(kw_only=True)
class JobsSettings:
    """List, inspect, read or stop the jobs of a Ray cluster (submitted with career submit or
    ray job submit), through the Ray Jobs API."""

    #: list, status, logs or stop
    action: str = field(metadata={"skip": True})
    #: the submission id (status, logs, stop)
    job_id: str | None = field(default=None, metadata={"skip": True})
    follow: bool = flags.option(False, help="follow the logs until the job ends")
    cluster: ClusterSettings = field(default_factory=ClusterSettings)

    def paths_read(self) -> dict[str, str | None]:
        return {}

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


_JOBS_HELP = {
    "list": "the cluster's submitted jobs: id, status, start time, entrypoint",
    "status": "a job's status, times and message",
    "logs": "a job's logs so far (--follow: until it ends)",
    "stop": "stop a job and wait until it has stopped",
}


def add_jobs_flags(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action in JOB_ACTIONS:
        sub = actions.add_parser(action, help=_JOBS_HELP[action], description=_JOBS_HELP[action])
        if action != "list":
            sub.add_argument("job_id", metavar="ID", help="the job's submission id (raysubmit_…)")
        if action == "logs":
            flags.add_flags(sub, JobsSettings, only=["follow"])
        flags.add_flags(sub, ClusterSettings)


def jobs_settings(namespace: argparse.Namespace) -> JobsSettings:
    return flags.build(
        JobsSettings, namespace, action=namespace.action, job_id=getattr(namespace, "job_id", None)
    )


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


# ----------------------------------------------------------------------------- token
@dataclass(frozen=True)
class Token:
    """The cluster's token and where it came from (the value is never shown)."""

    value: str = field(repr=False)
    source: str


def find_token() -> Token | None:
    """The token Ray would send (RAY_AUTH_MODE=token), or None when token mode is off."""
    env = os.environ
    if env.get(AUTH_MODE_ENV, "").strip().lower() != "token":
        return None
    if env.get(TOKEN_ENV, "").strip():
        return Token(env[TOKEN_ENV].strip(), TOKEN_ENV)
    named = env.get(TOKEN_PATH_ENV)
    path = Path(named).expanduser() if named else Path.home() / ".ray" / "auth_token"
    source = f"{TOKEN_PATH_ENV} ({path})" if named else str(path)
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        if named:
            raise ClusterError(f"{TOKEN_PATH_ENV} names {path}, which does not exist") from None
        value = ""
    except OSError as exc:
        raise ClusterError(f"cannot read the token file {source}: {exc.strerror}") from None
    if not value and named:
        raise ClusterError(f"the token file {source} is empty")
    if not value:
        raise ClusterError(f"{AUTH_MODE_ENV}=token but no token was found: {TOKEN_WHERE}")
    return Token(value, source)


def _masker(token: Token | None) -> Callable[[str], str]:
    def mask(text: str) -> str:
        text = mask_secrets(text)
        return text.replace(token.value, "***") if token else text

    return mask


# ----------------------------------------------------------------------------- the client
@dataclass
class Cluster:
    """A Jobs API client for one address, with its token and a masker for every message."""

    address: str
    token: Token | None
    client: Any
    mask: Callable[[str], str]

    def status(self, job_id: str) -> Any:
        with self.talking(job_id):
            return self.client.get_job_status(job_id)

    def info(self, job_id: str) -> Any:
        with self.talking(job_id):
            return self.client.get_job_info(job_id)

    @contextlib.contextmanager
    def talking(self, job_id: str | None = None) -> Iterator[None]:
        with _talking(self.address, self.token, job_id):
            yield


def _refused(address: str, token: Token | None, status: int) -> ClusterError:
    if token is None:
        return ClusterError(
            f"the Ray cluster at {address} requires a token (HTTP {status}) and none was sent "
            f"({AUTH_MODE_ENV} is not `token`): set {AUTH_MODE_ENV}=token and {TOKEN_WHERE}"
        )
    return ClusterError(
        f"the Ray cluster at {address} refused the token from {token.source} (HTTP {status}): it "
        f"is not the cluster's token; {TOKEN_WHERE}"
    )


@contextlib.contextmanager
def _talking(address: str, token: Token | None, job_id: str | None = None) -> Iterator[None]:
    """Turn the Jobs API's failures into clear messages (exit 2), the token masked in each."""
    import aiohttp
    import requests
    from ray.exceptions import AuthenticationError

    mask = _masker(token)
    try:
        yield
    except AuthenticationError as exc:
        status = 401 if "Authentication required" in str(exc) else 403
        raise _refused(address, token, status) from None
    except aiohttp.WSServerHandshakeError as exc:
        if exc.status in (401, 403):
            raise _refused(address, token, exc.status) from None
        raise RuntimeError(mask(f"log stream of {job_id}: HTTP {exc.status}")) from None
    except (ConnectionError, requests.exceptions.ConnectionError, aiohttp.ClientConnectionError):
        raise ClusterError(
            f"cannot reach the Ray Jobs API at {address}: is the cluster up and its dashboard "
            "port forwarded (`ray dashboard ray_cluster.yaml`)? Give the address with --address "
            f"or {ADDRESS_ENV}"
        ) from None
    except RuntimeError as exc:
        text = mask(str(exc))
        if "status code 404" in text and job_id:
            raise ClusterError(f"no job {job_id} on the Ray cluster at {address}") from None
        raise RuntimeError(text) from None


def _not_the_default_excludes_note(record: logging.LogRecord) -> bool:
    return "ignored by default" not in record.getMessage()


def _quiet_ray_client() -> None:
    """Ray's client logs every file it skips and every package it uploads (INFO), and warns that
    `.git` and `.venv` are now skipped by default (we skip them anyway): keep the rest."""
    for name in ("ray._private.runtime_env", "ray.dashboard.modules"):
        logging.getLogger(name).setLevel(logging.WARNING)
    working_dir = logging.getLogger("ray._private.runtime_env.working_dir")
    if _not_the_default_excludes_note not in working_dir.filters:
        working_dir.addFilter(_not_the_default_excludes_note)


def connect(settings: ClusterSettings) -> Cluster:
    """A Jobs API client for `settings.address` (its token checked before anything is sent)."""
    _quiet_ray_client()
    token = find_token()
    headers = {"Authorization": f"Bearer {token.value}"} if token else None
    with _talking(settings.address, token):
        from ray.job_submission import JobSubmissionClient

        client = JobSubmissionClient(settings.address, headers=headers)
    return Cluster(settings.address, token, client, _masker(token))


# ----------------------------------------------------------------------------- following a job
def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def follow_logs(cluster: Cluster, job_id: str) -> None:
    """Print the job's logs as they come, until the job ends (then until its status is final)."""

    async def tail() -> None:
        async for chunk in cluster.client.tail_job_logs(job_id):
            sys.stdout.write(cluster.mask(chunk))
            sys.stdout.flush()

    with cluster.talking(job_id):
        asyncio.run(tail())
    while not cluster.status(job_id).is_terminal():  # the stream can close just before the end
        time.sleep(0.5)


def exit_code_of(info: Any) -> int:
    """0 if the job SUCCEEDED; else the command's exit code (2: bad input), 1 if unknown or
    stopped."""
    status = str(getattr(info.status, "value", info.status))
    if status == "SUCCEEDED":
        return 0
    code = getattr(info, "driver_exit_code", None)
    return code if status == "FAILED" and isinstance(code, int) and 0 < code < 126 else 1


def _ended(cluster: Cluster, job_id: str, command: str) -> int:
    info = cluster.info(job_id)
    status = str(info.status.value)
    code = exit_code_of(info)
    if code == 0:
        _say(f"career {command}: job {job_id} SUCCEEDED")
    else:
        reason = cluster.mask((info.message or "").strip())
        _say(f"career {command}: error: job {job_id} {status}" + (f": {reason}" if reason else ""))
    return code


def run_submit(s: SubmitSettings, commands: Mapping[str, HasSettings]) -> int:
    entrypoint = entrypoint_of(s.entrypoint, commands)
    cluster = connect(s.cluster)
    runtime_env = {"working_dir": s.working_dir, "excludes": [*EXCLUDES, *s.exclude]}
    with cluster.talking():
        job_id = cluster.client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
    print(job_id, flush=True)
    _say(f"career submit: job {job_id} submitted to {cluster.address}: {entrypoint}")
    if s.no_wait:
        _say(f"follow it with: career jobs logs {job_id} --follow --address {cluster.address}")
        return 0
    try:
        follow_logs(cluster, job_id)
    except KeyboardInterrupt:
        _say(
            f"career submit: stopped following job {job_id}; it keeps running "
            f"(career jobs stop {job_id} --address {cluster.address} stops it)"
        )
        return 130
    return _ended(cluster, job_id, "submit")


# ----------------------------------------------------------------------------- career jobs
def _time(ms: int | None) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _table(columns: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [columns, *rows]) for i in range(len(columns) - 1)]
    lines = []
    for row in [columns, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


def _list(cluster: Cluster) -> int:
    with cluster.talking():
        jobs = [j for j in cluster.client.list_jobs() if j.submission_id]
    jobs.sort(key=lambda j: j.start_time or 0)
    rows = [[j.submission_id, j.status.value, _time(j.start_time), j.entrypoint] for j in jobs]
    print(_table(["ID", "STATUS", "START", "ENTRYPOINT"], rows) if rows else "no jobs")
    return 0


def _status(cluster: Cluster, job_id: str) -> int:
    info = cluster.info(job_id)
    print(f"{job_id}: {info.status.value}")
    for label, value in (
        ("entrypoint", info.entrypoint),
        ("started", _time(info.start_time)),
        ("ended", _time(info.end_time)),
        ("message", info.message),
    ):
        if value and value != "-":
            print(f"  {label}: {cluster.mask(str(value))}")
    return 0


def _logs(cluster: Cluster, job_id: str, follow: bool) -> int:
    if follow:
        follow_logs(cluster, job_id)
        return 0
    with cluster.talking(job_id):
        sys.stdout.write(cluster.mask(cluster.client.get_job_logs(job_id)))
    return 0


def _stop(cluster: Cluster, job_id: str) -> int:
    with cluster.talking(job_id):
        stopping = cluster.client.stop_job(job_id)
    if not stopping:
        print(f"{job_id}: had already ended ({cluster.status(job_id).value})")
        return 0
    deadline = time.monotonic() + STOP_WAIT_S
    while not (status := cluster.status(job_id)).is_terminal():
        if time.monotonic() > deadline:
            raise ClusterError(
                f"job {job_id} is still {status.value} {STOP_WAIT_S:.0f} s after the stop request"
            )
        time.sleep(0.5)
    print(f"{job_id}: {status.value}")
    return 0


def run_jobs(s: JobsSettings) -> int:
    cluster = connect(s.cluster)
    if s.action == "list":
        return _list(cluster)
    if not s.job_id:
        raise ClusterError(f"career jobs {s.action} needs a job id")
    if s.action == "status":
        return _status(cluster, s.job_id)
    if s.action == "logs":
        return _logs(cluster, s.job_id, s.follow)
    return _stop(cluster, s.job_id)
