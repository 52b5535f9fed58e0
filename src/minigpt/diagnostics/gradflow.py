"""Gradient-flow health: per-parameter gradient statistics, flags for dead, vanishing, exploding
and non-finite gradients, per-layer gradient norms, a terminal table and a plot over training.

It is a probe, not a per-step cost: `grad_stats` waits for the device once per call, so call it
every N steps. In a training loop (or from the optimizer's step pre/post hooks):

    grads = gradients(model)            # after backward, before clipping
    clip_gradients(model, 1.0)
    before = snapshot(model)            # the weights before the step
    optimizer.step()
    stats = grad_stats(model, before, grads)  # the gradients backward gave, and |dw| / |w|
    history.append({"step": step, "layers": layer_norms(stats)})
    ...
    plot_layer_norms(history, "gradflow.png")

Measure the gradients before clipping, as above: clipping scales every gradient down until the
global norm is the clip norm (1 by default), and then no parameter could ever be flagged
exploding. Without `grads`, `grad_stats` reads whatever is in `param.grad`.

Flags, on a parameter's gradient L2 norm (`grad_norm`); at most one per parameter:
    nonfinite   any NaN or inf element (checked first: then the norm means nothing), of the
                gradient or of the weights after the step (a learning rate that blew them up)
    dead        every element exactly zero, or no gradient at all (`grad` is None after a
                backward: the parameter is not on the loss's path); frozen parameters
                (requires_grad False) are left out of the statistics altogether
    vanishing   0 < norm < vanish (default VANISH = 1e-7)
    exploding   norm > explode (default EXPLODE = 100)

Why these defaults: for the lesson's model (vocab 65, 64 wide, 4 layers, batch 16 x 128, AdamW
at 1e-3) the per-parameter gradient norms measured between about 5e-6 (a late layer's query
bias at initialisation) and 1.5 (lm_head at initialisation), and the global norm the loop clips
stays near 1. VANISH is fifty times below the smallest healthy norm: with SGD such a gradient
moves nothing, and Adam, which divides by the gradient's size, would be stepping on noise.
EXPLODE is a hundred times the usual clip threshold.

Exempt (EXEMPT, by name suffix): an attention layer's key bias `attn.Wk.bias`. Its gradient is
zero in exact arithmetic, because adding the same vector to every key adds a constant to each
row of scores, which softmax ignores; in float32 it is rounding noise (1e-12 to 1e-9 measured).
It is never flagged dead or vanishing (it would be at every probe, for every layer); it is still
flagged nonfinite or exploding. Pass exempt=() to see it flagged.
"""

from __future__ import annotations

import copy
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from minigpt.diagnostics.plots import new_figure, save_png
from minigpt.errors import MiniGPTError
from minigpt.optim import set_lr
from minigpt.step import MicroSteps, clip_gradients

VANISH = 1e-7
EXPLODE = 1e2
EXEMPT = ("attn.Wk.bias",)  # gradient zero by symmetry: never dead or vanishing
FLAGS = ("nonfinite", "dead", "vanishing", "exploding")


@dataclass
class ParamStats:
    """One parameter's gradient health; `flags` holds at most one of FLAGS."""

    name: str
    shape: tuple[int, ...]
    grad_mean_abs: float  # mean of |g|
    grad_std: float  # population standard deviation of g (correction 0)
    grad_norm: float  # ||g||, the L2 norm of the whole gradient
    weight_norm: float  # ||w|| of the weights now (after the step, if one was taken)
    update_ratio: float | None = None  # ||w - w_before|| / ||w_before||; None if not measured
    flags: list[str] = field(default_factory=list)


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every trainable weight, by name: take it just before `optimizer.step()`."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every trainable parameter's gradient, by name (none: no gradient)."""
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()
            if p.requires_grad and p.grad is not None}


def grad_stats(model: torch.nn.Module, before: dict[str, torch.Tensor] | None = None,
               grads: dict[str, torch.Tensor] | None = None, vanish: float = VANISH,
               explode: float = EXPLODE, exempt: tuple[str, ...] = EXEMPT) -> list[ParamStats]:
    """Gradient statistics and flags of every trainable parameter, in `named_parameters` order,
    of `grads` (`gradients` copied before clipping, by name) or else of each `param.grad`.
    With `before` (a `snapshot` from just before the optimizer step) each parameter also gets
    its update-to-weight ratio ||w_after - w_before|| / ||w_before||. The measured change already
    includes the learning rate (for plain SGD it is exactly lr * ||g|| / ||w||), so it is the
    lesson's lr * |update| / |weight|; around 1e-3 is the usual healthy value. It is None for
    a weight that was all zeros before the step (a fresh LayerNorm bias), where it is undefined.
    Parameters whose name ends with one of `exempt` are never flagged dead or vanishing."""
    if not 0 <= vanish < explode:
        raise MiniGPTError(f"need 0 <= vanish < explode, got vanish {vanish:g}, "
                           f"explode {explode:g}")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if grads is None:
        grads = {n: p.grad for n, p in named if p.grad is not None}
    if not any(n in grads for n, _ in named):
        raise MiniGPTError("no gradients to read: call loss.backward() before grad_stats")
    before = before or {}
    for n, p in named:
        if n in before and before[n].shape != p.shape:
            raise MiniGPTError(f"snapshot does not fit the model: {n} is {tuple(p.shape)}, "
                               f"the snapshot's {tuple(before[n].shape)}")
    device = named[0][1].device
    rows = torch.stack([_measure(p, grads.get(n), before.get(n)).to(device) for n, p in named])
    values = rows.tolist()  # (P, 8) on the host: the one device sync of the call
    return [_param_stats(n, p, v, vanish, explode, n.endswith(exempt))
            for (n, p), v in zip(named, values, strict=True)]


