"""Checkpoint integrity (issue 26, faults 6 and 7): every complete checkpoint has a record, and a
damaged or half-written one is never used.

- Each tag's `complete.json` lists every rank's files with their size and sha256, written after
  the files and before `latest.json`.
- Fault 7, a corrupt or half-written checkpoint: a truncated file, a missing rank file,
  `latest.json` naming a tag without a record, bytes that differ from the record once downloaded
  from S3. The rerun says which tag it skipped and why, resumes from the newest complete one, and
  ends with weights `torch.equal` to the uninterrupted run. A run whose tags are all incomplete is
  refused (exit 2, every tag and why), before launch and in the workers; never restarted from
  scratch. `career export` of an incomplete tag is refused and names the complete ones.
- Fault 6, a full disk while checkpointing (a real file-size limit, as the kernel reports
  EFBIG; ENOSPC takes the same path) or a folder that cannot be written: exit 2 naming the
  folder; `latest.json` still names the previous checkpoint, which the rerun resumes from and
  finishes exactly.
- Pruning keeps the complete tags a fallback needs.

One uninterrupted run (2 torchrun workers, ZeRO-1, 8 updates, a checkpoint every 2: tags 4, 6, 8
kept) is trained once; each case damages a copy of its checkpoints and reruns the same command.
"""

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import career, new_bucket

from data_shards.errors import StructuralError
from data_shards.inputs import InputSpec
from data_shards.shard import ShardConfig, shard_dataset
from trainer import engine as ds_engine
from trainer.checkpoint_store import RECORD, CheckpointStore
from trainer.distributed import RunInfo
from trainer.elastic import prepare_resume
from trainer.export import export_run

CAREER = str(Path(sys.executable).with_name("career"))
MODEL_STATES = "mp_rank_00_model_states.pt"
RANK_FILE = "zero_pp_rank_{}_mp_rank_00_optim_states.pt"
#: A file-size limit below a checkpoint file (~250 KB) and above anything else a run writes
#: before it saves (TensorBoard events, DeepSpeed's recovery scripts: < 40 KB).
SIZE_LIMIT = 128 * 1024


def command(data: str, out: str, *extra: str) -> list[str]:
    return [
        "pretrain",
        "--data",
        data,
        "--out",
        out,
        "--preset",
        "tiny",
        "--tokens-per-update",
        "1000",
        "--launcher",
        "torchrun",
        "--workers",
        "2",
        "--zero-stage",
        "1",
        "--precision",
        "fp32",
        "--updates",
        "8",
        "--checkpoint-every",
        "2",
        "--eval-every",
        "8",
        "optim.lr=0.003",
        "loader_workers=0",
        *extra,
    ]


def said(proc: subprocess.CompletedProcess) -> str:
    """What a command printed, with the terminal's line wrapping undone."""
    return " ".join((proc.stdout + proc.stderr).split())


@pytest.fixture(scope="module")
def data(tmp_path_factory, ray_address) -> str:
    root = tmp_path_factory.mktemp("faults-data")
    return shard_dataset(
        InputSpec(format="synth", preset="resumes", people=400, seed=1),
        str(root),
        "resumes",
        ShardConfig(people_per_block=64, blocks_per_shard=2),
    ).dataset_url


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    """The uninterrupted run: tags 4, 6 and 8 (2 pruned), each with its record."""
    out = tmp_path_factory.mktemp("faults") / "whole"
    career(*command(data, str(out)))
    return out


def copy_checkpoints(run: Path, out: Path) -> Path:
    """A run folder holding only `run`'s checkpoints (as a stopped or killed run leaves it)."""
    shutil.copytree(run / "checkpoints", out / "checkpoints")
    return out / "checkpoints"


def weights(checkpoints: Path, tag: str = "step0000008") -> dict[str, torch.Tensor]:
    return ds_engine.consolidated_state_dict(str(checkpoints), tag)


def assert_equal_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


