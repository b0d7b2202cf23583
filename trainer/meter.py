"""The training meter: loss, tokens and padded lengths of the updates since the last flush."""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from trainer.step import Update


class Meter:
    """Updates since the last flush, kept on the device until then.

    `flush` is the only place training waits for the device; the seconds between flushes count
    as training time unless evaluation or checkpoints ran in between (`restart`).
    """

    def __init__(self) -> None:
        self.pending: list[Update] = []
        self.window_start = time.perf_counter()
        self.seconds = 0.0
        self.timed_tokens = 0.0

    def add(self, update: Update) -> None:
        self.pending.append(update)

    def flush(self, timed: bool = True) -> tuple[float, float, float]:
        """Over the pending updates (at least one), all ranks: mean loss per token, tokens, and
        the token-weighted mean padded sequence length T (what attention's cost grows with)."""
        nll = torch.cat([u.nll_sum for u in self.pending]).sum()
        tokens = torch.cat([u.token_count for u in self.pending]).sum()
        lengths = sum(u.padded_length_tokens for u in self.pending)
        summed = torch.stack(
            [nll, torch.tensor(float(lengths), dtype=nll.dtype, device=nll.device)]
        )
        dist.all_reduce(summed)  # the loss and the lengths in one collective; tokens are global
        nll_value, length_tokens, token_value = torch.cat([summed, tokens.view(1)]).tolist()
        if timed:
            self.seconds += time.perf_counter() - self.window_start
            self.timed_tokens += token_value
        self.pending.clear()
        self.window_start = time.perf_counter()
        return nll_value / token_value, token_value, length_tokens / token_value

    def restart(self) -> None:
        if not self.pending:
            self.window_start = time.perf_counter()

    def rate(self) -> float:
        return self.timed_tokens / self.seconds if self.seconds else 0.0
