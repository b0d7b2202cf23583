"""Score model packages on datasets and compare them: the use case of `career evaluate`.

`evaluate_models` checks every package against every dataset first (a package's vocabulary and
kind come from `trainer.package.read_package_info`, without its weights), then scores each
(model, dataset) pair (`ScoreRequest`, run by `score_all`: one after another in this process by
default; `career evaluate` runs each as a Ray task), then builds every metric from the scores
files alone (`eval.metrics`, `eval.comparison_table`) and writes under OUT:

    OUT/scores/<model>__<dataset>.parquet    per-token scores (the Scores contract)
    OUT/transitions/<model>__<dataset>.json  observed and predicted next jobs after the split's
                                              most common jobs (`eval.transitions`, for the report)
    OUT/metrics.json                          every metric of every pair, and the comparisons
    OUT/table.md                              one comparison table per dataset

Everything that can be refused is refused before a pair is scored: a package that is missing or
whose vocabulary was changed, a dataset without a manifest, a dataset whose vocabulary does not
extend a package's, an empty split. Nothing is printed: the caller renders the returned report.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from data_shards import storage
from data_shards.dataset import load_dataset
from eval import comparison_table, metrics
from eval.run_layout import METRICS
from eval.scores import (
    DEFAULT_TOKENS_PER_BATCH,
    check_compatible,
    read_scores,
    score_package,
    split_transition_rows,
)
from trainer.package import read_package_info


def scores_url(out: str, model: str, dataset: str) -> str:
    return storage.join(out, "scores", f"{model}__{dataset}.parquet")


def transitions_url(out: str, model: str, dataset: str, transition_jobs: int) -> str | None:
    if not transition_jobs:
        return None
    return storage.join(out, "transitions", f"{model}__{dataset}.json")


@dataclass(frozen=True)
class ScoreRequest:
    """One (model, dataset) pair to score: what `score_package` is given."""

    model: str
    dataset: str
    model_url: str
    data_url: str
    split: str
    scores_url: str
    transitions_url: str | None
    #: the aggregate's rows on this dataset (`eval.scores.split_transition_rows`), or None
    transition_rows: tuple[int, ...] | None = None
    tokens_per_batch: int = DEFAULT_TOKENS_PER_BATCH
    storage_options: dict | None = None


def run_request(
    request: ScoreRequest, *, device: str = "cpu", threads: int | None = None
) -> dict[str, Any]:
    """Score one pair and write its files (what a scoring task runs); returns the scores'
    description (`eval.scores.describe`)."""
    return score_package(
        request.model_url,
        request.data_url,
        request.split,
        request.scores_url,
        storage_options=request.storage_options,
        tokens_per_batch=request.tokens_per_batch,
        device=device,
        threads=threads,
        transitions_url=request.transitions_url,
        transition_rows=request.transition_rows,
    )


def score_in_process(requests: list[ScoreRequest]) -> Iterable[dict[str, Any]]:
    """The default `score_all`: each request in this process, one after another."""
    return (run_request(request) for request in requests)


def evaluate_models(
    models: Sequence[tuple[str, str]],
    datasets: Sequence[tuple[str, str]],
    out: str,
    *,
    split: str = "test",
    weighted: bool,
    bootstrap: int,
    seed: int,
    tokens_per_batch: int,
    transition_jobs: int,
    storage_options: dict | None = None,
    score_all: Callable[[list[ScoreRequest]], Iterable[Any]] | None = None,
) -> dict[str, Any]:
    """Score every (name, package URL) of `models` on the `split` of every (name, dataset URL)
    of `datasets`, write the files above under `out`, and return the report written as
    metrics.json (its "comparison" holds, per dataset, `comparison_table.compare`'s result)."""
    packages = {name: read_package_info(url, storage_options) for name, url in models}
    loaded = {name: load_dataset(url, storage_options) for name, url in datasets}
    for package in packages.values():
        for dataset in loaded.values():
            check_compatible(package.vocab, dataset, split)
    # The transition aggregate's rows are the dataset's: counted once, not once per model.
    rows = {
        d: tuple(
            split_transition_rows(
                dataset, split, transition_jobs, tokens_per_batch, storage_options
            )
        )
        for d, dataset in loaded.items()
        if transition_jobs
    }
    requests = [
        ScoreRequest(
            model=m,
            dataset=d,
            model_url=model_url,
            data_url=data_url,
            split=split,
            scores_url=scores_url(out, m, d),
            transitions_url=transitions_url(out, m, d, transition_jobs),
            transition_rows=rows.get(d),
            tokens_per_batch=tokens_per_batch,
            storage_options=storage_options,
        )
        for m, model_url in models
        for d, data_url in datasets
    ]
    for _ in (score_all or score_in_process)(requests):
        pass

    options = dict(weighted=weighted, bootstrap=bootstrap, seed=seed)
    per_pair: dict[str, dict[str, Any]] = {m: {} for m, _ in models}
    comparisons: dict[str, Any] = {}
    for d, _ in datasets:
        scores = {m: read_scores(scores_url(out, m, d), storage_options) for m, _ in models}
        summaries = {m: metrics.summarize(scores[m], **options) for m in scores}
        for m, summary in summaries.items():
            per_pair[m][d] = summary
        comparisons[d] = comparison_table.compare(scores, summaries=summaries, **options)
    report = {
        "split": split,
        "weighted": weighted,
        "bootstrap": {"replicates": bootstrap, "seed": seed, "level": metrics.LEVEL},
        "models": {
            m: {"package": storage.redact(url), "kind": packages[m].kind} for m, url in models
        },
        "datasets": {
            d: {
                "url": storage.redact(url),
                "manifest_sha256": loaded[d].manifest_sha,
                "oracle_perplexity": (loaded[d].manifest.oracle_perplexity or {}).get(split),
            }
            for d, url in datasets
        },
        "scores": {m: {d: f"scores/{m}__{d}.parquet" for d, _ in datasets} for m, _ in models},
        **(
            {
                "transitions": {
                    m: {d: f"transitions/{m}__{d}.json" for d, _ in datasets} for m, _ in models
                }
            }
            if transition_jobs
            else {}
        ),
        "metrics": per_pair,
        "comparison": comparisons,
    }
    storage.write_bytes_atomic(
        storage.join(out, "table.md"),
        comparison_table.markdown(comparisons, split).encode(),
        storage_options,
    )
    storage.write_json(storage.join(out, METRICS), report, storage_options)
    return report
