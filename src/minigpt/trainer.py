"""The training loop, as the lesson writes it: batch, forward and loss, zero_grad, backward,
clip, step, schedule; then, as plain `if` lines, evaluation, checkpoints, logging and stopping.
`train` reads top to bottom; each thing it calls does one thing.

    from minigpt import train, resolve_config
    result = train(resolve_config(overrides={"steps": 300}), out_dir="runs/quick")
    result.summary["final_val_loss"], result.model

A run folder holds config.json, tokenizer.json, metrics.jsonl (a row per logged step),
checkpoints/ and summary.json; the diagnostics (minigpt.diagnostics) add their own files when
their probes are handed to `train`.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import psutil
import torch

from minigpt import console, distributed, performance
from minigpt.checkpoint import (
    load_checkpoint,
    restore_model,
    restore_optimizer,
    resume_config,
    save_checkpoint,
)
from minigpt.config import RunConfig, TrainConfig, parse_targets
from minigpt.data import Batches, Splits, ensure_tinyshakespeare, load_corpus
from minigpt.environment import describe, resolve_device
from minigpt.errors import MiniGPTError, TrainingStopped
from minigpt.files import append_line, atomic_write_text, lock_folder, read_jsonl
from minigpt.model import MiniGPT, evaluating
from minigpt.optim import clip_gradients, make_optimizer, set_lr, step_is_safe
from minigpt.sample import sample_text
from minigpt.schedule import lr_at
from minigpt.signals import StopSignals
from minigpt.tokenizer import AnyTokenizer, tokenizer_from_dict

log = logging.getLogger(__name__)
FLOAT32 = torch.float32


# --- the loop's pieces -----------------------------------------------------------------------


def schedule_lr(t: TrainConfig, step: int, seconds: float = 0.0) -> float:
    """The learning rate of step `step`, `seconds` into training: warmup, then cosine (or as
    t.schedule says), decaying over t.steps or, with a time budget, over its seconds."""
    fraction = seconds / t.time_budget if t.time_budget else None
    return lr_at(step, lr=t.lr, total_steps=t.steps, schedule=t.schedule,
                 warmup_steps=t.warmup_steps, min_lr=t.min_lr, fraction=fraction)


def finished(t: TrainConfig, steps_done: int, seconds: float) -> bool:
    """Whether training is over: the time budget spent, or else t.steps done."""
    return seconds >= t.time_budget if t.time_budget else steps_done >= t.steps


def estimate_loss(model: MiniGPT, batches: Batches, split: str, n_batches: int) -> float:
    """Mean loss over n random batches of a split, in eval mode (the lesson's estimate)."""
    with evaluating(model):
        losses = torch.stack([model(*batches.get_batch(split))[1] for _ in range(n_batches)])
    return losses.mean().item()


def evaluate(run: Run) -> float:
    """The validation loss: over the whole split (eval_batches 0), else random batches."""
    t = run.cfg.train
    if t.eval_batches:
        return estimate_loss(run.model, run.batches, "val", t.eval_batches)
    return split_loss(run.model, run.splits.val, run.cfg.model.block_size, 64, run.device)


def split_loss(model: MiniGPT, data: np.ndarray, block_size: int, batch_size: int,
               device: torch.device) -> float:
    """Mean loss over every token of a split, read as non-overlapping windows of block_size
    (the last one shorter): the figure a run reports. The split is read one batch of windows
    at a time, so a sharded split of any size is never loaded whole."""
    n_targets = len(data) - 1
    per_batch = batch_size * block_size
    total, count = 0.0, 0
    with evaluating(model):
        for start in range(0, n_targets, per_batch):
            stop = min(start + per_batch, n_targets)
            chunk = torch.from_numpy(np.asarray(data[start : stop + 1], dtype=np.int64))
            n_full = (stop - start) // block_size
            pieces = []
            if n_full:
                x = chunk[: n_full * block_size].view(n_full, block_size)  # (N, T)
                y = chunk[1 : n_full * block_size + 1].view(n_full, block_size)  # (N, T)
                pieces.append((x, y))
            if n_full * block_size < stop - start:  # the split's last, shorter window
                pieces.append((chunk[n_full * block_size : -1][None],
                               chunk[n_full * block_size + 1 :][None]))  # (1, t)
            for x, y in pieces:
                _, loss = model(x.to(device), y.to(device))
                total += loss.item() * y.numel()
                count += y.numel()
    return total / count


def check_memory(run: Run) -> None:
    """Refuse, before the first step, a run whose peak memory cannot fit (minigpt.performance.
    peak_memory), rather than be killed part-way, or push a laptop into swapping: the estimate,
    what is available, and what to change, in one line."""
    if run.device.type == "cuda":
        resident = torch.cuda.memory_allocated(run.device)
        where = f"free on {run.device}"
    else:
        resident = psutil.Process().memory_info().rss
        where = "available"
    parts = performance.peak_memory(run.cfg, resident, run.data["params"])
    need = (sum(parts.values()) - resident) * (1 if run.device.type == "cuda" else
                                               local_processes(run.world))
    available = performance.available_memory(run.device)
    if need > available:
        t, gib = run.cfg.train, 2**30
        raise MiniGPTError(
            f"this run needs about {need / gib:.1f} GiB more memory at its peak (activations "
            f"{parts['activations'] / gib:.1f} GiB for batch {t.batch_size} x block "
            f"{run.cfg.model.block_size}), and {available / gib:.1f} GiB is {where}: lower "
            f"--batch-size or --block-size, or keep the batch with --grad-accum N and "
            f"--batch-size {t.batch_size}/N")


def local_processes(world: distributed.World) -> int:
    """How many of the run's processes share this machine's memory (torchrun's local size)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", world.size))


def check_initial_loss(loss: float | None, vocab_size: int) -> None:
    """A fresh model should be near-uniform: loss ~ ln(vocab). Far from it means a bug."""
    expected = math.log(vocab_size)
    if loss is not None and abs(loss - expected) > 0.5:
        log.warning(f"step 0 loss {loss:.3f} is far from ln({vocab_size}) = {expected:.3f}: "
                    f"check the initialisation and the data")


def check_skipped(new: int, skipped: int, allowed: int, row: dict, checkpoints: Path) -> None:
    """`new` more batches had NaN or inf gradients and were skipped (the weights never saw
    them), `skipped` in all; beyond `allowed`, stop: the last checkpoint is the last good
    state."""
    what = (f"step {row['step']}: {new} batch(es) since the last log line had a gradient that "
            f"is not finite (now: loss {console.fmt(row['train_loss'], '.4g')}, gradient norm "
            f"{console.fmt(row['grad_norm'], '.4g')})")
    if skipped > allowed:
        raise MiniGPTError(f"{what}; stopped (last checkpoint: {checkpoints}). Likely cause: "
                           f"learning rate {row['lr']:.3g} too high; try a lower --lr, "
                           f"--grad-clip 1.0, or --skip-nonfinite N")
    log.warning(f"{what}: skipped ({skipped} of {allowed} allowed)")


@dataclass
class TrainState:
    """Where the loop is: what a checkpoint restores besides the weights, the optimizer's state
    and the random generators."""

    step: int = 0  # optimizer steps done
    best_val: float = math.inf  # the best validation estimate so far
    bad_evals: int = 0  # evaluations since it last improved (early stopping)
    skipped: int = 0  # batches skipped for NaN or inf gradients
    seconds: float = 0.0  # seconds spent training (evaluation left out), across resumes
    reached: dict = field(default_factory=dict)  # target loss -> seconds when first reached

    def record_eval(self, val_loss: float, min_delta: float = 0.0) -> bool:
        """Note an evaluation; True when it beats the best by more than min_delta."""
        if val_loss < self.best_val - min_delta:
            self.best_val, self.bad_evals = val_loss, 0
            return True
        self.bad_evals += 1
        return False

    def record_targets(self, val_loss: float, targets: list[float]) -> dict:
        """The targets this evaluation reaches for the first time, with the seconds so far."""
        new = {f"{x:g}": round(self.seconds, 2) for x in targets
               if val_loss <= x and f"{x:g}" not in self.reached}
        self.reached.update(new)
        return new

    def out_of_patience(self, patience: int) -> bool:
        """Early stopping: `patience` evaluations in a row without improvement (0 = never)."""
        return patience > 0 and self.bad_evals >= patience


# --- a run: what it is made of, and its folder -------------------------------------------------


@dataclass
class Run:
    """What a training run is made of, built from its config by `build_run`."""

    cfg: RunConfig
    folder: Path
    world: distributed.World  # this process among torchrun's (one process without it)
    device: torch.device
    dtype: torch.dtype  # the forward pass's compute precision (weights stay float32)
    tokenizer: AnyTokenizer
    splits: Splits
    data: dict  # the text, its token counts, the tokenizer
    model: MiniGPT
    optimizer: torch.optim.Optimizer
    batches: Batches
    env: dict  # versions, device, threads: logged at the start, saved in config.json


@dataclass
class TrainResult:
    """What `train` gives back: the figures of summary.json, and the trained model."""

    summary: dict
    model: MiniGPT
    tokenizer: AnyTokenizer
    folder: Path


def default_run_dir(cfg: RunConfig) -> Path:
    name = Path(cfg.data.text).stem if cfg.data.text else "shakespeare"
    return Path("runs") / f"{name}-{datetime.now():%Y%m%d-%H%M%S}"


def build_run(cfg: RunConfig, folder: str | Path) -> Run:
    """Data, tokenizer, a freshly initialised model (seeded), optimizer and batches; nothing is
    written but the token cache. Under torchrun, this process joins the others here."""
    world = distributed.world_from_env()
    device = distributed.start(world, resolve_device(cfg.train.device))
    if cfg.data.text:  # as an absolute path: a resumed run finds it from anywhere
        cfg.data.text = str(Path(cfg.data.text).expanduser().resolve())
    with distributed.main_first(world):  # rank 0 writes the token cache, the others read it
        text_path = Path(cfg.data.text) if cfg.data.text else ensure_tinyshakespeare()
        splits, tokenizer, data = load_corpus(text_path, cfg.data.tokenizer,
                                              cfg.model.vocab_size, cfg.data.val_fraction)
    cfg.data.tokenizer = data["tokenizer"]  # a prepared folder brings its own
    cfg.model.vocab_size = tokenizer.vocab_size  # BPE may learn fewer than asked for
    accum = cfg.train.grad_accum  # this process's streams: one per micro-batch of a step
    batches = Batches(splits, cfg.train.batch_size, cfg.model.block_size, cfg.train.seed, device,
                      streams=tuple(range(world.rank * accum, (world.rank + 1) * accum)))
    torch.manual_seed(cfg.train.seed)
    model = MiniGPT.from_config(cfg.model).to(device)
    dtype = performance.choose_dtype(cfg.train.dtype, device)
    compiled = performance.choose_compile(cfg.train.compile, device)
    performance.configure_backends(device)
    env = describe(device) | {"dtype": str(dtype).removeprefix("torch."), "compile": compiled,
                              "processes": world.size}
    return Run(cfg, Path(folder), world, device, dtype, tokenizer, splits,
               data | {"params": model.num_params()}, model, make_optimizer(model, cfg.train),
               batches, env)


def wrap_for_training(run: Run) -> torch.nn.Module:
    """The module the training step calls: the model itself, or the wrappers around it that
    share its parameters: torch.compile's (when the config turns it on) and DDP's (under
    torchrun, to average the gradients across processes)."""
    model = torch.compile(run.model) if run.env["compile"] else run.model
    return distributed.wrap(model, run.world, run.device)


def prepare_folder(run: Run, state: TrainState, resume: bool) -> None:
    """The run folder ready for the loop (rank 0): a new one holds tokenizer.json; a resumed
    one drops the log lines after its checkpoint (they come again); both get config.json."""
    if not run.world.is_main:
        return
    if resume:
        for name in ("metrics.jsonl", "gradflow.jsonl", "samples.jsonl"):
            truncate_log(run.folder / name, state.step)
    else:
        run.tokenizer.save(run.folder / "tokenizer.json")
    record = {"config": run.cfg.to_dict(), "data": run.data, "environment": run.env}
    atomic_write_text(run.folder / "config.json", json.dumps(record, indent=2) + "\n")


def make_folder(folder: Path) -> Path:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MiniGPTError(f"cannot create run folder {folder}: {e.strerror}") from None
    return folder


def truncate_log(path: Path, step: int) -> None:
    """Keep only the rows of steps before `step` (those the checkpoint includes), and none
    that a crash tore."""
    if path.exists():
        kept = [row for row in read_jsonl(path) if row.get("step", step) < step]
        atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n"
                                        for row in kept))


def rng_state(run: Run) -> dict[str, torch.Tensor]:
    """Every process's batch generators and torch RNG, keyed rank<r>_<name> (a collective
    call: every process must make it)."""
    mine = {f"batches_{k}": v for k, v in run.batches.rng_state().items()}
    mine["torch"] = torch.get_rng_state()
    if run.device.type == "cuda":
        mine["cuda"] = torch.cuda.get_rng_state(run.device).cpu()
    states = distributed.gather(mine, run.world)
    return {f"rank{r}_{k}": v for r, state in enumerate(states) for k, v in state.items()}


def save(run: Run, state: TrainState, tags: list[str]) -> None:
    """A checkpoint of the run as it is (every process calls this; rank 0 writes it)."""
    rng = rng_state(run)
    if not run.world.is_main:
        return
    meta = {"step": state.step, "state": asdict(state), "world_size": run.world.size,
            "train": vars(run.cfg.train), "data": vars(run.cfg.data),
            "diag": vars(run.cfg.diag), "tokenizer": run.tokenizer.to_dict()}
    save_checkpoint(run.folder / "checkpoints", tags, run.model, run.optimizer, meta, rng,
                    keep=run.cfg.train.keep)


def restore(run: Run, tag: str = "last") -> TrainState:
    """Load a checkpoint of the run's folder into it (weights, optimizer, random generators)
    and return the loop's state at that checkpoint."""
    ckpt = load_checkpoint(run.folder / "checkpoints", tag)
    if tokenizer_from_dict(ckpt.meta["tokenizer"]) != run.tokenizer:
        raise MiniGPTError("the text's vocabulary differs from the checkpoint's; resume with the "
                           "same --text the run was trained on")
    saved = (ckpt.meta["world_size"], ckpt.meta["train"]["grad_accum"])
    if saved != (run.world.size, run.cfg.train.grad_accum):
        raise MiniGPTError(f"the run was trained by {saved[0]} process(es) with --grad-accum "
                           f"{saved[1]}; resume it the same way to continue its batch streams")
    restore_model(run.model, ckpt)
    restore_optimizer(run.optimizer, ckpt)
    rng = ckpt.section("rng")
    prefix = f"rank{run.world.rank}_"
    run.batches.set_rng_state({k.removeprefix(prefix + "batches_"): v for k, v in rng.items()
                               if k.startswith(prefix + "batches_")})
    torch.set_rng_state(rng[prefix + "torch"])
    if run.device.type == "cuda" and prefix + "cuda" in rng:
        torch.cuda.set_rng_state(rng[prefix + "cuda"], run.device)
    return state_of(ckpt.meta)


