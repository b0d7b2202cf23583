"""`career report`: a run's HTML page and Markdown twin, from a tiny real run.

The module's run is made as `career run` lays it out: a simulated resume corpus and one NLSY79
survey sharded into RUN/datasets/, tiny CAREER pretraining, a fine-tune, the regression and
Markov baselines trained with the `career` command, and `career evaluate` on the survey. PSID is
named by the experiment but never started, and two models of NLSY79 are never trained: the
report must say so. The page is then opened in a real headless Chromium (Debian's chromium and
chromedriver through Selenium; installed by tests/install_chromium.sh when missing).
"""

from __future__ import annotations

import base64
import json
import math
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import career, career_all, digest, new_bucket
from PIL import Image

from cluster import report_job
from cluster.cli import main
from data_shards.errors import StructuralError
from data_shards.inputs import InputSpec
from data_shards.shard import ShardConfig, shard_dataset
from eval import comparison_table as table
from eval import scores
from eval.report import build_report
from eval.report.run import load_run

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--preset",
    "tiny",
    "--updates",
    "6",
    "--tokens-per-update",
    "1500",
    "--workers",
    "1",
    "--eval-every",
    "3",
    "--launcher",
    "torchrun",
    "loader_workers=0",
    "cpu_threads=1",
    "log_every=2",
]
IMG = re.compile(r'<img src="([^"]+)"')


@pytest.fixture(scope="module")
def run(tmp_path_factory, ray_address) -> Path:
    root = tmp_path_factory.mktemp("report") / "RUN"
    data = root / "datasets"
    config = ShardConfig(people_per_block=32, blocks_per_shard=2)
    resumes = shard_dataset(
        InputSpec(format="synth", preset="resumes", people=300, seed=1),
        str(data),
        "resumes",
        config,
    ).dataset_url
    survey_config = ShardConfig(people_per_block=32, split_fractions=(0.6, 0.1, 0.3))
    shard_dataset(
        InputSpec(format="synth", preset="nlsy79", people=300, seed=2),
        str(data),
        "nlsy79",
        survey_config,
        f"{resumes}/vocab.json",
    )
    experiment = {"surveys": ["nlsy79", "psid"], "resumes": "resumes", "seed": 0}
    (root / "experiment.json").write_text(json.dumps(experiment))
    steps = [
        {"step": "shard resumes", "seconds": 12.5, "status": "done"},
        {"step": "pretrain", "seconds": 30.25, "status": "done"},
    ]
    (root / "steps.json").write_text(json.dumps(steps))
    survey = "surveys/nlsy79"
    career_all(
        ["pretrain", "--data", "datasets/resumes", "--out", "pretrain", *TINY],
        [
            "pretrain",
            "--model",
            "regression",
            "--data",
            "datasets/nlsy79",
            "--out",
            f"{survey}/regression",
            *TINY,
            "optim.lr=0.05",
        ],
        ["pretrain", "--model", "markov", "--data", "datasets/nlsy79", "--out", f"{survey}/markov"],
        cwd=root,
    )
    career_all(
        [
            "finetune",
            "--base",
            "pretrain/package",
            "--data",
            "datasets/nlsy79",
            "--out",
            f"{survey}/finetuned",
            *TINY,
        ],
        cwd=root,
    )
    models = [f"{m}={root}/{survey}/{m}/package" for m in ("finetuned", "regression", "markov")]
    code = main(
        [
            "evaluate",
            *(a for m in models for a in ("--model", m)),
            "--data",
            f"{data}/nlsy79",
            "--out",
            f"{root}/{survey}/evaluation",
            "--bootstrap",
            "100",
            "--transition-jobs",
            "8",
            "--ray-address",
            ray_address,
        ]
    )
    assert code == 0
    return root


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
    with Image.open(path) as image:
        image.load()
        return image.size


