"""Fit a pretrained model to a fine-tuning dataset's vocabulary and covariates.

The dataset's vocabulary must extend the package's (each field a prefix): existing ids keep their
weights and new tokens (`unemployed`, new codes, new years) get fresh rows. Covariates the
pretraining data lacked (gender and ethnicity are absent from resumes) get fresh embeddings.
"""

from __future__ import annotations

import torch

from data_shards.errors import StructuralError
from data_shards.vocab import Vocabulary
from trainer.model import Career, ModelConfig


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


def adapt_to_dataset(
    model: Career, base_vocab: Vocabulary, vocab: Vocabulary, covariates: tuple[str, ...]
) -> tuple[Career, dict]:
    """A copy of `model` sized for `vocab` and embedding `covariates`; notes on what changed."""
    problem = vocab.incompatibility(base_vocab)
    if problem:
        raise StructuralError(
            f"the dataset's vocabulary does not extend the model's ({problem}); shard the fine-tuning "
            "data with --vocab pointing at the pretraining dataset's vocab.json"
        )
    sizes = {name: vocab.size(name) for name in ("job", *covariates)}
    old = model.config
    config = ModelConfig(**{**old.to_dict(), "vocab_sizes": sizes, "covariates": covariates})
    adapted = Career(config)
    state = {
        k: v
        for k, v in model.state_dict().items()
        if not k.startswith(("job_embedding", "head", "covariate_embeddings"))
    }
    adapted.load_state_dict(state, strict=False)
    adapted.job_embedding = _grow_embedding(model.job_embedding, sizes["job"])
    adapted.head = _grow_linear(model.head, sizes["job"])
    notes = {
        "new_job_tokens": sizes["job"] - model.job_embedding.num_embeddings,
        "new_covariates": [],
    }
    for name in covariates:
        if name in model.covariate_embeddings:
            adapted.covariate_embeddings[name] = _grow_embedding(
                model.covariate_embeddings[name], sizes[name]
            )
        else:
            notes["new_covariates"].append(name)  # fresh embedding from Career's init
    return adapted, notes
