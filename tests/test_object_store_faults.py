"""Object-store faults (issue 26, fault 5): a seeded fault-injecting proxy (tests/fault_proxy.py)
in front of the session's moto server answers a share of requests 500 InternalError or 503
SlowDown, resets connections mid-body, truncates bodies and adds latency.

- every fault kind, on writes, reads and existence checks, is retried (a logged, counted retry)
  and the bytes come back the same; a read timeout too;
- a shard whose bytes do not match the manifest's sha256 is read once more (a spoiled
  transfer), then refused with "sha256 mismatch" naming it (stored bytes that differ): never used;
- streaming a split through a 20% fault rate gives exactly the batches of a direct read;
- `career shard` to S3 through faults writes a dataset byte for byte the one written directly;
- `career pretrain --out s3://...` through faults, stopped and resumed (checkpoints uploaded and
  downloaded, the package exported), ends with the weights of an uninterrupted direct run;
- a permanent outage ends `career shard` with exit 2, one line naming the URL (no credentials, no
  traceback) after a bounded time, and no manifest.json; a checkpoint store that goes down
  ends `career pretrain` the same way, with no checkpoint marked complete.
"""

from __future__ import annotations

import json
import logging
import re
import time

import pytest
import torch
from fault_proxy import FAILURES, FaultProxy, seed_failing_first
from helpers import career, career_all, new_bucket

from data_shards import storage
from data_shards.errors import StructuralError
from data_shards.inputs import InputSpec
from data_shards.shard import ShardConfig, shard_dataset
from data_shards.stream import CareerLoader, StreamConfig, read_split

#: A retry line, from either level (an S3 request, a whole operation): "...; retry 2/4 in 0.5s".
RETRY_LINE = re.compile(r"transient error on s3://\S+ \(.+\); retry \d+/\d+ in ")


def through(options: dict, proxy: FaultProxy) -> dict:
    """`options` with the endpoint replaced by the proxy's."""
    return {**options, "client_kwargs": {**options["client_kwargs"], "endpoint_url": proxy.url}}


def retry_lines(text: str) -> int:
    return len(RETRY_LINE.findall(text))


def failed(proxy: FaultProxy) -> set[tuple[str, str]]:
    """(method, path) of every request the proxy failed."""
    return {(m, p.split("?")[0]) for m, p, kind in proxy.log if kind in FAILURES}


def objects(root: str, options: dict) -> dict[str, bytes]:
    """Every object under `root` (an s3:// URL), by key relative to it, read directly."""
    import s3fs

    fs = s3fs.S3FileSystem(**options, skip_instance_cache=True)
    base = root.removeprefix("s3://").rstrip("/")
    return {key[len(base) + 1 :]: fs.cat_file(key) for key in fs.find(base)}


def same_batches(first: list[dict], second: list[dict]) -> bool:
    """Batch for batch, the same keys and values; tensors bit for bit (NaN included)."""

    def plain(batch: dict) -> dict:
        return {
            k: (v.dtype, tuple(v.shape), v.numpy().tobytes()) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()
        }

    return [plain(b) for b in first] == [plain(b) for b in second]


@pytest.fixture(scope="module")
def dataset(s3_endpoint, ray_address):
    """A small dataset on S3, written directly: its URL and the direct storage options."""
    root, options = new_bucket(s3_endpoint, "faults")
    result = shard_dataset(
        InputSpec(format="synth", preset="nlsy79", people=700, seed=3),
        f"{root}/data",
        "ds",
        ShardConfig(people_per_block=64, blocks_per_shard=2),
        storage_options=options,
    )
    return result, options


