"""`career jobs list | status ID | logs ID [--follow] | stop ID`: the jobs of a Ray cluster (submitted
with `career submit` or `ray job submit`), through the Ray Jobs API."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cluster import flags
from cluster.submit.client import (
    STOP_WAIT_S,
    Cluster,
    ClusterError,
    ClusterSettings,
    connect,
    follow_logs,
)

JOB_ACTIONS = ("list", "status", "logs", "stop")


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


def run_jobs(settings: JobsSettings) -> int:
    cluster = connect(settings.cluster.address)
    if settings.action == "list":
        return _list(cluster)
    if not settings.job_id:
        raise ClusterError(f"career jobs {settings.action} needs a job id")
    if settings.action == "status":
        return _status(cluster, settings.job_id)
    if settings.action == "logs":
        return _logs(cluster, settings.job_id, settings.follow)
    return _stop(cluster, settings.job_id)
