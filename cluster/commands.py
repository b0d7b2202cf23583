"""The subcommands of `career`: for each, its typed settings, how its flags are made, and its
handler (a `*_job` module that turns the settings into one call and prints the result)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cluster import (
    data_settings,
    evaluate_job,
    explain_job,
    flags,
    forecast_job,
    predict_job,
    report_job,
    train_settings,
    wages_job,
)
from cluster.run import job as run_job
from cluster.scale import job as scale_job
from cluster.submit import job as submit_job
from cluster.submit import jobs as jobs_job
from data_shards.formats import ALL_FORMATS, READABLE_FORMATS, describe_formats


def _format_flag(names: tuple[str, ...], input_required: bool) -> dict[str, dict[str, Any]]:
    """`--format` choices and help from the input-format registry; `--input` needed or not."""
    adjusted: dict[str, dict[str, Any]] = {
        "format": {"choices": names, "help": describe_formats(names)},
        "input": {"required": input_required},
    }
    if not input_required:
        adjusted["input"]["help"] = (
            "local path, file:// or s3:// URL of the input (not with --format synth); a name "
            "ending in .gz, .bz2, .xz or .zst is read decompressed"
        )
    return adjusted


@dataclass(frozen=True)
class Command:
    """A subcommand: its typed settings, how its flags are added, and its handler."""

    help: str
    settings: type
    handler: Callable[[Any], int]
    adjust: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    add: Callable[[argparse.ArgumentParser], None] | None = None  # instead of the generated flags
    make: Callable[[argparse.Namespace], Any] | None = None  # instead of flags.build
    description: str | None = None  # --help's; default: the settings' docstring

    @property
    def long_help(self) -> str:
        return self.description or (self.settings.__doc__ or "").strip()

    def add_flags(self, parser: argparse.ArgumentParser) -> None:
        if self.add:
            self.add(parser)
        else:
            flags.add_flags(parser, self.settings, adjust=self.adjust)

    def settings_from(self, namespace: argparse.Namespace) -> Any:
        return self.make(namespace) if self.make else flags.build(self.settings, namespace)


# ----------------------------------------------------------------------------- handlers
def run_inspect(settings: data_settings.InspectSettings) -> int:
    from cluster.console import print_summary
    from data_shards.formats import check_read, read_warning
    from data_shards.quarantine import write_quarantine
    from data_shards.readers import read
    from data_shards.storage import redact
    from data_shards.summary import summarize

    source = settings.source
    result = read(
        source.input,
        source.format,
        panel=source.panel_mapping(),
        resume=source.resume,
        storage_options=source.storage.storage_options,
    )
    summary = summarize(result.table, result.report, result.quarantine)
    if settings.quarantine_out:
        write_quarantine(settings.quarantine_out, result.quarantine, source.storage.storage_options)
    if settings.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        print_summary(summary, title=f"{source.format}: {result.report.source}")
    # After the summary (and the quarantine, the evidence): no record accepted is exit 2.
    year_base = source.panel.year_base if source.format == "panel" else None
    check_read(result, source.format, source.input or "", year_base, source.storage.storage_options)
    if settings.quarantine_out:
        evidence = f"every entry is in {redact(settings.quarantine_out)}"
    else:
        evidence = "--quarantine-out FILE writes every entry"
    warning = read_warning(result, evidence)
    if warning:
        print(f"career inspect: warning: {warning}", file=sys.stderr)
    return 0


def run_synth(settings: data_settings.SynthSettings) -> int:
    from cluster.synth_job import run_synth as synth

    synth(
        preset=settings.preset,
        people=settings.people,
        seed=settings.seed,
        out=settings.out,
        layout=settings.layout,
        fractions=settings.split_fractions,
        storage_options=settings.storage.storage_options,
    )
    return 0


def run_shard(settings: data_settings.ShardSettings) -> int:
    from cluster.shard_job import run_shard as shard

    shard(settings)
    return 0


def run_training(settings: train_settings.TrainingSettings) -> int:
    from cluster.train_job import run_training as train

    return train(settings)


def run_export(settings: train_settings.ExportSettings) -> int:
    from cluster.train_job import run_export as export

    return export(settings)


# ----------------------------------------------------------------------------- training flags
def _recipe_defaults(recipe: str) -> dict[str, Any]:
    from trainer.config import make_config

    config = make_config(recipe)
    shown = {name: getattr(config, name) for name in train_settings.TRAIN_FLAGS}
    if recipe == "finetune":
        shown["preset"] = "the package's"
    return shown


def _training_flags(recipe: str) -> Callable[[argparse.ArgumentParser], None]:
    def add(parser: argparse.ArgumentParser) -> None:
        from trainer.config import TrainConfig

        base = {"base": {"required": True}} if recipe == "finetune" else {"base": {"skip": True}}
        flags.add_flags(parser, train_settings.TrainingSettings, adjust=base)
        group = parser.add_argument_group(f"training recipe ({recipe}; others as KEY=VALUE)")
        flags.add_flags(
            group,
            TrainConfig,
            only=train_settings.TRAIN_FLAGS,
            optional=True,
            defaults=_recipe_defaults(recipe),
        )

    return add


def _training_settings(
    recipe: str,
) -> Callable[[argparse.Namespace], train_settings.TrainingSettings]:
    def make(namespace: argparse.Namespace) -> train_settings.TrainingSettings:
        from trainer.config import TrainConfig, make_config

        chosen = flags.given(namespace, TrainConfig, train_settings.TRAIN_FLAGS)
        preset = chosen.pop("preset", None)
        config = make_config(recipe, preset, namespace.overrides, **chosen)
        return flags.build(train_settings.TrainingSettings, namespace, recipe=recipe, config=config)

    return make


COMMANDS: dict[str, Command] = {
    "run": Command(
        "run the whole experiment (shard, pretrain, per-survey fine-tuning, baselines "
        "and evaluation, report); resumable",
        run_job.RunSettings,
        run_job.run_command,
    ),
    "synth": Command(
        "simulate careers (resumes, NLSY79, NLSY97, PSID) with their oracle",
        data_settings.SynthSettings,
        run_synth,
    ),
    "inspect": Command(
        "summarise an input corpus before training",
        data_settings.InspectSettings,
        run_inspect,
        adjust=_format_flag(READABLE_FORMATS, input_required=True),
    ),
    "shard": Command(
        "shard an input into streaming webdataset tarballs with a Ray job",
        data_settings.ShardSettings,
        run_shard,
        adjust=_format_flag(ALL_FORMATS, input_required=False),
    ),
    "pretrain": Command(
        "pretrain CAREER with DeepSpeed ZeRO",
        train_settings.TrainingSettings,
        run_training,
        add=_training_flags("pretrain"),
        make=_training_settings("pretrain"),
        description="Pretrain CAREER on a dataset with DeepSpeed ZeRO (Ray Train "
        "workers by default).",
    ),
    "finetune": Command(
        "fine-tune a model package on a survey dataset",
        train_settings.TrainingSettings,
        run_training,
        add=_training_flags("finetune"),
        make=_training_settings("finetune"),
        description="Fine-tune a model package on a dataset whose vocabulary "
        "extends the package's.",
    ),
    "export": Command(
        "consolidate a checkpoint into a model package", train_settings.ExportSettings, run_export
    ),
    "evaluate": Command(
        "score model packages on datasets and compare them (per-token scores, metrics, table)",
        evaluate_job.EvaluateSettings,
        evaluate_job.run_evaluate,
    ),
    "predict": Command(
        "predict next jobs with a model package (top-k, probabilities, P(stay))",
        predict_job.PredictSettings,
        predict_job.run_predict,
    ),
    "explain": Command(
        "explain a next-job prediction: the fewest past years that alone make "
        "a word-dropout CAREER package predict the job (greedy rationalization)",
        explain_job.ExplainSettings,
        explain_job.run_explain,
    ),
    "forecast": Command(
        "forecast years ahead from a dataset's cutoff by Monte Carlo (paths of "
        "sampled careers): perplexity, unemployment/out-of-labor-force/school "
        "AUC and rates, models compared",
        forecast_job.ForecastSettings,
        forecast_job.run_forecast,
    ),
    "scale": Command(
        "a scaling study: models x corpus sizes pretrained as Ray jobs on nested "
        "subsets of one corpus; fitted scaling laws, plots, report (resumable)",
        scale_job.ScaleSettings,
        scale_job.run_scale,
    ),
    "report": Command(
        "write a run's report: an HTML page and its Markdown twin, with PNG plots, "
        "from the run's metrics and scores",
        report_job.ReportSettings,
        report_job.run_report,
        add=report_job.add_report_flags,
        make=report_job.report_settings,
    ),
    "wages": Command(
        "wage models: Mincer vs Mincer + the history representation (R^2, MSE), "
        "or with --gap FIELD the wage gap raw, with Mincer controls and given the "
        "whole job history (double machine learning)",
        wages_job.WagesSettings,
        wages_job.run_wages,
    ),
    "submit": Command(
        "run a career command on a Ray cluster as a job (Ray Jobs API)",
        submit_job.SubmitSettings,
        lambda s: submit_job.run_submit(s, COMMANDS),
        add=submit_job.add_submit_flags,
        make=submit_job.submit_settings,
    ),
    "jobs": Command(
        "list, inspect, read or stop the jobs of a Ray cluster",
        jobs_job.JobsSettings,
        jobs_job.run_jobs,
        add=jobs_job.add_jobs_flags,
        make=jobs_job.jobs_settings,
    ),
}
