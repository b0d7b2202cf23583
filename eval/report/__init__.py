"""The run report: one HTML page and its Markdown twin, with PNG plots, built from a run's
metrics, manifests and evaluation alone (never rerunning a model).

    run.py        the run folder read back, with a note for each thing it lacks (yet)
    sections.py   the sections as blocks, and the figures they need
    plots.py      the figures (matplotlib, Agg canvas)
    render.py     blocks to HTML (offline: inline CSS, no script) and to Markdown

`build_report(RUN, OUT)` writes OUT/plots/*.png, then OUT/report.md, then OUT/report.html (last:
a page never names a plot not yet written).
"""

from __future__ import annotations

from dataclasses import dataclass

from data_shards import storage
from eval.report import render, sections
from eval.report.run import load_run

HTML = "report.html"
MARKDOWN = "report.md"


@dataclass
class Written:
    html: str
    markdown: str
    plots: list[str]  # relative to the report folder
    missing: list[str]


def default_out(run_url: str) -> str:
    return storage.join(run_url, "report")


def build_report(run_url: str, out_url: str | None = None, storage_options=None) -> Written:
    """Read the run at `run_url` and write its report under `out_url` (default RUN/report)."""
    run = load_run(run_url, storage_options)
    out = out_url or default_out(run_url)
    doc = sections.build(run)
    for relative, png in sorted(doc.plots.items()):
        storage.write_bytes_atomic(storage.join(out, relative), png, storage_options)
    html_url, md_url = storage.join(out, HTML), storage.join(out, MARKDOWN)
    markdown = render.to_markdown(doc.title, doc.blocks).encode()
    storage.write_bytes_atomic(md_url, markdown, storage_options)
    storage.write_bytes_atomic(
        html_url, render.to_html(doc.title, doc.blocks).encode(), storage_options
    )
    return Written(html_url, md_url, sorted(doc.plots), doc.missing)
