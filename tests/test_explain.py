"""Greedy rationalization: `eval.explain`, `eval.explain_files` and `career explain`.

The toy process: six years 2000-2005, the jobs of 2000-2004 drawn at random, and the job of 2005
a copy of the job of 2001 (the second year). A tiny CAREER trained on it with word dropout 0.5
(plain torch, a few seconds on a CPU) can only know the 2005 job from 2001, so 2001 must be the
rationale of its 2005 prediction. Packages are written with `write_package` and opened with
`load_model`, as the command does.
"""

from __future__ import annotations

import collections
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import career, digest

from cluster.cli import main
from data_shards.errors import StructuralError
from data_shards.vocab import BOS_ID, Vocabulary, build_vocabulary
from eval.explain import explain_people, rationalize
from eval.explain_files import read_people
from eval.predict import Query
from trainer.finetune import adapt_to_dataset
from trainer.models.career import build_model
from trainer.models.registry import build
from trainer.package import load_model, write_package

JOBS = [str(1000 + 10 * i) for i in range(8)]
YEARS = list(range(2000, 2006))
COPIED = 1  # the 2005 job is the job of YEARS[COPIED] = 2001


def toy_vocab() -> Vocabulary:
    counts = {
        "job": collections.Counter(dict.fromkeys(JOBS, 1)),
        "year": collections.Counter(dict.fromkeys(map(str, YEARS), 1)),
    }
    return build_vocabulary(counts)


def toy_batch(vocab: Vocabulary, people: int, generator: torch.Generator) -> dict:
    jobs = torch.randint(len(JOBS), (people, len(YEARS)), generator=generator)
    jobs[:, -1] = jobs[:, COPIED]
    ids = torch.tensor([vocab.ids("job")[j] for j in JOBS])[jobs]
    year = torch.tensor([vocab.ids("year")[str(y)] for y in YEARS]).expand(people, -1)
    return {
        "inputs": torch.cat([torch.full((people, 1), BOS_ID), ids[:, :-1]], dim=1),
        "targets": ids,
        "year": year,
        "lengths": torch.full((people,), len(YEARS)),
    }


def toy_model(vocab: Vocabulary, word_dropout: float, steps: int = 0):
    torch.manual_seed(0)
    sizes = {"job": vocab.size("job"), "year": vocab.size("year")}
    model = build_model(sizes, "tiny", covariates=("year",), word_dropout=word_dropout)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        loss, count = model.nll(toy_batch(vocab, 128, generator))
        optimizer.zero_grad()
        (loss / count).backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def packages(tmp_path_factory) -> dict[str, str]:
    """A word-dropout CAREER trained on the toy process, an untrained one without word dropout,
    and a regression baseline, each a real package."""
    root = tmp_path_factory.mktemp("explain")
    vocab = toy_vocab()
    out = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: more threads only contend (seconds, not minutes)
    for name, model in (
        ("explainer", toy_model(vocab, 0.5, steps=400)),
        ("plain", toy_model(vocab, 0.0)),
        (
            "regression",
            build(
                "regression",
                {"job": vocab.size("job"), "year": vocab.size("year")},
                covariates=("year",),
            ),
        ),
    ):
        out[name] = str(root / name)
        write_package(out[name], model.state_dict(), model.config, vocab, {}, "toy")
    torch.set_num_threads(threads)
    return out


def distinct_history(rng: np.random.Generator) -> list[tuple[str, int]]:
    """Five years with five different jobs: the copied one is found nowhere else."""
    return list(zip(rng.choice(JOBS, 5, replace=False).tolist(), YEARS[:5], strict=True))