# ----------------------------------------------------------------------------- the evaluation
@pytest.mark.slow
def test_the_evaluation_writes_the_transition_aggregate(run):
    evaluation = run / "surveys" / "nlsy79" / "evaluation"
    report = json.loads((evaluation / "metrics.json").read_text())
    assert report["transitions"]["markov"]["nlsy79"] == "transitions/markov__nlsy79.json"
    table_ = scores.read_scores(str(evaluation / "scores" / "markov__nlsy79.parquet")).to_pylist()
    later = [r for r in table_ if r["prev_job"] is not None]
    counts: dict[str, int] = {}
    for r in later:
        counts[r["prev_job"]] = counts.get(r["prev_job"], 0) + 1
    for model in ("finetuned", "regression", "markov"):
        aggregate = json.loads((evaluation / "transitions" / f"{model}__nlsy79.json").read_text())
        jobs = aggregate["jobs"]
        assert len(jobs) == 8 and aggregate["columns"] == [*jobs, "<other>"]
        # The rows are the split's most frequent previous jobs, most frequent first.
        assert [counts[j] for j in jobs] == sorted(counts.values(), reverse=True)[:8]
        assert aggregate["row_tokens"] == [counts[j] for j in jobs]
        predicted = np.array(aggregate["predicted"])
        assert predicted.shape == (8, 9) and np.allclose(predicted.sum(1), 1.0, atol=1e-6)
        observed = np.array(aggregate["observed"])
        assert observed.sum(1).tolist() == aggregate["row_tokens"]
        for i, job in enumerate(jobs):
            row = [r["target_job"] for r in later if r["prev_job"] == job]
            expected = [row.count(c) for c in jobs] + [sum(t not in jobs for t in row)]
            assert observed[i].tolist() == expected
        assert aggregate["model_kind"] == model.replace("finetuned", "career")
    # Markov's P(next | previous) is the same for every token: the mean is each token's value.
    aggregate = json.loads((evaluation / "transitions" / "markov__nlsy79.json").read_text())
    index = {job: i for i, job in enumerate(aggregate["jobs"])}
    checked = 0
    for r in later:
        if r["prev_job"] in index and r["target_job"] in index:
            value = aggregate["predicted"][index[r["prev_job"]]][index[r["target_job"]]]
            assert value == pytest.approx(math.exp(r["logp"]), rel=1e-4)
            checked += 1
    assert checked > 50


# ----------------------------------------------------------------------------- the report
@pytest.fixture(scope="module")
def report(run) -> Path:
    """The report of the module's run, written by `career report RUN` (default --out)."""
    inputs = [p for p in run.iterdir() if p.name != "report"]
    before = digest(*inputs)
    career("report", str(run))  # the installed command
    assert digest(*inputs) == before  # nothing of the run modified
    return run / "report"


@pytest.mark.slow
def test_the_report_holds_every_section_and_says_what_is_missing(run, report):
    html = (report / "report.html").read_text()
    md = (report / "report.md").read_text()
    # 1. the comparison table, as `career evaluate` wrote it in table.md (oracle row included)
    table_md = (run / "surveys" / "nlsy79" / "evaluation" / "table.md").read_text()
    rows = [line for line in table_md.splitlines() if line.startswith("|")]
    assert len(rows) == 2 + 4 and any(line.startswith("| oracle |") for line in rows)
    assert all(line in md.splitlines() for line in rows)
    metrics = json.loads((run / "surveys" / "nlsy79" / "evaluation" / "metrics.json").read_text())
    for row in metrics["comparison"]["nlsy79"]["rows"]:
        cells = "".join(f"<td>{c}</td>" for c in table.row_cells(row))
        assert cells.replace("&", "&amp;") in html, row["model"]
    # 2-5. one figure each: learning curves (pretraining and the survey), perplexity bars,
    # reliability diagram, transition heatmap, every one a real PNG beside the page
    images = IMG.findall(html)
    assert (
        sorted(images)
        == sorted(set(images))
        == sorted(
            f"plots/{name}.png"
            for name in (
                "learning-pretrain",
                "learning-nlsy79",
                "perplexity-nlsy79-nlsy79",
                "calibration-nlsy79-nlsy79",
                "transitions-nlsy79-nlsy79-finetuned",
            )
        )
    )
    assert re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md) == images  # the twin shows the same figures
    for image in images:
        width, height = _png_size(report / image)
        assert width > 200 and height > 200
    # Offline: no script, no external style sheet, font or image.
    assert "<script" not in html and "<link" not in html and "@import" not in html
    assert not re.search(r"(src|href)=\"(https?:)?//", html) and "url(" not in html
    # 6. the data summary from the manifests, and the step times
    manifest = json.loads((run / "datasets" / "nlsy79" / "manifest.json").read_text())
    totals = manifest["totals"]
    assert f"| nlsy79 | {totals['people_written']:,} | {totals['tokens']:,} | 0 | 0 |" in md
    assert "| shard resumes | 12.5 | done |" in md and "42.8 s of wall time" in md
    # What is missing is named, in both.
    for text in (
        "psid: not started (surveys/psid/)",
        "nlsy79: not trained yet: scratch, bag-of-jobs",
        "psid: no evaluation yet (surveys/psid/evaluation/metrics.json)",
        "dataset psid: not there yet (datasets/psid/manifest.json)",
    ):
        assert text in md and text in html.replace("&#x27;", "'"), text
    assert "train_history" not in md  # every training run here recorded its training loss


