"""`career run`: the whole experiment as resumable steps on Ray, ending in one table per survey.

The run lives in RUN = STORE/RUN_ID (a local folder or an object-store prefix):

    experiment.json             the resolved experiment (a resumed run must match it)
    steps.json                  each step's status and wall time, rewritten as steps end
    datasets/NAME/              `career shard` of the resumes and of every survey (the surveys
                                extend the resume vocabulary)
    pretrain/                   CAREER on the resumes (Ray Train, DeepSpeed ZeRO)
    surveys/SURVEY/MODEL/       finetuned, then the baselines (scratch, regression, ...)
    surveys/SURVEY/evaluation/  `career evaluate` of them all on the survey's test split
    report/                     `career report` (HTML and Markdown)

A step is complete only when its last file is written (a dataset's manifest.json, a run's
metrics.json), so a run stopped anywhere (Ctrl-C, a lost node, a killed driver) is continued by
`career run --run-id ID`: completed steps are skipped, and pretraining and fine-tuning continue
from their last checkpoint (every evaluation writes one).

After pretraining, one Ray task per survey trains that survey's models and evaluates them. The
tasks run side by side as far as the cluster's CPUs and GPUs allow: each holds no CPU itself
(`num_cpus=0`), only the Ray Train workers and scoring tasks it starts do.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cluster import flags
from cluster.experiment import BASELINE_KIND, BASELINES, SIZES, Experiment, TrainSpec
from cluster.settings import RaySettings, StorageSettings
from data_shards import storage
from data_shards.errors import StructuralError

RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass
class RunLayout:
    """Where each step of a run writes (see the module docstring)."""

    url: str

    def dataset(self, name: str) -> str:
        return storage.join(self.url, "datasets", name)

    @property
    def pretrain(self) -> str:
        return storage.join(self.url, "pretrain")

    def model(self, survey: str, model: str) -> str:
        return storage.join(self.url, "surveys", survey, model)

    def evaluation(self, survey: str) -> str:
        return storage.join(self.url, "surveys", survey, "evaluation")

    def forecast(self, survey: str) -> str:
        """`career forecast`'s output for the survey (forecast.json last)."""
        return storage.join(self.url, "surveys", survey, "forecast")

    def forecast_model(self, survey: str, model: str) -> str:
        """A model trained on the survey cut at the forecasting cutoff."""
        return storage.join(self.forecast(survey), "models", model)

    def wages(self, survey: str) -> str:
        return storage.join(self.url, "surveys", survey, "wages")

    def explain(self, survey: str) -> str:
        return storage.join(self.url, "surveys", survey, "explain")

    def explain_model(self, survey: str) -> str:
        """CAREER fine-tuned with word dropout, for rationales."""
        return storage.join(self.explain(survey), "model")

    @property
    def report(self) -> str:
        return storage.join(self.url, "report")


@dataclass
class StepLog:
    """steps.json: every step's status and time, rewritten whenever one ends (from the driver)."""

    url: str
    storage_options: dict | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)

    def record(self, step: str, status: str, seconds: float, **extra: Any) -> None:
        self.steps = [s for s in self.steps if s["step"] != step]
        entry = {"step": step, "status": status, "seconds": round(seconds, 1)}
        entry["ended"] = round(time.time(), 1)  # wall clock: how steps overlapped
        self.steps.append({**entry, **extra})
        storage.write_bytes_atomic(
            storage.join(self.url, "steps.json"),
            json.dumps(self.steps, indent=1).encode(),
            self.storage_options,
        )


def _done(url: str, last_file: str, storage_options) -> bool:
    return storage.exists(storage.join(url, last_file), storage_options)


# ----------------------------------------------------------------------------- one model
def spec_config(spec: TrainSpec, kind: str, recipe: str, gpus_per_worker: float):
    """The training config of one of the experiment's models (`trainer.config.TrainConfig`)."""
    from trainer.config import make_config

    overrides = [f"optim.lr={spec.lr}", "loader_workers=0", *spec.overrides]
    if spec.weight_decay is not None:
        overrides.append(f"optim.weight_decay={spec.weight_decay}")
    if not gpus_per_worker:
        overrides.append("cpu_threads=1")
    return make_config(
        recipe,
        spec.preset,
        overrides,
        kind=kind,
        updates=spec.updates,
        tokens_per_update=spec.tokens_per_update,
        eval_every=spec.eval_every,
        patience=spec.patience,
        zero_stage=spec.zero_stage,
    )


