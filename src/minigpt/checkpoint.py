"""The one way to save and load a checkpoint: tensors in safetensors, everything else in JSON.

A run's `checkpoints/` folder holds

    step-000500.safetensors   model weights ("model.*"), optimizer state ("optim.*"),
                              random-generator states ("rng.*"): tensors only, no pickle
    step-000500.json          which file, its sha256, the configs, the tokenizer, the
                              optimizer's hyper-parameters and the loop's state (the step,
                              early stopping, skipped batches, time)
    last.json, best.json      copies of the newest and the best step's JSON

Each file is written to a temporary name and renamed; the JSONs are written after the tensors,
so they only ever name a complete tensor file, and loading checks the sha256 they record. The
newest `keep` steps and the best one are kept; older ones are removed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load, save_file

from minigpt.config import (
    SECTIONS,
    RunConfig,
    apply_overrides,
    asked_settings,
    by_section,
    validate,
)
from minigpt.corpus import is_prepared
from minigpt.environment import resolve_device
from minigpt.errors import MiniGPTError, last_line
from minigpt.files import (
    as_path,
    atomic_path,
    atomic_write_text,
    folder_holds,
    lock_holder,
    os_error,
    remove_temporaries,
    resolved,
    sha256_file,
)
from minigpt.model import MiniGPT
from minigpt.tokenizer import AnyTokenizer, tokenizer_from_dict

log = logging.getLogger(__name__)

FORMAT = "minigpt-checkpoint/1"


@dataclass
class Checkpoint:
    meta: dict
    tensors: dict[str, torch.Tensor]

    def section(self, prefix: str) -> dict[str, torch.Tensor]:
        """The tensors saved under `prefix.`, with the prefix removed."""
        n = len(prefix) + 1
        return {k[n:]: v for k, v in self.tensors.items() if k.startswith(prefix + ".")}


def model_tensors(model: MiniGPT) -> dict[str, torch.Tensor]:
    """The state dict, with a tied lm_head stored once (as token_emb.weight)."""
    sd = model.state_dict()
    if model.config.tie_weights:
        sd.pop("lm_head.weight")
    return {k: v.detach().cpu().contiguous() for k, v in sd.items()}


def optimizer_tensors_and_groups(opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Split an optimizer's state into tensors (for safetensors) and plain values (for JSON)."""
    sd = opt.state_dict()
    tensors, plain = {}, {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                plain[f"{pid}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "plain_state": plain}


def restore_optimizer(opt: torch.optim.Optimizer, ckpt: Checkpoint) -> None:
    """The saved state (moments, step counts) into `opt`, whose hyper-parameters stay those it
    was made with: the run's settings, which a resume may change (--beta2, --weight-decay)."""
    asked = [{k: v for k, v in group.items() if k != "params"} for group in opt.param_groups]
    saved = ckpt.meta["optimizer"]
    state: dict[int, dict] = {}
    for flat, value in [*ckpt.section("optim").items(), *saved["plain_state"].items()]:
        pid, key = flat.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    opt.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
    for group, settings in zip(opt.param_groups, asked, strict=True):
        group.update(settings)


def save_checkpoint(folder: str | Path, tags: list[str], model: MiniGPT,
                    optimizer: torch.optim.Optimizer, meta: dict,
                    rng: dict[str, torch.Tensor], keep: int = 1,
                    averaged: MiniGPT | None = None) -> None:
    """Write step-<step>.safetensors and its JSON, point each tag (last, best) at it, and
    remove all but the newest `keep` steps and those a tag names. `averaged`: the moving
    average of the weights (--ema), saved beside them. `meta` must hold at least "step" (an
    int) and "tokenizer" (its to_dict()), as load_checkpoint asks; configs and loop state
    travel with it (not the checkpoint's own keys: format, file, sha256, model, optimizer).
    What load_checkpoint would refuse is refused before anything is written."""
    folder = Path(folder)
    tags = tags if isinstance(tags, str) else list(tags)
    if isinstance(tags, str) or not all(isinstance(t, str) and re.fullmatch(r"[\w.-]+", t)
                                        and t.strip(".") for t in tags):
        raise MiniGPTError(f"tags must be a list of names (['last'], ['last', 'best']), got "
                           f"{tags!r}")
    if not isinstance(meta.get("step"), int) or meta["step"] < 0 or not isinstance(
            meta.get("tokenizer"), dict):
        raise MiniGPTError("a checkpoint's meta must hold 'step' (an int >= 0) and 'tokenizer' "
                           "(a tokenizer's to_dict())")
    # what save_checkpoint writes itself: another format or file would be refused at loading
    if taken := sorted(meta.keys() & {"format", "file", "sha256", "model", "optimizer"}):
        raise MiniGPTError(f"a checkpoint's meta may not hold {', '.join(map(repr, taken))}: "
                           f"save_checkpoint writes the checkpoint's own")
    opt_tensors, opt_meta = optimizer_tensors_and_groups(optimizer)
    path = folder / f"step-{meta['step']:06d}.safetensors"
    record = {"format": FORMAT, "file": path.name, "sha256": None, **meta,
              "model": vars(model.config), "optimizer": opt_meta}
    try:
        json.dumps(record)
    except (TypeError, ValueError) as e:  # a tokenizer object, a numpy int in the config, ...
        raise MiniGPTError(f"a checkpoint's meta must be plain JSON values: {e}") from None
    tensors = {f"model.{k}": v for k, v in model_tensors(model).items()}
    tensors |= {f"optim.{k}": v for k, v in opt_tensors.items()}
    tensors |= {f"rng.{k}": v.cpu() for k, v in rng.items()}
    if averaged is not None:
        tensors |= {f"ema.{k}": v for k, v in model_tensors(averaged).items()}
    with atomic_path(path) as tmp:  # makes the folder too
        try:
            save_file(tensors, str(tmp), metadata={"format": FORMAT})
        except Exception as e:  # safetensors reports a failed write (a full disk) its own way
            raise os_error(e, tmp) from None
    record["sha256"] = sha256_file(path)
    text = json.dumps(record, indent=1) + "\n"
    for tag in [path.stem, *tags]:
        atomic_write_text(folder / f"{tag}.json", text)
    prune(folder, keep)


def saved_steps(folder: Path) -> list[str]:
    """The names of a checkpoints folder's step checkpoints, oldest first (by number:
    step-1000000 after step-999999). A name minigpt does not write (step-notes.json) is not
    one of them, so pruning never removes it."""
    stems = [p.stem for p in folder.glob("step-*.json") if p.stem[5:].isdigit()]
    return sorted(stems, key=lambda stem: int(stem[5:]))


def prune(folder: Path, keep: int) -> None:
    """Keep the newest `keep` steps and the steps last.json and best.json name; remove the
    other steps and any temporary file a killed writer left behind."""
    steps = saved_steps(folder)
    named = set(steps[-keep:]) if keep > 0 else set()
    for tag in ("last", "best"):
        if (folder / f"{tag}.json").exists():
            try:
                record = json.loads((folder / f"{tag}.json").read_text(encoding="utf-8"))
                named.add(Path(record["file"]).stem)
            except (ValueError, KeyError, TypeError):  # damaged: which step it needs is unknown
                log.warning(f"{folder / tag}.json is damaged: no checkpoint removed")
                named = set(steps)
    for stem in set(steps) - named:
        (folder / f"{stem}.safetensors").unlink(missing_ok=True)
        (folder / f"{stem}.json").unlink()
    remove_temporaries(folder)


def find_checkpoint(folder: str | Path, tag: str = "last") -> Path:
    """The JSON of a tag's checkpoint in a run's checkpoints folder, or a one-line error."""
    folder = Path(folder)
    meta_path = folder / f"{tag}.json"
    if not meta_path.is_file():
        if (folder / "checkpoints").is_dir():  # load_checkpoint given a run folder
            raise MiniGPTError(f"{folder} is a run folder: its checkpoints are in "
                               f"{folder / 'checkpoints'} (load_model takes the run folder)")
        if not folder.exists() and any(folder.parent.glob("*.json")) and \
                folder.parent.name == "checkpoints":  # load_model given a checkpoints folder
            raise MiniGPTError(f"{folder.parent} is a checkpoints folder: give its run folder, "
                               f"{folder.parent.parent}")
        if not folder.parent.is_dir():
            raise MiniGPTError(f"{folder.parent} is a file, not a run folder" if
                               folder.parent.exists() else f"no run folder {folder.parent}")
        check_holds_a_run(folder.parent)
        if folder.name == "checkpoints" and not any(folder.glob("*.json")):  # none, or none
            # left there (deleted, a first save killed): not "no 'best' checkpoint in X"
            check_not_starting(folder.parent)
            raise MiniGPTError(f"{folder.parent} holds no checkpoints: not a run folder, or a "
                               f"run stopped before its first")
        other = next((t for t in ("best", "last") if t != tag and (folder / f"{t}.json").is_file()),
                     None)
        raise MiniGPTError(f"no '{tag}' checkpoint in {folder}"
                           + (f" (it has a '{other}' one)" if other else ""))
    return meta_path


def check_not_starting(folder: Path) -> None:
    """Refuse a run folder with no checkpoint yet whose run is starting there (its lock held)."""
    if pid := lock_holder(folder):
        raise MiniGPTError(f"{folder} holds a run starting to train (process {pid}): it has no "
                           f"checkpoint until its first evaluation; try again in a moment")


def check_holds_a_run(folder: Path) -> None:
    """Refuse a folder that holds something else minigpt made: a comparison, a corpus, ..."""
    if (what := folder_holds(folder)) not in (None, "a training run"):
        busy = f" (in use by another minigpt process, pid {pid})" if (  # (a prepare, a compare)
            pid := lock_holder(folder)) else ""
        raise MiniGPTError(f"{folder} holds {what}{busy}, not a training run: no checkpoint to "
                           f"load there")


def load_checkpoint(folder: str | Path, tag: str = "last") -> Checkpoint:
    """Read a tag's JSON and its tensor file, verifying the sha256; one-line errors only."""
    folder = Path(folder)
    meta_path = find_checkpoint(folder, tag)
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if not isinstance(meta, dict):
            raise ValueError(f"a JSON object was expected, got {type(meta).__name__}")
        if meta.get("format") != FORMAT:
            raise ValueError(f"unknown format {meta.get('format')!r}")
        for key, kind in (("file", str), ("step", int), ("model", dict), ("tokenizer", dict)):
            if not isinstance(meta.get(key), kind):
                raise ValueError(f"{key!r} is missing or not a {kind.__name__}")
        tensor_path = folder / meta["file"]
        if Path(meta["file"]).name != meta["file"]:
            raise ValueError("tensor file must sit beside the JSON")
    except (ValueError, TypeError) as e:
        raise MiniGPTError(f"checkpoint {meta_path} is not readable: {e}") from None
    if not tensor_path.is_file():
        raise MiniGPTError(f"checkpoint file {tensor_path} is missing")
    data = tensor_path.read_bytes()  # read once: the bytes checked are the bytes loaded
    if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
        raise MiniGPTError(f"checkpoint file {tensor_path} does not match its recorded sha256 "
                           f"(damaged or modified)")
    try:
        tensors = load(data)  # (from bytes: safetensors opens only paths that are UTF-8)
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise MiniGPTError(f"checkpoint file {tensor_path} is not valid safetensors: {e}") from None
    return Checkpoint(meta, tensors)


def restore_model(model: MiniGPT, ckpt: Checkpoint, section: str = "model") -> None:
    """The weights saved under `section` (model: the trained weights; ema: their average)."""
    try:
        missing, unexpected = model.load_state_dict(ckpt.section(section), strict=False)
    except RuntimeError as e:  # shape mismatch: a checkpoint of another architecture
        raise MiniGPTError(f"checkpoint does not fit the model: {last_line(e)}") from None
    allowed_missing = {"lm_head.weight"} if model.config.tie_weights else set()
    if set(missing) - allowed_missing or unexpected:
        raise MiniGPTError(f"checkpoint does not fit the model: missing {sorted(missing)}, "
                           f"unexpected {sorted(unexpected)}")


def load_model(run_dir: str | Path, tag: str = "best",
               device: str | torch.device = "cpu") -> tuple[MiniGPT, AnyTokenizer, dict]:
    """A trained model (in eval mode), its tokenizer and the checkpoint's metadata. The model
    is the final model: the weights' moving average where the run kept one (--ema). `device`:
    a torch.device, or a name as the commands take it (auto, cpu, cuda:1, ...)."""
    device = resolve_device(device) if isinstance(device, str) else device
    ckpt = load_checkpoint(as_path(run_dir, "run_dir") / "checkpoints", tag)
    cfg = RunConfig()  # its model settings, each checked as a config file's would be
    apply_overrides(cfg, {"model": ckpt.meta["model"]}, f"checkpoint in {run_dir}")
    model = MiniGPT.from_config(cfg.model)
    restore_model(model, ckpt, "ema" if ckpt.section("ema") else "model")
    tokenizer = tokenizer_from_dict(ckpt.meta["tokenizer"])
    return model.to(device).eval(), tokenizer, ckpt.meta


def resume_config(run_dir: str | Path, overrides: dict | None = None, preset: str | None = None,
                  config_file: str | None = None,
                  sections: dict[str, type] = SECTIONS) -> RunConfig:
    """The configuration a run was saved with, and what a resuming command asks on top of it
    (its preset, config file and flags, in that order): training settings, and those of the
    sections beyond the core's, may change (more steps, say); a model or data setting may be
    repeated as the run has it (a path naming the same file counts as the same) but not
    changed: the error names each change. The text may move: a checkpoint that keeps its
    tokens' fingerprint takes another path to the same tokens (restore checks them)."""
    meta = load_checkpoint(as_path(run_dir, "run_dir") / "checkpoints", "last").meta
    check_resumable(meta, run_dir)
    cfg = RunConfig.with_sections(sections)
    saved = {key: meta[key] for key in ("model", "train", "data")}
    saved |= {name: values for name, values in meta.get("extra", {}).items() if name in cfg.extra}
    apply_overrides(cfg, saved, f"checkpoint in {run_dir}")
    table = by_section(asked_settings(preset, config_file, overrides, sections), sections)
    fixed = {sec: table.pop(sec) for sec in ("model", "data") if sec in table}
    fingerprinted = "tokens_sha256" in meta
    changes = [f"{key} from {getattr(cfg.sections()[sec], key)!r} to {value!r}"
               for sec, values in fixed.items() for key, value in values.items()
               if not same_setting(cfg, sec, key, value, fingerprinted)]
    if (seed := table.get("train", {}).get("seed", cfg.train.seed)) != cfg.train.seed:
        changes.append(f"seed from {cfg.train.seed} to {seed} (the batch streams and random "
                       f"state go on from the checkpoint)")
    # (a preset fits its model to the time budget: a longer one, another model)
    refuse_changes(changes, "; resume without --preset: the run keeps its own settings"
                   if preset else "")
    if moved := fixed.get("data", {}).get("text"):
        table["data"] = {"text": moved}
    apply_overrides(cfg, table)
    validate(cfg)
    return cfg


def check_resumable(meta: dict, run_dir: str | Path) -> None:
    """Refuse a checkpoint that holds a model but not the state of the run that trained it
    (saved by save_checkpoint alone, or by a minigpt before the parts kept their state)."""
    kinds = {"train": dict, "data": dict, "parts": dict, "world_size": int}
    if not all(isinstance(meta.get(key), kind) for key, kind in kinds.items()):
        raise MiniGPTError(f"{run_dir} holds a model but not its training run's state (its "
                           f"settings, batch streams and clock): sample, attention and export "
                           f"read it, but train --resume and gradflow cannot")


def refuse_changes(changes: list[str], hint: str = "") -> None:
    """A resumed run's model and data stay as they were: refuse the changes asked of them
    ('n_layer from 4 to 6'), if any, in one line."""
    if changes:
        raise MiniGPTError(f"cannot change {'; '.join(changes)} when resuming a run (its model "
                           f"and data stay as they were){hint}")


def same_setting(cfg: RunConfig, section: str, key: str, value,
                 fingerprinted: bool = False) -> bool:
    """Whether a model or data setting, as a command gives it, is what the run has: paths
    compared once resolved, or any path where the checkpoint keeps the tokens' fingerprint
    (fingerprinted: the tokens are checked instead); the vocabulary size, which the text and
    tokenizer set, never counts as a change (nor the tokenizer of a prepared folder, which
    brings its own)."""
    have = getattr(getattr(cfg, section), key)
    if key == "vocab_size" or (key == "tokenizer" and bool(cfg.data.text)
                               and is_prepared(cfg.data.text)):
        return True
    if key == "text":
        return fingerprinted or (resolved(Path(value).expanduser()) == resolved(have)
                                 if value and have else value == have)
    return value == have
