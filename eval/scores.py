"""Per-token scores: a loaded model package read over a dataset split, one row per job-year.

`score_split` reads the split once through the streaming loader (no shuffling, one pass, every
person once) and asks the model, through the two methods every model kind offers
(`token_log_probs`, `log_probs`), for each real target:

    person_id, position, year, prev_job, target_job    what was predicted (codes as strings;
                                                        prev_job null at a person's first year)
    logp      log P(target | history)                   the model's `token_log_probs`
    p_stay    P(target = last year's job)               NaN at the first year
    rank      the target's rank among all jobs          1 = the model's top job
    oracle_logp                                         when the dataset has it (simulated data)
    weight                                              the person's weight, when the data has them

Rows are sorted by (person_id, position), so a table does not depend on how batches were cut.
Every metric is a function of such a table (`eval.metrics`), never of a live model. The one
aggregate that needs more than the target's probability, the mean predicted distribution of the
next job after each of the split's most common jobs, is filled in the same pass when asked for
(`eval.transitions`; `score_package` writes it as JSON next to the scores).

The dataset's vocabulary must extend the package's (each package field a prefix of the
dataset's). Ids the package does not know (codes, years or covariate values added after it was
trained) are read as `<unk>`, the same id the model was trained to use for them; how many
targets that concerns is kept in the file's metadata (`targets_unknown_to_model`).
"""

from __future__ import annotations

import functools
import io
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from data_shards import storage
from data_shards.dataset import Dataset, load_dataset
from data_shards.errors import StructuralError
from data_shards.manifest import MANIFEST
from data_shards.stream import CareerLoader, read_split
from data_shards.vocab import BOS_ID, FIELD_COLUMNS, PAD_ID, UNK_ID, Vocabulary
from eval.transitions import TransitionSums, frequent_previous_jobs
from trainer.package import LoadedModel, load_model

log = logging.getLogger(__name__)

#: Columns every scores file has, in order; `oracle_logp` and `weight` follow when present.
COLUMNS = ("person_id", "position", "year", "prev_job", "target_job", "logp", "p_stay", "rank")
OPTIONAL_COLUMNS = ("oracle_logp", "weight")
#: Key of the JSON object in the Parquet schema metadata describing where the scores came from.
METADATA_KEY = b"career_scores"
DEFAULT_TOKENS_PER_BATCH = 8192


def check_compatible(package_vocab: Vocabulary, dataset: Dataset, split: str) -> None:
    """Refuse a dataset a package cannot be scored on: a vocabulary that does not extend the
    package's (ids would mean other codes), or a split with no people."""
    problem = dataset.vocab.incompatibility(package_vocab)
    if problem:
        raise StructuralError(
            f"the dataset's vocabulary does not extend the model package's ({problem}): its ids "
            "would name other codes. Shard the data with --vocab pointing at the vocab.json of "
            "the data the model was trained on",
            path=storage.redact(storage.join(dataset.url, "vocab.json")),
        )
    counts = dataset.manifest.splits.get(split) or {}
    if not dataset.manifest.shards_of(split) or not counts.get("people"):
        raise StructuralError(
            f"the {split} split has no people: nothing to score",
            path=storage.redact(storage.join(dataset.url, MANIFEST)),
        )


def model_device(model: Any) -> torch.device:
    """Where a model's weights are (CPU for a model without tensors)."""
    if isinstance(model, torch.nn.Module):
        for tensor in (*model.parameters(), *model.buffers()):
            return tensor.device
    return torch.device("cpu")


def to_model_ids(batch: dict[str, Any], package_vocab: Vocabulary, device) -> dict[str, Any]:
    """The batch's tensors on `device`, with ids the package does not know read as `<unk>`.

    The dataset's vocabulary extends the package's, so an id below the package's field size names
    the same token in both; `inputs` and `targets` are job ids."""
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if not isinstance(value, torch.Tensor):
            continue
        field = "job" if key in ("inputs", "targets") else key
        if field in FIELD_COLUMNS and field in package_vocab.fields:
            value = torch.where(value >= package_vocab.size(field), UNK_ID, value)
        out[key] = value.to(device)
    return out