def state_of(meta: dict) -> TrainState:
    """The loop's state a checkpoint's JSON records (in the older layout too)."""
    if "state" in meta:
        return TrainState(**meta["state"])
    return TrainState(meta["step"], meta["early_stopping"]["best"],
                      meta["early_stopping"]["bad_evals"], meta["skipped_batches"],
                      meta.get("time_s", 0.0))


def open_run(run_dir: str | Path, tag: str = "best",
             device: str = "auto") -> tuple[Run, TrainState]:
    """A run as it was at one of its checkpoints, for the diagnostic commands: the model (in
    eval mode), its optimizer's state, batches from its text; nothing in the folder changes."""
    cfg = resume_config(run_dir)
    cfg.train.device = device
    run = build_run(cfg, run_dir)
    state = restore(run, tag)
    run.model.eval()
    return run, state


# --- the loop ----------------------------------------------------------------------------------


def train(cfg: RunConfig, out_dir: str | Path | None = None, *, resume: bool = False,
          probes: Sequence = (), progress: bool = True) -> TrainResult:
    """Train a MiniGPT as cfg says, write the run folder, and return the summary and the model.

    resume: continue the run in out_dir from its last checkpoint (cfg as saved there, see
    minigpt.checkpoint.resume_config). probes: what else to record as it trains (see
    minigpt.diagnostics.probes). progress: show a progress bar. Under torchrun every process
    calls this; rank 0 alone prints and writes files."""
    folder = Path(out_dir) if out_dir else default_run_dir(cfg)
    if not resume and (folder / "checkpoints").exists():
        raise MiniGPTError(f"{folder} already holds a run: resume it with --resume {folder}, "
                           f"or choose another --out")
    console.show_logs()
    run = build_run(cfg, folder)
    state = TrainState()
    try:
        check_memory(run)  # before anything is written
        main = run.world.is_main  # one process per folder: a second one is refused at once
        with lock_folder(make_folder(folder)) if main else contextlib.nullcontext():
            if resume:
                state = restore(run, "last")
            prepare_folder(run, state, resume)
            return loop(run, state, list(probes) if main else [], progress)
    except (RuntimeError, MemoryError) as e:
        if not out_of_memory(e):
            raise
        raise MiniGPTError(f"out of memory after step {state.step} ({first_line(e)}); the last "
                           f"checkpoint in {folder / 'checkpoints'} is intact: resume with a "
                           f"smaller --batch-size, or --grad-accum") from None
    finally:
        distributed.stop(run.world)


