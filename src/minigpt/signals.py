"""Ctrl-C and SIGTERM during training: finish the step, save, stop; a second one stops at once."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

from minigpt import distributed
from minigpt.console import count
from minigpt.errors import Terminated, TrainingStopped, continue_in_python

log = logging.getLogger(__name__)


class StopSignals:
    """The first SIGINT (Ctrl-C) or SIGTERM lets the current step finish, then the loop saves a
    checkpoint and stops; a second one stops at once (files are only ever renamed into place,
    so nothing is left half-written). Under torchrun the processes agree after every step
    (a collective call on the host), so that they all stop after the same one: torchrun, which
    passes its Ctrl-C on, kills them 30 s later, so the next log line could come too late."""

    def __enter__(self) -> StopSignals:
        self.received: int | None = None
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self.handle)
        return self

    def handle(self, signum, frame) -> None:
        if self.received is not None:  # (the second: Ctrl-C's, or SIGTERM's way out)
            raise KeyboardInterrupt if signum == signal.SIGINT else Terminated
        self.received = signum
        log.warning(f"{signal.Signals(signum).name}: finishing this step (and an evaluation "
                    f"under way), then saving a checkpoint (again to stop at once)")

    def agreed(self, world: distributed.World) -> bool:
        """Whether to stop after this step: when any process got a signal (under torchrun, a
        collective call, made by all after the same step)."""
        return distributed.any_process(self.received is not None, world)

    @property
    def signum(self) -> int:
        return self.received or signal.SIGTERM

    def stopped(self, folder: Path, steps: int, processes: int) -> TrainingStopped:
        """What ends a run stopped after `steps`, its checkpoint saved: the exception, whose
        message is the call that continues it."""
        return TrainingStopped(self.signum, f"checkpoint saved after {count(steps, 'step')}; "
                                            f"{continue_in_python(folder)} continues",
                               folder, steps, processes)

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

