"""The training loop, as the lesson writes it: batch, forward, loss, zero_grad, backward, clip,
step, schedule. Everything else (evaluation, logging, checkpoints, early stopping) hangs off the
loop as small named functions.

    from minigpt import train, resolve_config
    summary = train(resolve_config(overrides={"steps": 300}), out_dir="runs/quick")
"""

from __future__ import annotations

import json
import logging
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from minigpt import distributed, performance
from minigpt.atomic import atomic_write_text
from minigpt.checkpoint import load_checkpoint, restore_model, restore_optimizer, save_checkpoint
from minigpt.config import RunConfig, TrainConfig, apply_overrides
from minigpt.data import Batches, Splits, ensure_tinyshakespeare, load_corpus
from minigpt.diagnostics.probes import standard_probes
from minigpt.environment import describe, resolve_device
from minigpt.errors import MiniGPTError, TrainingStopped
from minigpt.model import MiniGPT
from minigpt.sample import sample_text
from minigpt.schedule import lr_at
from minigpt.tokenizer import AnyTokenizer, tokenizer_from_dict

log = logging.getLogger(__name__)


# --- the pieces the loop calls -------------------------------------------------------------


def make_optimizer(model: torch.nn.Module, t: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or SGD with momentum; weight decay on >=2-D weights only (not biases, norms)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": t.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    if t.optimizer == "adamw":  # fused: one kernel for the whole update (and see step_if_finite)
        fused = params[0].device.type in ("cpu", "cuda")
        return torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), fused=fused)
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum)
    raise MiniGPTError(f"unknown optimizer {t.optimizer!r} (use adamw or sgd)")


def step_if_finite(optimizer: torch.optim.Optimizer, grad_norm: torch.Tensor) -> torch.Tensor:
    """optimizer.step(), unless the gradient norm is NaN or inf: then nothing changes, neither
    the weights nor the optimizer's state. Returns 1 for a skipped step, else 0, as a tensor.

    Fused AdamW decides on the device (the `found_inf` input it shares with torch.amp's
    GradScaler), so the loop never waits for the device; other optimizers look at the norm on
    the host."""
    skipped = (~torch.isfinite(grad_norm)).float()
    if optimizer.defaults.get("fused") and isinstance(optimizer, torch.optim.Adam):
        optimizer.found_inf = skipped
        optimizer.step()
    elif not skipped.item():
        optimizer.step()
    return skipped


def schedule_lr(t: TrainConfig, step: int) -> float:
    return lr_at(step, lr=t.lr, total_steps=t.steps, schedule=t.schedule,
                 warmup_steps=t.warmup_steps, min_lr=t.min_lr)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def clip_gradients(model: torch.nn.Module, max_norm: float) -> torch.Tensor:
    """Rescale all gradients so their global L2 norm is at most max_norm (0 = no clipping);
    return the norm before clipping, as a tensor (no host sync)."""
    params = [p for p in model.parameters() if p.grad is not None]
    if max_norm > 0:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad)
                                                 for p in params]))


@torch.no_grad()
def estimate_loss(model: MiniGPT, batches: Batches, split: str, n_batches: int) -> float:
    """Mean loss over n random batches of a split, in eval mode; the model's mode is restored."""
    was_training = model.training
    model.eval()
    losses = torch.stack([model(*batches.get_batch(split))[1] for _ in range(n_batches)])
    model.train(was_training)
    return losses.mean().item()


@torch.no_grad()
def split_loss(model: MiniGPT, data: np.ndarray, block_size: int, batch_size: int,
               device: torch.device) -> float:
    """Mean loss over every token of a split, read as non-overlapping windows of block_size
    (the last one shorter): the figure a run reports. The split is read one batch of windows
    at a time, so a sharded split of any size is never loaded whole."""
    was_training = model.training
    model.eval()
    n_targets = len(data) - 1
    per_batch = batch_size * block_size
    total, count = 0.0, 0
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
    model.train(was_training)
    return total / count


@dataclass
class EarlyStopping:
    """Stop after `patience` evaluations without an improvement of more than min_delta."""

    patience: int
    min_delta: float = 0.0
    best: float = math.inf
    bad_evals: int = 0

    def update(self, val_loss: float) -> bool:
        """Record an evaluation; True when it improved on the best so far."""
        if val_loss < self.best - self.min_delta:
            self.best, self.bad_evals = val_loss, 0
            return True
        self.bad_evals += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_evals >= self.patience


