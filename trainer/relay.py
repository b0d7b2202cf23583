"""The driver's side of a Ray Train run: one small actor that outlives the worker groups.

Ray Train restarts a failed worker group from scratch (`FailureConfig(max_failures)`): the new
workers know nothing of the old ones. What must survive a restart lives in `RunRelay`, an actor
on the driver's node (it dies only with the driver, and then the run is over anyway):

  progress      rank 0's latest step and messages, drawn by the driver (`DriverProgress`)
  attempts      how many worker groups have started: a restart is attempt 2, 3, ...
  finished      which runs of a survey's list are done, so a restart does not train them again
  restarts      per run, the worker-group failures it survived (into its metrics.json)
  user error    an error of ours (bad input, a refused checkpoint) is not retried: the next
                group returns at once and the driver raises it
  stop          a preemption notice the driver got (SIGTERM): the workers checkpoint and stop
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

log = logging.getLogger("career.launch")


class RunRelay:
    """A Ray actor holding what a run's worker groups share with the driver and each other."""

    def __init__(self, runs: int) -> None:
        self.state: dict[str, Any] = {"step": 0, "total": 0, "detail": ""}
        self.messages: list[str] = []
        self.runs = runs
        self.attempts = 0
        self.finished: set[int] = set()
        self.restarts = [0] * runs
        self.error: BaseException | None = None
        self.stop = False
        self.stopped_at: dict[int, int] = {}

    # -- progress ---------------------------------------------------------------------------------
    def update(self, step: int, total: int, detail: str, message: str | None) -> None:
        if message is not None:
            self.messages.append(message)
        else:
            self.state = {"step": step, "total": total, "detail": detail}

    def read(self) -> tuple[dict[str, Any], list[str]]:
        messages, self.messages = self.messages, []
        return self.state, messages

    # -- attempts ---------------------------------------------------------------------------------
    def begin_attempt(self) -> dict[str, Any]:
        """Called by rank 0 of each worker group as it starts: what it must (not) do."""
        self.attempts += 1
        pending = [i for i in range(self.runs) if i not in self.finished]
        if self.attempts > 1 and pending:
            self.restarts[pending[0]] += 1  # the run that was in progress when the group failed
        return {
            "attempt": self.attempts,
            "finished": sorted(self.finished),
            "restarts": list(self.restarts),
            "give_up": self.error is not None or self.stop,
        }

    def finish(self, run: int, stopped_at: int | None = None) -> None:
        self.finished.add(run)
        if stopped_at is not None:
            self.stopped_at[run] = stopped_at

    def fail(self, error: BaseException) -> None:
        """An error of ours on a worker (the first one is the cause)."""
        if self.error is None:
            self.error = error

    def outcome(self) -> dict[str, Any]:
        return {
            "attempts": self.attempts,
            "error": self.error,
            "stop": self.stop,
            "stopped_at": dict(self.stopped_at),
            "restarts": list(self.restarts),
        }

    # -- preemption -------------------------------------------------------------------------------
    def request_stop(self) -> None:
        self.stop = True

    def stop_requested(self) -> bool:
        return self.stop


class RelayStop:
    """The workers' view of the relay's stop request: asked every update, never waited for.

    One request is in flight at a time (`ObjectRef.future()`); an update only looks whether its
    answer has arrived, so the poll costs the loop nothing."""

    def __init__(self, relay) -> None:
        self.relay = relay
        self.pending = None
        self.seen = False

    def __call__(self) -> bool:
        if self.seen:
            return True
        if self.pending is None:
            self.pending = self.relay.stop_requested.remote().future()
        elif self.pending.done():
            try:
                self.seen = bool(self.pending.result())
            except Exception:  # the relay is gone: the driver is, so the run ends anyway
                self.seen = False
            self.pending = None
        return self.seen


class DriverProgress:
    """Draw the relayed progress in the driver's terminal (a thread polling the relay)."""

    def __init__(self, relay, interval: float = 0.5):
        from rich.console import Console

        from trainer.monitor import training_progress

        self.relay = relay
        self.interval = interval
        self.progress = training_progress(Console(stderr=True))
        self.task = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _poll(self) -> None:
        import ray

        state, messages = ray.get(self.relay.read.remote())
        for message in messages:
            self.progress.console.print(message)
        if state["total"]:
            if self.task is None:
                self.task = self.progress.add_task(
                    "train", total=state["total"], completed=state["step"], detail=""
                )
            self.progress.update(self.task, completed=state["step"], detail=state["detail"])

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                self._poll()
            except Exception as error:  # the bar is a convenience: never let it end a run
                log.warning("progress bar stopped: %s", error)
                return

    def __enter__(self) -> DriverProgress:
        self.progress.start()
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        try:
            self._poll()  # the last state and messages
        except Exception as error:  # e.g. the relay's node was lost: the run's result stands
            log.warning("could not read the final progress: %s", error)
        finally:
            self.progress.stop()


class DriverStop:
    """SIGTERM on the driver, for the duration of a Ray Train run: ask the workers to checkpoint
    and stop (through the relay) instead of dying at once.

    The main thread sits in a blocking `ray.get` while the run trains, where Python runs signal
    handlers only seconds later; so the signal also wakes a thread at once (`signal.set_wakeup_fd`:
    the C handler writes to a pipe) and that thread tells the relay. `grace` seconds after the
    notice the driver gives up waiting and leaves with 143 (a spot instance's warning is short;
    the workers keep their last scheduled checkpoint then); a second notice leaves at once. Only
    the main thread can take signals; elsewhere (a `career run` survey task) nothing is installed."""

    def __init__(self, relay, grace: float) -> None:
        self.relay = relay
        self.grace = grace
        self.previous = None
        self.previous_wakeup = -1
        self.pipe: tuple[int, int] | None = None
        self.timer: threading.Timer | None = None
        self.noticed = threading.Event()
        self.lock = threading.Lock()

    def _notice(self) -> None:
        import os

        with self.lock:
            if self.noticed.is_set():
                return
            self.noticed.set()
        self.relay.request_stop.remote()
        log.warning("SIGTERM: the workers checkpoint after their current update, then stop")
        self.timer = threading.Timer(self.grace, os._exit, args=(143,))
        self.timer.daemon = True
        self.timer.start()

    def _on_sigterm(self, *_: object) -> None:
        """The Python-level handler (late, but certain): a second notice leaves at once."""
        import os

        if self.noticed.is_set() and self.seen_by_handler:
            os._exit(143)
        self.seen_by_handler = True
        self._notice()

    def _watch(self, read_end: int) -> None:
        """The signal's byte on the wakeup pipe, as soon as it is delivered."""
        import os

        while True:
            try:
                data = os.read(read_end, 64)
            except OSError:
                return
            if not data:
                return
            if signal.SIGTERM in data:
                self._notice()

    def __enter__(self) -> DriverStop:
        import os

        if threading.current_thread() is not threading.main_thread():
            return self
        self.seen_by_handler = False
        self.previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        read_end, write_end = os.pipe()
        os.set_blocking(write_end, False)
        self.pipe = (read_end, write_end)
        self.previous_wakeup = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        threading.Thread(target=self._watch, args=(read_end,), daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        import os

        if self.timer is not None:
            self.timer.cancel()  # the workers stopped in time
        if self.pipe is not None:
            signal.set_wakeup_fd(self.previous_wakeup)
            for end in reversed(self.pipe):  # the write end first: the watcher reads EOF, ends
                os.close(end)
            self.pipe = None
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
