"""The step runner `career run` and `career scale` share: resumable work as named steps.

A long job is a list of steps, each finished when its marker file exists. The runner
- records the job's resolved spec once and refuses to continue a folder started with another
  (`record_or_check`);
- skips a finished step, times the others and rewrites steps.json as each ends (`StepLog`,
  `Runner.step`);
- runs Ray tasks side by side, as many as the cluster holds, and hands each result back as it
  ends (`Runner.tasks`, on `data_shards.tasks.as_completed`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from data_shards import storage
from data_shards.errors import StructuralError
from eval.run_layout import finished

T = TypeVar("T")
Say = Callable[[str], None]


@dataclass(frozen=True)
class Step:
    """One resumable piece of work: finished when `folder/marker` exists."""

    name: str
    folder: str
    marker: str
    action: Callable[[], Any]
    #: what `--dry-run` says of it (default: its name)
    plan: str | None = None

    def finished(self, storage_options=None) -> bool:
        return finished(self.folder, self.marker, storage_options)


def record_or_check(
    url: str, payload: dict[str, Any], key: str, refusal: str, storage_options, **write: Any
) -> bool:
    """Write `payload` to `url`, or check that the recorded one has the same `payload[key]`;
    True when continuing. `refusal` says what to do instead (the folder is named with it)."""
    if storage.exists(url, storage_options):
        recorded = json.loads(storage.read_text(url, storage_options))
        if recorded.get(key) != payload[key]:
            raise StructuralError(refusal, path=storage.redact(url))
        return True
    storage.write_json(url, payload, storage_options, **write)
    return False


@dataclass
class StepLog:
    """steps.json: every step's status and time, rewritten whenever one ends (from the driver)."""

    url: str
    storage_options: dict | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def continued(cls, url: str, storage_options, resuming: bool) -> StepLog:
        """The log of a run, with the steps recorded before when it is being continued."""
        log = cls(url, storage_options)
        if resuming and storage.exists(url, storage_options):
            log.steps = json.loads(storage.read_text(url, storage_options))
        return log

    def record(self, step: str, status: str, seconds: float, **extra: Any) -> None:
        self.steps = [s for s in self.steps if s["step"] != step]
        entry = {"step": step, "status": status, "seconds": round(seconds, 1)}
        entry["ended"] = round(time.time(), 1)  # wall clock: how steps overlapped
        self.steps.append({**entry, **extra})
        storage.write_json(
            self.url, self.steps, self.storage_options, sort_keys=False, newline=False
        )


@dataclass
class Runner:
    """Runs steps in the driver, and Ray tasks side by side, saying what happens."""

    log: StepLog | None = None
    storage_options: dict | None = None
    say: Say = print

    def step(self, step: Step) -> Any:
        """Carry out `step` unless it is finished; its result (None when skipped)."""
        if step.finished(self.storage_options):
            self.say(f"  {step.name}: done before, skipped")
            return None
        started = time.perf_counter()
        result = step.action()
        seconds = time.perf_counter() - started
        if self.log is not None:
            # where its Ray tasks ran, when the result says (a sharding job's `nodes`)
            nodes = getattr(result, "nodes", None)
            self.log.record(step.name, "done", seconds, **({"nodes": nodes} if nodes else {}))
        self.say(f"  {step.name}: {seconds:,.0f} s")
        return result

    def tasks(
        self, items: Iterable[T], submit: Callable[[T], Any], slots: int | None = None
    ) -> Iterator[tuple[T, Any]]:
        """Each item's task result as it ends, at most `slots` tasks running at once (all of
        them when None), started in the order given; `submit(item)` starts its task. An error of
        ours raised in a task is raised here as itself (`data_shards.tasks.as_completed`)."""
        from data_shards.tasks import as_completed

        todo = list(items)
        running: dict[Any, T] = {}  # the task's object ref -> its item
        while todo or running:
            while todo and (slots is None or len(running) < slots):
                item = todo.pop(0)
                running[submit(item)] = item
            ref, result = next(as_completed({ref: ref for ref in running}))
            yield running.pop(ref), result
