"""The CAREER model: sizes of presets, two-stage probabilities, padding invariance, finetune growth."""

import pytest
import torch

from data_shards.vocab import Vocabulary
from trainer.finetune import adapt_to_dataset
from trainer.models.career import (
    BOS_ID,
    COVARIATES,
    PAD_ID,
    PRESETS,
    Career,
    ModelConfig,
    build_model,
)

SIZES = {
    "job": 340,
    "year": 254,
    "education": 8,
    "location": 55,
    "gender": 5,
    "ethnicity": 7,
    "birth_year": 254,
}
EXPECTED_PARAMETERS = {
    "tiny": (0.03e6, 0.1e6),
    "panel": (0.1e6, 0.3e6),
    "small": (0.5e6, 2e6),
    "paper": (5.3e6, 5.8e6),
    "medium": (30e6, 50e6),
    "large": (100e6, 130e6),
}


def make_batch(B=4, T=9, seed=0, lengths=None):
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(3, SIZES["job"], (B, T), generator=g)
    targets[:, 2] = targets[:, 1]  # some stays
    lengths = torch.tensor(lengths or [T] * B)
    real = torch.arange(T)[None, :] < lengths[:, None]
    targets = torch.where(real, targets, torch.zeros_like(targets))
    inputs = torch.cat([torch.full((B, 1), BOS_ID), targets[:, :-1]], dim=1)
    inputs = torch.where(real, inputs, torch.zeros_like(inputs))
    batch = {"inputs": inputs, "targets": targets, "lengths": lengths}
    for name in COVARIATES:
        values = torch.randint(3, SIZES[name], (B, T), generator=g)
        batch[name] = torch.where(real, values, torch.zeros_like(values))
    return batch


@pytest.mark.parametrize("preset", list(PRESETS))
def test_preset_sizes_on_meta_device(preset):
    with torch.device("meta"):
        model = build_model(SIZES, preset)
    low, high = EXPECTED_PARAMETERS[preset]
    assert low <= model.num_parameters() <= high


@pytest.mark.parametrize("preset", ["tiny", "small", "paper", "medium"])
def test_one_cpu_training_step_per_preset(preset):
    torch.manual_seed(0)
    model = build_model(SIZES, preset)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = make_batch(B=2, T=6)
    before = model.blocks[0].qkv.weight.detach().clone()
    nll, count = model.nll(batch)
    (nll / count).backward()
    optimizer.step()
    assert torch.isfinite(nll) and count == 12
    assert not torch.equal(before, model.blocks[0].qkv.weight)


def test_two_stage_probabilities_sum_to_one_and_match_a_direct_computation():
    torch.manual_seed(1)
    model = build_model(SIZES, "tiny").eval()
    batch = make_batch()
    logp = model.log_probs(batch)
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(logp.shape[:2]), rtol=1e-5, atol=1e-5)
    logits, stay = model(batch)
    b, t = 1, 3
    prev = int(batch["inputs"][b, t])
    pi = torch.sigmoid(stay[b, t])
    others = logits[b, t].clone()
    others[[PAD_ID, BOS_ID, prev]] = float("-inf")
    direct = (1 - pi) * torch.softmax(others, -1)
    direct[prev] = pi
    torch.testing.assert_close(logp[b, t].exp(), direct, rtol=1e-5, atol=1e-6)
    first = torch.softmax(torch.cat([torch.full((2,), float("-inf")), logits[b, 0, 2:]]), -1)
    torch.testing.assert_close(
        logp[b, 0].exp(), first, rtol=1e-5, atol=1e-6
    )  # year one: plain softmax
    targets = batch["targets"]
    torch.testing.assert_close(
        model.token_log_probs(batch), logp.gather(-1, targets[..., None]).squeeze(-1)
    )


def test_one_stage_model():
    model = Career(
        ModelConfig(vocab_sizes=SIZES, n_layer=1, d_model=16, n_head=2, d_ff=32, two_stage=False)
    ).eval()
    logp = model.log_probs(make_batch())
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(logp.shape[:2]))


def test_padding_and_other_people_never_leak():
    torch.manual_seed(2)
    model = build_model(SIZES, "tiny").eval()
    alone = make_batch(B=1, T=5, seed=3)
    crowd = make_batch(B=3, T=9, seed=4, lengths=[9, 5, 2])
    for key in alone:
        if key == "lengths":
            continue
        crowd[key][1, :5] = alone[key][0]
    lp_alone = model.token_log_probs(alone)[0]
    lp_crowd = model.token_log_probs(crowd)[1, :5]
    torch.testing.assert_close(lp_alone, lp_crowd, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        model.represent(alone)[0], model.represent(crowd)[1, :5], rtol=1e-5, atol=1e-5
    )
    assert torch.all(model.token_log_probs(crowd)[1, 5:] == 0)


