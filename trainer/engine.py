"""The only DeepSpeed import: DeepSpeed config from the typed config, and `deepspeed.initialize`.

Checkpoints are read through `trainer.safe_load` only: DeepSpeed's checkpoint-engine hook on every
engine, and its weights-only mode around DeepSpeed's own readers (zero_to_fp32, ds_to_universal).

The loss the engine back-propagates is scaled so that DeepSpeed's averaging (over ranks, and over
gradient-accumulation steps) yields the NLL summed over every real job-year of the update divided
by the all-reduced token count of the update: the recipe does not depend on the number of workers.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainer import safe_load
from trainer.accelerator import select_accelerator
from trainer.config import TrainConfig
from trainer.schedule import inverse_sqrt


def deepspeed_config(
    config: TrainConfig, world_size: int, load_universal: bool = False
) -> dict[str, Any]:
    """DeepSpeed's JSON config. Batches are token budgets, so its 'batch size' is one nominal
    micro-batch per rank per accumulation step; `train_batch_size` is derived and checked.
    `load_universal`: the checkpoint to resume from is in DeepSpeed's universal format."""
    if world_size < 1:
        raise ValueError("world_size must be at least 1")
    micro = 1
    train_batch_size = micro * config.micro_batches * world_size
    ds: dict[str, Any] = {
        "train_batch_size": train_batch_size,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": config.micro_batches,
        "zero_optimization": {"stage": config.zero_stage},
        "steps_per_print": 10**9,  # our own logging
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
    }
    if load_universal:
        ds["checkpoint"] = {"load_universal": True}
    if config.optim.grad_clip > 0:
        ds["gradient_clipping"] = config.optim.grad_clip
    if config.precision == "bf16":
        ds["bf16"] = {"enabled": True}
    elif config.precision == "bf16-autocast":
        ds["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
    elif config.precision == "fp16":
        ds["fp16"] = {"enabled": True, "initial_scale_power": 16, "loss_scale_window": 1000}
    elif config.precision != "fp32":
        raise ValueError(
            f"unresolved precision {config.precision!r}: call TrainConfig.resolve first"
        )
    return ds


def _import_deepspeed():
    """DeepSpeed, with its CPU shared-memory all-reduce op marked unavailable.

    DeepSpeed's torch backend JIT-compiles that C++ op (`deepspeed_shm_comm`, ~45 s with gcc on a
    fresh machine, again whenever another venv's build is cached) when the process group is
    made, but only `inference_all_reduce` uses it: training's collectives go through
    torch.distributed. Marked incompatible, the backend skips it (`build_shm_op` returns None)."""
    select_accelerator()
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() == "cpu":
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    return deepspeed


def initialize(
    model: nn.Module, config: TrainConfig, world_size: int, load_universal: bool = False
):
    """Wrap `model` in a DeepSpeed engine with AdamW and the inverse-sqrt schedule."""
    deepspeed = _import_deepspeed()

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [
        p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)
    ]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.optim.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.optim.lr,
        betas=config.optim.betas,
        eps=config.optim.eps,
    )
    scheduler = inverse_sqrt(optimizer, config.optim)
    ds_config = deepspeed_config(config, world_size, load_universal)
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=ds_config,
        dist_init_required=False,
    )
    install_safe_checkpoint_engine(engine)
    if config.compile:
        engine.compile(compile_kwargs={"dynamic": True})
    if engine.train_batch_size() != ds_config["train_batch_size"]:
        raise ValueError(
            f"DeepSpeed derived train_batch_size {engine.train_batch_size()}, expected {ds_config['train_batch_size']}"
        )
    return engine, optimizer, scheduler


def master_weights(engine) -> dict[str, torch.Tensor]:
    """The fp32 weights the engine trains, whole, on every rank (a collective): DeepSpeed's master
    copy where it keeps one (ZeRO 1-3 partitions, the bf16 optimizer), else the module's own fp32
    weights (ZeRO 0 in fp32 or bf16 autocast). These are the weights an export writes."""
    from deepspeed.utils import safe_get_full_fp32_param

    weights = {}
    for name, param in engine.module.named_parameters():
        full = safe_get_full_fp32_param(param)
        if full is None:
            if param.dtype != torch.float32:  # (TrainConfig refuses fp16 without ZeRO)
                raise ValueError(f"no fp32 master copy of {name} ({param.dtype})")
            full = param.detach()
        weights[name] = full.float()
    return weights


def init_distributed(backend: str | None = None) -> None:
    """Join (or create) the process group: gloo on CPU, nccl on GPU. Reuses Ray Train's group."""
    deepspeed = _import_deepspeed()
    deepspeed.init_distributed(
        dist_backend=backend or ("nccl" if torch.cuda.is_available() else "gloo")
    )


