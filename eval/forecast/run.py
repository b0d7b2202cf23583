"""Forecast with a model package on a cutoff dataset: sample, score, write, summarise.

    forecast_models    the use case of `career forecast`: every package loaded once, the test
                       split read once, each forecast (`forecast_loaded`), then `compare`
    forecast_package   one package: the scored people (`protocol`), `paths` futures each
                       (`sample`), the scores table and per-path rates written under OUT, and
                       the model's summary (`score.summarize`)
    compare            the summaries of several packages on the same people, with the paired
                       person-bootstrap difference of each one's forecast perplexity against the
                       first (its "reference", CAREER in `career run`)

Files under OUT (a local folder or any fsspec URL):

    scores/NAME.parquet     the forecast scores (`eval.forecast.score`)
    rates/NAME.json         per state and calendar year, the rate along each path
    forecast.png            forecast vs realised rates of every model, with bands over paths
    forecast.json           every model's summary, the comparison, and how it was made (last:
                            the step is complete when it exists)
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import pyarrow as pa

from data_shards import storage
from data_shards.dataset import Dataset, load_dataset
from eval import metrics
from eval.forecast.protocol import ForecastPeople, dataset_cutoff, forecast_people, read_test
from eval.forecast.sample import sample_futures, state_ids
from eval.forecast.score import forecast_scores, path_rates, summarize
from eval.scores import check_compatible, read_scores, write_scores
from trainer.package import LoadedModel, load_model

log = logging.getLogger(__name__)

SUMMARY = "forecast.json"
PLOT = "forecast.png"


def scores_url(out: str, name: str) -> str:
    return storage.join(out, "scores", f"{name}.parquet")


def rates_url(out: str, name: str) -> str:
    return storage.join(out, "rates", f"{name}.json")


def describe_people(people: ForecastPeople) -> dict[str, Any]:
    """Who was scored and how (for the summary and the report)."""
    return {
        "cutoff": people.cutoff,
        "last_year": people.last_year,
        "future_education": people.future_education,
        "test_people": people.considered,
        "scored_people": len(people.person_id),
        "excluded": people.excluded,
        "future_years": int(people.steps.sum()),
    }


def forecast_package(
    name: str,
    model_url: str,
    dataset: Dataset,
    out: str,
    *,
    paths: int = 1000,
    seed: int = 0,
    cutoff: int | None = None,
    future_education: str = "carried",
    chunk_size: int = 4096,
    bootstrap: int = metrics.DEFAULT_REPLICATES,
    storage_options=None,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Forecast the test people of `dataset` with the package at `model_url`; write its scores
    and rates under `out` and return its summary (with "people": `describe_people`)."""
    loaded = load_model(model_url, storage_options)
    people = forecast_people(loaded, dataset, cutoff, future_education, storage_options)
    return forecast_loaded(
        name,
        loaded,
        people,
        out,
        paths=paths,
        seed=seed,
        chunk_size=chunk_size,
        bootstrap=bootstrap,
        storage_options=storage_options,
        on_progress=on_progress,
    )


