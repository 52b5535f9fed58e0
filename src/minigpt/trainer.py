"""The training loop: the schedule, the step (minigpt.step.train_step: the lesson's batch,
forward and loss, backward, clip and step, with zero_grad first), then one line per periodic
job: a metrics row, an evaluation, a checkpoint, stopping.

    from minigpt import train, resolve_config
    result = train(resolve_config(overrides={"steps": 300}), out_dir="runs/quick")
    result.summary["final_val_loss"], result.model

The run's parts, its folder and its checkpoints are minigpt.run; the clock, minigpt.clock.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from minigpt import console, distributed, performance
from minigpt.clock import Clock, Speed
from minigpt.config import RunConfig, TrainConfig, parse_targets, validate
from minigpt.data import cache_dir
from minigpt.errors import Diverged, MiniGPTError, peer_lost, shell_path, training_error
from minigpt.evaluate import bits_per_byte, check_initial_loss, estimate_loss, split_loss
from minigpt.files import append_line, as_path, atomic_write_text
from minigpt.model import MiniGPT
from minigpt.optim import set_lr
from minigpt.precision import highest_peak
from minigpt.run import (
    Run,
    build_run,
    check_start,
    checked_probes,
    default_run_dir,
    hold_folder,
    prepare_folder,
    removed_if_left_empty,
    restore,
    save,
)
from minigpt.sample import sample_text
from minigpt.schedule import batch_shape, schedule_lr
from minigpt.signals import StopSignals
from minigpt.step import MicroSteps, train_step
from minigpt.tokenizer import AnyTokenizer

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What `train` gives back: summary.json's figures (on rank 0; the other processes', the
    steps alone), and the final model (in eval mode)."""

    summary: dict
    model: MiniGPT
    tokenizer: AnyTokenizer
    folder: Path


def train(cfg: RunConfig, out_dir: str | Path | None = None, *, resume: bool = False,
          probes: Sequence = (), progress: bool = True) -> TrainResult:
    """Train a MiniGPT as cfg says, write the run folder, and return the summary and the model
    (cfg itself is left as given: the run's resolved settings are in its config.json).

    resume: continue the run in out_dir from its last checkpoint, as cfg says (its training
    settings may differ from the run's, its model and data may not; resume_config(out_dir)
    gives the run's own). probes: what else to record as it trains (see
    minigpt.diagnostics.probes). progress: show a progress bar. Under torchrun every process
    calls this; rank 0 alone prints and writes files."""
    cfg = copy.deepcopy(cfg)  # the run resolves its dtype, paths and vocabulary in its own
    validate(cfg)  # (changed in code since resolve_config, say; before its folder is named)
    if not out_dir:  # runs/<text>-<date>-<time>, made now: removed if the run never starts
        with removed_if_left_empty(default_run_dir(cfg)) as folder:
            return train(cfg, folder, resume=resume, probes=probes, progress=progress)
    folder = as_path(out_dir, "out_dir")
    check_start(folder, resume)  # (before it is made, locked)
    probes = checked_probes(probes, folder)  # (said before the run is built)
    console.show_logs()
    run = build_run(cfg, folder)
    run.probes = probes if run.world.is_main else []
    try:  # (memory checked before anything is written)
        performance.check_memory(cfg, run.device, run.data["params"], run.dtype)
        with hold_folder(run, resume):
            if resume:
                console.log_resume(restore(run, "last"), run.state.step)  # (restored first)
            prepare_folder(run, resume)
            result = loop(run, progress)
        # every process waits for rank 0's final evaluation and sample, so that they all leave
        # the process group together (and then exit under torchrun as cli.main says)
        distributed.barrier(run.world)
        return result
    except (RuntimeError, MemoryError) as e:
        if run.world.enabled and peer_lost(e):  # another process died: say so before torchrun
            distributed.outlast_torchrun()  # stops this one too
        raise training_error(e, run.state.step, folder / "checkpoints", run.world.size) from None
    finally:
        distributed.stop(run.world)


