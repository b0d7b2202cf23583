"""Model kinds: the paper's baselines as trainable kinds, saved as the same packages.

- every kind honours one interface (shapes, -inf specials, normalised, 0 at padding, nll) and
  round-trips its config; presets and dotted overrides are checked per kind;
- regression: each feature on a hand-built batch; the logits are the intercept plus one effect
  row per feature, clamped to [-10, 10]; its effect tables get the optimizer's weight decay (its
  L2 penalty) and the intercept does not;
- bag-of-jobs: permuting earlier years changes nothing, and it is causal;
- markov: fitted through the loader on a hand-made dataset, the package's probabilities equal
  counting done here by hand (alpha chosen on validation), via `career pretrain --model markov`;
- packages name their kind and the sha256 of every other file; a missing file, a changed file
  or an unknown kind is refused naming the file; a package from before kinds loads as career;
- fine-tuning refuses other kinds (exit 2);
- slow: `career pretrain --model regression` and `--model bag-of-jobs` train through the real
  trainer (torchrun, 2 workers) and their packages reproduce metrics.json's perplexity.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
from helpers import career

from data_shards.errors import StructuralError
from data_shards.vocab import BOS_ID, PAD_ID, Vocabulary
from trainer.config import TrainConfig, make_config
from trainer.models import bag_of_jobs, markov, regression
from trainer.models.registry import KINDS, build, config_from_dict, from_config
from trainer.monitor import flops_per_token
from trainer.package import FILES, load_model, write_package

SIZES = {
    "job": 12,
    "year": 40,
    "education": 6,
    "location": 7,
    "gender": 5,
    "ethnicity": 6,
    "birth_year": 30,
}


def vocabulary(sizes=SIZES) -> Vocabulary:
    return Vocabulary(
        {
            name: ["<pad>", "<bos>", "<unk>", *[f"{name}{i}" for i in range(n - 3)]]
            for name, n in sizes.items()
        }
    )


def random_batch(B=3, T=7, seed=0, lengths=(7, 4, 1)) -> dict[str, torch.Tensor]:
    """A Batch: <bos> then the targets shifted, covariates of the target year, pad 0 after."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(3, SIZES["job"], (B, T), generator=g)
    targets[:, 2] = targets[:, 1]  # some stays
    lengths = torch.tensor(lengths)
    real = torch.arange(T)[None, :] < lengths[:, None]
    targets = torch.where(real, targets, 0)
    inputs = torch.where(real, torch.cat([torch.full((B, 1), BOS_ID), targets[:, :-1]], 1), 0)
    batch = {"inputs": inputs, "targets": targets, "lengths": lengths}
    years = 10 + torch.cumsum(torch.randint(1, 3, (B, T), generator=g), 1)  # some gaps
    batch["year"] = torch.where(real, years, 0)
    for name in ("education", "location", "gender", "ethnicity", "birth_year"):
        values = torch.randint(3, SIZES[name], (B, 1 if name != "education" else T), generator=g)
        batch[name] = torch.where(real, values.expand(B, T), 0)
    return batch


def fitted_markov(seed=0):
    """A markov model fitted on random counts (so that its table is not uniform)."""
    model = build("markov", SIZES, "tiny")
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, 5, (SIZES["job"], SIZES["job"]), generator=g).double()
    counts[:, : BOS_ID + 1] = 0  # <pad> and <bos> are never targets
    model.fit(counts, 1.0)
    return model.eval()


def model_of(kind: str, preset: str = "tiny"):
    torch.manual_seed(0)
    if kind == "markov":
        return fitted_markov()
    return build(kind, SIZES, preset).eval()


