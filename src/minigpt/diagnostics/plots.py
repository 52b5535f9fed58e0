"""Curves from a run's metrics.jsonl: loss.png (train and validation loss against step, with
what minigpt.diagnostics.reading found drawn on it) and lr.png (the learning rate the schedule
gave each step), and the overlay used by `compare`.

Every plotting function in minigpt.diagnostics returns its matplotlib Figure (a notebook shows
it inline) and, given a path, also writes it there as a PNG, atomically. matplotlib is imported
inside the functions, and figures are drawn on their own Agg canvas (no pyplot, no global
backend), so importing this module is free and nothing leaks.
"""

from __future__ import annotations

import math
from pathlib import Path

from minigpt.config import SECTIONS, RunConfig, TrainConfig, apply_overrides, read_config_file
from minigpt.diagnostics.reading import Finding, finite, read_curve, run_facts, train_points
from minigpt.errors import MiniGPTError
from minigpt.files import atomic_path, printable, read_jsonl
from minigpt.schedule import schedule_lr


def new_figure(width: float, height: float, dpi: int = 110, **kw):
    """A matplotlib Figure on its own Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi, **kw)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, path: str | Path | None):
    """The figure, written as a PNG (atomically) if a path is given."""
    if path is not None:
        with atomic_path(Path(path)) as tmp:
            fig.savefig(tmp, format="png")
    return fig


def _axes(width: float = 7.0, height: float = 4.0):
    fig = new_figure(width, height, layout="tight")
    ax = fig.subplots()
    ax.grid(True, alpha=0.3)
    return fig, ax


def _loss_lines(ax, rows: list[dict], x: str, train: dict, val: dict) -> None:
    """Train loss (every row that has one, drawn with `train`) and validation loss (every
    evaluation, dots joined, drawn with `val`) against the rows' `x`."""
    trains = [r for r in rows if "train_loss" in r]  # (one's own loop may log validation alone)
    ax.plot([r[x] for r in trains], [r["train_loss"] for r in trains], **train)
    evals = [r for r in rows if "val_loss" in r]
    ax.plot([r[x] for r in evals], [r["val_loss"] for r in evals], "o-", ms=3, **val)


def plot_loss(rows: list[dict], path: str | Path | None = None, log_scale: bool = False,
              title: str | None = None, findings: list[Finding] = ()):
    """Train loss (every logged step) and validation loss (every evaluation) against step,
    with the findings of reading the curve (minigpt.diagnostics.reading) drawn on it."""
    fig, ax = _axes()
    _loss_lines(ax, rows, "step", {"label": "train", "lw": 1, "alpha": 0.8},
                {"label": "validation"})
    annotate(ax, rows, findings)
    ax.set(xlabel="step", ylabel="cross-entropy loss (nats)", title=title or "loss")
    if log_scale:
        ax.set_yscale("log")
    ax.legend(fontsize="small", loc="upper right")
    return save_png(fig, path)


