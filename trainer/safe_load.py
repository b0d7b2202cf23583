"""The one home of checkpoint unpickling: weights-only, with an explicit allow-list.

A DeepSpeed checkpoint is a set of pickles, and an ordinary unpickler runs whatever a pickle
names: a tampered run folder (or object store) would run code in every process that resumes,
exports or converts it. So every checkpoint file is read by torch's weights-only unpickler,
which rebuilds tensors, containers and plain values only, plus the few DeepSpeed globals in
`ALLOWED_GLOBALS`. Anything else is refused with `UnsafeCheckpointError`, naming the file and
the global (a `StructuralError`: the CLI exits 2 with it).

Two ways in, and nothing else in `trainer` calls `torch.load` (tests/test_imports.py checks):

- `load(path)`: our own reads, and DeepSpeed's checkpoint-engine hook (`trainer.engine` installs
  an engine whose `load` is this function on every DeepSpeed engine).
- `weights_only_everywhere(folder)`: around DeepSpeed code that calls
  `torch.load(weights_only=False)` itself and offers no hook (`zero_to_fp32`, `ds_to_universal`,
  the universal checkpoint's per-parameter files). It sets `TORCH_FORCE_WEIGHTS_ONLY_LOAD`, which
  torch 2.13 reads on every `torch.load` call and which overrides an explicit
  `weights_only=False` (torch/serialization.py, `load`): a supported switch, no monkeypatching.
"""

from __future__ import annotations

import functools
import importlib
import os
import pickle
import re
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from data_shards.errors import StructuralError

#: torch's switches, read by `torch.load` on each call (torch/serialization.py).
FORCE = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
FORCE_NO = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"

#: The globals DeepSpeed 0.19.8 checkpoints hold besides tensors, containers and plain values
#: (found by loading ZeRO 0-3 checkpoints, fp32 and bf16, and their universal conversions; the
#: fp16 loss scaler from reading loss_scaler.CreateLossScaler). Each is a plain data holder:
#: unpickling one sets attributes or calls an int Enum, and runs no code of the file's choosing.
ALLOWED_GLOBALS: dict[str, str] = {
    "deepspeed.runtime.fp16.loss_scaler.LossScaler": "ZeRO 1-3 optimizer states keep the loss-scaler object (fp32 and bf16: a static scale)",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler": "the same object under fp16 (dynamic loss scaling)",
    "deepspeed.runtime.zero.config.ZeroStageEnum": "ZeRO optimizer states record their stage as this int Enum",
    "deepspeed.utils.tensor_fragment.fragment_address": "ZeRO 1/2 optimizer states map each parameter to its fragment (numel, start)",
}


class UnsafeCheckpointError(StructuralError):
    """A checkpoint file holds something other than tensors, plain values and allowed globals."""


def allowed_globals() -> list[Any]:
    """The objects of `ALLOWED_GLOBALS`. DeepSpeed is imported by name only here, when a
    checkpoint is read, a moment at which the process already uses DeepSpeed."""
    from trainer.accelerator import select_accelerator

    select_accelerator()  # before DeepSpeed is first imported
    found = []
    for name in ALLOWED_GLOBALS:
        module, _, attribute = name.rpartition(".")
        found.append(getattr(importlib.import_module(module), attribute))
    return found


@functools.cache
def _register() -> None:
    """Add the allow-list to torch's, once for the process. Not torch's `safe_globals` context
    manager per call: it removes its globals on exit, also from an enclosing one (a hooked load
    inside `weights_only_everywhere` would strip them from the rest of that block)."""
    torch.serialization.add_safe_globals(allowed_globals())


def load(path: str | os.PathLike, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """A checkpoint file's contents, read weights-only; `UnsafeCheckpointError` otherwise."""
    _register()
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        raise refusal(path, error) from None


def refusal(path: str | os.PathLike | None, error: BaseException) -> UnsafeCheckpointError:
    """Our error for a weights-only refusal `error`, naming the file and what it refused."""
    what = refused_global(str(error))
    return UnsafeCheckpointError(
        f"refused to unpickle {what}: checkpoints may hold only tensors, plain values and the "
        "DeepSpeed state allowed in trainer.safe_load (was the run folder tampered with?)",
        path=None if path is None else str(path),
    )


#: How torch's weights-only unpickler names what it refused (torch/_weights_only_unpickler.py).
_REFUSED = (
    r"GLOBAL (\S+) was not an allowed global",
    r"GLOBAL (\S+) whose module \S+ is blocked",
    r"reduce for unrecognized function (.+?)(?: which belongs|$)",
    r"allowlisted via `add_safe_globals`,? but got (.+)$",
)


def refused_global(message: str) -> str:
    """The global named in a weights-only refusal, e.g. 'global builtins.exec'."""
    for pattern in _REFUSED:
        found = re.search(pattern, message, re.MULTILINE)
        if found:
            return f"global {found.group(1).strip()}"
    return "a pickle construct outside the weights-only format"


def locate(folder: str | os.PathLike, error: BaseException) -> UnsafeCheckpointError:
    """The refusal with the file that caused it: torch's message does not name the file, so
    the folder's checkpoint files are read again (memory-mapped, only on this failure path)
    until one is refused."""
    for path in sorted(Path(folder).rglob("*.pt")):
        try:
            load(path, mmap=zipfile.is_zipfile(path))
        except UnsafeCheckpointError as found:
            return found
        except Exception:  # a damaged file is not the one refused
            continue
    return refusal(f"a file under {folder}", error)


@contextmanager
def weights_only_everywhere(folder: str | os.PathLike) -> Iterator[None]:
    """Every `torch.load` in this process weights-only, with the allow-list, while inside.

    For DeepSpeed code without a loader hook reading checkpoint files under `folder`. The
    environment is process-wide: used only around checkpoint loading, when no other thread of
    ours reads pickles, and restored on exit. A refusal is raised as `UnsafeCheckpointError`."""
    _register()
    saved = {name: os.environ.pop(name, None) for name in (FORCE, FORCE_NO)}
    os.environ[FORCE] = "1"  # FORCE_NO beside it would make torch raise: removed meanwhile
    try:
        yield
    except pickle.UnpicklingError as error:
        raise locate(folder, error) from None
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
