"""The `career` command line: one function per subcommand, mapped in `COMMANDS`.

Exit codes: 0 success, 1 unexpected failure, 2 bad usage or a structural input error (missing
file or column, inconsistent layout): the message names the file and line, and no partial output
is left behind.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Sequence

from data_shards.errors import StructuralError

EXIT_STRUCTURAL = 2


def _csv_list(text: str) -> tuple[str, ...]:
    items = tuple(item.strip() for item in text.split(",") if item.strip())
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list of column names")
    return items


def _fractions(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected three numbers like 0.9,0.05,0.05, got {text!r}"
        ) from None
    if len(parts) != 3 or abs(sum(parts) - 1) > 1e-9 or min(parts) < 0:
        raise argparse.ArgumentTypeError(
            f"expected three non-negative fractions summing to 1, got {text!r}"
        )
    return parts  # type: ignore[return-value]


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc.msg}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def _storage_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage-options",
        type=_json_object,
        default=None,
        metavar="JSON",
        help='fsspec options for the URLs, e.g. \'{"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}\'. '
        "Credentials are better left in the standard AWS environment variables.",
    )


def input_options(with_synth: bool = False) -> argparse.ArgumentParser:
    """Flags shared by every command that reads an input (format and column mapping)."""
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("input")
    group.add_argument(
        "--input",
        required=not with_synth,
        metavar="URL",
        help="local path, file:// or s3:// URL of the input"
        + (" (not with --format synth)" if with_synth else ""),
    )
    formats = ("career-code", "panel", "resume-jsonl") + (("synth",) if with_synth else ())
    group.add_argument("--format", required=True, choices=formats,
                       help="career-code: folder of {train,valid,test}.{job,year,...}; panel: CSV or Parquet "
                       "person-year rows; resume-jsonl: one resume per line"
                       + ("; synth: the simulator, generated on the workers" if with_synth else ""))  # fmt: skip
    if with_synth:
        from data_shards.synth.presets import PRESETS

        sim = parser.add_argument_group("simulator (--format synth)")
        sim.add_argument(
            "--sim-preset", choices=sorted(PRESETS), default=None, help="what to simulate"
        )
        sim.add_argument(
            "--people",
            type=int,
            default=None,
            metavar="N",
            help="people (default: the preset's size)",
        )
        sim.add_argument("--seed", type=int, default=0, help="simulator seed (default 0)")
    panel = parser.add_argument_group("panel column mapping (--format panel)")
    panel.add_argument(
        "--person", default="person_id", metavar="COL", help="person id column (default person_id)"
    )
    panel.add_argument("--year", default="year", metavar="COL", help="year column (default year)")
    panel.add_argument("--year-base", type=int, default=None, metavar="N",
                       help="add N to two-digit years, e.g. 1900 for 80 -> 1980")  # fmt: skip
    for name, what, per in (
        ("occupation", "occupation code", "per year"),
        ("education", "education level", "per year"),
        ("location", "state/region", "static"),
        ("gender", "gender", "static"),
        ("ethnicity", "race/ethnicity", "static"),
    ):
        panel.add_argument(f"--{name}", default=None, metavar="COL", help=f"{what} column ({per})")
        panel.add_argument(
            f"--{name}-dummies",
            type=_csv_list,
            default=(),
            metavar="A,B,...",
            help=f"{what} as one-hot dummy columns instead of one column",
        )
        panel.add_argument(
            f"--{name}-base",
            default=None,
            metavar="NAME",
            help=f"{what} when every dummy is recorded and none is set (the omitted category)",
        )
    panel.add_argument(
        "--wage",
        default=None,
        metavar="COL",
        help="wage column (per year; logged unless --wage-is-log)",
    )
    panel.add_argument(
        "--wage-is-log", action="store_true", help="the wage column already holds log wages"
    )
    panel.add_argument("--birth-year", default=None, metavar="COL", help="birth year column")
    panel.add_argument(
        "--weight", default=None, metavar="COL", help="survey sampling weight column"
    )
    panel.add_argument(
        "--split",
        default=None,
        metavar="COL",
        help="column holding train/valid/test, if the input has its own splits",
    )
    resume = parser.add_argument_group("resume options (--format resume-jsonl)")
    resume.add_argument("--as-of", type=int, default=None, metavar="YEAR",
                        help="year that closes open-ended jobs (default: the latest year each resume mentions)")  # fmt: skip
    _storage_flag(parser)
    return parser


def panel_mapping(args: argparse.Namespace):
    """The panel column mapping named by `input_options()` flags (None for other formats)."""
    from data_shards.readers import PanelMapping

    mapping = None
    if args.format == "panel":
        categorical = {}
        for name in ("occupation", "education", "location", "gender", "ethnicity"):
            categorical[name] = getattr(args, name)
            categorical[f"{name}_dummies"] = getattr(args, f"{name}_dummies")
            categorical[f"{name}_base"] = getattr(args, f"{name}_base")
        mapping = PanelMapping(
            person=args.person,
            year=args.year,
            year_base=args.year_base,
            wage=args.wage,
            wage_is_log=args.wage_is_log,
            birth_year=args.birth_year,
            weight=args.weight,
            split=args.split,
            **categorical,
        )  # fmt: skip
    return mapping


def read_input(args: argparse.Namespace):
    """Read the input named by `input_options()` flags."""
    from data_shards.readers import ResumeOptions, read

    return read(
        args.input,
        args.format,
        panel=panel_mapping(args),
        resume=ResumeOptions(as_of=args.as_of),
        storage_options=args.storage_options,
    )


def cmd_inspect(args: argparse.Namespace) -> int:
    """Summarise an input corpus before training: counts, coverage, vocabularies, quarantine."""
    from cluster import report
    from data_shards.quarantine import write_quarantine
    from data_shards.summary import summarize

    result = read_input(args)
    summary = summarize(result.table, result.report, result.quarantine)
    if args.quarantine_out:
        write_quarantine(args.quarantine_out, result.quarantine, args.storage_options)
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        report.print_summary(summary, title=f"{args.format}: {result.report.source}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    """Simulate careers with the exact oracle and write them in a readable layout."""
    from cluster.synth_job import run_synth

    run_synth(
        preset=args.preset, people=args.people, seed=args.seed, out=args.out, layout=args.layout,
        fractions=args.split_fractions, storage_options=args.storage_options,
    )  # fmt: skip
    return 0


def cmd_shard(args: argparse.Namespace) -> int:
    """Shard an input into a webdataset dataset (URL/NAME/) with a Ray job; resumable and deterministic."""
    from cluster.shard_job import run_shard
    from data_shards.inputs import InputSpec
    from data_shards.readers import ResumeOptions
    from data_shards.shard import ShardConfig

    if args.format == "synth" and not args.sim_preset:
        raise ValueError("--format synth needs --sim-preset")
    spec = InputSpec(
        format=args.format,
        url=args.input,
        panel=panel_mapping(args),
        resume=ResumeOptions(as_of=args.as_of) if args.format == "resume-jsonl" else None,
        preset=args.sim_preset,
        people=args.people,
        seed=args.seed,
        storage_options=args.storage_options,
    )
    config = ShardConfig(
        people_per_block=args.people_per_block,
        blocks_per_shard=args.blocks_per_shard,
        split_fractions=args.split_fractions,
        min_count=args.min_count,
        lines_per_block=args.lines_per_block,
    )
    run_shard(spec, args.out, args.name, config, parent_vocab=args.vocab, overwrite=args.overwrite,
              ray_address=args.ray_address, num_cpus=args.num_cpus)  # fmt: skip
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    """Pretrain CAREER on a dataset with DeepSpeed ZeRO (Ray Train workers by default)."""
    from cluster.train_job import run_training

    return run_training("pretrain", args)


def cmd_finetune(args: argparse.Namespace) -> int:
    """Fine-tune a model package on a dataset whose vocabulary extends the package's."""
    from cluster.train_job import run_training

    return run_training("finetune", args)


