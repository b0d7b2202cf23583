"""Model packages: what training leaves behind for evaluation and fine-tuning, for every kind.

A package is a folder (any URL) holding `model.safetensors`, `vocab.json`, `metrics.json` and
`config.json`: the model `kind` (trainer.models.registry), its config, covariates,
`format_version`, the training dataset's manifest sha256, the vocabulary hash and the sha256 of
every other file. `config.json` is written last. `load_model(URL)` opens it on CPU with PyTorch
and safetensors only: no DeepSpeed, no Ray, no pickle. It builds the package's kind and refuses,
naming the file, a missing file, a file whose sha256 differs from config.json's, or an unknown
kind. Packages of format 1 (before kinds and file hashes) load as CAREER, unhashed.
"""

from __future__ import annotations

import hashlib
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
from trainer.models.output import JobModel
from trainer.models.registry import DEFAULT_KIND, KINDS, config_from_dict, from_config

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: no `kind` (CAREER), no file hashes
FILES = ("model.safetensors", "config.json", "vocab.json", "metrics.json")
HASHED = tuple(name for name in FILES if name != "config.json")


@dataclass
class LoadedModel:
    model: JobModel  # in eval mode; its kind's class (Career, Regression, BagOfJobs, Markov)
    vocab: Vocabulary
    config: dict[str, Any]  # the package's config.json
    metrics: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.model.config.kind


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_package(
    url: str,
    state_dict: dict[str, torch.Tensor],
    model_config: Any,
    vocab: Vocabulary,
    metrics: dict[str, Any],
    dataset_manifest_sha256: str,
    extra: dict[str, Any] | None = None,
    storage_options=None,
) -> None:
    """Write a package of `model_config.kind`; each file goes whole to `url` (local or remote),
    `config.json` (with the others' sha256) last."""
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state_dict.items()}
    with tempfile.TemporaryDirectory(prefix="career-package-") as tmp:
        path = Path(tmp) / "model.safetensors"
        save_file(tensors, str(path), metadata={"format_version": str(FORMAT_VERSION)})
        contents = {
            "model.safetensors": path.read_bytes(),
            "vocab.json": vocab.to_json().encode(),
            "metrics.json": json.dumps(metrics, indent=1, sort_keys=True, default=str).encode(),
        }
    config = {
        "format_version": FORMAT_VERSION,
        "kind": model_config.kind,
        "model": model_config.to_dict(),
        "covariates": list(model_config.covariates),
        "dataset_manifest_sha256": dataset_manifest_sha256,
        "vocab_hash": vocab.hash,
        **(extra or {}),
        "files": {name: sha256(data) for name, data in contents.items()},
    }
    for name, data in contents.items():
        storage.write_bytes_atomic(storage.join(url, name), data, storage_options)
    storage.write_bytes_atomic(
        storage.join(url, "config.json"),
        json.dumps(config, indent=1, sort_keys=True).encode(),
        storage_options,
    )


def _read_config(url: str, storage_options) -> dict[str, Any]:
    where = storage.redact(storage.join(url, "config.json"))
    if not storage.exists(storage.join(url, "config.json"), storage_options):
        raise StructuralError("not a model package: config.json is missing", path=where)
    try:
        config = json.loads(storage.read_text(storage.join(url, "config.json"), storage_options))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StructuralError(f"config.json is not valid JSON: {exc}", path=where) from None
    if not isinstance(config, dict):
        raise StructuralError("config.json is not a JSON object", path=where)
    version = config.get("format_version")
    if version not in READABLE_VERSIONS:
        raise StructuralError(f"unsupported package format {version!r}", path=where)
    kind = config.get("kind", DEFAULT_KIND if version == 1 else None)
    if kind not in KINDS:
        raise StructuralError(
            f"unknown model kind {kind!r} (known: {', '.join(KINDS)})", path=where
        )
    if version >= 2 and not isinstance(config.get("files"), dict):
        raise StructuralError("config.json lists no file sha256s", path=where)
    return config


def _read_files(url: str, storage_options) -> dict[str, bytes]:
    """The bytes of the package's other files (each must exist)."""
    contents = {}
    for name in HASHED:
        file_url = storage.join(url, name)
        if not storage.exists(file_url, storage_options):
            raise StructuralError(
                f"not a model package: {name} is missing", path=storage.redact(file_url)
            )
        contents[name] = storage.read_bytes(file_url, storage_options)
    return contents


