"""Person-year rows for wage models: what a Mincer regression needs, and a model's representation.

A dataset split is read once through the streaming loader (no shuffle, one pass, every person
once). For each person-year with an observed log wage it keeps the person, the calendar year, the
job held that year (the Mincer occupation effect), education, the static covariates, and the
model's representation `represent(batch)[person, t]`: the hidden state that has seen the jobs
of the years before t and the covariates of year t (what the model predicts year t's job from).
So the representation is the *history up to that year* and never the year's own job or wage,
which enter the wage model only through the Mincer terms.

A state is what the model needs to predict the next job; a linear wage model also wants how
often something happened (years out of work, years in a family), which one state need not hold
linearly. Each position's state holds the job of the year before it, so the running sum of the
states up to t does: `pooling="state+sum"` (the default) gives both, `"state"` the state alone.
On the simulator's `wage-gap` data, with a `small` CAREER trained for 300 updates, a linear fit
of the earlier years out of work reached R^2 0.46 from the state and 0.92 from both.

Person-years without a wage (not employed, not reported) are not wage observations: they are
counted (`Counts`), not dropped silently, and they still shape the representation of later
years. `hide` replaces covariates by padding before the model reads them (their embedding is
zero): the wage gap needs a history representation that does not itself carry gender.
`contrast` adds, per row, the model's log-likelihood ratio of the jobs through that year between
two values of a covariate (`log_ratio`; it reads the jobs through year t, the year's own job
included), which the wage gap uses as evidence about the group.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from data_shards import storage
from data_shards.dataset import Dataset, load_dataset
from data_shards.errors import StructuralError
from data_shards.manifest import MANIFEST
from data_shards.stream import read_split
from data_shards.vocab import PAD_ID
from eval.scores import check_compatible, model_device, to_model_ids
from trainer.package import LoadedModel

WAGE_FIELD = "log_wage"
#: Static covariates a wage model may use as controls (those the dataset has).
STATIC_FIELDS = ("location", "gender", "ethnicity", "birth_year")
DEFAULT_TOKENS_PER_BATCH = 8192
#: What the features of year t are: the state at t, or that and the sum of the states at t and
#: before (each state sees one more year of the history, so the sum counts what happened).
POOLINGS = ("state", "state+sum")
DEFAULT_POOLING = "state+sum"


def pooled(hidden: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B, T, C) states -> (B, T, C) or (B, T, 2C) features (see POOLINGS). Padding comes after
    a person's last year, so the running sum over positions never includes it."""
    if pooling == "state":
        return hidden
    return torch.cat([hidden, hidden.cumsum(1)], dim=-1)


def log_ratio(
    model: torch.nn.Module, ids: dict[str, torch.Tensor], name: str, group: int, reference: int
) -> torch.Tensor:
    """(B, T) log P(jobs up to and including year t | name = group) - the same given reference:
    the model's own evidence, from the whole job history through year t, that the person is in
    the group. CAREER is a model of careers given covariates, so by Bayes' rule this is the
    history's propensity score up to the prior odds."""

    def logp(value: int) -> torch.Tensor:
        return model.token_log_probs({**ids, name: torch.where(ids[name] == PAD_ID, PAD_ID, value)})

    real = ids["targets"] != PAD_ID
    return ((logp(group) - logp(reference)) * real).cumsum(1).float()


@dataclass
class Counts:
    """What one split held: people, job-years, and how many of those had a wage."""

    people: int = 0
    people_with_wage: int = 0
    job_years: int = 0
    wage_years: int = 0

    def to_dict(self) -> dict[str, int]:
        return {
            "people": self.people,
            "people_with_wage": self.people_with_wage,
            "job_years": self.job_years,
            "person_years_with_wage": self.wage_years,
            "person_years_without_wage": self.job_years - self.wage_years,
        }


