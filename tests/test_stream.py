"""The streaming loader: batch contract, token budget, slot splitting, exact resume, refusals."""

import collections
import itertools

import numpy as np
import pytest
import torch

from data_shards.blocks import decode_block
from data_shards.errors import StructuralError
from data_shards.inputs import InputSpec
from data_shards.shard import ShardConfig, shard_dataset
from data_shards.stream import CareerLoader, CareerStream, StreamConfig
from data_shards.vocab import BOS_ID, PAD_ID


@pytest.fixture(scope="module")
def datasets(tmp_path_factory, ray_address):
    """One dataset with many shards, one whose valid split is a single shard of several blocks."""
    root = tmp_path_factory.mktemp("stream")
    many = shard_dataset(
        InputSpec(format="synth", preset="nlsy97", people=3000, seed=5),
        str(root),
        "many",
        ShardConfig(people_per_block=50, blocks_per_shard=3),
    )
    few = shard_dataset(
        InputSpec(format="synth", preset="psid", people=1500, seed=6),
        str(root),
        "few",
        ShardConfig(people_per_block=20, blocks_per_shard=1000),
    )
    return many, few


def test_batch_contract_and_token_budget(datasets):
    many, _ = datasets
    config = StreamConfig(split="train", tokens_per_update=2000, shuffle=True, loop=False)
    loader = CareerLoader(many.dataset_url, config, num_workers=0)
    batches = list(loader)
    assert batches
    for batch in batches:
        lengths, inputs, targets = batch["lengths"], batch["inputs"], batch["targets"]
        assert int(lengths.sum()) <= config.tokens_per_batch or len(lengths) == 1
        assert torch.all(inputs[:, 0] == BOS_ID)
        real = torch.arange(inputs.shape[1])[None, :] < lengths[:, None]
        assert torch.equal(
            inputs[:, 1:][real[:, 1:]], targets[:, :-1][real[:, 1:]]
        )  # shifted by one
        for name in (
            "inputs",
            "targets",
            "year",
            "education",
            "location",
            "gender",
            "ethnicity",
            "birth_year",
        ):
            assert torch.all(batch[name][~real] == PAD_ID), name
            assert torch.all(batch[name][real] != PAD_ID), name
        assert torch.all(batch["log_wage"][~real] == 0)
        assert set(batch) >= {"oracle_logp", "weight", "person_id", "padding_share"}
    assert 0 < loader.padding_share < 0.3  # length grouping keeps padding low
    assert sum(int(b["lengths"].sum()) for b in batches) == many.manifest.splits["train"]["tokens"]


@pytest.mark.parametrize("which", ["many", "few"])
def test_every_block_is_read_once_per_epoch_across_ranks_and_workers(datasets, which):
    dataset = datasets[0] if which == "many" else datasets[1]
    split = "train" if which == "many" else "valid"
    people = collections.Counter()
    workers = 2
    for rank in range(2):
        config = StreamConfig(
            split=split, rank=rank, world_size=2, loop=False, tokens_per_update=4000
        )
        stream = CareerStream(dataset.dataset_url, config)
        for local in range(workers):
            slot = rank * workers + local
            for _, batch in stream.slot_batches(slot, 2 * workers):
                people.update(batch["person_id"].tolist())
    assert sum(people.values()) == dataset.manifest.splits[split]["people"]
    assert set(people.values()) == {1}


def test_resume_continues_at_exactly_the_next_batch(datasets):
    many, _ = datasets
    config = StreamConfig(split="train", tokens_per_update=1500, seed=3)  # endless epochs, shuffled
    reference = []
    for batch in CareerLoader(many.dataset_url, config, num_workers=2):
        reference.append(batch)
        if len(reference) == 40:
            break
    first = CareerLoader(many.dataset_url, config, num_workers=2)
    for consumed, batch in enumerate(first, start=1):
        assert batch["person_id"] == reference[consumed - 1]["person_id"]
        if consumed == 23:
            break
    state = first.state_dict()
    resumed = CareerLoader(many.dataset_url, config, num_workers=2)
    resumed.load_state_dict(state)
    for i, batch in enumerate(resumed, start=23):
        assert batch["person_id"] == reference[i]["person_id"], f"batch {i}"
        assert torch.equal(batch["inputs"], reference[i]["inputs"])
        if i == 39:
            break
    assert max(p.epoch for p in resumed.last.values()) >= 1  # the run crossed an epoch boundary
    assert "position" not in reference[0]  # positions are kept by the loader, not passed on


