"""Ray task results as they end: the one `ray.wait` loop of every job that fans work out to Ray
tasks (the sharding job's passes, `career evaluate`'s scoring, `career run`'s surveys, `career
scale`'s points).

An error of ours raised in a task (`StructuralError`, `ValueError`, `OSError`) reaches the caller
as itself (its message, exit code 2), not wrapped in Ray's `RayTaskError`. Ray is imported only
when a loop runs, so that importing this module stays light.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

K = TypeVar("K")


def as_completed(refs: Mapping[Any, K]) -> Iterator[tuple[K, Any]]:
    """(key, result) of each task of `refs` (object ref -> key), in the order the tasks end."""
    import ray

    from data_shards.errors import StructuralError

    pending = dict(refs)
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        key = pending.pop(ready[0])
        try:
            result = ray.get(ready[0])
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, StructuralError | ValueError | OSError):
                raise exc.cause from None
            raise
        yield key, result


def on_node(fn: Callable[..., Any]) -> Callable[..., tuple]:
    """`fn` as a task that also returns the Ray node it ran on, as its last value: where a job's
    tasks ran (`ShardResult.nodes`, steps.json), without changing what the task computes."""

    @functools.wraps(fn)
    def task(*args: Any, **kwargs: Any) -> tuple:
        import ray

        result = fn(*args, **kwargs)
        node = ray.get_runtime_context().get_node_id()
        return (*result, node) if isinstance(result, tuple) else (result, node)

    return task
