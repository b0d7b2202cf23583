"""Typed training configuration: recipes (the paper's), presets, dotted overrides, resolution.

`TrainConfig` composes the model (its kind, a preset of that kind plus overrides), the
optimisation recipe, batching and the run's bookkeeping. `resolve()` fills what depends on the run
(warmup of short runs, precision on CPU vs GPU) and says so in `notes`; `--dry-run` prints the
resolved config. Overrides are `key=value` with dotted keys: `optim.lr=1e-4 model.n_layer=4
updates=200`; `model.*` names a setting of the kind's config (`trainer.models.registry`).
"""

from __future__ import annotations

import ast
import dataclasses
import json
import typing
from dataclasses import dataclass, field
from typing import Any

from trainer.models.registry import DEFAULT_KIND, KINDS, PRESET_NAMES, check_preset, check_settings


def check_number_types(config: Any, prefix: str = "") -> None:
    """Refuse a setting of the wrong kind (`updates=abc`) by its name, before a comparison
    fails with a Python error: ints where ints are due (a bool is no int here), ints or floats
    where floats are."""
    hints = typing.get_type_hints(type(config))
    for item in dataclasses.fields(config):
        kind, value = hints[item.name], getattr(config, item.name)
        if kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind is float:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        else:
            continue
        if not ok:
            raise ValueError(
                f"{prefix}{item.name} must be a number ({kind.__name__}), not {value!r}"
            )


@dataclass
class OptimConfig:
    """AdamW with an inverse-square-root schedule and linear warmup from `warmup_init_lr`."""

    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 0.01
    eps: float = 1e-8
    warmup_updates: int = 4000
    warmup_init_lr: float = 1e-7
    grad_clip: float = 0.0  # 0: none (the paper clips nothing)

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # type: ignore[assignment]
        check_number_types(self, "optim.")
        if self.lr <= 0 or self.warmup_updates < 0 or self.grad_clip < 0:
            raise ValueError("lr must be positive; warmup_updates and grad_clip non-negative")


PRECISIONS = ("auto", "fp32", "bf16", "bf16-autocast", "fp16")


