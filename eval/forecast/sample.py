"""Monte Carlo futures of careers: P paths per person sampled year by year from a CAREER model.

The paper's forecasting protocol (Vafa et al., TMLR 2024, "Forecasting"): from each person's
true history up to the cutoff, each path draws next year's job from the model's two-stage distribution (the model's
own `next_log_probs`, so `<pad>`/`<bos>`/`<unk>` are what the model makes them), feeds it back as
the next input, and goes on through the person's observed future waves (biennial gaps stay: the
steps are waves, their calendar years come from the data). Per person and future step we keep the
path-averaged probability of every job, which scores the forecast, and each path's draw.

Why it is fast: people x paths run together in chunks; each person's history runs once
(`Career.start_cache`), its first forecast year is shared by all paths, and each later year costs
one position per path (`Career.decode_step`) with the history's keys read once per person. Paths
of a person that drew the same jobs so far are in the same state, so they are decoded once (a
node, with a count) and split again when their draws differ (`DecodeCache.reorder`): careers stay
in their job most years, so far fewer states than paths are decoded. `full_recompute=True` re-runs
each path's whole sequence every year instead: the baseline `benchmarks/forecast_speed.py`
compares against, and the check that both agree.

Randomness: one uniform per (person, path, step) from a generator seeded by (seed, person index),
turned into a job by inverse-CDF sampling. Draws therefore do not depend on the chunk sizes, the
number of people after this one or the decoding method; only a draw within float rounding of a CDF boundary could
differ between two computations of the same probabilities.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from data_shards.schema import NON_EMPLOYMENT_STATES
from data_shards.vocab import PAD_ID, Vocabulary
from trainer.models.career import Career
from trainer.models.output import JobModel

Batch = dict[str, torch.Tensor]


@dataclass
class Forecast:
    """Per person (N) and future step (S), over V jobs and P paths."""

    probs: torch.Tensor  # (N, S, V) path-averaged P(job); 0 past a person's last step
    paths: torch.Tensor | None  # (N, P, S) int32 sampled job ids; <pad> past the last step
    steps: torch.Tensor  # (N, S) bool: a real future step
    decoded: int = 0  # positions run after the prefixes (merged paths count once)

    def prob_of(self, jobs: torch.Tensor) -> torch.Tensor:
        """(N, S) forecast probability of `jobs` (N, S) (the realised ones, say); 0 at pads."""
        got = self.probs.gather(-1, jobs.clamp(min=0).long().unsqueeze(-1)).squeeze(-1)
        return torch.where(self.steps & (jobs != PAD_ID), got, torch.zeros_like(got))


def state_ids(vocab: Vocabulary) -> dict[str, int]:
    """Job ids of the non-employment states (`unemployed`, `not_in_labor_force`, `education`)
    the vocabulary has (surveys have them; resumes do not)."""
    ids = vocab.ids("job")
    return {state: ids[state] for state in NON_EMPLOYMENT_STATES if state in ids}


def split_at(batch: Batch, history_lengths: torch.Tensor) -> tuple[Batch, Batch, torch.Tensor]:
    """A loader batch of whole sequences cut after each person's first `history_lengths` years:
    (history batch, future covariates (N, S) of every field the batch has, realised future jobs
    (N, S)), pad (0) past each end. For `future`, drop "education" to carry it forward."""
    lengths, K = batch["lengths"].long(), history_lengths.long()
    if bool((K < 1).any()) or bool((lengths < K).any()):
        raise ValueError("each history needs at least one year and no more than the sequence")
    T = batch["inputs"].shape[1]
    S = max(int((lengths - K).max()), 1)
    cols = (K[:, None] + torch.arange(S)[None]).clamp(max=T - 1)
    real = torch.arange(S)[None] < (lengths - K)[:, None]
    names = [n for n, v in batch.items() if torch.is_tensor(v) and v.shape == (len(K), T)]
    history = {**{n: batch[n] for n in names}, "lengths": K}
    after = {n: torch.where(real, batch[n].gather(1, cols), 0) for n in names}
    realised = after.pop("targets")
    after.pop("inputs", None)
    return history, after, realised


def sample_futures(
    model: JobModel,
    history: Batch,
    future: Batch,
    paths: int = 1000,
    seed: int = 0,
    chunk_size: int = 4096,
    last_year_id: int | None = None,
    full_recompute: bool = False,
    keep_paths: bool = True,
    merge_paths: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
) -> Forecast:
    """Sample `paths` futures per person; see the module docstring.

    `history`: the batch fields as the loader gives them, cut at the cutoff ("inputs", "targets",
    "lengths" (N,) years of history, at least 1, and the model's covariates (N, T)). `future`:
    "year" (N, S) calendar-year ids of each future step (pad 0 after a person's last), and any
    covariate to read from the future instead of carrying it forward from the last history year
    (static ones, and education by default, are carried). Year ids above `last_year_id` (the
    last year trained) or the model's year vocabulary use that year's embedding. `chunk_size`
    bounds the sequences (people x paths) run at once (4,096 was the fastest on a 2-core CPU).
    The model is put in eval mode (no dropout). `merge_paths=False` decodes every path on its
    own (for the benchmark: the same draws, more work). `on_progress(people done, people)` is
    called after each chunk. Kinds other than CAREER (the Markov
    and regression baselines) have no cache and re-run each path's sequence every step.
    """
    model.eval()
    device = next((t.device for t in (*model.parameters(), *model.buffers())), torch.device("cpu"))
    N = history["inputs"].shape[0]
    steps = future["year"] != PAD_ID
    S = steps.shape[1]
    if steps.shape[0] != N or bool((steps[:, 1:] & ~steps[:, :-1]).any()):
        raise ValueError("future['year'] must be (N, S) with each person's steps first, pad after")
    covariates = _future_covariates(model, history, future, last_year_id)  # name -> (N, S)
    prefix = _prefix(history, covariates, model.config.covariates)
    V = model.config.vocab_sizes["job"]
    probs = torch.zeros(N, S, V)
    drawn = torch.zeros(N, paths, S, dtype=torch.int32) if keep_paths else None
    people = max(1, chunk_size // paths)
    path_chunk = min(paths, chunk_size)
    decoded = 0
    with torch.inference_mode():
        for a in range(0, N, people):
            rows = slice(a, min(a + people, N))
            horizon = int(steps[rows].sum(1).max())  # the chunk's longest future
            if horizon == 0:
                continue
            u = torch.stack(
                [
                    torch.rand(paths, S, generator=torch.Generator().manual_seed(_mix(seed, i)))
                    for i in range(rows.start, rows.stop)
                ]
            )[..., :horizon]  # (n, P, S')
            width = int(prefix["lengths"][rows].max())  # the chunk's longest prefix
            part = {n: v[rows, :width].to(device) for n, v in prefix.items() if n != "lengths"}
            part["lengths"] = prefix["lengths"][rows].to(device)
            covs = {n: v[rows, :horizon].to(device) for n, v in covariates.items()}
            if full_recompute or not isinstance(model, Career):
                total, jobs, count = _run_full(model, part, covs, u.to(device), path_chunk)
            else:
                total, jobs, count = _run_cached(
                    model, part, covs, u.to(device), path_chunk, merge_paths
                )
            decoded += count
            probs[rows, :horizon] = total.cpu() / paths
            if drawn is not None:
                drawn[rows, :, :horizon] = jobs.cpu().to(torch.int32)
            if on_progress is not None:
                on_progress(rows.stop, N)
    probs *= steps.unsqueeze(-1)
    if drawn is not None:
        drawn.masked_fill_(~steps[:, None, :], PAD_ID)
    return Forecast(probs=probs, paths=drawn, steps=steps, decoded=decoded)


def _mix(seed: int, index: int) -> int:
    """A generator seed for person `index` (splitmix64 of both): a function of the two alone, so
    a person's draws do not depend on how many people are sampled with it, nor on chunks."""
    x = (seed * 0x9E3779B97F4A7C15 + index + 1) & (2**64 - 1)
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
    return (x ^ (x >> 31)) >> 1


def _future_covariates(
    model: JobModel, history: Batch, future: Batch, last_year_id: int | None
) -> Batch:
    """Each model covariate per future step (N, S): from `future`, else the last history year's."""
    missing = [n for n in model.config.covariates if n not in future and n not in history]
    if missing:
        raise ValueError(f"the model needs covariates {missing}, in the history or the future")
    last = history["lengths"].long() - 1
    S = future["year"].shape[1]
    out = {}
    for name in model.config.covariates:
        if name in future:
            out[name] = future[name].long()
        else:
            carried = history[name].gather(1, last[:, None]).long()
            out[name] = carried.expand(-1, S)
    # CAREER's embeddings of years it never saw are random: it uses the last trained year's (the
    # paper's rule). The regression keeps the true year ids: its effects of unseen years are zero
    # (initialised so, never trained) and its non-consecutive-year dummy needs the real calendar.
    if "year" in out and isinstance(model, Career):
        top = model.config.vocab_sizes["year"] - 1
        top = top if last_year_id is None else min(top, last_year_id)
        out["year"] = out["year"].clamp(max=top)
    return out


def _prefix(history: Batch, covariates: Batch, names: tuple[str, ...]) -> Batch:
    """Each person's history plus the first forecast position (input: the last true job;
    covariates: the first future step's), right-padded, with "lengths" = history years + 1."""
    K = history["lengths"].long()
    T = int(K.max()) + 1
    N = K.shape[0]
    real = torch.arange(T)[None] < K[:, None]
    at = K[:, None]
    out = {}
    for name in ("inputs", *names):
        values = torch.zeros(N, T, dtype=torch.long)
        width = min(T, history[name].shape[1])
        values[:, :width] = history[name][:, :width]
        values = torch.where(real, values, 0)
        new = (
            history["targets"].gather(1, K[:, None] - 1)
            if name == "inputs"
            else covariates[name][:, :1]
        )
        out[name] = values.scatter(1, at, new.long())
    out["lengths"] = K + 1
    return out


def _draw(cdf: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draws: unnormalised CDFs (..., V), K uniforms each (..., K) -> job ids (..., K).
    Zero-probability jobs (<pad>, <bos>) are never drawn (`right=True` skips flat CDF steps)."""
    picks = torch.searchsorted(cdf, (u * cdf[..., -1:]).contiguous(), right=True)
    return picks.clamp(max=cdf.shape[-1] - 1)


def _merge(
    node_of: torch.Tensor, job: torch.Tensor, V: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Paths (n, p) at nodes `node_of` that drew `job` -> the distinct (node, job) pairs per
    person: parent node and job (n, U) of each new node (padded with copies of node 0, count 0),
    paths per node (n, U), and each path's new node (n, p). Paths with one history share a state."""
    n = node_of.shape[0]
    span = int(node_of.max()) * V + V
    code = node_of * V + job + torch.arange(n, device=job.device)[:, None] * span
    unique, inverse, counts = torch.unique(code, return_inverse=True, return_counts=True)
    person = unique // span
    starts = torch.searchsorted(unique, torch.arange(n, device=job.device) * span)
    local = torch.arange(unique.shape[0], device=job.device) - starts[person]
    U = int(local.max()) + 1
    own = unique - person * span
    parent = torch.zeros(n, U, dtype=torch.long, device=job.device)
    node_job = torch.zeros_like(parent)
    count = torch.zeros(n, U, device=job.device)
    parent[person, local] = own // V
    node_job[person, local] = own % V
    count[person, local] = counts.float()
    node_job = torch.where(count > 0, node_job, node_job[:, :1])  # padding: a real input
    return parent, node_job, count, local[inverse].view_as(job)


def _run_cached(
    model: Career, prefix: Batch, covs: Batch, u: torch.Tensor, path_chunk: int, merge: bool
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Summed probabilities (n, S, V) over paths, draws (n, P, S) and the positions decoded,
    with the cache. Paths that drew the same history so far are one decoded state (a node)."""
    n, P, S = u.shape
    rows = torch.arange(n, device=u.device)
    hidden, cache = model.start_cache(prefix)
    first = model.next_log_probs(hidden, prefix["inputs"][rows, prefix["lengths"] - 1]).exp()
    V = first.shape[-1]
    total = torch.zeros(n, S, V, device=u.device)
    total[:, 0] = first * P
    jobs = torch.zeros(n, P, S, dtype=torch.long, device=u.device)
    decoded = 0
    for a in range(0, P, path_chunk):
        chunk = slice(a, min(a + path_chunk, P))
        job = _draw(first.cumsum(-1), u[:, chunk, 0])  # (n, p)
        jobs[:, chunk, 0] = job
        node_of = torch.zeros_like(job)  # every path at the prefix
        forked = cache.fork()
        for s in range(1, S):
            if merge:
                parent, node_job, count, node_of = _merge(node_of, job, V)
                forked.reorder(parent)
            else:  # each path its own node
                node_job, count = job, torch.ones_like(job, dtype=torch.float32)
                node_of = torch.arange(job.shape[1], device=job.device).expand_as(job)
            step = {
                "inputs": node_job,
                **{k: v[:, s, None] for k, v in covs.items()},
            }
            h, forked = model.decode_step(step, forked)
            decoded += node_job.numel()
            p = model.next_log_probs(h, node_job).exp()  # (n, U, V)
            total[:, s] += (count.unsqueeze(1) @ p).squeeze(1)
            flat = (node_of + rows[:, None] * p.shape[1]).flatten()
            cdf = p.cumsum(-1).flatten(0, 1).index_select(0, flat).view(n, -1, V)  # per path
            job = _draw(cdf, u[:, chunk, s, None]).squeeze(-1)
            jobs[:, chunk, s] = job
    return total, jobs, decoded


def _log_probs_at(model: JobModel, batch: Batch, at: torch.Tensor) -> torch.Tensor:
    """log P(job) (B, V) at position `at` (B,) of each row: CAREER runs its output layer there
    alone; other kinds (Markov, regression: cheap per position) give every position's."""
    rows = torch.arange(at.shape[0], device=at.device)
    inputs = batch["inputs"][rows, at]
    if isinstance(model, Career):
        return model.next_log_probs(model.represent(batch)[rows, at], inputs)
    return model.log_probs_at(batch, at)


def _run_full(
    model: JobModel, prefix: Batch, covs: Batch, u: torch.Tensor, path_chunk: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """As `_run_cached`, re-running every path's whole sequence at each step (no cache): CAREER's
    baseline, and how the kinds without a cache (Markov, regression) sample."""
    n, P, S = u.shape
    L = prefix["lengths"]
    first = _log_probs_at(model, prefix, L - 1).exp()
    total = torch.zeros(n, S, first.shape[-1], device=u.device)
    total[:, 0] = first * P
    jobs = torch.zeros(n, P, S, dtype=torch.long, device=u.device)
    width = prefix["inputs"].shape[1] + S - 1
    for a in range(0, P, path_chunk):
        chunk = slice(a, min(a + path_chunk, P))
        p_n = chunk.stop - chunk.start
        job = _draw(first.cumsum(-1), u[:, chunk, 0])
        jobs[:, chunk, 0] = job
        seq = {}
        for name, values in prefix.items():
            if name != "lengths":
                grown = values.new_zeros(n, width)
                grown[:, : values.shape[1]] = values
                seq[name] = grown[:, None].repeat(1, p_n, 1)  # (n, p, width)
        for s in range(1, S):
            col = (L - 1 + s)[:, None, None].expand(n, p_n, 1)
            seq["inputs"].scatter_(2, col, job.unsqueeze(-1))
            for name, v in covs.items():
                seq[name].scatter_(2, col, v[:, s, None, None].expand(n, p_n, 1))
            flat = {
                name: v[..., : int(L.max()) + s].reshape(n * p_n, -1) for name, v in seq.items()
            }
            at = (L - 1 + s)[:, None].expand(n, p_n).reshape(-1)
            p = _log_probs_at(model, flat, at).exp().view(n, p_n, -1)
            total[:, s] += p.sum(1)
            job = _draw(p.cumsum(-1), u[:, chunk, s, None]).squeeze(-1)
            jobs[:, chunk, s] = job
    return total, jobs, n * P * (S - 1)