def check_initial_loss(loss: float, vocab_size: int) -> None:
    """A fresh model should be near-uniform: loss ~ ln(vocab). Far from it means a bug."""
    expected = math.log(vocab_size)
    if abs(loss - expected) > 0.5:
        log.warning(f"step 0 loss {loss:.3f} is far from ln({vocab_size}) = {expected:.3f}: "
                    f"check the initialisation and the data")


# --- a run: its folder, its state, its files --------------------------------------------------


@dataclass
class Run:
    """Everything a training run holds, built by `prepare_run`."""

    cfg: RunConfig
    out_dir: Path
    device: torch.device
    tokenizer: AnyTokenizer
    splits: Splits
    batches: Batches
    model: MiniGPT
    optimizer: torch.optim.Optimizer
    stopper: EarlyStopping
    step: int = 0  # steps completed
    info: dict = field(default_factory=dict)
    last_val: float = math.nan  # the latest validation estimate, for the progress bar
    env: dict = field(default_factory=dict)  # versions, device, threads
    probes: list = field(default_factory=list)  # minigpt.diagnostics.probes
    skipped: int = 0  # batches skipped for non-finite gradients (as of the last log line)
    dtype: torch.dtype = torch.float32  # the forward pass's compute precision
    train_model: torch.nn.Module | None = None  # the model, or its torch.compile wrapper
    peak_flops: float = 0.0  # measured matmul FLOP/s of all processes: the denominator of MFU
    world: distributed.World = field(default_factory=distributed.World)  # processes (torchrun)
    time_before: float = 0.0  # training wall seconds before this process (a resumed run's)
    started: float = field(default_factory=time.perf_counter)  # when this process's loop began

    def elapsed(self) -> float:
        """Wall seconds of training so far, evaluation included, across resumptions."""
        return self.time_before + time.perf_counter() - self.started

    def rng_state(self) -> dict[str, torch.Tensor]:
        """Every process's batch generators and torch RNG, keyed rank<r>_<name> (a collective
        call: every process must make it)."""
        mine = {f"batches_{k}": g.get_state() for k, g in self.batches.generators.items()}
        mine["torch"] = torch.get_rng_state()
        if self.device.type == "cuda":
            mine["cuda"] = torch.cuda.get_rng_state(self.device).cpu()
        states = distributed.gather(mine, self.world)
        return {f"rank{r}_{k}": v for r, state in enumerate(states) for k, v in state.items()}

    def set_rng_state(self, rng: dict[str, torch.Tensor]) -> None:
        prefix = f"rank{self.world.rank}_"
        for k, g in self.batches.generators.items():
            g.set_state(rng[f"{prefix}batches_{k}"])
        torch.set_rng_state(rng[f"{prefix}torch"])
        if self.device.type == "cuda" and f"{prefix}cuda" in rng:
            torch.cuda.set_rng_state(rng[f"{prefix}cuda"], self.device)

    def save(self, tags: list[str]) -> None:
        """A checkpoint (every process calls this; rank 0 writes it)."""
        rng = self.rng_state()
        if not self.world.is_main:
            return
        meta = {
            "step": self.step,
            "world_size": self.world.size,
            "train": vars(self.cfg.train),
            "data": vars(self.cfg.data),
            "tokenizer": self.tokenizer.to_dict(),
            "early_stopping": {"best": self.stopper.best, "bad_evals": self.stopper.bad_evals},
            "skipped_batches": self.skipped,
            "time_s": self.elapsed(),
        }
        save_checkpoint(self.out_dir / "checkpoints", tags, self.model, self.optimizer, meta,
                        rng, keep=self.cfg.train.keep)

    def mfu(self, tokens_per_s: float) -> float:
        """Model FLOPs utilisation at this throughput, against the peak measured at the start."""
        flops = performance.train_flops_per_token(self.cfg.model)
        return round(performance.mfu(tokens_per_s, flops, self.peak_flops), 4)

    def record(self, row: dict) -> None:
        """Append the row to metrics.jsonl and show it to the probes (rank 0 only)."""
        if not self.world.is_main:
            return
        with open(self.out_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        for probe in self.probes:
            probe.on_row(self, row)


def default_run_dir(cfg: RunConfig) -> Path:
    name = Path(cfg.data.text).stem if cfg.data.text else "shakespeare"
    return Path("runs") / f"{name}-{datetime.now():%Y%m%d-%H%M%S}"


def resume_config(run_dir: str | Path, overrides: dict | None = None) -> RunConfig:
    """The configuration a run was saved with, with training settings changed by overrides
    (e.g. more steps); the model and data cannot change under a resumed run."""
    meta = load_checkpoint(Path(run_dir) / "checkpoints", "last").meta
    cfg = RunConfig()
    apply_overrides(cfg, {"model": meta["model"], "train": meta["train"], "data": meta["data"]},
                    f"checkpoint in {run_dir}")
    locked = set(vars(cfg.model)) | set(vars(cfg.data))
    if bad := sorted(set(overrides or {}) & locked):
        raise MiniGPTError(f"cannot change {', '.join(bad)} when resuming a run")
    apply_overrides(cfg, {"train": dict(overrides or {})}, "command line")
    return cfg


def build_run(cfg: RunConfig, out_dir: Path) -> Run:
    """Data, tokenizer, a freshly initialised model (seeded), optimizer and batches; no files
    are written but the token cache. Under torchrun, this process joins the others here."""
    world = distributed.world_from_env()
    device = distributed.start(world, resolve_device(cfg.train.device))
    with distributed.main_first(world):  # rank 0 writes the token cache, the others read it
        text_path = Path(cfg.data.text) if cfg.data.text else ensure_tinyshakespeare()
        splits, tokenizer, info = load_corpus(text_path, cfg.data.tokenizer,
                                              cfg.model.vocab_size, cfg.data.val_fraction)
    splits.check(cfg.model.block_size)
    cfg.data.tokenizer = info["tokenizer"]  # a prepared folder brings its own
    cfg.model.vocab_size = tokenizer.vocab_size  # BPE may learn fewer than asked for
    torch.manual_seed(cfg.train.seed)
    model = MiniGPT.from_config(cfg.model).to(device)
    optimizer = make_optimizer(model, cfg.train)
    accum = cfg.train.grad_accum  # this process's streams: one per micro-batch of a step
    streams = tuple(range(world.rank * accum, (world.rank + 1) * accum))
    batches = Batches(splits, cfg.train.batch_size, cfg.model.block_size, cfg.train.seed, device,
                      streams)
    stopper = EarlyStopping(cfg.train.patience, cfg.train.min_delta)
    run = Run(cfg, out_dir, device, tokenizer, splits, batches, model, optimizer, stopper,
              world=world)
    run.info = info | {"params": model.num_params()}
    run.dtype = performance.choose_dtype(cfg.train.dtype, device)
    use_compile = performance.choose_compile(cfg.train.compile, device)
    performance.configure_backends(device)
    run.train_model = distributed.wrap(performance.compiled(model, use_compile), world, device)
    run.env = describe(device) | {"dtype": str(run.dtype).removeprefix("torch."),
                                  "compile": use_compile, "processes": world.size}
    return run


def prepare_run(cfg: RunConfig, out_dir: str | Path | None = None,
                resume: bool = False) -> Run:
    """A run ready to train: its folder, config.json and tokenizer.json written, and when
    resuming, everything restored from the `last` checkpoint."""
    out_dir = Path(out_dir) if out_dir else default_run_dir(cfg)
    if not resume and (out_dir / "checkpoints").exists():
        raise MiniGPTError(f"{out_dir} already holds a run: resume it with --resume {out_dir}, "
                           f"or choose another --out")
    run = build_run(cfg, out_dir)
    if resume:
        restore(run, "last")
    if not run.world.is_main:
        return run
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MiniGPTError(f"cannot create run folder {out_dir}: {e.strerror}") from None
    if resume:
        for name in ("metrics.jsonl", "gradflow.jsonl", "samples.jsonl"):
            truncate_log(out_dir / name, run.step)  # lines after the checkpoint come again
    else:
        run.tokenizer.save(out_dir / "tokenizer.json")
    config_record = {"config": cfg.to_dict(), "data": run.info, "environment": run.env}
    atomic_write_text(out_dir / "config.json", json.dumps(config_record, indent=2) + "\n")
    return run


def open_run(run_dir: str | Path, tag: str = "best", device: str = "auto") -> Run:
    """A run as it was at one of its checkpoints, for the diagnostic commands (model in eval
    mode, optimizer state, batches from its text); nothing in the folder changes."""
    cfg = resume_config(run_dir)
    cfg.train.device = device
    run = build_run(cfg, Path(run_dir))
    restore(run, tag)
    run.model.eval()
    return run


def restore(run: Run, tag: str = "last") -> None:
    """Load a checkpoint into the run: weights, optimizer, RNG streams and loop state."""
    ckpt = load_checkpoint(run.out_dir / "checkpoints", tag)
    if tokenizer_from_dict(ckpt.meta["tokenizer"]) != run.tokenizer:
        raise MiniGPTError("the text's vocabulary differs from the checkpoint's; resume with the "
                           "same --text the run was trained on")
    saved = (ckpt.meta["world_size"], ckpt.meta["train"]["grad_accum"])
    if saved != (run.world.size, run.cfg.train.grad_accum):
        raise MiniGPTError(f"the run was trained by {saved[0]} process(es) with --grad-accum "
                           f"{saved[1]}; resume it the same way to continue its batch streams")
    restore_model(run.model, ckpt)
    restore_optimizer(run.optimizer, ckpt)
    run.set_rng_state(ckpt.section("rng"))
    run.step = ckpt.meta["step"]
    run.stopper.best = ckpt.meta["early_stopping"]["best"]
    run.stopper.bad_evals = ckpt.meta["early_stopping"]["bad_evals"]
    run.skipped = ckpt.meta["skipped_batches"]
    run.time_before = ckpt.meta.get("time_s", 0.0)  # 0 for checkpoints older than this field


def truncate_log(path: Path, step: int) -> None:
    """Keep only the lines of steps before `step` (those the checkpoint includes)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line)["step"] < step]
    atomic_write_text(path, "".join(line + "\n" for line in kept))


# --- the loop -------------------------------------------------------------------------------


def train(cfg: RunConfig, out_dir: str | Path | None = None, resume: bool = False,
          progress: bool = True, probes: list | None = None) -> dict:
    """Train a MiniGPT as cfg says; write the run folder; return the summary.

    `probes` replaces the diagnostics the config asks for (see minigpt.diagnostics.probes).
    Under torchrun every process calls this; rank 0 alone prints and writes files."""
    run = prepare_run(cfg, out_dir, resume)
    try:
        return train_run(run, progress, probes)
    finally:
        distributed.stop(run.world)


def train_run(run: Run, progress: bool = True, probes: list | None = None) -> dict:
    cfg, t = run.cfg, run.cfg.train
    if run.world.is_main:
        run.probes = standard_probes(run) if probes is None else probes
    for probe in run.probes:
        probe.start(run)
    model = run.train_model  # the MiniGPT, or its torch.compile / DDP wrapper (same parameters)
    optimizer, batches = run.optimizer, run.batches
    run.peak_flops = performance.peak_flops(run.device, run.dtype) * run.world.size
    log_start(run)

    bar = tqdm(total=t.steps, initial=run.step, unit="step", dynamic_ncols=True, leave=False,
               disable=None if progress and run.world.is_main else True)
    tokens_per_step = t.batch_size * cfg.model.block_size * t.grad_accum * run.world.size
    meter = Throughput(tokens_per_step, run.step)
    nonfinite = torch.zeros((), device=run.device)  # skipped batches, counted on the device
    run.started = time.perf_counter()
    set_lr(optimizer, schedule_lr(t, run.step))
    model.train()

    with StopSignals() as signals:
        for step in range(run.step, t.steps):
            lr = optimizer.param_groups[0]["lr"]
            optimizer.zero_grad(set_to_none=True)
            loss = torch.zeros((), device=run.device)  # this step's loss, over its micro-batches
            for micro in range(t.grad_accum):  # gradients add up over grad_accum micro-batches
                xb, yb = batches.get_batch("train", micro)  # 1. a batch of (B, T) inputs, targets
                with distributed.sync_gradients(model, micro == t.grad_accum - 1):
                    with performance.autocast(run.device, run.dtype):  # bf16 where chosen
                        logits, micro_loss = model(xb, yb)  # 2. forward and loss
                    (micro_loss / t.grad_accum).backward()  # 3. backward: d loss / d parameters
                loss += micro_loss.detach() / t.grad_accum
            grad_norm = clip_gradients(model, t.grad_clip)
            nonfinite += step_if_finite(optimizer, grad_norm)  # 4. step: update the weights
            set_lr(optimizer, schedule_lr(t, step + 1))  # 5. schedule the next step's rate
            run.step = step + 1
            bar.update()

            last = run.step == t.steps
            logged = step % t.log_every == 0 or step % t.eval_every == 0 or last
            if logged:
                row = log_step(run, step, loss, lr, grad_norm, meter, bar)
                check_nonfinite(run, step, int(nonfinite.item()), row)
                if step % t.eval_every == 0 or last:
                    evaluate(run, row, bar)
                run.record(row)  # metrics.jsonl, plots, probes
                meter.pause()  # evaluation and probes are not training throughput
                if run.stopper.should_stop:  # every process evaluated alike: all stop here
                    log.info(f"early stopping at step {step}: no improvement for "
                             f"{run.stopper.patience} evaluations (best {run.stopper.best:.4f})")
                    break
            if signals.agreed(run.world, run.device, logged):  # Ctrl-C or SIGTERM: stop
                break
    bar.close()
    if signals.stopping:
        stop_on_signal(run, signals.signum)
    return finish(run, meter)


def log_start(run: Run) -> None:
    """The run's environment, data and model, in three lines."""
    cfg, t, env = run.cfg, run.cfg.train, run.env
    procs = f"{run.world.size} processes x " if run.world.enabled else ""
    log.info(f"run folder {run.out_dir} | torch {env['torch']} on {procs}{env['device']}, "
             f"{env['torch_threads']} threads ({env['cpu_capability']}), {env['dtype']} forward"
             f"{', compiled' if env['compile'] else ''}; matmul peak measured "
             f"{run.peak_flops / 1e9:,.0f} GFLOP/s")
    log.info(f"data: {run.info['text']}: vocab {run.tokenizer.vocab_size}, "
             f"{run.info['train_tokens']:,} train and {run.info['val_tokens']:,} val tokens")
    batch = f"batch {t.batch_size}"
    if t.grad_accum > 1 or run.world.enabled:
        batch += f" x {t.grad_accum} micro-steps x {run.world.size} processes"
    log.info(f"model: {run.info['params']:,} parameters on {run.device}; "
             f"{t.optimizer} lr {t.lr:g} ({t.schedule}), {batch} x "
             f"{cfg.model.block_size} tokens, {t.steps} steps")


class Throughput:
    """Tokens per second over the steps since the last reading."""

    def __init__(self, tokens_per_step: int, step: int):
        self.tokens_per_step = tokens_per_step
        self.total_s = 0.0
        self.total_steps = 0
        self.pause(step)

    def pause(self, step: int | None = None) -> None:
        self.t0 = time.perf_counter()
        if step is not None:
            self.step0 = step

    def read(self, step: int) -> float:
        """Tokens/s since the last read; the steps counted end at `step` (completed)."""
        elapsed = time.perf_counter() - self.t0
        steps = step - self.step0
        self.total_s += elapsed
        self.total_steps += steps
        self.t0, self.step0 = time.perf_counter(), step
        return steps * self.tokens_per_step / max(elapsed, 1e-9)

    @property
    def overall(self) -> float:
        return self.total_steps * self.tokens_per_step / max(self.total_s, 1e-9)


def log_step(run: Run, step: int, loss: torch.Tensor, lr: float, grad_norm: torch.Tensor,
             meter: Throughput, bar) -> dict:
    """The metrics line for this step (with check_nonfinite, the only place the loop waits for
    the device)."""
    tokens_per_s = meter.read(run.step)
    loss = distributed.mean(loss, run.world)  # every process's batches count
    row = {"step": step, "train_loss": finite_or_none(loss.item()), "lr": lr,
           "grad_norm": finite_or_none(grad_norm.item()), "tokens_per_s": round(tokens_per_s),
           "mfu": run.mfu(tokens_per_s), "time_s": round(run.elapsed(), 2)}
    if step == 0 and row["train_loss"] is not None:
        check_initial_loss(row["train_loss"], run.tokenizer.vocab_size)
    show_progress(bar, row, run.last_val)
    return row


def finite_or_none(x: float) -> float | None:
    """JSON has no NaN or infinity: a non-finite value is written as null."""
    return x if math.isfinite(x) else None


def check_nonfinite(run: Run, step: int, total: int, row: dict) -> None:
    """Batches whose gradients were NaN or inf were skipped (step_if_finite left the weights
    alone); beyond --skip-nonfinite of them, stop: the last checkpoint is the last good state."""
    new, run.skipped = total - run.skipped, total
    if not new:
        return
    t = run.cfg.train
    what = (f"step {step}: {new} batch(es) since the last log line had a gradient that is not "
            f"finite (now: loss {fmt(row['train_loss'], '.4g')}, gradient norm "
            f"{fmt(row['grad_norm'], '.4g')})")
    if run.skipped > t.skip_nonfinite:
        raise MiniGPTError(
            f"{what}; stopped (last checkpoint: {run.out_dir / 'checkpoints'}). Likely cause: "
            f"learning rate {optimizer_lr(run):.3g} too high; try a lower --lr, "
            f"--grad-clip 1.0, or --skip-nonfinite N")
    log.warning(f"{what}: skipped ({run.skipped} of {t.skip_nonfinite} allowed)")


def optimizer_lr(run: Run) -> float:
    return run.optimizer.param_groups[0]["lr"]


class StopSignals:
    """The first SIGINT (Ctrl-C) or SIGTERM lets the current step finish, then the loop saves a
    checkpoint and stops; a second one stops at once (files are only ever renamed into place,
    so nothing is left half-written). Under torchrun the processes agree to stop at the next
    log line, so that they all stop after the same step."""

    def __enter__(self) -> StopSignals:
        self.received: int | None = None
        self.stopping = False
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self.handle)
        return self

    def handle(self, signum, frame) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum
        log.warning(f"{signal.Signals(signum).name}: finishing this step, then saving a "
                    f"checkpoint (again to stop at once)")

    def agreed(self, world: distributed.World, device: torch.device, logged: bool) -> bool:
        """Whether to stop after this step: at once in one process; under torchrun, at a log
        line, when any process got a signal (a collective call, made by all at the same step)."""
        if world.enabled:
            if logged:
                self.stopping = distributed.any_process(self.received is not None, world, device)
        else:
            self.stopping = self.received is not None
        return self.stopping

    @property
    def signum(self) -> int:
        return self.received or signal.SIGTERM

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def stop_on_signal(run: Run, signum: int) -> None:
    run.save(["last"])
    log.warning(f"stopped at step {run.step} by {signal.Signals(signum).name}; checkpoint saved. "
                f"Continue with: minigpt train --resume {run.out_dir}")
    raise TrainingStopped(signum)


