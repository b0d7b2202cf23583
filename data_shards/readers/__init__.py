"""Input readers: each returns accepted records as an Arrow table, a quarantine and a report.

`read(url, fmt, ...)` is the one entry point the CLI and the sharding job use.
"""

from __future__ import annotations

from data_shards.readers.career_code import read_career_code
from data_shards.readers.common import ReadResult
from data_shards.readers.panel import PanelMapping, read_panel
from data_shards.readers.resume_jsonl import ResumeOptions, read_resume_jsonl

FORMATS = ("career-code", "panel", "resume-jsonl")

__all__ = [
    "FORMATS",
    "PanelMapping",
    "ReadResult",
    "ResumeOptions",
    "read",
    "read_career_code",
    "read_panel",
    "read_resume_jsonl",
]


def read(
    url: str,
    fmt: str,
    *,
    panel: PanelMapping | None = None,
    resume: ResumeOptions | None = None,
    storage_options=None,
) -> ReadResult:
    """Read `url` in format `fmt` (one of FORMATS)."""
    if fmt == "career-code":
        return read_career_code(url, storage_options)
    if fmt == "panel":
        return read_panel(url, panel, storage_options)
    if fmt == "resume-jsonl":
        return read_resume_jsonl(url, resume, storage_options)
    raise ValueError(f"unknown input format {fmt!r}; choose from {', '.join(FORMATS)}")