def train_settings(
    spec: TrainSpec,
    kind: str,
    recipe: str,
    data: str,
    out: str,
    workers: int,
    gpus_per_worker: float,
    base: str | None,
    ray_address: str | None,
    storage_options: dict | None,
    cpus_per_worker: float = 1.0,
):
    """The `career pretrain` / `career finetune` settings one step trains with."""
    from cluster.settings import TrainingSettings

    return TrainingSettings(
        recipe=recipe,
        config=spec_config(spec, kind, recipe, gpus_per_worker),
        data=data,
        out=out,
        base=base,
        workers=workers,
        gpus_per_worker=gpus_per_worker,
        cpus_per_worker=cpus_per_worker,
        ray=RaySettings(ray_address=ray_address),
        storage=StorageSettings(storage_options=storage_options),
    )


def check_trainable(experiment: Experiment) -> None:
    """Build every model's training config before anything runs, so that a preset a kind lacks or
    a misspelt override stops the run at once, naming its section, rather than a survey task
    after pretraining."""
    sections = [("pretrain", experiment.pretrain, "career", "pretrain")]
    sections += [
        ("finetune" if m == "finetuned" else f"baselines.{m}", *model_spec(experiment, m))
        for m in survey_models(experiment)
    ]
    if experiment.explain is not None:
        sections.append(("explain", experiment.explain_spec(), "career", "finetune"))
    for where, spec, kind, recipe in sections:
        try:
            spec_config(spec, kind, recipe, experiment.gpus_per_worker)
        except ValueError as error:
            raise ValueError(f"experiment {where}: {error}") from None


def read_metrics(url: str, storage_options) -> dict[str, Any]:
    return json.loads(storage.read_text(storage.join(url, "metrics.json"), storage_options))


# ----------------------------------------------------------------------------- one survey
def survey_models(experiment: Experiment) -> list[str]:
    """The models trained on every survey, in the table's order."""
    return ["finetuned", *[b for b in BASELINES if b in experiment.baselines]]


def model_spec(experiment: Experiment, model: str) -> tuple[TrainSpec, str, str]:
    """How a survey model trains: its settings, model kind and recipe."""
    if model == "finetuned":
        return experiment.finetune, "career", "finetune"
    return experiment.baseline_spec(model), BASELINE_KIND[model], "pretrain"