def score_batch(
    model: Any,
    batch: dict[str, torch.Tensor],
    on_log_probs: Callable[[torch.Tensor], None] | None = None,
) -> dict[str, torch.Tensor]:
    """(B, T) tensors for one batch in the model's ids: `logp`, `p_stay` (NaN where there is no
    previous job) and `rank` (1 + the number of jobs more probable than the target).
    `on_log_probs` is handed the (B, T, V) log-probabilities (the transition aggregate)."""
    inputs, targets = batch["inputs"], batch["targets"]
    with torch.inference_mode():  # one forward pass: every score is read off the (B, T, V) table
        full = model.log_probs(batch).float()  # (B, T, V)
        if on_log_probs is not None:
            on_log_probs(full)
        target = full.gather(-1, targets.clamp(min=0).unsqueeze(-1))  # (B, T, 1)
        logp = torch.where(
            targets != PAD_ID, target.squeeze(-1), torch.zeros_like(targets, dtype=full.dtype)
        )
        rank = (full > target).sum(-1) + 1  # (B, T)
        stay = full.gather(-1, inputs.clamp(min=0).unsqueeze(-1)).squeeze(-1).exp()
        p_stay = torch.where(inputs > BOS_ID, stay, torch.full_like(stay, float("nan")))
    return {"logp": logp, "p_stay": p_stay, "rank": rank}


def _tokens(vocab: Vocabulary, name: str) -> pa.Array:
    return pa.array(vocab.fields[name], pa.string())


def split_batches(
    data_url: str, split: str, tokens_per_batch: int, storage_options=None
) -> CareerLoader:
    """A split's batches in order, each person once (the loader `score_split` reads)."""
    return read_split(
        data_url, split, tokens_per_batch=tokens_per_batch, storage_options=storage_options
    )


def split_transition_rows(
    dataset: Dataset, split: str, k: int, tokens_per_batch: int, storage_options=None
) -> list[int]:
    """The dataset job ids of the `k` most frequent previous jobs of a split
    (`eval.transitions.frequent_previous_jobs`): the rows of every model's transition aggregate
    on it, counted in one streamed pass of the split (no model), before any model is scored."""
    batches = split_batches(dataset.url, split, tokens_per_batch, storage_options)
    return frequent_previous_jobs(batches, k, dataset.vocab.size("job")).tolist()


def score_split(
    loaded: LoadedModel,
    data_url: str,
    split: str = "test",
    *,
    storage_options=None,
    tokens_per_batch: int = DEFAULT_TOKENS_PER_BATCH,
    dataset: Dataset | None = None,
    transitions: TransitionSums | None = None,
) -> pa.Table:
    """The scores table of `loaded` on a split of the dataset at `data_url` (see the module),
    streamed once. `transitions`: an aggregate to fill in the same pass (`eval.transitions`)."""
    dataset = dataset or load_dataset(data_url, storage_options)
    check_compatible(loaded.vocab, dataset, split)
    fields = dataset.manifest.fields
    loader = split_batches(data_url, split, tokens_per_batch, storage_options)
    device = model_device(loaded.model)
    package_jobs = loaded.vocab.size("job")
    years = dataset.vocab.calendar_years()  # -1 for the special tokens
    parts: dict[str, list[np.ndarray]] = {
        name: []
        for name in ("person_id", "position", "year", "prev", "target", "logp", "p_stay", "rank")
    }
    oracle: list[np.ndarray] = []
    weight: list[np.ndarray] = []
    unknown_targets = 0
    for batch in loader:
        aggregate = None
        if transitions is not None:
            aggregate = functools.partial(transitions.add, batch["inputs"], batch["targets"])
        scored = score_batch(loaded.model, to_model_ids(batch, loaded.vocab, device), aggregate)
        targets = batch["targets"].numpy()
        rows, cols = np.nonzero(targets != PAD_ID)  # real targets, row-major: person, then year
        target = targets[rows, cols]
        unknown_targets += int((target >= package_jobs).sum())
        parts["person_id"].append(np.asarray(batch["person_id"], dtype=object)[rows])
        parts["position"].append(cols)
        parts["year"].append(years[batch["year"].numpy()[rows, cols]])
        parts["prev"].append(batch["inputs"].numpy()[rows, cols])
        parts["target"].append(target)
        for name in ("logp", "p_stay", "rank"):
            parts[name].append(scored[name].cpu().numpy()[rows, cols])
        if "oracle_logp" in fields["float_token_fields"]:
            oracle.append(batch["oracle_logp"].numpy()[rows, cols])
        if fields["weight"]:
            weight.append(batch["weight"].numpy()[rows])
    flat = {name: np.concatenate(values) for name, values in parts.items()}
    people = len(set(flat["person_id"].tolist()))
    expected = dataset.manifest.splits[split]["people"]
    if people != expected:  # the loader's contract; a failure here is a bug, not bad input
        raise RuntimeError(
            f"scored {people} people of the {split} split, its manifest has {expected}"
        )
    jobs = _tokens(dataset.vocab, "job")
    prev = flat["prev"]
    columns: dict[str, pa.Array] = {
        "person_id": pa.array(flat["person_id"], pa.string()),
        "position": pa.array(flat["position"].astype(np.int32)),
        "year": pa.array(flat["year"].astype(np.int32), mask=flat["year"] < 0),
        "prev_job": jobs.take(pa.array(prev, mask=prev <= BOS_ID)),
        "target_job": jobs.take(pa.array(flat["target"])),
        "logp": pa.array(flat["logp"].astype(np.float64)),
        "p_stay": pa.array(flat["p_stay"].astype(np.float64)),
        "rank": pa.array(flat["rank"].astype(np.int32)),
    }
    if oracle:
        columns["oracle_logp"] = pa.array(np.concatenate(oracle).astype(np.float64))
    if weight:
        columns["weight"] = pa.array(np.concatenate(weight).astype(np.float64))
    table = pa.table(columns).sort_by([("person_id", "ascending"), ("position", "ascending")])
    if unknown_targets:
        log.warning(
            "%d of %d targets of %s (%s) are codes the model does not know: scored as <unk>",
            unknown_targets,
            len(prev),
            storage.redact(data_url),
            split,
        )
    described = {
        "dataset": dataset.manifest.name,
        "dataset_manifest_sha256": dataset.manifest_sha,
        "split": split,
        "model_kind": loaded.config.get("kind", "career"),
        "model_vocab_hash": loaded.vocab.hash,
        "people": people,
        "tokens": table.num_rows,
        "targets_unknown_to_model": unknown_targets,
    }
    return table.replace_schema_metadata({METADATA_KEY: json.dumps(described, sort_keys=True)})