# ----------------------------------------------------------------------------- the model's mask
def test_visible_hides_exactly_what_word_dropout_hides():
    vocab = toy_vocab()
    model = toy_model(vocab, 0.5)
    batch = toy_batch(vocab, 4, torch.Generator().manual_seed(3))
    T = batch["inputs"].shape[1]
    plain = model.log_probs(batch)
    seen = model.log_probs({**batch, "visible": torch.ones(4, T, dtype=torch.bool)})
    torch.testing.assert_close(seen, plain, atol=1e-5, rtol=1e-5)  # all visible: the causal model
    hidden = torch.ones(4, T, dtype=torch.bool)
    hidden[:, 2] = False
    partial = model.log_probs({**batch, "visible": hidden})
    torch.testing.assert_close(partial[:, :3], plain[:, :3])  # up to itself: unchanged
    assert (partial[:, 3:].exp() - plain[:, 3:].exp()).abs().amax() > 1e-5  # later ones lost it
    # the training mask for the same draw: `visible` is that mask, not another one
    model.train()
    torch.manual_seed(7)
    trained = model.log_probs(batch)
    torch.manual_seed(7)
    keep = torch.rand(4, T) >= 0.5
    model.eval()
    torch.testing.assert_close(model.log_probs({**batch, "visible": keep}), trained)


# ----------------------------------------------------------------------------- the method
def test_the_rationale_of_the_copied_job_is_the_year_it_copies(packages):
    loaded = load_model(packages["explainer"])
    rng = np.random.default_rng(1)
    exact = 0
    for _ in range(20):
        history = distinct_history(rng)
        rationale = rationalize(loaded, Query(tuple(history)))
        assert rationale.year == 2005 and rationale.target == history[COPIED][0]  # it learned it
        assert rationale.is_top and rationale.p_target_full > 0.5
        assert [row.year for row in rationale.rows] == YEARS[:5] and rationale.rows[-1].last
        if rationale.kept_years:
            assert rationale.kept_years == [YEARS[COPIED]]  # that year, and nothing else
            row = rationale.rows[COPIED]
            assert row.kept and row.step == 1 and row.p_after == rationale.p_target_kept
            assert rationale.p_target_kept > 0.5 > rationale.p_target_empty
            exact += 1
        else:  # with no past year the distribution is near uniform: its top may be the target
            assert rationale.p_target_kept == rationale.p_target_empty < 0.2
    assert exact >= 14


def test_a_target_the_history_cannot_justify_keeps_every_year(packages):
    loaded = load_model(packages["explainer"])
    history = distinct_history(np.random.default_rng(2))
    absent = next(job for job in JOBS if job not in {j for j, _ in history})
    rationale = rationalize(loaded, Query(tuple(history)), target=absent)
    assert rationale.given and rationale.target == absent and not rationale.is_top
    assert rationale.kept_years == YEARS[:4]  # greedy ran out of years
    assert math.isclose(rationale.p_target_kept, rationale.p_target_full, rel_tol=1e-4)
    assert rationale.top_full == history[COPIED][0]
    payload = json.loads(json.dumps(rationale.to_dict()))  # JSON-serialisable as it is
    assert payload["kept_years"] == YEARS[:4] and len(payload["rows"]) == 5
    with pytest.raises(ValueError, match="not a job the model knows"):
        rationalize(loaded, Query(tuple(history)), target="9999")


def test_fine_tuning_applies_word_dropout_and_keeps_the_architecture(packages):
    base = load_model(packages["plain"])
    tuned, _ = adapt_to_dataset(
        base.model, base.vocab, base.vocab, ("year",), {"word_dropout": 0.5, "n_layer": 2}
    )
    assert tuned.config.word_dropout == 0.5 and tuned.config.n_layer == 2  # once left at 0
    with pytest.raises(StructuralError, match="keeps the package's architecture"):
        adapt_to_dataset(base.model, base.vocab, base.vocab, ("year",), {"n_layer": 4})


