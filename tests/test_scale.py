"""`career scale` as a user runs it: a grid file with relative paths, from an empty folder, through
Ray tasks and Ray Train; its driver killed once a point has checkpointed and the study rerun to
the end (the unfinished points continue from their checkpoints); a rerun of the finished study
trains nothing. Plus the grid's refusals and `--plan`."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from cluster.scale.grid import Study, count_label, from_dict
from cluster.scale.job import ScaleSettings

CAREER = str(Path(sys.executable).with_name("career"))
GRID = """\
models:
  - tiny
  - {name: wide, preset: tiny, d_model: 48, n_head: 2, d_ff: 96}
people: [300, 1200]
corpus: {name: corpus, simulate: resumes, people: 1600, people_per_block: 100}
pretrain: {updates: 24, tokens_per_update: 1500, lr: 0.003, eval_every: 6, patience: 2}
survey: {name: psid, simulate: psid, people: 500, people_per_block: 50}
finetune: {updates: 6, tokens_per_update: 1000, eval_every: 3}
workers_per_point: 1
"""
PLOTS = ("loss_vs_parameters.png", "loss_vs_tokens.png", "survey_vs_corpus.png")


def test_grid_points_names_and_refusals(tmp_path):
    study = from_dict(
        {
            "models": ["tiny", {"name": "w", "preset": "tiny", "d_model": 48}],
            "people": [50_000, 10_000],
            "tokens": [2_000_000],
        }
    )
    names = [p.name for p in study.points()]
    assert names == ["tiny-10k-t2M", "tiny-50k-t2M", "w-10k-t2M", "w-50k-t2M"]
    assert all(p.updates == 2_000_000 // study.pretrain.tokens_per_update for p in study.points())
    assert study.corpus_people() > 50_000  # enough simulated people for the largest train prefix
    assert count_label(2500) == "2.5k" and count_label(24_000_000) == "24M"
    for bad, message in (
        ({"models": ["tiny"], "people": [10, 10]}, "must not repeat"),
        ({"models": ["tiny"], "people": []}, "at least one"),
        ({"models": ["huge"], "people": [10]}, "unknown preset"),
        ({"models": ["tiny"], "people": [10], "pretrian": {}}, "pretrian"),
    ):
        with pytest.raises(ValueError, match=message):
            from_dict(bad)
    grid = tmp_path / "grid.yaml"
    grid.write_text("models: [tiny]\npeople: [100]\npretrain: {updates: 5, eval_evry: 2}\n")
    proc = subprocess.run(
        [CAREER, "scale", "--config", "grid.yaml", "--out", "s", "--plan"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "grid.yaml" in proc.stderr and "eval_evry" in proc.stderr
    assert not (tmp_path / "s").exists()
    with pytest.raises(ValueError, match="not a number"):
        ScaleSettings(out="s", people="10k,lots").study()


def test_plan_prints_points_parameters_flops_and_device_hours(tmp_path):
    proc = subprocess.run(
        [CAREER, "scale", "--grid", "paper", "--out", "s", "--plan"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for text in ("large-24M", "small-100k", "GPU-hours", "FLOPs"):
        assert text in proc.stdout, text
    assert not (tmp_path / "s").exists()  # a plan writes nothing
    dry = subprocess.run(
        [CAREER, "scale", "--models", "tiny", "--people", "1k,4k", "--out", "s", "--dry-run"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert dry.returncode == 0 and "tiny-4k" in dry.stdout and "CPU-hours" in dry.stdout


@pytest.fixture(scope="module")
def killed_and_finished(tmp_path_factory, ray_address):
    """The study's driver killed once a point checkpointed, then rerun to the end."""
    folder = tmp_path_factory.mktemp("career-scale")
    (folder / "grid.yaml").write_text(GRID)
    args = [
        CAREER,
        "scale",
        "--config",
        "grid.yaml",
        "--out",
        "study",
        "--ray-address",
        ray_address,
    ]
    driver = subprocess.Popen(
        args,
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 600
    pattern = str(folder / "study" / "points" / "*" / "checkpoints" / "latest.json")
    while driver.poll() is None and time.monotonic() < deadline and not glob.glob(pattern):
        time.sleep(0.5)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    assert glob.glob(pattern), "no point reached its first checkpoint"
    # The points the kill interrupted after a checkpoint: these must continue from it.
    unfinished = [
        p
        for p in glob.glob(str(folder / "study" / "points" / "*"))
        if not os.path.exists(os.path.join(p, "metrics.json"))
        and os.path.exists(os.path.join(p, "checkpoints", "latest.json"))
    ]
    resumed = subprocess.run(args, cwd=folder, capture_output=True, text=True, timeout=1200)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return folder, args, unfinished, resumed


@pytest.mark.slow
def test_a_killed_study_resumes_and_writes_table_fit_plots_report(killed_and_finished):
    folder, _, unfinished, resumed = killed_and_finished
    study = folder / "study"
    assert "(resumed)" in resumed.stdout
    assert (folder / "grid.yaml").read_text() == GRID  # its one input, left as it was
    points = pd.read_parquet(study / "points.parquet")
    assert sorted(points["name"]) == ["tiny-1.2k", "tiny-300", "wide-1.2k", "wide-300"]
    # Nested subsets: each point trained on exactly its prefix; the larger holds more job-years.
    assert set(points["people"]) == {300, 1200}
    for _, group in points.groupby("model"):
        small, large = group.sort_values("people")["corpus_tokens"]
        assert 0 < small < large
    assert (points["unique_tokens"] <= points["corpus_tokens"] + 1e-9).all()
    assert (points["unique_tokens"] <= points["tokens_seen"] + 1e-9).all()
    assert (points["non_embedding_parameters"] < points["parameters"]).all()
    wide, tiny = (
        points[points["model"] == m]["non_embedding_parameters"].iloc[0] for m in ("wide", "tiny")
    )
    assert wide > tiny
    assert points["best_valid_loss"].between(0.1, 8).all()
    assert points["survey_test_perplexity"].notna().all() and (points["survey"] == "psid").all()
    # The unfinished points continued from their checkpoints.
    continued = [
        json.loads(Path(p, "metrics.json").read_text()).get("resumed_from")
        for p in unfinished
        if glob.glob(os.path.join(p, "checkpoints", "latest.json"))
    ]
    assert continued and all(c and c > 0 for c in continued)
    fit = json.loads((study / "fit.json").read_text())
    assert fit["points"] == 4
    assert fit["law"] is None and any("points" in note for note in fit["notes"])  # too few
    assert fit["floor"] is not None and fit["floor"] > 0  # the oracle's entropy
    for plot in PLOTS:
        assert (study / "plots" / plot).read_bytes().startswith(b"\x89PNG"), plot
    page = (study / "report.html").read_text()
    assert "tiny-1.2k" in page and "plots/loss_vs_parameters.png" in page
    assert (study / "report.md").exists()


@pytest.mark.slow
def test_rerunning_a_finished_study_trains_nothing(killed_and_finished):
    folder, args, _, _ = killed_and_finished
    metrics = sorted(glob.glob(str(folder / "study" / "points" / "*" / "metrics.json")))
    before = {m: os.stat(m).st_mtime_ns for m in metrics}
    again = subprocess.run(args, cwd=folder, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "4 points, 4 done before" in again.stdout
    assert {m: os.stat(m).st_mtime_ns for m in metrics} == before
    other = GRID.replace("updates: 24", "updates: 25")
    (folder / "other.yaml").write_text(other)
    refused = subprocess.run(
        [*args[:3], "other.yaml", *args[4:]],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert refused.returncode == 2 and "another grid" in refused.stderr


def test_study_dataclass_round_trips():
    study = from_dict({"models": ["tiny"], "people": [10]})
    assert isinstance(study, Study) and from_dict(study.to_dict()).to_dict() == study.to_dict()


def test_a_subset_larger_than_the_corpus_is_refused_before_training(tmp_path, ray_address):
    """`career pretrain --train-people N` beyond the train split: exit 2 naming the dataset and
    its size, before any worker starts and with nothing written under --out."""
    from data_shards.inputs import InputSpec
    from data_shards.shard import ShardConfig, shard_dataset

    shard_dataset(
        InputSpec(format="synth", preset="resumes", people=300, seed=1),
        str(tmp_path),
        "data",
        ShardConfig(people_per_block=50),
    )
    proc = subprocess.run(
        [
            CAREER,
            "pretrain",
            "--data",
            "data",
            "--out",
            "run",
            "--preset",
            "tiny",
            "--train-people",
            "100000",
            "--ray-address",
            ray_address,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "train_people" in proc.stderr and "needs a larger corpus" in proc.stderr
    assert "data" in proc.stderr and not (tmp_path / "run").exists()
