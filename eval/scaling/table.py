"""A scaling study's points table: one row per finished point, from its metrics.json alone.

What the fits need, defined once:
- `best_valid_loss`: log of the best validation perplexity, nats per job-year (the loss early
  stopping kept);
- `tokens_at_best`: job-years trained on up to that evaluation (tokens seen x best step /
  updates: every update has the same token budget);
- `unique_tokens`, the D of the laws: the distinct job-years seen up to the best step, the
  smaller of `tokens_at_best` and the corpus subset's tokens. Under one epoch it is Hoffmann et
  al.'s D (tokens trained on); past one epoch repeated tokens do not count again, so a small
  corpus trained for many epochs is a small D (the data-constrained regime);
- `flops`: the model's training FLOPs per token (6 N plus attention over the corpus's mean
  sequence length) times all tokens seen (the compute spent, early-stopped or not).
"""

from __future__ import annotations

import math
from typing import Any

#: The columns of STUDY/points.parquet, in order.
COLUMNS = (
    "name",
    "model",
    "preset",
    "n_layer",
    "d_model",
    "people",
    "token_budget",
    "parameters",
    "non_embedding_parameters",
    "corpus_tokens",
    "tokens_seen",
    "tokens_at_best",
    "unique_tokens",
    "epochs",
    "flops",
    "best_valid_perplexity",
    "best_valid_loss",
    "best_step",
    "updates",
    "stopped_early",
    "wall_seconds",
    "tokens_per_second",
    "survey",
    "survey_test_perplexity",
)


def point_row(
    point: dict[str, Any], metrics: dict[str, Any], survey: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The row of one point. `point`: name, model, preset, n_layer, d_model, people,
    token_budget, parameters, non_embedding_parameters, flops_per_token (from the plan);
    `metrics`: the point's metrics.json; `survey`: its fine-tuned test result, if any."""
    corpus = metrics.get("train_corpus") or {}
    updates = int(metrics["updates"])
    seen = float(metrics["tokens_seen"])
    at_best = seen * int(metrics["best_step"]) / updates if updates else 0.0
    corpus_tokens = float(corpus.get("tokens") or 0) or None
    unique = min(at_best, corpus_tokens) if corpus_tokens else at_best
    planned = int(metrics.get("config", {}).get("updates") or updates)
    best = float(metrics["best_valid_perplexity"])
    return {
        "name": point["name"],
        "model": point["model"],
        "preset": point["preset"],
        "n_layer": point["n_layer"],
        "d_model": point["d_model"],
        "people": int(corpus.get("people") or point["people"]),
        "token_budget": point.get("token_budget"),
        "parameters": int(point["parameters"]),
        "non_embedding_parameters": int(point["non_embedding_parameters"]),
        "corpus_tokens": corpus_tokens,
        "tokens_seen": seen,
        "tokens_at_best": at_best,
        "unique_tokens": unique,
        "epochs": seen / corpus_tokens if corpus_tokens else None,
        "flops": float(point["flops_per_token"]) * seen,
        "best_valid_perplexity": best,
        "best_valid_loss": math.log(best),
        "best_step": int(metrics["best_step"]),
        "updates": updates,
        "stopped_early": updates < planned,
        "wall_seconds": metrics.get("wall_seconds"),
        "tokens_per_second": metrics.get("tokens_per_second"),
        "survey": survey.get("survey") if survey else None,
        "survey_test_perplexity": survey.get("test_perplexity") if survey else None,
    }


def points_frame(rows: list[dict[str, Any]]):
    """The rows as a pandas DataFrame with `COLUMNS` in order (empty with them when no rows)."""
    import pandas as pd

    return pd.DataFrame(rows, columns=list(COLUMNS))