def loop(run: Run, progress: bool) -> TrainResult:
    """The steps from run.state.step until training is over, then the final evaluation."""
    t, state, clock = run.cfg.train, run.state, run.clock
    # the module the step calls: the model, or torch.compile's and DDP's wrappers around it
    model = torch.compile(run.model) if run.env["compile"] else run.model
    model = distributed.wrap(model, run.world, run.device)  # (they share its parameters)
    micro = MicroSteps(t.grad_accum, run.dtype)
    kept = cache_dir() / "precision.json" if run.world.is_main else None  # (rank 0 logs MFU)
    peak = highest_peak(run.device, run.dtype, kept) * run.world.size  # MFU's denominator
    speed = Speed(performance.train_flops_per_token(run.cfg.model), peak, state.tokens,
                  clock.seconds())
    console.log_start(run, peak)  # (before the bar: a terminal shows the bar below them)
    bar = console.Progress(t, state.step, clock.seconds(), progress and run.world.is_main)
    if finished(t, state.step, clock.seconds()) or state.out_of_patience(t.patience):
        log.info("the run has ended: nothing to train (resume with a larger --steps or "
                 "--time-budget to train on; one stopped early, with --patience 0 or larger)")
    elif run.world.is_main and state.step:  # resumed past the end its summary tells of: it
        (run.folder / "summary.json").unlink(missing_ok=True)  # is written again at the new end
    for probe in run.probes:
        probe.start(run)
    # counted on the device, and held in the state for a checkpoint between rows (a signal's):
    # the steps skipped in all, and the steps clipped since the last row
    skipped = state.skipped = torch.full((), int(state.skipped), device=run.device)
    clipped = state.clipped = torch.full((), int(state.clipped), device=run.device)
    run.model.train()
    with StopSignals() as signals:
        clock.start()
        now, _ = agreed(clock, signals, run.world)
        while not (finished(t, state.step, now) or state.out_of_patience(t.patience)):
            step, lr = state.step, set_schedules(run, state.step, now)
            loss, grad_norm = train_step(model, run.optimizer, run.batches, t.grad_clip, micro)
            state.tokens += run.batches.tokens * micro.n * run.world.size
            if run.ema is not None:
                run.ema.update(run.model)
            skipped += ~torch.isfinite(grad_norm)  # those batches left the weights as they were
            if t.grad_clip > 0:  # steps whose gradient the clip scaled down
                clipped += torch.isfinite(grad_norm) & (grad_norm > t.grad_clip)
            state.step, (now, stop) = step + 1, agreed(clock, signals, run.world)
            last = finished(t, state.step, now)
            bar.advance(state.step, now)
            evaluate_now = step % t.eval_every == 0 or last
            if step % t.log_every == 0 or evaluate_now:
                with clock.paused():  # evaluation, probes and checkpoints are not training
                    row = metrics_row(run, step, lr, loss, grad_norm, int(skipped),
                                      int(clipped), speed)
                    clipped.zero_()
                    if evaluate_now:
                        improved = record_evaluation(run, row)
                    write_row(run, row, bar)
                    check_row(run, row)  # after the row: a run stopped here has it written
                    for probe in run.probes:  # (after the checks: never a run that must stop)
                        probe.on_row(row)
                    if evaluate_now:  # after the row: a crash between, and resume rewrites it
                        save(run, ["last", "best"] if improved else ["last"])
                stop = signals.agreed(run.world)  # (a signal during the row: stop after it)
            if state.out_of_patience(t.patience):  # every process evaluated alike
                log.info(f"early stopping at step {step}: no improvement for "
                         f"{console.count(t.patience, 'evaluation')} (best {state.best_val:.4f})")
                break
            if last or stop:
                break
        clock.stop()
    bar.close()
    speed.read(state.tokens, clock.seconds())  # the steps after the last row
    if signals.agreed(run.world):  # (a signal at the last step stops there too)
        save(run, ["last"])
        raise signals.stopped(run.folder, state.step, run.world.size)
    return finish(run, speed)


# --- what the loop calls --------------------------------------------------------------------


def set_schedules(run: Run, step: int, seconds: float) -> float:
    """Step `step`'s learning rate, set on the optimizer and returned, and its batch's shape,
    set on the batches (the batch-size and sequence-length schedules)."""
    run.batches.train_shape = batch_shape(run.cfg.train, run.cfg.model.block_size, step, seconds)
    return set_lr(run.optimizer, schedule_lr(run.cfg.train, step, seconds))


def agreed(clock: Clock, signals: StopSignals, world: distributed.World) -> tuple[float, bool]:
    """The clock's seconds of training, and whether to stop (a signal in any process). Under
    torchrun one collective call a step carries both: every process's clock catches up with the
    slowest's, so all follow one schedule and stop after the same step, each returning the
    agreed figure, not its running clock, which read again could fall on the other side of the
    budget and leave one waiting. (A row's step asks again after it: a signal during the row.)"""
    now, stop = distributed.agree([clock.seconds(), signals.received is not None], world)
    clock.catch_up(now)
    return now, bool(stop)


def finished(t: TrainConfig, steps_done: int, seconds: float) -> bool:
    """Whether training is over: the time budget spent (after one step at least: a budget
    shorter than starting up left a run with nothing to save), or else t.steps done."""
    return seconds >= t.time_budget and steps_done > 0 if t.time_budget else steps_done >= t.steps


def metrics_row(run: Run, step: int, lr: float, loss: torch.Tensor, grad_norm: torch.Tensor,
                skipped: int, clipped: int, speed: Speed) -> dict:
    """The metrics row of a step: its loss (every process's batches), learning rate, gradient
    norm, the steps since the last row whose gradient was clipped (`clipped`) or skipped
    (`skipped`, when there were any), speed and time."""
    loss = distributed.mean(loss, run.world)
    row = {"step": step, "train_loss": console.finite_or_none(loss.item()), "lr": lr,
           "grad_norm": console.finite_or_none(grad_norm.item()), "clipped": clipped,
           **speed.read(run.state.tokens, run.clock.seconds()),
           "time_s": round(run.clock.seconds(), 2)}
    if skipped > run.state.skipped_logged:
        row["skipped"], run.state.skipped_logged = skipped - run.state.skipped_logged, skipped
    return row


