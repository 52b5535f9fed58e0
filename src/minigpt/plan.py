"""Sizing a run to a budget (`minigpt plan`): the model shapes a budget of tokens or of time
allows, each with its parameters, its peak memory (minigpt.performance's estimate) and its
training step timed here, then tokens/s and how long the budget takes.

    minigpt plan --tokens 1e9 --vocab-size 4096 --block-size 256
    minigpt plan --time-budget 8h --preset fast

Compute-optimal, after Hoffmann et al. (2022): about 20 training tokens per parameter. For a
token budget that names the shape nearest tokens / 20 parameters; for a time budget, the
shape whose measured speed gets through about 20 tokens per parameter in that time. Every
shape keeps the run's recipe (preset, file and flags: optimizer, dtype, batch, block size)
and changes only its depth, width and heads.

A step is timed on the machine that runs the plan (after one to warm up), on random tokens,
with the run's optimizer and dtype. A shape whose step would take longer than `max_step_s`
by its FLOP count, or whose peak memory would not fit in what the machine has available, is
not run: its time is its FLOP count at the seconds per FLOP of the largest shape that was,
and is marked as an estimate; one too big for memory is marked so, and never recommended.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from minigpt import performance, precision
from minigpt.config import RunConfig
from minigpt.data import cache_dir
from minigpt.errors import MiniGPTError
from minigpt.model import MiniGPT, count_params
from minigpt.optim import make_optimizer
from minigpt.schedule import batch_shape
from minigpt.step import MicroSteps, timed_steps

TOKENS_PER_PARAM = 20  # Hoffmann et al. 2022: compute-optimal training tokens per parameter
LADDER = [(2, 64), (4, 64), (4, 128), (6, 192), (6, 256), (8, 384), (12, 512), (12, 768)]


@dataclass(frozen=True)
class Shape:
    """One model shape and what it costs here: `measured` is False where `step_s` is the
    FLOP count at another shape's MFU."""

    n_layer: int
    n_embd: int
    n_head: int
    params: int
    memory_bytes: int
    step_s: float
    measured: bool
    tokens_per_step: int
    fits: bool = True  # its peak memory within what the machine has available

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_per_step / self.step_s