# -- the record -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_every_kept_tag_has_a_record_of_every_ranks_files(trained):
    checkpoints = trained / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("step*")) == [
        "step0000004",
        "step0000006",
        "step0000008",
    ]
    for tag in ("step0000004", "step0000006", "step0000008"):
        record = json.loads((checkpoints / tag / RECORD).read_text())
        assert record["tag"] == tag and record["step"] == int(tag[4:])
        on_disk = {p.name for p in (checkpoints / tag).iterdir()} - {RECORD}
        assert set(record["files"]) == on_disk
        assert {RANK_FILE.format(0), RANK_FILE.format(1), MODEL_STATES, "career.json"} <= on_disk
        for name, entry in record["files"].items():
            assert entry["size"] == (checkpoints / tag / name).stat().st_size
    store = CheckpointStore(str(trained))
    assert store.fetch("step0000008") is None


@pytest.mark.slow
def test_the_sha256_catches_what_the_sizes_do_not(trained, tmp_path):
    """A flipped byte keeps the size; a file the record does not list is not the saved tag."""
    checkpoints = copy_checkpoints(trained, tmp_path / "run")
    store = CheckpointStore(str(tmp_path / "run"))
    target = checkpoints / "step0000008" / RANK_FILE.format(1)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    assert store.check("step0000008") is None  # a listing sees nothing wrong
    assert store.fetch("step0000008") == (
        f"{RANK_FILE.format(1)}: its sha256 differs from its record (corrupt)"
    )
    (checkpoints / "step0000006" / RANK_FILE.format(2)).write_bytes(b"left over")
    assert store.fetch("step0000006") == f"{RANK_FILE.format(2)} is not in its record"


# -- fault 7: a corrupt or half-written checkpoint ------------------------------------------------
@pytest.mark.slow
def test_a_truncated_file_and_a_missing_rank_file_fall_back(data, trained, tmp_path):
    """`latest.json` names update 8, whose model states are cut short; update 6 lost rank 1's
    file: the rerun skips both with a note, resumes from update 4 and ends where the
    uninterrupted run did."""
    out = tmp_path / "run"
    checkpoints = copy_checkpoints(trained, out)
    os.truncate(checkpoints / "step0000008" / MODEL_STATES, 100_000)
    (checkpoints / "step0000006" / RANK_FILE.format(1)).unlink()
    rerun = said(career(*command(data, str(out))))
    assert (
        f"checkpoint step0000008 skipped, not complete: {MODEL_STATES} is 100,000 bytes, "
        "its record says"
    ) in rerun
    assert f"checkpoint step0000006 skipped, not complete: {RANK_FILE.format(1)} missing" in rerun
    assert "resumed from step0000004 (update 4, exact)" in rerun
    assert_equal_weights(weights(checkpoints), weights(trained / "checkpoints"))
    assert CheckpointStore(str(out)).fetch("step0000008") is None  # rewritten, complete


@pytest.mark.slow
def test_on_s3_latest_naming_an_unrecorded_tag_and_a_corrupt_download_fall_back(
    data, trained, tmp_path, s3_endpoint
):
    """The run on S3: `latest.json` names update 8, whose save never wrote its record; update
    6's rank-0 file has one byte changed (its size is right: only the downloaded bytes' sha256
    shows it). The rerun resumes from update 4 and ends where the uninterrupted run did."""
    import s3fs

    root, options = new_bucket(s3_endpoint, "faults")
    fs = s3fs.S3FileSystem(**options)
    run = f"{root}/run"
    prefix = f"{run.removeprefix('s3://')}/checkpoints"
    for path in (trained / "checkpoints").rglob("*"):
        if path.is_file():
            fs.put_file(str(path), f"{prefix}/{path.relative_to(trained / 'checkpoints')}")
    fs.rm(f"{prefix}/step0000008/{RECORD}")
    key = f"{prefix}/step0000006/{RANK_FILE.format(0)}"
    damaged = bytearray(fs.cat(key))
    damaged[1000] ^= 0xFF
    fs.pipe(key, bytes(damaged))
    rerun = said(career(*command(data, run, "--storage-options", json.dumps(options))))
    assert (
        f"checkpoint step0000008 skipped, not complete: no {RECORD}: its save never finished"
    ) in rerun
    assert (
        f"checkpoint step0000006 skipped, not complete: {RANK_FILE.format(0)}: its sha256 "
        "differs from its record (corrupt) (downloaded twice)"
    ) in rerun
    assert "resumed from step0000004 (update 4, exact)" in rerun
    fs.get(f"{prefix}/step0000008/", str(tmp_path / "copy" / "step0000008"), recursive=True)
    assert_equal_weights(weights(tmp_path / "copy"), weights(trained / "checkpoints"))


