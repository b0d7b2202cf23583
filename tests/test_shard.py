"""The Ray sharding job: round trip for every format (local and S3), determinism, crash and rerun,
quarantine accounting, structural errors, existing datasets and vocabulary extension."""

import gzip
import json
import lzma
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import pyarrow as pa
import pytest

from cluster.cli import main
from data_shards.errors import StructuralError
from data_shards.inputs import InputSpec
from data_shards.manifest import load_manifest
from data_shards.readers import read
from data_shards.shard import ShardConfig, shard_dataset
from data_shards.splits import resolve_splits
from data_shards.synth.generate import simulate
from data_shards.synth.presets import PRESETS
from data_shards.vocab import Vocabulary
from data_shards.writers import write_career_code, write_panel, write_resume_jsonl
from tests.helpers import float32_list, records_from_loader

CAREER = str(Path(sys.executable).with_name("career"))
SMALL = ShardConfig(people_per_block=64, blocks_per_shard=2, lines_per_block=150)


def simulated(preset: str, people: int, seed: int = 0) -> pa.Table:
    return pa.Table.from_batches(list(simulate(PRESETS[preset], people, seed)))


def all_files(url: str, storage_options=None) -> dict[str, bytes]:
    fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    return {p[len(root.rstrip("/")) + 1 :]: fs.cat_file(p) for p in fs.find(root)}


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["synth", "career-code", "panel", "resume-jsonl"])
def test_round_trip_every_format(store, ray_address, fmt):
    so = store.storage_options
    if fmt == "synth":
        spec = InputSpec(format="synth", preset="nlsy79", people=400, seed=3)
        expected = simulated("nlsy79", 400, 3)
    else:
        source = simulated("nlsy79", 400, 3)
        url = {
            "career-code": store.url("cc"),
            "panel": store.url("p.parquet"),
            "resume-jsonl": store.url("r.jsonl"),
        }[fmt]
        {
            "career-code": write_career_code,
            "panel": write_panel,
            "resume-jsonl": write_resume_jsonl,
        }[fmt](source, url, storage_options=so)
        spec = InputSpec(format=fmt, url=url, storage_options=so)
        expected = read(url, fmt, storage_options=so).table
    before = all_files(spec.url, so) if spec.url else {}
    result = shard_dataset(spec, store.url("datasets"), "ds", SMALL, storage_options=so)
    assert (all_files(spec.url, so) if spec.url else {}) == before  # the input left as it was
    manifest = result.manifest
    assert manifest.totals["people_read"] == 400 == manifest.totals["people_written"]
    assert len(manifest.shards) > 3 and manifest.extra["bytes_per_token"] <= 12
    splits = dict(
        zip(
            expected.column("person_id").to_pylist(),
            resolve_splits(expected).to_pylist(),
            strict=True,
        )
    )
    rows = {r["person_id"]: r for r in expected.to_pylist()}
    for split in ("train", "valid", "test"):
        got = records_from_loader(result.dataset_url, split, so)
        assert set(got) == {p for p, s in splits.items() if s == split}
        assert manifest.splits[split]["people"] == len(got)
        for person_id, back in got.items():
            want = rows[person_id]
            assert back["jobs"] == want["jobs"] and back["years"] == want["years"]
            assert back["education"] == want["education"]
            for name in ("location", "gender", "ethnicity", "birth_year"):
                assert back.get(name) == want[name], name
            for name in ("oracle_logp", "log_wage"):
                if want[name] is not None:
                    assert back[name] == float32_list(want[name]), name
            assert back.get("weight", 1.0) == pytest.approx(want["weight"])
    if fmt == "synth":
        assert set(manifest.oracle_perplexity) == {"train", "valid", "test"}