# ----------------------------------------------------------------------------- the command
def test_career_explain_prints_one_line_per_year(packages, capsys):
    loaded = load_model(packages["explainer"])
    history = distinct_history(np.random.default_rng(4))
    text = " ".join(f"{job}:{year}" for job, year in history)
    before = digest(packages["explainer"])
    captured = career("explain", "--model", packages["explainer"], "--history", text)
    assert digest(packages["explainer"]) == before  # (the installed command; no input modified)
    lines = captured.stdout.splitlines()
    assert lines[0] == f"why {history[COPIED][0]} in 2005 (the model's top job)"
    for (job, year), line in zip(history, lines[1:6], strict=True):
        assert line.split()[:2] == [str(year), job]
    assert "kept" in lines[1 + COPIED] and lines[5].split()[2] == "seen"
    assert sum("kept" in line for line in lines[1:6]) <= 1 and lines[6].startswith("P(")
    assert "warning" not in captured.stderr  # a word-dropout package
    given = JOBS[0] if history[COPIED][0] != JOBS[0] else JOBS[1]
    assert (
        main(
            [
                "explain",
                "--model",
                packages["explainer"],
                "--history",
                text,
                "--target",
                given,
                "--json",
            ]
        )
        == 0
    )
    shown = json.loads(capsys.readouterr().out)
    assert shown["target"] == given and shown["given"] and len(shown["rows"]) == 5
    assert shown == rationalize(loaded, Query(tuple(history)), given).to_dict()


def test_career_explain_reads_a_file_and_reports_each_refused_line(packages, tmp_path, capsys):
    history = distinct_history(np.random.default_rng(5))
    text = " ".join(f"{job}:{year}" for job, year in history)
    people = tmp_path / "people.jsonl"
    people.write_bytes(
        b"\n".join(
            [
                json.dumps({"id": "a", "history": text}).encode(),
                json.dumps(
                    {"id": "b", "history": "1000:2003 1010:2001"}
                ).encode(),  # years out of order
                b"",
                json.dumps(
                    {"id": "c", "history": text, "target": "9999"}
                ).encode(),  # model lacks it
                json.dumps({"id": "d", "history": text, "colour": "red"}).encode(),  # unknown key
                b'{"id": "e", "history": "1000:2001 caf\xe9:2002"}',  # not UTF-8
                json.dumps({"id": "f", "history": text, "target": JOBS[3]}).encode(),
            ]
        )
        + b"\n"
    )
    out = tmp_path / "rationales.jsonl"
    code = main(
        ["explain", "--model", packages["explainer"], "--input", str(people), "--out", str(out)]
    )
    assert code == 0
    captured = capsys.readouterr()
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["line"] for r in results] == [1, 2, 4, 5, 6, 7]  # every line read, in order
    assert results[0]["id"] == "a" and results[0]["target"] == history[COPIED][0]
    assert results[-1]["id"] == "f" and results[-1]["target"] == JOBS[3] and results[-1]["given"]
    errors = {r["line"]: r["error"] for r in results if "error" in r}
    assert set(errors) == {2, 4, 5, 6}
    assert "increase" in errors[2] and "not a job the model knows" in errors[4]
    assert "unknown keys" in errors[5] and "not UTF-8" in errors[6]
    assert "2 rationales and 4 refused lines" in captured.out
    for line in errors:
        assert f"{people}:{line}: refused" in captured.err


def test_career_explain_warns_without_word_dropout(packages, capsys):
    code = main(["explain", "--model", packages["plain"], "--history", "1000:2000 1010:2001"])
    assert code == 0  # a warning, not a refusal
    captured = capsys.readouterr()
    assert "trained without word dropout" in captured.err and "unreliable" in captured.err
    assert captured.out.startswith("why ")


