"""Validation: whole-split perplexity, early stopping and which checkpoint is the best.

The precision contract: the perplexity a run records (metrics.json, the best-checkpoint choice,
early stopping, the learning curves) is the perplexity `career evaluate` gives the exported
package, whatever the run trains in. The package holds DeepSpeed's fp32 master weights, and
`career evaluate` scores it in fp32, so validation does the same: before each validation every
rank copies the master weights (`trainer.engine.master_weights`: gathered from the ZeRO
partitions, or the bf16 optimizer's fp32 copy) into an fp32 replica of the model and runs it with
autocast off. Training may run in bf16 autocast or DeepSpeed's bf16; validation never does.

The replica holds whole weights on every rank, so a validation forward is no collective, even
under ZeRO-3: each rank reads its part of the split and the sums are all-reduced once at the end
(a rank with no validation data, a split of one block on two ranks, simply adds nothing).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from data_shards.stream import read_split
from trainer import engine as ds_engine
from trainer.distributed import RunInfo, all_sum, from_rank0, to_device


class Replica:
    """An fp32 copy of the module the engine trains, that validation loads and runs. Made before
    DeepSpeed wraps the module (ZeRO-3 partitions it in place, bf16 casts it).

    Its weights exist only from `load` to `release` (one validation): between validations the
    replica keeps its structure and buffers, not a second fp32 copy of the model on every worker
    (22 MB for `paper`, 456 MB for `large`, at the time an update's activations peak)."""

    def __init__(self, module: nn.Module, device: torch.device):
        self.module = copy.deepcopy(module).to(device=device, dtype=torch.float32).eval()
        self.module.requires_grad_(False)
        self.device = device
        self.parameters = dict(self.module.named_parameters())
        self.shapes = {name: param.shape for name, param in self.parameters.items()}
        self.release()

    def load(self, engine) -> None:
        """The engine's fp32 master weights into the replica (a collective: every rank calls)."""
        weights = ds_engine.master_weights(engine)
        if weights.keys() != self.parameters.keys():
            raise RuntimeError("the validation replica and the engine's module differ in weights")
        with torch.no_grad():
            for name, value in weights.items():
                param = self.parameters[name]
                param.data = torch.empty(self.shapes[name], dtype=torch.float32, device=self.device)
                param.copy_(value)

    def release(self) -> None:
        """Free the weights until the next `load` (a tied weight is one parameter: freed once)."""
        for param in self.parameters.values():
            param.data = torch.empty(0, dtype=torch.float32, device=self.device)


def evaluate(
    module: nn.Module,
    data_url: str,
    split: str,
    info: RunInfo,
    tokens_per_update: int,
    names: tuple[str, ...],
    storage_options=None,
) -> float:
    """Perplexity of `module` (NLL sum, token count) over a whole split, in fp32 with autocast
    off (the same value on every rank)."""
    loader = read_split(
        data_url,
        split,
        tokens_per_batch=tokens_per_update,
        rank=info.rank,
        world_size=info.world_size,
        storage_options=storage_options,
    )
    nll = tokens = 0.0
    with torch.no_grad(), torch.autocast(info.device.type, enabled=False):
        for batch in loader:
            loss_sum, count = module(to_device(batch, info.device, names))
            nll += float(loss_sum)
            tokens += float(count)
    nll, tokens = all_sum([nll, tokens], info.device)
    return from_rank0(math.exp(nll / tokens) if tokens else float("nan"))


class Validator:
    """Evaluates every `eval_every` updates and keeps score: the history of (update, perplexity),
    the best perplexity so far, and how many evaluations in a row did not improve on it.

    Its state is a function of the history, which checkpoints carry, so a resumed run stops
    early exactly where an uninterrupted one would."""

    def __init__(
        self,
        engine,
        replica: Replica,
        data_url: str,
        info: RunInfo,
        config,
        names: tuple[str, ...],
        storage_options=None,
        history: list[list[float]] | None = None,
        best: float | None = None,
    ):
        self.engine = engine
        self.replica = replica
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
        self.replica.load(self.engine)
        try:
            perplexity = evaluate(
                self.replica.module,
                self.data_url,
                "valid",
                self.info,
                self.config.tokens_per_update,
                self.names,
                self.storage_options,
            )
        finally:
            self.replica.release()
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
