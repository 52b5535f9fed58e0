"""The one way to save and load a checkpoint: tensors in safetensors, everything else in JSON.

A run's `checkpoints/` folder holds

    step-000500.safetensors   model weights ("model.*"), optimizer state ("optim.*"),
                              random-generator states ("rng.*"): tensors only, no pickle
    last.json, best.json      which file, its sha256, the step, the configs, the tokenizer,
                              the optimizer's hyper-parameters and the loop's state

Each file is written to a temporary name and renamed; the JSON is written last, so it only ever
names a complete tensor file, and loading checks the sha256 it records.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from minigpt.atomic import atomic_path, atomic_write_text
from minigpt.config import ModelConfig
from minigpt.data import sha256_file
from minigpt.errors import MiniGPTError
from minigpt.model import MiniGPT
from minigpt.tokenizer import CharTokenizer

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
    saved = ckpt.meta["optimizer"]
    state: dict[int, dict] = {}
    for flat, value in [*ckpt.section("optim").items(), *saved["plain_state"].items()]:
        pid, key = flat.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    opt.load_state_dict({"state": state, "param_groups": saved["param_groups"]})


def save_checkpoint(folder: str | Path, tags: list[str], model: MiniGPT,
                    optimizer: torch.optim.Optimizer, meta: dict,
                    rng: dict[str, torch.Tensor]) -> Path:
    """Write step-<step>.safetensors, then point each tag (last, best) at it; prune the rest.

    `meta` must hold at least "step"; configs, tokenizer and loop state travel with it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    opt_tensors, opt_meta = optimizer_tensors_and_groups(optimizer)
    tensors = {f"model.{k}": v for k, v in model_tensors(model).items()}
    tensors |= {f"optim.{k}": v for k, v in opt_tensors.items()}
    tensors |= {f"rng.{k}": v.cpu() for k, v in rng.items()}
    name = f"step-{meta['step']:06d}.safetensors"
    with atomic_path(folder / name) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT})
    record = {"format": FORMAT, "file": name, "sha256": sha256_file(folder / name),
              **meta, "model": vars(model.config), "optimizer": opt_meta}
    for tag in tags:
        atomic_write_text(folder / f"{tag}.json", json.dumps(record, indent=1) + "\n")
    _prune(folder)
    return folder / name


def _prune(folder: Path) -> None:
    """Remove tensor files that no tag names any more."""
    named = {json.loads(p.read_text())["file"] for p in folder.glob("*.json")}
    for p in folder.glob("step-*.safetensors"):
        if p.name not in named:
            p.unlink()


def load_checkpoint(folder: str | Path, tag: str = "last") -> Checkpoint:
    """Read a tag's JSON and its tensor file, verifying the sha256; one-line errors only."""
    folder = Path(folder)
    meta_path = folder / f"{tag}.json"
    if not meta_path.is_file():
        raise MiniGPTError(f"no '{tag}' checkpoint in {folder}")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            raise ValueError(f"unknown format {meta.get('format')!r}")
        tensor_path = folder / meta["file"]
        if Path(meta["file"]).name != meta["file"]:
            raise ValueError("tensor file must sit beside the JSON")
    except (ValueError, KeyError, TypeError) as e:
        raise MiniGPTError(f"checkpoint {meta_path} is not readable: {e}") from None
    if not tensor_path.is_file():
        raise MiniGPTError(f"checkpoint file {tensor_path} is missing")
    if sha256_file(tensor_path) != meta.get("sha256"):
        raise MiniGPTError(f"checkpoint file {tensor_path} does not match its recorded sha256 "
                           f"(damaged or modified)")
    try:
        tensors = load_file(str(tensor_path))
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise MiniGPTError(f"checkpoint file {tensor_path} is not valid safetensors: {e}") from None
    return Checkpoint(meta, tensors)


def restore_model(model: MiniGPT, ckpt: Checkpoint) -> None:
    weights = ckpt.section("model")
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as e:  # shape mismatch: a checkpoint of another architecture
        first = str(e).strip().splitlines()[-1].strip()
        raise MiniGPTError(f"checkpoint does not fit the model: {first}") from None
    allowed_missing = {"lm_head.weight"} if model.config.tie_weights else set()
    if set(missing) - allowed_missing or unexpected:
        raise MiniGPTError(f"checkpoint does not fit the model: missing {sorted(missing)}, "
                           f"unexpected {sorted(unexpected)}")


def load_model(run_dir: str | Path, tag: str = "best",
               device: str | torch.device = "cpu") -> tuple[MiniGPT, CharTokenizer, dict]:
    """A trained model (in eval mode), its tokenizer and the checkpoint's metadata."""
    ckpt = load_checkpoint(Path(run_dir) / "checkpoints", tag)
    model = MiniGPT.from_config(ModelConfig(**ckpt.meta["model"]))
    restore_model(model, ckpt)
    tokenizer = CharTokenizer.from_dict(ckpt.meta["tokenizer"])
    return model.to(device).eval(), tokenizer, ckpt.meta
