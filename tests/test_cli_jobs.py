"""Training as a new user runs it: relative paths, Ray Train workers, errors raised on a worker.

Ray Train workers do not run in the caller's working directory, so relative paths once failed
there with `no manifest.json` although the dataset was there; and an error of ours raised on a
worker reached the user as `unexpected WorkerGroupError` plus a traceback instead of its message.
(`career run` from an empty folder with its default relative `--out` is in test_cli.py.)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import helpers
import pytest
import torch
from helpers import career_all, digest

pytestmark = pytest.mark.slow
TINY = [
    "--preset",
    "tiny",
    "--updates",
    "3",
    "--tokens-per-update",
    "1500",
    "--zero-stage",
    "1",
    "--eval-every",
    "3",
    "loader_workers=0",
    "cpu_threads=1",
]


def career(cwd: Path, *args: str, check: bool = True, timeout: int = 420):
    """`helpers.career` run from `cwd` (relative paths, as a user types them)."""
    return helpers.career(*args, check=check, timeout=timeout, cwd=cwd)


def test_relative_paths_exact_resume_and_worker_errors_through_ray_train(tmp_path, ray_address):
    ray = ["--ray-address", ray_address]
    # Small shards: a lost one is read by one worker only.
    shard = [
        "shard",
        "--format",
        "synth",
        "--out",
        "store",
        "--people-per-block",
        "64",
        "--blocks-per-shard",
        "2",
        *ray,
    ]
    career(tmp_path, *shard, "--sim-preset", "resumes", "--people", "800", "--name", "resume")
    career(
        tmp_path,
        *shard,
        "--sim-preset",
        "nlsy79",
        "--people",
        "300",
        "--name",
        "survey",
        "--vocab",
        "store/resume/vocab.json",
    )

    # Relative --data/--out through Ray Train, stopped after update 2 and resumed: the weights
    # equal those of an uninterrupted run (launched with torchrun: the launcher changes nothing).
    pretrain = ["pretrain", "--data", "store/resume", *TINY]
    dataset_files = digest(tmp_path / "store" / "resume")
    # Side by side: independent runs.
    stopped, _ = career_all(
        [*pretrain, "--out", "pre", "--stop-after", "2", *ray],
        [*pretrain, "--out", "whole", "--launcher", "torchrun"],
        cwd=tmp_path,
    )
    assert "stopped after update 2" in stopped.stdout
    resumed = career(tmp_path, *pretrain, "--out", "pre", *ray)
    assert "resumed from step0000002" in resumed.stdout + resumed.stderr
    metrics = json.loads((tmp_path / "pre" / "metrics.json").read_text())
    assert metrics["updates"] == 3 and metrics["world_size"] == 2
    whole, split = (_weights(tmp_path / run, 3) for run in ("whole", "pre"))
    assert whole.keys() == split.keys()
    assert all(torch.equal(whole[name], split[name]) for name in whole)
    assert any((tmp_path / "pre" / "tb").iterdir())
    # The package names the dataset it was trained on: its vocabulary and manifest.
    package = json.loads((tmp_path / "pre" / "package" / "config.json").read_text())
    dataset = tmp_path / "store" / "resume"
    assert package["vocab_hash"] == json.loads((dataset / "vocab.json").read_text())["hash"]
    manifest_sha = hashlib.sha256((dataset / "manifest.json").read_bytes()).hexdigest()
    assert package["dataset_manifest_sha256"] == manifest_sha

    assert digest(tmp_path / "store" / "resume") == dataset_files  # training modified no input
    # Fine-tuning through Ray Train, stopped after update 2 on 2 workers and resumed on 1: the
    # ZeRO state is re-cut for the smaller group and the run continues from its checkpoint.
    inputs = (tmp_path / "pre" / "package", tmp_path / "store" / "survey")
    before = digest(*inputs)
    finetune = [
        "finetune",
        "--base",
        "pre/package",
        "--data",
        "store/survey",
        "--out",
        "fine",
        *TINY,
        *ray,
    ]
    stopped = career(tmp_path, *finetune, "--stop-after", "2")
    assert "stopped after update 2" in stopped.stdout
    tuned = career(tmp_path, *finetune, "--workers", "1")
    assert digest(*inputs) == before
    assert "elastic: 2 -> 1 workers" in tuned.stdout + tuned.stderr
    # Rank 0's progress reaches the driver's terminal as a bar, not as worker log lines (the
    # stopped run's: its second update is timed; the resumed run's one update is not).
    bar = [
        line
        for line in stopped.stderr.splitlines()
        if line.startswith("training") and "2/3" in line
    ]
    assert bar and "loss" in bar[-1] and "tokens/s" in bar[-1]
    assert any(line.startswith("training") and "3/3" in line for line in tuned.stderr.splitlines())
    fine = json.loads((tmp_path / "fine" / "metrics.json").read_text())
    assert fine["updates"] == 3 and fine["world_size"] == 1 and fine["resumed_from"] == 2
    assert fine["finetune"]["base_package"] == str(tmp_path / "pre" / "package")
    state = torch.load(
        next(
            (tmp_path / "fine" / "checkpoints" / "step0000003").glob("*mp_rank_00_model_states.pt")
        ),
        map_location="cpu",
        weights_only=True,
    )
    assert state["world_size"] == 1 and state["loader"][0]["catchup"]  # the re-planned epoch

    check_dry_runs(tmp_path)

    # A shard lost after the driver's checks: the worker that reads it fails, the others must
    # not wait for it forever, and the user gets the worker's message with exit code 2.
    shutil.copytree(tmp_path / "store" / "resume", tmp_path / "store" / "broken")
    lost = sorted((tmp_path / "store" / "broken" / "train").glob("shard-*.tar"))[-1]
    lost.unlink()
    proc = career(
        tmp_path,
        "pretrain",
        "--data",
        "store/broken",
        "--out",
        "broken-run",
        *TINY,
        *ray,
        check=False,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert lost.name in proc.stderr and "career pretrain: error:" in proc.stderr
    assert "WorkerGroupError" not in proc.stderr and "Traceback" not in proc.stderr


def check_dry_runs(tmp_path: Path) -> None:
    """`--dry-run` shows the model training would build on this data, and writes nothing."""
    dry = career(
        tmp_path,
        "pretrain",
        "--data",
        "store/resume",
        "--out",
        "dry",
        "--preset",
        "paper",
        "--dry-run",
    )
    shown = json.loads(dry.stdout)
    vocab = json.loads((tmp_path / "store" / "resume" / "vocab.json").read_text())
    model = shown["model"]
    assert (model["n_layer"], model["d_model"], model["n_head"], model["d_ff"]) == (12, 192, 3, 768)
    assert model["two_stage"] is True and model["dropout"] == 0.1
    assert model["vocab_sizes"]["job"] == len(vocab["fields"]["job"])
    assert set(model["covariates"]) <= set(model["vocab_sizes"]) and "year" in model["covariates"]
    assert _parameters(model) == model["parameters"]
    assert "16,000 job-years" in shown["batching"] and shown["deepspeed"]["train_batch_size"] == 2
    assert not (tmp_path / "dry").exists()
    dry = career(
        tmp_path,
        "finetune",
        "--base",
        "pre/package",
        "--data",
        "store/survey",
        "--out",
        "dry",
        "--dry-run",
    )
    model = json.loads(dry.stdout)["model"]
    survey_vocab = json.loads((tmp_path / "store" / "survey" / "vocab.json").read_text())
    assert model["n_layer"] == 2 and "gender" in model["covariates"]  # the package's, grown
    assert model["vocab_sizes"]["job"] == len(survey_vocab["fields"]["job"])
    assert not (tmp_path / "dry").exists()


def test_a_worker_error_under_torchrun_exits_2_with_its_message(tmp_path, ray_address):
    shard = ["shard", "--format", "synth", "--out", "store", "--people-per-block", "64"]
    career(
        tmp_path,
        *shard,
        "--sim-preset",
        "nlsy79",
        "--people",
        "400",
        "--name",
        "survey",
        "--ray-address",
        ray_address,
    )
    lost = sorted((tmp_path / "store" / "survey" / "train").glob("shard-*.tar"))[-1]
    lost.unlink()
    proc = career(
        tmp_path,
        "pretrain",
        "--data",
        "store/survey",
        "--out",
        "run",
        "--launcher",
        "torchrun",
        *TINY,
        check=False,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("career pretrain: error:") and lost.name in last


def _parameters(described: dict) -> int:
    """The parameter count of the architecture `--dry-run` printed, built independently."""
    from trainer.models.career import ModelConfig, build_model

    names = [f.name for f in dataclasses.fields(ModelConfig)]
    config = {k: v for k, v in described.items() if k in names and k != "vocab_sizes"}
    return build_model(described["vocab_sizes"], **config).num_parameters()


def _weights(run: Path, step: int) -> dict:
    from trainer import engine

    return engine.consolidated_state_dict(str(run / "checkpoints"), f"step{step:07d}")


def test_sigterm_under_torchrun_checkpoints_at_the_next_update(tmp_path, ray_address):
    """A preemption notice to `career pretrain --launcher torchrun`: the signal reaches the
    workers through torchrun, they checkpoint after the update in progress, the command exits
    143, and its rerun resumes from that checkpoint."""
    import signal
    import subprocess
    import time

    career(
        tmp_path,
        *["shard", "--format", "synth", "--sim-preset", "resumes", "--people", "500"],
        *["--people-per-block", "64", "--out", "store", "--name", "resumes"],
        "--ray-address",
        ray_address,
    )
    command = [helpers.CAREER, "pretrain", "--data", "store/resumes", "--out", "run"]
    command += ["--launcher", "torchrun", *TINY, "--updates", "400", "checkpoint_every=50"]
    proc = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    latest = tmp_path / "run" / "checkpoints" / "latest.json"
    deadline = time.monotonic() + 300
    while not latest.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-2000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "stopped on SIGTERM with a checkpoint" in err.strip().splitlines()[-1]
    stopped = json.loads(latest.read_text())["step"]
    assert stopped % 50 != 0  # after the update in progress, not at a scheduled checkpoint
    assert not (tmp_path / "run" / "metrics.json").exists()
    rerun = career(tmp_path, *command[1:], "--updates", f"{stopped + 2}")
    assert f"resumed from step{stopped:07d}" in rerun.stdout + rerun.stderr