# ----------------------------------------------------------------------------- every kind
@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_gives_a_normalised_two_stage_distribution(kind):
    model = model_of(kind)
    batch = random_batch()
    with torch.no_grad():
        logp = model.log_probs(batch)
        token = model.token_log_probs(batch)
        nll, count = model.nll(batch)
    B, T = batch["inputs"].shape
    assert logp.shape == (B, T, SIZES["job"]) and token.shape == (B, T)
    assert torch.all(logp[..., PAD_ID] == -math.inf) and torch.all(logp[..., BOS_ID] == -math.inf)
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(B, T), rtol=1e-5, atol=1e-5)
    real = batch["targets"] != PAD_ID
    picked = logp.gather(-1, batch["targets"][..., None]).squeeze(-1)
    torch.testing.assert_close(token[real], picked[real], rtol=1e-5, atol=1e-5)
    assert torch.all(token[~real] == 0)
    assert int(count) == int(batch["lengths"].sum())
    assert float(nll) == pytest.approx(-float(token.sum()), rel=1e-5)
    assert model.config.kind == kind and model.config.to_dict()["kind"] == kind
    with torch.no_grad():
        _, stay = model(batch)
    if kind == "markov":  # one stage: staying is one of the table's transitions
        assert stay is None
        return
    # two stages: P(same job as last year) = sigmoid(stay) wherever there is a last job
    has_prev = batch["inputs"] > BOS_ID
    same = logp.gather(-1, batch["inputs"][..., None]).squeeze(-1)
    torch.testing.assert_close(same[has_prev], torch.nn.functional.logsigmoid(stay)[has_prev])


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_round_trips_its_config_and_estimates_its_flops(kind):
    model = model_of(kind)
    again = config_from_dict(json.loads(json.dumps(model.config.to_dict())))
    assert again == model.config and type(again) is type(model.config)
    rebuilt = from_config(again)
    assert rebuilt.state_dict().keys() == model.state_dict().keys()
    flops = flops_per_token(model, 9.0)
    if kind == "career":  # attention on top of 6 x parameters
        assert flops > 6 * model.num_parameters()
    elif kind == "markov":  # fitted by counting
        assert flops == 0 and model.num_parameters() == SIZES["job"] ** 2
    else:
        assert flops == 6 * model.num_parameters() > 0


def test_presets_size_each_kind():
    def parameters(kind, preset):
        with torch.device("meta"):
            return build(kind, SIZES, preset).num_parameters()

    assert parameters("bag-of-jobs", "tiny") < parameters("bag-of-jobs", "paper")
    paper = build("bag-of-jobs", SIZES, "paper").config
    assert (paper.d_current, paper.d_context, paper.d_hidden) == (1024, 1024, 1024)
    assert parameters("regression", "tiny") < parameters("regression", "paper")
    for kind in KINDS:  # the default preset exists for every kind
        assert parameters(kind, "paper") > 0 and parameters(kind, "tiny") > 0


def test_the_config_checks_kind_preset_and_model_settings_per_kind():
    bag = make_config("pretrain", "tiny", ["kind=bag-of-jobs", "model.d_hidden=16"])
    assert bag.kind == "bag-of-jobs" and bag.model == {"d_hidden": 16}
    l2 = make_config("pretrain", kind="regression", overrides=["optim.weight_decay=0.1"])
    assert l2.kind == "regression" and l2.optim.weight_decay == 0.1
    with pytest.raises(ValueError, match="unknown model kind 'lstm'"):
        make_config("pretrain", kind="lstm")
    with pytest.raises(ValueError, match="regression has no preset 'large'"):
        make_config("pretrain", "large", kind="regression")
    with pytest.raises(ValueError, match="unknown model setting model.d_hidden for kind career"):
        make_config("pretrain", overrides=["model.d_hidden=16"])
    with pytest.raises(ValueError, match="unknown model setting"):
        make_config("pretrain", overrides=["model.nonsense=1"])
    old = TrainConfig().to_dict()
    del old["kind"]  # a checkpoint's config from before kinds
    assert TrainConfig.from_dict(old).kind == "career"


def test_dataclass_fields_of_every_kind_are_overridable():
    """Every config field but vocab_sizes and kind is a `model.NAME` setting of its kind."""
    for kind in KINDS.values():
        names = {f.name for f in dataclasses.fields(kind.config)} - {"vocab_sizes", "kind"}
        assert set(kind.settings()) == names and names


# ----------------------------------------------------------------------------- regression
def hand_batch() -> dict[str, torch.Tensor]:
    """Two people. A: jobs 5 5 7 7 7 in 2000 2001 2003 2004 2005 (education 3 3 4 4 4);
    B: job 6 then 6 in 2010 2011, then padding."""
    targets = torch.tensor([[5, 5, 7, 7, 7], [6, 6, 0, 0, 0]])
    inputs = torch.tensor([[1, 5, 5, 7, 7], [1, 6, 0, 0, 0]])
    year = torch.tensor([[10, 11, 13, 14, 15], [20, 21, 0, 0, 0]])
    education = torch.tensor([[3, 3, 4, 4, 4], [5, 5, 0, 0, 0]])
    static = {
        name: torch.tensor([[3] * 5, [4, 4, 0, 0, 0]])
        for name in ("location", "gender", "ethnicity")
    }
    return {
        "inputs": inputs,
        "targets": targets,
        "year": year,
        "education": education,
        "lengths": torch.tensor([5, 2]),
        **static,
    }


