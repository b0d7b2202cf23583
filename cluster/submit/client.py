"""A Ray Jobs API client that names what went wrong: the cluster's token found as Ray finds it
(and never shown), failures turned into clear messages (exit 2), logs followed to the end."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.flags import option
from data_shards.storage import mask_secrets

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
ADDRESS_ENV = "RAY_ADDRESS"
AUTH_MODE_ENV = "RAY_AUTH_MODE"
TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
DEFAULT_TOKEN_PATH = "~/.ray/auth_token"
STOP_WAIT_S = 60.0
TOKEN_WHERE = (
    f"give the cluster's token in {TOKEN_ENV}, in a file named by {TOKEN_PATH_ENV}, or in "
    f"{DEFAULT_TOKEN_PATH} (`ray get-auth-token` on the head node prints it)"
)


class ClusterError(ValueError):
    """The cluster refused us, cannot be reached, or was asked something wrong: exit 2."""


@dataclass(kw_only=True)
class ClusterSettings:
    """Ray cluster (Jobs API)."""

    address: str | None = option(
        None,
        help=f"the cluster's dashboard URL (default: ${ADDRESS_ENV}, else {DEFAULT_ADDRESS}); "
        "forward it with `ray dashboard ray_cluster.yaml`",
        metavar="URL",
    )

    def __post_init__(self) -> None:
        self.address = (self.address or os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS).rstrip("/")


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


def connect(address: str) -> Cluster:
    """A Jobs API client for `address` (its token checked before anything is sent)."""
    _quiet_ray_client()
    token = find_token()
    headers = {"Authorization": f"Bearer {token.value}"} if token else None
    with _talking(address, token):
        from ray.job_submission import JobSubmissionClient

        client = JobSubmissionClient(address, headers=headers)
    return Cluster(address, token, client, _masker(token))


# ----------------------------------------------------------------------------- following a job
def say(text: str) -> None:
    """A line for the user on stderr (stdout carries the job id and the job's logs)."""
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
