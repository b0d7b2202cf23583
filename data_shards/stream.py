"""Streaming loader: dataset shards -> token-budget batches of the `Batch` contract, resumable.

Reading: the manifest lists the split's shards; shards are opened with webdataset (`gopen`, with an
`s3` scheme registered here that makes its s3fs filesystem inside each DataLoader worker, since
s3fs is not fork-safe) and each tar member is one block of people (`blocks.decode_block`).

Splitting: every (rank, DataLoader worker) pair is a *slot*; slot g of G takes shards g, g+G, ...
of the epoch's (seeded) shard order, or, when a split has fewer shards than slots, every G-th block
of every shard. Either way each block is read by exactly one slot per epoch. Running under
torch.distributed with a world size the config does not name is an error.

Batching (as in the paper): a budget of `tokens_per_update` job-year tokens per update (padding
excluded) is divided over ranks and micro-batches. A slot reads `buffer_blocks` blocks at a time
(a *group*), shuffles people with a seed of (seed, epoch, slot, group), sorts them by length so
batches pad little, cuts batches by the token budget and shuffles the batch order.

Evaluation (`loop=False`): one pass; ranks may get different numbers of batches (shards differ in
size), so a distributed evaluation sums its NLL and token counts locally and all-reduces once at
the end, never per batch. When a split has fewer shards than slots, every slot reads every shard
and keeps its blocks: more reading, which only small (evaluation) splits need.

Resuming: each batch carries its position (slot, epoch, group, index in group); `CareerLoader`
records the last position consumed per slot, and `load_state_dict` restarts every slot right
after it, with DataLoader workers rotated so that the next batch is exactly the one an
uninterrupted run would have yielded. `load_states` takes the states of every rank and also
resumes on another number of ranks or workers: the people the earlier slots had not read yet in
each begun epoch are dealt out as catch-up epochs (`data_shards.elastic`).
"""

from __future__ import annotations

import json
import os
import tarfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import webdataset
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import tar_file_iterator

from data_shards import storage
from data_shards.blocks import MEMBER_SUFFIX, Block, decode_block
from data_shards.elastic import plan_from_json, plan_to_json, remaining_plan
from data_shards.manifest import Manifest, ShardInfo, load_manifest
from data_shards.vocab import BOS_ID, PAD_ID

STATE_FORMAT = 1
TOKEN_FIELDS_COVARIATES = ("year", "education")


# ----------------------------------------------------------------------------- object store
_FILESYSTEMS: dict[tuple[int, str], Any] = {}


def _open_s3(
    url: str, mode: str = "rb", bufsize: int = 8192, storage_options: dict | None = None, **_: Any
):
    """webdataset opener for s3:// URLs: one s3fs filesystem per process, made after the fork."""
    import s3fs

    key = (os.getpid(), json.dumps(storage_options or {}, sort_keys=True))
    if key not in _FILESYSTEMS:
        options = dict(storage_options or {})
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            options.setdefault("client_kwargs", {}).setdefault("endpoint_url", endpoint)
        _FILESYSTEMS[key] = s3fs.S3FileSystem(skip_instance_cache=True, **options)
    return _FILESYSTEMS[key].open(url, mode, block_size=8 * 2**20)


webdataset.gopen_schemes["s3"] = _open_s3


def _open_shard(url: str, storage_options: dict | None):
    if url.startswith("s3://"):
        return storage.retry(
            lambda: webdataset.gopen(url, "rb", storage_options=storage_options), url
        )
    if "://" in url and not url.startswith("file://"):
        fs, path = storage.filesystem(url, storage_options)
        return storage.retry(lambda: fs.open(path, "rb"), url)
    return webdataset.gopen(url, "rb")


# ----------------------------------------------------------------------------- config
@dataclass(frozen=True)
class StreamConfig:
    """What a rank's loader reads and how it batches it."""

    split: str = "train"
    tokens_per_update: int = 16_000  # job-year tokens per optimizer update, all ranks, no padding
    rank: int = 0
    world_size: int = 1
    micro_batches: int = 1  # gradient accumulation steps per update
    shuffle: bool = True
    loop: bool = True  # endless epochs (training); False: one pass (evaluation)
    seed: int = 0
    buffer_blocks: int = 16

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in [0, world_size={self.world_size})")
        if self.tokens_per_update < self.world_size * self.micro_batches:
            raise ValueError("tokens_per_update is smaller than world_size x micro_batches")
        if self.buffer_blocks < 1:
            raise ValueError("buffer_blocks must be at least 1")

    @property
    def tokens_per_batch(self) -> int:
        return self.tokens_per_update // (self.world_size * self.micro_batches)


