"""`career evaluate` and `career predict`: settings, checks, Ray tasks, terminal output.

`career evaluate --model PKG … --data DATASET … --out OUT` scores every model on every dataset,
each pair in its own Ray task (`eval.scores.score_package`), then builds every metric from the
scores files alone (`eval.metrics`, `eval.table`):

    OUT/scores/<model>__<dataset>.parquet    per-token scores (the Scores contract)
    OUT/transitions/<model>__<dataset>.json  observed and predicted next jobs after the split's
                                              most common jobs (`eval.transitions`, for the report)
    OUT/metrics.json                          every metric of every pair, and the comparisons
    OUT/table.md                              one comparison table per dataset

Everything that can be refused is refused before a task starts: a package that does not load,
a dataset without a manifest, a dataset whose vocabulary does not extend a package's, an empty
split. A model is any package `trainer.package.load_model` opens (CAREER, a baseline, Markov):
named by `NAME=PKG`, else by its folder (`…/RUN/package` is named RUN).

`career predict --model PKG --history "4720:2012 4720:2013 unemployed:2014"` prints the top-k
next jobs with probabilities and P(stay); `--input people.jsonl --out predictions.jsonl` does it
for a file (`eval.predict`).

`--model` and `--data` repeat: the generated flags (`cluster.flags`) have no repeatable option,
so `add_evaluate_flags` and `evaluate_settings` add and read those two (the `add` and `make` of
the command's registration).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from collections.abc import Iterator
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
        default_factory=list,
        repeat=True,
        path=True,
    )
    data: list[str] = flags.option(
        help="dataset folder (made by career shard); repeat for several",
        metavar="DATASET",
        default_factory=list,
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
        return storage.join(self.out, "scores", f"{model}__{dataset}.parquet")

    def transitions_url(self, model: str, dataset: str) -> str | None:
        if not self.transition_jobs:
            return None
        return storage.join(self.out, "transitions", f"{model}__{dataset}.json")


def given_covariates(settings: Any) -> dict[str, Any]:
    """The covariate flags a person-level command was given (`career predict`, `career
    explain`): static ones as they are, `--education` one degree or one per year."""
    given: dict[str, Any] = {
        name: getattr(settings, name)
        for name in ("location", "gender", "ethnicity", "birth_year")
        if getattr(settings, name) is not None
    }
    if settings.education:
        degrees = settings.education.split()
        given["education"] = degrees[0] if len(degrees) == 1 else tuple(degrees)
    return given


@dataclass(kw_only=True)
class PredictSettings:
    """Predict next jobs with a model package: the top-k jobs with their probabilities and
    P(stay), for one history (--history) or a JSON Lines file of people (--input)."""

    model: str = flags.option(help="model package (any kind)", metavar="PKG", path=True)
    history: str | None = flags.option(
        None,
        help='the history as JOB:YEAR items, e.g. "4720:2012 4720:2013 unemployed:2014"',
        metavar="HISTORY",
    )
    year: int | None = flags.option(
        None, help="the year to predict (default: the history's last year + 1)", metavar="YEAR"
    )
    education: str | None = flags.option(
        None,
        help="highest degree: one for every year, or one per history year (and the predicted "
        'year), space-separated, e.g. "high_school high_school bachelors"',
        metavar="DEGREE",
    )
    location: str | None = flags.option(None, help="state of residence", metavar="CODE")
    gender: str | None = flags.option(None, help="gender", metavar="CODE")
    ethnicity: str | None = flags.option(None, help="race/ethnicity", metavar="CODE")
    birth_year: int | None = flags.option(None, help="birth year", metavar="YEAR")
    top_k: int = flags.option(10, help="how many jobs to show", metavar="K")
    input: str | None = flags.option(
        None,
        help='JSON Lines, one person per line: {"history": "4720:2012 …"} (with optional "id", '
        '"year" and covariates) or a resume as --format resume-jsonl reads it',
        metavar="URL",
        path=True,
    )
    out: str | None = flags.option(
        None, help="where --input's predictions go (JSON Lines)", metavar="URL", path=True
    )
    json: bool = flags.option(False, help="print JSON instead of a table (--history)")
    storage: StorageSettings = field(default_factory=StorageSettings)

    def __post_init__(self) -> None:
        if (self.history is None) == (self.input is None):
            raise ValueError("give either --history or --input (a JSON Lines file of people)")
        if self.input and not self.out:
            raise ValueError("--input needs --out (where the predictions go)")
        if self.out and not self.input:
            raise ValueError("--out goes with --input; --history prints its predictions")
        if self.top_k < 1:
            raise ValueError(f"--top-k must be at least 1, not {self.top_k}")

    def covariates(self) -> dict[str, Any]:
        return given_covariates(self)

    def paths_read(self) -> dict[str, str | None]:
        return {"--model": self.model, "--input": self.input}

    def paths_written(self) -> dict[str, str | None]:
        return {"--out": self.out}


# ----------------------------------------------------------------------------- the parser
REPEATED = ("model", "data")


def add_evaluate_flags(parser: argparse.ArgumentParser) -> None:
    """The generated flags of `EvaluateSettings`, with `--model` and `--data` repeatable."""
    fields = {f.name: f for f in dataclasses.fields(EvaluateSettings)}
    for name in REPEATED:
        meta = fields[name].metadata
        parser.add_argument(
            f"--{name}",
            dest=name,
            action="append",
            required=True,
            metavar=meta["metavar"],
            help=meta["help"],
        )
    flags.add_flags(parser, EvaluateSettings, adjust={name: {"skip": True} for name in REPEATED})


def evaluate_settings(namespace: argparse.Namespace) -> EvaluateSettings:
    """`EvaluateSettings` from a parsed namespace (`NAME=PKG` and paths are resolved in it)."""
    return flags.build(
        EvaluateSettings, namespace, **{name: list(getattr(namespace, name)) for name in REPEATED}
    )


# ----------------------------------------------------------------------------- evaluate
def check_inputs(s: EvaluateSettings) -> dict[str, Any]:
    """Open every package and dataset and check every pair, before any task starts."""
    from data_shards.dataset import load_dataset
    from eval.scores import check_compatible
    from trainer.package import load_model

    options = s.storage_options
    packages = {}
    for name, url in s.models:  # load_model refuses a package that is missing or tampered with
        loaded = load_model(url, options)
        kind = loaded.config.get("kind", "career")  # format-1 packages are CAREER
        packages[name] = {"url": url, "vocab": loaded.vocab, "kind": kind}
    datasets = {name: load_dataset(url, options) for name, url in s.datasets}
    for package in packages.values():
        for dataset in datasets.values():
            check_compatible(package["vocab"], dataset, s.split)
    return {"packages": packages, "datasets": datasets}


def _completed(ray, refs: list) -> Iterator[Any]:
    """Each task's result as it finishes; an error of ours raised in a task is re-raised as
    itself (its message, exit code 2), not as Ray's wrapper."""
    from data_shards.errors import StructuralError

    waiting = list(refs)
    while waiting:
        done, waiting = ray.wait(waiting, num_returns=1)
        try:
            yield ray.get(done[0])
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause
            if isinstance(cause, StructuralError | ValueError | OSError):
                raise cause from None
            raise


