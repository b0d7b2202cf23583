"""Greedy rationalization (Vafa et al. 2021, "Rationales for sequential predictions"): the
smallest set of past years that alone makes the model predict a job as its top choice.

A CAREER model fine-tuned with word dropout (`model.word_dropout=0.5`, the paper's mixture) has
learned to predict from any subset of a history: training hid random history positions from
attention. Greedy rationalization hides them on purpose, with the same mask
(`batch["visible"]`, `trainer.models.career.Career.represent`): it starts from no past year, then adds
the year whose addition raises the target's probability most, until the target is the model's
top job given only the kept years.

What is always seen: `<bos>`, and the position being predicted itself, which carries last year's
job as its input (the two-stage output also reads it for P(stay)) and the covariates of the year
explained. Word dropout never hid them in training, so the rationale chooses among the earlier
years; last year is listed as always seen. A model trained without word dropout has never seen a
partial history: its rationales are unreliable (`reliability_warning`), though they are computed.

People come as `eval.predict` queries (one format for `career predict` and `career explain`) or,
for the pipeline, from a dataset split (`explain_people`). The use cases, from a package's URL:
`explain_history` (`career explain --history`), `eval.explain_files.explain_file` (`--input`)
and `rationales_payload` (`career run`'s rationales.json).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import torch

from data_shards.dataset import load_dataset
from data_shards.stream import read_split
from data_shards.vocab import SPECIALS, UNK
from eval.predict import Query, build_batch, parse_history
from eval.scores import check_compatible, model_device, to_model_ids
from trainer.package import LoadedModel, load_model

__all__ = [
    "Rationale",
    "YearRow",
    "check_explainable",
    "explain_history",
    "explain_people",
    "greedy",
    "load_explainable",
    "rationales_payload",
    "rationalize",
    "reliability_warning",
    "target_id",
]


@dataclass
class YearRow:
    """One past year: whether the rationale keeps it, and when greedy added it."""

    year: int
    job: str
    kept: bool
    last: bool = False  # last year: the predicted position's own input, always seen
    step: int | None = None  # 1 = added first
    p_after: float | None = None  # P(target) once it was added


@dataclass
class Rationale:
    """The rationale of one job in one year: every past year with kept or not, and P(target)
    with the kept years, with the whole history, and with no year kept (last year alone)."""

    year: int  # the year explained
    target: str  # the job explained
    given: bool  # False: the model's top job with the whole history
    rows: list[YearRow]
    p_target_kept: float
    p_target_full: float
    p_target_empty: float  # no year kept: last year (always seen) alone
    top_kept: str  # the model's top job with only the kept years
    top_full: str
    is_top: bool  # the target is the top job with only the kept years
    unknown: list[str] = field(default_factory=list)  # inputs read as <unk>
    id: str | None = None
    observed: str | None = None  # dataset people: the job actually held that year

    @property
    def kept_years(self) -> list[int]:
        return [row.year for row in self.rows if row.kept and not row.last]

    def to_dict(self) -> dict[str, Any]:
        out = {key: value for key, value in asdict(self).items() if key != "rows"}
        out["rows"] = [asdict(row) for row in self.rows]
        out["kept_years"] = self.kept_years
        return out

    def lines(self) -> list[str]:
        """Readable text: one line per year (year, job, kept or not), then the probabilities."""
        how = "given" if self.given else "the model's top job"
        who = f"{self.id}: " if self.id else ""
        out = [f"{who}why {self.target} in {self.year} ({how})"]
        width = max([len(row.job) for row in self.rows] + [3])
        for row in self.rows:
            if row.last:
                mark = "seen  (last year: always seen)"
            elif row.kept:
                mark = f"kept  (added {_ordinal(row.step or 0)}: P -> {row.p_after:.3f})"
            else:
                mark = "-"
            out.append(f"  {row.year}  {row.job:<{width}}  {mark}")
        kept = len(self.kept_years)
        alone = "last year alone" if self.rows else "no history"
        top = "its top job" if self.is_top else f"not its top job: {self.top_kept} is"
        if kept:
            seen = f"the {kept} kept year{'s' if kept > 1 else ''} and last year"
            rest = f"; {self.p_target_empty:.4f} with {alone}"
        else:
            seen, rest = alone, ""
        out.append(
            f"P({self.target}) = {self.p_target_kept:.4f} with {seen} ({top}); "
            f"{self.p_target_full:.4f} with the whole history{rest}"
        )
        if self.unknown:
            out.append(f"read as {UNK} (unknown to the model): {', '.join(self.unknown)}")
        return out


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


# ----------------------------------------------------------------------------- checks
def check_explainable(loaded: LoadedModel) -> None:
    """Only CAREER hides history positions (the baselines have no attention to mask)."""
    if loaded.kind != "career":
        raise ValueError(
            f"rationales need a career package (attention over the history); this one is "
            f"{loaded.kind}"
        )


def reliability_warning(loaded: LoadedModel) -> str | None:
    """A warning for a package trained without word dropout (its rationales are unreliable)."""
    rate = float(getattr(loaded.model.config, "word_dropout", 0.0) or 0.0)
    if rate > 0:
        return None
    return (
        "this package was trained without word dropout: it never saw a partial history, so its "
        "rationales are unreliable; fine-tune it with model.word_dropout=0.5 first"
    )


def target_id(loaded: LoadedModel, job: str) -> int:
    """The package's id of a job to explain; a code it lacks (or a special token) is refused."""
    found = loaded.vocab.ids("job").get(str(job))
    if found is None or str(job) in SPECIALS:
        raise ValueError(
            f"target {job!r} is not a job the model knows ({loaded.vocab.size('job') - 3} jobs "
            "in its vocabulary)"
        )
    return found


