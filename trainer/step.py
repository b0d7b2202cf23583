"""One optimizer update: `micro_batches` token-budget batches per rank, one engine step each.

The loss is the NLL summed over the update's real job-years divided by their all-reduced count.
DeepSpeed averages gradients over ranks and accumulation steps, so each micro-batch's NLL sum is
scaled by `world_size x micro_batches / tokens`: the recipe does not depend on how the update's
tokens are cut into ranks and micro-batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from trainer.distributed import RunInfo, to_device
from trainer.models.output import JobModel


class NLLModule(nn.Module):
    """What the engine runs: the model's NLL sum and token count for a batch (ZeRO-3 safe), for
    a model of any gradient-trained kind."""

    def __init__(self, model: JobModel):
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.nll(batch)


@dataclass
class Update:
    """What one update leaves on the device (nothing here waits for it) and on the host."""

    nll_sum: torch.Tensor  # (1,) float64, this rank's NLL summed over its micro-batches
    token_count: torch.Tensor  # (1,) float64, real job-years of the update over all ranks
    padded_length_tokens: int  # sum over this rank's micro-batches of tokens x padded length T


def run_update(
    engine, micro: list[dict[str, Any]], info: RunInfo, names: tuple[str, ...]
) -> Update:
    """Forward, backward and step over the micro-batches of one update."""
    # The update's token count is all-reduced on the device and used as a tensor: nothing here
    # waits for the GPU, so the host queues the next update while this one runs.
    counts = [int(b["lengths"].sum()) for b in micro]
    token_count = torch.tensor([float(sum(counts))], dtype=torch.float64, device=info.device)
    dist.all_reduce(token_count)
    scale = (info.world_size * len(micro) / token_count).float()
    nll_sum = torch.zeros(1, dtype=torch.float64, device=info.device)
    for batch in micro:
        loss_sum, _ = engine(to_device(batch, info.device, names))
        engine.backward(loss_sum * scale)
        engine.step()
        nll_sum += loss_sum.detach().double()
    shape = sum(n * int(b["inputs"].shape[1]) for n, b in zip(counts, micro, strict=True))
    return Update(nll_sum, token_count, shape)
