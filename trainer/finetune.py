"""Fit a pretrained model to a fine-tuning dataset's vocabulary and covariates.

The dataset's vocabulary must extend the package's (each field a prefix): existing ids keep their
weights and new tokens (`unemployed`, new codes, new years) get fresh rows. Covariates the
pretraining data lacked (gender and ethnicity are absent from resumes) get fresh embeddings.
Only CAREER models adapt; the baselines are trained on each dataset itself.
"""

from __future__ import annotations

import torch

from data_shards.errors import StructuralError
from data_shards.vocab import Vocabulary
from trainer.models.career import Career, ModelConfig


def _grow_embedding(old: torch.nn.Embedding, size: int) -> torch.nn.Embedding:
    new = torch.nn.Embedding(size, old.embedding_dim, padding_idx=old.padding_idx)
    torch.nn.init.normal_(new.weight, std=old.embedding_dim**-0.5)
    with torch.no_grad():
        new.weight[: old.num_embeddings] = old.weight
    return new


def _grow_linear(old: torch.nn.Linear, size: int) -> torch.nn.Linear:
    new = torch.nn.Linear(old.in_features, size)
    torch.nn.init.normal_(new.weight, std=0.02)
    torch.nn.init.zeros_(new.bias)
    with torch.no_grad():
        new.weight[: old.out_features] = old.weight
        new.bias[: old.out_features] = old.bias
    return new


#: Model settings a fine-tune may change (`model.word_dropout=0.5`: the paper's mixture for
#: rationales); the architecture itself is the package's.
TUNABLE = ("dropout", "word_dropout")


def _changed_config(model: Career, changes: dict) -> dict:
    """The package's model config with the `model.*` settings of the fine-tune applied: once
    they were silently ignored, so `model.word_dropout=0.5` trained without word dropout."""
    config = model.config.to_dict()
    for name, value in changes.items():
        if name not in TUNABLE and value != config.get(name):
            raise StructuralError(
                f"model.{name}={value!r}: fine-tuning keeps the package's architecture "
                f"({name} {config.get(name)!r}); only {', '.join(TUNABLE)} can change"
            )
    return {**config, **{name: changes[name] for name in TUNABLE if name in changes}}


def adapt_to_dataset(
    model: Career,
    base_vocab: Vocabulary,
    vocab: Vocabulary,
    covariates: tuple[str, ...],
    changes: dict | None = None,
) -> tuple[Career, dict]:
    """A copy of `model` sized for `vocab` and embedding `covariates`, with the `changes` of
    `TUNABLE` settings (`model.*` overrides); notes on what changed.

    Notes: `new_job_tokens`, `new_tokens` (rows added per grown field), `new_covariates` (fresh
    embeddings), and the two key lists of loading the base's weights into the copy:
    `missing_keys` (weights the base does not have: only the new covariates' embeddings) and
    `unexpected_keys` (base weights the copy has no place for: covariates the dataset lacks).
    """
    if not isinstance(model, Career):
        raise StructuralError(
            f"fine-tuning a {model.config.kind} model is not implemented (only career models "
            "adapt to a new vocabulary)"
        )
    problem = vocab.incompatibility(base_vocab)
    if problem:
        raise StructuralError(
            f"the dataset's vocabulary does not extend the model's ({problem}); shard the fine-tuning "
            "data with --vocab pointing at the pretraining dataset's vocab.json"
        )
    sizes = {name: vocab.size(name) for name in ("job", *covariates)}
    config = ModelConfig(
        **{**_changed_config(model, changes or {}), "vocab_sizes": sizes, "covariates": covariates}
    )
    adapted = Career(config)
    # Every base weight, the vocabulary-sized ones grown (old rows kept, new rows initialised).
    state = dict(model.state_dict())
    grown = {
        "job_embedding": _grow_embedding(model.job_embedding, sizes["job"]),
        "head": _grow_linear(model.head, sizes["job"]),
    }
    for name in covariates:
        if name in model.covariate_embeddings:
            old = model.covariate_embeddings[name]
            grown[f"covariate_embeddings.{name}"] = _grow_embedding(old, sizes[name])
    for prefix, module in grown.items():
        state.update({f"{prefix}.{key}": value for key, value in module.state_dict().items()})
    missing, unexpected = adapted.load_state_dict(state, strict=False)
    base_sizes = {"job": model.job_embedding.num_embeddings} | {
        name: module.num_embeddings for name, module in model.covariate_embeddings.items()
    }
    new_tokens = {n: sizes[n] - base_sizes[n] for n in sizes if n in base_sizes}
    notes = {
        "new_job_tokens": new_tokens["job"],
        "new_tokens": {n: added for n, added in new_tokens.items() if added},
        "new_covariates": [n for n in covariates if n not in model.covariate_embeddings],
        "missing_keys": sorted(missing),
        "unexpected_keys": sorted(unexpected),
    }
    return adapted, notes
