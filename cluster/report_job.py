"""`career report RUN [--out URL]`: the run's report, one HTML page and its Markdown twin with PNG
plots, from the run's metrics, manifests and evaluation alone (`eval.report`; no model runs).

    OUT/report.html    offline: inline CSS, no script; plots referenced beside it
    OUT/report.md      the same tables and figures
    OUT/plots/*.png

OUT defaults to RUN/report. A run still in progress is reported as far as it goes, each missing
step named; a RUN that is not a run folder is refused (exit 2). RUN is positional, which the
generated flags do not offer, so `add_report_flags` and `report_settings` add and read it (the
`add` and `make` of the command's registration).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from cluster import flags
from cluster.settings import StorageSettings
from data_shards import storage
from eval.run_layout import STEP_FOLDERS


@dataclass(kw_only=True)
class ReportSettings:
    """Write a run's report (HTML page, Markdown twin, PNG plots) from its metrics and
    evaluation scores alone: comparison tables, learning curves, test perplexity, P(stay)
    calibration, transitions between the most common jobs, data summary."""

    run: str = flags.option(
        help="run folder (what career run writes)", metavar="RUN", path=True, skip=True
    )
    out: str | None = flags.option(
        None, help="report folder (default: RUN/report)", metavar="URL", path=True
    )
    storage: StorageSettings = field(default_factory=StorageSettings)

    def __post_init__(self) -> None:
        self.run = storage.absolute(self.run)
        self.out = storage.absolute(self.out) if self.out else storage.join(self.run, "report")

    def paths_read(self) -> dict[str, str | None]:
        """The run's step outputs: the report folder may lie in RUN, not in what it reads."""
        return {f"RUN/{step}": storage.join(self.run, step) for step in STEP_FOLDERS}

    def paths_written(self) -> dict[str, str | None]:
        return {"--out": self.out}


def add_report_flags(parser: argparse.ArgumentParser) -> None:
    """RUN as a positional argument, then the generated flags."""
    meta = ReportSettings.__dataclass_fields__["run"].metadata
    parser.add_argument("run", metavar=meta["metavar"], help=meta["help"])
    flags.add_flags(parser, ReportSettings)


def report_settings(namespace: argparse.Namespace) -> ReportSettings:
    return flags.build(ReportSettings, namespace, run=namespace.run)


def run_report(settings: ReportSettings) -> int:
    from cluster.console import console
    from eval.report import build_report

    written = build_report(settings.run, settings.out, settings.storage.storage_options)
    console.print(
        f"report: {storage.redact(written.html)} (and {storage.redact(written.markdown)}, "
        f"{len(written.plots)} plots)"
    )
    if written.missing:
        console.print(f"{len(written.missing)} missing (named in the report):")
        for note in written.missing:
            console.print(f"  {note}", markup=False, highlight=False)
    return 0
