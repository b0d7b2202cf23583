"""Next-job predictions for given histories: the top-k jobs with their probabilities and P(stay).

A history is a list of (job, year) pairs, e.g. [("4720", 2012), ("4720", 2013),
("unemployed", 2014)]; the year predicted is the last year + 1 unless given. The batch is built
exactly as the loader builds one (`data_shards.stream.collate`): inputs `<bos>`, j1 … jn;
covariates aligned to the target year (the year, and education, of the year being predicted at
each position; static covariates repeated); padding 0. The position being predicted has an
`<unk>` target (a real year whose job is unknown). Codes, years or covariate values the package's
vocabulary lacks are read as `<unk>`, with a warning naming them; a covariate not given is
padding, as the loader gives a person whose value is missing.

Files (`read_queries`): JSON Lines, one person per line, either `{"history": "4720:2012 …"}`
(optional `id`, `year`, `education`, `location`, `gender`, `ethnicity`, `birth_year`) or a resume
as `data_shards.readers.resume_jsonl` reads it (jobs with start and end dates).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from data_shards import storage
from data_shards.errors import StructuralError
from data_shards.readers.common import RecordError
from data_shards.readers.resume_jsonl import ResumeOptions, resume_to_record
from data_shards.vocab import BOS_ID, PAD_ID, UNK, UNK_ID, Vocabulary
from eval.scores import model_device
from trainer.package import LoadedModel, load_model

log = logging.getLogger(__name__)

STATIC = ("location", "gender", "ethnicity", "birth_year")
COVARIATE_KEYS = ("education", *STATIC)
BATCH_PEOPLE = 256


@dataclass(frozen=True)
class Query:
    """One person to predict for: the history, the year predicted (default: last year + 1) and
    covariates. `education`: one degree for every year, or one per history year (the predicted
    year keeps the last), or one per history year plus the predicted year."""

    history: tuple[tuple[str, int], ...]
    year: int | None = None
    education: str | tuple[str, ...] | None = None
    location: str | None = None
    gender: str | None = None
    ethnicity: str | None = None
    birth_year: int | None = None
    id: str | None = None

    def __post_init__(self) -> None:
        history = tuple((str(job), int(year)) for job, year in self.history)
        object.__setattr__(self, "history", history)
        years = [year for _, year in history]
        if any(b <= a for a, b in zip(years, years[1:], strict=False)):
            raise ValueError(f"history years must increase strictly, got {years}")
        if not history and self.year is None:
            raise ValueError("an empty history needs the year to predict")
        if history and self.year is not None and self.year <= years[-1]:
            raise ValueError(f"the year predicted ({self.year}) must come after {years[-1]}")
        if isinstance(self.education, list):
            object.__setattr__(self, "education", tuple(self.education))
        if isinstance(self.education, tuple) and len(self.education) not in (
            len(history),
            len(history) + 1,
        ):
            raise ValueError(
                f"education gives {len(self.education)} values for {len(history)} history years "
                "(give one, one per history year, or one per history year plus the predicted year)"
            )

    @property
    def next_year(self) -> int:
        return self.year if self.year is not None else self.history[-1][1] + 1

    def education_by_year(self) -> list[str | None]:
        """Education of each target year: the history's years, then the year predicted."""
        n = len(self.history) + 1
        if self.education is None or isinstance(self.education, str):
            return [self.education] * n
        values = list(self.education)
        return values + values[-1:] if len(values) == n - 1 else values


@dataclass
class Prediction:
    year: int  # the year predicted
    last_job: str | None  # the history's last job (P(stay) is its probability)
    p_stay: float | None
    top: list[tuple[str, float]]  # (job, probability), most probable first
    unknown: list[str] = field(default_factory=list)  # inputs read as <unk>
    probabilities: np.ndarray | None = field(default=None, repr=False)  # (V,): the package's jobs
    id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id} if self.id is not None else {}
        out.update(
            {
                "year": self.year,
                "last_job": self.last_job,
                "p_stay": self.p_stay,
                "top": [{"job": job, "probability": p} for job, p in self.top],
                "unknown": self.unknown,
            }
        )
        return out


def parse_history(text: str) -> list[tuple[str, int]]:
    """`"4720:2012 4720:2013 unemployed:2014"` -> [("4720", 2012), …] (commas also separate)."""
    history = []
    for item in text.replace(",", " ").split():
        job, sep, year = item.rpartition(":")
        if not sep or not job or not year.strip().lstrip("-").isdigit():
            raise ValueError(f"history item {item!r} is not JOB:YEAR (e.g. 4720:2012)")
        history.append((job, int(year)))
    return history


