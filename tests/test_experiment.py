"""The experiment file of `career run`: built-in sizes, strict keys, errors naming the file."""

from __future__ import annotations

import pytest

from cluster.cli import main
from cluster.run.experiment import from_dict, load
from cluster.run.models import check_trainable
from cluster.run.sizes import SIZES, builtin
from data_shards.errors import StructuralError

WAGEPAN_YAML = """\
store: s3://bucket/runs
resumes: {name: resumes, simulate: resumes, people: 1000}
surveys:
  - {name: nlsy79, simulate: nlsy79, people: 300}
  - name: wagepan
    input: wagepan.csv
    format: panel
    panel: {person: nr, occupation_dummies: [occ1, occ2], education: educ}
    split_fractions: [0.8, 0.1, 0.1]
pretrain: {preset: tiny, updates: 10}
finetune: {preset: tiny, updates: 5, patience: 2}
baselines: {scratch: {}, regression: {preset: paper, lr: 0.05}, markov: {}}
"""


@pytest.mark.parametrize("size", list(SIZES))
def test_every_builtin_size_resolves(size):
    experiment = builtin(size)
    assert [s.name for s in experiment.surveys] == ["nlsy79", "nlsy97", "psid"]
    assert set(experiment.baselines) == {"scratch", "regression", "bag-of-jobs", "markov"}
    assert experiment.baseline_spec("regression").lr > experiment.finetune.lr
    check_trainable(experiment)  # every model's training config builds (markov lacked `small`)


def test_paper_size_is_the_papers():
    paper = builtin("paper")
    assert paper.resumes.people == 24_000_000 and paper.pretrain.preset == "paper"
    assert paper.pretrain.updates == 85_000 and paper.gpus_per_worker == 1


def test_a_file_with_a_real_panel_and_baseline_changes(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(WAGEPAN_YAML)
    experiment = load(str(path))
    wagepan = experiment.surveys[1]
    spec = wagepan.input_spec()
    assert spec.format == "panel" and spec.panel.person == "nr"
    assert spec.panel.occupation_dummies == ("occ1", "occ2")
    assert wagepan.shard_config().split_fractions == (0.8, 0.1, 0.1)
    regression = experiment.baseline_spec("regression")
    assert (regression.preset, regression.lr, regression.updates) == ("paper", 0.05, 5)
    assert experiment.baseline_spec("scratch") == experiment.finetune
    # The store is not part of what a resumed run must match; the rest is.
    moved = from_dict({**experiment.to_dict(), "store": "elsewhere"})
    assert moved.fingerprint() == experiment.fingerprint()
    changed = from_dict({**experiment.to_dict(), "workers": 3})
    assert changed.fingerprint() != experiment.fingerprint()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            WAGEPAN_YAML.replace("patience: 2", "patiense: 2"),
            "finetune: unknown key(s) ['patiense']",
        ),
        (WAGEPAN_YAML.replace("markov: {}", "markof: {}"), "unknown baselines ['markof']"),
        (WAGEPAN_YAML.replace("lr: 0.05", "lr: 0.05, wd: 1"), "baselines.regression: unknown key"),
        (WAGEPAN_YAML.replace("    format: panel\n", ""), "wagepan: `input` needs `format`"),
        (WAGEPAN_YAML.replace("name: wagepan", "name: nlsy79"), "dataset names must differ"),
        ("surveys: []\n", "at least one survey"),
        ("- just a list\n", "holds a mapping"),
        ("store: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_experiment_files_name_the_file(tmp_path, text, message):
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    with pytest.raises(StructuralError) as error:
        load(str(path))
    assert str(path) in str(error.value) and message in str(error.value)


def test_a_missing_file_and_an_unknown_size():
    with pytest.raises(StructuralError, match="cannot read the experiment file"):
        load("/nonexistent/exp.yaml")
    with pytest.raises(ValueError, match="unknown size 'huge'"):
        builtin("huge")


def test_a_model_that_cannot_be_built_stops_the_run_before_it_starts(tmp_path, capsys):
    """A preset the kind lacks, or an override it does not have, is an error at once (exit 2,
    naming the section), not a survey task's failure after pretraining; nothing is written."""
    cases = [
        (
            "regression: {preset: paper, lr: 0.05}",
            "regression: {preset: small, lr: 0.05}",
            "experiment baselines.regression: model kind regression has no preset 'small'",
        ),
        (
            "finetune: {preset: tiny, updates: 5, patience: 2}",
            "finetune: {preset: tiny, updates: 5, patience: 2, overrides: [model.widht=3]}",
            "experiment finetune: unknown model setting 'model.widht'",
        ),
    ]
    for old, new, message in cases:
        path = tmp_path / "exp.yaml"
        path.write_text(WAGEPAN_YAML.replace(old, new).replace("s3://bucket/runs", "store"))
        code = main(["run", "--config", str(path), "--dry-run"])
        assert code == 2 and message in capsys.readouterr().err
        assert not (tmp_path / "store").exists()
