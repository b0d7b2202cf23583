"""`career explain`: greedy rationales of next-job predictions (settings, checks, terminal output).

`career explain --model PKG --history "4720:2012 5310:2013 4720:2014"` prints, for the model's
top job in the next year (or `--target JOB`), one line per past year (year, job, kept or not)
and the probability of that job with only the kept years, with the whole history and with none
(`eval.explain`). `--input people.jsonl --out rationales.jsonl` does it for a file in
`career predict`'s format (`eval.explain_files`). A package trained without word dropout gets a
warning, not a refusal: its rationales are computed but unreliable.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any

from cluster import flags
from cluster.evaluate_job import given_covariates
from cluster.settings import StorageSettings
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
    education: str | None = flags.option(
        None,
        help="highest degree: one for every year, or one per history year (and the explained "
        "year), space-separated",
        metavar="DEGREE",
    )
    location: str | None = flags.option(None, help="state of residence", metavar="CODE")
    gender: str | None = flags.option(None, help="gender", metavar="CODE")
    ethnicity: str | None = flags.option(None, help="race/ethnicity", metavar="CODE")
    birth_year: int | None = flags.option(None, help="birth year", metavar="YEAR")
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
        return given_covariates(self)

    def paths_read(self) -> dict[str, str | None]:
        return {"--model": self.model, "--input": self.input}

    def paths_written(self) -> dict[str, str | None]:
        return {"--out": self.out}


def _warn(text: str) -> None:
    print(f"career explain: warning: {text}", file=sys.stderr)


def _explain_file(s: ExplainSettings, loaded: Any) -> int:
    from cluster.report import console
    from eval.explain import rationalize
    from eval.explain_files import Refused, read_people, write_results

    options = s.storage.storage_options
    people, refused = read_people(s.input or "", options)
    results: list[tuple[int, dict[str, Any]]] = [(r.line, r.to_dict()) for r in refused]
    explained = 0
    for person in people:
        try:
            rationale = rationalize(loaded, person.query, person.target or s.target)
        except ValueError as exc:  # a line's own target the model lacks
            refused.append(Refused(person.line, str(exc), person.query.id))
            results.append((person.line, refused[-1].to_dict()))
            continue
        results.append((person.line, {"line": person.line, **rationale.to_dict()}))
        explained += 1
    write_results([r for _, r in sorted(results, key=lambda lr: lr[0])], s.out or "", options)
    shown = storage.redact(s.input or "")
    for item in sorted(refused, key=lambda r: r.line):
        _warn(f"{shown}:{item.line}: refused: {item.reason}")
    console.print(
        f"{explained:,} rationale{'' if explained == 1 else 's'} and {len(refused):,} refused "
        f"line{'' if len(refused) == 1 else 's'} (with the reason) written to "
        f"{storage.redact(s.out or '')}"
    )
    return 0


def run_explain(s: ExplainSettings) -> int:
    from eval.explain import check_explainable, reliability_warning, target_id
    from eval.predict import Query, parse_history
    from trainer.package import load_model

    loaded = load_model(s.model, s.storage.storage_options)
    check_explainable(loaded)
    if s.target is not None:
        target_id(loaded, s.target)  # refused before anything is read
    warning = reliability_warning(loaded)
    if warning:
        _warn(warning)
    if s.input:
        return _explain_file(s, loaded)
    from eval.explain import rationalize

    query = Query(tuple(parse_history(s.history or "")), year=s.year, **s.covariates())
    rationale = rationalize(loaded, query, s.target)
    if rationale.unknown:
        _warn(f"unknown to the model, read as <unk>: {', '.join(rationale.unknown)}")
    if s.json:
        print(json.dumps(rationale.to_dict(), sort_keys=True))
    else:
        print("\n".join(rationale.lines()))
    return 0
