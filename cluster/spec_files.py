"""Specs read from YAML files (an experiment, a scaling grid): strictly, naming the file, the line
and the key of whatever is wrong, never a silent default."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from data_shards.errors import StructuralError


def build_strict(cls: type, values: Any, where: str):
    """`cls(**values)`, refusing keys `cls` does not have, with `where` in the message."""
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(values).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known: {', '.join(sorted(known))}")
    try:
        return cls(**values)
    except TypeError as error:  # a required key missing
        raise ValueError(f"{where}: {error}") from None


def read_mapping(path: str, what: str, keys: str) -> dict[str, Any]:
    """The mapping in the YAML (or JSON) `what` file at `path` (an experiment, a scaling grid);
    an unreadable file, invalid YAML (with its line) or another top level stops naming the file."""
    import yaml

    try:
        text = Path(path).read_text()
    except OSError as error:
        raise StructuralError(f"cannot read the {what} file: {error.strerror}", path=path) from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise StructuralError(
            f"not valid YAML: {getattr(error, 'problem', error)}", path=path, line=line
        ) from None
    if not isinstance(values, dict):
        article = "an" if what[0] in "aeiou" else "a"
        raise StructuralError(f"{article} {what} file holds a mapping ({keys})", path=path)
    return values
