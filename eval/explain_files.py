"""People to explain from a JSON Lines file, and their rationales back to one.

The lines are `career predict`'s (`eval.predict.query_from_json`: `{"history": "4720:2012 …"}`
with optional `id`, `year` and covariates, or a resume), so one format serves both commands;
`career explain` also reads an optional `"target"` per line (the job to explain). A line that is
not JSON is a structural error naming the file and line (the file is not what it claims to be).
A line that is JSON but not a usable person (years out of order, an unknown key, a target the
model lacks, text that is not UTF-8) never stops the others and is never dropped silently: it
is refused, counted, and written to the output with its line and reason (`Refused`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from data_shards import storage
from data_shards.errors import StructuralError
from eval.explain import load_explainable, rationalize
from eval.predict import Query, query_from_json


@dataclass(frozen=True)
class Person:
    """One usable line: its number, the query, and the job to explain (None: the top one)."""

    line: int
    query: Query
    target: str | None = None


@dataclass(frozen=True)
class Refused:
    """A line that could not be explained, and why."""

    line: int
    reason: str
    id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"line": self.line, "id": self.id, "error": self.reason}


def _person(record: Any, number: int) -> Person:
    """A Person from one parsed line; raises ValueError/TypeError with the reason."""
    target = None
    if isinstance(record, dict) and "target" in record:
        record = dict(record)
        target = record.pop("target")
        if not isinstance(target, str | int) or isinstance(target, bool):
            raise ValueError(f"target must be a job code (text), not {json.dumps(target)}")
        target = str(target)
    return Person(number, query_from_json(record, f"line-{number:09d}"), target)


def _id_of(record: Any) -> str | None:
    person = record.get("id") if isinstance(record, dict) else None
    return None if person is None else str(person)


def read_people(url: str, storage_options=None) -> tuple[list[Person], list[Refused]]:
    """The usable people of a JSON Lines file and the refused lines (blank lines are skipped)."""
    shown = storage.redact(url)
    if not storage.exists(url, storage_options):
        raise StructuralError("no such file", path=shown)
    people: list[Person] = []
    refused: list[Refused] = []
    lines = storage.read_bytes(url, storage_options).removeprefix(b"\xef\xbb\xbf").split(b"\n")
    for number, raw in enumerate(lines, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            refused.append(Refused(number, f"line is not UTF-8 text (byte {exc.start + 1})"))
            continue
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StructuralError(
                f"not JSON: {exc.msg} (column {exc.colno})", path=shown, line=number
            ) from None
        except (ValueError, RecursionError) as exc:  # e.g. an integer Python refuses to read
            refused.append(Refused(number, f"unreadable JSON: {exc}"))
            continue
        try:
            people.append(_person(record, number))
        except (ValueError, TypeError) as exc:
            refused.append(Refused(number, str(exc), _id_of(record)))
    if not people and not refused:
        raise StructuralError("no people in the file", path=shown)
    return people, refused


def write_results(results: Iterable[dict[str, Any]], url: str, storage_options=None) -> int:
    """One JSON object per line, atomically (a reader never sees half a file); how many."""
    lines = [json.dumps(result, sort_keys=True) for result in results]
    storage.write_bytes_atomic(url, ("\n".join(lines) + "\n").encode(), storage_options)
    return len(lines)


@dataclass(frozen=True)
class ExplainedFile:
    """What `explain_file` wrote: how many rationales, and the refused lines (by line)."""

    explained: int
    refused: list[Refused]


def explain_file(
    model: str,
    input: str,
    out: str,
    *,
    target: str | None = None,
    storage_options=None,
    on_warning: Callable[[str], None] | None = None,
) -> ExplainedFile:
    """`career explain --input`: the rationale of every person of a JSON Lines file by the
    package at `model` (a line's own "target" first, else `target`, else the model's top job),
    written to `out` in the file's line order, each refused line with its reason."""
    loaded = load_explainable(
        model, target=target, storage_options=storage_options, on_warning=on_warning
    )
    people, refused = read_people(input, storage_options)
    results: list[tuple[int, dict[str, Any]]] = [(r.line, r.to_dict()) for r in refused]
    explained = 0
    for person in people:
        try:
            rationale = rationalize(loaded, person.query, person.target or target)
        except ValueError as exc:  # a line's own target the model lacks
            refused.append(Refused(person.line, str(exc), person.query.id))
            results.append((person.line, refused[-1].to_dict()))
            continue
        results.append((person.line, {"line": person.line, **rationale.to_dict()}))
        explained += 1
    write_results([r for _, r in sorted(results, key=lambda lr: lr[0])], out, storage_options)
    return ExplainedFile(explained, sorted(refused, key=lambda r: r.line))
