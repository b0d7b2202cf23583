"""`career scale`: a scaling study, models x corpus sizes (x token budgets), as Ray jobs; the
points table, the fitted scaling laws, their plots and a report.

The study lives in STUDY (a local folder or an object-store prefix):

    study.json                  the resolved grid (a resumed study must match it)
    datasets/corpus/            the corpus, sharded once (unless `data` names one); the points
                                train on nested prefixes of its train split (`train_people`)
    datasets/SURVEY/            the survey, when each point is fine-tuned on one
    points/NAME/                each point: a normal `career pretrain` run folder (metrics.json
                                last), and with a survey, finetune-SURVEY/ and survey.json
    points.parquet              one row per point (`eval.scaling.table`)
    fit.json                    the fitted laws (`eval.scaling.fit`)
    report.html, report.md, plots/*.png

Each point is a Ray task (holding no CPU itself) that trains with Ray Train; the driver keeps as
many running as the cluster's CPUs (or GPUs) hold side by side, longest first. Rerunning skips
finished points (metrics.json) and continues unfinished ones from their last checkpoint; the
table, fit and report are rewritten from the points every time.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cluster import flags
from cluster.scale_grid import GRIDS, Point, Study, from_dict, load
from cluster.settings import RaySettings, StorageSettings
from data_shards import storage
from data_shards.errors import StructuralError


@dataclass
class StudyLayout:
    url: str

    def dataset(self, name: str) -> str:
        return storage.join(self.url, "datasets", name)

    def point(self, name: str) -> str:
        return storage.join(self.url, "points", name)

    def finetune(self, name: str, survey: str) -> str:
        return storage.join(self.point(name), f"finetune-{survey}")

    def survey_result(self, name: str) -> str:
        return storage.join(self.point(name), "survey.json")

    def file(self, name: str) -> str:
        return storage.join(self.url, name)


def _exists(url: str, storage_options) -> bool:
    return storage.exists(url, storage_options)


def _write_json(url: str, payload: Any, storage_options) -> None:
    text = json.dumps(payload, indent=1, sort_keys=True, allow_nan=False, default=str) + "\n"
    storage.write_bytes_atomic(url, text.encode(), storage_options)


# ----------------------------------------------------------------------------- one point
def point_settings(
    study: Study, point: Point, data: str, out: str, address: str | None, storage_options
):
    """The `career pretrain` settings of one point: its model on the first `people` people."""
    from cluster.run_job import train_settings

    spec = dataclasses.replace(
        study.pretrain,
        preset=point.model.preset,
        updates=point.updates,
        overrides=[
            *study.pretrain.overrides,
            *point.model.overrides(),
            f"train_people={point.people}",
        ],
    )
    return train_settings(
        spec,
        "career",
        "pretrain",
        data,
        out,
        study.workers_per_point,
        study.gpus_per_worker,
        None,
        address,
        storage_options,
        study.cpus_per_worker,
    )


def run_point(
    study_dict: dict[str, Any],
    name: str,
    url: str,
    data: str,
    survey: str | None,
    address: str | None,
    storage_options,
) -> dict[str, Any]:
    """Pretrain one point (continuing from its checkpoints), then fine-tune it on the survey and
    score the survey's test split (a Ray task, or in the driver)."""
    from cluster import train_job
    from cluster.run_job import train_settings

    study = from_dict(study_dict)
    point = next(p for p in study.points() if p.name == name)
    layout = StudyLayout(url)
    out = layout.point(name)
    started = time.perf_counter()
    if not _exists(storage.join(out, "metrics.json"), storage_options):
        train_job.train(point_settings(study, point, data, out, address, storage_options))
    if survey is not None and not _exists(layout.survey_result(name), storage_options):
        from trainer.models.fit import split_perplexity
        from trainer.package import load_model

        tuned = layout.finetune(name, study.survey.name)
        if not _exists(storage.join(tuned, "metrics.json"), storage_options):
            train_job.train(
                train_settings(
                    study.finetune,
                    "career",
                    "finetune",
                    survey,
                    tuned,
                    study.workers_per_point,
                    study.gpus_per_worker,
                    storage.join(out, "package"),
                    address,
                    storage_options,
                    study.cpus_per_worker,
                )
            )
        model = load_model(storage.join(tuned, "package"), storage_options).model
        test = split_perplexity(
            model, survey, "test", study.finetune.tokens_per_update, storage_options
        )
        _write_json(
            layout.survey_result(name),
            {
                "survey": study.survey.name,
                "test_perplexity": test,
                "finetune": storage.redact(tuned),
            },
            storage_options,
        )
    return {"point": name, "seconds": time.perf_counter() - started}


