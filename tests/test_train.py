"""Training with real DeepSpeed on CPU: gloo, 2 worker processes (torchrun; Ray Train runs are in test_cli_jobs.py).

- the validation perplexity falls below the order-1 Markov baseline of the same data (ZeRO 0, and
  ZeRO 1/2/3 in the uninterrupted runs of the resume test);
- precision: `auto` on a copy of a bf16 machine's /proc/cpuinfo trains a whole `career pretrain`
  in bf16 autocast (on an fp32-only one's, in fp32), and says so in metrics.json; whatever the
  precision (fp32, bf16 autocast, DeepSpeed's bf16), the validation perplexity a run records is
  its package's, to 1e-5 relative (validation runs the fp32 master weights, autocast off). The
  behaviours that could differ by precision run in fp32 and in bf16 autocast: exact and elastic
  resume, micro-batches = one batch, the package reproducing the run, the S3 round trip;
- a run stopped and resumed on the same workers ends with weights equal to an uninterrupted run
  (ZeRO 1/2/3); resumed on another number of workers it continues from the converted checkpoint
  (ZeRO 1/3 shrink to 1 worker, ZeRO 2 grows to 3);
- two micro-batches make the update one batch of the same people makes (one rank, in-process);
- the exported package reproduces the live engine's validation perplexity;
- fine-tuning grows the vocabulary and keeps every base weight; ZeRO-3 pretraining and
  fine-tuning on a survey whose validation split is one block finish (early stopping, the best
  checkpoint exported, old checkpoints pruned);
- bad inputs, and a dataset with fewer training blocks than workers, are refused and leave
  nothing behind;
- `--data` and `--out` on the S3 fixture: checkpoints uploaded and downloaded on resume, the
  package, TensorBoard and metrics.json written there.
"""

import json
import math
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from helpers import (
    BF16_CPU,
    FP32_CPU,
    career,
    career_all,
    digest,
    loader_perplexity,
    new_bucket,
    records_from_loader,
)

from data_shards.inputs import InputSpec
from data_shards.manifest import load_manifest
from data_shards.shard import ShardConfig, shard_dataset
from data_shards.stream import CareerLoader, StreamConfig
from trainer import engine as ds_engine
from trainer import safe_load
from trainer.accelerator import cpu_bf16_flags
from trainer.models.career import build_model
from trainer.models.markov import fit_markov
from trainer.package import load_model

pytestmark = pytest.mark.slow
COMMON = [
    "--preset",
    "tiny",
    "--tokens-per-update",
    "1500",
    "--launcher",
    "torchrun",
    "--workers",
    "2",
    "optim.lr=0.003",
    "loader_workers=0",
    "model.dropout=0.1",
]
#: A weight above ZeRO-3's persistence threshold (1e5 elements, stage3_param_persistence_threshold):
#: without one, ZeRO-3 keeps every tiny weight whole on each rank and a forward is no collective.
PARTITIONED = "model.d_ff=4096"


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
    survey = shard_dataset(
        InputSpec(format="synth", preset="nlsy79", people=500, seed=2),
        str(root),
        "nlsy79",
        small,
        f"{resumes.dataset_url}/vocab.json",
    )
    alone_input = InputSpec(format="synth", preset="nlsy79", people=300, seed=3)
    alone = shard_dataset(alone_input, str(root), "alone", small)
    one_block = shard_dataset(
        alone_input, str(root), "one_block", ShardConfig(people_per_block=1024)
    )
    return {
        "resumes": resumes.dataset_url,
        "nlsy79": survey.dataset_url,
        "alone": alone.dataset_url,
        "one_block": one_block.dataset_url,
        "opposed": opposed_dataset(root),
        "root": root,
    }