@torch.no_grad()
def _measure(p: torch.Tensor, grad: torch.Tensor | None,
             w_before: torch.Tensor | None) -> torch.Tensor:
    """(8,) mean|g|, std g, ||g||, ||w||, all-zero, g and w all finite, ||w - w_before||,
    ||w_before||; the last two are NaN without a snapshot."""
    w = p.detach().float()
    g = torch.zeros_like(w) if grad is None else grad.detach().float()  # None: dead
    if w_before is None:
        dw = [torch.full((), math.nan, device=p.device)] * 2
    else:
        w0 = w_before.detach().float().to(p.device)
        dw = [norm(w - w0), norm(w0)]
    return torch.stack([g.abs().mean(), g.std(correction=0), norm(g), norm(w),
                        (g == 0).all().float(),
                        (torch.isfinite(g).all() & torch.isfinite(w).all()).float(), *dw])


def norm(t: torch.Tensor) -> torch.Tensor:
    """The L2 norm of t, in t's float32 without overflowing: a plain float32 norm squares the
    elements, so a gradient or weights of 1e20 (a run blowing up) had a norm of inf, finite
    though they and their norm are. Scaled by the largest |element| first; NaN or inf
    elements give the plain norm (inf, NaN), which the nonfinite flag then explains."""
    top = t.abs().amax() if t.numel() else torch.zeros((), device=t.device)
    scaled = torch.linalg.vector_norm(t / top.clamp_min(torch.finfo(t.dtype).tiny)) * top
    return torch.where(torch.isfinite(top), scaled, torch.linalg.vector_norm(t))


def _param_stats(name: str, p: torch.Tensor, v: list[float], vanish: float, explode: float,
                 exempt: bool) -> ParamStats:
    """At most one flag, the first that applies: nonfinite, dead, vanishing, exploding."""
    mean_abs, std, norm, w_norm, all_zero, finite, d_norm, b_norm = v
    ratio = d_norm / b_norm if b_norm > 0 else None  # NaN without a snapshot: None
    if finite != 1:  # (an element of the gradient, or of the weights the step left)
        flags = ["nonfinite"]
    elif all_zero == 1 and not exempt:
        flags = ["dead"]
    elif norm < vanish and not exempt:
        flags = ["vanishing"]
    else:
        flags = ["exploding"] if norm > explode else []
    return ParamStats(name, tuple(p.shape), mean_abs, std, norm, w_norm, ratio, flags)


def layer_of(name: str) -> str:
    """The layer group a parameter belongs to: 'blocks.2.attn.Wq.weight' -> 'blocks.2',
    'ln_f.weight' -> 'ln_f', 'token_emb.weight' -> 'token_emb'."""
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] == "blocks" and len(parts) > 2 else parts[0]


def layer_norms(stats: list[ParamStats]) -> dict[str, float]:
    """Gradient L2 norm of each layer group (sqrt of the sum of its members' squared norms), in
    model order: token_emb, pos_emb, blocks.0, ..., ln_f, lm_head."""
    squares = defaultdict(float)
    for s in stats:
        squares[layer_of(s.name)] += s.grad_norm ** 2
    return {layer: math.sqrt(total) for layer, total in squares.items()}


def format_table(stats: list[ParamStats]) -> str:
    """An aligned text table, one parameter a line, with a FLAGS column and a summary line."""
    header = ["PARAMETER", "SHAPE", "MEAN|G|", "STD(G)", "NORM(G)", "NORM(W)", "UPDATE/W", "FLAGS"]
    rows = [[s.name, "x".join(map(str, s.shape)) or "scalar", _sci(s.grad_mean_abs),
             _sci(s.grad_std), _sci(s.grad_norm), _sci(s.weight_norm), _sci(s.update_ratio),
             ",".join(s.flags) or "-"] for s in stats]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [_line(header, widths), _line(["-" * w for w in widths], widths)]
    lines += [_line(r, widths) for r in rows]
    lines.append(summary_line(stats))
    return "\n".join(lines)