# ----------------------------------------------------------------------------- each fault kind
@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("500", "HTTP 500"),
        ("503", "HTTP 503"),
        ("reset", r"ClientPayloadError|EndpointConnectionError|ConnectionClosedError"),
        ("truncate", r"ClientPayloadError|ConnectionClosedError"),
        ("latency", "ReadTimeoutError"),
    ],
)
def test_each_fault_kind_is_retried_logged_and_harmless(s3_endpoint, caplog, kind, reason):
    """The first PUT, GET and HEAD of an object each meet the fault; the write lands, the bytes
    read back are those written, and each retry is a warning naming the object and the cause.
    `latency` here outlasts the client's read timeout (0.3 s)."""
    root, options = new_bucket(s3_endpoint, "kind")
    seen: set[str] = set()

    def first_of_each_method(method: str, path: str) -> bool:
        if method in seen:
            return False
        seen.add(method)
        return True

    data = bytes(range(256)) * 400
    with FaultProxy(
        s3_endpoint, rate=1.0, kinds={kind: 1}, latency=1.0, only=first_of_each_method
    ) as proxy:
        routed = through(options, proxy)
        if kind == "latency":
            routed["config_kwargs"] = {"read_timeout": 0.3, "connect_timeout": 0.3}
        url = f"{root}/{kind}/object.bin"
        with caplog.at_level(logging.WARNING, logger="data_shards.storage"):
            storage.write_bytes_atomic(url, data, routed)
            assert storage.exists(url, routed)
            assert storage.read_bytes(url, routed) == data
    assert proxy.injected[kind] == 3
    lines = [r.getMessage() for r in caplog.records if "transient error" in r.getMessage()]
    assert lines and all(url in line and re.search(reason, line) for line in lines), lines
    assert objects(root, options) == {f"{kind}/object.bin": data}


def test_an_endpoint_that_refuses_connections_ends_in_a_clear_error(s3_endpoint):
    """Connections refused (the endpoint gone): RETRY_ATTEMPTS attempts in 3.75-7.5 s, then an
    ObjectStoreUnavailable (a StructuralError: exit 2) naming the URL without credentials."""
    root, options = new_bucket(s3_endpoint, "refused")
    with FaultProxy(s3_endpoint) as proxy:
        proxy.refuse()
        start = time.monotonic()
        with pytest.raises(storage.ObjectStoreUnavailable) as failed:
            storage.read_bytes(f"{root}/missing.bin", through(options, proxy))
        took = time.monotonic() - start
    assert isinstance(failed.value, StructuralError) and f"{root}/missing.bin" in str(failed.value)
    assert "EndpointConnectionError" in str(failed.value) and "testing" not in str(failed.value)
    assert 3 < took < 15, took


# ----------------------------------------------------------------------------- integrity
def _shard_get(shard_key: str):
    return lambda method, path: method == "GET" and path.split("?")[0].endswith(shard_key)


def test_a_shard_spoiled_in_transfer_is_read_again_and_a_corrupt_one_refused(dataset, caplog):
    """Bytes flipped on the way (no transport checksum to catch them: the proxy drops it) are
    caught by the manifest's sha256 and read once more; a shard that keeps not matching is a
    StructuralError naming it, before any of its blocks is used."""
    result, options = dataset
    url = result.dataset_url
    shard = result.manifest.shards_of("valid")[0]
    direct = list(read_split(url, "valid", storage_options=options))
    with (
        FaultProxy(
            options["client_kwargs"]["endpoint_url"],
            rate=1.0,
            kinds={"corrupt": 1},
            only=_shard_get(shard.path),
            limit=1,
        ) as proxy,
        caplog.at_level(logging.WARNING, logger="data_shards.storage"),
    ):
        again = list(read_split(url, "valid", storage_options=through(options, proxy)))
    assert proxy.injected["corrupt"] == 1 and same_batches(direct, again)
    assert any("sha256 mismatch" in r.getMessage() for r in caplog.records)

    with FaultProxy(
        options["client_kwargs"]["endpoint_url"],
        rate=1.0,
        kinds={"corrupt": 1},
        only=_shard_get(shard.path),
    ) as proxy:
        loader = read_split(url, "valid", storage_options=through(options, proxy))
        with pytest.raises(StructuralError, match="sha256 mismatch") as refused:
            list(loader)
    assert proxy.injected["corrupt"] == 2  # read twice, then refused
    assert f"{url}/{shard.path}" in str(refused.value) and "testing" not in str(refused.value)


