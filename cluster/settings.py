"""Typed settings parts that several commands share, declared once and composed.

The parsers and `--help` are generated from settings dataclasses (`cluster.flags`); handlers take
these objects, never an `argparse.Namespace`. The shared parts: `RaySettings`, `StorageSettings`,
`Resources` (training workers) and `Covariates` (a person's, for predict and explain). Each
command's own settings compose them and live beside its handler: `cluster/data_settings.py`
(inspect, synth, shard), `cluster/train_settings.py` (pretrain, finetune, export),
`cluster/*_job.py`, `cluster/run/job.py`, `cluster/scale/job.py`, `cluster/submit/`. Domain
settings are declared where they live (`ShardConfig`, `PanelMapping`, `ResumeOptions`,
`TrainConfig`) and turned into flags from there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cluster.flags import option


@dataclass(kw_only=True)
class RaySettings:
    """Ray."""

    ray_address: str | None = option(
        None, help="Ray cluster to run on (default: start a local one)", metavar="ADDR"
    )
    num_cpus: int | None = option(
        None, help="CPUs of the local Ray instance (default: all)", metavar="N"
    )
    shared_fs: bool = option(
        False,
        help="the local folders given are on a file system every node of the Ray cluster mounts "
        "(NFS, Lustre): allow them on a cluster of several nodes",
    )


@dataclass(kw_only=True)
class StorageSettings:
    """Object storage."""

    storage_options: dict | None = option(
        None,
        help='fsspec options for the URLs, e.g. \'{"client_kwargs": {"endpoint_url": '
        '"http://127.0.0.1:9000"}}\', or @FILE to read them from a JSON file. Credentials are '
        "better left in the standard AWS environment variables (or in @FILE: never in argv).",
        metavar="JSON",
    )


@dataclass(kw_only=True, frozen=True)
class Resources:
    """Training workers.

    What a training run asks of the cluster: pretraining, a survey's models, a scaling point."""

    workers: int = option(
        2, help="training workers (a run may resume on another number)", metavar="N"
    )
    gpus_per_worker: float = option(0, help="GPUs per worker (default 0: CPU, gloo)", metavar="G")
    cpus_per_worker: float = option(
        1,
        help="Ray CPUs a CPU worker asks for (default 1; below 1 lets runs share a core)",
        metavar="C",
    )
    max_failures: int = option(
        3,
        help="worker or node losses a Ray Train run survives: each time a new worker group "
        "resumes from the latest checkpoint (default 3; 0: fail at once; -1: no limit)",
        metavar="N",
    )

    def __post_init__(self) -> None:
        if self.max_failures < -1:
            raise ValueError(
                f"--max-failures must be -1 (no limit) or more, not {self.max_failures}"
            )
        if self.workers < 1:
            raise ValueError(f"--workers must be at least 1, not {self.workers}")
        if self.gpus_per_worker < 0:
            raise ValueError(f"--gpus-per-worker must not be negative, not {self.gpus_per_worker}")
        if self.cpus_per_worker <= 0:
            raise ValueError(f"--cpus-per-worker must be positive, not {self.cpus_per_worker}")

    @property
    def on_gpu(self) -> bool:
        return self.gpus_per_worker > 0


@dataclass(kw_only=True)
class Covariates:
    """The person's covariates.

    What a history given on the command line carries besides its jobs (`career predict`,
    `career explain`); a covariate not given is read as unknown."""

    education: str | None = option(
        None,
        help="highest degree: one for every year, or one per history year (and the year asked "
        'about), space-separated, e.g. "high_school high_school bachelors"',
        metavar="DEGREE",
    )
    location: str | None = option(None, help="state of residence", metavar="CODE")
    gender: str | None = option(None, help="gender", metavar="CODE")
    ethnicity: str | None = option(None, help="race/ethnicity", metavar="CODE")
    birth_year: int | None = option(None, help="birth year", metavar="YEAR")

    def given(self) -> dict[str, Any]:
        """The covariates given: static ones as they are, education one degree or one per year."""
        given: dict[str, Any] = {
            name: getattr(self, name)
            for name in ("location", "gender", "ethnicity", "birth_year")
            if getattr(self, name) is not None
        }
        if self.education:
            degrees = self.education.split()
            given["education"] = degrees[0] if len(degrees) == 1 else tuple(degrees)
        return given
