"""This rank's place in the run, and the few collectives the loop and its parts share.

Every helper here is a collective unless its name says otherwise: all ranks call it, in the same
order, so that no rank is left waiting for one that took another path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class RunInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def run_info() -> RunInfo:
    """This rank (torch.distributed initialised); its device is its local GPU, else the CPU."""
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    return RunInfo(rank, world, local_rank, device)


def to_device(
    batch: dict[str, Any], device: torch.device, names: tuple[str, ...]
) -> dict[str, torch.Tensor]:
    """The tensors `names` of a batch on `device` (not a collective)."""
    return {k: batch[k].to(device, non_blocking=True) for k in names if k in batch}


def all_gather(obj: Any) -> list[Any]:
    """`obj` of every rank, in rank order."""
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sums over ranks (float64)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether `flag` holds on at least one rank."""
    tensor = torch.tensor([int(flag)], dtype=torch.int32, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def from_rank0(obj: Any) -> Any:
    """Rank 0's `obj` on every rank: decisions every rank must take alike."""
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]
