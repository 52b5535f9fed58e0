"""The training step: the lesson's steps in one function, which the loop (minigpt.trainer), the
notebook and the benchmarks all call.

    loss, grad_norm = train_step(model, optimizer, batches, grad_clip=1.0)

Gradient accumulation (a batch in several smaller passes), autocast (the forward's matmuls in
bf16) and DDP's gradient averaging (data parallel training over processes) sit behind
`MicroSteps`, so the step reads the same with them and without.
"""

from __future__ import annotations

import contextlib
import time

import torch
from torch.nn.parallel import DistributedDataParallel


class MicroSteps:
    """How one step runs its batch: as `n` micro-batches whose gradients add up (gradient
    accumulation; 1: the whole batch at once), the forward under autocast to `dtype` (float32:
    no autocast; weights stay float32 either way), and, when the model is DDP's wrapper, the
    gradients averaged across processes once, in the last micro-batch's backward."""

    def __init__(self, n: int = 1, dtype: torch.dtype = torch.float32):
        self.n, self.dtype = n, dtype

    def __iter__(self):
        return iter(range(self.n))

    def gradient_sync(self, model: torch.nn.Module, i: int):
        """Around micro-batch i's forward and backward: DDP keeps its gradients to itself but
        for the last micro-batch, whose backward averages the sum across processes."""
        if isinstance(model, DistributedDataParallel) and i < self.n - 1:
            return model.no_sync()
        return contextlib.nullcontext()

    def autocast(self, device: torch.device):
        """Around the forward (not the backward): matmuls in dtype, unless it is float32."""
        return torch.autocast(device.type, self.dtype, enabled=self.dtype != torch.float32)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches,
               grad_clip: float = 1.0,
               micro: MicroSteps | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on the next training batch (batches: a minigpt.data.Batches).
    Returns the batch's mean loss and the global gradient norm before clipping, as tensors
    (reading them waits for the device). The gradients are cleared first, so that a step's
    micro-batches add theirs up."""
    micro = micro or MicroSteps()
    optimizer.zero_grad(set_to_none=True)  # forget the last step's gradients
    loss = 0.0
    for i in micro:  # one micro-batch, unless accumulating
        x, y = batches.get_batch("train", i)  # a batch: (B, T) inputs, targets shifted by one
        with micro.gradient_sync(model, i):
            with micro.autocast(x.device):
                _, batch_loss = model(x, y)  # 1. forward, and 2. the loss
            (batch_loss / micro.n).backward()  # 3. backward: d loss / d every weight
        loss = loss + batch_loss.detach() / micro.n
    grad_norm = clip_gradients(model, grad_clip)  # clip the global gradient norm
    step_unless_nonfinite(optimizer, grad_norm)  # 4. step: update the weights
    return loss, grad_norm


def clip_gradients(model: torch.nn.Module, max_norm: float) -> torch.Tensor:
    """Rescale all gradients so their global L2 norm is at most max_norm (0 = no clipping);
    return the norm before clipping, as a tensor (no host sync)."""
    if max_norm > 0:
        return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    return torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])


def step_unless_nonfinite(optimizer: torch.optim.Optimizer, grad_norm: torch.Tensor) -> None:
    """optimizer.step(), unless the gradient norm is NaN or inf: such a batch changes nothing,
    weights and optimizer state alike.

    A fused AdamW takes that decision on the device, from the `found_inf` flag it shares with
    torch.amp's GradScaler (its step then leaves everything as it was), so it never waits for
    the device; any other optimizer looks at the norm on the host."""
    if optimizer.defaults.get("fused") and isinstance(optimizer, torch.optim.Adam):
        optimizer.found_inf = (~torch.isfinite(grad_norm)).float()
        optimizer.step()
    elif torch.isfinite(grad_norm):
        optimizer.step()


def timed_steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches, steps: int,
                grad_clip: float = 1.0, micro: MicroSteps | None = None) -> list[float]:
    """The seconds of each of `steps` training steps, after one more to warm up (it picks
    kernels and allocates), each waited for to the end."""
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        loss, _ = train_step(model, optimizer, batches, grad_clip, micro)
        loss.item()  # wait for the device
        if i:
            times.append(time.perf_counter() - start)
    return times