def run_evaluate(s: EvaluateSettings) -> int:
    from cluster.ray_session import connect_ray
    from cluster.report import console, print_rows, progress
    from eval import metrics, table
    from eval.scores import read_scores, score_package

    checked = check_inputs(s)
    connect_ray(s.ray.ray_address, s.ray.num_cpus)
    import ray

    gpus = s.gpus_per_task
    if gpus and ray.cluster_resources().get("GPU", 0) < gpus:
        console.print(f"the Ray cluster has no {gpus:g} GPU for a task: scoring on CPUs")
        gpus = 0
    task = ray.remote(score_package).options(num_cpus=s.cpus_per_task, num_gpus=gpus)
    pairs = [(m, d) for m, _ in s.models for d, _ in s.datasets]
    models, datasets = dict(s.models), dict(s.datasets)
    refs = [
        task.remote(
            models[m],
            datasets[d],
            s.split,
            s.scores_url(m, d),
            storage_options=s.storage_options,
            tokens_per_batch=s.tokens_per_batch,
            device="cuda" if gpus else "cpu",
            threads=s.cpus_per_task,
            transitions_url=s.transitions_url(m, d),
            transition_jobs=s.transition_jobs,
        )
        for m, d in pairs
    ]
    for _ in progress(_completed(ray, refs), len(refs), f"scoring ({len(refs)} model x dataset)"):
        pass

    options = dict(weighted=s.weighted, bootstrap=s.bootstrap, seed=s.seed)
    per_pair: dict[str, dict[str, Any]] = {m: {} for m, _ in s.models}
    comparisons: dict[str, Any] = {}
    for d, _ in s.datasets:
        scores = {m: read_scores(s.scores_url(m, d), s.storage_options) for m, _ in s.models}
        summaries = {m: metrics.summarize(scores[m], **options) for m in scores}
        for m, summary in summaries.items():
            per_pair[m][d] = summary
        comparisons[d] = table.compare(scores, summaries=summaries, **options)
    report = {
        "split": s.split,
        "weighted": s.weighted,
        "bootstrap": {"replicates": s.bootstrap, "seed": s.seed, "level": metrics.LEVEL},
        "models": {
            m: {"package": storage.redact(url), "kind": checked["packages"][m]["kind"]}
            for m, url in s.models
        },
        "datasets": {
            d: {
                "url": storage.redact(url),
                "manifest_sha256": checked["datasets"][d].manifest_sha,
                "oracle_perplexity": (checked["datasets"][d].manifest.oracle_perplexity or {}).get(
                    s.split
                ),
            }
            for d, url in s.datasets
        },
        "scores": {m: {d: f"scores/{m}__{d}.parquet" for d, _ in s.datasets} for m, _ in s.models},
        **(
            {
                "transitions": {
                    m: {d: f"transitions/{m}__{d}.json" for d, _ in s.datasets} for m, _ in s.models
                }
            }
            if s.transition_jobs
            else {}
        ),
        "metrics": per_pair,
        "comparison": comparisons,
    }
    storage.write_bytes_atomic(
        storage.join(s.out, "table.md"),
        table.markdown(comparisons, s.split).encode(),
        s.storage_options,
    )
    storage.write_bytes_atomic(
        storage.join(s.out, "metrics.json"), table.to_json(report).encode(), s.storage_options
    )
    for d, comparison in comparisons.items():
        print_rows(
            table.caption(d, s.split, comparison),
            table.COLUMNS,
            [table.row_cells(row) for row in comparison["rows"]],
        )
    console.print(f"scores, metrics.json and table.md in {storage.redact(s.out)}")
    return 0


# ----------------------------------------------------------------------------- predict
def run_predict(s: PredictSettings) -> int:
    from cluster.report import console, print_rows
    from eval.predict import Query, predict, read_queries, top_k, write_predictions
    from trainer.package import load_model

    loaded = load_model(s.model, s.storage.storage_options)
    if s.input:
        queries: list[Query] = read_queries(s.input, s.storage.storage_options)
        count = write_predictions(
            predict(loaded, queries, s.top_k), s.out, s.storage.storage_options
        )
        console.print(f"{count:,} predictions written to {storage.redact(s.out or '')}")
        return 0
    prediction = top_k(loaded, s.history or "", s.top_k, covariates=s.covariates(), year=s.year)
    if s.json:
        print(json.dumps(prediction.to_dict(), sort_keys=True))
        return 0
    stay = "-" if prediction.p_stay is None else f"{prediction.p_stay:.4f}"
    print_rows(
        f"next job in {prediction.year} (after {prediction.last_job or 'no history'}; "
        f"P(stay) = {stay})",
        ["rank", "job", "probability"],
        [[i + 1, job, round(p, 6)] for i, (job, p) in enumerate(prediction.top)],
    )
    return 0  # codes read as <unk> were named by eval.predict's warning