@pytest.mark.slow
def test_the_page_renders_in_headless_chromium(run, report, chromium, tmp_path, capsys):
    from selenium.webdriver.common.by import By

    driver = chromium
    driver.get((report / "report.html").as_uri())
    deadline = time.time() + 30
    while not driver.execute_script(
        "return document.readyState === 'complete' && "
        "Array.from(document.images).every(i => i.complete)"
    ):
        assert time.time() < deadline, "the page's images did not load within 30 s"
        time.sleep(0.1)
    images = driver.execute_script(
        "return Array.from(document.images).map(i => [i.getAttribute('src'), i.naturalWidth, "
        "i.naturalHeight])"
    )
    assert len(images) == 5 and all(w > 0 and h > 0 for _, w, h in images), images
    # The comparison rows render as table rows, cell by cell.
    rendered = [
        [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
        for row in driver.find_elements(By.CSS_SELECTOR, "table tbody tr")
    ]
    metrics = json.loads((run / "surveys" / "nlsy79" / "evaluation" / "metrics.json").read_text())
    for row in metrics["comparison"]["nlsy79"]["rows"]:
        assert table.row_cells(row) in rendered, row["model"]
    assert driver.find_element(By.ID, "comparison").text == "Model comparison"
    missing = driver.find_elements(By.CSS_SELECTOR, "p.missing")
    assert any("psid: not started" in p.text for p in missing)
    severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe  # no resource failed to load
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}
    )
    path = tmp_path / "report-screenshot.png"
    path.write_bytes(base64.b64decode(shot["data"]))
    width, height = _png_size(path)
    assert width > 500 and height > 2000  # the whole page, not only the first screen
    with capsys.disabled():
        print(f"\nscreenshot of the report in headless Chromium: {path}")


@pytest.mark.slow
def test_the_report_reads_and_writes_an_object_store(run, s3_endpoint):
    import s3fs

    url, options = new_bucket(s3_endpoint, "report")
    fs = s3fs.S3FileSystem(**options)
    for path in run.rglob("*"):
        relative = path.relative_to(run).as_posix()
        if path.is_file() and not re.match(r"(.*/)?(checkpoints|tb|report)/", relative):
            fs.put_file(str(path), f"{url[5:]}/run/{relative}")
    written = build_report(f"{url}/run", f"{url}/out", options)
    html = fs.cat_file(f"{url[5:]}/out/report.html").decode()
    assert sorted(IMG.findall(html)) == written.plots and len(written.plots) == 5
    for plot in written.plots:
        assert fs.cat_file(f"{url[5:]}/out/{plot}")[:8] == b"\x89PNG\r\n\x1a\n"
    local = (run / "report" / "report.md").read_text()
    remote = fs.cat_file(f"{url[5:]}/out/report.md").decode()
    assert remote.replace(f"{url}/run", str(run)) == local  # the same report, wherever it lies


# ----------------------------------------------------------------------------- runs in progress
def _write(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))