def describe(table: pa.Table) -> dict[str, Any]:
    """Where a scores table came from (its metadata), {} when it carries none."""
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}


def write_scores(table: pa.Table, url: str, storage_options=None) -> None:
    """Write a scores table as one Parquet file, atomically (a reader never sees half a file)."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    storage.write_bytes_atomic(url, buffer.getvalue(), storage_options)


def read_scores(url: str, storage_options=None) -> pa.Table:
    """A scores file back as a table; refuses a file that is not one."""
    shown = storage.redact(url)
    if not storage.exists(url, storage_options):
        raise StructuralError("no such scores file", path=shown)
    try:
        table = pq.read_table(io.BytesIO(storage.read_bytes(url, storage_options)))
    except (pa.ArrowInvalid, OSError) as exc:
        raise StructuralError(f"not a Parquet file: {exc}", path=shown) from None
    check_scores(table, shown)
    return table


def check_scores(table: pa.Table, source: str = "scores") -> None:
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise StructuralError(f"not a scores table: no column {', '.join(missing)}", path=source)


def score_package(
    model_url: str,
    data_url: str,
    split: str,
    out_url: str,
    *,
    storage_options=None,
    tokens_per_batch: int = DEFAULT_TOKENS_PER_BATCH,
    device: str = "cpu",
    threads: int | None = None,
    transitions_url: str | None = None,
    transition_rows: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Load a package, score it on a split and write the scores to `out_url` (one Parquet file);
    returns `describe` of the table. What a scoring task runs (`career evaluate`: one per model
    and dataset); `device` "cuda" falls back to the CPU where there is no GPU. With
    `transitions_url`, the transition aggregate of the previous jobs `transition_rows` (dataset
    job ids: `split_transition_rows`, a property of the dataset's split counted once for every
    model) is filled in the same pass and written there too (JSON, `eval.transitions`)."""
    if threads:
        torch.set_num_threads(threads)
    if device.startswith("cuda") and not torch.cuda.is_available():
        log.warning("no GPU here: scoring %s on the CPU", storage.redact(model_url))
        device = "cpu"
    loaded = load_model(model_url, storage_options, device=device)
    dataset = load_dataset(data_url, storage_options)
    transitions = None
    if transitions_url and transition_rows is not None:
        rows = np.asarray(transition_rows, dtype=np.int64)
        transitions = TransitionSums(rows, dataset.vocab.size("job"), loaded.vocab.size("job"))
    table = score_split(
        loaded,
        data_url,
        split,
        storage_options=storage_options,
        tokens_per_batch=tokens_per_batch,
        dataset=dataset,
        transitions=transitions,
    )
    write_scores(table, out_url, storage_options)
    described = describe(table)
    if transitions is not None and transitions_url:
        payload = {**transitions.to_dict(dataset.vocab), **described}
        storage.write_json(transitions_url, payload, storage_options)
    return described