@pytest.mark.slow
def test_a_run_whose_checkpoints_are_all_incomplete_is_refused(
    data, trained, tmp_path, single_process_group
):
    """No tag has its record (a run from before records, or every save cut short): exit 2 naming
    the folder, each tag and why, before anything is launched or written; the workers of a run
    restarted without that check (Ray Train) refuse it the same way."""
    out = tmp_path / "run"
    checkpoints = copy_checkpoints(trained, out)
    for record in checkpoints.glob(f"step*/{RECORD}"):
        record.unlink()
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    refused = career(*command(data, str(out)), check=False)
    assert refused.returncode == 2, refused.stderr[-2000:]
    message = said(refused)
    assert (
        f"career pretrain: error: {checkpoints}: no complete checkpoint to resume from" in message
    )
    for tag in ("step0000008", "step0000006", "step0000004"):
        assert f"{tag}: no {RECORD}: its save never finished" in message
    assert "refusing to start over from scratch" in message and "Traceback" not in message
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    store = CheckpointStore(str(out))
    with pytest.raises(StructuralError, match="no complete checkpoint to resume from"):
        prepare_resume(store, store.latest(), RunInfo(0, 1, 0, torch.device("cpu")))


@pytest.mark.slow
def test_a_run_whose_first_save_was_cut_short_starts_over_with_a_note(data, trained, tmp_path):
    """No save of the run ever finished (no `latest.json`, a tag without its record: a driver
    killed or a node lost during the first checkpoint): nothing to protect, so the run starts
    from update 0, says so, and ends at the uninterrupted run's weights."""
    out = tmp_path / "run"
    checkpoints = copy_checkpoints(trained, out)
    for name in ("latest.json", "best.json"):
        (checkpoints / name).unlink(missing_ok=True)
    for tag in ("step0000006", "step0000008"):
        shutil.rmtree(checkpoints / tag)
    (checkpoints / "step0000004" / RECORD).unlink()
    rerun = career(*command(data, str(out)))
    assert (
        "checkpoint step0000004 skipped, not complete: no save of this run ever finished; "
        "starting from update 0"
    ) in said(rerun)
    assert_equal_weights(weights(checkpoints), weights(trained / "checkpoints"))


@pytest.mark.slow
def test_exporting_an_incomplete_tag_is_refused(trained, tmp_path):
    out = tmp_path / "run"
    checkpoints = copy_checkpoints(trained, out)
    os.truncate(checkpoints / "step0000008" / RANK_FILE.format(0), 1000)
    package = tmp_path / "package"
    for tag in (["--tag", "step0000008"], []):  # named, and best.json's
        refused = career("export", "--run", str(out), *tag, "--package", str(package), check=False)
        assert refused.returncode == 2, refused.stderr[-2000:]
        assert (
            f"{checkpoints}: checkpoint step0000008 is not complete, refusing to export it: "
            f"{RANK_FILE.format(0)} is 1,000 bytes"
        ) in said(refused)
        assert "(complete checkpoints, by their records: step0000004, step0000006)" in said(refused)
        assert not package.exists()
    export_run(str(out), "step0000006", str(package))
    assert json.loads((package / "config.json").read_text())["checkpoint"] == "step0000006"


