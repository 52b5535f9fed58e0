"""The lesson's "drag the sliders to feel the trade": what a batch of B rows of T tokens means
for one training step, computed from the model and the data rather than typed in.

    trade = batch_trade(model, splits, B=32, T=128)   # the shape, B*T, memory, time here
    print(format_trade(trade))
    batch_sliders(model, splits)                      # ipywidgets sliders for B and T

For each shape: the batch's x and y (B, T); the B*T supervised next-token predictions one
step averages its loss over; the activation memory backward keeps (minigpt.performance's
estimate); and the seconds one step of that shape takes on this machine, measured on a copy
of the model (the model itself is not touched).
"""

from __future__ import annotations

import copy
import numbers
import statistics
from dataclasses import dataclass, replace

from minigpt.config import RunConfig, TrainConfig
from minigpt.data import Batches, Splits
from minigpt.errors import MiniGPTError
from minigpt.model import MiniGPT
from minigpt.optim import make_optimizer
from minigpt.performance import peak_memory
from minigpt.step import timed_steps


@dataclass(frozen=True)
class Trade:
    """One batch shape and what it costs: `step_s` is None when it was not measured."""

    batch_size: int
    block_size: int
    x_shape: tuple[int, int]
    predictions: int  # B * T next-token targets, every one supervised
    activation_bytes: int
    step_s: float | None


def activation_bytes(model: MiniGPT, B: int, T: int, train: TrainConfig) -> int:
    """The activations backward keeps for a (B, T) batch (minigpt.performance.peak_memory)."""
    cfg = RunConfig(model=replace(model.config, block_size=T), train=replace(train, batch_size=B))
    return peak_memory(cfg, 0, model.num_params())["activations"]


def step_seconds(model: MiniGPT, splits: Splits, B: int, T: int, train: TrainConfig,
                 steps: int = 3) -> float:
    """The median seconds of `steps` training steps on (B, T) batches, after one to warm up,
    on a copy of the model with its own optimizer."""
    twin = copy.deepcopy(model).train()
    optimizer = make_optimizer(twin, train)
    batches = Batches(splits, B, T, seed=0)
    return statistics.median(timed_steps(twin, optimizer, batches, steps, train.grad_clip))


def batch_trade(model: MiniGPT, splits: Splits, B: int, T: int, measure: bool = True) -> Trade:
    """What a (B, T) batch means for one step of this model on this data."""
    train = TrainConfig()  # the default settings: AdamW, the gradient clipped at 1
    x, _ = Batches(splits, B, T, seed=0).get_batch("train")
    seconds = step_seconds(model, splits, B, T, train) if measure else None
    return Trade(B, T, tuple(x.shape), x.numel(), activation_bytes(model, B, T, train), seconds)


def format_trade(t: Trade) -> str:
    """One line: shape, predictions per step, activation memory, step time and throughput."""
    line = (f"B={t.batch_size:<4} T={t.block_size:<4} x, y: {t.x_shape}  {t.predictions:>7,} "
            f"predictions per step  activations {t.activation_bytes / 2**20:6.1f} MiB")
    if t.step_s is not None:
        line += (f"  one step {t.step_s * 1000:6.1f} ms here "
                 f"({t.predictions / t.step_s:,.0f} predictions/s)")
    return line


def batch_sliders(model: MiniGPT, splits: Splits, max_batch: int = 128):
    """Sliders for B and T (T up to the model's block size); each release prints the
    shape's `format_trade` line, with the step timed then. Needs ipywidgets
    (pip install -e '.[notebook]'); without it, a one-line MiniGPTError says so."""
    if isinstance(max_batch, bool) or not isinstance(max_batch, numbers.Integral) or \
            max_batch < 1:
        raise MiniGPTError(f"max_batch (the B slider's top) must be a whole number >= 1, got "
                           f"{max_batch!r}")
    try:
        import ipywidgets
    except ImportError:
        raise MiniGPTError("the sliders need ipywidgets: pip install 'minigpt-loop[notebook]' "
                           "(in a checkout: pip install -e '.[notebook]'); batch_trade gives the "
                           "same figures for one shape") from None

    b = ipywidgets.IntSlider(32, min=1, max=max_batch, description="B (rows)",
                             continuous_update=False)
    t = ipywidgets.IntSlider(min(128, model.block_size), min=1, max=model.block_size,
                             description="T (tokens)", continuous_update=False)
    return ipywidgets.interactive(
        lambda B, T: print(format_trade(batch_trade(model, splits, B, T))), B=b, T=t)