# ----------------------------------------------------------------------------- the method
class Greedy(NamedTuple):
    target: int  # job id explained
    added: list[tuple[int, float]]  # (position, P(target) after adding it), in order
    p_kept: float
    p_full: float
    p_empty: float
    top_kept: int
    top_full: int
    is_top: bool  # P(target) with the kept years is the largest (ties included)


def _probabilities(model: Any, row: dict[str, torch.Tensor], visible: torch.Tensor, at: int):
    """P(job) (K, V) at position `at` of one person's batch `row` (1, T), seen K times, each
    with its own visible history (K, T)."""
    K = visible.shape[0]
    batch = {key: value.expand(K, *value.shape[1:]) for key, value in row.items()}
    batch["visible"] = visible
    with torch.inference_mode():
        return model.log_probs(batch)[:, at].float().exp()


@torch.no_grad()
def greedy(
    model: Any, row: dict[str, torch.Tensor], position: int, target: int | None = None
) -> Greedy:
    """Greedy rationalization of the job at `position` of one person's batch `row` (tensors
    (1, T), model ids, on the model's device): the history positions 1 … position-1 (past
    years' jobs as inputs) are the candidates; `target` None explains the model's top job."""
    T = row["inputs"].shape[1]
    device = row["inputs"].device
    if not 0 <= position < T:
        raise ValueError(f"position {position} is outside the person's {T} positions")
    everything = torch.ones(1, T, dtype=torch.bool, device=device)
    full = _probabilities(model, row, everything, position)[0]
    top_full = int(full.argmax())
    target = top_full if target is None else int(target)
    kept = torch.zeros(1, T, dtype=torch.bool, device=device)  # <bos> and itself: always seen
    probs = _probabilities(model, row, kept, position)[0]
    p_empty = float(probs[target])
    remaining = list(range(1, position))
    added: list[tuple[int, float]] = []
    while remaining and probs[target] < probs.max():
        trials = kept.repeat(len(remaining), 1)
        candidates = torch.tensor(remaining, device=device)
        trials[torch.arange(len(remaining), device=device), candidates] = True  # one more each
        tried = _probabilities(model, row, trials, position)  # (K, V)
        best = int(tried[:, target].argmax())
        kept, probs = trials[best : best + 1], tried[best]
        added.append((remaining.pop(best), float(probs[target])))
    return Greedy(
        target,
        added,
        float(probs[target]),
        float(full[target]),
        p_empty,
        int(probs.argmax()),
        top_full,
        bool(probs[target] >= probs.max()),
    )


def _rationale(
    found: Greedy, jobs: list[str], years: list[int], history_jobs: list[str], **extra: Any
) -> Rationale:
    """A Rationale from greedy's result; `history_jobs`/`years`: the past years, in order (the
    input at position q is the job of past year q-1; the last one is always seen)."""
    order = {position: (step, p) for step, (position, p) in enumerate(found.added, start=1)}
    rows = []
    for q, (job, year) in enumerate(zip(history_jobs[:-1], years[:-1], strict=True), start=1):
        step, p = order.get(q, (None, None))
        rows.append(YearRow(year=year, job=job, kept=q in order, step=step, p_after=p))
    if history_jobs:
        rows.append(YearRow(year=years[-1], job=history_jobs[-1], kept=True, last=True))
    return Rationale(
        rows=rows,
        target=jobs[found.target],
        p_target_kept=found.p_kept,
        p_target_full=found.p_full,
        p_target_empty=found.p_empty,
        top_kept=jobs[found.top_kept],
        top_full=jobs[found.top_full],
        is_top=found.is_top,
        **extra,
    )