def out_of_memory(e: BaseException) -> bool:
    """Whether an error is an allocation that failed: torch's on a GPU, the CPU allocator's
    ("can't allocate memory"), or Python's own."""
    text = str(e)
    return (isinstance(e, (torch.OutOfMemoryError, MemoryError))
            or "can't allocate memory" in text or "out of memory" in text.lower())


def first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return (lines[-1] if lines else type(e).__name__)[:200]


def loop(run: Run, state: TrainState, probes: list, progress: bool) -> TrainResult:
    """The steps from state.step until training is over, then the final evaluation."""
    t, started = run.cfg.train, time.perf_counter()
    model, optimizer, batches = run.model, run.optimizer, run.batches
    wrapped = wrap_for_training(run)  # the model, or compile/DDP around it: same parameters
    peak = performance.peak_flops(run.device, run.dtype) * run.world.size  # MFU's denominator
    meter = console.Meter(t.batch_size * run.cfg.model.block_size * t.grad_accum * run.world.size,
                          performance.train_flops_per_token(run.cfg.model), peak, state.step,
                          state.seconds)
    bar = console.progress_bar(t, state, progress and run.world.is_main)
    console.log_start(run, peak)
    for probe in probes:
        probe.start(run, state)
    skipped = torch.full((), state.skipped, device=run.device)  # counted on the device
    targets, last_val = parse_targets(t.targets), math.nan
    model.train()

    seconds = state.seconds  # of training so far: the same on every process (time budgets)
    with StopSignals() as signals:
        for step in itertools.count(state.step):
            if finished(t, step, seconds):  # (a finished run, resumed with nothing to add)
                break
            lr = set_lr(optimizer, schedule_lr(t, step, seconds))  # the schedule: this rate
            step_loss = torch.zeros((), device=run.device)
            for micro in range(t.grad_accum):  # one micro-batch, unless accumulating
                x, y = batches.get_batch("train", micro)  # 1. a batch: (B, T) inputs, targets
                wrapped.require_backward_grad_sync = micro == t.grad_accum - 1  # DDP: sum last
                with torch.autocast(run.device.type, run.dtype, enabled=run.dtype != FLOAT32):
                    logits, loss = wrapped(x, y)  # 2. forward, and the loss
                if micro == 0:
                    optimizer.zero_grad(set_to_none=True)  # 3. forget the last step's gradients
                (loss / t.grad_accum).backward()  # 4. backward: d loss / d every weight
                step_loss += loss.detach() / t.grad_accum
            grad_norm = clip_gradients(model, t.grad_clip)  # 5. clip the global gradient norm
            skipped += ~torch.isfinite(grad_norm)
            if step_is_safe(optimizer, grad_norm):  # a NaN or inf gradient: no step at all
                optimizer.step()  # 6. step: update the weights
            state.step = step + 1
            seconds = distributed.agree(meter.elapsed(), run.world)  # one clock for all
            last = finished(t, state.step, seconds)
            console.advance(bar, t, state.step, seconds)

            evaluate_now = step % t.eval_every == 0 or last
            if step % t.log_every == 0 or evaluate_now:  # a metrics row: the loop's one wait
                step_loss = distributed.mean(step_loss, run.world)  # all processes' batches
                row = {"step": step, "train_loss": console.finite_or_none(step_loss.item()),
                       "lr": lr, "grad_norm": console.finite_or_none(grad_norm.item()),
                       **meter.read(state.step), "time_s": round(seconds, 2)}
                state.seconds = seconds
                if step == 0:
                    check_initial_loss(row["train_loss"], run.tokenizer.vocab_size)
                if int(skipped) > state.skipped:  # NaN or inf gradients since the last row
                    new, state.skipped = int(skipped) - state.skipped, int(skipped)
                    check_skipped(new, state.skipped, t.skip_nonfinite, row,
                                  run.folder / "checkpoints")
                if evaluate_now:
                    row["val_loss"] = last_val = evaluate(run)
                    if reached := state.record_targets(last_val, targets):
                        row["reached"] = reached
                    improved = state.record_eval(last_val, t.min_delta)
                    console.log_eval(row, improved)
                console.show_row(bar, row, last_val)
                if run.world.is_main:
                    append_line(run.folder / "metrics.jsonl", json.dumps(row))
                for probe in probes:
                    probe.on_row(row)
                if evaluate_now:  # after the row: a crash between, and the resume rewrites it
                    save(run, state, ["last", "best"] if improved else ["last"])
                meter.pause()  # evaluation, probes and checkpoints are not training time
                if state.out_of_patience(t.patience):  # every process evaluated alike
                    log.info(f"early stopping at step {step}: no improvement for "
                             f"{t.patience} evaluations (best {state.best_val:.4f})")
                    break
            if last or signals.agreed(run.world, run.device, step % t.log_every == 0):
                break
    bar.close()
    meter.read(state.step)  # the steps after the last row
    state.seconds = seconds
    if signals.stopping:
        save(run, state, ["last"])
        log.warning(f"stopped at step {state.step} by {signal.Signals(signals.signum).name}; "
                    f"checkpoint saved. Continue with: minigpt train --resume {run.folder}")
        raise TrainingStopped(signals.signum)
    return finish(run, state, meter, probes, time.perf_counter() - started)


