"""`career predict`: settings and terminal output of next-job predictions.

`career predict --model PKG --history "4720:2012 4720:2013 unemployed:2014"` prints the top-k
next jobs with probabilities and P(stay); `--input people.jsonl --out predictions.jsonl` does it
for a file. The predictions are `eval.predict`'s (`predict_history`, `predict_file`); this module
only turns the flags into that call and prints.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from cluster import flags
from cluster.settings import Covariates, StorageSettings
from data_shards import storage


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
    person: Covariates = field(default_factory=Covariates)
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
        return self.person.given()

    def paths_read(self) -> dict[str, str | None]:
        return {"--model": self.model, "--input": self.input}

    def paths_written(self) -> dict[str, str | None]:
        return {"--out": self.out}


def run_predict(settings: PredictSettings) -> int:
    from cluster.console import console, print_rows
    from eval.predict import predict_file, predict_history

    options = settings.storage.storage_options
    if settings.input:
        count = predict_file(
            settings.model,
            settings.input,
            settings.out or "",
            k=settings.top_k,
            storage_options=options,
        )
        console.print(f"{count:,} predictions written to {storage.redact(settings.out or '')}")
        return 0
    prediction = predict_history(
        settings.model,
        settings.history or "",
        k=settings.top_k,
        covariates=settings.covariates(),
        year=settings.year,
        storage_options=options,
    )
    if settings.json:
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
