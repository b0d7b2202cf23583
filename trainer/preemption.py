"""A request to stop training at the next update boundary: a spot instance's warning (SIGTERM).

Cloud providers send SIGTERM a short while before they take a preemptible machine back. A run
that gets it writes a checkpoint after the update in progress and stops; its rerun (or Ray
Train's restart of the worker group) continues exactly from there, so the warning costs no
update at all instead of everything since the last scheduled checkpoint.

Where the request comes from depends on the launcher:
  torchrun/deepspeed  each worker process gets the signal (torchrun passes it on): `SignalStop`
  Ray Train           the driver gets it and tells the workers through the run's relay actor
                      (`trainer.relay`); the workers ask the relay without waiting for it
The loop asks every update and decides with all ranks together (`trainer.distributed.any_rank`),
so that every rank checkpoints at the same update.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

#: What the loop calls after every update: whether this rank was asked to stop.
StopRequest = Callable[[], bool]

#: The exit status of a process ended by SIGTERM (128 + 15), what a shell and a scheduler expect.
PREEMPTED_EXIT = 143


class Preempted(Exception):
    """Training stopped on a preemption notice, with a checkpoint: rerun to continue."""

    def __init__(self, step: int | None, where: str):
        self.step = step
        self.where = where
        at = f"after update {step} " if step is not None else ""
        super().__init__(
            f"stopped on SIGTERM {at}with a checkpoint in {where}; rerun the same command "
            "to continue exactly"
        )


class SignalStop:
    """A stop request raised by SIGTERM in this process (a torchrun worker).

    Installed from the main thread only (Python delivers signals there); elsewhere it stays a
    request nobody can raise, and the process keeps the default behaviour."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.installed = False
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda *_: self.event.set())
            self.installed = True

    def __call__(self) -> bool:
        return self.event.is_set()
