"""The size of each model of a scaling study before anything is trained: its parameters and
training FLOPs per token on the corpus's vocabulary, and, for a simulated corpus not sharded
yet, that vocabulary from a small sample (what `career scale --plan` needs)."""

from __future__ import annotations

from typing import Any, Protocol


class ModelSpec(Protocol):
    """A grid's model: a preset and the widths that change it (`cluster.scale.grid.ModelSpec`)."""

    preset: str

    def widths(self) -> dict[str, int]: ...


#: A simulated corpus's vocabulary, when it is not sharded yet, comes from this many people.
SAMPLE_PEOPLE = 5_000


def sample_corpus(preset: str, seed: int = 0) -> tuple[dict[str, int], float]:
    """Each field's vocabulary size (values + the 3 special ids) in a small simulated sample,
    and its mean sequence length (job-years per person)."""
    import pyarrow.compute as pc

    from data_shards.synth.generate import simulate_chunk
    from data_shards.synth.presets import PRESETS

    batch = simulate_chunk(PRESETS[preset], SAMPLE_PEOPLE, seed, 0)
    sizes = {}
    for name, column in (
        ("job", "jobs"),
        ("year", "years"),
        ("education", "education"),
        ("location", "location"),
        ("gender", "gender"),
        ("ethnicity", "ethnicity"),
        ("birth_year", "birth_year"),
    ):
        if column not in batch.schema.names:
            continue
        values = batch.column(column)
        if hasattr(values, "flatten") and str(values.type).startswith("list"):
            values = values.flatten()
        distinct = len(pc.unique(values.drop_null()))
        if distinct:  # a field the preset leaves empty (resumes' demographics) is not embedded
            sizes[name] = distinct + 3
    lengths = pc.list_value_length(batch.column("jobs"))
    return sizes, float(pc.mean(lengths).as_py())


def describe(model: ModelSpec, vocab_sizes: dict[str, int], mean_length: float) -> dict[str, Any]:
    """Parameters (total, non-embedding) and training FLOPs per token of one model."""
    from trainer.models.career import COVARIATES, build_model

    covariates = tuple(c for c in COVARIATES if c in vocab_sizes)  # those the corpus has
    built = build_model(vocab_sizes, model.preset, covariates=covariates, **model.widths())
    return {
        "n_layer": built.config.n_layer,
        "d_model": built.config.d_model,
        "parameters": built.num_parameters(),
        "non_embedding_parameters": built.non_embedding_parameters(),
        "flops_per_token": built.flops_per_token(mean_length),
    }
