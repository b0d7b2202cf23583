"""Writers stream batches, write to S3 as well as local folders, and leave nothing on failure."""

import json

import fsspec
import pyarrow as pa
import pytest

from cluster.cli import main
from data_shards.readers import read
from data_shards.synth.generate import CHUNK_PEOPLE, simulate
from data_shards.synth.presets import PRESETS
from data_shards.writers import write_career_code, write_panel


def listing(store, folder=""):
    fs, root = fsspec.core.url_to_fs(
        store.url(folder) if folder else store.root, **(store.storage_options or {})
    )
    return sorted(p.rsplit("/", 1)[-1] for p in fs.find(root))


def test_streamed_batches_equal_one_table(store):
    batches = list(simulate(PRESETS["resumes"], CHUNK_PEOPLE + 100, seed=9))  # two chunks
    url = store.url("r.parquet")
    assert write_panel(iter(batches), url, store.storage_options) == sum(
        len(b.column("jobs").values) for b in batches
    )
    back = read(url, "panel", storage_options=store.storage_options)
    assert back.report.people_accepted == CHUNK_PEOPLE + 100


def test_failed_write_leaves_no_partial_output(store):
    good = next(simulate(PRESETS["nlsy79"], 50, seed=1))
    bad = pa.RecordBatch.from_pylist(
        [
            {
                **good.slice(0, 1).to_pylist()[0],
                "person_id": "x",
                "jobs": ["has space"] * len(good.slice(0, 1).to_pylist()[0]["years"]),
            }
        ],
        schema=good.schema,
    )
    with pytest.raises(ValueError, match="whitespace"):
        write_career_code(
            iter([good, bad]), store.url("out"), storage_options=store.storage_options
        )
    assert listing(store) == []


def test_synth_cli_writes_to_s3(s3_endpoint, capsys):
    import s3fs

    options = {
        "client_kwargs": {"endpoint_url": s3_endpoint},
        "key": "testing",
        "secret": "testing",
    }
    s3fs.S3FileSystem(**options).mkdir("synth-cli")
    flags = ["--storage-options", json.dumps(options)]
    assert (
        main(
            ["synth", "--preset", "psid", "--people", "200", "--out", "s3://synth-cli/psid", *flags]
        )
        == 0
    )
    capsys.readouterr()
    assert (
        main(
            [
                "inspect",
                "--input",
                "s3://synth-cli/psid",
                "--format",
                "career-code",
                "--json",
                *flags,
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["people"] == 200 and "oracle_perplexity" in summary