def forecast_loaded(
    name: str,
    loaded: LoadedModel,
    people: ForecastPeople,
    out: str,
    *,
    paths: int,
    seed: int,
    chunk_size: int,
    bootstrap: int,
    storage_options=None,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """`forecast_package` of a package already loaded, on its people already read."""
    states = state_ids(loaded.vocab)  # none in a panel of occupations only (wagepan)
    if not states:
        log.warning(
            "%s knows none of the states unemployed/not_in_labor_force/education: only the "
            "forecast perplexity of the realised jobs is scored",
            name,
        )
    start = time.perf_counter()
    forecast = sample_futures(
        loaded.model,
        people.history,
        people.future,
        paths=paths,
        seed=seed,
        chunk_size=chunk_size,
        last_year_id=people.last_trained_year_id,
        on_progress=on_progress,
    )
    seconds = time.perf_counter() - start
    scoring = time.perf_counter()
    scores = forecast_scores(forecast, people, loaded.vocab, states)
    described = {
        "model": name,
        "kind": loaded.kind,
        "paths": paths,
        "seed": seed,
        "sampling_seconds": round(seconds, 3),
        **describe_people(people),
    }
    scores = scores.replace_schema_metadata({b"career_forecast": json.dumps(described)})
    rates = path_rates(forecast, people, states)
    write_scores(scores, scores_url(out, name), storage_options)
    storage.write_json(rates_url(out, name), rates, storage_options)
    summary = summarize(scores, rates, bootstrap=bootstrap, seed=seed)
    scored = {"scoring_seconds": round(time.perf_counter() - scoring, 3)}  # with the writes
    return {**summary, **described, **scored}


def compare(
    summaries: dict[str, dict[str, Any]],
    out: str,
    *,
    bootstrap: int = metrics.DEFAULT_REPLICATES,
    seed: int = 0,
    storage_options=None,
    title: str | None = None,
) -> dict[str, Any]:
    """The summary of several models forecast on the same people: each one's forecast
    perplexity minus the first's, paired over people (written as OUT/forecast.json, last), and
    the plot of their forecast rates (OUT/forecast.png)."""
    names = list(summaries)
    reference = names[0]
    tables: dict[str, pa.Table] = {
        n: read_scores(scores_url(out, n), storage_options) for n in names
    }
    differences = {}
    for n in names[1:]:
        differences[n] = metrics.paired_difference(
            tables[n], tables[reference], bootstrap=bootstrap, seed=seed
        ).to_dict()
    result = {
        "reference": reference,
        "models": summaries,
        "difference_to_reference": differences,
    }
    from eval.report import plots

    cutoff = summaries[reference].get("cutoff")
    png = plots.forecast_rates(summaries, title or f"forecast after {cutoff}")
    if png is not None:
        storage.write_bytes_atomic(storage.join(out, PLOT), png, storage_options)
    storage.write_json(storage.join(out, SUMMARY), result, storage_options)
    return result


def forecast_models(
    models: Sequence[tuple[str, str]],
    data: str,
    out: str,
    *,
    paths: int,
    seed: int,
    cutoff: int | None = None,
    future_education: str,
    chunk_size: int,
    bootstrap: int,
    storage_options=None,
    title: str | None = None,
    on_progress: Callable[[str], Callable[[int, int], None] | None] | None = None,
) -> dict[str, Any]:
    """Forecast the test people of the cutoff dataset at `data` with every (name, package URL)
    of `models` (the first is the reference), write everything under `out` (see the module) and
    return `compare`'s result. The dataset's cutoff is checked before any package is read; each
    package is loaded once (one trained on another dataset is named: it may have seen years
    after the cutoff) and the test split is read once for all of them. `on_progress(name)`: the
    `(done, total)` callback of that model's sampling, or None. `title`: the plot's, where
    `{cutoff}` stands for the cutoff (default: "DATASET: forecast after {cutoff}")."""
    dataset = load_dataset(data, storage_options)
    dataset_cutoff(dataset, cutoff)  # before any package is read
    loaded = {}
    for name, url in models:
        loaded[name] = load_model(url, storage_options)
        trained_on = loaded[name].config.get("dataset_manifest_sha256")
        if trained_on and trained_on != dataset.manifest_sha:
            log.warning(
                "%s was trained on another dataset than %s: make sure it saw no year after the "
                "cutoff, or its forecast is not one",
                name,
                storage.redact(data),
            )
    for package in loaded.values():
        check_compatible(package.vocab, dataset, "test")  # before the split is read
    test = read_test(dataset, storage_options)
    summaries: dict[str, dict[str, Any]] = {}
    for name, package in loaded.items():
        people = forecast_people(
            package, dataset, cutoff, future_education, storage_options, test=test
        )
        summaries[name] = forecast_loaded(
            name,
            package,
            people,
            out,
            paths=paths,
            seed=seed,
            chunk_size=chunk_size,
            bootstrap=bootstrap,
            storage_options=storage_options,
            on_progress=on_progress(name) if on_progress else None,
        )
    title = title or f"{dataset.manifest.name}: forecast after {{cutoff}}"
    return compare(
        summaries,
        out,
        bootstrap=bootstrap,
        seed=seed,
        storage_options=storage_options,
        title=title.format(cutoff=summaries[models[0][0]]["cutoff"]),
    )
