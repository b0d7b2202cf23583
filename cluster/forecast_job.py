"""`career forecast`: Monte Carlo forecasts of model packages on a cutoff dataset, compared.

    career forecast --model career=RUN/nlsy79/finetuned --model markov=... --data DATA/nlsy79 \
        --out forecast/ [--paths 1000] [--future-education carried|observed]

The dataset carries the cutoff (`career shard --until YEAR`). Each model forecasts the same
people (`eval.forecast.protocol`) with `--paths` futures each; everything is written under --out
(`eval.forecast.run`: scores/, rates/, forecast.json) with a plot of the forecast rates,
forecast.png. The first --model is the reference the others are compared with (paired person
bootstrap of the forecast perplexity). Forecasting is torch alone, in this process: no Ray.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cluster import flags
from cluster.evaluate_job import _named_urls
from cluster.settings import StorageSettings
from data_shards import storage
from eval.forecast.protocol import FUTURE_EDUCATION

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class ForecastSettings:
    """Forecast where people will be after a dataset's cutoff (the paper's Monte Carlo protocol):
    per future year, the forecast perplexity of the realised job, the binary NLL and AUC of
    unemployment, leaving the labor force and school, and forecast vs realised rates."""

    model: list[str] = flags.option(
        help="model package (CAREER or a baseline), NAME=PKG to name it; repeat to compare "
        "(the first is the reference)",
        metavar="PKG",
        repeat=True,
        path=True,
    )
    data: str = flags.option(
        help="dataset made with `career shard --until YEAR` (its test people are forecast)",
        metavar="DATASET",
        path=True,
    )
    out: str = flags.option(
        help="output folder: forecast.json, forecast.png, scores/, rates/",
        metavar="URL",
        path=True,
    )
    cutoff: int | None = flags.option(
        None,
        help="the cutoff to check against the dataset's (default: the dataset's)",
        metavar="YEAR",
    )
    paths: int = flags.option(1000, help="Monte Carlo futures per person", metavar="N")
    future_education: str = flags.option(
        "carried",
        help="education in future years: carried forward from the cutoff, or read from the "
        "realised future as the public code does (observed: leaks information)",
        choices=FUTURE_EDUCATION,
    )
    seed: int = flags.option(0, help="seed of the paths and of the bootstrap")
    bootstrap: int = flags.option(
        1000, help="person-bootstrap replicates of the 95% intervals (0: none)", metavar="N"
    )
    chunk_size: int = flags.option(
        4096, help="sequences (people x paths) sampled at once", metavar="N"
    )
    storage: StorageSettings = field(default_factory=StorageSettings)
    models: list[tuple[str, str]] = field(init=False, repr=False, metadata={"skip": True})

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("give at least one --model PKG")
        for name in ("paths", "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
        if self.bootstrap < 0:
            raise ValueError(f"--bootstrap must not be negative, not {self.bootstrap}")
        self.models = _named_urls(self.model, "model")
        self.data = storage.absolute(self.data)
        self.out = storage.absolute(self.out)

    def paths_read(self) -> dict[str, str | None]:
        return {**{f"--model {n}": u for n, u in self.models}, "--data": self.data}

    def paths_written(self) -> dict[str, str | None]:
        return {"--out": self.out}


def _cell(estimate: dict | None, digits: int = 3) -> str:
    if not estimate or estimate.get("value") is None:
        return "-"
    text = f"{estimate['value']:.{digits}f}"
    if estimate.get("low") is not None:
        text += f" [{estimate['low']:.{digits}f}, {estimate['high']:.{digits}f}]"
    return text


def _number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_forecast(result: dict[str, Any]) -> None:
    """The comparison table, then the reference's forecast vs realised rates per year."""
    from cluster.console import console, print_rows

    models = result["models"]
    reference = result["reference"]
    states = list(models[reference]["states"])
    rows = []
    for name, summary in models.items():
        difference = result["difference_to_reference"].get(name)
        rows.append(
            [
                name,
                summary["kind"],
                _cell(summary["perplexity"]),
                _cell(difference),
                *(
                    f"{_number(summary['states'][s]['auc'])} / {_number(summary['states'][s]['nll'])}"
                    for s in states
                ),
            ]
        )
    first = models[reference]
    print_rows(
        f"forecast after {first['cutoff']} ({first['scored_people']:,} people, "
        f"{first['future_years']:,} future years, {first['paths']:,} paths each, education "
        f"{first['future_education']})",
        [
            "model",
            "kind",
            "perplexity [95%]",
            f"- {reference} [95%]",
            *(f"{s}: AUC / NLL" for s in states),
        ],
        rows,
    )
    excluded = ", ".join(f"{n:,} {why}" for why, n in first["excluded"].items() if n)
    console.print(
        f"{first['scored_people']:,} of {first['test_people']:,} test people scored"
        + (f"; not scored: {excluded}" if excluded else "")
    )
    years = sorted(first["by_year"], key=int)
    print_rows(
        f"{reference}: forecast vs realised rates (band: 95% of paths)"
        if states
        else f"{reference}: forecast perplexity by year",
        ["year", "perplexity", *states],
        [
            [
                y,
                _number(first["by_year"][y]["perplexity"]),
                *(_rate(first["states"][s]["by_year"].get(y)) for s in states),
            ]
            for y in years
        ],
    )


def _rate(entry: dict | None) -> str:
    if not entry:
        return "-"
    low, high = entry["band"]
    band = f" [{low:.3f}, {high:.3f}]" if low is not None else ""
    return f"{entry['forecast']:.3f}{band} vs {entry['realised']:.3f}"


def forecast(
    settings: ForecastSettings,
    *,
    title: str | None = None,
    on_progress: Callable[[str], Callable[[int, int], None] | None] | None = None,
) -> dict[str, Any]:
    """`eval.forecast.run.forecast_models` with the command's settings; its comparison (nothing
    printed). `title`: the plot's, `{cutoff}` standing for the cutoff."""
    from eval.forecast.run import forecast_models

    return forecast_models(
        settings.models,
        settings.data,
        settings.out,
        paths=settings.paths,
        seed=settings.seed,
        cutoff=settings.cutoff,
        future_education=settings.future_education,
        chunk_size=settings.chunk_size,
        bootstrap=settings.bootstrap,
        storage_options=settings.storage.storage_options,
        title=title,
        on_progress=on_progress,
    )


def run_forecast(settings: ForecastSettings) -> int:
    from cluster.console import console, people_bars

    if settings.future_education == "observed":
        log.warning(
            "--future-education observed reads each person's realised future education: it "
            "leaks information about the years forecast (the public code's choice)"
        )
    start = time.perf_counter()
    with people_bars() as bar:
        result = forecast(settings, on_progress=lambda name: bar(f"forecasting with {name}"))
    print_forecast(result)
    console.print(
        f"forecast in {time.perf_counter() - start:,.1f} s; written to "
        f"{storage.redact(settings.out)} (forecast.json, forecast.png, scores/, rates/)"
    )
    return 0
