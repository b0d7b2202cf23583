"""Monte Carlo forecasting (`eval.forecast.sample`): known answers on hand-set models, the cache
and full recomputation agreeing draw for draw, chunking, the future's covariates."""

from __future__ import annotations

import pytest
import torch
from test_decode import SIZES, make_model, right_padded, sequences

from data_shards.vocab import Vocabulary
from eval.forecast.sample import sample_futures, split_at, state_ids
from trainer.models.career import BOS_ID, Career, ModelConfig


def with_targets(full: dict, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    last = torch.randint(3, SIZES["job"], (full["inputs"].shape[0], 1), generator=g)
    return {**full, "targets": torch.cat([full["inputs"][:, 1:], last], dim=1)}


def people(N: int = 5, T: int = 10, seed: int = 0):
    """Histories of different lengths and futures of different horizons (2 to 4 steps)."""
    full = with_targets(sequences(N, T, seed), seed)
    lengths = torch.tensor([10, 7, 9, 10, 6])[:N]
    history_lengths = torch.tensor([6, 5, 7, 8, 2])[:N]
    history, future, realised = split_at(right_padded(full, lengths), history_lengths)
    future.pop("education")  # carried forward
    return history, future, realised


def output_only(vocab_job: int, stay_logit: float | None, job_logits: torch.Tensor) -> Career:
    """A CAREER whose outputs ignore the history: fixed stay logit and job logits."""
    sizes = {"job": vocab_job, "year": 30}
    config = ModelConfig(
        vocab_sizes=sizes,
        covariates=("year",),
        n_layer=1,
        d_model=8,
        n_head=2,
        d_ff=16,
        dropout=0.0,
        two_stage=stay_logit is not None,
    )
    model = Career(config).eval()
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(job_logits)
        if stay_logit is not None:
            model.stay_head.weight.zero_()
            model.stay_head.bias.fill_(stay_logit)
    return model


def toy_people(jobs: list[int], horizon: int) -> tuple[dict, dict]:
    """One year of history each (job `jobs[i]`), `horizon` future steps."""
    N = len(jobs)
    history = {
        "inputs": torch.full((N, 1), BOS_ID),
        "targets": torch.tensor(jobs)[:, None],
        "year": torch.full((N, 1), 10),
        "lengths": torch.ones(N, dtype=torch.long),
    }
    return history, {"year": torch.arange(11, 11 + horizon).repeat(N, 1)}


def test_a_model_that_always_stays_repeats_the_last_job():
    model = output_only(12, stay_logit=30.0, job_logits=torch.randn(12))
    history, future = toy_people([3, 7, 11], horizon=4)
    forecast = sample_futures(model, history, future, paths=64, seed=0)
    assert forecast.paths.shape == (3, 64, 4) and forecast.probs.shape == (3, 4, 12)
    assert torch.equal(
        forecast.paths, torch.tensor([3, 7, 11])[:, None, None].expand(3, 64, 4).int()
    )
    realised = torch.tensor([3, 7, 11])[:, None].expand(3, 4)
    torch.testing.assert_close(forecast.prob_of(realised), torch.ones(3, 4))
    assert forecast.decoded == 3 * 3  # 64 paths, one history each person: one state per step
    unmerged = sample_futures(model, history, future, paths=64, seed=0, merge_paths=False)
    assert unmerged.decoded == 3 * 64 * 3 and torch.equal(unmerged.paths, forecast.paths)


def test_a_two_state_chain_gives_its_known_rates():
    """Jobs A, B; stay with 0.8, else the other (<unk> made impossible): from A, the chance of A
    after s steps is 1/2 + 1/2 * 0.6**s, the averaged probability its Monte Carlo estimate."""
    A, B = 3, 4
    model = output_only(
        5,
        stay_logit=float(torch.logit(torch.tensor(0.8))),
        job_logits=torch.tensor([0.0, 0.0, -50.0, 0.0, 0.0]),
    )
    history, future = toy_people([A, B], horizon=5)
    forecast = sample_futures(model, history, future, paths=4000, seed=3, chunk_size=1000)
    expected = 0.5 + 0.5 * 0.6 ** torch.arange(1, 6, dtype=torch.float32)
    torch.testing.assert_close(forecast.probs[0, 0, A], torch.tensor(0.8))  # exact at step 1
    torch.testing.assert_close(forecast.probs[0, :, A], expected, atol=0.02, rtol=0)
    torch.testing.assert_close(forecast.probs[1, :, B], expected, atol=0.02, rtol=0)
    share = (forecast.paths[0] == A).float().mean(0)  # the draws follow the same law
    torch.testing.assert_close(share, expected, atol=0.03, rtol=0)
    assert set(forecast.paths.unique().tolist()) == {A, B}
    torch.testing.assert_close(forecast.probs.sum(-1), torch.ones(2, 5))


@pytest.mark.parametrize("two_stage", [True, False])
def test_cache_and_full_recompute_draw_the_same_paths(two_stage):
    model = make_model(seed=11, two_stage=two_stage)
    history, future, _ = people()
    cached = sample_futures(model, history, future, paths=40, seed=5)
    full = sample_futures(model, history, future, paths=40, seed=5, full_recompute=True)
    unmerged = sample_futures(model, history, future, paths=40, seed=5, merge_paths=False)
    for other in (full, unmerged):
        assert torch.equal(cached.paths, other.paths)
        torch.testing.assert_close(cached.probs, other.probs, atol=1e-5, rtol=0)
    assert cached.decoded < unmerged.decoded == full.decoded
    other = sample_futures(model, history, future, paths=40, seed=6)
    assert not torch.equal(cached.paths, other.paths)


def test_results_do_not_depend_on_chunk_sizes():
    model = make_model(seed=2)
    history, future, _ = people()
    base = sample_futures(model, history, future, paths=30, seed=1)
    for chunk in (7, 30, 61):  # paths split within a person; one person; two people per chunk
        got = sample_futures(model, history, future, paths=30, seed=1, chunk_size=chunk)
        assert torch.equal(got.paths, base.paths)
        torch.testing.assert_close(got.probs, base.probs, atol=1e-6, rtol=0)
    first = sample_futures(
        model,
        {k: v[:2] for k, v in history.items()},
        {k: v[:2] for k, v in future.items()},
        paths=30,
        seed=1,
    )
    assert torch.equal(first.paths, base.paths[:2])  # not on how many people follow
    alone = sample_futures(
        model,
        {k: v[2:3] for k, v in history.items()},
        {k: v[2:3] for k, v in future.items()},
        paths=30,
        seed=1,
    )
    assert not torch.equal(alone.paths[0], base.paths[2])  # seeds follow the person's index
    torch.testing.assert_close(alone.probs[0, 0], base.probs[2, 0], atol=1e-6, rtol=0)


def test_shapes_horizons_and_padding():
    model = make_model(seed=4)
    history, future, realised = people()
    horizons = (future["year"] != 0).sum(1)
    assert horizons.tolist() == [4, 2, 2, 2, 4] and realised.shape == (5, 4)
    forecast = sample_futures(model, history, future, paths=8, seed=0)
    steps = torch.arange(4)[None] < horizons[:, None]
    assert torch.equal(forecast.steps, steps)
    torch.testing.assert_close(forecast.probs.sum(-1), steps.float())
    assert torch.equal(forecast.paths != 0, steps[:, None].expand(-1, 8, -1))
    assert bool((forecast.paths[forecast.paths != 0] > BOS_ID).all())  # never <pad> or <bos>
    assert bool((forecast.prob_of(realised)[~steps] == 0).all())
    assert sample_futures(model, history, future, paths=8, keep_paths=False).paths is None


def test_years_past_the_last_trained_one_use_its_embedding():
    model = make_model(seed=8)
    history, future, _ = people()
    late = {**future, "year": torch.where(future["year"] > 0, 25, 0)}
    clamped = {**future, "year": torch.where(future["year"] > 0, 20, 0)}
    a = sample_futures(model, history, late, paths=10, seed=0, last_year_id=20)
    b = sample_futures(model, history, clamped, paths=10, seed=0)
    assert torch.equal(a.paths, b.paths)
    c = sample_futures(model, history, late, paths=10, seed=0)
    assert not torch.allclose(a.probs, c.probs)


def test_education_is_carried_forward_unless_given():
    model = make_model(seed=9)
    history, future, _ = people()
    last = history["education"].gather(1, history["lengths"][:, None] - 1)
    given = {**future, "education": last.expand_as(future["year"])}
    carried = sample_futures(model, history, future, paths=10, seed=0)
    explicit = sample_futures(model, history, given, paths=10, seed=0)
    assert torch.equal(carried.paths, explicit.paths)
    other = {**future, "education": torch.full_like(future["year"], 4)}
    assert not torch.allclose(carried.probs, sample_futures(model, history, other, paths=10).probs)


def test_split_at_and_refusals():
    history, future, realised = people()
    assert history["lengths"].tolist() == [6, 5, 7, 8, 2]
    assert realised[4].tolist() == history["targets"][4, 2:6].tolist()
    model = make_model(seed=1)
    gap = {**future, "year": future["year"].clone()}
    gap["year"][0, 1] = 0
    with pytest.raises(ValueError, match="steps first"):
        sample_futures(model, history, gap, paths=2)
    with pytest.raises(ValueError, match="at least one year"):
        split_at({**history, "lengths": history["lengths"]}, torch.zeros(5, dtype=torch.long))


def test_state_ids():
    vocab = Vocabulary({"job": ["<pad>", "<bos>", "<unk>", "11-1011", "unemployed", "education"]})
    assert state_ids(vocab) == {"unemployed": 4, "education": 5}