def _sci(value: float | None) -> str:
    """A table cell, 1.23e-04 ('-' for none); unlike autograd._num, which writes 7 or 0.5."""
    return "-" if value is None else f"{value:.2e}"


def _line(cells: list[str], widths: list[int]) -> str:
    """Name and shape left-aligned, numbers right-aligned, flags left-aligned."""
    out = [c.ljust(w) if i < 2 else c.rjust(w)
           for i, (c, w) in enumerate(zip(cells[:-1], widths[:-1], strict=True))]
    return "  ".join([*out, cells[-1]]).rstrip()


def summary_line(stats: list[ParamStats]) -> str:
    """'3 of 42 parameters flagged: 2 dead, 1 vanishing' or '42 parameters, none flagged'."""
    counts = {f: sum(f in s.flags for s in stats) for f in FLAGS}
    flagged = sum(bool(s.flags) for s in stats)
    if not flagged:
        return f"{len(stats)} parameters, none flagged"
    parts = ", ".join(f"{n} {f}" for f, n in counts.items() if n)
    return f"{flagged} of {len(stats)} parameters flagged: {parts}"


def probe_batch_stats(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                      optimizer: torch.optim.Optimizer | None = None, lr: float | None = None,
                      grad_clip: float = 0.0, dtype: torch.dtype = torch.float32
                      ) -> list[ParamStats]:
    """Forward (under autocast to `dtype`, as the run's step) and backward on one batch (in
    training mode), and the gradient statistics.
    Everything happens on a deep copy: the caller's model (weights, gradients, mode) and
    optimizer (state, learning rate) are untouched. With an optimizer (holding this model's
    parameters, e.g. restored from a checkpoint) the copy takes one step, at `lr` if given,
    after clipping to `grad_clip` (0 = none) as the training loop does, so the statistics
    include the update-to-weight ratio; the gradients measured are those before clipping."""
    if optimizer is not None:
        own = {id(p) for p in model.parameters()}
        if not all(id(p) in own for g in optimizer.param_groups for p in g["params"]):
            raise MiniGPTError("the optimizer does not hold this model's parameters (was the "
                               "model made again after it? make the optimizer for this model)")
    work, opt = copy.deepcopy((model, optimizer))  # one memo: opt refers to work's parameters
    work.train()
    work.zero_grad(set_to_none=True)
    with MicroSteps(dtype=dtype).autocast(x.device):
        _, loss = work(x, y)
    loss.backward()
    grads = gradients(work)
    clip_gradients(work, grad_clip)  # as the training loop clips (0: not at all)
    before = None
    if opt is not None:
        if lr is not None:
            set_lr(opt, lr)
        before = snapshot(work)
        opt.step()
    return grad_stats(work, before, grads)


def plot_layer_norms(history: list[dict], path: str | Path | None = None, title: str | None = None):
    """Each layer's gradient norm against step (log y), from rows {"step": int, "layers":
    {layer: norm}} (extra keys ignored): the Figure, written to `path` as a PNG if given.
    Zero and non-finite norms cannot sit on a log axis: they are left out of the line and the
    legend says at how many steps (a dead layer shows as a missing line with that note)."""
    if not history:
        raise MiniGPTError("no gradient-flow rows to plot")
    from matplotlib import colormaps

    layers = list(dict.fromkeys(name for row in history for name in row["layers"]))
    blocks = [name for name in layers if name.startswith("blocks.")]
    others = iter(["#d62728", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f", "#17becf"] * 8)
    fig = new_figure(9.0, 5.0, layout="constrained")
    ax = fig.add_subplot()
    any_positive = False
    for layer in layers:
        # blocks along a viridis ramp (input to output), the other layers in fixed colours, dashed
        if layer in blocks:
            ramp = 0.9 * blocks.index(layer) / max(len(blocks) - 1, 1)
            style = {"color": colormaps["viridis"](ramp), "ls": "-"}
        else:
            style = {"color": next(others), "ls": "--"}
        rows = [row for row in history if layer in row["layers"]]
        norms = [v if math.isfinite(v) and v > 0 else math.nan
                 for v in (float(row["layers"][layer]) for row in rows)]
        hidden = sum(map(math.isnan, norms))
        any_positive |= hidden < len(norms)
        label = layer + (f" (zero or non-finite at {hidden} steps)" if hidden else "")
        ax.plot([row["step"] for row in rows], norms, label=label, ms=3, lw=1.4,
                marker="o" if len(history) <= 30 else None, **style)
    if any_positive:
        ax.set_yscale("log")
    ax.set(xlabel="step", ylabel="gradient L2 norm of the layer",
           title=title or "gradient flow: gradient norm per layer")
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.1)
    fig.legend(loc="outside right upper", fontsize=8)
    return save_png(fig, path)