class RandomBatches:
    """What train_step draws from: (B, T) random token ids and the same as targets."""

    def __init__(self, vocab_size: int, batch_size: int, block_size: int):
        self.shape, self.vocab_size = (batch_size, block_size), vocab_size
        self.generator = torch.Generator().manual_seed(0)

    def get_batch(self, split: str, micro: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randint(self.vocab_size, self.shape, generator=self.generator)
        return x, x


def shaped(cfg: RunConfig, n_layer: int, n_embd: int) -> RunConfig:
    """The run with its model's depth and width changed: heads of 64 (at least 4 heads), value
    embeddings only where the model has enough blocks for them."""
    model = replace(cfg.model, n_layer=n_layer, n_embd=n_embd, n_head=max(4, n_embd // 64),
                    value_embeds=min(cfg.model.value_embeds, n_layer))
    return replace(cfg, model=model)


def time_step(cfg: RunConfig, steps: int = 2) -> tuple[float, torch.dtype]:
    """The fastest of `steps` training steps of this shape (after one to warm up), and the
    dtype it ran in (the run's --dtype; auto probes as training does, with its cache)."""
    torch.manual_seed(cfg.train.seed)
    model = MiniGPT.from_config(cfg.model)
    dtype, _ = precision.choose_dtype(cfg.train.dtype, torch.device("cpu"), model,
                                      cfg.train.batch_size, cache_dir() / "precision.json",
                                      batch_shape(cfg.train, cfg.model.block_size, 0, 0.0))
    optimizer = make_optimizer(model, cfg.train)
    batches = RandomBatches(cfg.model.vocab_size, cfg.train.batch_size, cfg.model.block_size)
    micro = MicroSteps(cfg.train.grad_accum, dtype)
    return min(timed_steps(model, optimizer, batches, steps, cfg.train.grad_clip, micro)), dtype


MAX_STEP_S = 2.0  # the longest step plan times: a larger shape's is estimated from it


def resident(cfg: RunConfig) -> int:
    """The bytes this process holds once it has counted a model's parameters, as a training
    process has before its first step (build_run's check_model_fits): counting them on the meta
    device imports torch._dynamo (torch's initialisers run as its reference decompositions
    there), about 150 MB resident with torch 2.13. Read before that, the smaller shapes' peak
    memory came out a third below their runs'."""
    import psutil

    count_params(shaped(cfg, *LADDER[0]).model)  # (on the meta device: its imports, no weights)
    return psutil.Process().memory_info().rss


def plan(cfg: RunConfig, resident: int = 0, max_step_s: float = MAX_STEP_S) -> list[Shape]:
    """Every shape of the LADDER under the run's recipe, small to large, each timed here
    unless the seconds per FLOP of the largest shape timed so far put its step above
    `max_step_s`, or its peak memory (in the dtype of the last shape timed) is more than the
    machine has available."""
    tokens_per_step = cfg.train.batch_size * cfg.train.grad_accum * cfg.model.block_size
    shapes, seconds_per_flop, dtype = [], None, torch.float32
    for n_layer, n_embd in LADDER:
        c = shaped(cfg, n_layer, n_embd)
        params = count_params(c.model)
        flops = performance.train_flops_per_token(c.model) * tokens_per_step
        fits = performance.fits_in_memory(c, torch.device("cpu"), params, dtype)
        if not fits and seconds_per_flop is None:
            raise MiniGPTError(f"not even the smallest shape, {n_layer} x {n_embd}, fits in "
                               f"memory at batch {cfg.train.batch_size} x block "
                               f"{cfg.model.block_size}: lower --batch-size or --block-size")
        measured = fits and (seconds_per_flop is None or flops * seconds_per_flop <= max_step_s)
        if measured:
            step_s, dtype = time_step(c)
            seconds_per_flop = step_s / flops
        else:  # the dtype of the last shape timed
            step_s = flops * seconds_per_flop
        memory = sum(performance.peak_memory(c, resident, params, dtype).values())
        shapes.append(Shape(n_layer, n_embd, c.model.n_head, params, memory, step_s, measured,
                            tokens_per_step, fits))
    return shapes


def in_budget(s: Shape, seconds: float) -> int:
    """The tokens of the whole steps a shape takes in `seconds` (a step cut short trains on
    nothing)."""
    return int(seconds // s.step_s) * s.tokens_per_step


def trained_on(s: Shape, tokens: float = 0, seconds: float = 0) -> float:
    """The tokens a shape trains on: those asked for, or those it gets through in `seconds`,
    whichever is fewer."""
    if not (tokens or seconds):
        raise MiniGPTError("a plan needs a budget: tokens, seconds or both")
    return min([tokens] * bool(tokens) + [in_budget(s, seconds)] * bool(seconds))


def optimal(shapes: list[Shape], tokens: float = 0, seconds: float = 0) -> Shape | None:
    """The compute-optimal shape: the one whose tokens per parameter are nearest 20, by ratio,
    of those that fit in memory and take a step at all (None: not one does)."""
    return min((s for s in shapes if s.fits and trained_on(s, tokens, seconds) > 0),
               default=None,
               key=lambda s: abs(math.log(trained_on(s, tokens, seconds) / s.params
                                          / TOKENS_PER_PARAM)))


def format_duration(seconds: float) -> str:
    """3 s, 4.2 min, 3.1 h, 12.5 days."""
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:,.1f} {unit}"
    return f"{seconds:.0f} s"


def format_plan(shapes: list[Shape], tokens: float = 0, seconds: float = 0) -> str:
    """The table: one line a shape, the compute-optimal one marked, estimates marked ~."""
    best = optimal(shapes, tokens, seconds)
    head = f"{'shape':<13} {'params':>11} {'peak memory':>11} {'step':>10} {'tokens/s':>10}"
    head += f" {'ETA':>12}" if tokens else ""
    head += f" {'tokens in budget':>16}" if seconds else ""
    head += f" {'tokens/param':>12}"
    lines = [head, "-" * len(head)]
    for s in shapes:
        mark = "" if s.measured else "~"
        ms = round(s.step_s * 1e3)  # (99,999.6 ms reads 100,000: minutes from there on)
        step = f"{ms:,} ms" if ms < 100_000 else format_duration(s.step_s)
        line = (f"{s.n_layer:>2} x {s.n_embd:<4} {s.n_head:>2}h {s.params:>11,} "
                f"{s.memory_bytes / 2**30:>7.2f} GiB {mark + step:>10} "
                f"{mark + f'{s.tokens_per_s:,.0f}':>10}")
        line += f" {mark + format_duration(tokens / s.tokens_per_s):>12}" if tokens else ""
        line += f" {mark + f'{in_budget(s, seconds):,}':>16}" if seconds else ""
        line += f" {trained_on(s, tokens, seconds) / s.params:>12,.1f}"
        line += "  <- compute-optimal" if s is best else ""
        line += "  too big for this machine's memory" if not s.fits else ""
        lines.append(line)
    if best is None and any(s.fits for s in shapes):
        lines.append(f"not one step of any shape fits in {seconds:g} s: give a "
                     f"longer --time-budget")
    lines.append(f"~ an estimate: the FLOP count at the speed of the largest shape timed here. "
                 f"compute-optimal: nearest {TOKENS_PER_PARAM} tokens per parameter "
                 f"(Hoffmann et al. 2022).")
    return "\n".join(lines)