# ----------------------------------------------------------------------------- the batch
class _Encoder:
    """Ids in the package's vocabulary; what it could not find is remembered, by field."""

    def __init__(self, vocab: Vocabulary):
        self.vocab = vocab
        self.unknown: list[str] = []

    def __call__(self, name: str, value: Any) -> int:
        if value is None:
            return PAD_ID
        token = str(value)
        found = self.vocab.ids(name).get(token)
        if found is None:
            label = token if name == "job" else f"{name}={token}"
            if label not in self.unknown:
                self.unknown.append(label)
            return UNK_ID
        return found


def build_batch(
    vocab: Vocabulary, queries: Sequence[Query]
) -> tuple[dict[str, Any], list[list[str]]]:
    """The Batch of `queries` (padded as the loader pads) and, per query, what was read as <unk>."""
    lengths = np.array([len(q.history) + 1 for q in queries], dtype=np.int64)
    B, T = len(queries), int(lengths.max())
    targets = np.zeros((B, T), dtype=np.int64)
    year = np.zeros((B, T), dtype=np.int64)
    education = np.zeros((B, T), dtype=np.int64)
    statics = {name: np.zeros((B, T), dtype=np.int64) for name in STATIC}
    unknown = []
    for i, query in enumerate(queries):
        encode = _Encoder(vocab)
        n = int(lengths[i])
        jobs = [encode("job", job) for job, _ in query.history]
        targets[i, :n] = [*jobs, UNK_ID]  # the year predicted: a real target, job unknown
        year[i, :n] = [encode("year", y) for y in [*(y for _, y in query.history), query.next_year]]
        education[i, :n] = [encode("education", e) for e in query.education_by_year()]
        for name in STATIC:
            statics[name][i, :n] = encode(name, getattr(query, name))
        unknown.append(encode.unknown)
    inputs = np.full((B, T), PAD_ID, dtype=np.int64)
    inputs[:, 0] = BOS_ID
    inputs[:, 1:] = targets[:, :-1]
    inputs[np.arange(T)[None, :] >= lengths[:, None]] = PAD_ID
    batch: dict[str, Any] = {
        "inputs": torch.from_numpy(inputs),
        "targets": torch.from_numpy(targets),
        "lengths": torch.from_numpy(lengths),
        "person_id": [q.id or f"query-{i}" for i, q in enumerate(queries)],
        "year": torch.from_numpy(year),
        "education": torch.from_numpy(education),
        **{name: torch.from_numpy(values) for name, values in statics.items()},
    }
    return batch, unknown


# ----------------------------------------------------------------------------- predicting
def predict(
    loaded: LoadedModel, queries: Iterable[Query], k: int = 10, *, keep_probabilities: bool = False
) -> list[Prediction]:
    """The top-`k` next jobs of each query, with probabilities and P(stay)."""
    if k < 1:
        raise ValueError(f"top-k must be at least 1, not {k}")
    queries = list(queries)
    jobs = loaded.vocab.fields["job"]
    device = model_device(loaded.model)
    out: list[Prediction] = []
    for start in range(0, len(queries), BATCH_PEOPLE):
        chunk = queries[start : start + BATCH_PEOPLE]
        batch, unknown = build_batch(loaded.vocab, chunk)
        tensors = {key: v.to(device) for key, v in batch.items() if isinstance(v, torch.Tensor)}
        with torch.inference_mode():
            log_probs = loaded.model.log_probs(tensors).float()  # (B, T, V)
        last = batch["lengths"] - 1
        rows = torch.arange(len(chunk))
        probs = log_probs[rows, last.to(device)].exp().cpu().double().numpy()  # (B, V)
        previous = batch["inputs"][rows, last].numpy()
        for i, query in enumerate(chunk):
            top = np.argsort(-probs[i], kind="stable")[: min(k, len(jobs))]
            if unknown[i]:
                log.warning(
                    "%sunknown to the model, read as %s: %s",
                    f"{query.id}: " if query.id else "",
                    UNK,
                    ", ".join(unknown[i]),
                )
            has_last = bool(query.history)
            out.append(
                Prediction(
                    year=query.next_year,
                    last_job=query.history[-1][0] if has_last else None,
                    p_stay=float(probs[i, previous[i]]) if has_last else None,
                    top=[(jobs[j], float(probs[i, j])) for j in top],
                    unknown=unknown[i],
                    probabilities=probs[i] if keep_probabilities else None,
                    id=query.id,
                )
            )
    return out


