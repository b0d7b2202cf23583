"""The commands as a new user runs them: from an empty folder, relative paths, Ray Train workers.

Ray Train workers do not run in the caller's working directory, so each of these failed once with
`no manifest.json` although the dataset was there; and an error of ours raised on a worker
reached the user as `unexpected WorkerGroupError` plus a traceback instead of its message.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

CAREER = str(Path(sys.executable).with_name("career"))
pytestmark = pytest.mark.slow
TINY = ["--preset", "tiny", "--updates", "3", "--tokens-per-update", "1500", "--zero-stage", "1",
        "--eval-every", "3", "loader_workers=0", "cpu_threads=1"]  # fmt: skip


def career(cwd: Path, *args: str, check: bool = True, timeout: int = 420):
    proc = subprocess.run([CAREER, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"career {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
        )
    return proc


def test_career_run_from_an_empty_folder_with_the_default_relative_out(tmp_path, ray_address):
    """`make run` on a fresh clone: the default `--out` is the relative ./career_run."""
    proc = career(tmp_path, "run", "--resume-people", "600", "--survey-people", "200",
                  "--train-updates", "2", "--ray-address", ray_address)  # fmt: skip
    out = tmp_path / "career_run"
    for step in ("pretrain", "finetune"):
        metrics = json.loads((out / "runs" / step / "metrics.json").read_text())
        assert metrics["updates"] == 2 and metrics["world_size"] == 2
        assert (out / "runs" / step / "package" / "model.safetensors").is_file()
    assert "fine-tuned" in proc.stdout and "Traceback" not in proc.stderr


def test_relative_paths_and_worker_errors_through_ray_train(tmp_path, ray_address):
    ray = ["--ray-address", ray_address]
    # Small shards: a lost one is read by one worker only.
    shard = ["shard", "--format", "synth", "--out", "store", "--people-per-block", "64",
             "--blocks-per-shard", "2", *ray]  # fmt: skip
    career(tmp_path, *shard, "--sim-preset", "resumes", "--people", "800", "--name", "resume")
    career(tmp_path, *shard, "--sim-preset", "nlsy79", "--people", "300", "--name", "survey",
           "--vocab", "store/resume/vocab.json")  # fmt: skip

    career(tmp_path, "pretrain", "--data", "store/resume", "--out", "pre", *TINY, *ray)
    assert json.loads((tmp_path / "pre" / "metrics.json").read_text())["updates"] == 3
    # Exact resume through Ray Train: stopped after update 2, rerun, equal to the whole run.
    stopped = career(tmp_path, "pretrain", "--data", "store/resume", "--out", "split",
                     "--stop-after", "2", *TINY, *ray)  # fmt: skip
    assert "stopped after update 2" in stopped.stdout
    career(tmp_path, "pretrain", "--data", "store/resume", "--out", "split", *TINY, *ray)
    whole, resumed = (_weights(tmp_path / run, 3) for run in ("pre", "split"))
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[name], resumed[name]) for name in whole)
    career(tmp_path, "finetune", "--base", "pre/package", "--data", "store/survey", "--out", "fine",
           *TINY, *ray)  # fmt: skip
    fine = json.loads((tmp_path / "fine" / "metrics.json").read_text())
    assert fine["updates"] == 3 and fine["finetune"]["adapt"]["new_job_tokens"] > 0

    # --dry-run shows the model training would build on this data, and writes nothing.
    dry = career(tmp_path, "pretrain", "--data", "store/resume", "--out", "dry", "--preset",
                 "paper", "--dry-run")  # fmt: skip
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
    dry = career(tmp_path, "finetune", "--base", "pre/package", "--data", "store/survey", "--out",
                 "dry", "--dry-run")  # fmt: skip
    model = json.loads(dry.stdout)["model"]
    survey_vocab = json.loads((tmp_path / "store" / "survey" / "vocab.json").read_text())
    assert model["n_layer"] == 2 and "gender" in model["covariates"]  # the package's, grown
    assert model["vocab_sizes"]["job"] == len(survey_vocab["fields"]["job"])

    # A shard lost after the driver's checks: the worker that reads it fails, the others must
    # not wait for it forever, and the user gets the worker's message with exit code 2.
    shutil.copytree(tmp_path / "store" / "resume", tmp_path / "store" / "broken")
    lost = sorted((tmp_path / "store" / "broken" / "train").glob("shard-*.tar"))[-1]
    lost.unlink()
    proc = career(tmp_path, "pretrain", "--data", "store/broken", "--out", "broken-run", *TINY,
                  *ray, check=False, timeout=300)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert lost.name in proc.stderr and "career pretrain: error:" in proc.stderr
    assert "WorkerGroupError" not in proc.stderr and "Traceback" not in proc.stderr


def _parameters(described: dict) -> int:
    """The parameter count of the architecture `--dry-run` printed, built independently."""
    from trainer.model import ModelConfig, build_model

    names = [f.name for f in dataclasses.fields(ModelConfig)]
    config = {k: v for k, v in described.items() if k in names and k != "vocab_sizes"}
    model = build_model(described["vocab_sizes"], **config)
    return model.num_parameters()


def test_a_worker_error_under_torchrun_exits_2_with_its_message(tmp_path, ray_address):
    shard = ["shard", "--format", "synth", "--out", "store", "--people-per-block", "64"]
    career(tmp_path, *shard, "--sim-preset", "nlsy79", "--people", "400", "--name", "survey",
           "--ray-address", ray_address)  # fmt: skip
    lost = sorted((tmp_path / "store" / "survey" / "train").glob("shard-*.tar"))[-1]
    lost.unlink()
    proc = career(tmp_path, "pretrain", "--data", "store/survey", "--out", "run", "--launcher",
                  "torchrun", *TINY, check=False, timeout=300)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("career pretrain: error:") and lost.name in last


def _weights(run: Path, step: int) -> dict:
    from trainer import engine

    return engine.consolidated_state_dict(str(run / "checkpoints"), f"step{step:07d}")