def survey_pipeline(
    experiment_dict: dict[str, Any],
    survey: str,
    run_url: str,
    ray_address: str | None,
    storage_options: dict | None,
) -> dict[str, Any]:
    """Train every model of one survey and evaluate them (a Ray task, or in the driver)."""
    from cluster import train_job
    from cluster.evaluate_job import EvaluateSettings, run_evaluate
    from cluster.experiment import from_dict

    began = time.time()
    experiment = from_dict(experiment_dict)
    spec_of = next(s for s in experiment.surveys if s.name == survey)
    layout = RunLayout(run_url)
    data = layout.dataset(survey)
    pretrained = storage.join(layout.pretrain, "package")
    times: dict[str, float] = {}
    # Every model this survey trains: (its name in the step times, data, out, spec, kind, recipe)
    wanted = [
        (m, data, layout.model(survey, m), *model_spec(experiment, m))
        for m in survey_models(experiment)
    ]
    cut = experiment.forecast_name(spec_of)
    if cut is not None:
        wanted += [
            (
                f"forecast {m}",
                layout.dataset(cut),
                layout.forecast_model(survey, m),
                *model_spec(experiment, m),
            )
            for m in experiment.forecast.models
        ]
    if experiment.explain is not None and spec_of.downstream:
        wanted.append(
            (
                "explain model",
                data,
                layout.explain_model(survey),
                experiment.explain_spec(),
                "career",
                "finetune",
            )
        )
    pending = {}  # name -> its training settings, the models not trained before
    for name, model_data, out, spec, kind, recipe in wanted:
        if _done(out, "metrics.json", storage_options):
            continue
        base = pretrained if recipe == "finetune" else None
        pending[name] = train_settings(
            spec,
            kind,
            recipe,
            model_data,
            out,
            experiment.survey_workers,
            experiment.gpus_per_worker,
            base,
            ray_address,
            storage_options,
            experiment.survey_worker_cpus,
        )
    if pending:
        # One Ray Train start-up for all of them (train_job.launch_together); each model's time
        # is its training loop, and "start-ups" the rest (workers, DeepSpeed, exports).
        started = time.perf_counter()
        metrics = train_job.train_all(list(pending.values()))
        times.update(
            {m: r.get("wall_seconds") or 0.0 for m, r in zip(pending, metrics, strict=True)}
        )
        times["start-ups"] = max(0.0, time.perf_counter() - started - sum(times.values()))
    evaluation = layout.evaluation(survey)
    if not _done(evaluation, "metrics.json", storage_options):
        started = time.perf_counter()
        models = [
            f"{m}={storage.join(layout.model(survey, m), 'package')}"
            for m in survey_models(experiment)
        ]
        run_evaluate(
            EvaluateSettings(
                model=models,
                data=[data],
                out=evaluation,
                cpus_per_task=experiment.cpus_per_evaluation,
                gpus_per_task=experiment.gpus_per_worker,
                ray=RaySettings(ray_address=ray_address),
                storage=StorageSettings(storage_options=storage_options),
            )
        )
        times["evaluate"] = time.perf_counter() - started
    if cut is not None and not _done(layout.forecast(survey), "forecast.json", storage_options):
        started = time.perf_counter()
        forecast_survey(experiment, survey, layout, cut, storage_options)
        times["forecast"] = time.perf_counter() - started
    wages = layout.wages(survey)
    if (
        experiment.wages is not None
        and spec_of.downstream
        and not _done(wages, "wages.json", storage_options)
    ):
        started = time.perf_counter()
        wages_survey(experiment, survey, layout, storage_options)
        times["wages"] = time.perf_counter() - started
    explain = layout.explain(survey)
    if (
        experiment.explain is not None
        and spec_of.downstream
        and not _done(explain, "rationales.json", storage_options)
    ):
        started = time.perf_counter()
        explain_survey(experiment, survey, layout, storage_options)
        times["explain"] = time.perf_counter() - started
    return {"survey": survey, "seconds": times, "started": round(began, 1)}


def wages_survey(experiment: Experiment, survey: str, layout: RunLayout, storage_options) -> None:
    """The wage table of the fine-tuned model (Mincer vs Mincer + its history representation)
    and, with `wages.gap`, the history-adjusted wage gap; a survey without wages gets a note in
    wages.json instead (the step is done: rerunning would not find wages either)."""
    from data_shards.errors import StructuralError as NoWages
    from eval.wages import wage_gap, wage_table
    from trainer.package import load_model

    settings = experiment.wages
    data = layout.dataset(survey)
    loaded = load_model(storage.join(layout.model(survey, "finetuned"), "package"), storage_options)
    payload: dict[str, Any] = {"model": "finetuned"}
    try:
        payload["table"] = wage_table(loaded, data, storage_options, bootstrap=settings.bootstrap)
    except NoWages as error:
        payload["skipped"] = str(error)
    if "table" in payload and settings.gap:
        try:
            payload["gap"] = wage_gap(
                loaded, data, by=settings.gap, folds=settings.folds, storage_options=storage_options
            )
        except (NoWages, ValueError) as error:
            payload["gap_skipped"] = str(error)
    storage.write_bytes_atomic(
        storage.join(layout.wages(survey), "wages.json"),
        (json.dumps(payload, indent=1, sort_keys=True, allow_nan=False) + "\n").encode(),
        storage_options,
    )