@dataclass(frozen=True)
class Position:
    """Where a batch came from; batches of one slot are ordered by (epoch, group, index)."""

    slot: int
    epoch: int
    group: int
    index: int


def _rng(*key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(k) for k in key])))


# ----------------------------------------------------------------------------- batches
def merge_blocks(blocks: list[Block]) -> Block:
    """One block holding the people of several (a group), arrays concatenated."""
    if len(blocks) == 1:
        return blocks[0]
    return Block(
        person_id=np.concatenate([b.person_id for b in blocks]),
        lengths=np.concatenate([b.lengths for b in blocks]),
        arrays={
            name: np.concatenate([b.arrays[name] for b in blocks]) for name in blocks[0].arrays
        },
    )


#: A block of the split (its index over the split's shards in manifest order) and the people of it
#: (indices within the block) that were already read this epoch and are skipped.
Piece = tuple[int, tuple[int, ...]]


def select_people(block: Block, keep: np.ndarray, fields: dict[str, Any]) -> Block:
    """The people `keep` (indices, ascending) of `block`, token and person arrays cut to match."""
    starts = block.offsets[:-1][keep]
    lengths = block.lengths[keep]
    token_index = np.repeat(starts, lengths) + (
        np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    )
    per_token = set(fields["token_fields"]) | set(fields["float_token_fields"])
    arrays = {
        name: values[token_index] if name in per_token else values[keep]
        for name, values in block.arrays.items()
    }
    return Block(person_id=block.person_id[keep], lengths=lengths, arrays=arrays)


def decode_group(
    items: list[tuple[Piece, bytes]], fields: dict[str, Any]
) -> tuple[Block, np.ndarray, np.ndarray]:
    """The people of a group's pieces, merged; and for each, its block id and index in the block."""
    blocks, block_ids, indices = [], [], []
    for (block_id, skipped), data in items:
        block = decode_block(data)
        keep = np.arange(block.num_people)
        if skipped:
            keep = np.setdiff1d(keep, np.asarray(skipped, dtype=np.int64))
            block = select_people(block, keep, fields)
        blocks.append(block)
        block_ids.append(np.full(len(keep), block_id, dtype=np.int64))
        indices.append(keep)
    return merge_blocks(blocks), np.concatenate(block_ids), np.concatenate(indices)


def collate(group: Block, people: np.ndarray, fields: dict[str, Any]) -> dict[str, Any]:
    """Pad people `people` (indices into `group`) into the Batch contract. Pad id 0 everywhere.

    Arrays stay numpy here (cheap to send from a DataLoader worker in one pickle);
    `to_tensors` turns them into torch tensors without a copy in the consuming process.
    """
    lengths = group.lengths[people]
    starts = group.offsets[:-1][people]
    B, T = len(people), int(lengths.max(initial=1))
    total = int(lengths.sum())
    rows = np.repeat(np.arange(B), lengths)
    cols = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    token_index = np.repeat(starts, lengths) + cols

    targets = np.zeros((B, T), dtype=np.int64)
    targets[rows, cols] = group.arrays["job"][token_index]
    inputs = np.full((B, T), PAD_ID, dtype=np.int64)
    inputs[:, 0] = BOS_ID
    inputs[:, 1:] = targets[:, :-1]
    pad = np.arange(T)[None, :] >= lengths[:, None]
    inputs[pad] = PAD_ID
    batch: dict[str, Any] = {
        "inputs": inputs,
        "targets": targets,
        "lengths": lengths.astype(np.int64),
        "person_id": group.person_id[people],
    }
    for name in fields["token_fields"]:
        if name != "job":  # covariates of the year being predicted: aligned with targets
            values = np.zeros((B, T), dtype=np.int64)
            values[rows, cols] = group.arrays[name][token_index]
            batch[name] = values
    for name in fields["float_token_fields"]:  # padding 0; a real but missing wage is NaN
        values = np.zeros((B, T), dtype=np.float32)
        values[rows, cols] = group.arrays[name][token_index]
        batch[name] = values
    for name in fields["person_fields"]:
        per_person = group.arrays[name][people].astype(np.int64)
        batch[name] = np.where(pad, PAD_ID, per_person[:, None])  # static, repeated
    if fields["weight"]:
        batch["weight"] = group.arrays["weight"][people].astype(np.float32)
    batch["padding_share"] = float(pad.sum()) / max(B * T, 1)
    return batch


