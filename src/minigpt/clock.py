"""The training clock, and the speed it measures.

`Clock` counts the seconds a run spends training, across resumes: it runs while steps run and
stops around evaluation, checkpoints and probes (`with clock.paused():`). Time budgets, the
schedule's time fraction, the `time_s` column and the time to a target loss all read it, and a
checkpoint keeps it (`state_dict`). `Speed` turns tokens trained and clock seconds into tokens
per second and model FLOPs utilisation.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch

from minigpt.performance import mfu, wait_for


class Clock:
    """Seconds of training: those of earlier processes (a resumed run's), and this one's while
    running. Given the device, it stops once the device has done the steps queued on it."""

    def __init__(self, seconds: float = 0.0, device: torch.device | None = None):
        self.before = seconds  # counted before the current stretch
        self.since: float | None = None  # perf_counter() when it last started; None: stopped
        self.device = device

    def start(self) -> Clock:
        if self.since is None:
            self.since = time.perf_counter()
        return self

    def stop(self) -> None:
        if self.device is not None:  # a GPU's steps end after the Python that queued them
            wait_for(self.device)
        self.before = self.seconds()
        self.since = None

    def seconds(self) -> float:
        running = time.perf_counter() - self.since if self.since is not None else 0.0
        return self.before + running

    def catch_up(self, seconds: float) -> None:
        """Move the clock forward to `seconds` if it is behind (torchrun: to the slowest
        process's clock, so that every process reads the same time)."""
        self.before += max(0.0, seconds - self.seconds())

    @contextmanager
    def paused(self):
        """Inside: the clock stands still (evaluation, checkpoints and probes are not
        training). After: it runs again, if it was running."""
        running = self.since is not None
        self.stop()
        try:
            yield
        finally:
            if running:
                self.start()

    def state_dict(self) -> dict:
        return {"seconds": self.seconds()}

    def load_state_dict(self, state: dict) -> None:
        self.before, self.since = state["seconds"], None


class Speed:
    """Tokens per second and MFU, from the run's count of tokens trained and the clock's
    seconds: since the last reading, or over the whole run."""

    def __init__(self, flops_per_token: float, peak_flops: float, tokens: int, seconds: float):
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        # the whole run from zero; a checkpoint that kept no count of tokens: from here
        self.first = (0, 0.0) if tokens else (0, seconds)
        self.last = (tokens, seconds)

    def read(self, tokens: int, seconds: float) -> dict:
        """The speed since the last reading, with `tokens` trained `seconds` into training."""
        previous, self.last = self.last, (tokens, seconds)
        return self._figures(previous, self.last)

    def overall(self) -> dict:
        return self._figures(self.first, self.last)

    def _figures(self, start: tuple[int, float], end: tuple[int, float]) -> dict:
        tokens_per_s = (end[0] - start[0]) / max(end[1] - start[1], 1e-9)
        return {"tokens_per_s": round(tokens_per_s),
                "mfu": round(mfu(tokens_per_s, self.flops_per_token, self.peak_flops), 4)}