def explain_survey(experiment: Experiment, survey: str, layout: RunLayout, storage_options) -> None:
    """Rationales of the first test people who changed jobs in their last year (the year they
    moved to, explained by their earlier years), from the word-dropout fine-tune."""
    from eval.explain import explain_people
    from trainer.package import load_model

    package = storage.join(layout.explain_model(survey), "package")
    loaded = load_model(package, storage_options)
    people = explain_people(
        loaded,
        layout.dataset(survey),
        "test",
        experiment.explain.people,
        storage_options,
        target="observed",
        movers=True,
    )
    payload = {
        "model": "explain/model",
        "word_dropout": loaded.model.config.word_dropout,
        "target": "observed",
        "movers": True,
        "people": people,
    }
    storage.write_bytes_atomic(
        storage.join(layout.explain(survey), "rationales.json"),
        (json.dumps(payload, indent=1, sort_keys=True, allow_nan=False) + "\n").encode(),
        storage_options,
    )


def forecast_survey(
    experiment: Experiment, survey: str, layout: RunLayout, cut: str, storage_options
) -> None:
    """`career forecast` of the survey's forecasting models on its cutoff dataset."""
    from data_shards.dataset import load_dataset
    from eval.forecast.run import compare, forecast_package

    settings = experiment.forecast
    dataset = load_dataset(layout.dataset(cut), storage_options)
    out = layout.forecast(survey)
    summaries = {
        m: forecast_package(
            m,
            storage.join(layout.forecast_model(survey, m), "package"),
            dataset,
            out,
            paths=settings.paths,
            seed=settings.seed,
            future_education=settings.future_education,
            storage_options=storage_options,
        )
        for m in settings.models
    }
    cutoff = summaries[settings.models[0]]["cutoff"]
    compare(
        summaries,
        out,
        seed=settings.seed,
        storage_options=storage_options,
        title=f"{survey}: forecast after {cutoff}",
    )


# ----------------------------------------------------------------------------- the run
def check_experiment(layout: RunLayout, experiment: Experiment, storage_options) -> bool:
    """Write experiment.json, or check that a resumed run's matches; True when resuming."""
    url = storage.join(layout.url, "experiment.json")
    if storage.exists(url, storage_options):
        recorded = json.loads(storage.read_text(url, storage_options))
        if recorded.get("fingerprint") != experiment.fingerprint():
            raise StructuralError(
                "this run was started with another experiment: resume it with the same --config / "
                "--size, or start a new run (another --run-id)",
                path=storage.redact(url),
            )
        return True
    payload = {"experiment": experiment.to_dict(), "fingerprint": experiment.fingerprint()}
    storage.write_bytes_atomic(url, json.dumps(payload, indent=1).encode(), storage_options)
    return False