def test_epochs_reshuffle_and_cover_everything(datasets):
    _, few = datasets
    config = StreamConfig(split="valid", tokens_per_update=500, seed=1)
    loader = CareerLoader(few.dataset_url, config, num_workers=0)
    per_epoch = collections.defaultdict(list)
    total = few.manifest.splits["valid"]["people"]
    for batch in loader:
        epoch = loader.last[0].epoch
        per_epoch[epoch].extend(batch["person_id"])
        if epoch == 2:
            break
    assert sorted(per_epoch[0]) == sorted(per_epoch[1]) and len(per_epoch[0]) == total
    assert per_epoch[0] != per_epoch[1]  # reshuffled with (seed, epoch)


def test_state_from_another_configuration_is_refused(datasets):
    many, _ = datasets
    loader = CareerLoader(many.dataset_url, StreamConfig(split="train"), num_workers=1)
    state = loader.state_dict()
    other = CareerLoader(many.dataset_url, StreamConfig(split="train", seed=9), num_workers=1)
    with pytest.raises(ValueError, match="different configuration"):
        other.load_state_dict(state)


def test_a_folder_without_manifest_is_refused(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "shard-000000.tar").write_bytes(b"")
    with pytest.raises(StructuralError, match="no manifest.json"):
        CareerLoader(str(tmp_path), StreamConfig())


def test_distributed_run_without_explicit_rank_is_an_error(datasets):
    many, _ = datasets
    store = torch.distributed.HashStore()
    torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        stream = CareerStream(
            many.dataset_url, StreamConfig(split="valid", world_size=2, rank=0, loop=False)
        )
        with pytest.raises(RuntimeError, match="pass rank and world_size"):
            next(iter(stream))
        ok = CareerStream(many.dataset_url, StreamConfig(split="valid", loop=False))
        assert next(iter(ok))["inputs"].shape[0] > 0
    finally:
        torch.distributed.destroy_process_group()


def test_s3_loader_with_a_worker_process(s3_endpoint, ray_address):
    import s3fs

    options = {
        "client_kwargs": {"endpoint_url": s3_endpoint},
        "key": "testing",
        "secret": "testing",
    }
    s3fs.S3FileSystem(**options).mkdir("stream-bucket")
    result = shard_dataset(
        InputSpec(format="synth", preset="nlsy79", people=600, storage_options=options),
        "s3://stream-bucket/data",
        "n",
        ShardConfig(people_per_block=64, blocks_per_shard=2),
    )
    config = StreamConfig(split="train", loop=False, shuffle=False)
    remote = [
        b["person_id"]
        for b in CareerLoader(result.dataset_url, config, num_workers=1, storage_options=options)
    ]
    people = [p for ids in remote for p in ids]
    assert len(people) == result.manifest.splits["train"]["people"] == len(set(people))
    assert np.isfinite(result.manifest.oracle_perplexity["train"])


def test_more_slots_than_blocks_fails_instead_of_hanging(tmp_path, ray_address):
    tiny = shard_dataset(
        InputSpec(format="synth", preset="nlsy79", people=40),
        str(tmp_path),
        "tiny",
        ShardConfig(people_per_block=1024),
    )
    stream = CareerStream(tiny.dataset_url, StreamConfig(split="train", rank=1, world_size=2))
    with pytest.raises(ValueError, match="too few blocks"):
        next(iter(stream))


def test_an_evaluation_loader_can_be_iterated_again(datasets):
    many, _ = datasets
    loader = CareerLoader(
        many.dataset_url, StreamConfig(split="valid", loop=False, shuffle=False), num_workers=2
    )
    first = [b["person_id"] for b in loader]
    second = [b["person_id"] for b in loader]
    assert first and first == second
    with pytest.raises(ValueError, match="nothing to resume"):
        loader.load_state_dict(loader.state_dict())


