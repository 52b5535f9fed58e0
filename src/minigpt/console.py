"""What a run shows a person while it runs: a progress bar, log lines printed above it, and the
speed figures in both (tokens per second, model FLOPs utilisation).

minigpt logs through the "minigpt" logger. `show_logs()` gives it a handler that prints above
the progress bar, unless the program has set up logging of its own, so a script, a notebook and
the command line all see the run without any set-up.
"""

from __future__ import annotations

import logging
import math
import sys
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from minigpt.schedule import grows

if TYPE_CHECKING:  # for the annotations only
    from minigpt.config import TrainConfig
    from minigpt.run import Run

log = logging.getLogger("minigpt")


class _AboveTheBar(logging.Handler):
    """Log lines printed with tqdm.write, so they appear above a progress bar, not through it:
    the run's lines on stdout, warnings on stderr. Once the program sets up logging of its own
    (a root handler), that prints them instead, not both."""

    def emit(self, record: logging.LogRecord) -> None:
        if logging.getLogger().handlers:
            return
        warning = record.levelno >= logging.WARNING
        tqdm.write("warning: " * warning + record.getMessage(),
                   file=sys.stderr if warning else sys.stdout)


def show_logs(level: int = logging.INFO) -> None:
    """Print minigpt's log lines (at `level` and above), unless the "minigpt" logger or the root
    logger already has a handler (the program chose where logs go)."""
    if log.handlers or logging.getLogger().handlers:
        return
    log.addHandler(_AboveTheBar())
    if log.level == logging.NOTSET:  # (a level the program set stays)
        log.setLevel(level)


class Progress:
    """The bar over the run's steps, or over its seconds with a time budget, with the latest
    figures (disabled off a terminal or notebook, or when asked)."""

    def __init__(self, t: TrainConfig, step: int, seconds: float, enabled: bool):
        self.budget = t.time_budget
        total, done, unit = (self.budget, seconds, "s") if self.budget else (t.steps, step, "step")
        self.val = math.nan  # the latest validation loss
        self.bar = tqdm(total=total, initial=round(done, 1), unit=unit, dynamic_ncols=True,
                        leave=False, disable=None if enabled else True,
                        bar_format=None if not self.budget else
                        "{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}{postfix}]")

    def advance(self, step: int, seconds: float) -> None:
        """To `step` steps done, or to `seconds` of training with a time budget."""
        self.bar.update((min(seconds, self.budget) if self.budget else step) - self.bar.n)

    def show(self, row: dict) -> None:
        """A metrics row's figures, on the bar."""
        self.val = row.get("val_loss", self.val)
        self.bar.set_postfix(loss=fmt(row["train_loss"], ".3f"), val=f"{self.val:.3f}",
                             lr=f"{row['lr']:.2e}", tok_s=f"{row['tokens_per_s']:,}",
                             mfu=f"{row['mfu']:.0%}", refresh=False)

    def close(self) -> None:
        self.bar.close()


PEAK_OF = {"float32": "float32", "bfloat16": "the better of float32 and bf16"}


def log_start(run: Run, peak: float) -> None:
    """The run's folder and environment, data and model, in three lines."""
    t, env, data, processes = run.cfg.train, run.env, run.data, run.world.size
    procs = f"{processes} processes x " if processes > 1 else ""
    log.info(f"run folder {run.folder} | torch {env['torch']} on {procs}{env['device']}, "
             f"{count(env['torch_threads'], 'thread')} ({env['cpu_capability']}), {env['dtype']} "
             f"matmuls ({env['dtype_why']})"
             f"{', compiled' if env['compile'] else ''}; matmul peak "
             f"{peak / 1e9:,.0f} GFLOP/s ({PEAK_OF[env['dtype']]}, MFU's denominator)")
    log.info(f"data: {data['text']}: vocab {data['vocab_size']:,}, "
             f"{data['train_tokens']:,} train and {data['val_tokens']:,} val tokens")
    batch = f"batch {sized(t.batch_start, t.batch_size, t.ramp)}"
    if t.grad_accum > 1 or processes > 1:
        batch += f" x {count(t.grad_accum, 'micro-step')} x {processes} process" + "es" * (
            processes > 1)
    block = sized(t.block_start, run.cfg.model.block_size, t.ramp)
    grown = grows(t.batch_start, t.batch_size, t.ramp) or grows(
        t.block_start, run.cfg.model.block_size, t.ramp)
    ramp = f" (grown over the first {t.ramp:.0%})" if grown else ""
    log.info(f"model: {data['params']:,} parameters on {env['device']}; {t.optimizer} lr "
             f"{t.lr:g} ({t.schedule}), {batch} x {block} tokens{ramp}, "
             + (f"{t.time_budget:g} s of training" if t.time_budget else count(t.steps, "step")))
    if (read := t.eval_batches * t.batch_size * run.cfg.model.block_size) > data["val_tokens"]:
        log.warning(f"--eval-batches {t.eval_batches:,} reads {read:,} tokens an evaluation, "
                    f"more than the validation split's {data['val_tokens']:,}: --eval-batches 0 "
                    f"reads the whole split once, exactly")
    between = t.eval_every * t.batch_size * t.grad_accum * processes * run.cfg.model.block_size
    if not t.eval_batches and data["val_tokens"] > 3 * between:  # (a forward: a third of the
        # work of a training step; a big prepared corpus's split)
        log.warning(f"each evaluation reads the whole validation split, "
                    f"{data['val_tokens']:,} tokens, longer than training the {between:,} between "
                    f"two: --eval-batches 20 estimates it from 20 random batches (the final "
                    f"figure still reads the whole split)")
    if not t.time_budget and t.schedule in ("cosine", "linear") and 1 < t.warmup_steps >= t.steps:
        log.warning(f"warmup ({count(t.warmup_steps, 'step')}) is the whole run: the learning rate "
                    f"will only rise, and never decay; try --warmup-steps "
                    f"{max(1, t.steps // 10):,}")


