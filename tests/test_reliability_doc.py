"""RELIABILITY.md stays true: every test it names exists, and every row names one."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAMED_TEST = re.compile(r"`(tests/[\w/]+\.py)::(\w+)")


def _tests_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test")
    }


def test_every_row_names_a_test_that_exists():
    text = (ROOT / "RELIABILITY.md").read_text()
    rows = [
        line
        for line in text.splitlines()
        if line.startswith("|")
        and not line.startswith("|---")
        and " test |" not in line
        and " shown by |" not in line
    ]
    assert len(rows) >= 40
    missing_test = [row[:80] for row in rows if not NAMED_TEST.search(row)]
    assert not missing_test, missing_test
    named = NAMED_TEST.findall(text)
    absent = [
        f"{path}::{name}"
        for path, name in named
        if not (ROOT / path).exists() or name not in _tests_in(ROOT / path)
    ]
    assert not absent, absent
    assert "## Security" in text
