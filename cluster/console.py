"""Terminal output: summary tables and progress bars (rich), kept out of the data code."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

T = TypeVar("T")

# Piped output (CI logs, `| less`) gets a wide table instead of rich's 80-column default.
console = Console(width=None if sys.stdout.isatty() else 160)
progress_console = Console(stderr=True)


def progress(
    items: Iterable[T], total: int, description: str, unit_scale: Iterable[int] | None = None
) -> Iterator[T]:
    """Iterate with a progress bar on stderr (items/s and ETA)."""
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=progress_console,
        transient=False,
    ) as bar:
        task = bar.add_task(description, total=total, rate="")
        for item in items:
            yield item
            bar.advance(task)
            elapsed = bar.tasks[0].elapsed or 0.0
            done = bar.tasks[0].completed
            if elapsed > 0:
                bar.update(task, rate=f"{done / elapsed:,.1f}/s")


@contextlib.contextmanager
def people_bars() -> Iterator[Callable[[str], Callable[[int, int], None]]]:
    """Progress bars of people read through a model, on stderr: `bar(description)` adds one and
    returns its `(done, total)` callback (what eval's use cases take as `on_progress`)."""
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} people"),
        TimeElapsedColumn(),
        console=progress_console,
    ) as bars:

        def bar(description: str) -> Callable[[int, int], None]:
            task = bars.add_task(description, total=None)
            return lambda done, total: bars.update(task, completed=done, total=total)

        yield bar


def _fmt(value: Any, key: str = "") -> str:
    if "year" in key and isinstance(value, list):
        return " - ".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:,.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items())
    if isinstance(value, list):
        return (
            " - ".join(_fmt(v) for v in value)
            if all(not isinstance(v, dict) for v in value)
            else "; ".join(f"{v.get('reason')} ({v.get('count')})" for v in value)
        )
    return "-" if value is None else str(value)


def print_summary(summary: dict[str, Any], title: str) -> None:
    table = Table(title=title, show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    for key, value in summary.items():
        if key == "read":
            continue
        table.add_row(key.replace("_", " "), _fmt(value, key))
    read = summary.get("read")
    if read:
        table.add_row(
            "people read = accepted + quarantined",
            f"{read['people_read']:,} = {read['people_accepted']:,} + {read['people_quarantined']:,}",
        )
        if read.get("rows_read"):
            table.add_row(
                "rows read / quarantined", f"{read['rows_read']:,} / {read['rows_quarantined']:,}"
            )
        for note, count in (read.get("notes") or {}).items():
            # "static_conflicts" reads better spaced; a note naming a file keeps its name
            table.add_row(note if " " in note else note.replace("_", " "), f"{count:,}")
    console.print(table)


def print_rows(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="right" if column != columns[0] else "left")
    for row in rows:
        table.add_row(*(_fmt(v) for v in row))
    console.print(table)