def annotate(ax, rows: list[dict], findings: list[Finding]) -> None:
    """Each finding drawn where it is: lines at single steps, bands over spans, markers on
    the points (spikes, the best evaluation), ticks along the bottom (clipped, skipped)."""
    train = dict(train_points(rows))
    bottom = ax.get_xaxis_transform()  # x in steps, y in axes fractions
    for f in findings:
        if f.kind in ("start", "initial loss"):
            ax.axhline(f.value, ls="--", lw=0.8, color="0.5", label=f"ln V = {f.value:.2f}")
        if f.kind == "initial loss":
            ax.plot([0], [train[0]], "o", color="C3", label="step 0, far from ln V")
        elif f.kind == "warmup":
            ax.axvline(f.step, ls=":", lw=1, color="0.4", label="warmup ends")
        elif f.kind in ("all warmup", "slow warmup", "warmup unfinished"):
            ax.axvspan(0, f.step, color="C1", alpha=0.08, label=f.kind)
        elif f.kind == "best":
            ax.plot([f.step], [f.value], "*", ms=12, color="C2", label="best checkpoint")
        elif f.kind in ("early stop", "early stop, none finite"):
            ax.axvline(f.step, ls="--", lw=1, color="C3", label="early stop")
        elif f.kind in ("clipped", "clipped mostly"):
            ax.plot(f.steps, [0.02] * len(f.steps), "|", ms=6, color="C4", transform=bottom,
                    label="clipped")
        elif f.kind in ("skipped", "skipped, stopped"):
            ax.plot(f.steps, [0.05] * len(f.steps), "v", color="C3", transform=bottom,
                    label="skipped (NaN/inf)")
        elif f.kind == "val not finite":
            ax.plot(f.steps, [0.05] * len(f.steps), "o", mfc="none", color="C1",
                    transform=bottom, label="validation NaN/inf")
        elif f.kind in ("spikes in warmup", "spikes"):
            ax.plot(f.steps, [train[s] for s in f.steps], "x", ms=8, mew=2, color="C3",
                    label="spike" + (" in warmup" if f.kind == "spikes in warmup" else ""))
        elif f.kind == "overfitting":
            ax.axvspan(f.step, f.end, color="C3", alpha=0.08,
                       label="validation stops following train")
        elif f.kind.startswith("plateau"):
            ax.axvspan(f.step, f.end, color="0.5", alpha=0.12,
                       label={"plateau": "plateau", "plateau, unigram": "plateau: unigram "
                              "level", "plateau, untrained": "plateau: untrained",
                              "plateau, uniform": "plateau: untrained"}.get(
                           f.kind, "flat as the rate decays"))
        elif f.kind == "rising":
            ax.axvspan(f.step, f.end, color="C3", alpha=0.12, label="loss rising")
        elif f.kind == "blew up":
            ax.axvspan(f.step, f.end, color="C3", alpha=0.2, label="above ln V: blew up")
        elif f.kind.startswith("shape"):
            ax.axvspan(0, f.step, color="C3" if f.kind == "shape, blew up" else "C2",
                       alpha=0.06, label="first tenth of the run")