def run_experiment(
    experiment: Experiment,
    run_url: str,
    ray_address: str | None = None,
    num_cpus: int | None = None,
    storage_options: dict | None = None,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Carry out every step not yet complete; the per-survey evaluation metrics."""
    from cluster import train_job
    from cluster.ray_session import connect_ray
    from data_shards.shard import shard_dataset

    layout = RunLayout(storage.absolute(run_url))
    resuming = check_experiment(layout, experiment, storage_options)
    log = StepLog(layout.url, storage_options)
    if resuming and storage.exists(storage.join(layout.url, "steps.json"), storage_options):
        log.steps = json.loads(
            storage.read_text(storage.join(layout.url, "steps.json"), storage_options)
        )
    address = connect_ray(ray_address, num_cpus)
    say(f"run {storage.redact(layout.url)}{' (resumed)' if resuming else ''}")

    def step(name: str, done: bool, work: Callable[[], Any]) -> Any:
        if done:
            say(f"  {name}: done before, skipped")
            return None
        started = time.perf_counter()
        result = work()
        seconds = time.perf_counter() - started
        log.record(name, "done", seconds)
        say(f"  {name}: {seconds:,.0f} s")
        return result

    datasets_url = storage.join(layout.url, "datasets")
    resume_vocab = storage.join(layout.dataset(experiment.resumes.name), "vocab.json")
    shards = [(spec, spec.name, None) for spec in [experiment.resumes, *experiment.surveys]]
    shards += [
        (spec, experiment.forecast_name(spec), experiment.forecast_cutoff(spec))
        for spec in experiment.surveys
        if experiment.forecast_name(spec)
    ]
    for spec, name, until in shards:
        parent = None if spec is experiment.resumes else resume_vocab
        step(
            f"shard {name}",
            _done(layout.dataset(name), "manifest.json", storage_options),
            lambda spec=spec, name=name, parent=parent, until=until: shard_dataset(
                spec.input_spec(storage_options),
                datasets_url,
                name,
                spec.shard_config(until),
                parent,
                storage_options=storage_options,
            ),
        )

    pretrain = train_settings(
        experiment.pretrain,
        "career",
        "pretrain",
        layout.dataset(experiment.resumes.name),
        layout.pretrain,
        experiment.workers,
        experiment.gpus_per_worker,
        None,
        address,
        storage_options,
    )
    step(
        "pretrain",
        _done(layout.pretrain, "metrics.json", storage_options),
        lambda: train_job.train(pretrain),
    )

    import ray

    task = ray.remote(num_cpus=0)(survey_pipeline)
    pending = {
        task.remote(experiment.to_dict(), s.name, layout.url, address, storage_options): s.name
        for s in experiment.surveys
        if not _done(layout.evaluation(s.name), "metrics.json", storage_options)
    }
    for s in experiment.surveys:
        if s.name not in pending.values():
            say(f"  survey {s.name}: done before, skipped")
    started = time.perf_counter()
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        name = pending.pop(ready[0])
        result = ray.get(ready[0])  # a task's error is raised here, as itself
        seconds = time.perf_counter() - started
        log.record(
            f"survey {name}", "done", seconds, models=result["seconds"], started=result["started"]
        )
        say(
            f"  survey {name}: {seconds:,.0f} s since pretraining "
            + ", ".join(f"{m} {t:,.0f} s" for m, t in result["seconds"].items())
        )
    results = {
        s.name: json.loads(
            storage.read_text(
                storage.join(layout.evaluation(s.name), "metrics.json"), storage_options
            )
        )
        for s in experiment.surveys
    }
    # The report is rewritten by every invocation: it shows the run as it now stands.
    from eval.report import build_report

    started = time.perf_counter()
    written = build_report(layout.url, layout.report, storage_options)
    log.record("report", "done", time.perf_counter() - started)
    say(f"  report: {storage.redact(written.html)}")
    return results


# ----------------------------------------------------------------------------- the command
@dataclass(kw_only=True)
class RunSettings:
    """Run the whole experiment: shard the resumes and the surveys, pretrain CAREER, then on each
    survey (side by side) fine-tune it, train the baselines and evaluate them all, and write the
    report. Resumable: `--run-id ID` (or `--resume`) continues a stopped run where it stopped."""

    config: str | None = flags.option(
        None,
        help="experiment file (YAML; see cluster/experiment.py); default: --size",
        metavar="FILE",
        path=True,
    )
    size: str = flags.option(
        "demo",
        help="built-in experiment: demo (minutes on a laptop CPU), small (about two hours on a 2-core "
        "machine), paper (24M resumes and the paper's model and updates, for a GPU cluster)",
        choices=tuple(SIZES),
    )
    store: str | None = flags.option(
        None,
        help="where runs live, a folder or s3:// prefix (default: the experiment's, ./career_run)",
        metavar="URL",
        path=True,
    )
    run_id: str | None = flags.option(
        None,
        help="the run to start or continue (default: a new one, named by date and time)",
        metavar="ID",
    )
    resume: bool = flags.option(False, help="continue the store's most recent run")
    dry_run: bool = flags.option(
        False, help="print the resolved experiment and the plan of steps, then exit"
    )
    ray: RaySettings = field(default_factory=RaySettings)
    storage: StorageSettings = field(default_factory=StorageSettings)

    def __post_init__(self) -> None:
        if self.run_id is not None and not RUN_ID.fullmatch(self.run_id):
            raise ValueError(f"--run-id {self.run_id!r}: letters, digits, '-', '_' and '.' only")
        if self.run_id and self.resume:
            raise ValueError("give --run-id or --resume, not both")

    def experiment(self) -> Experiment:
        from cluster.experiment import builtin, load

        experiment = load(self.config) if self.config else builtin(self.size)
        if self.store:
            experiment.store = self.store
        experiment.store = storage.absolute(experiment.store)
        check_trainable(experiment)
        return experiment

    def paths_read(self) -> dict[str, str | None]:
        return {"--config": self.config}

    def paths_written(self) -> dict[str, str | None]:
        return {"--store": self.store}


def plan(experiment: Experiment, layout: RunLayout) -> list[dict[str, str]]:
    """The steps in order, each with what it writes (what `--dry-run` prints)."""
    steps = [
        {"step": f"shard {d.name}", "writes": layout.dataset(d.name)}
        for d in [experiment.resumes, *experiment.surveys]
    ]
    steps += [
        {
            "step": f"shard {experiment.forecast_name(d)} (cut at "
            f"{experiment.forecast_cutoff(d)}, for forecasting)",
            "writes": layout.dataset(experiment.forecast_name(d)),
        }
        for d in experiment.surveys
        if experiment.forecast_name(d)
    ]
    steps.append({"step": "pretrain", "writes": layout.pretrain})
    for survey in experiment.surveys:
        models = ", ".join(survey_models(experiment))
        then = ["evaluate"]
        if experiment.forecast_name(survey):
            then.append(f"forecast ({', '.join(experiment.forecast.models)} retrained on the cut)")
        if survey.downstream and experiment.wages is not None:
            then.append("wages")
        if survey.downstream and experiment.explain is not None:
            then.append("explain (a word-dropout fine-tune)")
        steps.append(
            {
                "step": f"survey {survey.name} (one Ray task: {models}, then {', '.join(then)})",
                "writes": storage.join(layout.url, "surveys", survey.name),
            }
        )
    steps.append({"step": "report", "writes": layout.report})
    return [{k: storage.redact(v) for k, v in s.items()} for s in steps]


def latest_run(store: str, storage_options) -> str:
    """The most recent run in `store` (run ids sort by the time they were started)."""
    fs, root = storage.filesystem(store, storage_options)
    runs = sorted(
        path.rstrip("/").rsplit("/", 1)[-1]
        for path in (fs.ls(root, detail=False) if fs.exists(root) else [])
        if fs.exists(f"{path.rstrip('/')}/experiment.json")
    )
    if not runs:
        raise StructuralError(
            "no run to resume here (no folder with an experiment.json)", path=storage.redact(store)
        )
    return runs[-1]


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


def print_tables(results: dict[str, dict[str, Any]]) -> None:
    from cluster.report import print_rows
    from eval import table

    for survey, metrics in results.items():
        split = metrics["split"]
        for dataset, comparison in metrics["comparison"].items():
            print_rows(
                table.caption(f"{survey}: {dataset}", split, comparison),
                table.COLUMNS,
                [table.row_cells(row) for row in comparison["rows"]],
            )


def run_command(s: RunSettings) -> int:
    from cluster.report import console

    experiment = s.experiment()
    options = s.storage.storage_options
    run_id = latest_run(experiment.store, options) if s.resume else s.run_id or new_run_id()
    layout = RunLayout(storage.join(experiment.store, run_id))
    if s.dry_run:
        print(
            json.dumps(
                {
                    "run": storage.redact(layout.url),
                    "experiment": experiment.to_dict(),
                    "steps": plan(experiment, layout),
                },
                indent=1,
            )
        )
        return 0
    started = time.perf_counter()
    try:
        results = run_experiment(
            experiment, layout.url, s.ray.ray_address, s.ray.num_cpus, options, say=console.print
        )
    except KeyboardInterrupt:
        console.print(
            f"interrupted: continue with `career run --run-id {run_id}`"
            + (f" --store {storage.redact(experiment.store)}" if s.store else "")
        )
        return 130
    print_tables(results)
    console.print(
        f"run {run_id} done in {time.perf_counter() - started:,.0f} s: {storage.redact(layout.url)}"
    )
    return 0