@pytest.mark.slow
def test_deterministic_across_runs_and_cpu_counts(tmp_path, ray_address):
    source = simulated("psid", 1500, 1)
    write_career_code(source, str(tmp_path / "input"))
    spec = InputSpec(
        format="career-code", url=str(tmp_path / "input")
    )  # ~10 blocks: ~10 read tasks
    shard_dataset(spec, str(tmp_path / "a"), "psid", SMALL)
    shard_dataset(spec, str(tmp_path / "b"), "psid", SMALL)
    one_cpu = subprocess.run(
        [
            CAREER,
            "shard",
            "--format",
            "career-code",
            "--input",
            str(tmp_path / "input"),
            "--out",
            str(tmp_path / "c"),
            "--name",
            "psid",
            "--people-per-block",
            "64",
            "--blocks-per-shard",
            "2",
            "--lines-per-block",
            "150",
            "--num-cpus",
            "1",
        ],
        capture_output=True,
        text=True,
    )
    assert one_cpu.returncode == 0, one_cpu.stderr
    a, b, c = (all_files(str(tmp_path / d / "psid")) for d in "abc")
    assert a == b
    assert a == c  # 1 CPU and 2 CPUs give the same bytes
    assert "manifest.json" in a and not any(k.startswith("_staging") for k in a)
    assert sum(k.endswith(".tar") for k in a) > 5