def test_regression_features_on_a_hand_built_batch():
    batch = hand_batch()
    assert torch.equal(regression.last_job(batch), batch["inputs"])
    assert regression.job_before(batch).tolist() == [[1, 1, 5, 5, 7], [1, 1, 0, 0, 0]]
    # years in the current job: 0 with none, then the run of last year's job
    assert regression.tenure(batch, cap=10).tolist() == [[0, 1, 2, 1, 2], [0, 1, 0, 0, 0]]
    assert regression.tenure(batch, cap=1).tolist() == [[0, 1, 1, 1, 1], [0, 1, 0, 0, 0]]
    assert regression.years_observed(batch, cap=3).tolist() == [[0, 1, 2, 3, 3], [0, 1, 2, 3, 3]]
    # 2003 after 2001 is a gap; the first year and padding are not
    assert regression.gap(batch).tolist() == [[0, 0, 1, 0, 0], [0, 0, 0, 0, 0]]
    assert regression.education_changed(batch).tolist() == [[0, 0, 1, 0, 0], [0, 0, 0, 0, 0]]
    for name in ("location", "gender", "ethnicity"):
        assert torch.equal(regression.static(name)(batch), batch[name])


def test_regression_is_an_intercept_plus_one_effect_per_feature_clamped():
    model = build("regression", SIZES, "tiny")
    names = list(model.features)
    assert names == [
        "last_job",
        "job_before",
        "tenure",
        "years_observed",
        "year",
        "gap",
        "education",
        "education_changed",
        "location",
        "gender",
        "ethnicity",
    ]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.bias.copy_(torch.randn(model.bias.shape, generator=g))
        for table in model.effects.values():
            table.weight.copy_(torch.randn(table.weight.shape, generator=g) * 0.5)
            if table.padding_idx is not None:
                table.weight[table.padding_idx] = 0
    batch = hand_batch()
    values = {
        "last_job": 7,
        "job_before": 5,
        "tenure": 1,
        "years_observed": 3,
        "year": 14,
        "gap": 0,
        "education": 4,
        "education_changed": 0,
        "location": 3,
        "gender": 3,
        "ethnicity": 3,
    }
    expected = model.bias + sum(model.effects[n].weight[v] for n, v in values.items())
    logits, stay = model(batch)
    torch.testing.assert_close(logits[0, 3], expected[:-1].clamp(-10, 10))
    torch.testing.assert_close(stay[0, 3], expected[-1].clamp(-10, 10))
    # a batch without a covariate: its features add nothing (as CAREER ignores it)
    without = {k: v for k, v in batch.items() if k != "education"}
    expected = (
        expected
        - model.effects["education"].weight[4]
        - model.effects["education_changed"].weight[0]
    )
    logits, _ = model(without)
    torch.testing.assert_close(logits[0, 3], expected[:-1].clamp(-10, 10))
    with torch.no_grad():
        model.effects["last_job"].weight.mul_(100)
    logits, stay = model(batch)
    assert logits.abs().max() == 10 and stay.abs().max() <= 10  # clamped
    # a dataset without education or location: those features are left out
    fewer = build("regression", SIZES, "tiny", covariates=("year", "gender"))
    assert "education" not in fewer.features and "location" not in fewer.features
    assert "gap" in fewer.features and "job_before" in fewer.features


