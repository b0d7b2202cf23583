"""Saving a training run's checkpoints, and resuming from them.

A checkpoint is DeepSpeed's files for the tag `step{N:07d}` plus client state: everything a resume
needs (update, tokens seen, the loader state and RNG states of every rank, the resolved config, the
vocabulary hash, the validation history). Beside it rank 0 writes `career.json` and `vocab.json`,
what `career export` needs without unpickling anything. Then the tag is uploaded (remote outputs),
its record (`complete.json`: every node's files with their sizes and sha256) marks it complete,
`latest.json` / `best.json` point at it, and old tags are pruned (`trainer.checkpoint_store`). A
save that fails (a full disk) stops the run with the folder named and the previous checkpoint
still the one resumed from. Resuming reads the files weights-only (`trainer.safe_load`, through
`trainer.engine`), from the newest tag that its record verifies (`trainer.elastic`).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import torch.distributed as dist

from data_shards import storage
from data_shards.errors import StructuralError
from data_shards.stream import CareerLoader
from trainer import engine as ds_engine
from trainer import rng
from trainer.checkpoint_store import CheckpointStore, merge_files, tag_of
from trainer.distributed import all_gather
from trainer.elastic import ResumeSource, from_local_rank0, unshare_optimizer_steps


@dataclass
class TrainState:
    """Where training is: what checkpoints carry besides weights, optimizer and loader."""

    step: int = 0
    tokens_seen: float = 0.0
    valid_history: list[list[float]] = field(default_factory=list)  # [update, perplexity]
    # [update, mean training loss per job-year (nats) since the previous entry], every log window
    train_history: list[list[float]] = field(default_factory=list)


class Checkpointer:
    def __init__(self, run, loader: CareerLoader):
        """`run`: the run's `trainer.context.RunContext`; `loader`: the training loader."""
        self.run = run
        self.loader = loader
        self.store = CheckpointStore(run.out_url, run.storage_options)
        if self.store.remote:  # one private staging folder per node, made by its local rank 0
            info = run.info
            made = self.store.local if info.local_rank == 0 else None
            self.store.use_staging(from_local_rank0(made, info))
            if made:  # removed once training is done with this checkpointer (or at exit)
                weakref.finalize(self, self.store.close)

    def due(self, step: int, stopping: bool) -> bool:
        config = self.run.config
        return step % config.checkpoint_every == 0 or step == config.updates or stopping

    # -- saving -----------------------------------------------------------------------------------
    def _client_state(self, state: TrainState, valid: float | None) -> dict[str, Any]:
        run = self.run
        return {
            "step": state.step,
            "tokens_seen": state.tokens_seen,
            "world_size": run.info.world_size,
            "loader": all_gather(self.loader.state_dict()),
            "rng": all_gather(rng.rng_state()),
            "config": run.config.to_dict(),
            "vocab_hash": run.data.vocab.hash,
            "valid_perplexity": valid,
            "valid_history": state.valid_history,
            "train_history": state.train_history,
        }

    def _sidecar(self, state: TrainState, valid: float | None) -> dict[str, Any]:
        run = self.run
        return {
            "model_config": run.model.config.to_dict(),
            "vocab_hash": run.data.vocab.hash,
            "dataset": storage.redact(run.data_url),
            "dataset_manifest_sha256": run.data.manifest_sha,
            "step": state.step,
            "tokens_seen": state.tokens_seen,
            "valid_perplexity": valid,
            "config": run.config.to_dict(),
        }

    def save(self, engine, state: TrainState, valid: float | None, is_best: bool = False) -> str:
        """Checkpoint after update `state.step` (every rank); `valid`: its validation perplexity
        if it was evaluated, `is_best`: it is the best so far.

        In this order, so that a save that stops anywhere leaves the previous checkpoint the one
        resumed from: what an earlier attempt left of the tag is removed; every rank writes its
        files (a write that fails, a full disk say, is a StructuralError naming the folder, raised
        by the rank that met it: the launcher stops the others); each node uploads its files and
        hashes them; rank 0 writes the tag's record from every node's files, then `latest.json`
        and `best.json`, and only then prunes older tags."""
        info, store, tag = self.run.info, self.store, tag_of(state.step)
        client = self._client_state(state, valid)
        if info.local_rank == 0:
            store.begin(tag, owner=info.rank == 0)
        dist.barrier()
        try:
            engine.save_checkpoint(store.local, tag=tag, client_state=client, save_latest=False)
            if info.rank == 0:
                store.write_sidecar(tag, self._sidecar(state, valid), self.run.data.vocab)
        except (OSError, RuntimeError) as error:
            raise store.write_failure(tag, error) from None
        dist.barrier()
        files = None
        if info.local_rank == 0:
            store.upload(tag)
            files = store.local_files(tag)
        every_node = all_gather(files)
        if info.rank == 0:
            store.write_record(tag, state.step, merge_files(every_node))
            store.set_latest(tag, state.step)
            if is_best and valid is not None:
                store.set_best(tag, state.step, valid)
            store.prune(self.run.config.keep_checkpoints)
        dist.barrier()
        return tag

    # -- resuming ---------------------------------------------------------------------------------
    def repair_best(self, best_step: int | None, best_perplexity: float | None) -> None:
        """Point `best.json` at the best evaluation of the resumed history (every rank).

        `save` writes `latest.json` and then `best.json`: a run killed between the two resumes from
        a checkpoint whose own validation history says it is the best while `best.json` still
        names an older tag (or none), and would export that one at the end. The history travels
        inside the checkpoint, so it is the truth; an evaluated update is always checkpointed,
        and the newest tag is never pruned before its `best.json` is written."""
        if self.run.info.rank == 0 and best_step is not None:
            pointer = self.store.best()
            if pointer is None or pointer.get("step") != best_step:
                self.store.set_best(tag_of(best_step), best_step, best_perplexity)
        dist.barrier()

    def resume(self, engine, source: ResumeSource) -> tuple[TrainState, str]:
        """Load `source` into the engine, the loader and this rank's RNG; (state, what happened)."""
        run, info = self.run, self.run.info
        client = ds_engine.load_checkpoint(engine, source.folder, source.tag)
        if source.universal:
            unshare_optimizer_steps(engine)
        dist.barrier()
        source.cleanup(info)
        shown = storage.redact(self.store.url)
        if client is None:
            raise StructuralError(
                f"checkpoint {source.tag} is unreadable or incomplete", path=shown
            )
        if client["vocab_hash"] != run.data.vocab.hash:
            raise StructuralError("the checkpoint was trained on another vocabulary", path=shown)
        state = TrainState(
            client["step"],
            client["tokens_seen"],
            list(client.get("valid_history", [])),
            list(client.get("train_history", [])),
        )
        # The same workers continue exactly; another number re-plans the rest of the epoch so
        # that no person is skipped or read twice (data_shards.elastic).
        mode = self.loader.load_states(client["loader"])
        if client["world_size"] == info.world_size:
            rng.set_rng_state(client["rng"][info.rank])
        else:
            rng.reseed_rank(run.config.seed, state.step, info.rank)
            mode += f": {client['world_size']} -> {info.world_size} workers"
        skipped = "".join(f"{note}\n" for note in source.skipped)
        return state, f"{skipped}resumed from {source.tag} (update {state.step}, {mode})"