def check_row(run: Run, row: dict) -> None:
    """The checks that a row can make: the initial loss; batches since the last row whose
    gradient was NaN or inf, skipped (the weights never saw them), and beyond --skip-nonfinite in
    all, the run stops: the last checkpoint is the last good state."""
    if row["step"] == 0:
        check_initial_loss(row["train_loss"], run.tokenizer.vocab_size)
    if "skipped" not in row:
        return
    t, skipped, allowed = run.cfg.train, run.state.skipped_logged, run.cfg.train.skip_nonfinite
    what = (f"step {row['step']}: {row['skipped']} batch(es) since the last log line had a "
            f"gradient that is not finite (now: loss {console.fmt(row['train_loss'], '.4g')}, "
            f"gradient norm {console.fmt(row['grad_norm'], '.4g')})")
    if skipped > allowed:  # the rate asked for (the schedule's at this step), clipping if off
        clip = ", --grad-clip 1.0" * (t.grad_clip == 0)
        raise Diverged(f"{what}; stopped (last checkpoint: {run.folder / 'checkpoints'}). "
                       f"Likely cause: learning rate {t.lr:g} too high ({row['lr']:.3g} at this "
                       f"step); try a lower --lr{clip}, or --skip-nonfinite N"
                       + f" above {allowed} (counted at log lines)" * bool(allowed), row["step"])
    log.warning(f"{what}: skipped ({skipped} of {allowed} allowed)")


def record_evaluation(run: Run, row: dict) -> bool:
    """The validation loss into the row (over eval_batches random batches; 0: the whole split),
    the targets it reaches, early stopping's count, a log line; True when it is the best so far."""
    t, state, model = run.cfg.train, run.state, run.final_model
    if t.eval_batches:
        row["val_loss"] = estimate_loss(model, run.batches, "val", t.eval_batches)
    else:
        row["val_loss"] = split_loss(model, run.splits.val, run.cfg.model.block_size)
    row["val_bpb"] = val_bpb(run, row["val_loss"])
    per_byte = row["val_bpb"] * math.log(2)  # nats (a character model's loss on ASCII text)
    if reached := state.record_targets(per_byte, parse_targets(t.targets), run.clock.seconds()):
        row["reached"] = reached
    improved = state.record_eval(row["val_loss"], t.min_delta)
    console.log_eval(row, improved)
    return improved


def write_row(run: Run, row: dict, bar: console.Progress) -> None:
    """The row on the progress bar and in metrics.jsonl (rank 0; NaN and inf as null, which
    JSON has)."""
    bar.show(row)
    if run.world.is_main:
        append_line(run.folder / "metrics.jsonl", json.dumps(
            {k: console.finite_or_none(v) if isinstance(v, float) else v for k, v in row.items()}))


def val_bpb(run: Run, loss: float) -> float:
    """A validation loss as bits per byte (the whole split's bytes per token scale an estimate
    over random batches too)."""
    return bits_per_byte(loss, len(run.splits.val) - 1, run.data["val_bytes"])


def finish(run: Run, speed: Speed) -> TrainResult:
    """The whole-split validation loss, summary.json and a sample from the final model (rank 0)."""
    cfg, state = run.cfg, run.state
    result = TrainResult({"steps": state.step}, run.final_model.eval(), run.tokenizer, run.folder)
    if not run.world.is_main:
        return result
    final = split_loss(run.final_model, run.splits.val, cfg.model.block_size)
    finite = console.finite_or_none  # (JSON has no NaN: weights gone NaN, no finite evaluation)
    result.summary = {"final_val_loss": finite(final), "final_val_bpb": finite(val_bpb(run, final)),
                      "best_val_loss": finite(state.best_val), "steps": state.step,
                      "train_s": round(run.clock.seconds(), 2),
                      "wall_s": round(time.perf_counter() - run.started, 2),
                      **speed.overall(), "params": run.data["params"],
                      "time_to": {f"{x:g}": state.reached.get(f"{x:g}")
                                  for x in parse_targets(cfg.train.targets)}}
    atomic_write_text(run.folder / "summary.json", json.dumps(result.summary, indent=2) + "\n")
    console.log_summary(result.summary, run.data["val_tokens"])
    for probe in run.probes:
        probe.end(result.summary)
    if cfg.train.sample_tokens:
        try:  # (weights gone NaN under --skip-nonfinite give no sample; the summary stands)
            text = sample_text(run.final_model, run.tokenizer, None, cfg.train.sample_tokens,
                               seed=cfg.train.seed)
            log.info("sample:\n" + console.visible(text))
        except MiniGPTError as e:
            log.warning(f"no sample: {e}")
    log.info(f"sample from it with: minigpt sample --run {shell_path(run.folder)}")
    return result