@dataclass
class PersonYears:
    """One row per person-year with a log wage (N rows), in loader order within each split."""

    person: np.ndarray  # (N,) person id (str)
    split: np.ndarray  # (N,) split name (str)
    position: np.ndarray  # (N,) index of the year in the person's sequence
    year: np.ndarray  # (N,) calendar year (int)
    job: np.ndarray  # (N,) the job held that year (dataset job id)
    education: np.ndarray  # (N,) education id that year (0 when the dataset has none)
    static: dict[str, np.ndarray]  # field -> (N,) dataset id, for the STATIC_FIELDS present
    first_year: np.ndarray  # (N,) the person's first observed calendar year
    log_wage: np.ndarray  # (N,) float64
    represent: np.ndarray  # (N, C) float32
    log_ratio: np.ndarray | None = None  # (N,) with a contrast: see `log_ratio`
    counts: dict[str, Counts] = field(default_factory=dict)  # per split
    #: (N, C) float32 with `also_hide`: the representation with those covariates hidden
    represent_hidden: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.log_wage)

    def take(self, index: np.ndarray) -> PersonYears:
        """The rows `index` (a boolean mask or integer indices); counts are kept as they are."""
        return PersonYears(
            person=self.person[index],
            split=self.split[index],
            position=self.position[index],
            year=self.year[index],
            job=self.job[index],
            education=self.education[index],
            static={k: v[index] for k, v in self.static.items()},
            first_year=self.first_year[index],
            log_wage=self.log_wage[index],
            represent=self.represent[index],
            counts=self.counts,
            log_ratio=None if self.log_ratio is None else self.log_ratio[index],
            represent_hidden=None
            if self.represent_hidden is None
            else self.represent_hidden[index],
        )


def check_wages(dataset: Dataset) -> None:
    """Refuse a dataset without log wages, naming its manifest."""
    if WAGE_FIELD not in dataset.manifest.fields.get("float_token_fields", []):
        raise StructuralError(
            "the dataset has no log wages (log_wage): a wage model needs them. Shard a panel "
            "with --wage COL (add --wage-is-log when it holds log wages) or a simulated survey",
            path=storage.redact(storage.join(dataset.url, MANIFEST)),
        )


def check_representation(loaded: LoadedModel, where: str) -> None:
    """Refuse a package whose kind has no representation of the history (`represent`)."""
    if not callable(getattr(loaded.model, "represent", None)):
        raise StructuralError(
            f"a {loaded.kind} package has no representation of the history (represent()): "
            "give a CAREER package (or bag-of-jobs)",
            path=where,
        )


def _represent(
    model: torch.nn.Module, ids: dict[str, torch.Tensor], hide: tuple[str, ...], pooling: str
) -> np.ndarray:
    """The pooled representation of a batch with the covariates `hide` replaced by padding."""
    hidden_from = dict(ids)
    for name in hide:
        if name in hidden_from:
            hidden_from[name] = torch.full_like(ids[name], PAD_ID)
    return pooled(model.represent(hidden_from).float(), pooling).cpu().numpy()


