"""Rank-aware logging: TensorBoard scalars and a progress bar on rank 0, warnings from every rank.

Nothing is printed once per rank per step: rank 0 owns the progress bar (tokens/s, ETA) and the
TensorBoard writer (`OUT/tb`, staged locally and uploaded for remote outputs).
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from data_shards import storage

log = logging.getLogger("career.trainer")

#: Peak dense bf16 FLOP/s of accelerators we know, for MFU.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "V100": 125e12}


def flops_per_token(model, seq_len: float) -> float:
    """Training FLOPs per job-year token, the model kind's own estimate: CAREER 6 x parameters +
    attention over `seq_len` positions (nanoGPT's); the kinds without attention (regression,
    bag-of-jobs) 6 x parameters, a nominal upper bound for their lookup tables; markov 0 (fitted
    by counting). Training passes the mean padded length T of the logged batches."""
    estimate = getattr(model, "flops_per_token", None)
    if estimate is None:  # a plain module: the estimate without attention
        return 6.0 * sum(p.numel() for p in model.parameters())
    return float(estimate(seq_len))


#: Where rank 0 sends progress when it cannot draw a bar itself (a Ray Train worker, whose output
#: reaches the driver only as prefixed log lines): (update, total, detail, message or None).
ProgressSink = Callable[[int, int, str, "str | None"], None]


def training_progress(console: Console) -> Progress:
    """The training bar: updates done of total, loss and tokens/s, elapsed time and ETA."""
    return Progress(
        TextColumn("[bold]training"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
    )


class Monitor:
    def __init__(
        self,
        out_url: str,
        rank: int,
        config,
        model,
        storage_options=None,
        progress_sink: ProgressSink | None = None,
    ):
        self.rank = rank
        self.sink = progress_sink if rank == 0 else None
        self.total = 0
        self.detail = ""
        self.last_sent = 0.0
        self.config = config
        self.model = model
        self.storage_options = storage_options
        self.out_url = out_url
        self.writer = None
        self.progress = None
        self.task = None
        if rank == 0:
            from tensorboardX import SummaryWriter

            self.tb_local = (
                tempfile.mkdtemp(prefix="career-tb-")
                if storage.is_remote(out_url)
                else storage.join(out_url, "tb").removeprefix("file://")
            )
            self.writer = SummaryWriter(self.tb_local)
            self.peak = None
            if torch.cuda.is_available():
                name = torch.cuda.get_device_name()
                self.peak = next((v for k, v in PEAK_FLOPS.items() if k in name), None)

    def print0(self, message: str) -> None:
        if self.sink is not None:
            self.sink(0, self.total, self.detail, message)
        elif self.rank == 0:
            Console(stderr=True).print(message)

    def start(self, step: int, total: int) -> None:
        self.total = total
        if self.rank != 0:
            return
        if self.sink is not None:
            self._send(step)
            return
        self.progress = training_progress(Console(stderr=True))
        self.progress.start()
        self.task = self.progress.add_task("train", total=total, completed=step, detail="")

    def scalar(self, name: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(name, value, step)

    def _send(self, step: int) -> None:
        self.last_sent = time.monotonic()
        self.sink(step, self.total, self.detail, None)

    def advance(self, step: int) -> None:
        """Move the progress bar (every update; reads nothing from the device)."""
        if self.progress is not None:
            self.progress.update(self.task, completed=step)
        elif self.sink is not None and (
            time.monotonic() - self.last_sent > 0.5 or step == self.total
        ):
            self._send(step)

    def log(self, step: int, loss: float, rate: float, engine, seq_len: float) -> None:
        """Scalars and the progress bar's detail, at each flush of the training meter;
        `seq_len`: the mean padded sequence length of the flushed updates (for MFU)."""
        if self.rank != 0:
            return
        self.scalar("train/loss", loss, step)
        self.scalar("train/perplexity", math.exp(min(loss, 50)), step)
        self.scalar("train/lr", engine.get_lr()[0], step)
        norm = engine.get_global_grad_norm()
        if norm is not None:
            self.scalar("train/grad_norm", float(norm), step)
        self.scalar("train/padded_length", seq_len, step)
        if rate:
            self.scalar("train/tokens_per_second", rate, step)
            if self.peak:
                flops = flops_per_token(self.model, seq_len)
                self.scalar("train/mfu", rate * flops / self.peak, step)
        self.detail = f"loss {loss:.3f}" + (f"  {rate:,.0f} tokens/s" if rate else "")
        if self.progress is not None:
            self.progress.update(self.task, completed=step, detail=self.detail)
        elif self.sink is not None:
            self._send(step)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        if self.writer is not None:
            self.writer.close()
            if storage.is_remote(self.out_url):
                for path in Path(self.tb_local).rglob("*"):
                    if path.is_file():
                        target = storage.join(
                            self.out_url, "tb", path.relative_to(self.tb_local).as_posix()
                        )
                        storage.write_bytes_atomic(target, path.read_bytes(), self.storage_options)
            self.writer = None
