"""Model packages: what training leaves behind for evaluation and fine-tuning.

A package is a folder (any URL) holding `model.safetensors`, `config.json` (model config,
covariates, `format_version`, the training dataset's manifest sha256, the vocabulary hash),
`vocab.json` and `metrics.json`. `load_model(URL)` opens it on CPU with PyTorch and safetensors
only: no DeepSpeed, no Ray, no pickle.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from data_shards import storage
from data_shards.errors import StructuralError
from data_shards.vocab import Vocabulary
from trainer.model import Career, ModelConfig

FORMAT_VERSION = 1
FILES = ("model.safetensors", "config.json", "vocab.json", "metrics.json")


@dataclass
class LoadedModel:
    model: Career
    vocab: Vocabulary
    config: dict[str, Any]  # the package's config.json
    metrics: dict[str, Any]


def write_package(
    url: str,
    state_dict: dict[str, torch.Tensor],
    model_config: ModelConfig,
    vocab: Vocabulary,
    metrics: dict[str, Any],
    dataset_manifest_sha256: str,
    extra: dict[str, Any] | None = None,
    storage_options=None,
) -> None:
    """Write a package; files go to a local folder first, then to `url` (local or remote)."""
    config = {
        "format_version": FORMAT_VERSION,
        "model": model_config.to_dict(),
        "covariates": list(model_config.covariates),
        "dataset_manifest_sha256": dataset_manifest_sha256,
        "vocab_hash": vocab.hash,
        **(extra or {}),
    }
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state_dict.items()}
    with tempfile.TemporaryDirectory(prefix="career-package-") as tmp:
        save_file(
            tensors,
            str(Path(tmp) / "model.safetensors"),
            metadata={"format_version": str(FORMAT_VERSION)},
        )
        storage.write_bytes_atomic(
            storage.join(url, "model.safetensors"),
            (Path(tmp) / "model.safetensors").read_bytes(),
            storage_options,
        )
    storage.write_bytes_atomic(
        storage.join(url, "config.json"),
        json.dumps(config, indent=1, sort_keys=True).encode(),
        storage_options,
    )
    vocab.save(storage.join(url, "vocab.json"), storage_options)
    storage.write_bytes_atomic(
        storage.join(url, "metrics.json"),
        json.dumps(metrics, indent=1, sort_keys=True).encode(),
        storage_options,
    )


def load_model(url: str, storage_options=None, device: str = "cpu") -> LoadedModel:
    """Open a model package: the model in eval mode, its vocabulary, config and metrics."""
    shown = storage.redact(url)
    for name in FILES:
        if not storage.exists(storage.join(url, name), storage_options):
            raise StructuralError(f"not a model package: {name} is missing", path=shown)
    config = json.loads(storage.read_text(storage.join(url, "config.json"), storage_options))
    if config.get("format_version") != FORMAT_VERSION:
        raise StructuralError(
            f"unsupported package format {config.get('format_version')!r}", path=shown
        )
    vocab = Vocabulary.load(storage.join(url, "vocab.json"), storage_options)
    if vocab.hash != config["vocab_hash"]:
        raise StructuralError(
            "vocab.json does not match the vocabulary the model was trained with", path=shown
        )
    metrics = json.loads(storage.read_text(storage.join(url, "metrics.json"), storage_options))
    model_config = ModelConfig(
        **{**config["model"], "covariates": tuple(config["model"]["covariates"])}
    )
    with tempfile.TemporaryDirectory(prefix="career-package-") as tmp:
        path = Path(tmp) / "model.safetensors"
        path.write_bytes(
            storage.read_bytes(storage.join(url, "model.safetensors"), storage_options)
        )
        try:
            state = load_file(str(path), device=device)
        except Exception as exc:  # safetensors raises its own error types for damaged files
            raise StructuralError(f"model.safetensors is unreadable: {exc}", path=shown) from None
    model = Career(model_config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise StructuralError(
            f"weights do not fit the config: missing {missing}, unexpected {unexpected}", path=shown
        )
    return LoadedModel(model.to(device).eval(), vocab, config, metrics)