def _check_hashes(url: str, config: dict[str, Any], contents: dict[str, bytes]) -> None:
    """Each file is the one packaged: its sha256 is config.json's (format 1 lists none)."""
    if "files" not in config:
        return
    for name, data in contents.items():
        where = storage.redact(storage.join(url, name))
        expected = config["files"].get(name)
        if expected is None:
            raise StructuralError(f"config.json lists no sha256 for {name}", path=where)
        if sha256(data) != expected:
            raise StructuralError(
                f"{name}: sha256 does not match config.json (changed or damaged)", path=where
            )


def _read_weights(data: bytes, device: str, where: str) -> dict[str, torch.Tensor]:
    with tempfile.TemporaryDirectory(prefix="career-package-") as tmp:
        path = Path(tmp) / "model.safetensors"
        path.write_bytes(data)
        try:
            return load_file(str(path), device=device)
        except Exception as exc:  # safetensors raises its own error types for damaged files
            raise StructuralError(f"model.safetensors is unreadable: {exc}", path=where) from None


def load_model(url: str, storage_options=None, device: str = "cpu") -> LoadedModel:
    """Open a model package: the model (its kind's class) in eval mode, its vocabulary, config
    and metrics. A file that cannot be parsed is "unreadable"; one that parses but is not the
    file packaged fails its sha256."""
    shown = storage.redact(url)
    config = _read_config(url, storage_options)
    contents = _read_files(url, storage_options)
    state = _read_weights(contents["model.safetensors"], device, shown)
    try:
        vocab = Vocabulary.from_json(contents["vocab.json"].decode(), "vocab.json")
    except (ValueError, KeyError, UnicodeDecodeError) as exc:
        raise StructuralError(f"vocab.json is unreadable: {exc}", path=shown) from None
    try:
        metrics = json.loads(contents["metrics.json"])
    except (ValueError, UnicodeDecodeError) as exc:
        raise StructuralError(f"metrics.json is unreadable: {exc}", path=shown) from None
    _check_hashes(url, config, contents)
    if vocab.hash != config.get("vocab_hash"):
        raise StructuralError(
            "vocab.json does not match the vocabulary the model was trained with", path=shown
        )
    kind = config.get("kind", DEFAULT_KIND)
    try:
        model_config = config_from_dict({**config["model"], "kind": kind})
    except (TypeError, ValueError, KeyError) as exc:
        raise StructuralError(f"config.json: bad {kind} model config: {exc}", path=shown) from None
    model = from_config(model_config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise StructuralError(
            f"weights do not fit the config: missing {missing}, unexpected {unexpected}", path=shown
        )
    return LoadedModel(model.to(device).eval(), vocab, config, metrics)


@dataclass(frozen=True)
class PackageInfo:
    """What a package says about itself without its weights: its vocabulary and config."""

    vocab: Vocabulary
    config: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.config.get("kind", DEFAULT_KIND)  # format-1 packages are CAREER


def read_package_info(url: str, storage_options=None) -> PackageInfo:
    """A package's vocabulary and config, checked as `load_model` checks them (config.json,
    every file present, vocab.json's sha256 and vocabulary hash), without reading the weights:
    for a driver that only checks packages against datasets before its tasks load them."""
    shown = storage.redact(url)
    config = _read_config(url, storage_options)
    for name in HASHED:
        file_url = storage.join(url, name)
        if not storage.exists(file_url, storage_options):
            raise StructuralError(
                f"not a model package: {name} is missing", path=storage.redact(file_url)
            )
    contents = {"vocab.json": storage.read_bytes(storage.join(url, "vocab.json"), storage_options)}
    try:
        vocab = Vocabulary.from_json(contents["vocab.json"].decode(), "vocab.json")
    except (ValueError, KeyError, UnicodeDecodeError) as exc:
        raise StructuralError(f"vocab.json is unreadable: {exc}", path=shown) from None
    _check_hashes(url, config, contents)
    if vocab.hash != config.get("vocab_hash"):
        raise StructuralError(
            "vocab.json does not match the vocabulary the model was trained with", path=shown
        )
    return PackageInfo(vocab, config)
