"""Side-by-side training runs: the lesson's "SGD vs Adam", schedules, clipping on and off.

Every variant starts from the same initial weights and sees the same batches (same seed), so
the curves differ only by what was varied. Each variant is an ordinary run folder under the
comparison folder; `compare.png` overlays their curves and `compare.json` holds the table.
"""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path

from minigpt.config import RunConfig, apply_overrides, validate
from minigpt.diagnostics.plots import plot_overlay, read_metrics
from minigpt.diagnostics.probes import standard_probes
from minigpt.errors import MiniGPTError
from minigpt.files import atomic_write_text
from minigpt.trainer import train


def parse_axis(text: str | None, key: str) -> list[dict]:
    """'sgd:0.5,adamw' -> [{'optimizer': 'sgd', 'lr': 0.5}, {'optimizer': 'adamw'}] for the
    optimizer axis; '1.0,0' -> [{'grad_clip': 1.0}, {'grad_clip': 0.0}] for clipping, etc."""
    if not text:
        return []
    out = []
    for item in text.split(","):
        name, _, lr = item.strip().partition(":")
        if not name:
            raise MiniGPTError(f"empty item in the {key} list {text!r}")
        try:
            value = float(name) if key == "grad_clip" else name
            variant = {key: value}
            if lr:
                variant["lr"] = float(lr)
        except ValueError:
            raise MiniGPTError(f"cannot read {item!r} in the {key} list {text!r}") from None
        out.append(variant)
    return out


def variants(optimizers: str | None = None, schedules: str | None = None,
             clips: str | None = None) -> dict[str, dict]:
    """Every combination of the given axes, named by what it changes."""
    axes = [a for a in (parse_axis(optimizers, "optimizer"), parse_axis(schedules, "schedule"),
                        parse_axis(clips, "grad_clip")) if a]
    if not axes:
        raise MiniGPTError("nothing to compare: give --optimizers, --schedules or --clip")
    out = {}
    for combo in itertools.product(*axes):
        overrides = {k: v for part in combo for k, v in part.items()}
        name = " ".join(_label(k, v) for k, v in overrides.items())
        out[name] = overrides
    return out


def _label(key: str, value) -> str:
    if key == "grad_clip":
        return f"clip {value:g}" if value else "no clip"
    if key == "lr":
        return f"lr {value:g}"
    return str(value)


def compare(base: RunConfig, runs: dict[str, dict], out_dir: str | Path,
            progress: bool = True) -> list[dict]:
    """Train each variant of `base`; return (and save) one table row per variant."""
    out_dir = Path(out_dir)
    configs = {}
    for name, overrides in runs.items():
        cfg = copy.deepcopy(base)
        apply_overrides(cfg, {"train": overrides}, f"variant {name!r}")
        cfg.train.patience = 0  # every variant runs its full length
        validate(cfg)
        configs[name] = cfg
    table = []
    for i, (name, cfg) in enumerate(configs.items()):
        folder = out_dir / f"{i}-{name.replace(' ', '_').replace(':', '_')}"
        result = train(cfg, folder, probes=standard_probes(cfg), progress=progress)
        table.append({"variant": name, "folder": folder.name, **result.summary})
    curves = {row["variant"]: read_metrics(out_dir / row["folder"] / "metrics.jsonl")
              for row in table}
    plot_overlay(curves, out_dir / "compare.png", title=", ".join(runs))
    atomic_write_text(out_dir / "compare.json", json.dumps(table, indent=2) + "\n")
    return table


def format_table(table: list[dict]) -> str:
    width = max(len(r["variant"]) for r in table)
    lines = [f"{'variant':<{width}}  final val  best val  train s",
             f"{'-' * width}  ---------  --------  -------"]
    for r in table:
        lines.append(f"{r['variant']:<{width}}  {r['final_val_loss']:9.4f}  "
                     f"{r['best_val_loss']:8.4f}  {r['train_s']:7.1f}")
    return "\n".join(lines)