def opposed_dataset(root: Path) -> str:
    """Splits whose lessons are opposed: in train everyone stays in their first job, in valid
    everyone changes job every year. Training raises P(stay), so every update makes validation
    worse: early stopping is certain, not the luck of a loss curve. Valid is one block."""
    source = root / "opposed-input"
    source.mkdir()
    splits = {
        "train": (200, lambda i: ["1000"] * 5),
        "valid": (50, lambda i: ["1000", "2000"] * 2 + ["1000"]),
        "test": (10, lambda i: ["1000", "2000"] * 2 + ["1000"]),
    }
    for split, (people, jobs) in splits.items():
        (source / f"{split}.job").write_text(
            "".join(" ".join(jobs(i)) + "\n" for i in range(people))
        )
        (source / f"{split}.year").write_text("2000 2001 2002 2003 2004\n" * people)
        (source / f"{split}.id").write_text("".join(f"{split}{i}\n" for i in range(people)))
    spec = InputSpec(format="career-code", url=str(source))
    return shard_dataset(spec, str(root), "opposed", ShardConfig(people_per_block=64)).dataset_url


@pytest.fixture(scope="module")
def baselines(data):
    """Validation perplexities of the order-1 Markov model fitted on the training split by
    counting (trainer.models.markov.fit_markov): the bar every trained model must clear."""
    out = {}
    for name in ("resumes", "nlsy79"):
        tables = {
            split: pa.table(
                {"jobs": [r["jobs"] for r in records_from_loader(data[name], split).values()]}
            )
            for split in ("train", "valid")
        }
        markov = fit_markov(tables["train"], tables["valid"])
        out[name] = {"markov": markov.perplexity(tables["valid"])}
    return out


COVARIATES = ("year", "education", "location", "birth_year")  # those the resumes have


def initial_model(data_url: str):
    """The weights `career pretrain` starts from on the resumes (seed 0, the tiny preset)."""
    from data_shards.vocab import Vocabulary

    vocab = Vocabulary.load(f"{data_url}/vocab.json")
    torch.manual_seed(0)
    return build_model(
        {n: vocab.size(n) for n in ("job", *COVARIATES)}, "tiny", covariates=COVARIATES
    ).eval()


def untrained_perplexity(data_url: str) -> float:
    return loader_perplexity(initial_model(data_url), data_url)


def weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    return ds_engine.consolidated_state_dict(str(run / "checkpoints"), f"step{step:07d}")


def distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float(((a[k].detach() - b[k].detach()) ** 2).sum()) for k in a))