def top_k(
    loaded: LoadedModel,
    history: Sequence[tuple[str, int]] | str,
    k: int = 10,
    *,
    covariates: dict[str, Any] | None = None,
    year: int | None = None,
) -> Prediction:
    """The top-k next jobs after one history, with probabilities and P(stay).

    `covariates`: any of education (one degree, or one per year), location, gender, ethnicity,
    birth_year. The returned prediction keeps the whole distribution (`probabilities`)."""
    covariates = dict(covariates or {})
    extra = set(covariates) - set(COVARIATE_KEYS)
    if extra:
        raise ValueError(f"unknown covariates {sorted(extra)}; known: {', '.join(COVARIATE_KEYS)}")
    if isinstance(history, str):
        history = parse_history(history)
    query = Query(tuple(history), year=year, **covariates)
    return predict(loaded, [query], k, keep_probabilities=True)[0]


# ----------------------------------------------------------------------------- files
def query_from_json(record: Any, fallback_id: str) -> Query:
    """A query from one parsed JSON line: `{"history": …}` or a resume. Raises ValueError."""
    if not isinstance(record, dict):
        raise ValueError(f"a line must hold a JSON object, got {type(record).__name__}")
    person = record.get("id")
    person = fallback_id if person is None else str(person)
    if "history" in record:
        history = record["history"]
        history = parse_history(history) if isinstance(history, str) else history
        extra = set(record) - {"history", "id", "year", *COVARIATE_KEYS}
        if extra:
            raise ValueError(f"unknown keys {sorted(extra)}")
        return Query(
            tuple((job, year) for job, year in history),
            year=record.get("year"),
            id=person,
            **{key: record[key] for key in COVARIATE_KEYS if record.get(key) is not None},
        )
    try:
        fields = resume_to_record(record, ResumeOptions())
    except RecordError as exc:
        raise ValueError(f"not a history and not a readable resume: {exc}") from None
    return Query(
        tuple(zip(fields["jobs"], fields["years"], strict=True)),
        education=tuple(fields["education"]) if fields.get("education") else None,
        location=fields.get("location"),
        gender=fields.get("gender"),
        ethnicity=fields.get("ethnicity"),
        birth_year=fields.get("birth_year"),
        id=person,
    )


def read_queries(url: str, storage_options=None) -> list[Query]:
    """One query per non-blank line of a JSON Lines file; a bad line is refused with its number."""
    shown = storage.redact(url)
    if not storage.exists(url, storage_options):
        raise StructuralError("no such file", path=shown)
    queries = []
    for number, line in enumerate(storage.read_text(url, storage_options).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            queries.append(query_from_json(json.loads(line), f"line-{number:09d}"))
        except (ValueError, TypeError) as exc:  # JSONDecodeError is a ValueError
            raise StructuralError(str(exc), path=shown, line=number) from None
    if not queries:
        raise StructuralError("no people in the file", path=shown)
    return queries


def write_predictions(predictions: Iterable[Prediction], url: str, storage_options=None) -> int:
    """Write one JSON object per prediction (JSON Lines), atomically; returns how many."""
    lines = [json.dumps(p.to_dict(), sort_keys=True) for p in predictions]
    storage.write_bytes_atomic(url, ("\n".join(lines) + "\n").encode(), storage_options)
    return len(lines)


# ----------------------------------------------------------------------------- use cases
def predict_history(
    model: str,
    history: Sequence[tuple[str, int]] | str,
    *,
    k: int,
    covariates: dict[str, Any] | None = None,
    year: int | None = None,
    storage_options=None,
) -> Prediction:
    """`career predict --history`: the top-k next jobs of the package at `model` after one
    history (`top_k`)."""
    loaded = load_model(model, storage_options)
    return top_k(loaded, history, k, covariates=covariates, year=year)


def predict_file(model: str, input: str, out: str, *, k: int, storage_options=None) -> int:
    """`career predict --input`: the top-k next jobs of every person of a JSON Lines file
    (`read_queries`), written to `out` as JSON Lines; returns how many."""
    loaded = load_model(model, storage_options)
    queries = read_queries(input, storage_options)
    return write_predictions(predict(loaded, queries, k), out, storage_options)
