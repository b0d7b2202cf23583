"""Ray task results as they finish, with our errors re-raised as themselves.

`as_completed(refs)` is the one `ray.wait` loop of the commands that fan work out to Ray tasks
(`career evaluate`'s scoring tasks, `career run`'s per-survey tasks): it yields each task's
result in the order the tasks finish; a `StructuralError`, `ValueError` or `OSError` raised in
a task reaches the caller as itself (its message, exit code 2), not as Ray's `RayTaskError`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any


def as_completed(refs: Iterable[Any]) -> Iterator[Any]:
    """Each task's result as it finishes; an error of ours raised in a task is re-raised as
    itself, not as Ray's wrapper."""
    import ray

    from data_shards.errors import StructuralError

    waiting = list(refs)
    while waiting:
        done, waiting = ray.wait(waiting, num_returns=1)
        try:
            yield ray.get(done[0])
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause
            if isinstance(cause, StructuralError | ValueError | OSError):
                raise cause from None
            raise