def sized(start: int, full: int, ramp: float) -> str:
    """A size and its schedule: '32', or '8->32' when it grows from 8."""
    return f"{start}->{full}" if grows(start, full, ramp) else f"{full}"


def log_eval(row: dict, improved: bool) -> None:
    """One line per evaluation."""
    log.info(f"step {row['step']:>5} | train {fmt(row['train_loss'], '.4f')} | val "
             f"{row['val_loss']:.4f} ({row['val_bpb']:.3f} bpb) | lr {row['lr']:.2e} | "
             f"{row['tokens_per_s']:,} tok/s, MFU {row['mfu']:.0%} | {row['time_s']:.0f} s"
             + (" | best" if improved else ""))


def log_resume(changes: list[str], step: int) -> None:
    log.info(f"resuming from step {step:,}"
             + (f", with {', '.join(changes)}" if changes else ", with the run's settings"))


def log_summary(summary: dict, val_tokens: int) -> None:
    log.info(f"final validation loss (whole split, {val_tokens:,} tokens): "
             f"{fmt(summary['final_val_loss'], '.4f')} ({fmt(summary['final_val_bpb'], '.3f')} "
             f"bits per byte); best estimate {fmt(summary['best_val_loss'], '.4f')}; "
             f"{count(summary['steps'], 'step')}, "
             f"{summary['train_s']:.0f} s of training (this command: {summary['wall_s']:.0f} s), "
             f"{summary['tokens_per_s']:,} tok/s, MFU {summary['mfu']:.0%}")
    if summary["mfu"] > 1:  # (MFU is over the matmul peak: minigpt.precision.highest_peak)
        log.warning("MFU above 100%: the matmul peak (on a CPU, the highest this machine has "
                    "shown) was below what the run then reached (other work busy on these cores "
                    "when it was measured?), so MFU overstates; tokens/s stands")


CONTROLS = {c: chr(0x2400 + c) for c in range(0x20) if chr(c) not in "\n\r\t"} | {0x7F: "\u2421"}
CONTROLS |= {c: f"<U+{c:04X}>" for c in (*range(0x80, 0xA0), *range(0x202A, 0x202F),
                                          *range(0x2066, 0x206A))}  # C1; bidi overrides


def visible(text: str) -> str:
    """Text to show a person: control characters but the line break (CR, LF) and the tab as
    their symbols (ESC as ␛), which a terminal would obey and HTML does not allow (a young BPE
    model's samples hold them); the C1 controls and the bidirectional overrides, which reorder
    the text around them on a page or a terminal, by their code points (<U+202E>)."""
    return text.translate(CONTROLS)


def count(n: int, noun: str) -> str:
    """'1 step', '2 steps', '1,000 steps'."""
    return f"{n:,} {noun}" + "s" * (n != 1)


def finite_or_none(x: float) -> float | None:
    """JSON has no NaN or infinity: a non-finite value is written as null."""
    return x if math.isfinite(x) else None


def fmt(x: float | None, spec: str) -> str:
    """A number as spec formats it; None (JSON's null for NaN or infinity) as nan."""
    return format(math.nan if x is None else x, spec)
