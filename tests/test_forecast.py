"""Forecasting (issue 12): the cutoff dataset, who is scored, the forecast scores and metrics, the
baselines' sampling and `career forecast` with its refusals.

The deterministic toy: every person holds one job or state for all years (2010-2018), so an
absorbing Markov chain fitted on it forecasts each person's cutoff state forever: its forecast
rates must equal the realised ones exactly, every path agree (a band of zero width) and the AUC of
each state be 1.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import career, digest

from cluster.cli import main
from data_shards.dataset import covariates_of, load_dataset
from data_shards.inputs import InputSpec
from data_shards.shard import ShardConfig, shard_dataset
from data_shards.stream import CareerLoader, StreamConfig
from eval.forecast.protocol import forecast_people
from eval.forecast.run import forecast_package
from eval.forecast.score import auc, binary_nll
from trainer.models.markov import count_transitions
from trainer.models.registry import build
from trainer.package import load_model, write_package

JOBS = ("1000", "2000", "unemployed", "not_in_labor_force", "education")
YEARS = range(2010, 2019)


def _toy_csv(path: Path) -> Path:
    lines = ["person_id,year,job,split"]
    for i in range(90):
        split = "train" if i < 50 else "valid" if i < 60 else "test"
        job = JOBS[i % len(JOBS)]
        # test people 80-89 leave after 2016: not observed in the last wave, so not scored
        years = YEARS if not (split == "test" and i >= 80) else range(2010, 2017)
        lines += [f"p{i:03d},{y},{job},{split}" for y in years]
    path.write_text("\n".join(lines) + "\n")
    return path


def _markov_package(data_url: str, out: Path) -> str:
    """A Markov chain fitted on the train split with almost no smoothing: absorbing states."""
    dataset = load_dataset(data_url)
    model = build("markov", {"job": dataset.vocab.size("job")}, "tiny")
    V = dataset.vocab.size("job")
    counts = torch.zeros(V, V, dtype=torch.float64)
    loader = CareerLoader(
        data_url, StreamConfig(split="train", shuffle=False, loop=False), num_workers=0
    )
    for batch in loader:
        counts += count_transitions(batch, V)
    model.fit(counts, 1e-9)
    write_package(
        str(out), model.state_dict(), model.config, dataset.vocab, {}, dataset.manifest_sha
    )
    return str(out)


def _career_package(data_url: str, out: Path) -> str:
    dataset = load_dataset(data_url)
    covariates = covariates_of(dataset.manifest)
    torch.manual_seed(0)
    sizes = {n: dataset.vocab.size(n) for n in ("job", *covariates)}
    model = build("career", sizes, "tiny", covariates=covariates)
    write_package(
        str(out), model.state_dict(), model.config, dataset.vocab, {}, dataset.manifest_sha
    )
    return str(out)


@pytest.fixture(scope="module")
def toy(tmp_path_factory, ray_address):
    root = tmp_path_factory.mktemp("forecast")
    csv = _toy_csv(root / "toy.csv")
    spec = InputSpec(format="panel", url=str(csv))
    config = ShardConfig(people_per_block=16, until=2014)
    url = shard_dataset(spec, str(root / "data"), "toy", config).dataset_url
    uncut = shard_dataset(spec, str(root / "data"), "uncut", ShardConfig(people_per_block=16))
    return {
        "root": root,
        "csv": csv,
        "data": url,
        "uncut": uncut.dataset_url,
        "markov": _markov_package(url, root / "markov"),
        "career": _career_package(url, root / "career"),
    }


# ----------------------------------------------------------------------------- the cutoff dataset
def _years_by_split(url: str) -> dict[str, set[int]]:
    dataset = load_dataset(url)
    calendar = dataset.vocab.fields["year"]
    out = {}
    for split in ("train", "valid", "test"):
        loader = CareerLoader(
            url, StreamConfig(split=split, shuffle=False, loop=False), num_workers=0
        )
        years = set()
        for batch in loader:
            real = batch["targets"] != 0
            years |= {int(calendar[i]) for i in batch["year"][real].tolist()}
        out[split] = years
    return out


def test_the_cutoff_dataset_keeps_no_training_year_after_the_cutoff(toy):
    years = _years_by_split(toy["data"])
    assert max(years["train"]) == 2014 and max(years["valid"]) == 2014
    assert max(years["test"]) == 2018  # the test people keep their future
    manifest = load_dataset(toy["data"]).manifest
    assert manifest.config["until"] == 2014
    train = manifest.splits["train"]
    assert train["tokens_cut"] == 50 * 4 and train["people_cut"] == 0
    assert manifest.splits["test"].get("tokens_cut", 0) == 0
    # A dataset without a cutoff keeps the identity it always had (no "until" key).
    assert "until" not in load_dataset(toy["uncut"]).manifest.config


def test_people_with_no_year_up_to_the_cutoff_are_dropped_and_counted(tmp_path, ray_address):
    csv = tmp_path / "late.csv"
    rows = ["person_id,year,job"]
    for i in range(40):
        start = 2010 if i % 4 else 2016  # every fourth person starts after the cutoff
        rows += [f"q{i:02d},{y},{JOBS[i % 2]}" for y in range(start, 2019)]
    csv.write_text("\n".join(rows) + "\n")
    config = ShardConfig(people_per_block=8, split_fractions=(0.8, 0.2, 0.0), until=2014)
    result = shard_dataset(InputSpec(format="panel", url=str(csv)), str(tmp_path), "late", config)
    splits = result.manifest.splits
    late = {f"q{i:02d}" for i in range(40) if i % 4 == 0}
    assert splits["train"]["people_cut"] + splits["valid"]["people_cut"] == len(late)
    assert result.manifest.totals["people_cut"] == len(late)
    written = splits["train"]["people"] + splits["valid"]["people"]
    assert written + len(late) == 40 == result.manifest.totals["people_read"]


@pytest.mark.parametrize("until", ["2009", "2018", "2030"])
def test_a_cutoff_outside_the_data_years_is_refused_and_leaves_nothing(
    toy, until, tmp_path, capsys, ray_address
):
    code = main(
        [
            "shard",
            "--format",
            "panel",
            "--input",
            str(toy["csv"]),
            "--out",
            str(tmp_path),
            "--name",
            "bad",
            "--until",
            until,
            "--ray-address",
            ray_address,
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert f"--until {until} is outside the data's years 2010-2018" in err
    assert str(toy["csv"]) in err
    assert not (tmp_path / "bad" / "manifest.json").exists()
    assert not (tmp_path / "bad" / "_staging").exists()


# ----------------------------------------------------------------------------- who is scored
def test_scored_people_and_their_histories_follow_the_protocol(toy):
    loaded = load_model(toy["career"])
    people = forecast_people(loaded, load_dataset(toy["data"]))
    assert people.cutoff == 2014 and people.last_year == 2018
    assert len(people.person_id) == 20 and people.considered == 30
    assert people.excluded["not observed in the last wave"] == 10
    assert sum(people.excluded.values()) + len(people.person_id) == people.considered
    assert people.history["lengths"].tolist() == [5] * 20  # 2010-2014
    assert people.steps.sum(1).tolist() == [4] * 20  # 2015-2018
    assert (people.years[:, 0] == 2015).all() and (people.years[:, -1] == 2018).all()
    assert "education" not in people.future  # carried forward by default
    # Later years use the embedding of the last wave up to the cutoff (here 2014 itself).
    assert people.last_trained_year_id == loaded.vocab.ids("year")["2014"]


def test_a_dataset_without_a_cutoff_or_with_another_is_refused(toy, tmp_path, capsys):
    code = main(
        ["forecast", "--model", toy["markov"], "--data", toy["uncut"], "--out", str(tmp_path / "f")]
    )
    err = capsys.readouterr().err
    assert code == 2 and "has no forecasting cutoff" in err and "--until" in err
    code = main(
        [
            "forecast",
            "--model",
            toy["markov"],
            "--data",
            toy["data"],
            "--cutoff",
            "2013",
            "--out",
            str(tmp_path / "f"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "--cutoff 2013 is not this dataset's cutoff (2014)" in err
    with pytest.raises(SystemExit) as stop:  # refused while the flags are read
        main(
            [
                "forecast",
                "--model",
                toy["markov"],
                "--data",
                toy["data"],
                "--paths",
                "0",
                "--out",
                str(tmp_path / "f"),
            ]
        )
    assert stop.value.code == 2 and "--paths must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "f").exists()


# ----------------------------------------------------------------------------- metrics
def test_the_deterministic_toy_gives_its_known_rates_and_a_perfect_auc(toy, tmp_path):
    summary = forecast_package(
        "markov", toy["markov"], load_dataset(toy["data"]), str(tmp_path), paths=50, bootstrap=0
    )
    assert summary["people"] == 20 and summary["tokens"] == 80
    assert summary["perplexity"]["value"] == pytest.approx(1.0, abs=1e-6)
    for state in ("unemployed", "not_in_labor_force", "education"):
        entry = summary["states"][state]
        assert entry["auc"] == 1.0
        assert entry["nll"] < 1e-6
        for year in ("2015", "2016", "2017", "2018"):
            at = entry["by_year"][year]
            assert at["realised"] == pytest.approx(0.2)  # 4 of the 20 scored people
            assert at["forecast"] == pytest.approx(at["realised"], abs=1e-6)
            assert at["band"] == [pytest.approx(0.2)] * 2  # every path the same


def test_auc_against_a_direct_count_of_pairs():
    rng = np.random.default_rng(3)
    labels = rng.random(300) < 0.3
    scores = np.round(rng.random(300) + labels * 0.3, 1)  # many ties
    positives, negatives = scores[labels], scores[~labels]
    wins = (positives[:, None] > negatives[None]).sum() + 0.5 * (
        positives[:, None] == negatives[None]
    ).sum()
    assert auc(labels, scores) == pytest.approx(wins / (len(positives) * len(negatives)))
    assert np.isnan(auc(np.zeros(5, bool), np.arange(5.0)))
    assert binary_nll(np.array([True, False]), np.array([0.5, 0.5])) == pytest.approx(np.log(2))


@pytest.mark.parametrize("kind", ["career", "regression", "markov", "bag-of-jobs"])
def test_log_probs_at_one_position_is_the_full_forward_at_it(kind):
    sizes = {"job": 30, "year": 20, "education": 6}
    covariates = {
        "career": ("year", "education"),
        "regression": ("year", "education"),
        "markov": (),
        "bag-of-jobs": ("year", "education"),
    }[kind]
    torch.manual_seed(0)
    model = build(kind, sizes, "tiny", covariates=covariates).eval()
    for table in getattr(model, "effects", {}).values():  # a regression starts at zero
        torch.nn.init.normal_(table.weight)
    batch = {
        "inputs": torch.randint(3, 30, (4, 7)),
        "year": torch.randint(3, 20, (4, 7)),
        "education": torch.randint(3, 6, (4, 7)),
    }
    batch["inputs"][:, 0] = 1
    at = torch.tensor([0, 3, 6, 5])
    full = model.log_probs(batch)[torch.arange(4), at]
    assert torch.allclose(model.log_probs_at(batch, at), full, atol=1e-5)


# ----------------------------------------------------------------------------- the command
def test_career_forecast_compares_models_and_writes_its_files(toy, tmp_path):
    """The installed command, relative paths as a user types them; no input modified."""
    (tmp_path / "pkgs").symlink_to(toy["root"])
    before = digest(toy["root"])
    done = career(
        "forecast",
        "--model",
        "markov=pkgs/markov",
        "--model",
        "career=pkgs/career",
        "--data",
        "pkgs/data/toy",
        "--out",
        "fc",
        "--paths",
        "20",
        "--bootstrap",
        "50",
        "--future-education",
        "observed",
        cwd=tmp_path,
    )
    assert digest(toy["root"]) == before
    assert "leaks information" in done.stderr
    assert (
        "20 of 30 test people scored; not scored: 10 not observed in the last wave" in done.stdout
    )
    result = json.loads((tmp_path / "fc" / "forecast.json").read_text())
    assert result["reference"] == "markov"
    assert set(result["models"]) == {"markov", "career"}
    assert result["models"]["career"]["future_education"] == "observed"
    difference = result["difference_to_reference"]["career"]
    assert (
        difference["value"] > 0 and difference["low"] <= difference["value"] <= difference["high"]
    )
    for name in ("markov", "career"):
        assert (tmp_path / "fc" / "scores" / f"{name}.parquet").exists()
        rates = json.loads((tmp_path / "fc" / "rates" / f"{name}.json").read_text())
        assert len(rates["unemployed"]["2016"]) == 20  # one rate per path
    assert (tmp_path / "fc" / "forecast.png").read_bytes()[:4] == b"\x89PNG"