def test_career_explain_refuses_bad_input_clearly(packages, tmp_path, capsys):
    model = ["explain", "--model", packages["explainer"]]
    # an unknown job code: read as <unk>, named in a warning and in the output (as predict does)
    assert main([*model, "--history", "1000:2000 7777:2001 1010:2002"]) == 0
    captured = capsys.readouterr()
    assert "read as <unk>: 7777" in captured.err and "7777" in captured.out
    # a --target the vocabulary lacks, or a special token: exit 2 before anything is read
    for target in ("9999", "<pad>"):
        assert main([*model, "--history", "1000:2000", "--target", target]) == 2
        assert "not a job the model knows" in capsys.readouterr().err
    # a line that is not JSON: exit 2 naming the file and line, nothing written
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"history": "1000:2000"}) + "\n" + '{"history": \n')
    out = tmp_path / "out.jsonl"
    assert main([*model, "--input", str(bad), "--out", str(out)]) == 2
    assert f"{bad}:2: not JSON" in capsys.readouterr().err and not out.exists()
    assert main([*model, "--input", str(tmp_path / "none.jsonl"), "--out", str(out)]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "blank.jsonl").write_text("\n\n")
    with pytest.raises(StructuralError, match="no people"):
        read_people(str(tmp_path / "blank.jsonl"))
    # years out of order, a baseline package, no history: exit 2 with the reason
    assert main([*model, "--history", "1000:2002 1010:2001"]) == 2
    assert "must increase" in capsys.readouterr().err
    assert main(["explain", "--model", packages["regression"], "--history", "1000:2000"]) == 2
    assert "need a career package" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(model)
    assert exit_.value.code == 2 and "either --history or --input" in capsys.readouterr().err


# ----------------------------------------------------------------------------- a dataset split
def write_career_code(folder: Path, people: int, seed: int) -> None:
    """The toy process as a career-code folder (train, valid and test)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for split in ("train", "valid", "test"):
        rows = [distinct_history(rng) for _ in range(people)]
        rows = [[*row, (row[COPIED][0], YEARS[-1])] for row in rows]
        (folder / f"{split}.job").write_text("\n".join(" ".join(j for j, _ in r) for r in rows))
        (folder / f"{split}.year").write_text(
            "\n".join(" ".join(str(y) for _, y in r) for r in rows)
        )


def test_explain_people_of_a_dataset_split(packages, tmp_path, ray_address, capsys):
    from data_shards.inputs import InputSpec
    from data_shards.shard import ShardConfig, shard_dataset

    write_career_code(tmp_path / "toy", 20, seed=6)
    parent = f"{packages['explainer']}/vocab.json"
    data = shard_dataset(
        InputSpec(format="career-code", url=str(tmp_path / "toy")),
        str(tmp_path / "data"),
        "toy",
        ShardConfig(people_per_block=8),
        parent,
    ).dataset_url
    loaded = load_model(packages["explainer"])
    found = explain_people(loaded, data, "test", people=5)
    assert len(found) == 5 and len({r["id"] for r in found}) == 5
    for rationale in found:
        assert rationale["year"] == 2005 and rationale["observed"] == rationale["target"]
        assert rationale["kept_years"] in ([], [YEARS[COPIED]])
        assert [row["year"] for row in rationale["rows"]] == YEARS[:5]
    assert explain_people(loaded, data, "test", people=100)[:5] == found  # same people, in order
    held = explain_people(loaded, data, "test", people=3, target="observed", movers=True)
    assert [r["id"] for r in held] == [r["id"] for r in found[:3]]  # every toy person moves
    assert all(r["given"] and r["target"] == r["observed"] for r in held)
    with pytest.raises(ValueError, match="predicted' or 'observed"):
        explain_people(loaded, data, "test", target="top")
    # fine-tuning with word dropout keeps the package's architecture and turns it on
    code = main(
        [
            "finetune",
            "--base",
            packages["plain"],
            "--data",
            data,
            "--out",
            str(tmp_path / "fine"),
            "--dry-run",
            "model.word_dropout=0.5",
        ]
    )
    assert code == 0
    described = json.loads(capsys.readouterr().out)["model"]
    assert described["word_dropout"] == 0.5 and described["n_layer"] == 2