def finish(run: Run, state: TrainState, meter: console.Meter, probes: list,
           wall_s: float) -> TrainResult:
    """The whole-split validation loss, summary.json and a sample from the final model (on
    rank 0; the other processes are done)."""
    cfg = run.cfg
    result = TrainResult({"steps": state.step}, run.model, run.tokenizer, run.folder)
    if not run.world.is_main:
        return result
    final = split_loss(run.model, run.splits.val, cfg.model.block_size, 64, run.device)
    result.summary = {"final_val_loss": final, "best_val_loss": state.best_val,
                      "steps": state.step, "train_s": round(state.seconds, 2),
                      "wall_s": round(wall_s, 2), **meter.overall(),
                      "params": run.data["params"],
                      "time_to": {f"{x:g}": state.reached.get(f"{x:g}")
                                  for x in parse_targets(cfg.train.targets)}}
    atomic_write_text(run.folder / "summary.json", json.dumps(result.summary, indent=2) + "\n")
    console.log_summary(result.summary, run.data["val_tokens"])
    for probe in probes:
        probe.end(result.summary)
    if cfg.train.sample_tokens:
        text = sample_text(run.model, run.tokenizer, "ROMEO:", cfg.train.sample_tokens,
                           seed=cfg.train.seed)
        log.info("sample:\n" + text)
    log.info(f"continue it with: minigpt sample --run {run.folder} --prompt \"ROMEO:\"")
    return result