def _split_rows(
    loaded: LoadedModel,
    dataset: Dataset,
    split: str,
    hide: tuple[str, ...],
    contrast: tuple[str, int, int] | None,
    pooling: str,
    storage_options,
    tokens_per_batch: int,
    on_batch: Callable[[int], None] | None,
    also_hide: tuple[str, ...] | None = None,
) -> tuple[dict[str, list[np.ndarray]], Counts]:
    loader = read_split(
        dataset.url, split, tokens_per_batch=tokens_per_batch, storage_options=storage_options
    )
    device = model_device(loaded.model)
    years = dataset.vocab.calendar_years()  # -1 for the special tokens
    statics = [f for f in STATIC_FIELDS if f in dataset.manifest.fields["person_fields"]]
    parts: dict[str, list[np.ndarray]] = {}

    def add(name: str, value: np.ndarray) -> None:
        parts.setdefault(name, []).append(value)

    counts = Counts()
    for batch in loader:
        lengths = batch["lengths"].numpy()
        T = batch["targets"].shape[1]
        real = np.arange(T)[None, :] < lengths[:, None]
        wage = batch[WAGE_FIELD].numpy().astype(np.float64)
        observed = real & np.isfinite(wage)
        ids = to_model_ids(batch, loaded.vocab, device)
        with torch.inference_mode():
            hidden = _represent(loaded.model, ids, hide, pooling)
            also = None if also_hide is None else _represent(loaded.model, ids, also_hide, pooling)
            ratio = None if contrast is None else log_ratio(loaded.model, ids, *contrast)
        rows, cols = np.nonzero(observed)
        counts.people += len(lengths)
        counts.people_with_wage += int(observed.any(1).sum())
        counts.job_years += int(real.sum())
        counts.wage_years += len(rows)
        calendar = years[batch["year"].numpy()]
        add("person", np.asarray(batch["person_id"], dtype=object)[rows])
        add("position", cols)
        add("year", calendar[rows, cols])
        add("first_year", calendar[rows, 0])
        add("job", batch["targets"].numpy()[rows, cols])
        add(
            "education",
            batch["education"].numpy()[rows, cols]
            if "education" in batch
            else np.zeros(len(rows), dtype=np.int64),
        )
        for name in statics:
            add(f"static.{name}", batch[name].numpy()[rows, cols])
        add("log_wage", wage[rows, cols])
        add("represent", hidden[rows, cols])
        if also is not None:
            add("represent_hidden", also[rows, cols])
        if ratio is not None:
            add("log_ratio", ratio.cpu().numpy()[rows, cols])
        if on_batch is not None:
            on_batch(len(lengths))
    return parts, counts


def person_years(
    loaded: LoadedModel,
    data_url: str,
    splits: Iterable[str] = ("train", "valid", "test"),
    *,
    hide: Iterable[str] = (),
    contrast: tuple[str, int, int] | None = None,
    pooling: str = DEFAULT_POOLING,
    storage_options=None,
    tokens_per_batch: int = DEFAULT_TOKENS_PER_BATCH,
    dataset: Dataset | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    also_hide: Iterable[str] | None = None,
) -> PersonYears:
    """The person-years with a log wage of `splits`, with the model's representation (see the
    module). `on_progress(people read, people in those splits)` after each batch. `also_hide`:
    in the same pass, the representation with those covariates hidden (`represent_hidden`: the
    wage table and the wage gap from one read)."""
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose from {', '.join(POOLINGS)}")
    dataset = dataset or load_dataset(data_url, storage_options)
    check_wages(dataset)
    splits = tuple(splits)
    for split in splits:
        check_compatible(loaded.vocab, dataset, split)
    loaded.model.eval()
    total = sum(dataset.manifest.splits[s]["people"] for s in splits)
    done = 0

    def on_batch(people: int) -> None:
        nonlocal done
        done += people
        if on_progress is not None:
            on_progress(done, total)

    merged: dict[str, list[np.ndarray]] = {}
    counts: dict[str, Counts] = {}
    for split in splits:
        parts, counts[split] = _split_rows(
            loaded,
            dataset,
            split,
            tuple(hide),
            contrast,
            pooling,
            storage_options,
            tokens_per_batch,
            on_batch,
            None if also_hide is None else tuple(also_hide),
        )
        n = counts[split].wage_years
        parts["split"] = [np.full(n, split, dtype=object)]
        for name, values in parts.items():
            merged.setdefault(name, []).extend(values)
    flat = {name: np.concatenate(values) for name, values in merged.items()}
    return PersonYears(
        person=flat["person"].astype(str),
        split=flat["split"].astype(str),
        position=flat["position"],
        year=flat["year"],
        job=flat["job"],
        education=flat["education"],
        static={k.split(".", 1)[1]: v for k, v in flat.items() if k.startswith("static.")},
        first_year=flat["first_year"],
        log_wage=flat["log_wage"],
        represent=flat["represent"].astype(np.float32),
        log_ratio=flat.get("log_ratio"),
        counts=counts,
        represent_hidden=flat["represent_hidden"].astype(np.float32)
        if "represent_hidden" in flat
        else None,
    )