@pytest.mark.slow
def test_killed_job_rerun_gives_the_same_bytes(tmp_path, ray_address):
    config = ShardConfig(people_per_block=16, blocks_per_shard=1)
    spec = InputSpec(format="synth", preset="resumes", people=6000, seed=2)
    reference = shard_dataset(spec, str(tmp_path / "ref"), "r", config)
    out = tmp_path / "crash"
    proc = subprocess.Popen(
        [
            CAREER,
            "shard",
            "--format",
            "synth",
            "--sim-preset",
            "resumes",
            "--people",
            "6000",
            "--seed",
            "2",
            "--out",
            str(out),
            "--name",
            "r",
            "--people-per-block",
            "16",
            "--blocks-per-shard",
            "1",
            "--ray-address",
            ray_address,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    done = out / "r" / "_staging" / "done"
    deadline = time.time() + 120
    while time.time() < deadline and (not done.exists() or len(list(done.iterdir())) < 5):
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "r" / "manifest.json").exists(), "the job finished before it could be killed"
    # Shards are written to a temporary name and renamed: whatever the kill interrupted, every
    # file under a shard's own name is that whole shard (a SIGKILL may leave `.tmp-` files,
    # which the rerun must clear: the comparison of every file below sees them).
    written = {str(p.relative_to(out / "r")): p.read_bytes() for p in (out / "r").rglob("*.tar")}
    reference_files = all_files(reference.dataset_url)
    assert len(written) >= 5
    assert all(reference_files[name] == data for name, data in written.items())
    rerun = shard_dataset(spec, str(out), "r", config)
    assert rerun.shards_reused >= 5
    assert all_files(str(out / "r")) == all_files(reference.dataset_url)


def test_quarantine_and_duplicates_are_counted_per_split(tmp_path, ray_address):
    lines = ["a b", "c", "d d", "e", "f", "g g g", "h"]
    years = ["2000 2001", "2001", "2002 2001", "19x9", "2005", "2001 2002", "2003"]
    ids = ["p1", "p2", "p3", "p4", "p1", "p5", "p2"]
    for split in ("train", "test"):
        (tmp_path / f"{split}.job").write_text("\n".join(lines) + "\n")
        (tmp_path / f"{split}.year").write_text("\n".join(years) + "\n")
        (tmp_path / f"{split}.id").write_text("\n".join(f"{split}-{i}" for i in ids) + "\n")
    spec = InputSpec(format="career-code", url=str(tmp_path))
    result = shard_dataset(spec, str(tmp_path / "out"), "cc", ShardConfig(lines_per_block=3))
    manifest = result.manifest
    for split in ("train", "test"):
        info = manifest.splits[split]
        assert info["people_in"] == 7 and info["people"] == 2 and info["people_quarantined"] == 5
    assert manifest.splits["valid"]["people_in"] == 0
    entries = [
        json.loads(x)
        for x in (Path(result.dataset_url) / "quarantine.jsonl").read_text().splitlines()
    ]
    assert len(entries) == 10
    assert (
        sum("duplicate person id" in e["reason"] for e in entries) == 4
    )  # across blocks of 3 lines


def test_structural_error_exits_2_and_leaves_nothing(tmp_path, ray_address, capsys):
    (tmp_path / "p.csv").write_text("id,year,job\n1,2000,a\n")
    out = tmp_path / "out"
    code = main(
        [
            "shard",
            "--format",
            "panel",
            "--input",
            str(tmp_path / "p.csv"),
            "--person",
            "nope",
            "--out",
            str(out),
            "--name",
            "x",
            "--ray-address",
            ray_address,
        ]
    )
    assert code == 2 and "missing column" in capsys.readouterr().err
    assert not (out / "x").exists() or not any((out / "x").rglob("*"))


def test_existing_dataset_is_reused_or_refused(tmp_path, ray_address, capsys):
    flags = [
        "shard",
        "--format",
        "synth",
        "--sim-preset",
        "nlsy97",
        "--people",
        "300",
        "--out",
        str(tmp_path),
        "--name",
        "d",
        "--ray-address",
        ray_address,
    ]
    assert main(flags) == 0
    before = all_files(str(tmp_path / "d"))
    assert main(flags) == 0 and "already complete" in capsys.readouterr().out
    assert (
        main([*flags, "--blocks-per-shard", "1"]) == 2 and "--overwrite" in capsys.readouterr().err
    )
    assert all_files(str(tmp_path / "d")) == before
    assert main([*flags, "--blocks-per-shard", "1", "--overwrite"]) == 0
    assert load_manifest(str(tmp_path / "d")).config["blocks_per_shard"] == 1


def test_fine_tuning_data_extends_the_pretraining_vocabulary(tmp_path, ray_address):
    pre = shard_dataset(
        InputSpec(format="synth", preset="resumes", people=2000), str(tmp_path), "resumes", SMALL
    )
    parent_url = f"{pre.dataset_url}/vocab.json"
    fine = shard_dataset(
        InputSpec(format="synth", preset="nlsy79", people=500),
        str(tmp_path),
        "nlsy79",
        SMALL,
        parent_url,
    )
    parent, child = Vocabulary.load(parent_url), Vocabulary.load(f"{fine.dataset_url}/vocab.json")
    assert child.is_extension_of(parent) and fine.manifest.parent_hash == parent.hash
    assert {"unemployed", "not_in_labor_force", "education"} <= set(
        child.fields["job"][len(parent.fields["job"]) :]
    )
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(StructuralError, match="--vocab"):
        shard_dataset(
            InputSpec(format="synth", preset="nlsy79", people=50),
            str(tmp_path),
            "x",
            SMALL,
            str(broken),
        )


def test_rerunning_a_panel_dataset_is_a_no_op(tmp_path, ray_address):
    write_panel(simulated("nlsy97", 200), str(tmp_path / "p.parquet"))
    spec = InputSpec(format="panel", url=str(tmp_path / "p.parquet"))
    first = shard_dataset(spec, str(tmp_path), "p", SMALL)
    again = shard_dataset(spec, str(tmp_path), "p", SMALL)
    assert again.already_complete and again.manifest.to_json() == first.manifest.to_json()
    assert first.manifest.input["digest"]  # the input's content is part of the dataset's identity


def _panel_with_a_corrupt_page(path: Path, corrupt: bool = True) -> Path:
    """A Parquet panel whose footer (all `check_panel` reads before launch) is intact but one
    data page is damaged: the error appears only inside the read task. (A bad line or cell is
    a quarantined record, not an error, so a damaged file is what is left to stop a task.)"""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 400
    pq.write_table(
        pa.table(
            {
                "person_id": [f"p{i // 4}" for i in range(n)],
                "year": [2000 + i % 4 for i in range(n)],
                "job": [str(i % 7) for i in range(n)],
            }
        ),
        path,
    )
    if corrupt:
        data = bytearray(path.read_bytes())
        start = pq.read_metadata(path).row_group(0).column(2).data_page_offset
        data[start + 4 : start + 40] = bytes(b ^ 0xFF for b in data[start + 4 : start + 40])
        path.write_bytes(bytes(data))
    return path


def test_overwrite_with_a_bad_input_keeps_the_old_dataset(tmp_path, ray_address):
    panel = _panel_with_a_corrupt_page(tmp_path / "p.parquet", corrupt=False)
    good = shard_dataset(
        InputSpec(format="panel", url=str(panel)), str(tmp_path / "out"), "d", SMALL
    )
    _panel_with_a_corrupt_page(panel)
    with pytest.raises(StructuralError, match=r"p.parquet: unreadable panel"):
        shard_dataset(
            InputSpec(format="panel", url=str(panel)),
            str(tmp_path / "out"),
            "d",
            SMALL,
            overwrite=True,
        )
    assert load_manifest(good.dataset_url).to_json() == good.manifest.to_json()
    assert not (Path(good.dataset_url) / "_staging").exists()


def test_structural_error_inside_a_read_task_exits_2(tmp_path, ray_address, capsys):
    panel = _panel_with_a_corrupt_page(tmp_path / "p.parquet")
    code = main(
        [
            "shard",
            "--format",
            "panel",
            "--input",
            str(panel),
            "--out",
            str(tmp_path / "out"),
            "--name",
            "x",
            "--ray-address",
            ray_address,
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "p.parquet: unreadable panel" in err and "\x1b[" not in err
    assert (
        not (tmp_path / "out" / "x" / "_staging").exists()
        and not (tmp_path / "out" / "x" / "manifest.json").exists()
    )


def test_credentials_in_urls_are_refused(tmp_path, capsys):
    code = main(
        [
            "inspect",
            "--input",
            "s3://AKIAEXAMPLE:s3cr3tvalue@bucket/x.jsonl",
            "--format",
            "resume-jsonl",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "credentials inside a URL" in err
    assert "s3cr3tvalue" not in err and "AKIAEXAMPLE" not in err


def test_hash_collisions_are_not_taken_for_duplicates(ray_address):
    import numpy as np
    import ray

    from data_shards.encode import FieldSet
    from data_shards.shard import BlockSummary, find_duplicates

    fields = FieldSet(False, False, False, (), False)

    def summary(index, n):
        hashes = {
            "train": np.full(n, 42, dtype=np.uint64),
            "valid": np.zeros(0, np.uint64),
            "test": np.zeros(0, np.uint64),
        }
        return BlockSummary(
            index, n, 0, [], {}, {"train": n, "valid": 0, "test": 0}, hashes, fields, False
        )

    tables = [
        ray.put({"train": pa.table({"person_id": ["a", "b"]}), "valid": None, "test": None}),
        ray.put({"train": pa.table({"person_id": ["c", "a"]}), "valid": None, "test": None}),
    ]
    drops = find_duplicates([summary(0, 2), summary(1, 2)], ray, tables)
    assert {k: v.tolist() for k, v in drops.items()} == {
        (1, "train"): [1]
    }  # only the real repeat of "a"


def test_an_input_that_yields_no_record_exits_2_and_writes_nothing(tmp_path, ray_address, capsys):
    # Once: exit 0 and a dataset of 0 people with a manifest marking it complete.
    panel = tmp_path / "panel.csv"
    panel.write_text("pid,yr,occ,birth_yr\n1,80,a,51\n1,81,b,51\n2,80,a,60\n2,82,c,60\n")
    out = tmp_path / "out"
    flags = ["shard", "--format", "panel", "--input", str(panel), "--out", str(out), "--name", "d"]
    flags += ["--person", "pid", "--year", "yr", "--occupation", "occ", "--birth-year", "birth_yr"]
    flags += ["--ray-address", ray_address]
    assert main(flags) == 2
    err = capsys.readouterr().err
    assert f"{panel}: no record accepted: read as --format panel, all 4 rows (2 people)" in err
    assert f"{panel}:2: year out of range 1850-2100 (two-digit years need --year-base)" in err
    assert "likely cause: --year-base" in err and f"nothing was written to {out / 'd'}" in err
    assert not out.exists()  # not even an empty folder
    # --year-base moves the birth year too (once: every row quarantined for its birth year)
    assert main([*flags, "--year-base", "1900"]) == 0
    dataset = str(out / "d")
    manifest = load_manifest(dataset)
    assert manifest.totals["people_written"] == 2
    people = {}
    for split in (s for s, info in manifest.splits.items() if info["people"]):
        people.update(records_from_loader(dataset, split))
    assert {p: r["birth_year"] for p, r in people.items()} == {"1": 1951, "2": 1960}
    # the wrong --format over that dataset, with --overwrite: refused, the dataset kept whole
    before = all_files(dataset)
    wrong = [*flags, "--format", "resume-jsonl", "--overwrite"]
    assert main(wrong) == 2
    assert "likely cause: the --format: the file's name says --format panel" in (
        capsys.readouterr().err
    )
    assert all_files(dataset) == before


def test_more_than_half_quarantined_is_warned_and_recorded(tmp_path, ray_address, capsys):
    resumes = tmp_path / "r.jsonl"
    good = '{"id": "%s", "jobs": [{"code": "X", "start": "2001", "end": "2002"}]}\n'
    resumes.write_text("".join(good % i for i in range(4)) + "not json\n" * 5)
    flags = ["shard", "--format", "resume-jsonl", "--input", str(resumes), "--out", str(tmp_path)]
    assert main([*flags, "--name", "d", "--ray-address", ray_address]) == 0
    err = capsys.readouterr().err
    assert "career shard: warning: dataset d: 55.6% of the people read were quarantined" in err
    assert f"invalid JSON (5); every entry is in {tmp_path / 'd' / 'quarantine.jsonl'}" in err
    extra = load_manifest(str(tmp_path / "d")).extra
    assert extra["quarantined_share"] == {"people": 0.5556}
    assert extra["top_quarantine_reasons"] == [{"reason": "invalid JSON", "count": 5}]
    resumes.write_text("".join(good % i for i in range(4)) + "not json\n")  # a fifth: quiet
    assert main([*flags, "--name", "e", "--ray-address", ray_address]) == 0
    assert "warning" not in capsys.readouterr().err
    assert load_manifest(str(tmp_path / "e")).extra["quarantined_share"] == {"people": 0.2}


@pytest.mark.slow
def test_a_compressed_input_shards_to_the_same_bytes(tmp_path, ray_address):
    """A compressed file is one block (no byte offsets in a compressed stream); its dataset is
    byte for byte the one of the plain file cut into many blocks, its quarantine at the same lines."""
    table = simulated("nlsy79", 300, 5)
    plain = tmp_path / "r.jsonl"
    write_resume_jsonl(table, str(plain))
    lines = plain.read_text().splitlines()
    lines.insert(159, "not json")  # line 160, in the second block of 100 lines
    plain.write_text("\n".join(lines) + "\n")
    packed = tmp_path / "r.jsonl.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    cc = tmp_path / "cc"
    write_career_code(table, str(cc))
    for file in sorted(cc.iterdir()):
        if file.suffix in (".job", ".education"):
            (cc / f"{file.name}.xz").write_bytes(lzma.compress(file.read_bytes()))
            file.unlink()
    config = ShardConfig(people_per_block=32, blocks_per_shard=2, lines_per_block=100)
    out = str(tmp_path / "out")
    inputs = {"resume-jsonl": (plain, packed), "career-code": (None, cc)}
    for fmt, (first, second) in inputs.items():
        if first is None:  # the same folder, uncompressed
            first = tmp_path / "cc-plain"
            write_career_code(table, str(first))
        a = shard_dataset(InputSpec(format=fmt, url=str(first)), out, f"{fmt}-plain", config)
        b = shard_dataset(InputSpec(format=fmt, url=str(second)), out, f"{fmt}-packed", config)
        files_a, files_b = all_files(a.dataset_url), all_files(b.dataset_url)
        assert sorted(files_a) == sorted(files_b) and len(a.manifest.shards) > 3, fmt
        for name in sorted(set(files_a) - {"manifest.json", "quarantine.jsonl"}):
            assert files_a[name] == files_b[name], (fmt, name)
        manifest_a, manifest_b = (json.loads(f["manifest.json"]) for f in (files_a, files_b))
        assert manifest_b["input"].pop("url") == str(second)
        manifest_a["input"].pop("url")
        for manifest in (manifest_a, manifest_b):
            manifest.pop("name")
        assert manifest_a == manifest_b, fmt
    quarantine = all_files(str(tmp_path / "out" / "resume-jsonl-packed"))["quarantine.jsonl"]
    assert json.loads(quarantine)["source"] == f"{packed}:160"
    assert all_files(str(tmp_path / "out" / "resume-jsonl-plain"))["quarantine.jsonl"] == (
        quarantine.replace(b"r.jsonl.gz:", b"r.jsonl:")
    )
