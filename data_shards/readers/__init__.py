"""Input readers: each returns accepted records as an Arrow table, a quarantine and a report.

One module per file format (`career_code`, `panel`, `resume_jsonl`), each with a whole-file
reader for this process and a block reader for the sharding job's tasks; `common` holds what they
share and `lines` cuts text files into blocks of lines by byte ranges. Which reader serves which
format name is the registry's (`data_shards.formats`); `read(url, fmt, ...)` is the one entry
point the CLI uses.
"""

from __future__ import annotations

from data_shards.readers.career_code import read_career_code
from data_shards.readers.common import ReadResult
from data_shards.readers.panel import PanelMapping, read_panel
from data_shards.readers.resume_jsonl import ResumeOptions, read_resume_jsonl

__all__ = [
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
    """Read `url` in format `fmt` (one of `data_shards.formats.READABLE_FORMATS`)."""
    # Imported here: the registry imports the reader modules, hence this package.
    from data_shards.formats import READABLE_FORMATS, input_format

    reader = input_format(fmt, READABLE_FORMATS).read
    assert reader is not None  # a readable format has a reader, by definition
    return reader(url, panel=panel, resume=resume, storage_options=storage_options)