def show_progress(bar, row: dict, val: float) -> None:
    bar.set_postfix(loss=fmt(row["train_loss"], ".3f"), val=f"{val:.3f}", lr=f"{row['lr']:.2e}",
                    tok_s=f"{row['tokens_per_s']:,}", mfu=f"{row['mfu']:.0%}", refresh=False)


def fmt(x: float | None, spec: str) -> str:
    return "nan" if x is None else format(x, spec)


def evaluate(run: Run, row: dict, bar) -> None:
    """Validation loss on random batches; early-stopping bookkeeping; checkpoints."""
    val = estimate_loss(run.model, run.batches, "val", run.cfg.train.eval_batches)
    row["val_loss"] = run.last_val = val
    improved = run.stopper.update(val)
    run.save(["last", "best"] if improved else ["last"])
    show_progress(bar, row, val)
    log.info(f"step {row['step']:>5} | train {fmt(row['train_loss'], '.4f')} | val {val:.4f} | "
             f"lr {row['lr']:.2e} | {row['tokens_per_s']:,} tok/s, MFU {row['mfu']:.0%} | "
             f"{row['time_s']:.0f} s"
             + (" | best" if improved else ""))


def finish(run: Run, meter: Throughput) -> dict:
    """The whole-split validation loss, summary.json, and a sample from the final model (all
    on rank 0; the other processes are done)."""
    cfg = run.cfg
    if not run.world.is_main:
        return {"steps": run.step}
    wall_s = run.elapsed()
    final = split_loss(run.model, run.splits.val, cfg.model.block_size, 64, run.device)
    summary = {
        "final_val_loss": final,
        "best_val_loss": run.stopper.best,
        "steps": run.step,
        "wall_s": round(wall_s, 2),
        "tokens_per_s": round(meter.overall),
        "mfu": run.mfu(meter.overall),
        "params": run.info["params"],
    }
    atomic_write_text(run.out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    log.info(f"final validation loss (whole split, {run.info['val_tokens']:,} tokens): "
             f"{final:.4f}; best estimate {run.stopper.best:.4f}; {run.step} steps in "
             f"{wall_s:.0f} s, {summary['tokens_per_s']:,} tok/s, MFU {summary['mfu']:.0%}")
    for probe in run.probes:
        probe.end(run, summary)
    if cfg.train.sample_tokens:
        text = sample_text(run.model, run.tokenizer, "ROMEO:", cfg.train.sample_tokens,
                           seed=cfg.train.seed)
        log.info("sample:\n" + text)
    log.info(f"continue it with: minigpt sample --run {run.out_dir} --prompt \"ROMEO:\"")
    return summary
