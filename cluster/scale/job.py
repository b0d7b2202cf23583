"""`career scale`: a scaling study, models x corpus sizes (x token budgets), as Ray jobs; the
points table, the fitted scaling laws, their plots and a report.

The study lives in STUDY (a local folder or an object-store prefix), laid out as
`cluster.scale.study` says.

Each point is a Ray task (holding no CPU itself) that trains with Ray Train; the driver keeps as
many running as the cluster's CPUs (or GPUs) hold side by side, longest first. Rerunning skips
finished points (metrics.json) and continues unfinished ones from their last checkpoint; the
table, fit and report are rewritten from the points every time.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from cluster import flags
from cluster.scale.grid import GRIDS, Study, from_dict, load
from cluster.scale.layout import StudyLayout
from cluster.scale.study import run_study
from cluster.settings import RaySettings, StorageSettings
from data_shards import storage
from data_shards.errors import StructuralError
from eval.run_layout import MANIFEST, finished


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
        help="grid file (YAML; see cluster/scale/grid.py); default: --grid",
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
    from cluster.console import console, print_rows
    from cluster.scale.plan import plan, plan_table, slots_for, totals
    from eval.scaling.sizes import SAMPLE_PEOPLE, sample_corpus

    options = s.storage.storage_options
    data = study.data or StudyLayout(storage.absolute(s.out)).dataset(study.corpus.name)
    if finished(data, MANIFEST, options):
        from eval.scaling.corpus import corpus_facts

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


def run_scale(settings: ScaleSettings) -> int:
    from cluster.console import console, print_rows

    study = settings.study()
    if settings.plan or settings.dry_run:
        print_plan(study, settings)
        return 0
    started = time.perf_counter()
    try:
        result = run_study(
            study,
            settings.out,
            ray_address=settings.ray.ray_address,
            num_cpus=settings.ray.num_cpus,
            paths=settings,
            shared_fs=settings.ray.shared_fs,
            storage_options=settings.storage.storage_options,
            say=console.print,
        )
    except KeyboardInterrupt:
        console.print(
            f"interrupted: rerun the same command to continue ({storage.redact(settings.out)})"
        )
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
    console.print(
        f"study done in {time.perf_counter() - started:,.0f} s: {storage.redact(settings.out)}"
    )
    return 0