# ----------------------------------------------------------------------------- the study
def check_study(layout: StudyLayout, study: Study, storage_options) -> bool:
    """Write study.json, or check that a resumed study's matches; True when resuming."""
    url = layout.file("study.json")
    if _exists(url, storage_options):
        recorded = json.loads(storage.read_text(url, storage_options))
        if recorded.get("study") != study.to_dict():
            raise StructuralError(
                "this study was started with another grid: rerun it with the same --grid / "
                "--config and flags, or give another --out",
                path=storage.redact(url),
            )
        return True
    _write_json(url, {"study": study.to_dict()}, storage_options)
    return False


def corpus_facts(data: str, storage_options) -> dict[str, Any]:
    """What the plan and the fits need of the corpus: vocabulary sizes, mean train length, the
    oracle floor (nats per job-year on valid, simulated corpora only)."""
    from data_shards.manifest import load_manifest
    from trainer.context import covariates_of
    from trainer.models.career import COVARIATES

    manifest = load_manifest(data, storage_options)
    vocab = json.loads(storage.read_text(storage.join(data, "vocab.json"), storage_options))
    fields = vocab.get("fields", vocab)
    covariates = covariates_of(manifest)
    sizes = {"job": len(fields["job"]), **{c: len(fields[c]) for c in covariates}}
    train = manifest.splits["train"]
    oracle = (manifest.oracle_perplexity or {}).get("valid")
    return {
        "manifest": manifest,
        "vocab_sizes": sizes,
        "covariates": covariates if covariates != COVARIATES else None,
        "train_people": int(train["people"]),
        "mean_length": train["tokens"] / max(train["people"], 1),
        "floor": math.log(oracle) if oracle else None,
    }


def shard_inputs(study: Study, layout: StudyLayout, storage_options, say) -> tuple[str, str | None]:
    """Shard the corpus (unless the study names a dataset) and the survey, once; their URLs."""
    from data_shards.shard import shard_dataset

    datasets = storage.join(layout.url, "datasets")
    data = study.data or layout.dataset(study.corpus.name)
    if not study.data and not _exists(storage.join(data, "manifest.json"), storage_options):
        spec = dataclasses.replace(study.corpus, people=study.corpus_people())
        started = time.perf_counter()
        shard_dataset(
            spec.input_spec(storage_options),
            datasets,
            spec.name,
            spec.shard_config(),
            storage_options=storage_options,
        )
        say(f"  shard {spec.name} ({spec.people:,} people): {time.perf_counter() - started:,.0f} s")
    survey = None
    if study.survey is not None:
        survey = layout.dataset(study.survey.name)
        if not _exists(storage.join(survey, "manifest.json"), storage_options):
            started = time.perf_counter()
            shard_dataset(
                study.survey.input_spec(storage_options),
                datasets,
                study.survey.name,
                study.survey.shard_config(),
                storage.join(data, "vocab.json"),
                storage_options=storage_options,
            )
            say(f"  shard {study.survey.name}: {time.perf_counter() - started:,.0f} s")
    return data, survey


