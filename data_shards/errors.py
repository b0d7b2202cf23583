"""Errors that stop a job. Bad *records* never raise: they go to the quarantine (see quarantine.py)."""

from __future__ import annotations


class StructuralError(Exception):
    """The input as a whole cannot be read (missing file or column, inconsistent layout).

    The CLI turns it into exit code 2 and leaves no partial output. The message names the file and,
    where one exists, the line.
    """

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None):
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message)
        self.path = path
        self.line = line