def test_a_stored_shard_that_differs_from_its_manifest_is_never_used(dataset):
    """The object itself replaced (its own transport checksum fine): refused by sha256."""
    import s3fs

    result, options = dataset
    fs = s3fs.S3FileSystem(**options, skip_instance_cache=True)
    source = result.dataset_url.removeprefix("s3://")
    copy = source + "-rotten"
    shard = result.manifest.shards_of("valid")[0]
    for name in ("manifest.json", "vocab.json", shard.path):
        fs.copy(f"{source}/{name}", f"{copy}/{name}")
    data = bytearray(fs.cat_file(f"{copy}/{shard.path}"))
    data[len(data) // 2] ^= 1
    fs.pipe_file(f"{copy}/{shard.path}", bytes(data))
    with pytest.raises(StructuralError, match="sha256 mismatch"):
        list(read_split(f"s3://{copy}", "valid", storage_options=options))
    assert list(read_split(result.dataset_url, "valid", storage_options=options))


# ----------------------------------------------------------------------------- streaming
def test_streaming_a_split_through_faults_gives_the_same_batches(dataset, caplog):
    """20% of requests failed (every kind): `read_split` in this process and a `CareerLoader`
    with a DataLoader worker give exactly the batches of a direct read."""
    result, options = dataset
    url = result.dataset_url
    config = StreamConfig(split="train", tokens_per_update=1500, shuffle=True, seed=7, loop=False)
    direct_split = list(read_split(url, "train", tokens_per_batch=1500, storage_options=options))
    direct_loader = list(CareerLoader(url, config, num_workers=1, storage_options=options))
    # The seed makes this process's first read (the manifest) one of the failures, so that its
    # retry is logged here whatever the bucket's random name draws for the other requests.
    manifest = "/" + url.removeprefix("s3://").rstrip("/") + "/manifest.json"
    seed = seed_failing_first("GET", manifest, 0.2)
    with FaultProxy(options["client_kwargs"]["endpoint_url"], rate=0.2, seed=seed) as proxy:
        routed = through(options, proxy)
        with caplog.at_level(logging.WARNING, logger="data_shards.storage"):
            split = list(read_split(url, "train", tokens_per_batch=1500, storage_options=routed))
        loader = list(CareerLoader(url, config, num_workers=1, storage_options=routed))
    assert same_batches(direct_split, split) and same_batches(direct_loader, loader)
    assert ("GET", manifest) in failed(proxy), proxy.summary()
    assert proxy.failures > 0 and retry_lines(caplog.text) > 0, proxy.summary()


# ----------------------------------------------------------------------------- commands
SHARD = [
    "shard",
    "--format",
    "synth",
    "--sim-preset",
    "nlsy79",
    "--people",
    "600",
    "--seed",
    "2",
    "--people-per-block",
    "64",
    "--blocks-per-shard",
    "2",
    "--name",
    "ds",
]


@pytest.mark.slow
def test_career_shard_through_faults_writes_the_same_bytes(s3_endpoint, ray_address):
    """15% of the requests of `career shard` (its driver and its Ray tasks) fail: the dataset is
    byte for byte the one written directly, every object and the manifest; the driver's retries
    are on its stderr (the tasks' are in their Ray logs). The seed makes the driver's manifest
    upload one of the failures: the faults are drawn by path, and the bucket's name is random,
    so with a fixed seed they sometimes all fell on the tasks' requests."""
    root, options = new_bucket(s3_endpoint, "shard")
    ray = ["--ray-address", ray_address]
    manifest = f"/{root.removeprefix('s3://')}/faulty/ds/manifest.json"
    with FaultProxy(
        s3_endpoint, rate=0.15, seed=seed_failing_first("PUT", manifest, 0.15)
    ) as proxy:
        routed = json.dumps(through(options, proxy))
        _, faulty = career_all(
            [*SHARD, "--out", f"{root}/direct", "--storage-options", json.dumps(options), *ray],
            [*SHARD, "--out", f"{root}/faulty", "--storage-options", routed, *ray],
        )
    written = objects(f"{root}/direct/ds", options)
    assert "manifest.json" in written and any(k.endswith(".tar") for k in written)
    assert objects(f"{root}/faulty/ds", options) == written
    assert ("PUT", manifest) in failed(proxy), proxy.summary()
    assert proxy.failures > 0 and retry_lines(faulty.stderr) > 0, (proxy.summary(), faulty.stderr)


@pytest.mark.slow
def test_a_permanent_outage_ends_career_shard_clearly_without_a_dataset(s3_endpoint, ray_address):
    """Every request answered 503 SlowDown: exit 2 after a bounded time, one line naming the
    dataset URL (no credentials, no traceback), and no manifest.json."""
    root, options = new_bucket(s3_endpoint, "outage")
    with FaultProxy(s3_endpoint) as proxy:
        proxy.outage = True
        start = time.monotonic()
        proc = career(
            *SHARD,
            "--out",
            f"{root}/out",
            "--storage-options",
            json.dumps(through(options, proxy)),
            "--ray-address",
            ray_address,
            check=False,
        )
        took = time.monotonic() - start
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "object store unavailable" in last and f"{root}/out/ds" in last, last
    assert "Traceback" not in proc.stderr and "testing" not in proc.stderr
    assert retry_lines(proc.stderr) == storage.RETRY_ATTEMPTS - 1
    assert took < 30, took
    assert proxy.injected["outage"] == storage.RETRY_ATTEMPTS
    assert objects(root, options) == {}


PRETRAIN = [
    "pretrain",
    "--launcher",
    "torchrun",
    "--workers",
    "1",
    "--preset",
    "tiny",
    "--updates",
    "4",
    "--tokens-per-update",
    "1500",
    "--eval-every",
    "2",
    "--checkpoint-every",
    "2",
    "--zero-stage",
    "1",
    "--precision",
    "fp32",
    "loader_workers=0",
    "cpu_threads=1",
]


@pytest.mark.slow
def test_pretrain_through_faults_uploads_downloads_and_exports_the_same_weights(dataset):
    """`career pretrain --out s3://...` with 10% of requests failing, stopped after update 2 and
    resumed (its checkpoint downloaded again), exports the weights of an uninterrupted run
    written directly."""
    from trainer.package import load_model

    result, options = dataset
    root = result.dataset_url.rsplit("/data/", 1)[0]
    data = ["--data", result.dataset_url]
    with FaultProxy(options["client_kwargs"]["endpoint_url"], rate=0.1, seed=9) as proxy:
        routed = json.dumps(through(options, proxy))
        faulty = [*PRETRAIN, *data, "--out", f"{root}/faulty", "--storage-options", routed]
        whole, stopped = career_all(
            [*PRETRAIN, *data, "--out", f"{root}/direct", "--storage-options", json.dumps(options)],
            [*faulty, "--stop-after", "2"],
        )
        assert "stopped after update 2" in stopped.stdout
        resumed = career(*faulty)
    assert "resumed from step0000002" in resumed.stdout + resumed.stderr
    assert proxy.failures > 0, proxy.summary()
    assert retry_lines(stopped.stderr + resumed.stderr) > 0, proxy.summary()
    a = load_model(f"{root}/direct/package", options).model.state_dict()
    b = load_model(f"{root}/faulty/package", options).model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_a_checkpoint_store_outage_fails_pretrain_clearly_with_nothing_marked_complete(dataset):
    """Writes to the run's folder fail (the data stays readable): the first checkpoint upload
    gives up after its retries, and the command ends with exit 2 and a last line naming the
    checkpoint folder (torchrun prints the worker's traceback above it); no checkpoint is marked
    complete."""
    result, options = dataset
    root = result.dataset_url.rsplit("/data/", 1)[0]
    out = f"{root}/down"
    prefix = "/" + out.removeprefix("s3://") + "/"
    with FaultProxy(
        options["client_kwargs"]["endpoint_url"],
        only=lambda m, p: m in ("PUT", "POST") and p.startswith(prefix),
    ) as proxy:
        proxy.outage = True
        proc = career(
            *PRETRAIN,
            "--data",
            result.dataset_url,
            "--out",
            out,
            "--storage-options",
            json.dumps(through(options, proxy)),
            check=False,
        )
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("career pretrain: error:") and "object store unavailable" in last
    assert f"{out}/checkpoints" in last and "testing" not in proc.stderr
    assert proxy.injected["outage"] >= storage.RETRY_ATTEMPTS
    assert not [k for k in objects(out, options) if k.endswith(("latest.json", "complete.json"))]
