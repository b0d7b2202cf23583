"""`career run` end to end as a user runs it: an experiment file with a relative store, from an
empty folder, through Ray Train workers (which run in another working directory); then the same
experiment killed mid-run and resumed with `--run-id`, to the same final table."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import new_bucket

CAREER = str(Path(sys.executable).with_name("career"))
EXPERIMENT = """\
store: store
resumes: {name: resumes, simulate: resumes, people: 1500}
surveys:
  - {name: nlsy79, simulate: nlsy79, people: 400, people_per_block: 32}
  - {name: psid, simulate: psid, people: 400, people_per_block: 32}
pretrain: {preset: tiny, updates: 6, tokens_per_update: 1500, eval_every: 3}
finetune: {preset: tiny, updates: 4, tokens_per_update: 1000, eval_every: 2}
baselines: {scratch: {}, regression: {preset: tiny, lr: 0.05}, markov: {}}
workers: 2
survey_workers: 1
forecast: {cutoff: 2014, models: [finetuned, markov], paths: 40}
explain: {people: 2}
wages: {gap: gender, bootstrap: 20, folds: 2}
"""
MODELS = {"finetuned", "scratch", "regression", "markov"}


def perplexities(run: Path) -> dict[str, dict[str, float]]:
    out = {}
    for survey in ("nlsy79", "psid"):
        metrics = json.loads((run / "surveys" / survey / "evaluation" / "metrics.json").read_text())
        out[survey] = {m: v[survey]["perplexity"]["value"] for m, v in metrics["metrics"].items()}
    return out


@pytest.fixture(scope="module")
def finished(tmp_path_factory, ray_address):
    """One whole run, from an empty folder with relative paths."""
    folder = tmp_path_factory.mktemp("career-run")
    (folder / "exp.yaml").write_text(EXPERIMENT)
    proc = subprocess.run(
        [CAREER, "run", "--config", "exp.yaml", "--run-id", "first", "--ray-address", ray_address],
        capture_output=True,
        text=True,
        cwd=folder,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder, proc


@pytest.mark.slow
def test_the_whole_experiment_from_an_empty_folder(finished):
    folder, proc = finished
    run = folder / "store" / "first"
    assert "Traceback" not in proc.stderr
    assert (folder / "exp.yaml").read_text() == EXPERIMENT  # its one input, left as it was
    for step in (
        "shard resumes",
        "shard nlsy79",
        "shard psid",
        "pretrain",
        "survey nlsy79",
        "survey psid",
    ):
        assert f"{step}:" in proc.stdout
    resumes = json.loads((run / "datasets" / "resumes" / "vocab.json").read_text())
    for survey in ("nlsy79", "psid"):
        vocab = json.loads((run / "datasets" / survey / "vocab.json").read_text())
        assert vocab["parent_hash"] == resumes["hash"]  # the surveys extend the resume vocabulary
        for model in MODELS:
            assert (run / "surveys" / survey / model / "package" / "config.json").exists()
        assert set(perplexities(run)[survey]) == MODELS
    steps = {s["step"]: s for s in json.loads((run / "steps.json").read_text())}
    assert steps["pretrain"]["status"] == "done" and steps["survey psid"]["seconds"] > 0
    finetune = json.loads((run / "surveys" / "nlsy79" / "finetuned" / "metrics.json").read_text())
    assert finetune["finetune"]["base_package"].endswith("first/pretrain/package")
    # The survey task trained its one-worker models itself, on its own node, and each model's
    # time is split (what benchmarks/pipeline.py adds up): the updates are most of the loop.
    assert finetune["worker_nodes"] == [steps["survey nlsy79"]["node"]]
    phases = finetune["phase_seconds"]
    assert set(phases) == {"start_up", "updates", "validation", "checkpoints", "export"}
    assert 0 < phases["updates"] <= finetune["wall_seconds"]
    for model in ("scratch", "regression"):  # every model the loop trained, not only the first
        trained = json.loads((run / "surveys" / "nlsy79" / model / "metrics.json").read_text())
        assert set(trained["phase_seconds"]) == set(phases)
    # The comparison table of each survey is printed at the end, with the oracle row.
    assert proc.stdout.count("oracle") >= 2 and "run first done" in proc.stdout
    # ... and the report, from the run's metrics and scores (tests/test_report.py checks it).
    assert "report:" in proc.stdout and (run / "report" / "report.html").exists()
    assert "report" in steps and (run / "report" / "report.md").read_text().count("oracle") >= 2
    # Forecasting: the cut datasets, the models retrained on them and the forecast of each.
    for survey in ("nlsy79", "psid"):
        cut = json.loads((run / "datasets" / f"{survey}-until-2014" / "manifest.json").read_text())
        assert cut["config"]["until"] == 2014
        forecast = json.loads((run / "surveys" / survey / "forecast" / "forecast.json").read_text())
        assert list(forecast["models"]) == ["finetuned", "markov"]
        assert forecast["models"]["finetuned"]["paths"] == 40
        assert forecast["models"]["finetuned"]["scored_people"] > 0
        base = json.loads(
            (
                run / "surveys" / survey / "forecast" / "models" / "finetuned" / "metrics.json"
            ).read_text()
        )
        assert base["finetune"]["base_package"].endswith("first/pretrain/package")
    assert "Forecasting" in (run / "report" / "report.md").read_text()
    assert "Forecast from 2014" in (run / "report" / "report.md").read_text()
    # Rationales from the word-dropout fine-tune.
    for survey in ("nlsy79", "psid"):
        explained = json.loads(
            (run / "surveys" / survey / "explain" / "rationales.json").read_text()
        )
        assert explained["word_dropout"] == 0.5 and 1 <= len(explained["people"]) <= 2
        assert all(p["year"] and p["rows"] for p in explained["people"])
    assert "## Rationales" in (run / "report" / "report.md").read_text()
    # The wage model of the fine-tuned CAREER and the history-adjusted gender gap.
    for survey in ("nlsy79", "psid"):
        wages = json.loads((run / "surveys" / survey / "wages" / "wages.json").read_text())
        assert set(wages["table"]["models"]) == {"mincer", "history"}
        assert set(wages["gap"]["estimates"]) == {"raw", "mincer_ols", "history_dml"}
    assert "## Wage model and wage gap" in (run / "report" / "report.md").read_text()


#: Where the driver is killed, in order: a file (a glob under the run) that says the step has
#: begun, and the longest seeded delay after it, in seconds.
KILL_POINTS = [
    ("datasets/resumes/*", 1.0),  # sharding the resumes
    ("pretrain/checkpoints/latest.json", 0.3),  # pretraining, past its first checkpoint
    ("surveys/*/finetuned/checkpoints/latest.json", 2.0),  # the surveys' training
    ("surveys/*/evaluation/*", 1.0),  # their evaluation
    ("surveys/*/forecast/models/*/metrics.json", 1.0),  # forecasting, wages, rationales
]


@pytest.mark.slow
def test_a_run_on_s3_killed_in_every_step_and_resumed_to_the_same_outputs(
    finished, s3_endpoint, ray_address
):
    """The same experiment with `--store s3://…` (moto), its driver SIGKILLed (with every process
    it started) at a seeded random moment of each step in turn, and rerun with `--run-id` after
    each kill: the last rerun finishes with the shards byte for byte those of the uninterrupted
    local run and the same tables. Each rerun skips the completed steps and continues training
    from the object store's checkpoints; nothing is written locally; the secret never printed."""
    import random

    import s3fs

    folder, _ = finished
    root, options = new_bucket(s3_endpoint, "run")
    (folder / "options.json").write_text(json.dumps(options))
    fs = s3fs.S3FileSystem(**options)
    run = f"{root.removeprefix('s3://')}/runs/second"
    args = [
        CAREER,
        "run",
        "--config",
        "exp.yaml",
        "--store",
        f"{root}/runs",
        "--run-id",
        "second",
        "--storage-options",
        "@options.json",
        "--ray-address",
        ray_address,
    ]
    seeded = random.Random(26)
    kills = []
    for pattern, longest in KILL_POINTS:
        driver = subprocess.Popen(
            args,
            cwd=folder,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 600
        while driver.poll() is None and time.monotonic() < deadline:
            fs.invalidate_cache()
            if fs.glob(f"{run}/{pattern}"):
                time.sleep(seeded.uniform(0, longest))
                break
            time.sleep(0.1)
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)  # the driver and the processes it started
            fs.invalidate_cache()
            kills.append((pattern, fs.exists(f"{run}/pretrain/metrics.json")))
        driver.wait()
    assert len(kills) == len(KILL_POINTS), kills  # the run never got to the end by itself
    resumed = subprocess.run(args, capture_output=True, text=True, cwd=folder, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "(resumed)" in resumed.stdout and "shard resumes: done before, skipped" in resumed.stdout
    fs.invalidate_cache()
    # Pretraining killed before its end continued from a checkpoint on the object store, not
    # from scratch.
    pretrained = json.loads(fs.cat(f"{run}/pretrain/metrics.json"))
    if not dict(kills)[KILL_POINTS[1][0]]:
        assert 1 <= pretrained["resumed_from"] <= pretrained["updates"], kills
    # The shards, byte for byte; the tables, to the last digit.
    local = folder / "store" / "first" / "datasets"
    for path in sorted(local.rglob("*.tar")):
        relative = path.relative_to(local).as_posix()
        assert fs.cat(f"{run}/datasets/{relative}") == path.read_bytes(), relative
    first = perplexities(folder / "store" / "first")
    for survey, models in first.items():
        metrics = json.loads(fs.cat(f"{run}/surveys/{survey}/evaluation/metrics.json"))
        again = {m: v[survey]["perplexity"]["value"] for m, v in metrics["metrics"].items()}
        assert again == pytest.approx(models, rel=1e-6), survey
    assert fs.exists(f"{run}/report/report.html")
    assert not (folder / "store" / "second").exists()  # nothing fell back to a local folder
    assert options["secret"] not in resumed.stdout + resumed.stderr


@pytest.mark.slow
def test_resume_refuses_another_experiment(finished, ray_address):
    folder, _ = finished
    (folder / "other.yaml").write_text(EXPERIMENT.replace("updates: 4", "updates: 5"))
    proc = subprocess.run(
        [
            CAREER,
            "run",
            "--config",
            "other.yaml",
            "--run-id",
            "first",
            "--ray-address",
            ray_address,
        ],
        capture_output=True,
        text=True,
        cwd=folder,
    )
    assert proc.returncode == 2 and "started with another experiment" in proc.stderr


@pytest.mark.slow
def test_a_run_on_a_multi_node_cluster_survives_a_lost_node(finished, s3_endpoint, ray_cluster):
    """The same experiment on a cluster of three nodes, on S3: pretraining's workers and the
    survey tasks are spread over the nodes; a worker node is lost while the surveys train (with
    whatever ran there: a survey task, a training worker); the run finishes by itself with the
    one-node run's tables."""
    import s3fs

    folder, _ = finished
    root, options = new_bucket(s3_endpoint, "cluster")
    (folder / "cluster-options.json").write_text(json.dumps(options))
    fs = s3fs.S3FileSystem(**options)
    run = f"{root.removeprefix('s3://')}/runs/spread"
    args = [
        CAREER,
        "run",
        "--config",
        "exp.yaml",
        "--store",
        f"{root}/runs",
        "--run-id",
        "spread",
        "--storage-options",
        "@cluster-options.json",
        "--ray-address",
        ray_cluster.address,
    ]
    driver = subprocess.Popen(
        args, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    surveys_training = f"{run}/surveys/nlsy79/finetuned/checkpoints/latest.json"
    deadline = time.monotonic() + 600
    while driver.poll() is None and time.monotonic() < deadline:
        fs.invalidate_cache()
        if fs.exists(surveys_training):
            break
        time.sleep(0.2)
    busy = {ray_cluster.node_of(p) for p in ray_cluster.worker_processes("ray::")}
    lost = next((n for n in ray_cluster.workers if n.node_id in busy), ray_cluster.workers[0])
    try:
        ray_cluster.kill_worker(lost)
        out, err = driver.communicate(timeout=900)
    finally:
        ray_cluster.add_worker()
    assert driver.returncode == 0, err[-3000:]
    fs.invalidate_cache()
    pretrained = json.loads(fs.cat(f"{run}/pretrain/metrics.json"))
    assert len(set(pretrained["worker_nodes"])) == 2  # one CPU a node: two nodes
    steps = {s["step"]: s for s in json.loads(fs.cat(f"{run}/steps.json"))}
    assert steps["survey nlsy79"]["node"] != steps["survey psid"]["node"]  # spread
    assert len(steps["shard resumes"]["nodes"]) > 1
    first = perplexities(folder / "store" / "first")
    for survey, models in first.items():
        metrics = json.loads(fs.cat(f"{run}/surveys/{survey}/evaluation/metrics.json"))
        again = {m: v[survey]["perplexity"]["value"] for m, v in metrics["metrics"].items()}
        assert again == pytest.approx(models, rel=1e-6), survey
