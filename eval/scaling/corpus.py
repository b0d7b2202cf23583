"""What a scaling study needs to know of its corpus before and after training: vocabulary sizes
(the plan's parameter counts), the mean train length (its token estimates) and the oracle floor
(the fits' irreducible loss, on simulated corpora)."""

from __future__ import annotations

import json
import math
from typing import Any

from data_shards import storage


def corpus_facts(data: str, storage_options) -> dict[str, Any]:
    """What the plan and the fits need of the corpus: vocabulary sizes, mean train length, the
    oracle floor (nats per job-year on valid, simulated corpora only)."""
    from data_shards.dataset import covariates_of
    from data_shards.manifest import load_manifest
    from trainer.models.career import COVARIATES

    manifest = load_manifest(data, storage_options)
    vocab = json.loads(storage.read_text(storage.join(data, "vocab.json"), storage_options))
    fields = vocab.get("fields", vocab)
    covariates = covariates_of(manifest)
    sizes = {"job": len(fields["job"]), **{c: len(fields[c]) for c in covariates}}
    train = manifest.splits["train"]
    oracle = (manifest.oracle_perplexity or {}).get("valid")
    return {
        "manifest": manifest,
        "vocab_sizes": sizes,
        "covariates": covariates if covariates != COVARIATES else None,
        "train_people": int(train["people"]),
        "mean_length": train["tokens"] / max(train["people"], 1),
        "floor": math.log(oracle) if oracle else None,
    }
