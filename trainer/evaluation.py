"""Validation: whole-split perplexity, early stopping and which checkpoint is the best.

`evaluate` reads a split once, each rank its part, and all-reduces once at the end. Under ZeRO-3
every forward is a collective (parameters are gathered), so every rank runs as many forwards as
the rank with the most batches: a rank out of data repeats its last batch, and a rank with no data
at all (a split of one block on two ranks) runs a stand-in batch, both with results ignored.
"""

from __future__ import annotations

import math

import torch

from data_shards.stream import CareerLoader, StreamConfig
from data_shards.vocab import BOS_ID, PAD_ID
from trainer.distributed import RunInfo, all_sum, any_rank, from_rank0, to_device


def stand_in_batch(names: tuple[str, ...], device: torch.device) -> dict[str, torch.Tensor]:
    """A batch valid for the model that adds nothing: one person of length 1, `<bos>` input, a pad
    target (so NLL and token count are 0) and pad covariates."""
    batch = {name: torch.full((1, 1), PAD_ID, dtype=torch.long, device=device) for name in names}
    batch["inputs"] = torch.full((1, 1), BOS_ID, dtype=torch.long, device=device)
    return batch


def evaluate(
    engine,
    data_url: str,
    split: str,
    info: RunInfo,
    tokens_per_update: int,
    names: tuple[str, ...],
    storage_options=None,
) -> float:
    """Perplexity over a whole split (the same value on every rank)."""
    stream = StreamConfig(split=split, tokens_per_update=tokens_per_update, rank=info.rank,
                          world_size=info.world_size, shuffle=False, loop=False)  # fmt: skip
    iterator = iter(CareerLoader(data_url, stream, num_workers=0, storage_options=storage_options))
    nll = tokens = 0.0
    last = None
    engine.eval()
    with torch.no_grad():
        while True:
            batch = next(iterator, None)
            if not any_rank(batch is not None, info.device):
                break
            if batch is not None:
                last = to_device(batch, info.device, names)
            elif last is None:  # this rank has no data at all in the split
                last = stand_in_batch(names, info.device)
            loss_sum, count = engine(last)
            if batch is not None:
                nll += float(loss_sum)
                tokens += float(count)
    engine.train()
    nll, tokens = all_sum([nll, tokens], info.device)
    return from_rank0(math.exp(nll / tokens) if tokens else float("nan"))


class Validator:
    """Evaluates every `eval_every` updates and keeps score: the history of (update, perplexity),
    the best perplexity so far, and how many evaluations in a row did not improve on it.

    Its state is a function of the history, which checkpoints carry, so a resumed run stops
    early exactly where an uninterrupted one would."""

    def __init__(self, engine, data_url: str, info: RunInfo, config, names: tuple[str, ...],
                 storage_options=None, history: list[list[float]] | None = None,
                 best: float | None = None):  # fmt: skip
        self.engine = engine
        self.data_url = data_url
        self.info = info
        self.config = config
        self.names = names
        self.storage_options = storage_options
        self.history: list[list[float]] = history if history is not None else []
        # `best`: the best checkpoint's perplexity, for a run whose history holds no evaluation.
        self.best, self.stale = None if self.history else best, 0
        self.best_step: int | None = None  # the update whose evaluation is `best` (from history)
        for step, perplexity in self.history:
            self._score(int(step), perplexity)
        self.improved = False

    def due(self, step: int) -> bool:
        return step % self.config.eval_every == 0 or step == self.config.updates

    def _score(self, step: int, perplexity: float) -> None:
        self.improved = self.best is None or perplexity < self.best
        if self.improved:
            self.best, self.best_step = perplexity, step
        self.stale = 0 if self.improved else self.stale + 1

    def run(self, step: int) -> float:
        """Validation perplexity after update `step`, scored and recorded."""
        perplexity = evaluate(self.engine, self.data_url, "valid", self.info,
                              self.config.tokens_per_update, self.names, self.storage_options)  # fmt: skip
        self._score(step, perplexity)
        self.history.append([step, perplexity])
        return perplexity

    @property
    def last(self) -> float | None:
        return self.history[-1][1] if self.history else None

    @property
    def should_stop(self) -> bool:
        """`patience` evaluations in a row without improvement."""
        return bool(self.config.patience) and self.stale >= self.config.patience
