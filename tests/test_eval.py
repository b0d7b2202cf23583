"""Scoring model packages on datasets, `career evaluate` through Ray, and `career predict`.

Tiny CAREER packages are built with `build_model` + `write_package` on small simulated datasets
(no training): two plain ones with different seeds, and a "stayer" whose stay head is biased
toward staying (P(stay) about 0.73 instead of 0.5: on surveys where most years repeat last
year's job, clearly better). A model
with fixed known probabilities checks the scores column by column.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
import torch
from helpers import career, digest, loader_perplexity, records_from_loader

from cluster import evaluate_job
from cluster.cli import main
from data_shards.dataset import covariates_of, load_dataset
from data_shards.errors import StructuralError
from data_shards.inputs import InputSpec
from data_shards.shard import ShardConfig, shard_dataset
from data_shards.stream import CareerLoader, StreamConfig
from data_shards.vocab import PAD_ID, UNK_ID
from eval import metrics, predict, scores
from trainer.models.career import build_model
from trainer.package import LoadedModel, load_model, write_package

#: datasets sharded through Ray, models scored through Ray tasks
pytestmark = pytest.mark.slow

SMALL = ShardConfig(people_per_block=32, blocks_per_shard=2)


@pytest.fixture(scope="module")
def store(tmp_path_factory, ray_address):
    root = tmp_path_factory.mktemp("eval")
    out = {"root": root}

    def shard(name, preset, people, seed, config=SMALL, parent=None):
        spec = InputSpec(format="synth", preset=preset, people=people, seed=seed)
        out[name] = shard_dataset(spec, str(root / "data"), name, config, parent).dataset_url

    shard(
        "survey",
        "nlsy79",
        600,
        2,
        ShardConfig(people_per_block=32, split_fractions=(0.6, 0.1, 0.3)),
    )
    shard("resumes", "resumes", 300, 1)
    shard("extended", "nlsy79", 200, 5, parent=f"{out['resumes']}/vocab.json")
    no_test = ShardConfig(people_per_block=32, split_fractions=(1.0, 0.0, 0.0))
    shard("no_test", "nlsy79", 40, 3, no_test, parent=f"{out['survey']}/vocab.json")
    out["a"] = package(root / "models" / "a", out["survey"], seed=0)
    out["b"] = package(root / "models" / "b" / "package", out["survey"], seed=1)
    out["stayer"] = package(root / "models" / "stayer", out["survey"], seed=2, stay_bias=1.0)
    out["resume_model"] = package(root / "models" / "resume_model", out["resumes"], seed=0)
    return out


def package(url: Path, data_url: str, seed: int, stay_bias: float = 0.0) -> str:
    dataset = load_dataset(data_url)
    covariates = covariates_of(dataset.manifest)
    torch.manual_seed(seed)
    sizes = {name: dataset.vocab.size(name) for name in ("job", *covariates)}
    model = build_model(sizes, "tiny", covariates=covariates)
    state = model.state_dict()
    state["stay_head.bias"] += stay_bias
    write_package(str(url), state, model.config, dataset.vocab, {}, dataset.manifest_sha)
    return str(url)


class FixedModel(torch.nn.Module):
    """P(job j) = (j + 1) / Z for every real job, whatever the history: known exactly."""

    def __init__(self, jobs: int):
        super().__init__()
        weights = torch.arange(jobs, dtype=torch.float64) + 1
        weights[:2] = 0  # <pad>, <bos>: never targets
        self.register_buffer("logp", (weights / weights.sum()).log())

    def log_probs(self, batch):
        B, T = batch["inputs"].shape
        return self.logp.float().expand(B, T, -1)

    def token_log_probs(self, batch):
        targets = batch["targets"]
        return torch.where(targets != PAD_ID, self.logp.float()[targets], 0.0)


# ----------------------------------------------------------------------------- scores
def test_scores_of_a_model_with_known_probabilities(store):
    dataset = load_dataset(store["survey"])
    jobs = dataset.vocab.size("job")
    fixed = FixedModel(jobs)
    table = scores.score_split(LoadedModel(fixed, dataset.vocab, {}, {}), store["survey"], "test")
    assert table.column_names == [*scores.COLUMNS, "oracle_logp", "weight"]
    records = records_from_loader(store["survey"], "test")
    assert table.num_rows == sum(len(r["jobs"]) for r in records.values())
    assert sorted(set(table.column("person_id").to_pylist())) == sorted(records)
    ids = dataset.vocab.ids("job")
    logp = fixed.logp.numpy()
    rows = table.to_pylist()
    assert [(r["person_id"], r["position"]) for r in rows] == sorted(
        (p, i) for p, r in records.items() for i in range(len(r["jobs"]))
    )  # sorted by person, then position
    for row in rows:
        record = records[row["person_id"]]
        i = row["position"]
        assert row["target_job"] == record["jobs"][i] and row["year"] == record["years"][i]
        target = ids[row["target_job"]]
        assert row["logp"] == pytest.approx(logp[target], abs=1e-6)
        assert row["rank"] == jobs - target  # probabilities increase with the id
        assert row["oracle_logp"] == pytest.approx(record["oracle_logp"][i])
        assert row["weight"] == pytest.approx(record["weight"])
        if i == 0:
            assert row["prev_job"] is None and math.isnan(row["p_stay"])
        else:
            assert row["prev_job"] == record["jobs"][i - 1]
            assert row["p_stay"] == pytest.approx(math.exp(logp[ids[row["prev_job"]]]), rel=1e-5)
    # The paper's perplexity, by hand: every job-year, first years included.
    every = [ids[j] for r in records.values() for j in r["jobs"]]
    expected = math.exp(-float(np.mean(logp[every])))
    assert metrics.summarize(table, bootstrap=0)["perplexity"]["value"] == pytest.approx(expected)
    described = scores.describe(table)
    assert described["people"] == len(records) and described["split"] == "test"
    assert described["targets_unknown_to_model"] == 0


def test_metrics_from_the_scores_file_equal_the_model_computed_directly(store, tmp_path):
    loaded = load_model(store["a"])
    url = str(tmp_path / "a.parquet")
    scores.write_scores(scores.score_split(loaded, store["survey"], "test"), url)
    table = scores.read_scores(url)
    summary = metrics.summarize(table, bootstrap=200)
    direct = loader_perplexity(loaded.model, store["survey"], "test")
    assert summary["perplexity"]["value"] == pytest.approx(direct, rel=1e-6)
    assert summary["perplexity"]["low"] < direct < summary["perplexity"]["high"]
    # P(stay) is the model's stay head, sigmoid of its stay logit, read straight off a forward
    # pass (not from the log-probabilities the scores come from); a stay token's probability is
    # that P(stay) itself.
    head = {}
    loader = CareerLoader(
        store["survey"], StreamConfig(split="test", shuffle=False, loop=False), num_workers=0
    )
    with torch.no_grad():
        for batch in loader:
            _, stay = loaded.model({k: v for k, v in batch.items() if torch.is_tensor(v)})
            for i, person in enumerate(batch["person_id"]):
                for t in range(1, int(batch["lengths"][i])):
                    head[person, t] = float(torch.sigmoid(stay[i, t]))
    later = table.filter(pc.greater(table.column("position"), 0))
    assert later.num_rows == len(head) > 0
    np.testing.assert_allclose(
        later.column("p_stay").to_numpy(),
        [
            head[p, t]
            for p, t in zip(
                later.column("person_id").to_pylist(),
                later.column("position").to_pylist(),
                strict=True,
            )
        ],
        rtol=1e-5,
    )
    stays = table.filter(pc.equal(table.column("prev_job"), table.column("target_job")))
    assert stays.num_rows > 0
    np.testing.assert_allclose(
        np.exp(stays.column("logp").to_numpy()), stays.column("p_stay").to_numpy(), rtol=1e-5
    )
    # Other batch sizes score the same tokens alike.
    other = scores.score_split(loaded, store["survey"], "test", tokens_per_batch=64)
    np.testing.assert_allclose(
        other.column("logp").to_numpy(), table.column("logp").to_numpy(), rtol=1e-5, atol=1e-6
    )
    assert other.column("rank").equals(table.column("rank"))
    same = metrics.paired_difference(table, other, bootstrap=100)
    assert abs(same.value) < 1e-4


def test_codes_the_package_lacks_are_scored_as_unk(store):
    """A survey whose vocabulary extends the resumes': its new codes (unemployed, ...) are
    `<unk>` to the resume model."""
    loaded = load_model(store["resume_model"])
    table = scores.score_split(loaded, store["extended"], "test")
    known = set(loaded.vocab.fields["job"][3:])
    unknown = sum(job not in known for job in table.column("target_job").to_pylist())
    assert unknown > 0 and scores.describe(table)["targets_unknown_to_model"] == unknown
    assert np.isfinite(table.column("logp").to_numpy()).all()
    assert "unemployed" in table.column("target_job").to_pylist()  # the dataset's own codes


def test_a_vocabulary_that_does_not_extend_the_package_is_refused(store, tmp_path):
    loaded = load_model(store["a"])  # trained on the survey's vocabulary
    with pytest.raises(StructuralError, match="does not extend") as error:
        scores.score_split(loaded, store["resumes"], "test")
    assert str(error.value).startswith(f"{store['resumes']}/vocab.json: ")


def test_a_split_with_no_people_is_refused(store):
    loaded = load_model(store["a"])
    data = load_dataset(store["no_test"])
    assert data.manifest.splits["test"]["people"] == 0
    with pytest.raises(StructuralError, match="no people") as error:
        scores.check_compatible(loaded.vocab, data, "test")
    assert str(error.value).startswith(f"{store['no_test']}/manifest.json: ")


# ----------------------------------------------------------------------------- evaluate
def test_career_evaluate_two_models_through_ray(store, tmp_path, ray_address):
    """Through the installed `career` command; its inputs (packages, dataset) are not modified."""
    out = tmp_path / "eval"
    inputs = (store["a"], store["b"], store["stayer"], store["survey"])
    before = digest(*inputs)
    printed = career(
        "evaluate",
        "--model",
        store["a"],
        "--model",
        store["b"],
        "--model",
        f"stay={store['stayer']}",
        "--data",
        store["survey"],
        "--out",
        str(out),
        "--bootstrap",
        "200",
        "--ray-address",
        ray_address,
    ).stdout
    assert digest(*inputs) == before
    files = sorted(p.name for p in (out / "scores").iterdir())
    assert files == [
        "a__survey.parquet",
        "b__survey.parquet",
        "stay__survey.parquet",
    ]  # b: RUN/package
    report = json.loads((out / "metrics.json").read_text())
    comparison = report["comparison"]["survey"]
    rows = comparison["rows"]
    assert [r["model"] for r in rows][0] == "stay" and rows[-1]["model"] == "oracle"
    values = [r["perplexity"]["value"] for r in rows[:-1]]
    assert values == sorted(values) and comparison["best"] == "stay"
    assert rows[0]["difference_to_best"] == {"value": 0.0, "low": 0.0, "high": 0.0}
    assert all(r["difference_to_best"]["low"] > 0 for r in rows[1:-1])  # clearly worse
    # The oracle row is the manifest's oracle perplexity of the split (float32 log-probs).
    manifest_oracle = load_dataset(store["survey"]).manifest.oracle_perplexity["test"]
    assert rows[-1]["perplexity"]["value"] == pytest.approx(manifest_oracle, rel=1e-5)
    assert report["datasets"]["survey"]["oracle_perplexity"] == manifest_oracle
    for name, url in (("a", store["a"]), ("b", store["b"]), ("stay", store["stayer"])):
        direct = loader_perplexity(load_model(url).model, store["survey"], "test")
        assert report["metrics"][name]["survey"]["perplexity"]["value"] == pytest.approx(
            direct, rel=1e-6
        )
        assert report["models"][name]["kind"] == "career"
    md = (out / "table.md").read_text()
    assert "| **stay** |" in md and "| oracle |" in md and "| a |" in md
    assert "oracle" in printed and "stay" in printed
    # Metrics rebuilt from the files alone agree with metrics.json.
    rebuilt = metrics.summarize(
        scores.read_scores(str(out / "scores" / "a__survey.parquet")), bootstrap=200
    )
    assert rebuilt == report["metrics"]["a"]["survey"]


def test_career_evaluate_weighted(store, tmp_path, ray_address):
    out = tmp_path / "weighted"
    code = main(
        [
            "evaluate",
            "--model",
            store["a"],
            "--data",
            store["survey"],
            "--out",
            str(out),
            "--weighted",
            "--bootstrap",
            "0",
            "--ray-address",
            ray_address,
        ]
    )
    assert code == 0
    report = json.loads((out / "metrics.json").read_text())
    summary = report["metrics"]["a"]["survey"]
    table = scores.read_scores(str(out / "scores" / "a__survey.parquet"))
    w = table.column("weight").to_numpy()
    nll = -table.column("logp").to_numpy()
    assert summary["weighted"] is True
    assert summary["perplexity"]["value"] == pytest.approx(math.exp((w * nll).sum() / w.sum()))
    unweighted = metrics.summarize(table, bootstrap=0)["perplexity"]["value"]
    assert summary["perplexity"]["value"] != pytest.approx(unweighted)


def test_career_evaluate_refuses_before_scoring_and_writes_nothing(store, tmp_path, capsys):
    out = tmp_path / "refused"
    code = main(
        [
            "evaluate",
            "--model",
            store["a"],
            "--data",
            store["survey"],
            "--data",
            store["resumes"],
            "--out",
            str(out),
        ]
    )
    assert code == 2 and not out.exists()
    err = capsys.readouterr().err
    assert "career evaluate: error:" in err and f"{store['resumes']}/vocab.json" in err
    code = main(["evaluate", "--model", store["a"], "--data", store["no_test"], "--out", str(out)])
    assert code == 2 and not out.exists() and "no people" in capsys.readouterr().err
    # An output inside an input is refused by the guards (paths_read / paths_written).
    inside = f"{store['survey']}/evaluation"
    assert (
        main(["evaluate", "--model", store["a"], "--data", store["survey"], "--out", inside]) == 2
    )
    assert "--out lies inside --data survey" in capsys.readouterr().err
    assert not Path(inside).exists()
    # Two models of one name need NAME=PKG (a usage error: exit 2 while parsing).
    with pytest.raises(SystemExit) as exit_:
        main(
            [
                "evaluate",
                "--model",
                store["a"],
                "--model",
                store["a"],
                "--data",
                store["survey"],
                "--out",
                str(out),
            ]
        )
    assert exit_.value.code == 2 and "NAME=URL" in capsys.readouterr().err


def test_evaluate_settings_resolve_names_and_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = evaluate_job.EvaluateSettings(
        model=["runs/fine/package", "mk=models/markov"], data=["store/nlsy79"], out="ev"
    )
    assert s.models == [
        ("fine", str(tmp_path / "runs/fine/package")),
        ("mk", str(tmp_path / "models/markov")),
    ]
    assert s.paths_read() == {
        "--model fine": str(tmp_path / "runs/fine/package"),
        "--model mk": str(tmp_path / "models/markov"),
        "--data nlsy79": str(tmp_path / "store/nlsy79"),
    }
    assert s.paths_written() == {"--out": str(tmp_path / "ev")}
    assert s.scores_url("mk", "nlsy79") == str(tmp_path / "ev/scores/mk__nlsy79.parquet")
    with pytest.raises(ValueError, match="--model"):
        evaluate_job.EvaluateSettings(model=[], data=["d"], out="o")
    with pytest.raises(ValueError, match="--bootstrap"):
        evaluate_job.EvaluateSettings(model=["m"], data=["d"], out="o", bootstrap=-1)


# ----------------------------------------------------------------------------- predict
def test_top_k_sums_to_one_and_names_unknown_codes(store, caplog):
    loaded = load_model(store["a"])
    known = loaded.vocab.fields["job"][5]
    history = [(known, 2012), (known, 2013), ("unemployed", 2014)]
    with caplog.at_level(logging.WARNING, logger="eval.predict"):
        p = predict.top_k(loaded, history, 5, covariates={"education": "high_school"})
    assert p.probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    assert len(p.top) == 5 and p.year == 2015 and p.last_job == "unemployed"
    probs = [prob for _, prob in p.top]
    assert probs == sorted(probs, reverse=True) and probs[0] == pytest.approx(p.probabilities.max())
    assert p.p_stay == pytest.approx(p.probabilities[loaded.vocab.ids("job")["unemployed"]])
    assert p.unknown == [] and "unknown" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="eval.predict"):
        odd = predict.top_k(
            loaded, "9999:2012 9999:2013", 3, covariates={"location": "Atlantis"}, year=2016
        )
    assert odd.unknown == ["9999", "location=Atlantis"] and odd.year == 2016
    assert "9999" in caplog.text and "location=Atlantis" in caplog.text
    assert odd.p_stay == pytest.approx(odd.probabilities[UNK_ID])  # last job: <unk>
    with pytest.raises(ValueError, match="increase"):
        predict.top_k(loaded, [(known, 2013), (known, 2012)])
    with pytest.raises(ValueError, match="after"):
        predict.top_k(loaded, [(known, 2013)], year=2013)
    with pytest.raises(ValueError, match="JOB:YEAR"):
        predict.parse_history("4720-2012")


def test_predict_builds_the_batch_the_loader_builds(store):
    """The distribution after a person's first n-1 years, with the n-th year's covariates,
    equals the model's distribution at position n-1 of the loader's batch."""
    loaded = load_model(store["a"])
    loader = CareerLoader(
        store["survey"], StreamConfig(split="test", loop=False, shuffle=False), num_workers=0
    )
    batch = next(iter(loader))
    records = records_from_loader(store["survey"], "test")
    tensors = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
    with torch.no_grad():
        expected = loaded.model.log_probs(tensors).exp()
    checked = 0
    for i, person in enumerate(batch["person_id"]):
        record, n = records[person], int(batch["lengths"][i])
        if n < 3 or checked == 20:
            continue
        query = predict.Query(
            tuple(zip(record["jobs"][: n - 1], record["years"][: n - 1], strict=True)),
            year=record["years"][n - 1],
            education=tuple(record["education"][:n]),
            location=record["location"],
            gender=record["gender"],
            ethnicity=record["ethnicity"],
            birth_year=record["birth_year"],
        )
        got = predict.predict(loaded, [query], 3, keep_probabilities=True)[0]
        assert got.unknown == []
        np.testing.assert_allclose(
            got.probabilities, expected[i, n - 1].double().numpy(), rtol=1e-4, atol=1e-7
        )
        checked += 1
    assert checked == 20


def test_career_predict_prints_and_scores_a_file(store, tmp_path, capsys):
    loaded = load_model(store["a"])
    job = loaded.vocab.fields["job"][4]
    before = digest(store["a"])
    # the installed command
    shown = career(
        "predict",
        "--model",
        store["a"],
        "--history",
        f"{job}:2012 {job}:2013",
        "--education",
        "high_school",
        "--gender",
        "female",
        "--top-k",
        "3",
        "--json",
    ).stdout
    shown = json.loads(shown)
    assert digest(store["a"]) == before
    assert shown["year"] == 2014 and shown["last_job"] == job and len(shown["top"]) == 3
    assert 0 < shown["p_stay"] < 1
    assert main(["predict", "--model", store["a"], "--history", f"{job}:2012"]) == 0
    assert "P(stay)" in capsys.readouterr().out
    people = tmp_path / "people.jsonl"
    resume = {
        "id": "r1",
        "jobs": [{"code": job, "start": "2010-01", "end": "2012-06"}],
        "education": [{"degree": "bachelors", "end": "2009"}],
    }
    people.write_text(
        json.dumps({"id": "h1", "history": f"{job}:2001 {job}:2003"})
        + "\n\n"
        + json.dumps(resume)
        + "\n"
    )
    out = tmp_path / "predictions.jsonl"
    before = digest(store["a"], people)
    code = main(
        [
            "predict",
            "--model",
            store["a"],
            "--input",
            str(people),
            "--out",
            str(out),
            "--top-k",
            "2",
        ]
    )
    assert code == 0 and digest(store["a"], people) == before  # (nor the input file)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(p["id"], p["year"], len(p["top"])) for p in lines] == [
        ("h1", 2004, 2),
        ("r1", 2013, 2),
    ]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"history": f"{job}:2001"}) + "\n" + '{"history": "x:y"}\n')
    assert main(["predict", "--model", store["a"], "--input", str(bad), "--out", str(out)]) == 2
    assert f"{bad}:2:" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # neither --history nor --input: bad usage
        main(["predict", "--model", store["a"]])
    assert exit_.value.code == 2 and "either --history or --input" in capsys.readouterr().err
