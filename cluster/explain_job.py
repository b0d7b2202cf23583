"""`career explain`: greedy rationales of next-job predictions (settings, checks, terminal output).

`career explain --model PKG --history "4720:2012 5310:2013 4720:2014"` prints, for the model's
top job in the next year (or `--target JOB`), one line per past year (year, job, kept or not)
and the probability of that job with only the kept years, with the whole history and with none
(`eval.explain.explain_history`). `--input people.jsonl --out rationales.jsonl` does it for a
file in `career predict`'s format (`eval.explain_files.explain_file`). A package trained
without word dropout gets a warning, not a refusal: its rationales are computed but unreliable.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any

from cluster import flags
from cluster.settings import Covariates, StorageSettings
from data_shards import storage


@dataclass(kw_only=True)
class ExplainSettings:
    """Explain next-job predictions of a CAREER package fine-tuned with word dropout
    (model.word_dropout=0.5): the smallest set of past years that alone makes the model predict
    the job as its top choice (greedy rationalization), for one history (--history) or a JSON
    Lines file of people (--input)."""

    model: str = flags.option(help="CAREER model package", metavar="PKG", path=True)
    history: str | None = flags.option(
        None,
        help='the history as JOB:YEAR items, e.g. "4720:2012 5310:2013 4720:2014"',
        metavar="HISTORY",
    )
    target: str | None = flags.option(
        None,
        help="the job to explain (default: the model's top job after the whole history); "
        'with --input, a line\'s "target" comes first',
        metavar="JOB",
    )
    year: int | None = flags.option(
        None, help="the year explained (default: the history's last year + 1)", metavar="YEAR"
    )
    person: Covariates = field(default_factory=Covariates)
    input: str | None = flags.option(
        None,
        help='JSON Lines, one person per line, as career predict reads them ({"history": …} '
        'with optional "id", "year", covariates, and here "target"; or a resume)',
        metavar="URL",
        path=True,
    )
    out: str | None = flags.option(
        None,
        help="where --input's rationales go (JSON Lines, one per line read)",
        metavar="URL",
        path=True,
    )
    json: bool = flags.option(False, help="print JSON instead of text (--history)")
    storage: StorageSettings = field(default_factory=StorageSettings)

    def __post_init__(self) -> None:
        if (self.history is None) == (self.input is None):
            raise ValueError("give either --history or --input (a JSON Lines file of people)")
        if self.input and not self.out:
            raise ValueError("--input needs --out (where the rationales go)")
        if self.out and not self.input:
            raise ValueError("--out goes with --input; --history prints its rationale")

    def covariates(self) -> dict[str, Any]:
        return self.person.given()

    def paths_read(self) -> dict[str, str | None]:
        return {"--model": self.model, "--input": self.input}

    def paths_written(self) -> dict[str, str | None]:
        return {"--out": self.out}


def _warn(text: str) -> None:
    print(f"career explain: warning: {text}", file=sys.stderr)


def _explain_file(settings: ExplainSettings) -> int:
    from cluster.console import console
    from eval.explain_files import explain_file

    done = explain_file(
        settings.model,
        settings.input or "",
        settings.out or "",
        target=settings.target,
        storage_options=settings.storage.storage_options,
        on_warning=_warn,
    )
    shown = storage.redact(settings.input or "")
    for item in done.refused:
        _warn(f"{shown}:{item.line}: refused: {item.reason}")
    refused = len(done.refused)
    console.print(
        f"{done.explained:,} rationale{'' if done.explained == 1 else 's'} and {refused:,} "
        f"refused line{'' if refused == 1 else 's'} (with the reason) written to "
        f"{storage.redact(settings.out or '')}"
    )
    return 0


def run_explain(settings: ExplainSettings) -> int:
    from eval.explain import explain_history

    if settings.input:
        return _explain_file(settings)
    rationale = explain_history(
        settings.model,
        settings.history or "",
        target=settings.target,
        year=settings.year,
        covariates=settings.covariates(),
        storage_options=settings.storage.storage_options,
        on_warning=_warn,
    )
    if rationale.unknown:
        _warn(f"unknown to the model, read as <unk>: {', '.join(rationale.unknown)}")
    if settings.json:
        print(json.dumps(rationale.to_dict(), sort_keys=True))
    else:
        print("\n".join(rationale.lines()))
    return 0