def test_regression_effects_get_the_weight_decay_and_the_intercept_does_not(
    single_process_group, monkeypatch
):
    """The L2 penalty is the optimizer's weight decay: through the real DeepSpeed engine."""
    from trainer import engine as ds_engine
    from trainer.accelerator import select_accelerator
    from trainer.step import NLLModule

    for name in ("RANK", "LOCAL_RANK"):
        monkeypatch.setenv(name, "0")
    for name in ("WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.setenv(name, "1")
    select_accelerator(use_gpu=False)
    config = make_config(
        "pretrain",
        "tiny",
        ["optim.weight_decay=0.25"],
        kind="regression",
        zero_stage=0,
        updates=1,
        tokens_per_update=100,
    ).resolve(1, False)
    model = build("regression", SIZES, "tiny")
    engine, optimizer, _ = ds_engine.initialize(NLLModule(model), config, 1)
    inner = getattr(optimizer, "optimizer", optimizer)
    names = {id(p): n for n, p in engine.module.named_parameters()}
    decay = {g["weight_decay"]: {names[id(p)] for p in g["params"]} for g in inner.param_groups}
    assert decay[0.25] == {f"model.effects.{n}.weight" for n in model.features}
    assert decay[0.0] == {"model.bias"}


# ----------------------------------------------------------------------------- bag of jobs
def test_bag_of_jobs_ignores_the_order_of_earlier_years():
    model = model_of("bag-of-jobs")
    batch = random_batch(B=1, T=7, lengths=(7,))
    targets = batch["targets"].clone()
    targets[0, :5] = torch.tensor([3, 4, 5, 6, 7])  # distinct earlier jobs, then the last two
    shuffled = targets.clone()
    shuffled[0, :5] = targets[0, [3, 0, 4, 2, 1]]  # earlier years permuted; last one kept
    out = []
    for t in (targets, shuffled):
        b = {**batch, "targets": t, "inputs": torch.cat([torch.tensor([[BOS_ID]]), t[:, :-1]], 1)}
        with torch.no_grad():
            out.append(model.log_probs(b)[0, -1])
    torch.testing.assert_close(out[0], out[1], rtol=1e-6, atol=1e-6)
    # ... while the mean itself is what it should be: jobs before last year's, <bos> excluded
    emb = torch.arange(12.0)[:, None].expand(12, 2)
    mean = bag_of_jobs.earlier_mean(emb[batch["inputs"]], batch["inputs"])
    inputs = batch["inputs"][0].tolist()
    assert mean[0, 0].tolist() == [0, 0] and mean[0, 1].tolist() == [0, 0]
    assert mean[0, 4, 0] == pytest.approx(sum(inputs[1:4]) / 3)
    # and the order of the last year does matter (it is not averaged away)
    other = {**batch, "inputs": batch["inputs"].clone()}
    other["inputs"][0, -1] = 11
    with torch.no_grad():
        assert not torch.allclose(model.log_probs(other)[0, -1], model.log_probs(batch)[0, -1])


def test_bag_of_jobs_is_causal():
    model = model_of("bag-of-jobs")
    batch = random_batch(B=1, T=7, lengths=(7,))
    with torch.no_grad():
        changed = {**batch, "targets": batch["targets"].clone()}
        changed["targets"][0, 4:] = 3  # targets from t = 4 on; inputs follow the targets
        changed["inputs"] = torch.cat([torch.tensor([[BOS_ID]]), changed["targets"][:, :-1]], 1)
        after = model.log_probs(changed)
        reference = model.log_probs(batch)
    torch.testing.assert_close(after[0, :5], reference[0, :5])  # position 4 reads targets < 4
    assert not torch.allclose(after[0, 5:], reference[0, 5:])  # (they do read them)


# ----------------------------------------------------------------------------- packages
def test_a_package_names_its_kind_and_hashes_every_other_file(tmp_path):
    model = model_of("regression")
    with torch.no_grad():
        model.effects["last_job"].weight.normal_()
    package = tmp_path / "package"
    metrics = {"valid_perplexity": 3.0}
    write_package(str(package), model.state_dict(), model.config, vocabulary(), metrics, "sha")
    config = json.loads((package / "config.json").read_text())
    assert config["kind"] == "regression" and config["model"]["kind"] == "regression"
    assert config["files"] == {
        n: hashlib.sha256((package / n).read_bytes()).hexdigest()
        for n in FILES
        if n != "config.json"
    }
    loaded = load_model(str(package))
    assert isinstance(loaded.model, regression.Regression) and loaded.kind == "regression"
    assert not loaded.model.training and loaded.metrics == {"valid_perplexity": 3.0}
    batch = hand_batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.log_probs(batch), model.log_probs(batch))


@pytest.mark.parametrize("kind", ["bag-of-jobs", "markov"])
def test_each_kind_loads_back_as_itself(tmp_path, kind):
    model = model_of(kind)
    write_package(str(tmp_path), model.state_dict(), model.config, vocabulary(), {}, "sha")
    loaded = load_model(str(tmp_path))
    assert type(loaded.model) is type(model) and loaded.model.config == model.config
    batch = random_batch()
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.model.token_log_probs(batch), model.token_log_probs(batch)
        )


