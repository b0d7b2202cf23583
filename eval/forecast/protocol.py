"""Who is forecast, from which history, over which future: the paper's protocol, read off a dataset.

The cutoff is the dataset's (`career shard --until YEAR`, in its manifest): its train and valid
people were cut there, so a model trained on it has seen no later year. Scored are the people of
the test split observed in a year <= the cutoff and in the data's last year (the survey's last
wave); their true history up to the cutoff is the prefix and their observed waves after it are the
future steps (a biennial calendar keeps its gaps). What is carried from the cutoff and what is read
from the future:

    year          the future wave's calendar year (known in advance: it is the survey's calendar);
                  years past the last one trained use its embedding (`sample_futures`)
    education     carried forward from the cutoff (default), or read from the realised future
                  (`future_education="observed"`, the public code's choice: it leaks information,
                  since staying in school or a new degree says much about the years ahead)
    static fields (gender, ethnicity, location, birth year) fixed, as they are

The public code's off-by-one (stepping onto the end-of-sequence target) cannot happen here: the
loader has no end-of-sequence token and the future is exactly the person's remaining years.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from data_shards import storage
from data_shards.dataset import Dataset
from data_shards.errors import StructuralError
from data_shards.manifest import MANIFEST
from data_shards.stream import read_split
from data_shards.vocab import PAD_ID
from eval.forecast.sample import Batch, split_at
from eval.scores import check_compatible, to_model_ids
from trainer.package import LoadedModel

FUTURE_EDUCATION = ("carried", "observed")
#: Why a test person is not scored (counted, never silently dropped).
EXCLUDED = ("no year up to the cutoff", "not observed in the last wave", "no year after the cutoff")


@dataclass
class ForecastPeople:
    """The scored people of a dataset's test split in a package's ids; N people, S future steps."""

    person_id: list[str]
    history: Batch  # inputs/targets/covariates (N, T) cut after each person's last year <= cutoff
    future: Batch  # "year" (+ "education" when observed) (N, S), 0 past each person's last step
    realised: torch.Tensor  # (N, S) realised job ids, 0 past the last step
    previous: torch.Tensor  # (N, S) the realised job of the year before each step
    years: np.ndarray  # (N, S) calendar year of each step, 0 past the last
    positions: np.ndarray  # (N, S) position of each step in the person's whole sequence
    weight: np.ndarray | None  # (N,) survey weights, when the data has them
    cutoff: int
    last_year: int
    last_trained_year_id: int  # the package's id of the last wave up to the cutoff
    future_education: str
    considered: int  # test people read
    excluded: dict[str, int] = field(default_factory=dict)

    @property
    def steps(self) -> torch.Tensor:
        return self.realised != PAD_ID


def dataset_cutoff(dataset: Dataset, cutoff: int | None) -> int:
    """The dataset's cutoff; `cutoff`, when given, must be it. A dataset without one is refused:
    a model trained on it may have seen the years it would be asked to forecast."""
    recorded = dataset.manifest.config.get("until")
    where = storage.redact(storage.join(dataset.url, MANIFEST))
    if recorded is None:
        raise StructuralError(
            "this dataset has no forecasting cutoff, so its training people keep their later "
            "years; shard it with `career shard ... --until YEAR` (the paper: 2014) and train on "
            "that dataset",
            path=where,
        )
    if cutoff is not None and cutoff != recorded:
        raise StructuralError(
            f"--cutoff {cutoff} is not this dataset's cutoff ({recorded}); a model trained on it "
            f"saw years up to {recorded}",
            path=where,
        )
    return int(recorded)


def _read_split(url: str, split: str, storage_options, tokens_per_batch: int) -> list[dict]:
    loader = read_split(
        url, split, tokens_per_batch=tokens_per_batch, storage_options=storage_options
    )
    return list(loader)


def _stack(batches: list[dict]) -> dict:
    """Loader batches of different widths as one right-padded batch."""
    T = max(b["inputs"].shape[1] for b in batches)
    out: dict = {"person_id": [p for b in batches for p in b["person_id"]]}
    for name, value in batches[0].items():
        if not torch.is_tensor(value):
            continue
        parts = []
        for b in batches:
            v = b[name]
            if v.dim() == 2:
                v = torch.nn.functional.pad(v, (0, T - v.shape[1]), value=0)
            parts.append(v)
        out[name] = torch.cat(parts)
    return out


def read_test(dataset: Dataset, storage_options=None, tokens_per_batch: int = 16384) -> dict:
    """The test split as one right-padded batch in the dataset's ids (any package's people)."""
    return _stack(_read_split(dataset.url, "test", storage_options, tokens_per_batch))


def forecast_people(
    loaded: LoadedModel,
    dataset: Dataset,
    cutoff: int | None = None,
    future_education: str = "carried",
    storage_options=None,
    tokens_per_batch: int = 16384,
    test: dict | None = None,
) -> ForecastPeople:
    """The scored people of `dataset`'s test split, their histories and futures (see the module).
    `test`: the split as `read_test` returns it, when already read (for several packages)."""
    if future_education not in FUTURE_EDUCATION:
        raise ValueError(
            f"future education must be one of {', '.join(FUTURE_EDUCATION)}, not {future_education!r}"
        )
    cutoff = dataset_cutoff(dataset, cutoff)
    check_compatible(loaded.vocab, dataset, "test")
    where = storage.redact(dataset.url)
    batch = test if test is not None else read_test(dataset, storage_options, tokens_per_batch)
    calendar = dataset.vocab.calendar_years(unknown=0)
    real = batch["targets"] != PAD_ID
    years = np.where(real.numpy(), calendar[batch["year"].numpy()], 0)
    # The last wave up to the cutoff (a biennial survey may have none in the cutoff year itself):
    # the last year whose embedding the model was trained on.
    last_trained = int(years[real.numpy() & (years <= cutoff)].max(initial=0))
    last_year = int(years.max())
    before = (real.numpy() & (years <= cutoff)).sum(1)
    after = (real.numpy() & (years > cutoff)).sum(1)
    ends = years.max(1)
    reasons = {
        EXCLUDED[0]: before == 0,
        EXCLUDED[1]: (before > 0) & (ends < last_year),
        EXCLUDED[2]: (before > 0) & (ends >= last_year) & (after == 0),
    }
    keep = (before > 0) & (ends >= last_year) & (after > 0)
    if not keep.any():
        raise StructuralError(
            f"no test person is observed both up to the cutoff {cutoff} and in the last year "
            f"{last_year}: nothing to forecast",
            path=where,
        )
    year_ids = loaded.vocab.ids("year")
    if str(last_trained) not in year_ids:
        raise StructuralError(f"the model's year vocabulary has no {last_trained}", path=where)
    rows = torch.from_numpy(np.nonzero(keep)[0])
    chosen = {
        k: v[rows] for k, v in batch.items() if torch.is_tensor(v) and v.shape[0] == len(keep)
    }
    model_batch = to_model_ids(chosen, loaded.vocab, "cpu")
    history_lengths = torch.from_numpy(before[keep])
    history, after_cov, realised = split_at(model_batch, history_lengths)
    future = {"year": after_cov["year"]}
    if future_education == "observed" and "education" in after_cov:
        future["education"] = after_cov["education"]
    K = history_lengths.long()
    S = realised.shape[1]
    step_years = np.zeros((len(K), S), dtype=np.int64)
    raw_years = batch["year"][rows]
    cols = (K[:, None] + torch.arange(S)[None]).clamp(max=raw_years.shape[1] - 1)
    live = (realised != PAD_ID).numpy()
    step_years = np.where(live, calendar[raw_years.gather(1, cols).numpy()], 0)
    previous = torch.where(
        realised != PAD_ID, model_batch["inputs"].gather(1, cols), torch.zeros_like(realised)
    )
    weight = batch["weight"][rows].numpy() if "weight" in batch else None
    return ForecastPeople(
        person_id=[batch["person_id"][i] for i in rows.tolist()],
        history=history,
        future=future,
        realised=realised,
        previous=previous,
        years=step_years,
        positions=np.where(live, cols.numpy(), 0),
        weight=weight,
        cutoff=cutoff,
        last_year=last_year,
        last_trained_year_id=year_ids[str(last_trained)],
        future_education=future_education,
        considered=len(keep),
        excluded={reason: int(mask.sum()) for reason, mask in reasons.items()},
    )