@dataclass
class TrainConfig:
    kind: str = field(
        default=DEFAULT_KIND,
        metadata={
            "help": "model kind: " + "; ".join(f"{k.name}: {k.help}" for k in KINDS.values()),
            "choices": tuple(KINDS),
            "flag": "--model",
            "metavar": "KIND",
        },
    )
    preset: str = field(
        default="paper",
        metadata={
            "help": "the model kind's architecture preset ("
            + "; ".join(f"{k.name}: {', '.join(k.presets)}" for k in KINDS.values())
            + ")",
            "choices": PRESET_NAMES,
        },
    )
    model: dict[str, Any] = field(default_factory=dict)  # overrides of the preset's architecture
    optim: OptimConfig = field(default_factory=OptimConfig)
    updates: int = field(default=85_000, metadata={"help": "optimizer updates", "metavar": "N"})
    tokens_per_update: int = field(
        default=16_000,
        metadata={
            "help": "job-year tokens per update over all workers, padding excluded",
            "metavar": "N",
        },
    )
    micro_batches: int = field(
        default=1, metadata={"help": "gradient accumulation steps per update", "metavar": "N"}
    )
    zero_stage: int = field(
        default=2, metadata={"help": "DeepSpeed ZeRO stage", "choices": (0, 1, 2, 3)}
    )
    precision: str = field(
        default="auto",
        metadata={
            "help": "auto: bf16 on GPU; on CPU bf16-autocast where it has native bf16 "
            "(avx512_bf16, amx_bf16), else fp32; bf16 (DeepSpeed's: bf16 weights, fp32 master "
            "copy); bf16-autocast keeps fp32 weights and runs matmuls in bf16; fp16",
            "choices": PRECISIONS,
        },
    )
    train_people: int | None = field(
        default=None,
        metadata={
            "help": "train on the first N people of the train split only (a deterministic prefix: "
            "nested corpus sizes for scaling studies); default: all",
            "metavar": "N",
        },
    )
    # torch.compile the model (dynamic shapes: batches vary); on CPU 1.08x on `paper` after
    # minutes of compilation per run (BENCHMARKS.md), so opt-in
    compile: bool = False
    # CPU training: dropout masks from a counter hash (trainer.models.dropout, 12x faster than
    # torch's generator); False: torch's dropout (the masks of runs before it)
    hash_dropout: bool = True
    # CPU training: layer norms, projections and feed-forward on the real job-years only, not on
    # padding (trainer.models.career.Packing); False: the padded layout
    pack_rows: bool = True
    seed: int = field(default=0, metadata={"help": "random seed"})
    eval_every: int = field(
        default=1000, metadata={"help": "updates between validations", "metavar": "N"}
    )
    checkpoint_every: int = field(
        default=1000, metadata={"help": "updates between checkpoints", "metavar": "N"}
    )
    keep_checkpoints: int = 3  # most recent ones kept, besides the best
    log_every: int = 10
    loader_workers: int = 1
    cpu_threads: int = 0  # torch threads per worker on CPU; 0: cores / workers
    patience: int = 0  # evaluations without improvement before stopping; 0: never stop early
    warmup_fraction_short_runs: float = (
        0.1  # runs shorter than 10x the warmup warm up this fraction
    )
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if isinstance(self.optim, dict):
            self.optim = OptimConfig(**self.optim)
        check_number_types(self)
        check_preset(self.kind, self.preset)  # (an unknown kind is refused there too)
        check_settings(self.kind, self.model)
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage must be 0, 1, 2 or 3, not {self.zero_stage}")
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}"
            )
        if self.precision == "fp16" and self.zero_stage == 0:
            raise ValueError(
                "precision fp16 needs zero_stage 1 or more: without ZeRO, DeepSpeed keeps no fp32 "
                "master weights to validate and export"
            )
        if self.train_people is not None and self.train_people < 1:
            raise ValueError(f"train_people must be at least 1, not {self.train_people}")
        for name in (
            "updates",
            "tokens_per_update",
            "micro_batches",
            "eval_every",
            "checkpoint_every",
            "log_every",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["optim"]["betas"] = list(self.optim.betas)
        return out

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> TrainConfig:
        return cls(**{**payload, "optim": OptimConfig(**payload.get("optim", {}))})

    def resolve(
        self, world_size: int, on_gpu: bool, cpu_bf16: list[str] | None = None
    ) -> TrainConfig:
        """A copy with run-dependent values decided and explained in `notes`. `cpu_bf16`: the
        CPU's native-bf16 flags (default: this machine's, `trainer.accelerator.cpu_bf16_flags`)."""
        resolved = TrainConfig.from_dict(json.loads(json.dumps(self.to_dict())))
        resolved.notes = list(self.notes)
        if resolved.precision == "auto":
            resolved.precision, why = _auto_precision(on_gpu, cpu_bf16)
            resolved.notes.append(f"precision auto -> {resolved.precision} ({why})")
        warmup = resolved.optim.warmup_updates
        if warmup * 10 > resolved.updates:
            short = max(1, int(resolved.updates * resolved.warmup_fraction_short_runs))
            resolved.notes.append(
                f"short run: warmup {warmup} -> {short} updates "
                f"({resolved.warmup_fraction_short_runs:.0%} of {resolved.updates})"
            )
            resolved.optim.warmup_updates = short
        if resolved.tokens_per_update < world_size * resolved.micro_batches:
            raise ValueError("tokens_per_update is smaller than workers x micro_batches")
        resolved.notes.append(
            f"{world_size} worker(s) x {resolved.micro_batches} micro-batch(es): "
            f"{resolved.tokens_per_update // (world_size * resolved.micro_batches):,} tokens per micro-batch"
        )
        return resolved


def _auto_precision(on_gpu: bool, cpu_bf16: list[str] | None) -> tuple[str, str]:
    """What `precision: auto` becomes, and why."""
    if on_gpu:
        return "bf16", "GPU"
    if cpu_bf16 is None:
        from trainer.accelerator import cpu_bf16_flags

        cpu_bf16 = cpu_bf16_flags()
    if cpu_bf16:
        return (
            "bf16-autocast",
            f"CPU with native bf16: {', '.join(cpu_bf16)}; fp32: --precision fp32",
        )
    return "fp32", "CPU without native bf16 (avx512_bf16, amx_bf16): bf16 would be emulated, slower"


#: What validation runs in, whatever the training precision (trainer.evaluation): the package's
#: fp32 master weights with autocast off, so that the perplexity a run records is the one
#: `career evaluate` gives its package.
VALIDATION_PRECISION = "fp32"
VALIDATION_WHY = (
    "the fp32 master weights the package holds, autocast off: the recorded perplexity is the one "
    "`career evaluate` gives the package"
)


def precision_record(resolved: TrainConfig) -> dict[str, str]:
    """Which precision training and validation run in, and why (metrics.json and --dry-run)."""
    prefix = f"precision auto -> {resolved.precision} ("  # the note `resolve` wrote
    auto = [
        n.removeprefix(prefix).removesuffix(")") for n in resolved.notes if n.startswith(prefix)
    ]
    return {
        "training": resolved.precision,
        "training_why": f"auto: {auto[0]}" if auto else "asked for (--precision)",
        "validation": VALIDATION_PRECISION,
        "validation_why": VALIDATION_WHY,
    }


#: The paper's recipes (Vafa et al., TMLR 2024: its pretraining and fine-tuning settings).
RECIPES: dict[str, dict[str, Any]] = {
    "pretrain": {"optim": {"lr": 5e-4, "warmup_updates": 4000}, "updates": 85_000},
    "finetune": {"optim": {"lr": 1e-4, "warmup_updates": 500}, "updates": 5_000, "patience": 5},
}


def _parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare string


def apply_overrides(payload: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b=value` overrides to a config dict; unknown keys are errors."""
    payload = json.loads(json.dumps(payload))
    # Settings of any kind; TrainConfig checks them against the kind chosen.
    known_model_names = {name for kind in KINDS.values() for name in kind.settings()}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        value = _parse_value(text.strip())
        if parts[0] == "model":
            if len(parts) != 2 or parts[1] not in known_model_names:
                raise ValueError(f"unknown model setting {key!r}")
            payload.setdefault("model", {})[parts[1]] = value
            continue
        target = payload
        for part in parts[:-1]:
            if part not in target or not isinstance(target[part], dict):
                raise ValueError(f"unknown setting {key!r}")
            target = target[part]
        if parts[-1] not in target:
            raise ValueError(f"unknown setting {key!r}")
        target[parts[-1]] = value
    return payload


def make_config(
    recipe: str, preset: str | None = None, overrides: list[str] | None = None, **fields: Any
) -> TrainConfig:
    """The recipe's config, then `fields` (typed values: a dict merges into its section, e.g.
    `optim={"lr": 1e-4}`; None means not given), then dotted overrides (user text)."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}")
    payload = TrainConfig().to_dict()
    for key, value in RECIPES[recipe].items():
        if isinstance(value, dict):
            payload[key].update(value)
        else:
            payload[key] = value
    if preset:
        payload["preset"] = preset
    for key, value in fields.items():
        if isinstance(value, dict) and isinstance(payload.get(key), dict):
            payload[key].update({k: v for k, v in value.items() if v is not None})
        elif value is not None:
            payload[key] = value
    return TrainConfig.from_dict(apply_overrides(payload, overrides or []))