def plot_lr(rows: list[dict], path: str | Path | None = None, train: TrainConfig | None = None):
    """The learning rate against step: each logged row's (dots) and, given the run's settings
    (`train`), the schedule's rate at every step between them (a row every log_every steps
    would cut a short warmup's corner), a time-budget run's seconds interpolated from the rows.
    Rows the settings do not give (a resume changed them) are drawn alone, joined."""
    import numpy

    fig, ax = _axes(7.0, 3.0)
    rows = [r for r in rows if "lr" in r]  # (one's own loop may log no rate)
    steps, lrs = [r["step"] for r in rows], [r["lr"] for r in rows]
    if train is None or not rows or not follows(train, rows):  # (a resume changed the
        ax.plot(steps, lrs, lw=1.5)  # settings: the rows alone say what each part had)
    else:
        first, last = steps[0], steps[-1]
        every = sorted({*range(first, last + 1, max(1, (last - first) // 5000)), *steps,
                        *range(first, min(last, train.warmup_steps) + 1)})  # all of the warmup
        seconds = numpy.interp(every, steps, [r["time_s"] for r in rows])
        ax.plot(every, [schedule_lr(train, s, t) for s, t in zip(every, seconds, strict=True)],
                lw=1.5, label="the schedule")
        ax.plot(steps, lrs, ".", ms=4, color="C1", label="logged")
        ax.legend(fontsize="small")
    ax.set(xlabel="step", ylabel="learning rate", title="learning-rate schedule")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    return save_png(fig, path)


def follows(train: TrainConfig, rows: list[dict]) -> bool:
    """Whether every row's rate is the schedule's under these settings: a rate is taken as its
    step begins, a row's seconds read as it ends, so under a time budget it lies between the
    schedule at the last row's seconds and at its own. (Rows without seconds, one's own loop's:
    not known to.)"""
    if any("time_s" not in r for r in rows):
        return False
    slack = 0.01 * max(max(r["lr"] for r in rows), 1e-12)
    for r, before in zip(rows, [0.0, *(r["time_s"] for r in rows)], strict=False):
        rates = [schedule_lr(train, r["step"], t) for t in (before, r["time_s"])]
        if not min(rates) - slack <= r["lr"] <= max(rates) + slack:
            return False
    return True


def run_train_config(run_dir: Path) -> TrainConfig | None:
    """The training settings of the run in run_dir, from its config.json (None: unreadable)."""
    cfg = RunConfig.with_sections(SECTIONS)
    try:
        apply_overrides(cfg, {"train": read_config_file(run_dir / "config.json")["train"]})
    except (KeyError, MiniGPTError):
        return None
    return cfg.train


def run_curves(run_dir: Path, rows: list[dict], findings: list[Finding],
               log_scale: bool = False) -> dict:
    """The loss figure (with `findings`, the reading of the curve) and the learning-rate
    figure of the run in run_dir, from its metrics `rows` and its config.json, by the file
    names they take."""
    return {"loss.png": plot_loss(rows, None, log_scale, title=f"loss: {printable(run_dir.name)}",
                                  findings=findings),
            "lr.png": plot_lr(rows, None, run_train_config(run_dir))}


def plot_run_curves(run_dir: str | Path, log_scale: bool = False) -> None:
    """loss.png and lr.png in the run folder, from its metrics.jsonl and config.json."""
    run_dir = Path(run_dir)
    if rows := read_jsonl(run_dir / "metrics.jsonl"):
        findings = read_curve(rows, run_facts(run_dir))
        for name, fig in run_curves(run_dir, rows, findings, log_scale).items():
            save_png(fig, run_dir / name)


def finite_losses(rows: list[dict]) -> list[float]:
    """The training and validation losses of a run's rows, NaN, inf and null left out."""
    return [r[k] for r in rows for k in ("train_loss", "val_loss") if finite(r.get(k))]


def overlay_top(curves: dict[str, list[dict]]) -> float | None:
    """The top of the overlay's loss axis: half as much again as the highest first training
    loss (step 0's, before any step: near ln V, where the variants start), so that a variant
    that diverged (to 1e12, its losses finite) does not flatten the others into a line at 0;
    None without such a loss."""
    firsts = [next((r["train_loss"] for r in rows if finite(r.get("train_loss"))), None)
              for rows in curves.values()]
    return 1.5 * max(firsts) if None not in firsts and firsts else None


def plot_overlay(curves: dict[str, list[dict]], path: str | Path | None = None, title: str = "",
                 per_byte: bool = False):
    """Validation loss (solid) and train loss (faint) of several runs, against steps (left)
    and against seconds of training (right); per_byte: their validation bits per byte alone
    (runs with different tokenizers, whose losses per token do not compare)."""
    fig = new_figure(12.0, 4.5, layout="tight")
    by_step, by_time = fig.subplots(1, 2, sharey=True)
    top = None if per_byte else overlay_top(curves)
    for ax, x, label in ((by_step, "step", "step"), (by_time, "time_s", "seconds of training")):
        for i, (name, rows) in enumerate(curves.items()):
            high = max(finite_losses(rows), default=-math.inf)
            off = f", off the scale: up to {high:.3g}" * (top is not None and high > top)
            val = {"color": f"C{i}", "label": f"{name} (val{off})"}
            if per_byte:
                evals = [r for r in rows if "val_bpb" in r]
                ax.plot([r[x] for r in evals], [r["val_bpb"] for r in evals], "o-", ms=3, **val)
            else:
                _loss_lines(ax, rows, x, {"color": f"C{i}", "lw": 0.8, "alpha": 0.35}, val)
        ax.set_xlabel(label)
        ax.grid(True, alpha=0.3)
    by_step.set_ylabel("validation bits per byte" if per_byte else "loss (nats); faint: train")
    if top is not None and by_step.get_ylim()[1] > top:  # (the limits shared with by_time)
        low = min(v for rows in curves.values() for v in finite_losses(rows))
        by_step.set_ylim(low - 0.05 * (top - low), top)
    by_step.legend()
    fig.suptitle(title)
    return save_png(fig, path)