@functools.cache
def _safe_checkpoint_engine() -> type:
    """DeepSpeed's torch checkpoint engine with `load` through `trainer.safe_load` (the class is
    made on first use: importing DeepSpeed's module at import time would load DeepSpeed)."""
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    class SafeCheckpointEngine(TorchCheckpointEngine):
        def load(self, path: str, map_location=None):
            return safe_load.load(path, map_location)

    return SafeCheckpointEngine


def install_safe_checkpoint_engine(engine) -> None:
    """Make `engine` read checkpoints weights-only. `deepspeed.initialize` takes no checkpoint
    engine, so ours replaces the one it made, keeping its settings (`engine._config`); refused if
    DeepSpeed chose another kind (a configured writer), whose loading we would silently change."""
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    current = type(engine.checkpoint_engine)
    if current not in (TorchCheckpointEngine, _safe_checkpoint_engine()):
        raise ValueError(f"unsupported DeepSpeed checkpoint engine {current.__name__}")
    engine.checkpoint_engine = _safe_checkpoint_engine()(engine._config)


def load_checkpoint(engine, folder: str, tag: str) -> dict[str, Any] | None:
    """Load checkpoint `folder/tag` into `engine` (weights, optimizer, scheduler); its client
    state. The universal format's per-parameter files are read by DeepSpeed's optimizers
    without the engine's hook, hence the weights-only mode around the whole load."""
    with safe_load.weights_only_everywhere(Path(folder) / tag):
        _, client = engine.load_checkpoint(folder, tag=tag)
    return client


def consolidated_state_dict(checkpoint_dir: str, tag: str) -> dict[str, torch.Tensor]:
    """fp32 weights from a DeepSpeed checkpoint of any ZeRO stage.

    Stages 1-3 partition the fp32 master weights across ranks: DeepSpeed's zero_to_fp32 joins
    them (its reads made weights-only). Stage 0 keeps whole weights in the model-states file.
    """
    folder = Path(checkpoint_dir) / tag
    if not checkpoint_world_size(str(folder)):
        states = safe_load.load(folder / "mp_rank_00_model_states.pt")
        return {k: v.float() for k, v in states["module"].items()}
    select_accelerator()
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    with safe_load.weights_only_everywhere(folder):
        return get_fp32_state_dict_from_zero_checkpoint(checkpoint_dir, tag=tag)


def checkpoint_world_size(folder: str) -> int:
    """How many data-parallel ranks wrote the ZeRO checkpoint in `folder` (0: stage 0, whose
    optimizer state is whole and loads on any number of ranks)."""
    return len(list(Path(folder).glob("*zero_pp_rank_*_mp_rank_00_optim_states.pt")))


#: How the conversion subprocess reports a refused checkpoint: exit status, stderr line prefix.
REFUSED_EXIT, REFUSED_PREFIX = 3, "career-refused: "


def to_universal(checkpoint_dir: str, tag: str, out_dir: str) -> None:
    """Rewrite checkpoint `tag` as `out_dir/tag` in DeepSpeed's universal format, which loads on
    any number of ranks (ZeRO partitions are merged per parameter, optimizer moments included).

    DeepSpeed's ds_to_universal runs in a subprocess (`python -m trainer.engine`, below) with
    every read weights-only; a refused file is raised here as `UnsafeCheckpointError`."""
    target = Path(out_dir) / tag
    shutil.rmtree(target, ignore_errors=True)
    command = [
        sys.executable,
        "-m",
        "trainer.engine",
        "--input_folder",
        str(Path(checkpoint_dir) / tag),
        "--output_folder",
        str(target),
        "--inject_missing_state",
        "--num_extract_workers",
        "1",
        "--num_merge_workers",
        "1",
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode == REFUSED_EXIT:
        lines = [ln for ln in done.stderr.splitlines() if ln.startswith(REFUSED_PREFIX)]
        if lines:
            raise safe_load.UnsafeCheckpointError(lines[-1].removeprefix(REFUSED_PREFIX))
    if done.returncode != 0:
        raise RuntimeError(
            f"converting checkpoint {tag} for another number of workers failed:\n{done.stderr[-2000:]}"
        )


def _to_universal_main() -> int:
    """The conversion subprocess: DeepSpeed's ds_to_universal (its own arguments) with every
    `torch.load` weights-only."""
    select_accelerator()
    from deepspeed.checkpoint import ds_to_universal

    args = ds_to_universal.parse_arguments()
    try:
        with safe_load.weights_only_everywhere(args.input_folder):
            ds_to_universal.main(args)
    except safe_load.UnsafeCheckpointError as error:
        print(f"{REFUSED_PREFIX}{error}", file=sys.stderr)
        return REFUSED_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(_to_universal_main())