def tags(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").glob("step*"))


def scalars(run: Path, tag: str) -> dict[int, float]:
    """TensorBoard scalars `tag` of a run, by update (read from the event files' TFRecords)."""
    from tensorboardX.proto import event_pb2

    out = {}
    for path in sorted((run / "tb").glob("events.out.tfevents.*")):
        data, i = path.read_bytes(), 0
        while i < len(data):
            (length,) = struct.unpack("<Q", data[i : i + 8])
            event = event_pb2.Event.FromString(data[i + 12 : i + 12 + length])
            i += 12 + length + 4  # length, its crc, the record, its crc
            for value in event.summary.value:
                if value.tag == tag:
                    out[event.step] = value.simple_value
    return out


def adam_steps(checkpoint: Path) -> set[int]:
    """The `step` counts in the optimizer states of a DeepSpeed checkpoint (any ZeRO stage)."""
    found: set[int] = set()

    def walk(node):
        if isinstance(node, dict):
            if "step" in node and "exp_avg" in node:
                found.add(int(node["step"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list | tuple):
            for value in node:
                walk(value)

    for path in checkpoint.glob("*optim_states.pt"):
        walk(safe_load.load(path))
    return found


def test_loss_falls_below_the_markov_baseline(data, baselines, tmp_path):
    """ZeRO 0 (ZeRO 1/2/3 reach the same perplexities in test_stop_and_resume), precision `auto`
    on a CPU whose /proc/cpuinfo (a real copy) has native bf16: bf16 autocast, in every worker."""
    out = tmp_path / "run"
    career(
        "pretrain",
        "--data",
        data["resumes"],
        "--out",
        str(out),
        "--zero-stage",
        "0",
        "--updates",
        "36",
        "--eval-every",
        "12",
        *COMMON,
        env=BF16_CPU,
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["precision"] == "bf16-autocast"
    assert metrics["precision"]["training"] == "bf16-autocast"
    assert "auto: CPU with native bf16: avx512_bf16" in metrics["precision"]["training_why"]
    assert metrics["precision"]["validation"] == "fp32"
    # Validation ran the package's weights in fp32: the package gives the recorded perplexity.
    package = load_model(str(out / "package"))
    assert loader_perplexity(package.model, data["resumes"]) == pytest.approx(
        metrics["best_valid_perplexity"], rel=1e-5
    )
    (_, at_12), (_, at_24), (_, at_36) = metrics["valid_history"]
    assert at_36 < at_24 < at_12 < 0.9 * untrained_perplexity(data["resumes"])
    # Measured: Markov 4.89, the model 5.29 / 4.73 / 4.59 after 12 / 24 / 36 updates.
    assert at_36 < baselines["resumes"]["markov"]
    assert metrics["updates"] == 36 and metrics["tokens_seen"] > 36 * 1000
    # MFU uses the padded length T of the batches trained on, logged at every flush.
    lengths = scalars(out, "train/padded_length")
    assert set(lengths) >= {1, 10, 12, 36} and all(2 < t < 60 for t in lengths.values())


@pytest.mark.parametrize(("stage", "precision"), [(1, "fp32"), (2, "bf16-autocast"), (3, "fp32")])
def test_stop_and_resume(data, baselines, tmp_path, stage, precision):
    """Stopped after update 18: the same 2 workers resume bit-exactly; 1 worker resumes a copy
    (ZeRO 1/3: ZeRO state re-partitioned through a universal checkpoint, the loader re-plans the
    epoch; tests/test_stream.py checks that nobody is skipped or read twice). Bit-exact in bf16
    autocast too: a resumed run repeats the same computations, whatever their precision."""
    args = [
        "--data",
        data["resumes"],
        "--zero-stage",
        str(stage),
        "--updates",
        "36",
        "--eval-every",
        "18",
        "--checkpoint-every",
        "18",
        "--precision",
        precision,
        *COMMON,
    ]
    whole, split, elastic = tmp_path / "whole", tmp_path / "split", tmp_path / "elastic"
    pointers = tmp_path / "pointers"
    # Independent runs side by side (their start-ups overlap): the uninterrupted run and the one
    # stopped after update 18; then its resumption on the same workers, a copy's on others
    # (ZeRO 1 and 3 shrink to 1 worker; ZeRO 2 grows to 3: partitions re-cut into more pieces),
    # the export of update 36 and (ZeRO 2) a rerun of a run killed between its two pointers.
    _, stopped = career_all(
        ["pretrain", "--out", str(whole), *args],
        ["pretrain", "--out", str(split), "--stop-after", "18", *args],
    )
    assert "stopped after update 18" in stopped.stdout and not (split / "metrics.json").exists()
    shutil.copytree(split, elastic)
    workers = 3 if stage == 2 else 1
    checkpoints = digest(whole / "checkpoints")
    metrics = json.loads((whole / "metrics.json").read_text())
    later = [
        ["pretrain", "--out", str(split), *args],
        ["pretrain", "--out", str(elastic), *args, "--workers", str(workers)],
        ["export", "--run", str(whole), "--tag", "step0000036", "--package", str(tmp_path / "pkg")],
    ]
    if stage == 2:
        later.append(kill_between_the_two_pointers(whole, pointers, args, metrics))
    _, elastic_resumed, *_ = career_all(*later)
    assert digest(whole / "checkpoints") == checkpoints  # export modified no checkpoint
    a, b = weights(whole, 36), weights(split, 36)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert (
        json.loads((split / "metrics.json").read_text())["valid_history"]
        == metrics["valid_history"]
    )
    (_, at_18), (_, at_36) = metrics["valid_history"]
    assert at_36 < at_18 and at_36 < baselines["resumes"]["markov"]
    # The training-loss curve is carried by the checkpoint: the windows before the stop and those
    # after the first full one of the resumed run (the resumed run logs its first update alone).
    resumed = json.loads((split / "metrics.json").read_text())["train_history"]
    kept = [e for e in metrics["train_history"] if e[0] <= 18 or e[0] >= 30]
    again = [e for e in resumed if e[0] <= 18 or e[0] >= 30]
    assert len(kept) >= 3 and [e[0] for e in again] == [e[0] for e in kept]
    assert [e[1] for e in again] == pytest.approx([e[1] for e in kept])
    assert metrics["precision"]["training"] == precision
    # The exported package reproduces the live engine's validation perplexity at the last step,
    # whatever the training precision (validation runs the fp32 master weights).
    package = load_model(str(tmp_path / "pkg"))
    assert loader_perplexity(package.model, data["resumes"]) == pytest.approx(at_36, rel=1e-5)
    assert package.config["checkpoint"] == "step0000036"
    if stage == 1:
        check_export_refusals(whole, tmp_path)
    if stage == 2:
        check_the_pointers_rerun(pointers, metrics)
    check_elastic_resume(
        elastic, elastic_resumed, a, baselines["resumes"]["markov"], metrics, workers
    )


def check_export_refusals(run: Path, tmp_path: Path) -> None:
    """`career export` of a tag the run does not have, or of a run with no checkpoint: exit 2
    with what the run has, and no package written."""
    unknown = career(
        "export",
        "--run",
        str(run),
        "--tag",
        "step0000099",
        "--package",
        str(tmp_path / "p1"),
        check=False,
    )
    assert unknown.returncode == 2 and not (tmp_path / "p1").exists()
    assert "no checkpoint step0000099 in this run (its checkpoints: step0000018, step0000036)" in (
        unknown.stderr
    )
    (tmp_path / "empty-run").mkdir()
    empty = career(
        "export",
        "--run",
        str(tmp_path / "empty-run"),
        "--package",
        str(tmp_path / "p2"),
        check=False,
    )
    assert empty.returncode == 2 and "no checkpoint found" in empty.stderr
    assert not (tmp_path / "p2").exists()


def kill_between_the_two_pointers(
    whole: Path, out: Path, args: list[str], metrics: dict
) -> list[str]:
    """A run killed after writing `latest.json` for update 36 and before its `best.json` (still
    naming update 18): made from the uninterrupted run; the command that reruns it."""
    shutil.copytree(whole / "checkpoints", out / "checkpoints")
    assert metrics["best_step"] == 36  # the uninterrupted run's best (at_36 < at_18 above)
    (out / "checkpoints" / "best.json").write_text(
        json.dumps(
            {"tag": "step0000018", "step": 18, "valid_perplexity": metrics["valid_history"][0][1]}
        )
    )
    return ["pretrain", "--out", str(out), *args]


def check_the_pointers_rerun(out: Path, metrics: dict) -> None:
    """The rerun had nothing left to train, and must export update 36, the best by the
    validation history its checkpoint carries (it exported update 18 once)."""
    again = json.loads((out / "metrics.json").read_text())
    assert again["best_step"] == 36 and again["valid_history"] == metrics["valid_history"]
    assert json.loads((out / "checkpoints" / "best.json").read_text())["tag"] == "step0000036"
    assert load_model(str(out / "package")).config["checkpoint"] == "step0000036"


def check_elastic_resume(out: Path, resumed, whole_36, markov: float, whole, workers: int) -> None:
    """`resumed`: the finished rerun of a copy of the stopped run on `workers` workers."""
    at_18 = weights(out, 18)
    assert f"elastic: 2 -> {workers} workers" in resumed.stdout + resumed.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["updates"] == 36 and metrics["world_size"] == workers
    assert metrics["valid_history"][0] == whole["valid_history"][0]  # carried by the checkpoint
    assert metrics["valid_history"][1][1] < markov
    states = sorted((out / "checkpoints" / "step0000036").glob("*mp_rank_00_model_states.pt"))
    state = torch.load(states[0], map_location="cpu", weights_only=True)
    assert state["world_size"] == workers and len(state["loader"]) == workers
    assert state["loader"][0]["catchup"]  # the re-planned epoch
    # Adam's moments came from the converted checkpoint: a fresh optimizer would count 18 steps.
    assert adam_steps(out / "checkpoints" / "step0000036") == {36}
    # So did the weights: 18 more updates on other batches end near the uninterrupted run (both
    # continue from the same update-18 weights), nearer than 18 updates move weights at all; a
    # run restarted from fresh weights would end at least that far away (measured: 0.3 vs 1.8).
    at_36 = weights(out, 36)
    assert distance(at_36, whole_36) < 0.5 * distance(at_18, whole_36)


#: bf16's unit roundoff: 8 significant bits.
BF16_EPS = 2.0**-8


@pytest.mark.parametrize("precision", ["fp32", "bf16-autocast"])
def test_two_micro_batches_make_the_update_one_batch_makes(
    data, monkeypatch, single_process_group, precision
):
    """The same people as one batch or as two micro-batches (gradient accumulation): the same loss,
    gradient norm and weights after two updates (ZeRO-2, the default stage; one rank, in-process).
    The gradient norm is what catches a wrong loss scale: Adam's first steps hardly depend on it.

    fp32: equal to 1e-5. bf16 autocast: each product rounds to 8 significant bits (unit roundoff
    u = 2^-8) and a row's products may round differently in a batch of another shape, so loss and
    gradient norm agree to a few u (2u allowed, 7.8e-3; a wrong loss scale is off by 2x); a weight
    whose gradient is within rounding of zero can take Adam's step the other way, so weights
    agree to 2 x lr per update, and the two runs end far nearer each other than to the start
    (measured here: loss to 1e-6, gradient norm to 9e-4, weights 0.8% of the way apart)."""

    from data_shards.dataset import load_dataset
    from trainer.accelerator import select_accelerator
    from trainer.config import OptimConfig, TrainConfig
    from trainer.distributed import run_info
    from trainer.step import NLLModule, run_update

    for name, value in {
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29533",
    }.items():
        monkeypatch.setenv(name, value)
    select_accelerator(use_gpu=False)
    dataset = load_dataset(data["resumes"])
    loader = CareerLoader(
        data["resumes"], StreamConfig(tokens_per_update=1500, loop=False), num_workers=0
    )
    batches = [b for _, b in zip(range(2), loader, strict=False)]

    def halves(batch):
        n = len(batch["lengths"]) // 2
        return [
            {k: v[part] for k, v in batch.items() if isinstance(v, torch.Tensor)}
            for part in (slice(0, n), slice(n, None))
        ]

    names, results = ("inputs", "targets", *dataset.covariates), {}
    for micro in (1, 2):
        config = TrainConfig(
            preset="tiny",
            micro_batches=micro,
            tokens_per_update=1500,
            updates=2,
            precision=precision,
            optim=OptimConfig(lr=0.003, warmup_updates=0),
        ).resolve(1, False)
        engine, _, _ = ds_engine.initialize(NLLModule(initial_model(data["resumes"])), config, 1)
        assert engine.torch_autocast_enabled() == (precision == "bf16-autocast")
        engine.train()
        rows = []
        for batch in batches:
            update = run_update(engine, [batch] if micro == 1 else halves(batch), run_info(), names)
            rows.append(
                (
                    float(update.nll_sum / update.token_count),
                    float(engine.get_global_grad_norm()),
                )
            )
        results[micro] = (
            rows,
            {k: v.detach().clone() for k, v in engine.module.state_dict().items()},
        )
    (one, w1), (two, w2) = results[1], results[2]
    start = {f"model.{k}": v for k, v in initial_model(data["resumes"]).state_dict().items()}
    assert distance(w1, start) > 0.1  # the updates moved the weights ...
    if precision == "fp32":
        assert np.allclose(one, two, rtol=1e-5, atol=0)
        assert all(torch.allclose(w1[k], w2[k], rtol=0, atol=1e-5) for k in w1)  # ... alike
        return
    assert np.allclose(one, two, rtol=2 * BF16_EPS, atol=0), (one, two)
    step_bound = 2 * 0.003 * 2  # two updates, each at most lr one way or the other
    assert all(torch.allclose(w1[k], w2[k], rtol=0, atol=step_bound) for k in w1)
    # ... and alike: the two ways apart by a small part of how far they moved (measured 0.8%)
    assert distance(w1, w2) < 0.05 * distance(w1, start)


def test_finetune_extends_the_vocabulary_and_refuses_a_mismatch(data, baselines, tmp_path):
    base = tmp_path / "base"
    # precision `auto` on a CPU without native bf16 (its /proc/cpuinfo): fp32 in every worker
    career(
        "pretrain",
        "--data",
        data["resumes"],
        "--out",
        str(base),
        "--updates",
        "12",
        *COMMON,
        env=FP32_CPU,
    )
    trained = json.loads((base / "metrics.json").read_text())
    assert trained["precision"]["training"] == "fp32" == trained["config"]["precision"]
    assert "auto: CPU without native bf16" in trained["precision"]["training_why"]
    fine, split = tmp_path / "fine", tmp_path / "fine-split"
    finetune = [
        "finetune",
        "--base",
        str(base / "package"),
        "--data",
        data["nlsy79"],
        "--updates",
        "12",
        "--eval-every",
        "6",
        *COMMON,
    ]
    # A fine-tuning run stopped after update 6 and rerun resumes exactly (the adapted model is
    # rebuilt, then the checkpoint's weights, optimizer, loader and RNG state are loaded over it).
    _, stopped = career_all(
        [*finetune, "--out", str(fine)], [*finetune, "--out", str(split), "--stop-after", "6"]
    )
    assert "stopped after update 6" in stopped.stdout
    resumed = career(*finetune, "--out", str(split))
    assert "resumed from step0000006" in resumed.stdout + resumed.stderr
    a, b = weights(fine, 12), weights(split, 12)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((split / "metrics.json").read_text())["resumed_from"] == 6
    pre, post = load_model(str(base / "package")), load_model(str(fine / "package"))
    assert post.vocab.is_extension_of(pre.vocab)
    added = post.vocab.fields["job"][pre.vocab.size("job") :]
    assert {"unemployed", "not_in_labor_force", "education"} <= set(added)
    assert post.model.job_embedding.num_embeddings == post.vocab.size("job")
    assert {"gender", "ethnicity"} <= set(post.config["covariates"]) and "gender" not in pre.config[
        "covariates"
    ]
    # Every covariate embedding is sized for the survey's vocabulary (grown where it is larger).
    for name, embedding in post.model.covariate_embeddings.items():
        assert embedding.num_embeddings == post.vocab.size(name), name
    metrics = json.loads((fine / "metrics.json").read_text())
    adapt = metrics["finetune"]["adapt"]
    assert adapt["new_covariates"] == ["gender", "ethnicity"]
    assert adapt["new_tokens"]["job"] == len(added) == adapt["new_job_tokens"]
    # Loading the base's weights dropped nothing: only the new covariates had none to load.
    assert adapt["missing_keys"] == [
        "covariate_embeddings.ethnicity.weight",
        "covariate_embeddings.gender.weight",
    ]
    assert adapt["unexpected_keys"] == []
    assert metrics["best_valid_perplexity"] < baselines["nlsy79"]["markov"]
    refused = career(
        "finetune",
        "--base",
        str(base / "package"),
        "--data",
        data["alone"],
        "--out",
        str(tmp_path / "x"),
        *COMMON,
        check=False,
    )
    assert refused.returncode == 2 and "does not extend" in refused.stderr
    assert not (tmp_path / "x").exists()  # a refused command leaves nothing behind


def test_zero3_on_a_survey_with_one_validation_block(data, tmp_path):
    """The valid split is one block: on 2 workers one rank has no validation data, which ZeRO-3
    once made hang (its forwards are collectives). Pretraining in DeepSpeed's bf16 (what GPUs
    use) records its package's perplexity. Fine-tuning (fp32) on splits whose lessons are
    opposed worsens validation at every evaluation, so with patience 2 it must stop after the
    third (update 6 of 40), export the first evaluation's checkpoint (not the last) and keep only
    that one and the newest."""
    valid = load_manifest(data["opposed"]).shards_of("valid")
    assert sum(shard.blocks for shard in valid) == 1
    zero3 = ["--data", data["opposed"], "--zero-stage", "3", *COMMON]
    base, fine = tmp_path / "base", tmp_path / "fine"
    career(
        "pretrain",
        "--out",
        str(base),
        "--updates",
        "6",
        "--eval-every",
        "3",
        *zero3,
        PARTITIONED,
        "--precision",
        "bf16",
        timeout=240,
    )
    pretrained = json.loads((base / "metrics.json").read_text())
    assert len(pretrained["valid_history"]) == 2 and pretrained["precision"]["training"] == "bf16"
    assert loader_perplexity(load_model(str(base / "package")).model, data["opposed"]) == (
        pytest.approx(pretrained["best_valid_perplexity"], rel=1e-5)
    )
    finetuned = career(
        "finetune",
        "--base",
        str(base / "package"),
        "--out",
        str(fine),
        "--updates",
        "40",
        "--eval-every",
        "2",
        "--checkpoint-every",
        "2",
        *zero3,
        "--precision",
        "fp32",
        "patience=2",
        "keep_checkpoints=1",
        timeout=240,
    )
    metrics = json.loads((fine / "metrics.json").read_text())
    steps, history = zip(*metrics["valid_history"], strict=True)
    assert "early stopping: no improvement in 2 evaluations" in finetuned.stdout + finetuned.stderr
    assert steps == (2, 4, 6) and metrics["updates"] == 6
    assert history[0] < history[1] < history[2]  # every evaluation worse than the one before
    assert metrics["best_step"] == 2 and metrics["best_valid_perplexity"] == history[0]
    assert tags(fine) == ["step0000002", "step0000006"]  # pruned: the newest one and the best
    package = load_model(str(fine / "package"))
    assert package.config["checkpoint"] == "step0000002"
    best_weights, last_weights = weights(fine, 2), weights(fine, 6)
    exported = package.model.state_dict()
    for name, value in best_weights.items():
        assert torch.equal(exported[name.removeprefix("model.")], value), name
    assert distance(best_weights, last_weights) > 0


def test_bad_inputs_are_refused_before_launch(data, tmp_path):
    def pretrain(data_url: str, *extra: str, check: bool = False) -> subprocess.CompletedProcess:
        return career(
            "pretrain",
            "--data",
            data_url,
            "--out",
            str(tmp_path / "o"),
            *extra,
            *COMMON,
            check=check,
        )

    empty = tmp_path / "empty"
    empty.mkdir()
    proc = pretrain(str(empty))
    assert proc.returncode == 2 and "no manifest.json" in proc.stderr
    proc = pretrain(data["resumes"], "zero_stage=5")
    assert proc.returncode == 2 and "zero_stage" in proc.stderr
    proc = pretrain(data["resumes"], "optim.nonsense=1")
    assert proc.returncode == 2 and "unknown setting" in proc.stderr
    # One training block for two workers: refused with the fix, never left waiting.
    proc = career(
        "pretrain",
        "--data",
        data["one_block"],
        "--out",
        str(tmp_path / "o"),
        *COMMON,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 2 and "fewer training blocks (1) than workers (2)" in proc.stderr
    assert "--people-per-block" in proc.stderr and not (tmp_path / "o").exists()
    dry = pretrain(data["resumes"], "--dry-run", "--updates", "100", check=True)
    resolved = json.loads(dry.stdout)
    assert (
        resolved["deepspeed"]["train_batch_size"] == 2
        and resolved["config"]["optim"]["warmup_updates"] == 10
    )
    # The CPU defaults are stated: precision by this CPU's bf16 flags, and the dropout kernel.
    native = cpu_bf16_flags()
    assert resolved["config"]["precision"] == ("bf16-autocast" if native else "fp32")
    assert ("torch_autocast" in resolved["deepspeed"]) == bool(native)
    notes = resolved["config"]["notes"]
    assert any(n.startswith("precision auto -> ") and "CPU" in n for n in notes)
    assert "dropout: hash dropout (C kernel)" in notes
    # GPU options resolve into DeepSpeed's config: torch autocast over fp32 weights, compilation.
    amp = pretrain(
        data["resumes"], "--dry-run", "--precision", "bf16-autocast", "compile=True", check=True
    )
    resolved = json.loads(amp.stdout)
    assert resolved["deepspeed"]["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"}
    assert "bf16" not in resolved["deepspeed"] and resolved["config"]["compile"] is True


def test_training_with_data_and_out_on_s3(s3_endpoint, ray_address):
    """`--data` and `--out` on a real S3 endpoint (moto): checkpoints are uploaded, and downloaded
    again when the run resumes; the package, TensorBoard events and metrics.json land there; the
    package opens from S3 and gives the recorded perplexity. Storage options travel to the
    torchrun workers in a 0600 file. In fp32 and in bf16 autocast, two runs side by side."""
    import s3fs

    root, options = new_bucket(s3_endpoint, "train")
    bucket = root.removeprefix("s3://")
    fs = s3fs.S3FileSystem(**options)
    dataset = shard_dataset(
        InputSpec(format="synth", preset="nlsy79", people=400, seed=4),
        f"s3://{bucket}",
        "survey",
        ShardConfig(people_per_block=64),
        storage_options=options,
    ).dataset_url
    precisions = ("fp32", "bf16-autocast")
    runs = {
        p: [
            "pretrain",
            "--data",
            dataset,
            "--out",
            f"s3://{bucket}/run-{p}",
            "--storage-options",
            json.dumps(options),
            "--updates",
            "6",
            "--eval-every",
            "3",
            "--checkpoint-every",
            "3",
            "--precision",
            p,
            *COMMON,
        ]
        for p in precisions
    }
    for p, stopped in zip(
        precisions, career_all(*[[*a, "--stop-after", "3"] for a in runs.values()]), strict=True
    ):
        assert "stopped after update 3" in stopped.stdout
        assert fs.exists(f"{bucket}/run-{p}/checkpoints/step0000003/career.json")
    # (each run stages its checkpoints in a fresh private folder: the resume downloads them)
    for p, resumed in zip(precisions, career_all(*runs.values()), strict=True):
        assert "resumed from step0000003" in resumed.stdout + resumed.stderr
        metrics = json.loads(fs.cat(f"{bucket}/run-{p}/metrics.json"))
        assert metrics["updates"] == 6 and [s for s, _ in metrics["valid_history"]] == [3, 6]
        assert metrics["precision"]["training"] == p and metrics["resumed_from"] == 3
        assert fs.find(f"{bucket}/run-{p}/tb")
        assert fs.exists(f"{bucket}/run-{p}/checkpoints/step0000006")
        package = load_model(f"s3://{bucket}/run-{p}/package", options)
        assert loader_perplexity(package.model, dataset, storage_options=options) == (
            pytest.approx(metrics["best_valid_perplexity"], rel=1e-5)
        )