# -- fault 6: a full disk while checkpointing -----------------------------------------------------
def size_limited() -> None:
    """In the child: writes past SIZE_LIMIT fail with EFBIG, as on a full disk (ENOSPC)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (SIZE_LIMIT, SIZE_LIMIT))


@pytest.mark.slow
def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(data, trained, tmp_path):
    """A run stopped at update 6 is rerun under a file-size limit: it resumes, trains, and its
    save of update 8 fails: exit 2 naming the folder. `latest.json` still names update 6, and
    the rerun without the limit resumes from it and ends where the uninterrupted run did."""
    out = tmp_path / "run"
    checkpoints = copy_checkpoints(trained, out)
    shutil.rmtree(checkpoints / "step0000008")
    (checkpoints / "best.json").unlink()
    (checkpoints / "latest.json").write_text(json.dumps({"tag": "step0000006", "step": 6}))
    full = subprocess.run(
        [CAREER, *command(data, str(out))],
        capture_output=True,
        text=True,
        preexec_fn=size_limited,
        timeout=600,
    )
    assert full.returncode == 2, full.stderr[-3000:]
    last = full.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"career pretrain: error: {checkpoints}: cannot write checkpoint step0000008 ("
    ), last
    assert "the disk is full, a file-size limit was reached or the folder is not writable" in last
    assert "file-size limit 128 KiB (ulimit -f)" in last
    assert last.endswith("latest.json still names step0000006, which a rerun resumes from")
    assert json.loads((checkpoints / "latest.json").read_text())["tag"] == "step0000006"
    assert not (checkpoints / "step0000008" / RECORD).exists()
    assert not (out / "metrics.json").exists()
    rerun = said(career(*command(data, str(out))))
    assert f"checkpoint step0000008 skipped, not complete: no {RECORD}" in rerun
    assert "resumed from step0000006 (update 6, exact)" in rerun
    assert_equal_weights(weights(checkpoints), weights(trained / "checkpoints"))


def test_a_checkpoint_folder_that_cannot_be_made_is_named(tmp_path):
    """The run's checkpoints folder cannot be created (a file is in the way; a read-only folder
    fails the same way for a user other than root): a StructuralError naming it, raised before
    DeepSpeed writes anything."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoints").write_text("in the way")
    store = CheckpointStore(str(tmp_path / "run"))
    with pytest.raises(StructuralError) as refused:
        store.begin("step0000002", owner=True)
    message = str(refused.value)
    assert message.startswith(f"{tmp_path / 'run' / 'checkpoints'}: cannot write checkpoint")
    assert "no earlier checkpoint was saved" in message


# -- pruning --------------------------------------------------------------------------------------
def fake_tag(store: CheckpointStore, tag: str, complete: bool) -> None:
    folder = Path(store.local) / tag
    folder.mkdir(parents=True)
    (folder / MODEL_STATES).write_bytes(tag.encode())
    if complete:
        store.seal(tag, int(tag[4:]))


def test_pruning_keeps_the_complete_tags_a_fallback_needs(tmp_path):
    """Kept: the newest complete tags, the best, the one `latest.json` names (the tag a run
    fell back to); gone: older complete tags and every tag without a record."""
    store = CheckpointStore(str(tmp_path / "run"))
    for tag, complete in [
        ("step0000002", True),
        ("step0000004", True),
        ("step0000006", True),
        ("step0000008", False),  # a save that failed
        ("step0000010", True),
        ("step0000012", False),  # a save cut short
    ]:
        fake_tag(store, tag, complete)
    store.set_latest("step0000006", 6)
    store.set_best("step0000002", 2, 9.0)
    store.prune(1)
    assert store.tags() == ["step0000002", "step0000006", "step0000010"]
    assert store.latest() == "step0000010" and store.check_resumable() == "step0000010"
