"""Training with real DeepSpeed on CPU: gloo, 2 worker processes (torchrun, and once Ray Train).

Loss falls for ZeRO 0/1/2/3; a run stopped and resumed ends with weights equal to an uninterrupted
run (ZeRO 1 and 3); the exported package reproduces the live engine's validation perplexity;
fine-tuning grows the vocabulary; bad inputs are refused before anything starts.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data_shards.inputs import InputSpec
from data_shards.shard import ShardConfig, shard_dataset
from data_shards.stream import CareerLoader, StreamConfig
from trainer import engine as ds_engine
from trainer.model import build_model
from trainer.package import load_model

CAREER = str(Path(sys.executable).with_name("career"))
pytestmark = pytest.mark.slow
COMMON = ["--preset", "tiny", "--tokens-per-update", "1500", "--launcher", "torchrun", "--workers", "2",
          "optim.lr=0.003", "loader_workers=0", "model.dropout=0.1"]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory, ray_address):
    root = tmp_path_factory.mktemp("train")
    small = ShardConfig(people_per_block=64, blocks_per_shard=2)
    resumes = shard_dataset(
        InputSpec(format="synth", preset="resumes", people=1500, seed=1),
        str(root),
        "resumes",
        small,
    )
    survey = shard_dataset(InputSpec(format="synth", preset="nlsy79", people=500, seed=2), str(root), "nlsy79", small,
                           f"{resumes.dataset_url}/vocab.json")  # fmt: skip
    alone = shard_dataset(
        InputSpec(format="synth", preset="nlsy79", people=300, seed=3), str(root), "alone", small
    )
    return {
        "resumes": resumes.dataset_url,
        "nlsy79": survey.dataset_url,
        "alone": alone.dataset_url,
        "root": root,
    }


def career(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([CAREER, *args], capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"career {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
        )
    return proc


def perplexity(model, data_url: str, split: str = "valid") -> float:
    loader = CareerLoader(
        data_url, StreamConfig(split=split, loop=False, shuffle=False), num_workers=0
    )
    nll = tokens = 0.0
    with torch.no_grad():
        for batch in loader:
            loss, count = model.nll({k: v for k, v in batch.items() if isinstance(v, torch.Tensor)})
            nll, tokens = nll + float(loss), tokens + float(count)
    return math.exp(nll / tokens)


def untrained_perplexity(data_url: str) -> float:
    from data_shards.vocab import Vocabulary

    vocab = Vocabulary.load(f"{data_url}/vocab.json")
    covariates = ("year", "education", "location", "birth_year")
    torch.manual_seed(0)
    model = build_model(
        {n: vocab.size(n) for n in ("job", *covariates)}, "tiny", covariates=covariates
    ).eval()
    return perplexity(model, data_url)


def weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    return ds_engine.consolidated_state_dict(str(run / "checkpoints"), f"step{step:07d}")


@pytest.mark.parametrize("stage", [0, 2])
def test_loss_falls(data, tmp_path, stage):
    out = tmp_path / "run"
    career("pretrain", "--data", data["resumes"], "--out", str(out), "--zero-stage", str(stage), "--updates", "24",
           "--eval-every", "12", *COMMON)  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    (_, at_12), (_, at_24) = metrics["valid_history"]
    assert at_24 < at_12 < 0.9 * untrained_perplexity(data["resumes"])
    assert metrics["updates"] == 24 and metrics["tokens_seen"] > 24 * 1000


@pytest.mark.parametrize("stage", [1, 3])
def test_stop_and_resume_gives_identical_weights(data, tmp_path, stage):
    args = ["--data", data["resumes"], "--zero-stage", str(stage), "--updates", "16", "--eval-every", "8",
            "--checkpoint-every", "8", *COMMON]  # fmt: skip
    whole, split = tmp_path / "whole", tmp_path / "split"
    career("pretrain", "--out", str(whole), *args)
    stopped = career("pretrain", "--out", str(split), "--stop-after", "8", *args)
    assert "stopped after update 8" in stopped.stdout and not (split / "metrics.json").exists()
    career("pretrain", "--out", str(split), *args)
    a, b = weights(whole, 16), weights(split, 16)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    metrics = json.loads((whole / "metrics.json").read_text())
    assert metrics["final_valid_perplexity"] < 0.9 * untrained_perplexity(data["resumes"])
    # The exported package reproduces the live engine's validation perplexity at the last step.
    career(
        "export", "--run", str(whole), "--tag", "step0000016", "--package", str(tmp_path / "pkg")
    )
    package = load_model(str(tmp_path / "pkg"))
    assert not package.model.training
    assert perplexity(package.model, data["resumes"]) == pytest.approx(
        metrics["final_valid_perplexity"], rel=1e-5
    )


@pytest.mark.parametrize("stage", [1, 3])
def test_resume_with_another_number_of_workers(data, tmp_path, stage):
    """2 workers stop at update 8; 1 worker resumes: ZeRO state is re-partitioned (universal
    checkpoint), the loader re-plans the epoch (tests/test_stream.py checks that nobody is
    skipped or read twice)."""
    args = ["--data", data["resumes"], "--zero-stage", str(stage), "--updates", "16", "--eval-every", "8",
            "--checkpoint-every", "8", *COMMON]  # fmt: skip
    out = tmp_path / "run"
    career("pretrain", "--out", str(out), "--stop-after", "8", *args)
    resumed = career("pretrain", "--out", str(out), *args, "--workers", "1")
    assert "elastic: 2 -> 1 workers" in resumed.stdout + resumed.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["updates"] == 16 and metrics["world_size"] == 1
    (_, at_8), (_, at_16) = metrics["valid_history"]
    assert at_16 < at_8  # training went on from the checkpoint, not from scratch
    states = sorted((out / "checkpoints" / "step0000016").glob("*mp_rank_00_model_states.pt"))
    state = torch.load(states[0], map_location="cpu", weights_only=True)
    assert state["world_size"] == 1 and state["loader"][0]["catchup"]  # the re-planned epoch


def test_finetune_extends_the_vocabulary_and_refuses_a_mismatch(data, tmp_path):
    base = tmp_path / "base"
    career("pretrain", "--data", data["resumes"], "--out", str(base), "--updates", "12", *COMMON)
    fine = tmp_path / "fine"
    career("finetune", "--base", str(base / "package"), "--data", data["nlsy79"], "--out", str(fine),
           "--updates", "12", "--eval-every", "6", *COMMON)  # fmt: skip
    pre, post = load_model(str(base / "package")), load_model(str(fine / "package"))
    assert post.vocab.is_extension_of(pre.vocab)
    added = post.vocab.fields["job"][pre.vocab.size("job") :]
    assert {"unemployed", "not_in_labor_force", "education"} <= set(added)
    assert post.model.job_embedding.num_embeddings == post.vocab.size("job")
    assert {"gender", "ethnicity"} <= set(post.config["covariates"]) and "gender" not in pre.config[
        "covariates"
    ]
    metrics = json.loads((fine / "metrics.json").read_text())
    assert metrics["finetune"]["adapt"]["new_covariates"] == ["gender", "ethnicity"]
    refused = career("finetune", "--base", str(base / "package"), "--data", data["alone"], "--out", str(tmp_path / "x"),
                     *COMMON, check=False)  # fmt: skip
    assert refused.returncode == 2 and "does not extend" in refused.stderr


def test_ray_train_launcher(data, tmp_path, ray_address):
    out = tmp_path / "ray"
    run = career("pretrain", "--data", data["nlsy79"], "--out", str(out), "--preset", "tiny", "--updates", "6",
                 "--tokens-per-update", "1500", "--zero-stage", "1", "--ray-address", ray_address, "loader_workers=0")  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["updates"] == 6
    # Rank 0's progress reaches the driver's terminal as a bar, not as worker log lines.
    bar = [
        line for line in run.stderr.splitlines() if line.startswith("training") and "6/6" in line
    ]
    assert bar and "loss" in bar[-1] and "tokens/s" in bar[-1]
    assert (
        load_model(str(out / "package")).vocab.hash
        == json.loads((out / "package" / "config.json").read_text())["vocab_hash"]
    )
    assert any((out / "tb").iterdir())


def test_bad_inputs_are_refused_before_launch(data, tmp_path):
    def pretrain(data_url: str, *extra: str, check: bool = False) -> subprocess.CompletedProcess:
        return career("pretrain", "--data", data_url, "--out", str(tmp_path / "o"), *extra, *COMMON,
                      check=check)  # fmt: skip

    empty = tmp_path / "empty"
    empty.mkdir()
    proc = pretrain(str(empty))
    assert proc.returncode == 2 and "no manifest.json" in proc.stderr
    proc = pretrain(data["resumes"], "zero_stage=5")
    assert proc.returncode == 2 and "zero_stage" in proc.stderr
    proc = pretrain(data["resumes"], "optim.nonsense=1")
    assert proc.returncode == 2 and "unknown setting" in proc.stderr
    dry = pretrain(data["resumes"], "--dry-run", "--updates", "100", check=True)
    resolved = json.loads(dry.stdout)
    assert (
        resolved["deepspeed"]["train_batch_size"] == 2
        and resolved["config"]["optim"]["warmup_updates"] == 10
    )
    # GPU options resolve into DeepSpeed's config: torch autocast over fp32 weights, compilation.
    amp = pretrain(data["resumes"], "--dry-run", "--precision", "bf16-autocast", "compile=True",
                   check=True)  # fmt: skip
    resolved = json.loads(amp.stdout)
    assert resolved["deepspeed"]["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"}
    assert "bf16" not in resolved["deepspeed"] and resolved["config"]["compile"] is True