def to_tensors(batch: dict[str, Any]) -> dict[str, Any]:
    """numpy arrays -> torch tensors (zero-copy); `person_id` becomes a list of str."""
    out = {}
    for key, value in batch.items():
        if key == "person_id":
            out[key] = value.tolist()
        elif isinstance(value, np.ndarray):
            out[key] = torch.from_numpy(value)
        else:
            out[key] = value
    return out


def make_batches(
    lengths: np.ndarray, budget: int, rng: np.random.Generator | None
) -> list[np.ndarray]:
    """Indices of people grouped by similar length into batches of at most `budget` real tokens."""
    order = rng.permutation(len(lengths)) if rng is not None else np.arange(len(lengths))
    order = order[
        np.argsort(lengths[order], kind="stable")
    ]  # random tie-breaking among equal lengths
    cumulative = np.cumsum(lengths[order])
    batches = []
    start = 0
    while start < len(order):
        base = cumulative[start - 1] if start else 0
        stop = int(np.searchsorted(cumulative, base + budget, side="right"))
        stop = max(stop, start + 1)  # a person longer than the budget goes alone
        batches.append(order[start:stop])
        start = stop
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


# ----------------------------------------------------------------------------- the dataset
class CareerStream(IterableDataset):
    """One rank's stream of batches (dicts) over a split; see the module docstring."""

    def __init__(self, data_url: str, config: StreamConfig, storage_options: dict | None = None,
                 manifest: Manifest | None = None):  # fmt: skip
        super().__init__()
        self.data_url = data_url
        self.config = config
        self.storage_options = storage_options
        self.manifest = manifest or load_manifest(data_url, storage_options)
        self.shards: list[ShardInfo] = self.manifest.shards_of(config.split)
        self.fields = self.manifest.fields
        self.resume: dict[int, Position] = {}
        self.rotation = 0
        self.catchup: dict[int, list[Piece]] = {}  # epoch -> pieces left by another slot layout
        self.block_base = np.concatenate([[0], np.cumsum([s.blocks for s in self.shards])])
        if not self.shards:
            raise ValueError(f"split {config.split!r} of {storage.redact(data_url)} has no shards")

    def _check_distributed(self) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            world = torch.distributed.get_world_size()
            if world != self.config.world_size or torch.distributed.get_rank() != self.config.rank:
                raise RuntimeError(
                    f"torch.distributed runs {world} ranks but the loader was configured for rank "
                    f"{self.config.rank} of {self.config.world_size}: pass rank and world_size explicitly"
                )

    def _shard_order(self, epoch: int) -> list[int]:
        if not self.config.shuffle:
            return list(range(len(self.shards)))
        return [
            int(i) for i in _rng(self.config.seed, epoch, 0xC0FFEE).permutation(len(self.shards))
        ]

    def plan(self, slot: int, slots: int, epoch: int) -> list[Piece]:
        """The blocks `slot` of `slots` reads in `epoch`, in reading order.

        Slot g takes shards g, g+G, ... of the epoch's shard order, or every G-th block when there
        are fewer shards than slots. A catch-up epoch (after resuming with another number of
        slots) deals out what the earlier layout had not read yet instead.
        """
        if epoch in self.catchup:  # contiguous runs, so that a slot opens few shards
            left = self.catchup[epoch]
            return left[slot * len(left) // slots : (slot + 1) * len(left) // slots]
        order = self._shard_order(epoch)
        whole_shards = len(order) >= slots
        if whole_shards:
            order = order[slot::slots]
        ids = [int(self.block_base[i]) + b for i in order for b in range(self.shards[i].blocks)]
        if not whole_shards:
            ids = ids[slot::slots]
        return [(block_id, ()) for block_id in ids]

    def read_pieces(self, pieces: list[Piece]) -> Iterator[tuple[Piece, bytes]]:
        """The encoded blocks of `pieces`, in order: consecutive pieces of a shard share one read."""
        start = 0
        while start < len(pieces):
            shard = int(np.searchsorted(self.block_base, pieces[start][0], side="right")) - 1
            stop = start
            while (
                stop < len(pieces)
                and self.block_base[shard] <= pieces[stop][0] < self.block_base[shard + 1]
            ):
                stop += 1
            wanted = {piece[0] - int(self.block_base[shard]): piece for piece in pieces[start:stop]}
            url = storage.join(self.data_url, self.shards[shard].path)
            members = self._members(url)
            found = 0
            try:
                for index, data in enumerate(members):
                    if index in wanted:
                        yield wanted[index], data
                        found += 1
                        if found == len(wanted):
                            break
            finally:
                members.close()
            if found < len(wanted):
                raise ValueError(
                    f"shard {storage.redact(url)} has fewer blocks than its manifest lists"
                )
            start = stop

    def _members(self, url: str) -> Iterator[bytes]:
        """Block members of one shard; a connection lost mid-read is reopened and resumed."""
        done = 0
        for attempt in range(storage.RETRY_ATTEMPTS):
            stream = _open_shard(url, self.storage_options)
            try:
                index = 0
                for member in tar_file_iterator(stream):
                    if not member["fname"].endswith("." + MEMBER_SUFFIX):
                        continue
                    if index >= done:
                        yield member["data"]
                        done += 1
                    index += 1
                return
            except storage.PERMANENT_ERRORS:
                raise
            except (OSError, tarfile.ReadError) as exc:
                if attempt == storage.RETRY_ATTEMPTS - 1:
                    raise
                storage.log.warning(
                    "shard %s: %s after %d blocks; reopening", storage.redact(url), exc, done
                )
                time.sleep(storage.RETRY_BASE_DELAY * 2**attempt)
            finally:
                stream.close()

    def _groups(self, plan: list[Piece]) -> Iterator[tuple[int, list[tuple[Piece, bytes]]]]:
        group, pending = 0, []
        for item in self.read_pieces(plan):
            pending.append(item)
            if len(pending) == self.config.buffer_blocks:
                yield group, pending
                group, pending = group + 1, []
        if pending:
            yield group, pending

    def batch_order(self, people: Block, slot: int, epoch: int, group: int) -> list[np.ndarray]:
        """The batches (people indices) a group is cut into: seeded by (seed, epoch, slot, group)."""
        rng = _rng(self.config.seed, epoch, slot, group) if self.config.shuffle else None
        return make_batches(people.lengths, self.config.tokens_per_batch, rng)

    @property
    def first_epoch(self) -> int:
        return min(self.catchup, default=0)

    def slot_batches(
        self, slot: int, slots: int, start: Position | None = None
    ) -> Iterator[tuple[Position, dict]]:
        """Batches of one slot, from just after `start` (or the beginning)."""
        epoch = start.epoch if start else self.first_epoch
        while True:
            groups = 0
            for group, items in self._groups(self.plan(slot, slots, epoch)):
                groups += 1
                if start and (epoch, group) < (start.epoch, start.group):
                    continue  # skip whole groups without decoding their people
                people = decode_group(items, self.fields)[0]
                for index, members in enumerate(self.batch_order(people, slot, epoch, group)):
                    if (
                        start
                        and (epoch, group) == (start.epoch, start.group)
                        and index <= start.index
                    ):
                        continue
                    position = Position(slot, epoch, group, index)
                    batch = collate(people, members, self.fields)
                    batch["position"] = asdict(position)
                    yield position, batch
            if not self.config.loop:
                return
            if not groups and epoch not in self.catchup:
                raise ValueError(
                    f"split {self.config.split!r} has too few blocks for {slots} loader slots "
                    f"(ranks x workers): slot {slot} would wait forever; use fewer DataLoader workers "
                    "or reshard with a smaller --people-per-block"
                )
            epoch += 1
            start = None

    def __iter__(self) -> Iterator[dict]:
        self._check_distributed()
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        local = (worker + self.rotation) % workers
        slots = self.config.world_size * workers
        slot = self.config.rank * workers + local
        for _, batch in self.slot_batches(slot, slots, self.resume.get(slot)):
            yield batch


def _identity(batch: dict) -> dict:
    return batch


class CareerLoader:
    """A DataLoader over `CareerStream` that knows where it is (`state_dict` / `load_state_dict`)."""

    def __init__(
        self,
        data_url: str,
        config: StreamConfig,
        num_workers: int = 1,
        storage_options: dict | None = None,
        prefetch_factor: int = 4,
    ):
        self.stream = CareerStream(data_url, config, storage_options)
        self.config = config
        self.num_workers = num_workers
        self.prefetch_factor = prefetch_factor
        self.consumed = 0
        self.last: dict[int, Position] = {}
        self.padding = [0.0, 0]  # sum of padding shares, batches

    @property
    def manifest(self) -> Manifest:
        return self.stream.manifest

    def __iter__(self) -> Iterator[dict]:
        workers = max(self.num_workers, 1)
        self.stream.rotation = self.consumed % workers
        self.stream.resume = dict(self.last)
        loader = DataLoader(
            self.stream,
            batch_size=None,
            num_workers=self.num_workers,
            collate_fn=_identity,
            prefetch_factor=self.prefetch_factor if self.num_workers else None,
            persistent_workers=False,
            # Our own seeds drive all randomness; a private generator keeps DataLoader from
            # drawing from the global torch RNG, which training restores exactly on resume.
            generator=torch.Generator().manual_seed(0),
        )
        for batch in loader:
            batch = to_tensors(batch)
            position = Position(**batch.pop("position"))
            self.last[position.slot] = position
            self.consumed += 1
            self.padding[0] += batch["padding_share"]
            self.padding[1] += 1
            yield batch
        if not self.config.loop:  # a finished evaluation pass: the next one starts afresh
            self.last, self.consumed = {}, 0

    @property
    def padding_share(self) -> float:
        """Mean share of padded positions over the batches consumed so far."""
        return self.padding[0] / self.padding[1] if self.padding[1] else 0.0

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "config": asdict(self.config),
            "num_workers": self.num_workers,
            "manifest_shards": [s.sha256 for s in self.stream.shards],
            "consumed": self.consumed,
            "last": {str(slot): asdict(pos) for slot, pos in self.last.items()},
            "catchup": plan_to_json(self.stream.catchup),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not self.config.loop:
            raise ValueError(
                "a one-pass (evaluation) loader has nothing to resume: it restarts from the beginning"
            )
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"unsupported loader state format {state.get('format')!r}")
        if state["config"] != asdict(self.config) or state["num_workers"] != self.num_workers:
            raise ValueError(
                "loader state was saved with a different configuration or number of DataLoader workers; "
                f"saved {state['config']} with {state['num_workers']} workers"
            )
        if state["manifest_shards"] != [s.sha256 for s in self.stream.shards]:
            raise ValueError("loader state belongs to a different dataset (shard hashes differ)")
        self.consumed = int(state["consumed"])
        self.last = {int(slot): Position(**pos) for slot, pos in state["last"].items()}
        self.stream.catchup = plan_from_json(state.get("catchup", {}))

    def load_states(self, states: list[dict[str, Any]]) -> str:
        """Resume from the loader states of every rank of an earlier run (as a checkpoint holds).

        The same ranks and DataLoader workers continue exactly at the next batch ("exact").
        Another number of either re-plans the rest of the current epochs so that every person is
        still read once per epoch ("elastic"; see `data_shards.elastic`).
        """
        first = states[0]
        saved = {k: v for k, v in first["config"].items() if k != "rank"}
        same_layout = (
            len(states) == self.config.world_size
            and first["num_workers"] == self.num_workers
            and saved == {k: v for k, v in asdict(self.config).items() if k != "rank"}
        )
        if same_layout:
            self.load_state_dict(states[self.config.rank])
            return "exact"
        if first.get("format") != STATE_FORMAT:
            raise ValueError(f"unsupported loader state format {first.get('format')!r}")
        # The earlier order is rebuilt from the saved config; only what is read must be the same.
        changed = [k for k in ("split", "loop") if saved[k] != getattr(self.config, k)]
        if changed:
            raise ValueError(f"loader state cannot continue with another {', '.join(changed)}")
        if first["manifest_shards"] != [s.sha256 for s in self.stream.shards]:
            raise ValueError("loader state belongs to a different dataset (shard hashes differ)")
        earlier = CareerStream(self.stream.data_url, StreamConfig(**{**saved, "rank": 0}),
                               self.stream.storage_options, manifest=self.stream.manifest)  # fmt: skip
        earlier.catchup = plan_from_json(first.get("catchup", {}))
        positions = {
            int(slot): Position(**pos) for state in states for slot, pos in state["last"].items()
        }
        slots = saved["world_size"] * max(first["num_workers"], 1)
        self.stream.catchup = remaining_plan(earlier, slots, positions)
        self.last, self.consumed = {}, 0
        return "elastic"