def test_word_dropout_hides_history_only_in_training():
    """Ordinary dropout off, so that word dropout is the only randomness: in evaluation the
    model is the same weights without word dropout; in training it hides a random part of the
    history (another seed, other log-probabilities)."""
    torch.manual_seed(0)
    model = build_model(SIZES, "tiny", word_dropout=0.5, dropout=0.0)
    plain = build_model(SIZES, "tiny", word_dropout=0.0, dropout=0.0)
    plain.load_state_dict(model.state_dict())
    batch = make_batch()
    model.eval()
    plain.eval()
    expected = plain.token_log_probs(batch)
    torch.testing.assert_close(model.token_log_probs(batch), expected, rtol=0, atol=0)
    plain.train()  # without word dropout, training mode changes nothing but the row layout
    torch.testing.assert_close(plain.token_log_probs(batch), expected, rtol=1e-5, atol=1e-6)
    model.train()
    torch.manual_seed(0)
    a = model.token_log_probs(batch)
    torch.manual_seed(1)
    b = model.token_log_probs(batch)
    assert not torch.allclose(a, b) and not torch.allclose(a, expected)
    assert model.represent(batch).shape == (4, 9, model.config.d_model)


def test_finetune_growth_keeps_existing_rows_and_adds_covariates():
    fields = {
        name: ["<pad>", "<bos>", "<unk>", *[f"{name}{i}" for i in range(SIZES[name] - 3)]]
        for name in SIZES
    }
    base_vocab = Vocabulary({k: v for k, v in fields.items() if k not in ("gender", "ethnicity")})
    model = build_model(
        {k: len(v) for k, v in base_vocab.fields.items()},
        "tiny",
        covariates=("year", "education", "location", "birth_year"),
    )
    grown = {
        **fields,
        "job": fields["job"] + ["unemployed", "not_in_labor_force", "education"],
        "education": fields["education"] + ["doctorate"],
        "year": fields["year"] + ["2101", "2102"],
    }
    vocab = Vocabulary(grown, parent_hash=base_vocab.hash)
    adapted, notes = adapt_to_dataset(model, base_vocab, vocab, COVARIATES)
    assert notes == {
        "new_job_tokens": 3,
        "new_tokens": {"job": 3, "year": 2, "education": 1},
        "new_covariates": ["gender", "ethnicity"],
        # Loading the base's weights: only the new covariates had nothing to load, nothing unused.
        "missing_keys": [
            "covariate_embeddings.ethnicity.weight",
            "covariate_embeddings.gender.weight",
        ],
        "unexpected_keys": [],
    }
    n = model.job_embedding.num_embeddings
    assert torch.equal(adapted.job_embedding.weight[:n], model.job_embedding.weight)
    assert (
        torch.equal(adapted.head.weight[:n], model.head.weight)
        and adapted.head.out_features == n + 3
    )
    for name, added in (("year", 2), ("education", 1), ("location", 0), ("birth_year", 0)):
        old, new = model.covariate_embeddings[name], adapted.covariate_embeddings[name]
        assert new.num_embeddings == old.num_embeddings + added == vocab.size(name), name
        assert torch.equal(new.weight[: old.num_embeddings], old.weight), name
        assert not added or new.weight[old.num_embeddings :].abs().min() > 0, name  # initialised
    base_state, adapted_state = model.state_dict(), adapted.state_dict()
    kept = [k for k in base_state if base_state[k].shape == adapted_state[k].shape]
    assert all(torch.equal(base_state[k], adapted_state[k]) for k in kept)
    assert "blocks.0.qkv.weight" in kept and "stay_head.weight" in kept
    # A covariate of the base that the dataset lacks: its weights are reported, not silently lost.
    _, notes = adapt_to_dataset(model, base_vocab, vocab, ("year", "education", "birth_year"))
    assert notes["unexpected_keys"] == ["covariate_embeddings.location.weight"]
    wrong = Vocabulary({**fields, "job": ["<pad>", "<bos>", "<unk>", "zzz", *fields["job"][3:]]})
    with pytest.raises(Exception, match="does not extend"):
        adapt_to_dataset(model, base_vocab, wrong, COVARIATES)
