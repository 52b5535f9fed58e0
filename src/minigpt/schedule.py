"""Learning-rate schedules as pure functions of the step: no optimizer, no state.

`lr_at(step, ...)` gives the rate to use for optimizer step `step` (0-based):

- "cosine": linear warmup from lr/warmup to lr over `warmup_steps`, then half a cosine from lr
  down to `min_lr` at the last step (the lesson's recommended recipe);
- "constant": lr throughout (the lesson's script);
- "cosine-annealing": what the lesson's `CosineAnnealingLR(optimizer, T_max=steps)` gives,
  stepped once per step: min_lr + (lr - min_lr) * (1 + cos(pi * step / steps)) / 2, no warmup.
"""

from __future__ import annotations

import math


def lr_at(
    step: int,
    *,
    lr: float,
    total_steps: int,
    schedule: str = "cosine",
    warmup_steps: int = 0,
    min_lr: float = 0.0,
) -> float:
    if schedule == "constant":
        return lr
    if schedule == "cosine-annealing":
        return min_lr + (lr - min_lr) * (1 + math.cos(math.pi * step / total_steps)) / 2
    if schedule != "cosine":
        raise ValueError(f"unknown schedule {schedule!r}")
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps  # step 0 already learns: lr / warmup, not 0
    decay_steps = total_steps - 1 - warmup_steps  # the last step lands exactly on min_lr
    if decay_steps <= 0:
        return lr
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr + (lr - min_lr) * (1 + math.cos(math.pi * progress)) / 2
