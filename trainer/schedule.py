"""The paper's learning-rate schedule: linear warmup, then inverse square root (fairseq's)."""

from __future__ import annotations

import math

import torch

from trainer.config import OptimConfig


def lr_at(update: int, optim: OptimConfig) -> float:
    """Learning rate used for update number `update` (0-based)."""
    warmup = optim.warmup_updates
    if warmup and update < warmup:
        return optim.warmup_init_lr + (optim.lr - optim.warmup_init_lr) * update / warmup
    return optim.lr * math.sqrt(max(warmup, 1)) / math.sqrt(max(update, 1))


def inverse_sqrt(
    optimizer: torch.optim.Optimizer, optim: OptimConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR over an optimizer whose base lr is `optim.lr`."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda update: lr_at(update, optim) / optim.lr
    )