def test_load_model_refuses_a_changed_or_missing_file_and_an_unknown_kind(tmp_path):
    model = model_of("bag-of-jobs")

    def fresh(name: str) -> Path:
        folder = tmp_path / name
        write_package(str(folder), model.state_dict(), model.config, vocabulary(), {"a": 1}, "sha")
        return folder

    changed = fresh("changed")
    (changed / "metrics.json").write_text(json.dumps({"a": 2}))  # readable, not the one packaged
    with pytest.raises(StructuralError, match="changed/metrics.json: .*sha256 does not match"):
        load_model(str(changed))
    weights = fresh("weights")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["head.bias"] += 1
    from safetensors.torch import save_file

    save_file(state, str(weights / "model.safetensors"), metadata={"format_version": "2"})
    with pytest.raises(StructuralError, match="model.safetensors: sha256 does not match"):
        load_model(str(weights))
    missing = fresh("missing")
    (missing / "vocab.json").unlink()
    with pytest.raises(StructuralError, match="vocab.json is missing"):
        load_model(str(missing))
    unknown = fresh("unknown")
    config = json.loads((unknown / "config.json").read_text())
    (unknown / "config.json").write_text(json.dumps({**config, "kind": "lstm"}))
    with pytest.raises(StructuralError, match=r"config.json: .*unknown model kind 'lstm'"):
        load_model(str(unknown))
    no_hashes = fresh("no_hashes")
    del config["files"]
    (no_hashes / "config.json").write_text(json.dumps(config))
    with pytest.raises(StructuralError, match="config.json lists no file sha256s"):
        load_model(str(no_hashes))


def test_a_package_from_before_kinds_loads_as_career(tmp_path):
    """Format 1: no `kind`, no file hashes (what packages held until model kinds)."""
    torch.manual_seed(0)
    model = build("career", SIZES, "tiny").eval()
    write_package(str(tmp_path), model.state_dict(), model.config, vocabulary(), {}, "sha")
    config = json.loads((tmp_path / "config.json").read_text())
    del config["kind"], config["files"], config["model"]["kind"]
    config["format_version"] = 1
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = load_model(str(tmp_path))
    assert loaded.kind == "career"
    batch = random_batch()
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.model.token_log_probs(batch), model.token_log_probs(batch)
        )


def test_fine_tuning_refuses_other_kinds():
    from trainer.context import check_finetune_kind
    from trainer.finetune import adapt_to_dataset

    vocab = vocabulary()
    with pytest.raises(StructuralError, match="fine-tuning a regression model is not implemented"):
        adapt_to_dataset(model_of("regression"), vocab, vocab, ("year",))
    with pytest.raises(StructuralError, match="fine-tuning a markov package is not implemented"):
        check_finetune_kind("markov", "career", "pkg")
    with pytest.raises(StructuralError, match="--model regression does not match the package"):
        check_finetune_kind("career", "regression", "pkg")


# ----------------------------------------------------------------------------- markov, end to end
TRAIN = [
    ("a a b", "2000 2001 2002"),
    ("b c", "2001 2002"),
    ("a b b c", "2000 2001 2002 2003"),
    ("c", "2005"),
    ("c a a", "2001 2002 2004"),
    ("b", "2000"),
]
VALID = [("a b", "2000 2001"), ("c c a", "2001 2003 2004"), ("d a", "2000 2001")]
TEST = [("a", "2000")]


@pytest.fixture(scope="module")
def hand_made(tmp_path_factory, ray_address):
    """A career-code dataset written by hand, its splits given; `d` is seen only in valid."""
    from data_shards.inputs import InputSpec
    from data_shards.shard import ShardConfig, shard_dataset

    root = tmp_path_factory.mktemp("hand_made")
    source = root / "input"
    source.mkdir()
    for split, people in (("train", TRAIN), ("valid", VALID), ("test", TEST)):
        (source / f"{split}.job").write_text("".join(f"{jobs}\n" for jobs, _ in people))
        (source / f"{split}.year").write_text("".join(f"{years}\n" for _, years in people))
        (source / f"{split}.id").write_text("".join(f"{split}{i}\n" for i in range(len(people))))
    spec = InputSpec(format="career-code", url=str(source))
    return shard_dataset(spec, str(root), "hand", ShardConfig(people_per_block=2)).dataset_url


