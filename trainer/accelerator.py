"""Which DeepSpeed accelerator a process uses: the one place `DS_ACCELERATOR` is decided.

DeepSpeed reads `DS_ACCELERATOR` when it is first imported; on a machine without CUDA it would
otherwise warn and guess. Launchers pass `accelerator_env(...)` to the processes they start;
a process that imports DeepSpeed itself calls `select_accelerator()` first.
"""

from __future__ import annotations

import os

CPU = "cpu"


def accelerator_env(use_gpu: bool) -> dict[str, str]:
    """Environment for training processes: the CPU accelerator unless they train on GPUs."""
    return {} if use_gpu else {"DS_ACCELERATOR": CPU}


def select_accelerator(use_gpu: bool | None = None) -> None:
    """Set `DS_ACCELERATOR` for this process (unless already set); `None`: GPU iff CUDA is there."""
    if use_gpu is None:
        import torch

        use_gpu = torch.cuda.is_available()
    for name, value in accelerator_env(use_gpu).items():
        os.environ.setdefault(name, value)
