"""Learning-rate schedules as pure functions: no optimizer, no state.

`lr_at(step, ...)` gives the rate to use for optimizer step `step` (0-based):

- "cosine": linear warmup from lr/warmup to lr over `warmup_steps`, then half a cosine from lr
  down to `min_lr` at the last step (the lesson's recommended recipe);
- "linear": the same warmup, then a straight line from lr down to `min_lr`;
- "constant": lr throughout (the lesson's script);
- "cosine-annealing": what the lesson's `CosineAnnealingLR(optimizer, T_max=steps)` gives,
  stepped once per step: min_lr + (lr - min_lr) * (1 + cos(pi * step / steps)) / 2, no warmup.

A run with a time budget has no last step known in advance: pass `fraction`, the part of the
budget spent (0 to 1), and the decay follows it instead of the step count (warmup stays in
steps).

`schedule_lr` and `batch_shape` are a run's two schedules, from its settings.

`size_at(progress, ...)` is the schedule of a batch's size (sequences, or tokens per sequence):
from `start` it grows in steps of `start` to `full` over the first `ramp` of training, as the
modded-nanogpt speedrun grows its batch and its context: early steps, which learn the short
statistics of the text, are cheap, and there are more of them.
"""

from __future__ import annotations

import math

from minigpt.config import TrainConfig
from minigpt.errors import MiniGPTError


def lr_at(
    step: int,
    *,
    lr: float,
    total_steps: int,
    schedule: str = "cosine",
    warmup_steps: int = 0,
    min_lr: float = 0.0,
    fraction: float | None = None,
) -> float:
    """The learning rate of optimizer step `step` (0-based) of a run of `total_steps`, peaking
    at `lr`: `schedule` is cosine (the default), linear, constant or cosine-annealing, as the
    module's docstring says; `warmup_steps` rise to lr first, and the decay ends at `min_lr`.
    `fraction` (0 to 1): the part of a time budget spent, which the decay follows instead."""
    if step < 0 or total_steps < 1:
        raise MiniGPTError(f"lr_at takes a step >= 0 of total_steps >= 1, got step {step} of "
                         f"{total_steps}")
    if schedule == "constant":
        return lr
    if schedule == "cosine-annealing":
        progress = step / total_steps if fraction is None else fraction
        return min_lr + (lr - min_lr) * (1 + math.cos(math.pi * progress)) / 2
    if schedule not in ("cosine", "linear"):
        raise MiniGPTError(f"unknown schedule {schedule!r}")
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps  # step 0 already learns: lr / warmup, not 0
    if fraction is not None:
        progress = fraction
    else:
        decay_steps = total_steps - 1 - warmup_steps  # the last step lands exactly on min_lr
        if decay_steps <= 0:
            return lr
        progress = (step - warmup_steps) / decay_steps
    progress = min(1.0, max(0.0, progress))
    if schedule == "linear":
        return lr - (lr - min_lr) * progress
    return min_lr + (lr - min_lr) * (1 + math.cos(math.pi * progress)) / 2


def grows(start: int, full: int, ramp: float) -> bool:
    """Whether a size schedule is on: a start below the full size, and a ramp to grow over."""
    return 0 < start < full and ramp > 0


def size_at(progress: float, *, start: int, full: int, ramp: float) -> int:
    """The size at `progress` (0 to 1) through training: `start`, 2 `start`, 3 `start`, ...
    growing linearly to `full`, reached when progress reaches `ramp`; `full` throughout when
    the schedule is off (see `grows`)."""
    if not grows(start, full, ramp) or progress >= ramp:
        return full
    grown = start + (full - start) * max(progress, 0.0) / ramp
    return min(full, start * int(grown // start))


def schedule_lr(t: TrainConfig, step: int, seconds: float = 0.0) -> float:
    """The learning rate of step `step`, `seconds` into training: warmup, then cosine (or as
    t.schedule says), decaying over t.steps or, with a time budget, over its seconds."""
    fraction = seconds / t.time_budget if t.time_budget else None
    return lr_at(step, lr=t.lr, total_steps=t.steps, schedule=t.schedule,
                 warmup_steps=t.warmup_steps, min_lr=t.min_lr, fraction=fraction)


def batch_shape(t: TrainConfig, block_size: int, step: int, seconds: float) -> tuple[int, int]:
    """The training batch's (B, T) at step `step`, `seconds` into training: each grows from
    its start as far as training has come (of the time budget's seconds, else of the steps)."""
    progress = seconds / t.time_budget if t.time_budget else step / t.steps
    return (size_at(progress, start=t.batch_start, full=t.batch_size, ramp=t.ramp),
            size_at(progress, start=t.block_start, full=block_size, ramp=t.ramp))