def _tagged(loader):
    """(epoch, person ids) of each batch; the epoch is that of the slot whose position moved."""
    before = dict(loader.last)
    for batch in loader:
        moved = [slot for slot, position in loader.last.items() if before.get(slot) != position]
        before = dict(loader.last)
        yield loader.last[moved[0]].epoch, batch["person_id"]


def _read_until(loaders, epoch, seen, limit=2000):
    """Take batches round-robin from `loaders` (one per rank) until each yields one of `epoch`."""
    streams = [_tagged(loader) for loader in loaders]
    done = [False] * len(streams)
    for _ in range(limit):
        for i, stream in enumerate(streams):
            if done[i]:
                continue
            batch_epoch, people = next(stream)
            if batch_epoch >= epoch:
                done[i] = True
            else:
                seen[batch_epoch].extend(people)
        if all(done):
            return
    raise AssertionError("the loaders never reached the epoch")


@pytest.mark.parametrize("which", ["many_shards", "blocks_of_one_shard"])
def test_resume_with_another_number_of_workers_reads_everyone_once_per_epoch(datasets, which):
    data = datasets[0 if which == "many_shards" else 1]
    url, people = data.dataset_url, data.manifest.splits["train"]["people"]

    def loaders(ranks, workers):
        return [
            CareerLoader(
                url,
                StreamConfig(
                    split="train", tokens_per_update=1200, seed=4, rank=r, world_size=ranks
                ),
                num_workers=workers,
            )
            for r in range(ranks)
        ]

    seen = collections.defaultdict(list)
    first = loaders(2, 0)  # 2 slots; rank 0 runs ahead into epoch 1, rank 1 stays in epoch 0
    for rank, count in ((0, 40), (1, 9)):
        stream = _tagged(first[rank])
        for _ in range(count):
            epoch, ids = next(stream)
            seen[epoch].extend(ids)
    assert {p.epoch for p in first[0].last.values()} == {1}
    states = [loader.state_dict() for loader in first]

    second = loaders(1, 2)[0]  # 1 rank x 2 DataLoader workers: another layout
    assert second.load_states(states) == "elastic"
    stream = _tagged(second)
    for _ in range(6):
        epoch, ids = next(stream)
        seen[epoch].extend(ids)
    middle = second.state_dict()

    # The same layout again continues exactly, catch-up epochs included.
    again = loaders(1, 2)[0]
    assert again.load_states([middle]) == "exact"
    assert [ids for _, ids in zip(range(4), _tagged(again), strict=False)] == [
        ids for _, ids in zip(range(4), _tagged(second), strict=False)
    ]

    # And a third layout (3 ranks) from the middle of the catch-up finishes epochs 0 and 1.
    third = loaders(3, 0)
    for loader in third:
        assert loader.load_states([middle]) == "elastic"
    _read_until(third, 2, seen)
    for epoch in (0, 1):
        counts = collections.Counter(seen[epoch])
        assert len(counts) == people, f"epoch {epoch}: {people - len(counts)} people skipped"
        assert max(counts.values()) == 1, f"epoch {epoch}: people read twice"


def test_resume_on_another_split_is_refused(datasets):
    many, _ = datasets
    loader = CareerLoader(many.dataset_url, StreamConfig(split="train", seed=1), num_workers=0)
    next(iter(loader))
    other = CareerLoader(
        many.dataset_url, StreamConfig(split="valid", seed=1, world_size=2), num_workers=0
    )
    with pytest.raises(ValueError, match="another split"):
        other.load_states([loader.state_dict()])


# ----------------------------------------------------------------------------- nested subsets
def _people_read(url, config, num_workers=0):
    loader = CareerLoader(url, config, num_workers=num_workers)
    read = [p for batch in loader for p in batch["person_id"]]
    return read, sum(int(b["lengths"].sum()) for b in CareerLoader(url, config, num_workers=0))


