"""A training run: what it is made of, its folder, and its checkpoints.

`build_run` makes the parts from a config (data, tokenizer, model, optimizer, batches, the
loop's state and clock); `save` and `restore` are the checkpoint of a run: each part that has
state across a resume gives it (`state_dict`) and takes it back (`load_state_dict`), and the
checkpoint (minigpt.checkpoint) simply collects them. A run folder holds config.json,
tokenizer.json, metrics.jsonl, checkpoints/, summary.json and run.lock (held while a command
uses the folder); probes add their own files.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from minigpt import distributed, performance, precision
from minigpt.checkpoint import (
    check_holds_a_run,
    check_resumable,
    find_checkpoint,
    load_checkpoint,
    refuse_changes,
    restore_model,
    restore_optimizer,
    resume_config,
    same_setting,
    save_checkpoint,
    saved_steps,
)
from minigpt.clock import Clock
from minigpt.config import RunConfig, read_config_file
from minigpt.data import Batches, Splits, cache_dir, ensure_tinyshakespeare, load_corpus
from minigpt.environment import describe, resolve_device
from minigpt.errors import MiniGPTError, continue_in_python, launcher, shell_path
from minigpt.evaluate import target_bytes, unigram_entropy
from minigpt.files import (
    atomic_write_text,
    file_on_path,
    folder_holds,
    lock_folder,
    lock_holder,
    remove_temporaries,
    resolved,
    truncate_jsonl,
)
from minigpt.model import MiniGPT
from minigpt.optim import make_optimizer
from minigpt.schedule import batch_shape
from minigpt.tokenizer import AnyTokenizer, tokenizer_from_dict


@dataclass
class TrainState:
    """Where the loop is, besides the weights, the optimizer, the batches and the clock."""

    step: int = 0  # optimizer steps done
    best_val: float = math.inf  # the best validation estimate so far
    bad_evals: int = 0  # evaluations since it last improved (early stopping)
    skipped: int = 0  # batches skipped for NaN or inf gradients
    skipped_logged: int = 0  # of those, the ones the metrics rows have told of
    tokens: int = 0  # tokens trained on (every process's)
    clipped: int = 0  # steps since the last metrics row whose gradient the clip scaled down
    reached: dict = field(default_factory=dict)  # target loss -> seconds when first reached

    def record_eval(self, val_loss: float, min_delta: float = 0.0) -> bool:
        """Note an evaluation; True when it beats the best by more than min_delta."""
        if val_loss < self.best_val - min_delta:
            self.best_val, self.bad_evals = val_loss, 0
            return True
        self.bad_evals += 1
        return False

    def record_targets(self, val_loss: float, targets: list[float], seconds: float) -> dict:
        """The targets this evaluation reaches for the first time, with the seconds so far."""
        new = {f"{x:g}": round(seconds, 2) for x in targets
               if val_loss <= x and f"{x:g}" not in self.reached}
        self.reached.update(new)
        return new

    def out_of_patience(self, patience: int) -> bool:
        """Early stopping: `patience` evaluations in a row without improvement (0 = never)."""
        return patience > 0 and self.bad_evals >= patience

    def state_dict(self) -> dict:
        return {**asdict(self), "skipped": int(self.skipped),  # (the loop's counters: tensors)
                "clipped": int(self.clipped)}

    def load_state_dict(self, state: dict) -> None:  # (a state saved before skipped_logged:
        self.__init__(**{"skipped_logged": state.get("skipped", 0), **state})  # its rows told)
        for f in fields(self):  # (a checkpoint's JSON edited by hand: said, not met later)
            value, kind = getattr(self, f.name), {"int": int, "float": (int, float)}.get(f.type)
            if isinstance(value, bool) or not isinstance(value, kind or dict) or (
                    f.type == "int" and value < 0):
                raise ValueError(f"parts.state.{f.name} is {value!r}, not "
                                 + ("a whole number >= 0" if f.type == "int" else f"a {f.type}"))


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
    data: dict  # the text, its token counts, the tokenizer, the parameters
    model: MiniGPT
    optimizer: torch.optim.Optimizer
    batches: Batches
    env: dict  # versions, device, threads: logged at the start, saved in config.json
    state: TrainState = field(default_factory=TrainState)
    clock: Clock = field(default_factory=Clock)
    probes: list = field(default_factory=list)  # what else records the run (rank 0 only)
    ema: WeightAverage | None = None  # --ema: the weights' moving average
    kept: dict = field(default_factory=dict)  # the checkpoint's sections cfg lacks (such as
    # [diag] to resume_config(folder)): saved again as they were, for the command line's resume
    started: float = 0.0  # perf_counter() when build_run began: the summary's wall_s

    @property
    def final_model(self) -> MiniGPT:
        """The model evaluated, sampled and saved for use: the average where there is one."""
        return self.ema.model if self.ema is not None else self.model


def checked_probes(probes, folder: Path) -> list:
    """train's `probes` as a list, each asked whether it can write in `folder` (check), or one
    error before anything is written (such as standard_probes uncalled, which the loop would
    find no start in after its files)."""
    hooks = ("check", "start", "on_row", "end", "state_dict", "load_state_dict")
    if isinstance(probes, (str, bytes)) or not hasattr(probes, "__iter__"):
        raise MiniGPTError(f"probes must be a list of probes (such as standard_probes(cfg) "
                           f"makes), got {type(probes).__name__}")
    probes = list(probes)
    for probe in probes:
        if not all(callable(getattr(probe, hook, None)) for hook in hooks):
            name = type(probe).__name__  # (a MyProbe, an OlderProbe)
            raise MiniGPTError(f"probes must be a list of probes (such as standard_probes"
                               f"(cfg) makes), got {'an' if name[0] in 'AEIOUaeiou' else 'a'} "
                               f"{name} in it")
    for probe in probes:  # (--tensorboard under a name that is not UTF-8, say)
        probe.check(folder)
    return probes


class WeightAverage:
    """An exponential moving average of the model's weights (--ema), through torch's
    AveragedModel: after each step, average = decay * average + (1 - decay) * weights."""

    def __init__(self, model: MiniGPT, decay: float):
        self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))

    @property
    def model(self) -> MiniGPT:
        return self.averaged.module

    def update(self, model: MiniGPT) -> None:
        self.averaged.update_parameters(model)

    def state_dict(self) -> dict:  # the weights travel in the checkpoint's tensors
        return {"n_averaged": int(self.averaged.n_averaged)}

    def load_state_dict(self, state: dict) -> None:
        self.averaged.n_averaged.fill_(state["n_averaged"])


def default_run_dir(cfg: RunConfig) -> Path:
    """runs/<text>-<date>-<time> (see fresh_folder)."""
    return fresh_folder(Path(cfg.data.text).stem if cfg.data.text else "shakespeare")


def fresh_folder(name: str) -> Path:
    """runs/<name>-<date>-<time>, with -2, -3, ... after it where a run started in the same
    second (a sweep's) has the name already; made here, empty, so that no process started
    beside this one takes it too (see removed_if_left_empty). Under torchrun, rank 0 makes it
    and the other processes, which write nothing there, take the first name."""
    first = Path("runs") / f"{name}-{datetime.now():%Y%m%d-%H%M%S}"
    if not distributed.world_from_env().is_main:
        return first
    make_folder(first.parent)  # (runs/ a file, or a link to nowhere: said, once)
    names = (first.with_name(f"{first.name}-{n}") for n in itertools.count(2))
    for folder in itertools.chain([first], names):
        with contextlib.suppress(FileExistsError):
            folder.mkdir()
            return folder


@contextmanager
def removed_if_left_empty(folder: Path) -> Iterator[Path]:
    """`folder`, one fresh_folder made, for the block; removed if the block fails before
    anything is written there (a --text not found, say), and runs/ too if that leaves it
    empty: a command that failed at once leaves no folder behind."""
    try:
        yield folder
    except BaseException:
        with contextlib.suppress(OSError):
            if distributed.world_from_env().is_main:  # (under torchrun, rank 0 made it)
                folder.rmdir()  # (an empty folder only)
                folder.parent.rmdir()
        raise


def check_eval_batches(eval_batches: int, val_tokens: int) -> None:
    """More random batches an evaluation than the validation split has tokens reads each token
    more than a batch's tokens times over: a mistake, and one that could take years."""
    if eval_batches > val_tokens:
        raise MiniGPTError(f"--eval-batches {eval_batches:,} draws more batches an evaluation "
                           f"than the validation split has tokens ({val_tokens:,}): give fewer, "
                           f"or 0 to read the whole split once, exactly")


def build_run(cfg: RunConfig, folder: str | Path) -> Run:
    """Data, tokenizer, a freshly initialised model (seeded), optimizer and batches; nothing is
    written but the token cache. Under torchrun, this process joins the others here."""
    started = time.perf_counter()
    world = distributed.world_from_env()
    device = distributed.start(world, resolve_device(cfg.train.device))
    if cfg.data.text:  # as an absolute path: a resumed run finds it from anywhere
        cfg.data.text = str(resolved(Path(cfg.data.text).expanduser()))
    with distributed.main_first(world):  # rank 0 writes the token cache, the others read it
        text_path = Path(cfg.data.text) if cfg.data.text else ensure_tinyshakespeare()
        splits, tokenizer, data = load_corpus(text_path, cfg.data.tokenizer,
                                              cfg.model.vocab_size, cfg.data.val_fraction)
    cfg.data.tokenizer = data["tokenizer"]  # a prepared folder brings its own, and its split
    cfg.data.val_fraction = data["val_fraction"]
    cfg.model.vocab_size = tokenizer.vocab_size  # BPE may learn fewer than asked for
    check_eval_batches(cfg.train.eval_batches, data["val_tokens"])
    accum = cfg.train.grad_accum  # this process's streams: one per micro-batch of a step
    batches = Batches(splits, cfg.train.batch_size, cfg.model.block_size, cfg.train.seed, device,
                      streams=tuple(range(world.rank * accum, (world.rank + 1) * accum)))
    performance.check_model_fits(cfg, device)
    torch.manual_seed(cfg.train.seed)
    model = MiniGPT.from_config(cfg.model).to(device)
    if world.rank:  # the same weights in every process, but each its own dropout masks
        torch.manual_seed(cfg.train.seed + world.rank)
    dtype, why = settle_dtype(cfg, model, world, device)
    compiled = performance.choose_compile(cfg.train.compile, device)
    performance.configure_backends(device)
    env = describe(device) | {"dtype": precision.dtype_name(dtype), "dtype_why": why,
                              "compile": compiled, "processes": world.size}
    data |= {"params": model.num_params(),
             "val_bytes": target_bytes(splits.val, tokenizer.byte_lengths()),
             "unigram_nats": round(unigram_entropy(splits.train, tokenizer.vocab_size), 4)}
    return Run(cfg, Path(folder), world, device, dtype, tokenizer, splits, data, model,
               make_optimizer(model, cfg.train), batches, env,
               clock=Clock(device=device),
               ema=WeightAverage(model, cfg.train.ema) if cfg.train.ema else None,
               started=started)


def settle_dtype(cfg: RunConfig, model: MiniGPT, world: distributed.World,
                 device: torch.device) -> tuple[torch.dtype, str]:
    """The forward's precision (minigpt.precision), the same on every process, and why. The
    answer is written into the config, so that a resumed run computes as this one did."""
    if cfg.train.dtype == "auto" and device.type == "cpu":  # the probe runs the model: a run
        # too big even in the dtype it needs less memory in is refused first, not by malloc
        n = model.num_params()
        least = min(precision.DTYPES.values(),
                    key=lambda d: sum(performance.peak_memory(cfg, 0, n, d).values()))
        performance.check_memory(cfg, device, n, least)
    with distributed.main_first(world):  # rank 0 probes; on its machine the others read its cache
        dtype, why = precision.choose_dtype(cfg.train.dtype, device, model, cfg.train.batch_size,
                                            cache_dir() / "precision.json",
                                            batch_shape(cfg.train, cfg.model.block_size, 0, 0.0))
    if distributed.any_process(dtype == torch.float32, world):
        dtype = torch.float32
    cfg.train.dtype = precision.dtype_name(dtype)
    return dtype, why


def prepare_folder(run: Run, resume: bool) -> None:
    """The run folder ready for the loop (rank 0, holding its lock): a new one holds
    tokenizer.json; the metrics rows after the checkpoint are dropped (they come again; a new
    run in the folder of one stopped before its first checkpoint keeps none), and so is any
    temporary file a killed writer of a run there left; both get config.json."""
    if not run.world.is_main:
        return
    truncate_jsonl(run.folder / "metrics.jsonl", run.state.step)
    if resume or stopped_before_a_checkpoint(run.folder):  # (a run's folder, not any --out)
        remove_temporaries(run.folder)
    if not resume:
        run.tokenizer.save(run.folder / "tokenizer.json")
    record = {"config": run.cfg.to_dict() | run.kept, "data": run.data, "environment": run.env}
    atomic_write_text(run.folder / "config.json", json.dumps(record, indent=2) + "\n")


def stopped_before_a_checkpoint(folder: Path) -> bool:
    """Whether `folder` holds a minigpt run stopped before its first checkpoint: the run's
    config.json (its settings under "config"), no checkpoint (a killed first save's temporary
    file at most)."""
    try:
        read_config_file(folder / "config.json")  # (which refuses any other config.json)
    except MiniGPTError:
        return False
    return not any((folder / "checkpoints").glob("*.json"))


def check_can_resume(folder: Path) -> None:
    """Check that `folder` holds a run to resume (its last checkpoint), in one line if not."""
    check_holds_a_run(folder)  # (a corpus with a run's config.json copied in is no stopped run)
    if stopped_before_a_checkpoint(folder):
        check_not_training(folder, "wait for it to end")  # (starting: no checkpoint yet)
        raise MiniGPTError(f"{folder} holds a run stopped before its first checkpoint: nothing "
                           f"to resume; train it again with --out {shell_path(folder)}")
    check_last_tag(folder)
    find_checkpoint(folder / "checkpoints", "last")


def check_last_tag(folder: Path) -> None:
    """A run's checkpoints folder without last.json (a first save cut short by a full disk,
    say): neither resumable nor new; say how to go on."""
    checkpoints = folder / "checkpoints"
    if checkpoints.is_dir() and not (checkpoints / "last.json").exists():
        steps = saved_steps(checkpoints)
        raise MiniGPTError(f"{checkpoints} has no last.json (a save cut short, or deleted): "
                           + (f"copy its newest step, {steps[-1]}.json, to last.json to resume "
                              f"from it, or delete the folder to train again"
                              if steps else "delete the folder to train again"))


def make_folder(folder: Path) -> Path:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        what = "is a file" if folder.is_file() else e.strerror  # (File exists, said mkdir)
        raise MiniGPTError(f"cannot create run folder {folder}: {what}") from None
    return folder


def check_not_training(folder: Path, hint: str) -> None:
    """Refuse a folder another process is training in (it holds the folder's lock)."""
    if (pid := lock_holder(folder)) is not None:
        raise MiniGPTError(f"{folder} is in use by another minigpt process (pid {pid}), training "
                           f"there; {hint}")


def check_start(folder: Path, resume: bool) -> None:
    """train's `resume`, True or False (a truthy 'no' is no True), and its folder: a run to
    resume, or a folder a new run may be written in."""
    if not isinstance(resume, bool):
        raise MiniGPTError(f"resume must be True or False, got {resume!r}")
    (check_can_resume if resume else check_new_folder)(folder)


def check_new_folder(folder: Path, held: bool = False) -> None:
    """A new run's folder may exist, but not hold another run, nor anything else minigpt
    makes (a comparison, a prepared corpus); and a file on its path is said before the data
    is read and the model built. held: this process holds the folder's lock (its own hold is
    no other run training there)."""
    if file := file_on_path(folder):
        raise MiniGPTError(f"cannot create run folder {folder}: "
                           + ("is a file" if file == folder else f"{file} is a file"))
    what = folder_holds(folder)
    if what not in (None, "a training run"):
        raise MiniGPTError(f"{folder} holds {what}; choose another --out")
    if what and not held:
        check_not_training(folder, "wait for it to end, or choose another --out")
    if what and not stopped_before_a_checkpoint(folder):
        check_last_tag(folder)
        raise MiniGPTError(f"{folder} already holds a run: resume it with --resume "
                           f"{shell_path(folder)} (in Python: "
                           f"{continue_in_python(folder)}), or choose another --out")


@contextmanager
def hold_folder(run: Run, resume: bool) -> Iterator[None]:
    """The run folder, made and locked by rank 0 while the run trains (a second process there
    is refused at once; a new run, also when another finished there since train() checked);
    when rank 0 cannot, every process stops."""
    with contextlib.ExitStack() as held:
        refused = None
        try:
            if run.world.is_main:
                held.enter_context(lock_folder(make_folder(run.folder)))
                if not resume:
                    check_new_folder(run.folder, held=True)
        except (MiniGPTError, OSError) as e:
            refused = e
        if distributed.any_process(refused is not None, run.world):
            raise refused or MiniGPTError(f"the main process could not open {run.folder}")
        yield


# --- checkpoints: every part's state, collected ------------------------------------------------


def load_parts(run: Run, meta: dict, path: Path) -> None:
    """Each part's state, from a checkpoint's JSON: the training state and the clock, which
    must be there and of the checkpoint's step (a hand-edited or damaged JSON is refused in
    one line, not met later as a traceback or a run that starts over), and any other part's
    (a probe the checkpoint has no state for starts afresh)."""
    name = ""
    try:
        for name, part in parts_with_state(run).items():
            if name in meta["parts"] or name in ("state", "clock"):
                part.load_state_dict(meta["parts"][name])
        if isinstance(run.clock.before, bool) or not isinstance(run.clock.before, (int, float)):
            raise ValueError(f"parts.clock.seconds is {run.clock.before!r}, not a number")
        if run.state.step != meta["step"]:
            raise ValueError(f"its state is at step {run.state.step}, not {meta['step']}")
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        missing = ".".join(["parts", name, str(e.args[0])][:2 if e.args[0] == name else 3])
        what = f"{missing} is missing" if isinstance(e, KeyError) else str(e)
        raise MiniGPTError(f"checkpoint {path} is not readable: {what}") from None


def parts_with_state(run: Run) -> dict:
    """The parts whose state a checkpoint keeps in its JSON, by name (probes by their class)."""
    parts = {"state": run.state, "clock": run.clock}
    if run.ema is not None:
        parts["ema"] = run.ema
    return parts | {type(p).__name__: p for p in run.probes}


def tensors_of_process(run: Run) -> dict[str, torch.Tensor]:
    """This process's random generators: its batch streams and torch's."""
    mine = {f"batches_{k}": v for k, v in run.batches.state_dict().items()}
    mine["torch"] = torch.get_rng_state()
    if run.device.type == "cuda":
        mine["cuda"] = torch.cuda.get_rng_state(run.device).cpu()
    return mine


def save(run: Run, tags: list[str]) -> None:
    """A checkpoint of the run as it is (a collective call: every process makes it, and rank 0
    writes every process's random generators, keyed rank<r>_<name>)."""
    states = distributed.gather(tensors_of_process(run), run.world)
    if not run.world.is_main:
        return
    rng = {f"rank{r}_{k}": v for r, state in enumerate(states) for k, v in state.items()}
    meta = {"step": run.state.step, "world_size": run.world.size,
            "parts": {name: part.state_dict() for name, part in parts_with_state(run).items()},
            "train": vars(run.cfg.train), "data": vars(run.cfg.data),
            "extra": {name: vars(sec) for name, sec in run.cfg.extra.items()} | run.kept,
            "tokenizer": run.tokenizer.to_dict(), "tokens_sha256": run.data["tokens_sha256"]}
    save_checkpoint(run.folder / "checkpoints", tags, run.model, run.optimizer, meta, rng,
                    keep=run.cfg.train.keep, averaged=run.ema and run.ema.model)


def restore(run: Run, tag: str = "last", reading: bool = False) -> list[str]:
    """Load a checkpoint of the run's folder into its parts: weights, optimizer, random
    generators, and every part that keeps state (a probe the checkpoint has no state for
    starts afresh). reading: for a look, not to train on (a run of several processes is read
    in one, with rank 0's batch stream). Returns the settings that differ from the
    checkpoint's ('lr 0.01 -> 0.005'): those of [train] and of the sections beyond the core's."""
    ckpt = load_checkpoint(run.folder / "checkpoints", tag)
    check_resumable(ckpt.meta, run.folder)
    if tokenizer_from_dict(ckpt.meta["tokenizer"]) != run.tokenizer:
        raise MiniGPTError("the text's vocabulary differs from the checkpoint's; resume with the "
                           "same --text the run was trained on")
    changed = [f"{key} from {was!r} to {getattr(section, key)!r}"
               for name, section in (("model", run.cfg.model), ("data", run.cfg.data))
               for key, was in ckpt.meta[name].items()
               if hasattr(section, key)
               and not same_setting(run.cfg, name, key, was, "tokens_sha256" in ckpt.meta)]
    refuse_changes(changed)  # (resume_config refuses them for the command line; this, train())
    if ckpt.meta.get("tokens_sha256", run.data["tokens_sha256"]) != run.data["tokens_sha256"]:
        was = ckpt.meta["data"]["text"]
        what = ("changed since the run was trained on it" if same_setting(
            run.cfg, "data", "text", was) else
            f"is not the text the run was trained on, {was or 'TinyShakespeare'}")
        raise MiniGPTError(f"{run.data['text']} {what} (its tokens differ from the "
                           f"checkpoint's): resume with the text as it was, or train a new run")
    if (was := ckpt.meta["train"]["optimizer"]) != run.cfg.train.optimizer:
        raise MiniGPTError(f"the run was trained with {was}, whose state cannot continue "
                           f"under {run.cfg.train.optimizer}: resume with --optimizer {was}, or "
                           f"start a new run")
    saved = (ckpt.meta["world_size"], ckpt.meta["train"]["grad_accum"])
    if saved != (run.world.size, run.cfg.train.grad_accum) and not reading:
        raise MiniGPTError(f"the run was trained by {saved[0]} process(es) with --grad-accum "
                           f"{saved[1]}; resume it the same way to continue its batch streams: "
                           f"{launcher(saved[0])} train --resume {shell_path(run.folder)}")
        # (no --grad-accum: --resume restores it, resume_config starting from the checkpoint's)
    restore_model(run.model, ckpt)
    if run.ema is not None:  # --ema turned on at this resume: the average starts from here
        restore_model(run.ema.model, ckpt, "ema" if ckpt.section("ema") else "model")
    restore_optimizer(run.optimizer, ckpt)
    prefix = f"rank{run.world.rank}_"
    mine = {k.removeprefix(prefix): v for k, v in ckpt.section("rng").items()
            if k.startswith(prefix)}
    run.batches.load_state_dict({k.removeprefix("batches_"): v for k, v in mine.items()
                                 if k.startswith("batches_")})
    torch.set_rng_state(mine["torch"])
    if run.device.type == "cuda" and "cuda" in mine:
        torch.cuda.set_rng_state(mine["cuda"], run.device)
    load_parts(run, ckpt.meta, run.folder / "checkpoints" / f"{tag}.json")
    t = run.cfg.train
    if not t.time_budget and t.steps < run.state.step:  # (its config.json would say so)
        raise MiniGPTError(f"the run is at step {run.state.step:,}, past --steps {t.steps:,}: "
                           f"give a larger --steps to train on")
    saved = {"train": ckpt.meta["train"], **ckpt.meta.get("extra", {})}
    run.kept = {name: values for name, values in saved.items() if name not in run.cfg.sections()}
    now = {"train": vars(t), **{k: vars(v) for k, v in run.cfg.extra.items()}}
    return [f"{key} {was!r} -> {now[sec][key]!r}" for sec, values in saved.items()
            for key, was in values.items() if sec in now and now[sec].get(key, was) != was]


def open_run(run_dir: str | Path, tag: str = "best", device: str = "auto") -> Run:
    """A run as it was at one of its checkpoints, for the diagnostic commands: the model (in
    eval mode), its optimizer's state, batches from its text; nothing in the folder changes."""
    cfg = resume_config(run_dir)
    cfg.train.device = device
    run = build_run(cfg, run_dir)
    restore(run, tag, reading=True)
    run.model.eval()
    return run