def rationalize(loaded: LoadedModel, query: Query, target: str | None = None) -> Rationale:
    """The rationale of the job in the query's predicted year: of `target`, else of the model's
    top job after the whole history. Codes the package lacks are read as `<unk>` (named in
    `unknown`), as `eval.predict` reads them."""
    check_explainable(loaded)
    wanted = None if target is None else target_id(loaded, target)
    batch, unknown = build_batch(loaded.vocab, [query])
    device = model_device(loaded.model)
    row = {key: v.to(device) for key, v in batch.items() if isinstance(v, torch.Tensor)}
    found = greedy(loaded.model, row, len(query.history), wanted)
    return _rationale(
        found,
        loaded.vocab.fields["job"],
        [year for _, year in query.history],
        [job for job, _ in query.history],
        year=query.next_year,
        given=target is not None,
        unknown=unknown[0],
        id=query.id,
    )


# ----------------------------------------------------------------------------- use cases
def load_explainable(
    model: str,
    *,
    target: str | None = None,
    storage_options=None,
    on_warning: Callable[[str], None] | None = None,
) -> LoadedModel:
    """The package at `model`, refused unless it can be explained (and has the job `target`,
    when given) before anything else is read; `on_warning` gets `reliability_warning`'s text."""
    loaded = load_model(model, storage_options)
    check_explainable(loaded)
    if target is not None:
        target_id(loaded, target)  # refused before anything is read
    warning = reliability_warning(loaded)
    if warning and on_warning is not None:
        on_warning(warning)
    return loaded


def explain_history(
    model: str,
    history: str,
    *,
    target: str | None = None,
    year: int | None = None,
    covariates: dict[str, Any] | None = None,
    storage_options=None,
    on_warning: Callable[[str], None] | None = None,
) -> Rationale:
    """`career explain --history`: the rationale of one history ("JOB:YEAR …") by the package
    at `model` (`rationalize`); codes it lacks are named in the rationale's `unknown`."""
    loaded = load_explainable(
        model, target=target, storage_options=storage_options, on_warning=on_warning
    )
    query = Query(tuple(parse_history(history)), year=year, **(covariates or {}))
    return rationalize(loaded, query, target)


def rationales_payload(package: str, data: str, *, people: int, storage_options=None) -> dict:
    """`career run`'s rationales.json: the rationales of the first `people` test people of the
    dataset at `data` who changed jobs in their last year (the job they moved to, explained by
    their earlier years), from the word-dropout package at `package`."""
    loaded = load_model(package, storage_options)
    found = explain_people(
        loaded, data, "test", people, storage_options, target="observed", movers=True
    )
    return {
        "model": "explain/model",
        "word_dropout": loaded.model.config.word_dropout,
        "target": "observed",
        "movers": True,
        "people": found,
    }


# ----------------------------------------------------------------------------- a dataset split
def explain_people(
    loaded: LoadedModel,
    data_url: str,
    split: str = "test",
    people: int = 5,
    storage_options=None,
    *,
    target: str = "predicted",
    movers: bool = False,
    min_years: int = 3,
) -> list[dict[str, Any]]:
    """Rationales (`Rationale.to_dict()`, with `observed`) of the first `people` people of a
    split (the loader's order, no shuffling) with at least `min_years` years, each explained in
    their last observed year by their earlier ones: of the model's top job (`target`
    "predicted") or of the job they held ("observed"). Last year is always seen, so a top job
    that repeats it often needs no other year: `movers` keeps the people whose last job differs
    from the one before (with "observed", rationales of job changes)."""
    check_explainable(loaded)
    if target not in ("predicted", "observed"):
        raise ValueError(f"target must be 'predicted' or 'observed', not {target!r}")
    if people < 1 or min_years < 2:
        raise ValueError("people must be >= 1 and min_years >= 2 (a year to explain, one before)")
    dataset = load_dataset(data_url, storage_options)
    check_compatible(loaded.vocab, dataset, split)
    jobs, years = dataset.vocab.fields["job"], dataset.vocab.fields["year"]
    known = loaded.vocab.size("job")
    device = model_device(loaded.model)
    loader = read_split(data_url, split, storage_options=storage_options)
    out: list[dict[str, Any]] = []
    for batch in loader:
        ids = to_model_ids(batch, loaded.vocab, device)
        for i, person in enumerate(batch["person_id"]):
            n = int(batch["lengths"][i])
            held = batch["targets"][i, :n].tolist()
            if n < min_years or (movers and held[-1] == held[-2]):
                continue
            row = {k: v[i : i + 1, :n] if v.dim() == 2 else v[i : i + 1] for k, v in ids.items()}
            wanted = int(ids["targets"][i, n - 1]) if target == "observed" else None
            found = greedy(loaded.model, row, n - 1, wanted)
            calendar = [int(years[t]) for t in batch["year"][i, :n].tolist()]
            rationale = _rationale(
                found,
                loaded.vocab.fields["job"],
                calendar[:-1],
                [jobs[t] for t in held[:-1]],
                year=calendar[-1],
                given=target == "observed",
                id=str(person),
                unknown=sorted({jobs[t] for t in held[:-1] if t >= known}),
                observed=jobs[held[-1]],
            )
            out.append(rationale.to_dict())
            if len(out) == people:
                return out
    return out
