"""Closed-form fitting: `career pretrain --model markov`, in one process, without DeepSpeed.

Reads the dataset through the same loader training and evaluation read (`read_split`: one pass,
no shuffling): transition counts on the train split, the smoothing alpha chosen on the valid
split, then the validation perplexity of the fitted model scored batch by batch exactly as the
training loop's validation scores a model. Writes the run output a training run writes:
`OUT/package/` (a model package) and `OUT/metrics.json` (valid perplexity, alpha, ...).
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import torch

from data_shards import storage
from data_shards.dataset import load_dataset
from data_shards.stream import read_split
from trainer.config import TrainConfig
from trainer.context import model_for
from trainer.models import markov
from trainer.models.output import JobModel
from trainer.models.registry import get_kind
from trainer.package import write_package


def batches(
    data_url: str, split: str, tokens: int, storage_options=None, people: int | None = None
):
    """One pass over a split's batches (of its first `people` people), in order (the tensors
    only)."""
    loader = read_split(
        data_url, split, tokens_per_batch=tokens, people=people, storage_options=storage_options
    )
    for batch in loader:
        yield {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}


def split_perplexity(
    model: JobModel, data_url: str, split: str, tokens: int, storage_options=None
) -> float:
    """exp(NLL summed over the split's real job-years / their number), as validation does."""
    nll = count = 0.0
    model.eval()
    with torch.no_grad():
        for batch in batches(data_url, split, tokens, storage_options):
            loss, n = model.nll(batch)
            nll, count = nll + float(loss), count + float(n)
    return math.exp(nll / count) if count else float("nan")


def package_perplexity(
    package: str, data_url: str, split: str, tokens: int, storage_options=None
) -> float:
    """`split_perplexity` of the model a package holds (a scaling point's survey score)."""
    from trainer.package import load_model

    model = load_model(package, storage_options).model
    return split_perplexity(model, data_url, split, tokens, storage_options)


def fit_markov(
    model: markov.Markov,
    data_url: str,
    tokens: int,
    storage_options=None,
    train_people: int | None = None,
) -> dict:
    """Count (on the first `train_people` of the train split, or all), choose alpha (unless the
    config fixes it) and set the table; what was decided."""
    V = model.config.vocab_sizes["job"]

    def counts(split: str) -> torch.Tensor:
        total = torch.zeros(V, V, dtype=torch.float64)
        people = train_people if split == "train" else None
        for batch in batches(data_url, split, tokens, storage_options, people):
            total += markov.count_transitions(batch, V)
        return total

    train = counts("train")
    if model.config.alpha is not None:
        alpha, scores = model.config.alpha, {}
    else:
        alpha, scores = markov.choose_alpha(train, counts("valid"), model.config.alphas)
    model.fit(train, alpha)
    return {
        "alpha": alpha,
        "alpha_valid_perplexity": {str(a): s for a, s in scores.items()},
        "tokens_seen": float(train.sum()),
    }


FITTERS = {markov.KIND: fit_markov}


def fit_closed_form(
    config: TrainConfig, data_url: str, out_url: str, storage_options: dict | None = None
) -> dict[str, Any]:
    """Fit `config.kind` (a closed-form kind) on the dataset; write OUT/package and
    OUT/metrics.json; return the metrics (the keys a training run's metrics.json has)."""
    if not get_kind(config.kind).closed_form:
        raise ValueError(f"model kind {config.kind} is trained by the training loop, not fitted")
    started = time.perf_counter()
    config = config.resolve(1, False)
    data = load_dataset(data_url, storage_options)
    model, _ = model_for(config, data.vocab, data.manifest)
    fitted = FITTERS[config.kind](
        model, data_url, config.tokens_per_update, storage_options, config.train_people
    )
    seconds = time.perf_counter() - started
    valid = split_perplexity(model, data_url, "valid", config.tokens_per_update, storage_options)
    metrics = {
        "kind": config.kind,
        "fit": "closed form",
        **fitted,
        "final_valid_perplexity": valid,
        "best_valid_perplexity": valid,
        "best_step": 0,
        "valid_history": [[0, valid]],
        "updates": 0,
        "wall_seconds": round(time.perf_counter() - started, 3),
        "train_seconds": round(seconds, 3),
        "tokens_per_second": None,
        "world_size": 1,
        "config": config.to_dict(),
    }
    write_package(
        storage.join(out_url, "package"),
        model.state_dict(),
        model.config,
        data.vocab,
        metrics,
        data.manifest_sha,
        {"fit": "closed form"},
        storage_options,
    )
    storage.write_bytes_atomic(
        storage.join(out_url, "metrics.json"),
        json.dumps(metrics, indent=1, sort_keys=True, default=str).encode(),
        storage_options,
    )
    return metrics