def by_hand(vocab: Vocabulary, alpha: float) -> dict[tuple[str, int], float]:
    """log P of every valid job-year, (person, position) -> value, counted with dicts."""
    jobs = [j for j in vocab.fields["job"] if j not in ("<pad>", "<bos>")]  # <unk> is a job too
    pairs: dict[tuple[str, str], int] = {}
    rows: dict[str, int] = {}
    freq = dict.fromkeys(jobs, 0)
    for line, _ in TRAIN:
        sequence = ["<bos>", *line.split()]
        for prev, job in zip(sequence, sequence[1:], strict=False):
            pairs[prev, job] = pairs.get((prev, job), 0) + 1
            rows[prev] = rows.get(prev, 0) + 1
            freq[job] += 1
    total = sum(freq.values()) + 0.5 * len(jobs)
    unigram = {j: (freq[j] + 0.5) / total for j in jobs}
    out = {}
    for i, (line, _) in enumerate(VALID):
        sequence = ["<bos>", *line.split()]
        for t, (prev, job) in enumerate(zip(sequence, sequence[1:], strict=False)):
            p = (pairs.get((prev, job), 0) + alpha * unigram[job]) / (rows.get(prev, 0) + alpha)
            out[f"valid{i}", t] = math.log(p)
    return out


def test_markov_package_equals_counting_by_hand(hand_made, tmp_path, capsys):
    from cluster.cli import main

    out = tmp_path / "run"
    assert main(["pretrain", "--model", "markov", "--data", hand_made, "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    package = load_model(str(out / "package"))
    assert package.kind == "markov" and package.metrics == metrics
    # alpha: the candidate of least validation perplexity, computed by hand
    perplexities = {}
    for alpha in markov.ALPHAS:
        logp = by_hand(package.vocab, alpha)
        perplexities[alpha] = math.exp(-sum(logp.values()) / len(logp))
    best = min(perplexities, key=perplexities.get)
    assert metrics["alpha"] == best == package.model.config.alpha
    assert metrics["best_valid_perplexity"] == pytest.approx(perplexities[best], rel=1e-5)
    for alpha, value in metrics["alpha_valid_perplexity"].items():
        assert value == pytest.approx(perplexities[float(alpha)], rel=1e-9)
    # every valid job-year's probability in the package, read through the loader
    from data_shards.stream import CareerLoader, StreamConfig

    expected = by_hand(package.vocab, best)
    loader = CareerLoader(
        hand_made, StreamConfig(split="valid", shuffle=False, loop=False), num_workers=0
    )
    seen = {}
    with torch.no_grad():
        for batch in loader:
            logp = package.model.token_log_probs(batch)
            for i, person in enumerate(batch["person_id"]):
                for t in range(int(batch["lengths"][i])):
                    seen[person, t] = float(logp[i, t])
    assert seen.keys() == expected.keys()
    for key, value in expected.items():
        assert seen[key] == pytest.approx(value, rel=1e-5), key
    # the first year uses the distribution of first jobs, and an unseen last job the unigram
    table = package.model.log_table.exp()
    ids = package.vocab.ids("job")
    # c: 2 of 6 first years; 4 of 14 training tokens, 5 jobs with the prior (<unk> a b c d)
    first_c = (2 + best * (4 + 0.5) / (14 + 0.5 * 5)) / (6 + best)
    assert float(table[BOS_ID, ids["c"]]) == pytest.approx(first_c, rel=1e-5)
    assert torch.allclose(table[ids["d"]], table[PAD_ID])  # `d` never led anywhere in training
    # fine-tuning a markov package is refused (exit 2), before anything is written
    fine = tmp_path / "fine"
    refused = main(
        ["finetune", "--base", str(out / "package"), "--data", hand_made, "--out", str(fine)]
    )
    assert refused == 2 and not fine.exists()
    assert "fine-tuning a markov package is not implemented" in capsys.readouterr().err


def test_markov_on_record_tables_equals_counting_by_hand():
    """`markov.fit_markov` (record tables, for tests and benchmarks) is the kind's closed form:
    train a->b, a->a: u = (a 3 + .5, b 1 + .5, <unk> .5) / 5.5; alpha 1."""
    import pyarrow as pa

    model = markov.fit_markov(pa.table({"jobs": [["a", "b"], ["a", "a"]]}), alpha=1.0)
    got = model.log_probs(pa.table({"jobs": [["a", "b"], ["z"]]}))
    u = {"a": 3.5 / 5.5, "b": 1.5 / 5.5, "<unk>": 0.5 / 5.5}
    want = [(2 + u["a"]) / (2 + 1), (1 + u["b"]) / (2 + 1), (0 + u["<unk>"]) / (2 + 1)]
    assert torch.allclose(torch.from_numpy(got).exp(), torch.tensor(want, dtype=torch.float64))


def test_markov_dry_run_and_a_fixed_alpha(hand_made, tmp_path, capsys):
    from cluster.cli import main

    args = ["pretrain", "--model", "markov", "--data", hand_made, "--out", str(tmp_path / "run")]
    assert main([*args, "--dry-run"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["model"]["kind"] == "markov" and "closed form" in shown["fit"]
    assert (
        "deepspeed" not in shown and shown["model"]["parameters"] == 7**2
    )  # <pad> <bos> <unk> a-d
    assert not (tmp_path / "run").exists()
    assert main([*args, "model.alpha=3.0"]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["alpha"] == 3.0 and metrics["alpha_valid_perplexity"] == {}
    logp = by_hand(Vocabulary.load(f"{hand_made}/vocab.json"), 3.0)
    by_hand_perplexity = math.exp(-sum(logp.values()) / len(logp))
    assert metrics["best_valid_perplexity"] == pytest.approx(by_hand_perplexity, rel=1e-5)


# ----------------------------------------------------------------------------- training, slow
@pytest.fixture(scope="module")
def survey(tmp_path_factory, ray_address):
    from data_shards.inputs import InputSpec
    from data_shards.shard import ShardConfig, shard_dataset

    root = tmp_path_factory.mktemp("kinds")
    spec = InputSpec(format="synth", preset="nlsy79", people=400, seed=5)
    return shard_dataset(spec, str(root), "survey", ShardConfig(people_per_block=64)).dataset_url


def markov_perplexity(data_url: str) -> float:
    """Validation perplexity of the order-1 Markov model counted on the train split."""
    import pyarrow as pa
    from helpers import records_from_loader

    from trainer.models.markov import fit_markov

    tables = {
        split: pa.table(
            {"jobs": [r["jobs"] for r in records_from_loader(data_url, split).values()]}
        )
        for split in ("train", "valid")
    }
    return fit_markov(tables["train"], tables["valid"]).perplexity(tables["valid"])


def valid_perplexity(model, data_url: str) -> float:
    from trainer.closed_form import split_perplexity

    return split_perplexity(model, data_url, "valid", 16_000)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "extra"), [("regression", ["optim.lr=0.05"]), ("bag-of-jobs", ["optim.lr=0.01"])]
)
def test_baselines_train_through_the_trainer_and_their_packages_reproduce_it(
    survey, tmp_path, kind, extra
):
    out = tmp_path / "run"
    dry = career(
        "pretrain",
        "--model",
        kind,
        "--preset",
        "tiny",
        "--data",
        survey,
        "--out",
        str(out),
        "--dry-run",
        "--workers",
        "2",
    )
    described = json.loads(dry.stdout)["model"]
    assert described["kind"] == kind and described["parameters"] > 0
    career(
        "pretrain",
        "--model",
        kind,
        "--preset",
        "tiny",
        "--data",
        survey,
        "--out",
        str(out),
        "--updates",
        "16",
        "--eval-every",
        "8",
        "--tokens-per-update",
        "1500",
        "--launcher",
        "torchrun",
        "--workers",
        "2",
        "loader_workers=0",
        *extra,
    )
    metrics = json.loads((out / "metrics.json").read_text())
    package = load_model(str(out / "package"))
    assert package.kind == kind and package.config["model"]["kind"] == kind
    assert metrics["config"]["kind"] == kind and metrics["updates"] == 16
    assert package.model.num_parameters() == described["parameters"]  # what --dry-run showed
    assert valid_perplexity(package.model, survey) == pytest.approx(
        metrics["best_valid_perplexity"], rel=1e-5
    )
    torch.manual_seed(0)
    untrained = from_config(package.model.config).eval()
    (_, first), (_, last) = metrics["valid_history"]
    assert last < first < 0.9 * valid_perplexity(untrained, survey)
    # Below the order-1 Markov model fitted by counting (as the CAREER tests check): job
    # frequencies alone (unigram: 227 here) cannot get there; these models read the history.
    # (Measured: Markov 15.7; regression 6.4 and bag-of-jobs 7.6 after 16 updates.)
    assert last < markov_perplexity(survey)
