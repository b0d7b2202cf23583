"""`career evaluate`: settings, Ray tasks, terminal output.

`career evaluate --model PKG … --data DATASET … --out OUT` scores every model on every dataset
and compares them: `eval.evaluate.evaluate_models` checks every pair, scores each (here: each
pair in its own Ray task, `data_shards.tasks.as_completed`), writes scores/, transitions/,
metrics.json and table.md under OUT and returns the report, which this module prints. A model
is any package `trainer.package.load_model` opens (CAREER, a baseline, Markov): named by
`NAME=PKG`, else by its folder (`…/RUN/package` is named RUN). `--model` and `--data` repeat
(`repeat=True`: `cluster.flags` makes them "append" flags).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from cluster import flags
from cluster.settings import RaySettings, StorageSettings
from data_shards import storage
from data_shards.schema import SPLITS

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _named(value: str) -> tuple[str | None, str]:
    """(NAME, URL) of `NAME=URL` (a plain URL: no name)."""
    name, sep, url = value.partition("=")
    if sep and _NAME.match(name) and url:
        return name, url
    return None, value


def default_name(url: str) -> str:
    """A model's or dataset's name from its URL: the last folder, or the run folder of
    `RUN/package`; characters other than letters, digits, `.`, `_`, `-` become `_`."""
    parts = [p for p in re.split(r"[/\\]", url.split("://", 1)[-1]) if p]
    name = parts[-1] if parts else "model"
    if name == "package" and len(parts) > 1:
        name = parts[-2]
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def _named_urls(values: list[str], what: str) -> list[tuple[str, str]]:
    out = []
    for value in values:
        name, url = _named(value)
        url = storage.absolute(url)
        out.append((name or default_name(url), url))
    names = [name for name, _ in out]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"two {what}s are both named {', '.join(twice)}: name them with NAME=URL")
    return out


@dataclass(kw_only=True)
class EvaluateSettings:
    """Score model packages on datasets (one Ray task per model and dataset) and compare them:
    per-token scores, metrics.json and table.md under --out."""

    model: list[str] = flags.option(
        help="model package to evaluate (any kind), NAME=PKG to name it; repeat for several",
        metavar="PKG",
        repeat=True,
        path=True,
    )
    data: list[str] = flags.option(
        help="dataset folder (made by career shard); repeat for several",
        metavar="DATASET",
        repeat=True,
        path=True,
    )
    split: str = flags.option("test", help="split to score", choices=SPLITS)
    out: str = flags.option(
        help="output folder: scores/, metrics.json, table.md", metavar="URL", path=True
    )
    weighted: bool = flags.option(False, help="weight every metric by the person's weight column")
    bootstrap: int = flags.option(
        1000, help="person-bootstrap replicates of the 95% intervals (0: none)", metavar="N"
    )
    seed: int = flags.option(0, help="seed of the bootstrap")
    transition_jobs: int = flags.option(
        20,
        help="most common previous jobs of the transition aggregate, "
        "transitions/MODEL__DATASET.json (0: none)",
        metavar="K",
    )
    tokens_per_batch: int = flags.option(
        8192, help="job-year tokens per scoring batch", metavar="N"
    )
    cpus_per_task: int = flags.option(1, help="CPUs (torch threads) per scoring task", metavar="N")
    gpus_per_task: float = flags.option(
        0, help="GPUs per scoring task, used when the Ray cluster has them", metavar="G"
    )
    ray: RaySettings = field(default_factory=RaySettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    #: (name, absolute URL) of each --model and --data, resolved from the flags
    models: list[tuple[str, str]] = field(init=False, repr=False, metadata={"skip": True})
    datasets: list[tuple[str, str]] = field(init=False, repr=False, metadata={"skip": True})

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("give at least one --model PKG")
        if not self.data:
            raise ValueError("give at least one --data DATASET")
        if self.bootstrap < 0:
            raise ValueError(f"--bootstrap must not be negative, not {self.bootstrap}")
        if self.transition_jobs < 0:
            raise ValueError(f"--transition-jobs must not be negative, not {self.transition_jobs}")
        if self.tokens_per_batch < 1 or self.cpus_per_task < 1:
            raise ValueError("--tokens-per-batch and --cpus-per-task must be at least 1")
        if self.gpus_per_task < 0:
            raise ValueError(f"--gpus-per-task must not be negative, not {self.gpus_per_task}")
        if self.split not in SPLITS:
            raise ValueError(f"unknown split {self.split!r}; choose from {', '.join(SPLITS)}")
        self.models = _named_urls(self.model, "model")
        self.datasets = _named_urls(self.data, "dataset")
        self.out = storage.absolute(self.out)

    @property
    def storage_options(self) -> dict | None:
        return self.storage.storage_options

    def paths_read(self) -> dict[str, str | None]:
        reads = {f"--model {name}": url for name, url in self.models}
        reads.update({f"--data {name}": url for name, url in self.datasets})
        return reads

    def paths_written(self) -> dict[str, str | None]:
        return {"--out": self.out}

    def scores_url(self, model: str, dataset: str) -> str:
        from eval.evaluate import scores_url

        return scores_url(self.out, model, dataset)


def ray_scoring(settings: EvaluateSettings) -> Callable[[list], Iterator[Any]]:
    """`evaluate_models`' `score_all` on Ray: each request a task with the settings' CPUs and
    GPUs (none when the cluster has fewer GPUs than a task asks for), under a progress bar. Ray
    is joined when the scoring starts, after every input was checked."""

    def score_all(requests: list) -> Iterator[Any]:
        from cluster.console import console, progress
        from cluster.ray_session import connect_ray
        from data_shards.tasks import as_completed
        from eval.evaluate import run_request

        connect_ray(
            settings.ray.ray_address,
            settings.ray.num_cpus,
            paths=settings,
            shared_fs=settings.ray.shared_fs,
        )
        import ray

        gpus = settings.gpus_per_task
        if gpus and ray.cluster_resources().get("GPU", 0) < gpus:
            console.print(f"the Ray cluster has no {gpus:g} GPU for a task: scoring on CPUs")
            gpus = 0
        task = ray.remote(run_request).options(num_cpus=settings.cpus_per_task, num_gpus=gpus)
        refs = {
            task.remote(
                request, device="cuda" if gpus else "cpu", threads=settings.cpus_per_task
            ): i
            for i, request in enumerate(requests)
        }
        results = (result for _, result in as_completed(refs))
        yield from progress(results, len(refs), f"scoring ({len(refs)} model x dataset)")

    return score_all


def print_comparisons(report: dict[str, Any]) -> None:
    """One comparison table per dataset of an `evaluate_models` report."""
    from cluster.console import print_rows
    from eval import comparison_table as table

    for d, comparison in report["comparison"].items():
        print_rows(
            table.caption(d, report["split"], comparison),
            table.COLUMNS,
            [table.row_cells(row) for row in comparison["rows"]],
        )


def evaluate(settings: EvaluateSettings, in_process: bool = False) -> dict[str, Any]:
    """`eval.evaluate.evaluate_models` with the command's settings, scoring as Ray tasks (or in
    this process: a survey task of `career run` that trained its models itself already holds
    everything a scoring task would start a process and import for); the metrics.json report
    (nothing printed but the progress bar)."""
    from eval.evaluate import evaluate_models

    return evaluate_models(
        settings.models,
        settings.datasets,
        settings.out,
        split=settings.split,
        weighted=settings.weighted,
        bootstrap=settings.bootstrap,
        seed=settings.seed,
        tokens_per_batch=settings.tokens_per_batch,
        transition_jobs=settings.transition_jobs,
        storage_options=settings.storage_options,
        score_all=None if in_process else ray_scoring(settings),
    )


def run_evaluate(settings: EvaluateSettings) -> int:
    from cluster.console import console

    report = evaluate(settings)
    print_comparisons(report)
    console.print(f"scores, metrics.json and table.md in {storage.redact(settings.out)}")
    return 0
