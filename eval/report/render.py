"""The report as a list of blocks, rendered twice: one HTML page and its Markdown twin.

Both renderings walk the same blocks, so the twin holds the same tables and figures. The page
works offline: one inline style sheet, no script, no web font, no remote resource; figures are
PNG files beside it, referenced by relative path: the Markdown twin needs them as files anyway
(few Markdown viewers show data URIs), one copy serves both, and the page stays small. Copy the
report folder whole, not the page alone.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field


@dataclass
class Heading:
    text: str
    level: int = 2
    anchor: str | None = None


@dataclass
class Text:
    text: str


@dataclass
class Missing:
    """Something the report would show but the run does not have (yet)."""

    text: str


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]]
    caption: str | None = None
    bold: set[int] = field(default_factory=set)  # indices of rows shown in bold (the best model)
    css: str = "numbers"


@dataclass
class Image:
    path: str  # relative to the report folder, '/'-separated
    alt: str
    caption: str = ""


Block = Heading | Text | Missing | Table | Image

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
 margin:0;color:#1b1f24;background:#fff;line-height:1.45}
main{max-width:1100px;margin:0 auto;padding:1.5rem 1.2rem 4rem}
h1{font-size:1.7rem;margin:.2rem 0 1rem}h2{font-size:1.35rem;margin-top:2.2rem;
 border-bottom:1px solid #d0d7de;padding-bottom:.25rem}h3{font-size:1.1rem;margin-top:1.6rem}
table{border-collapse:collapse;margin:.6rem 0 1rem;font-size:.9rem}
caption{caption-side:top;text-align:left;font-weight:600;padding:.3rem 0;color:#333}
th,td{border:1px solid #d0d7de;padding:.25rem .55rem}th{background:#f3f5f7}
td{white-space:nowrap}
table.numbers td:not(:first-child){text-align:right;font-variant-numeric:tabular-nums}
tr.best td{font-weight:700;background:#fff8e6}
figure{margin:1rem 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85rem;color:#555}
.missing{background:#fff4f4;border-left:4px solid #d1242f;padding:.35rem .7rem;margin:.4rem 0;
 font-size:.9rem}
nav ul{columns:2;font-size:.9rem}
"""


def to_html(title: str, blocks: list[Block]) -> str:
    e = html.escape
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(title)}</title><style>{CSS}</style></head>",
        f"<body><main><h1>{e(title)}</h1>",
    ]
    anchors = [b for b in blocks if isinstance(b, Heading) and b.anchor]
    if anchors:
        items = "".join(f'<li><a href="#{e(b.anchor)}">{e(b.text)}</a></li>' for b in anchors)
        parts.append(f"<nav><ul>{items}</ul></nav>")
    for block in blocks:
        if isinstance(block, Heading):
            anchor = f' id="{e(block.anchor)}"' if block.anchor else ""
            parts.append(f"<h{block.level}{anchor}>{e(block.text)}</h{block.level}>")
        elif isinstance(block, Text):
            parts.append(f"<p>{e(block.text)}</p>")
        elif isinstance(block, Missing):
            parts.append(f'<p class="missing">missing: {e(block.text)}</p>')
        elif isinstance(block, Table):
            parts.append(_html_table(block))
        else:
            parts.append(
                f'<figure><img src="{e(block.path)}" alt="{e(block.alt)}">'
                f"<figcaption>{e(block.caption or block.alt)}</figcaption></figure>"
            )
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"


def _html_table(table: Table) -> str:
    e = html.escape
    head = "".join(f"<th>{e(c)}</th>" for c in table.columns)
    body = []
    for i, row in enumerate(table.rows):
        css = ' class="best"' if i in table.bold else ""
        body.append(f"<tr{css}>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>")
    caption = f"<caption>{e(table.caption)}</caption>" if table.caption else ""
    return (
        f'<table class="{e(table.css)}">{caption}<thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(title: str, blocks: list[Block]) -> str:
    lines = [f"# {title}", ""]
    for block in blocks:
        if isinstance(block, Heading):
            lines += ["#" * block.level + " " + block.text, ""]
        elif isinstance(block, Text):
            lines += [block.text, ""]
        elif isinstance(block, Missing):
            lines += [f"> **missing:** {block.text}", ""]
        elif isinstance(block, Table):
            if block.caption:
                lines += [f"**{block.caption}**", ""]
            align = ["---"] + ["---:" if block.css == "numbers" else "---"] * (
                len(block.columns) - 1
            )
            lines.append("| " + " | ".join(_cell(c) for c in block.columns) + " |")
            lines.append("|" + "|".join(align) + "|")
            for i, row in enumerate(block.rows):
                cells = [_cell(c) for c in row]
                if i in block.bold:
                    cells[0] = f"**{cells[0]}**"
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
        else:
            lines += [f"![{block.alt}]({block.path})", ""]
            if block.caption:
                lines += [f"*{block.caption}*", ""]
    return "\n".join(lines).rstrip() + "\n"