def run_study(
    study: Study,
    url: str,
    ray_address: str | None = None,
    num_cpus: int | None = None,
    storage_options: dict | None = None,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every point not finished, then write the table, the fit and the report."""
    import ray

    from cluster.ray_session import connect_ray
    from cluster.scale_plan import plan, slots_for, totals
    from data_shards.stream.subset import prefix_of

    layout = StudyLayout(storage.absolute(url))
    resuming = check_study(layout, study, storage_options)
    address = connect_ray(ray_address, num_cpus)
    say(f"study {storage.redact(layout.url)}{' (resumed)' if resuming else ''}")
    data, survey = shard_inputs(study, layout, storage_options, say)
    facts = corpus_facts(data, storage_options)
    try:
        prefix_of(facts["manifest"], "train", max(study.people))
    except ValueError as error:
        raise StructuralError(str(error), path=storage.redact(data)) from None
    rows = {r["point"]: r for r in plan(study, facts["vocab_sizes"], facts["mean_length"])}
    resources = ray.cluster_resources()
    slots = slots_for(study, resources.get("CPU", 1), resources.get("GPU", 0))
    cost = totals(study, list(rows.values()), slots)
    points = study.points()
    done = [p.name for p in points if _point_done(layout, p, survey, storage_options)]
    todo = sorted(
        (p for p in points if p.name not in done), key=lambda p: -rows[p.name]["estimated_seconds"]
    )
    say(
        f"  {len(points)} points, {len(done)} done before; {slots} side by side; estimated "
        f"{cost['wall_seconds'] / 60:,.0f} min for all of them"
    )
    task = ray.remote(num_cpus=0)(run_point)
    running: dict[Any, str] = {}
    started = time.perf_counter()
    while todo or running:
        while todo and len(running) < slots:
            point = todo.pop(0)
            ref = task.remote(
                study.to_dict(), point.name, layout.url, data, survey, address, storage_options
            )
            running[ref] = point.name
        ready, _ = ray.wait(list(running), num_returns=1)
        name = running.pop(ready[0])
        result = ray.get(ready[0])  # a point's error is raised here, as itself
        done.append(name)
        say(
            f"  point {name}: {result['seconds']:,.0f} s ({len(done)}/{len(points)}, "
            f"{time.perf_counter() - started:,.0f} s since the first)"
        )
    return write_results(study, layout, rows, facts, storage_options, say)


def _point_done(layout: StudyLayout, point: Point, survey: str | None, storage_options) -> bool:
    if not _exists(storage.join(layout.point(point.name), "metrics.json"), storage_options):
        return False
    return survey is None or _exists(layout.survey_result(point.name), storage_options)


def write_results(
    study: Study, layout: StudyLayout, rows: dict[str, dict], facts: dict, storage_options, say
) -> dict[str, Any]:
    """points.parquet, fit.json and the report, from the finished points."""
    import io

    from eval.scaling.fit import fit_study
    from eval.scaling.report import write_report
    from eval.scaling.table import point_row, points_frame

    table = []
    for point in study.points():
        metrics_url = storage.join(layout.point(point.name), "metrics.json")
        if not _exists(metrics_url, storage_options):
            continue
        metrics = json.loads(storage.read_text(metrics_url, storage_options))
        result_url = layout.survey_result(point.name)
        result = (
            json.loads(storage.read_text(result_url, storage_options))
            if _exists(result_url, storage_options)
            else None
        )
        planned = rows[point.name]
        table.append(
            point_row(
                {**planned, "name": point.name, "token_budget": point.tokens}, metrics, result
            )
        )
    frame = points_frame(table)
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    storage.write_bytes_atomic(layout.file("points.parquet"), buffer.getvalue(), storage_options)
    fit = fit_study(frame, floor=facts["floor"])
    _write_json(layout.file("fit.json"), fit, storage_options)
    report = write_report(layout.url, frame, fit, facts["floor"], study.to_dict(), storage_options)
    say(
        f"  table {storage.redact(layout.file('points.parquet'))}, fit "
        f"{storage.redact(layout.file('fit.json'))}, report {storage.redact(report)}"
    )
    return {"points": table, "fit": fit, "report": report}


# ----------------------------------------------------------------------------- the command
def _numbers(text: str | None, what: str) -> list[int] | None:
    """'10000,50k,2M' -> [10000, 50000, 2000000]."""
    if text is None:
        return None
    values = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        scale = {"k": 10**3, "m": 10**6, "g": 10**9}.get(item[-1].lower(), 1)
        number = item[:-1] if scale > 1 else item
        try:
            values.append(round(float(number) * scale))
        except ValueError:
            raise ValueError(f"--{what}: {item!r} is not a number (e.g. 10000, 50k, 2M)") from None
    if not values:
        raise ValueError(f"--{what}: give at least one value")
    return values


@dataclass(kw_only=True)
class ScaleSettings:
    """A scaling study: models x corpus sizes (x token budgets) pretrained as Ray jobs on nested
    subsets of one corpus, with early stopping; the points table, the fitted laws (Hoffmann et
    al.'s L(N, D), Kaplan et al.'s power laws, the compute-optimal model), plots and a report.
    Resumable: rerunning skips finished points and continues unfinished ones."""

    out: str = flags.option(
        help="the study folder (or s3:// prefix): points/, points.parquet, fit.json, report.html",
        metavar="STUDY",
        path=True,
    )
    config: str | None = flags.option(
        None,
        help="grid file (YAML; see cluster/scale_grid.py); default: --grid",
        metavar="FILE",
        path=True,
    )
    grid: str = flags.option(
        "small",
        help="built-in grid: small (tiny/mini/small x 10k/50k/200k simulated resumes, "
        "under 45 min on a 2-core CPU), paper (presets up to large x up to 24M resumes, GPUs)",
        choices=tuple(GRIDS),
    )
    models: str | None = flags.option(
        None,
        help="model presets instead of the grid's, comma-separated (e.g. tiny,small)",
        metavar="LIST",
    )
    people: str | None = flags.option(
        None,
        help="corpus sizes instead of the grid's: people, comma-separated (10k,50k)",
        metavar="LIST",
    )
    tokens: str | None = flags.option(
        None,
        help="token budgets (job-years per point) instead of updates, comma-separated",
        metavar="LIST",
    )
    data: str | None = flags.option(
        None,
        help="an existing resume dataset to draw the subsets from (default: simulate and "
        "shard the grid's corpus)",
        metavar="DATASET",
        path=True,
    )
    survey: str | None = flags.option(
        None,
        help="a simulator survey preset (nlsy79, nlsy97, psid) to fine-tune every point "
        "on and score",
        metavar="PRESET",
    )
    updates: int | None = flags.option(None, help="pretraining updates per point", metavar="N")
    plan: bool = flags.option(
        False,
        help="print the points, their parameters, tokens, FLOPs and estimated time (and "
        "device-hours), then exit without training",
    )
    dry_run: bool = flags.option(False, help="the same as --plan")
    ray: RaySettings = field(default_factory=RaySettings)
    storage: StorageSettings = field(default_factory=StorageSettings)

    def study(self) -> Study:
        values = load(self.config) if self.config else json.loads(json.dumps(GRIDS[self.grid]))
        where = self.config or f"--grid {self.grid}"
        models = self.models and [m.strip() for m in self.models.split(",") if m.strip()]
        changes = {
            "models": models,
            "people": _numbers(self.people, "people"),
            "tokens": _numbers(self.tokens, "tokens"),
            "data": self.data,
        }
        values.update({k: v for k, v in changes.items() if v})
        if self.survey:
            values["survey"] = {"name": self.survey, "simulate": self.survey}
        if self.updates is not None:
            values["pretrain"] = {**values.get("pretrain", {}), "updates": self.updates}
        if self.data:
            values.pop("corpus", None)
        try:
            return from_dict(values, where)
        except ValueError as error:
            if self.config:
                raise StructuralError(str(error), path=self.config) from None
            raise

    def paths_read(self) -> dict[str, str | None]:
        return {"--config": self.config, "--data": self.data}

    def paths_written(self) -> dict[str, str | None]:
        return {"--out": self.out}


def print_plan(study: Study, s: ScaleSettings) -> None:
    from cluster.report import console, print_rows
    from cluster.scale_plan import SAMPLE_PEOPLE, plan, plan_table, sample_corpus, slots_for, totals

    options = s.storage.storage_options
    data = study.data or StudyLayout(storage.absolute(s.out)).dataset(study.corpus.name)
    if _exists(storage.join(data, "manifest.json"), options):
        facts = corpus_facts(data, options)
        sizes, mean_length, source = (
            facts["vocab_sizes"],
            facts["mean_length"],
            storage.redact(data),
        )
    elif study.corpus.simulate:
        sizes, mean_length = sample_corpus(study.corpus.simulate, study.corpus.seed)
        source = (
            f"a sample of {SAMPLE_PEOPLE:,} simulated {study.corpus.simulate} (not sharded yet)"
        )
    else:
        raise StructuralError(
            "the corpus is not sharded yet: --plan needs its vocabulary", path=storage.redact(data)
        )
    rows = plan(study, sizes, mean_length)
    gpus = study.gpus_per_worker
    slots = (
        slots_for(study, 0, 8 * max(study.workers_per_point * gpus, 1))
        if gpus
        else slots_for(study, _local_cpus(), 0)
    )
    cost = totals(study, rows, slots)
    columns, cells = plan_table(rows)
    print_rows(f"career scale --plan: {len(rows)} points (vocabulary: {source})", columns, cells)
    device = "GPU" if gpus else "CPU"
    console.print(
        f"total: {cost['flops']:.2e} FLOPs, {cost[device.lower() + '_hours']:,} {device}-hours; "
        f"about {cost['wall_seconds'] / 3600:,.1f} h with {cost['side_by_side']} points side by "
        f"side{' (8 GPUs)' if gpus else ''}. Throughput from {cost['throughput_source']}."
    )


def _local_cpus() -> int:
    import os

    return os.cpu_count() or 1


def run_scale(s: ScaleSettings) -> int:
    from cluster.report import console, print_rows

    study = s.study()
    if s.plan or s.dry_run:
        print_plan(study, s)
        return 0
    started = time.perf_counter()
    try:
        result = run_study(
            study,
            s.out,
            s.ray.ray_address,
            s.ray.num_cpus,
            s.storage.storage_options,
            say=console.print,
        )
    except KeyboardInterrupt:
        console.print(f"interrupted: rerun the same command to continue ({storage.redact(s.out)})")
        return 130
    law = result["fit"].get("law")
    rows = [
        [
            p["name"],
            p["non_embedding_parameters"],
            int(p["unique_tokens"]),
            round(p["best_valid_loss"], 4),
            p["best_step"],
        ]
        for p in result["points"]
    ]
    print_rows(
        "points", ["point", "N (non-emb.)", "D (unique job-years)", "valid nats", "best step"], rows
    )
    if law:
        console.print(
            f"L(N, D) = {law['E']:.3f} + {law['A']:.3g}/N^{law['alpha']:.3f} + "
            f"{law['B']:.3g}/D^{law['beta']:.3f}"
        )
    console.print(f"study done in {time.perf_counter() - started:,.0f} s: {storage.redact(s.out)}")
    return 0
