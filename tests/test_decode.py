"""Incremental decoding (`Career.start_cache` / `decode_step`) gives the full forward's
log-probabilities at every position, whatever the prefix lengths in the batch and the paths."""

from __future__ import annotations

import pytest
import torch

from trainer.models.career import BOS_ID, COVARIATES, Career, ModelConfig

SIZES = {
    "job": 40,
    "year": 30,
    "education": 6,
    "location": 9,
    "gender": 4,
    "ethnicity": 5,
    "birth_year": 30,
}


def make_model(seed: int, **overrides) -> Career:
    torch.manual_seed(seed)
    settings = dict(n_layer=2, d_model=32, n_head=2, d_ff=64, dropout=0.1, **overrides)
    model = Career(ModelConfig(vocab_sizes=SIZES, **settings))
    with torch.no_grad():  # larger weights than the initialisation: peaked, position-dependent
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model.eval()


def sequences(B: int, T: int, seed: int, covariates=COVARIATES) -> dict[str, torch.Tensor]:
    """Full (unpadded) sequences (B, T): `<bos>` then jobs with some repeats."""
    g = torch.Generator().manual_seed(seed)
    jobs = torch.randint(2, SIZES["job"], (B, T), generator=g)  # <unk> (2) included
    repeat = torch.rand(B, T, generator=g) < 0.4
    for t in range(1, T):
        jobs[:, t] = torch.where(repeat[:, t], jobs[:, t - 1], jobs[:, t])
    batch = {"inputs": torch.cat([torch.full((B, 1), BOS_ID), jobs[:, :-1]], dim=1)}
    for name in covariates:
        batch[name] = torch.randint(3, SIZES[name], (B, T), generator=g)
    return batch


def right_padded(full: dict[str, torch.Tensor], lengths: torch.Tensor) -> dict[str, torch.Tensor]:
    """The first `lengths[b]` positions of each row, pad (0) after, cut to the longest."""
    T = int(lengths.max())
    real = torch.arange(T)[None] < lengths[:, None]
    out = {name: torch.where(real, values[:, :T], 0) for name, values in full.items()}
    return {**out, "lengths": lengths}


def cached_log_probs(model: Career, full: dict, lengths: torch.Tensor, paths: int) -> torch.Tensor:
    """log P at every position from the cache: each row's prefix, then one position at a time.
    `full` holds B * paths rows, path-major within a person (row b * paths + p)."""
    B = lengths.shape[0]
    T = full["inputs"].shape[1]
    people = {name: values[::paths] for name, values in full.items()}
    hidden, cache = model.start_cache(right_padded(people, lengths))
    rows = torch.arange(B)
    first = model.next_log_probs(hidden, people["inputs"][rows, lengths - 1])  # (B, V)
    out = torch.full((B, paths, T, SIZES["job"]), float("nan"))
    out[rows, :, lengths - 1] = first[:, None]
    for step in range(T - int(lengths.min())):
        position = (lengths + step).clamp(max=T - 1)  # rows past T decode padding, ignored
        grid = {n: v.view(B, paths, T)[rows, :, position] for n, v in full.items()}  # (B, P)
        h, cache = model.decode_step(grid, cache)
        logp = model.next_log_probs(h, grid["inputs"])  # (B, P, V)
        live = lengths + step < T
        out[rows[live], :, position[live]] = logp[live]
    return out


@pytest.mark.parametrize(
    "overrides", [{}, {"two_stage": False}, {"covariates": ("year", "gender")}], ids=str
)
@pytest.mark.parametrize("paths", [1, 3])
def test_cache_matches_full_forward(overrides, paths):
    model = make_model(seed=len(str(overrides)) + paths, **overrides)
    B, T = 5, 11
    lengths = torch.tensor([1, 4, 11, 7, 2])  # prefix lengths; the rest is decoded
    full = sequences(B * paths, T, seed=paths, covariates=model.config.covariates)
    for b in range(B):  # every path of a person shares the prefix, then goes its own way
        for name in full:
            full[name][b * paths : (b + 1) * paths, : lengths[b]] = full[name][
                b * paths, : lengths[b]
            ].clone()
    with torch.no_grad():
        expected = model.log_probs(full).view(B, paths, T, -1)
    got = cached_log_probs(model, full, lengths, paths)
    seen = torch.arange(T)[None] >= lengths[:, None] - 1  # the prefix's last position onwards
    finite = torch.isfinite(expected)
    for b in range(B):
        for t in range(T):
            if seen[b, t]:
                e, g = expected[b, :, t], got[b, :, t]
                assert torch.equal(finite[b, :, t], torch.isfinite(g))
                torch.testing.assert_close(
                    g[finite[b, :, t]], e[finite[b, :, t]], atol=1e-5, rtol=0
                )


def test_prefix_padding_does_not_leak():
    """A row's result is the same alone and in a batch with longer prefixes."""
    model = make_model(seed=7)
    full = sequences(3, 9, seed=3)
    lengths = torch.tensor([3, 9, 6])
    h_all, _ = model.start_cache(right_padded(full, lengths))
    one = {name: values[:1] for name, values in full.items()}
    h_one, _ = model.start_cache(right_padded(one, lengths[:1]))
    torch.testing.assert_close(h_all[:1], h_one, atol=1e-5, rtol=0)


def test_decoding_refuses_training_mode_and_bad_shapes():
    model = make_model(seed=1)
    full = sequences(2, 4, seed=1)
    _, cache = model.start_cache(full)
    with pytest.raises(ValueError, match=r"\(B, P\)"):
        model.decode_step({"inputs": torch.ones(3, 1, dtype=torch.long)}, cache)
    model.decode_step({"inputs": torch.full((2, 2), 5)}, cache)
    with pytest.raises(ValueError, match="paths per row"):
        model.decode_step({"inputs": torch.full((2, 3), 5)}, cache)
    model.train()
    with pytest.raises(RuntimeError, match="eval"):
        model.start_cache(full)


def test_reorder_continues_the_chosen_paths():
    """After `reorder`, a path continues the history of the path it copies (beam-search style)."""
    model = make_model(seed=5)
    B, P, T = 2, 3, 8
    lengths = torch.tensor([3, 5])
    full = sequences(B * P, T, seed=4)
    for b in range(B):
        for name in full:
            full[name][b * P : (b + 1) * P, : lengths[b]] = full[name][b * P, : lengths[b]].clone()
    people = {name: values[::P] for name, values in full.items()}
    _, cache = model.start_cache(right_padded(people, lengths))
    rows = torch.arange(B)

    def grid(t: int) -> dict[str, torch.Tensor]:
        return {n: v.view(B, P, T)[rows, :, lengths + t] for n, v in full.items()}

    model.decode_step(grid(0), cache)
    model.decode_step(grid(1), cache)
    index = torch.tensor([[2, 0, 0, 1], [1, 1, 2, 0]])
    cache.reorder(index)
    chosen = (index + rows[:, None] * P).flatten()
    moved = {name: values[chosen] for name, values in full.items()}  # (B * 4, T)
    h, _ = model.decode_step(
        {n: v.view(B, 4, T)[rows, :, lengths + 2] for n, v in moved.items()}, cache
    )
    logp = model.next_log_probs(h, moved["inputs"].view(B, 4, T)[rows, :, lengths + 2])
    expected = model.log_probs(moved).detach().view(B, 4, T, -1)[rows, :, lengths + 2]
    finite = torch.isfinite(expected)
    torch.testing.assert_close(logp[finite], expected[finite], atol=1e-5, rtol=0)