def test_a_run_in_progress_is_reported_as_far_as_it_goes(tmp_path, capsys):
    root = tmp_path / "RUN"
    _write(root / "experiment.json", {"surveys": ["nlsy79"], "resumes": "resumes"})
    # An older pretraining run: validation history only (no train_history yet).
    _write(
        root / "pretrain" / "metrics.json",
        {
            "valid_history": [[100, 3.7], [200, 3.4]],
            "best_step": 200,
            "updates": 200,
            "best_valid_perplexity": 3.4,
            "tokens_seen": 1.6e6,
            "wall_seconds": 61.0,
        },
    )
    _write(
        root / "surveys" / "nlsy79" / "markov" / "metrics.json",
        {
            "kind": "markov",
            "fit": "closed form",
            "valid_history": [[0, 4.2]],
            "best_valid_perplexity": 4.2,
            "updates": 0,
        },
    )
    assert main(["report", str(root), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    md = (tmp_path / "out" / "report.md").read_text()
    assert "nlsy79: no evaluation yet" in md and "dataset resumes: not there yet" in md
    assert "pretraining: no training-loss history" in md
    assert "nlsy79: markov: no training-loss" not in md  # a closed-form fit has none to have
    assert "| pretraining | career | 200 | 1,600,000 | 200 | 3.4 | 61 |" in md
    assert "No step times recorded" in md
    assert sorted(IMG.findall((tmp_path / "out" / "report.html").read_text())) == [
        "plots/learning-nlsy79.png",
        "plots/learning-pretrain.png",
    ]
    assert "missing (named in the report)" in printed and "dataset resumes: not there" in printed


def test_a_folder_that_is_not_a_run_is_refused(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a run")
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"career report: error: {tmp_path}: not a run folder" in err
    assert not (tmp_path / "report").exists()
    with pytest.raises(StructuralError, match="no such run folder"):
        load_run(str(tmp_path / "absent"))


def test_report_settings_default_out_and_guard(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    s = report_job.ReportSettings(run="RUN")
    assert s.run == str(tmp_path / "RUN") and s.out == str(tmp_path / "RUN" / "report")
    _write(tmp_path / "RUN" / "experiment.json", {"surveys": []})
    # An output inside what the report reads is refused before anything is written.
    assert main(["report", "RUN", "--out", "RUN/pretrain/x"]) == 2
    assert "--out lies inside RUN/pretrain" in capsys.readouterr().err
    assert not (tmp_path / "RUN" / "pretrain").exists()


# ----------------------------------------------------------------------------- the browser
@pytest.fixture(scope="session")
def chromium():
    """Headless Chromium driven by Selenium through Debian's chromedriver (never a downloaded
    browser or driver); installed by tests/install_chromium.sh when missing."""
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        proc = subprocess.run(
            ["bash", str(ROOT / "tests" / "install_chromium.sh")],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if proc.returncode or not (shutil.which("chromium") and shutil.which("chromedriver")):
            pytest.fail(
                "headless Chromium is needed by the report test and could not be installed: "
                "tests/install_chromium.sh (apt-get install chromium chromium-driver) failed "
                f"with exit {proc.returncode}:\n{(proc.stdout + proc.stderr)[-2000:]}"
            )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,900",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    yield driver
    driver.quit()


def test_the_step_table_counts_side_by_side_tasks_once():
    """Two survey tasks that ran at the same time over 100 s, after a 50 s step, then a pause
    (a crash and a resume) and a 10 s step: 160 s of wall time, not the 260 s the steps add to."""
    from eval.report.sections import busy_seconds

    steps = [
        {"step": "pretrain", "seconds": 50.0, "ended": 1050.0},
        {"step": "survey a", "seconds": 100.0, "ended": 1150.0},
        {"step": "survey b", "seconds": 90.0, "ended": 1145.0},
        {"step": "report", "seconds": 10.0, "ended": 5000.0},
    ]
    assert busy_seconds(steps) == pytest.approx(160.0)
    assert busy_seconds([*steps, {"step": "old", "seconds": 7.0}]) == pytest.approx(167.0)
