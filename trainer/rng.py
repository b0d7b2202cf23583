"""Random-number state of a rank: seeded at the start, saved in checkpoints, restored on resume.

torch, numpy and Python's `random` are all seeded and saved, so a run resumed on the same ranks
draws exactly the numbers (dropout masks) an uninterrupted run would have drawn.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """The same seed on every rank: every rank builds the same initial weights."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def reseed_rank(seed: int, step: int, rank: int) -> None:
    """Fresh dropout streams per rank for a run resumed on another number of ranks (whose saved
    states do not map onto the new ranks), derived from the run's seed and the update."""
    torch.manual_seed(seed * 1_000_003 + step * 1009 + rank)


def rng_state() -> dict[str, Any]:
    """This process's generator states, as plain picklable values."""
    version, state, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [v.tolist() if isinstance(v, np.ndarray) else v for v in np.random.get_state()],
        "python": list(state),
        "python_version": version,
        "python_gauss": gauss,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned."""
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (numpy_state[0], np.array(numpy_state[1], dtype=np.uint32), *numpy_state[2:])
    )
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