@pytest.mark.parametrize("which", ["many", "few"])
def test_corpus_subsets_are_nested_deterministic_prefixes_with_exact_token_counts(datasets, which):
    """`StreamConfig.people`: the first N people in manifest order, each read once per epoch
    over any layout of ranks, the cut block's tail skipped; `tokens()` counts them exactly."""
    data = dict(zip(["many", "few"], datasets, strict=True))[which]
    url = data.dataset_url
    stream = CareerStream(url, StreamConfig(split="train", shuffle=False, loop=False))
    everyone = [
        str(p)
        for _, data in stream.read_pieces(stream.plan(0, 1, 0))
        for p in decode_block(data).person_id
    ]  # manifest order
    subsets = {}
    for people in (1, 37, 120, 449, len(everyone)):  # inside a block, across blocks and shards
        config = StreamConfig(split="train", tokens_per_update=900, people=people, loop=False)
        read, tokens = _people_read(url, config)
        assert len(read) == len(set(read)) == people
        assert set(read) == set(everyone[:people])  # the prefix, whatever the shuffling
        assert CareerStream(url, config).tokens() == tokens
        ranks = (
            [
                _people_read(
                    url,
                    StreamConfig(split="train", people=people, loop=False, rank=r, world_size=2),
                    num_workers=1,
                )[0]
                for r in range(2)
            ]
            if people >= 120
            else None
        )
        if ranks:
            assert sorted(ranks[0] + ranks[1]) == sorted(read)
        subsets[people] = set(read)
    sizes = sorted(subsets)
    assert all(subsets[a] < subsets[b] for a, b in itertools.pairwise(sizes))  # nested
    full = CareerStream(url, StreamConfig(split="train", people=len(everyone)))
    assert full.tokens() == data.manifest.splits["train"]["tokens"]


def test_corpus_subset_refusals(datasets):
    many, _ = datasets
    people = many.manifest.splits["train"]["people"]
    with pytest.raises(ValueError, match=f"has {people:,} people"):
        CareerStream(many.dataset_url, StreamConfig(split="train", people=people + 1))
    with pytest.raises(ValueError, match="at least 1"):
        StreamConfig(people=0)
    # A loader state of one subset does not continue another (exactly or elastically).
    first = CareerLoader(many.dataset_url, StreamConfig(split="train", people=200), num_workers=0)
    iterator = iter(first)
    next(iterator)
    state = first.state_dict()
    other = CareerLoader(many.dataset_url, StreamConfig(split="train", people=300), num_workers=0)
    with pytest.raises(ValueError, match="people"):
        other.load_states([state])
    same = CareerLoader(many.dataset_url, StreamConfig(split="train", people=200), num_workers=0)
    assert same.load_states([state]) == "exact"
    # A state saved before subsets existed (no `people` key) still resumes exactly.
    old = {**state, "config": {k: v for k, v in state["config"].items() if k != "people"}}
    full = CareerLoader(many.dataset_url, StreamConfig(split="train"), num_workers=0)
    full.load_state_dict({**old, "manifest_shards": [s.sha256 for s in full.stream.shards]})


def test_a_training_rank_reads_the_manifest_once(datasets, monkeypatch):
    """A training rank reads manifest.json once (`load_dataset`, with the vocabulary) and its
    loader is built from that manifest: a paper-scale manifest lists hundreds of shards, and
    every rank of every restarted worker group would read it again."""
    from types import SimpleNamespace

    import data_shards.manifest
    from data_shards.dataset import load_dataset
    from trainer.config import TrainConfig
    from trainer.context import training_loader

    many = datasets[0]
    reads = []
    read_manifest = data_shards.manifest.read_manifest

    def counted(url, storage_options=None):
        reads.append(url)
        return read_manifest(url, storage_options)

    monkeypatch.setattr(data_shards.manifest, "read_manifest", counted)
    monkeypatch.setattr("data_shards.dataset.read_manifest", counted)
    dataset = load_dataset(many.dataset_url)
    run = SimpleNamespace(
        config=TrainConfig(),
        info=SimpleNamespace(rank=0, world_size=1),
        data_url=many.dataset_url,
        storage_options=None,
        data=dataset,
    )
    loader = training_loader(run)
    assert reads == [many.dataset_url]
    assert loader.manifest is dataset.manifest
    assert loader.stream.tokens() == many.manifest.splits["train"]["tokens"]
