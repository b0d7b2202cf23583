"""Export: a training run's checkpoint -> a model package (`career export`, and the end of training).

The tag is first verified against its record (`complete.json`: sizes and sha256 of the bytes
read, a remote tag's downloaded copy), and an incomplete or corrupt one is refused (exit 2) naming
what is wrong. Uses DeepSpeed's consolidation (any ZeRO stage; every file read weights-only,
`trainer.safe_load`) and the `career.json` + `vocab.json` written beside every checkpoint; the
result is what `trainer.package.load_model` opens. Runs in one process (rank 0 at the end of
training). The sidecar's model config names the kind (none: a CAREER checkpoint from before
kinds).
"""

from __future__ import annotations

from contextlib import closing
from typing import Any

from data_shards import storage
from data_shards.errors import StructuralError
from data_shards.vocab import Vocabulary
from trainer import engine as ds_engine
from trainer.checkpoint_store import CheckpointStore, check_tag
from trainer.models.registry import config_from_dict
from trainer.package import write_package


def export_run(
    run_url: str,
    tag: str | None = None,
    package_url: str | None = None,
    storage_options=None,
    metrics: dict[str, Any] | None = None,
) -> str:
    """Export `tag` (default: the best checkpoint, else the latest) of the run at `run_url` to
    `package_url` (default `RUN/package`); returns the package's URL.

    `metrics`: the package's metrics.json (training passes the run's); by default the checkpoint's
    own (validation perplexity, update, tokens seen)."""
    store = CheckpointStore(run_url, storage_options)
    tag = tag or (store.best() or {}).get("tag") or store.pointed() or store.latest()
    if not tag:
        raise StructuralError("no checkpoint found", path=storage.redact(store.url))
    check_tag(tag, storage.redact(store.url))
    store.refuse_unknown(tag)
    with closing(store):  # a remote run's staging copy is removed
        problem = store.fetch(tag)  # downloaded (remote) and verified against its record
        if problem:
            complete = [t for t in store.tags() if t != tag and store.check(t) is None]
            raise StructuralError(
                f"checkpoint {tag} is not complete, refusing to export it: {problem} (complete "
                f"checkpoints, by their records: {', '.join(complete) or 'none'})",
                path=storage.redact(store.url),
            )
        sidecar = store.read_sidecar(tag)
        vocab = Vocabulary.load(storage.join(store.url, tag, "vocab.json"), storage_options)
        if vocab.hash != sidecar["vocab_hash"]:
            raise StructuralError(
                f"checkpoint {tag}: vocab.json does not match career.json",
                path=storage.redact(store.url),
            )
        try:
            state = ds_engine.consolidated_state_dict(store.local, tag)
        except (FileNotFoundError, ValueError, RuntimeError, KeyError) as exc:
            raise StructuralError(
                f"checkpoint {tag} is corrupt or incomplete: {exc}", path=storage.redact(store.url)
            ) from None
    state = {k.removeprefix("model."): v for k, v in state.items()}
    try:
        model_config = config_from_dict(sidecar["model_config"])
    except (TypeError, ValueError) as exc:
        raise StructuralError(
            f"checkpoint {tag}: career.json holds no usable model config: {exc}",
            path=storage.redact(store.url),
        ) from None
    if metrics is None:
        metrics = {
            "valid_perplexity": sidecar.get("valid_perplexity"),
            "step": sidecar["step"],
            "tokens_seen": sidecar.get("tokens_seen"),
        }
    target = package_url or storage.join(run_url, "package")
    write_package(
        target,
        state,
        model_config,
        vocab,
        metrics,
        sidecar["dataset_manifest_sha256"],
        {"checkpoint": tag},
        storage_options,
    )
    return target