def cmd_export(args: argparse.Namespace) -> int:
    """Consolidate a training run's checkpoint (any ZeRO stage) into a model package."""
    from cluster.train_job import run_export

    return run_export(args)


def training_options(recipe: str) -> argparse.ArgumentParser:
    """Flags shared by pretrain and finetune; anything else is a dotted override (key=value)."""
    from trainer.config import PRECISIONS
    from trainer.model import PRESETS

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(
        "--data", required=True, metavar="URL", help="dataset folder (made by career shard)"
    )
    parser.add_argument(
        "--out",
        required=True,
        metavar="URL",
        help="run folder: checkpoints/, package/, tb/, metrics.json",
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="architecture (default paper; finetune: the package's)")  # fmt: skip
    parser.add_argument(
        "--zero-stage",
        type=int,
        choices=(0, 1, 2, 3),
        default=None,
        help="DeepSpeed ZeRO stage (default 2)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        metavar="N",
        help="training workers (default 2; a run may resume on another number)",
    )
    parser.add_argument(
        "--gpus-per-worker",
        type=float,
        default=0,
        metavar="G",
        help="GPUs per worker (default 0: CPU, gloo)",
    )
    parser.add_argument("--updates", type=int, default=None, metavar="N",
                        help="optimizer updates (default: the recipe's, " + ("85000" if recipe == "pretrain" else "5000") + ")")  # fmt: skip
    parser.add_argument(
        "--tokens-per-update",
        type=int,
        default=None,
        metavar="N",
        help="job-year tokens per update (default 16000)",
    )
    parser.add_argument(
        "--micro-batches",
        type=int,
        default=None,
        metavar="N",
        help="gradient accumulation steps (default 1)",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="default auto: bf16 on GPU, fp32 on CPU; bf16-autocast keeps fp32 weights",
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    parser.add_argument(
        "--eval-every",
        type=int,
        default=None,
        metavar="N",
        help="updates between validations (default 1000)",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        metavar="N",
        help="updates between checkpoints (default 1000)",
    )
    parser.add_argument("--launcher", choices=("ray", "torchrun"), default="ray",
                        help="Ray Train workers (default; local Ray unless --ray-address) or torchrun on this node")  # fmt: skip
    parser.add_argument(
        "--ray-address", default=None, metavar="ADDR", help="Ray cluster to train on"
    )
    parser.add_argument(
        "--num-cpus", type=int, default=None, metavar="N", help="CPUs of the local Ray instance"
    )
    parser.add_argument("--stop-after", type=int, default=0, metavar="N",
                        help="stop after update N with a checkpoint (rerun the command to resume, with any --workers)")  # fmt: skip
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the resolved config and DeepSpeed config, then exit",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides, e.g. optim.lr=1e-4 model.dropout=0.2",
    )
    _storage_flag(parser)
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    """Run the whole pipeline on the embedded default (simulated data, local folder)."""
    from cluster.pipeline import run_local

    run_local(
        out=args.out,
        resume_people=args.resume_people,
        survey_people=args.survey_people,
        seed=args.seed,
        num_cpus=args.num_cpus,
        train_updates=args.train_updates,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    from data_shards.synth.presets import PRESETS

    parser = argparse.ArgumentParser(
        prog="career",
        description="CAREER at scale: a foundation model of job sequences. "
        "Simulate or read career data, shard it, train, fine-tune and evaluate.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the pipeline end to end on simulated data (the default demo)",
                         description=cmd_run.__doc__)  # fmt: skip
    run.add_argument(
        "--out", default="career_run", metavar="DIR", help="output folder (default ./career_run)"
    )
    run.add_argument(
        "--resume-people",
        type=int,
        default=20_000,
        metavar="N",
        help="simulated resumes (default 20000)",
    )
    run.add_argument(
        "--survey-people",
        type=int,
        default=2_000,
        metavar="N",
        help="people per simulated survey (default 2000)",
    )
    run.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    run.add_argument(
        "--train-updates",
        type=int,
        default=60,
        metavar="N",
        help="updates of the pretraining and fine-tuning demo (default 60; 0 skips training)",
    )
    run.add_argument(
        "--num-cpus",
        type=int,
        default=None,
        metavar="N",
        help="CPUs of the local Ray instance (default: all)",
    )

    synth = sub.add_parser("synth", help="simulate careers (resumes, NLSY79, NLSY97, PSID) with their oracle",
                           description=cmd_synth.__doc__)  # fmt: skip
    synth.add_argument("--preset", required=True, choices=sorted(PRESETS), help="what to simulate")
    synth.add_argument(
        "--people",
        type=int,
        default=None,
        metavar="N",
        help="people to simulate (default: the preset's size)",
    )
    synth.add_argument(
        "--seed",
        type=int,
        default=0,
        help="random seed (default 0); with it the output is deterministic",
    )
    synth.add_argument(
        "--out",
        required=True,
        metavar="URL",
        help="output folder (career-code) or file (.parquet, .csv, .jsonl)",
    )
    synth.add_argument("--layout", choices=("career-code", "parquet", "csv", "resume-jsonl"), default="career-code",
                       help="career-code folder (default), person-year Parquet or CSV panel, or resume JSON Lines")  # fmt: skip
    synth.add_argument("--split-fractions", type=_fractions, default=(0.9, 0.05, 0.05), metavar="TR,VA,TE",
                       help="train/valid/test fractions for the career-code layout (default 0.9,0.05,0.05)")  # fmt: skip
    _storage_flag(synth)

    shard = sub.add_parser("shard", parents=[input_options(with_synth=True)],
                           help="shard an input into streaming webdataset tarballs with a Ray job",
                           description=cmd_shard.__doc__)  # fmt: skip
    shard.add_argument(
        "--out",
        required=True,
        metavar="URL",
        help="where datasets live (local folder, s3://bucket/prefix, ...)",
    )
    shard.add_argument(
        "--name", required=True, help="dataset name: the dataset is the folder URL/NAME/"
    )
    shard.add_argument("--vocab", default=None, metavar="URL",
                       help="parent vocabulary (e.g. the pretraining dataset's vocab.json) to extend; ids never move")  # fmt: skip
    shard.add_argument(
        "--people-per-block",
        type=int,
        default=1024,
        metavar="N",
        help="people per tar sample (default 1024)",
    )
    shard.add_argument(
        "--blocks-per-shard",
        type=int,
        default=64,
        metavar="N",
        help="tar samples per shard (default 64)",
    )
    shard.add_argument("--split-fractions", type=_fractions, default=(0.9, 0.05, 0.05), metavar="TR,VA,TE",
                       help="train/valid/test fractions for inputs without their own splits (default 0.9,0.05,0.05)")  # fmt: skip
    shard.add_argument(
        "--lines-per-block",
        type=int,
        default=16_384,
        metavar="N",
        help="lines of a text input per Ray task (default 16384)",
    )
    shard.add_argument(
        "--min-count",
        type=int,
        default=1,
        metavar="N",
        help="codes seen fewer times map to <unk> (default 1)",
    )
    shard.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing dataset made from a different input/config",
    )
    shard.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="Ray cluster to run on (default: start a local one)",
    )
    shard.add_argument(
        "--num-cpus",
        type=int,
        default=None,
        metavar="N",
        help="CPUs of the local Ray instance (default: all)",
    )

    pretrain = sub.add_parser("pretrain", parents=[training_options("pretrain")],
                              help="pretrain CAREER with DeepSpeed ZeRO", description=cmd_pretrain.__doc__)  # fmt: skip
    del pretrain
    finetune = sub.add_parser("finetune", parents=[training_options("finetune")],
                              help="fine-tune a model package on a survey dataset", description=cmd_finetune.__doc__)  # fmt: skip
    finetune.add_argument(
        "--base", required=True, metavar="URL", help="model package to start from"
    )
    export = sub.add_parser(
        "export",
        help="consolidate a checkpoint into a model package",
        description=cmd_export.__doc__,
    )
    export.add_argument(
        "--run", required=True, metavar="URL", help="the training run's --out folder"
    )
    export.add_argument(
        "--tag",
        default=None,
        help="checkpoint tag, e.g. step0001000 (default: the best, else the latest)",
    )
    export.add_argument(
        "--package",
        default=None,
        metavar="URL",
        help="where to write the package (default RUN/package)",
    )
    _storage_flag(export)

    inspect = sub.add_parser("inspect", parents=[input_options()], help="summarise an input corpus before training",
                             description=cmd_inspect.__doc__)  # fmt: skip
    inspect.add_argument(
        "--json", action="store_true", help="print one JSON object instead of a table"
    )
    inspect.add_argument(
        "--quarantine-out",
        default=None,
        metavar="URL",
        help="also write the quarantined records as JSON Lines here",
    )
    return parser


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run,
    "synth": cmd_synth,
    "shard": cmd_shard,
    "pretrain": cmd_pretrain,
    "finetune": cmd_finetune,
    "export": cmd_export,
    "inspect": cmd_inspect,
}


def _safe(exc: BaseException, args: argparse.Namespace) -> str:
    """An error message with credentials masked and ANSI colour codes (from Ray) removed."""
    from data_shards.storage import mask_secrets

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    return mask_secrets(text, getattr(args, "storage_options", None))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # key=value overrides may sit anywhere among the flags of the training commands
        if getattr(args, "overrides", None) is not None and all(
            "=" in t and not t.startswith("-") for t in extra
        ):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return COMMANDS[args.command](args)
    except (StructuralError, ValueError, OSError, ImportError) as exc:
        # Bad input, a missing file or store, an fsspec scheme whose package is not installed.
        print(f"career {args.command}: error: {_safe(exc, args)}", file=sys.stderr)
        return EXIT_STRUCTURAL
    except KeyboardInterrupt:
        print(f"career {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("CAREER_DEBUG"):
            raise
        print(
            f"career {args.command}: unexpected {type(exc).__name__}: {_safe(exc, args)} "
            "(set CAREER_DEBUG=1 for a traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
