"""Side-by-side training runs: the lesson's "SGD vs Adam" made general. Any set of config
variants (optimizers, schedules, clipping, model options, presets) trained with the same seed
on the same budget of steps or seconds: an ablation.

    minigpt compare --time-budget 180 --variant lesson --variant +rope:pos=rope \
        --variant +rope+muon:pos=rope,optimizer=muon --variant fast:preset=fast

Every variant built from the same model starts from the same initial weights and sees the same
batches, so the curves differ only by what was varied. Each variant is an ordinary run folder
under the comparison folder; `compare.png` overlays the validation curves against steps and
against seconds of training, and `compare.json` holds the table: each variant's loss at the
end and the seconds it took to reach each target loss. Run again after an interruption, the
same command keeps the variants already trained and continues the one that was stopped.
"""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

from minigpt.config import (
    field_index,
    parse_targets,
    read_config_file,
    resolve_config,
    suggest,
)
from minigpt.console import fmt
from minigpt.diagnostics.plots import plot_overlay
from minigpt.diagnostics.probes import SECTIONS, standard_probes
from minigpt.errors import Diverged, MiniGPTError, TrainingStopped
from minigpt.files import atomic_write_text, folder_holds, lock_folder, read_jsonl
from minigpt.trainer import train

log = logging.getLogger("minigpt")


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
            variant = {key: float(name) if key == "grad_clip" else name}
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
        raise MiniGPTError("nothing to compare: give --variant, --optimizers, --schedules or "
                           "--clip")
    combos = ({k: v for part in combo for k, v in part.items()}
              for combo in itertools.product(*axes))
    return by_name([(" ".join(_label(k, v) for k, v in overrides.items()), overrides)
                    for overrides in combos], " by the axes")  # --clip 1,1.0: one name twice


def by_name(named: list[tuple[str, dict]], how: str) -> dict[str, dict]:
    """(name, settings) pairs as a dict, refusing a name given twice (one would silently
    replace the other); `how` ends the error."""
    names = [name for name, _ in named]
    if twice := sorted({repr(n) for n in names if names.count(n) > 1}):
        raise MiniGPTError(f"variant name(s) {', '.join(twice)} given twice{how}")
    return dict(named)


def _label(key: str, value) -> str:
    if key == "grad_clip":
        return f"clip {value:g}" if value else "no clip"
    if key == "lr":
        return f"lr {value:g}"
    return str(value)


def parse_variant(text: str) -> tuple[str, dict]:
    """'+rope+muon:pos=rope,optimizer=muon' -> ('+rope+muon', {'pos': 'rope', 'optimizer':
    'muon'}); a bare name changes nothing; 'preset=NAME' starts the variant from that preset."""
    name, _, settings = text.partition(":")
    if not name.strip():
        raise MiniGPTError(f"a variant needs a name before its settings, got {text!r}")
    index = field_index(SECTIONS)
    overrides = {}
    for item in filter(None, (x.strip() for x in settings.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise MiniGPTError(f"variant {name!r}: {item!r} is not KEY=VALUE, such as pos=rope "
                               f"(commas part the settings, so no value holds one: give such a "
                               f"setting to every variant, in a --config file)")
        if key not in index and key != "preset":
            raise MiniGPTError(f"variant {name!r}: unknown setting '{key}'{suggest(key, index)}")
        try:
            overrides[key] = value.strip() if key == "preset" else typed(key, value.strip())
        except MiniGPTError as e:
            raise MiniGPTError(f"variant {name!r}: {e}") from None
    return name.strip(), overrides


def typed(key: str, text: str):
    """A setting's value from its text, as the setting's type (true/false for a switch)."""
    f = field_index(SECTIONS)[key][1]
    read = f.metadata.get("parse", type(f.default))  # a duration's reads 30m
    try:
        if read is bool:
            return {"true": True, "false": False, "1": True, "0": False}[text.lower()]
        return read(text)
    except (KeyError, ValueError):
        kind = {"int": "an integer", "float": "a number", "bool": "true or false"}.get(
            read.__name__, f"a {read.__name__.replace('_', ' ')}")
        raise MiniGPTError(f"{key}={text!r}: not {kind}") from None


def compare(variants: dict[str, dict], out_dir: str | Path, preset: str = "seed",
            config_file: str | None = None, common: dict | None = None,
            progress: bool = True) -> list[dict]:
    """Train each variant (settings over `common` over the config file over the preset, or the
    variant's own preset); return (and save) one table row per variant."""
    out_dir = Path(out_dir)
    configs = {}
    for name, overrides in variants.items():
        overrides = dict(overrides)
        start = overrides.pop("preset", preset)  # a variant's own preset, or the comparison's
        asked = {**(common or {}), **overrides}
        if "patience" in asked:  # (early stopping would end each variant somewhere else)
            raise MiniGPTError("compare trains every variant its full length: it takes no "
                               "patience (early stopping)")
        try:  # patience 0: to the end, every one
            configs[name] = cfg = resolve_config(start, config_file, {**asked, "patience": 0},
                                                 SECTIONS)
        except MiniGPTError as e:  # (a value of its own, or of the settings all share)
            raise MiniGPTError(f"variant {name!r}: {e}") from None
        if cfg.train.time_budget and "time_budget" not in asked:  # a preset's, or a file's
            log.warning(f"{name}: a time budget of {cfg.train.time_budget:g} s ends it, not "
                        f"its steps (time_budget=0 in the variant trains it by steps)")
    alike: dict[str, list[str]] = {}
    for name, cfg in configs.items():
        alike.setdefault(json.dumps(cfg.to_dict(), sort_keys=True), []).append(name)
    for names in alike.values():
        if len(names) > 1:  # (a variant that meant to change a preset's setting to its own)
            log.warning(f"{' and '.join(names)} have the same settings: they train alike (or "
                        f"apart only by chance, under a time budget)")
    folders = {name: out_dir / (f"{i}-" + "".join(c if c.isalnum() or c in "+-." else "_"
                                                 for c in name))
               for i, name in enumerate(configs)}
    with lock_folder(out_dir):  # one compare in a folder at a time: a second is refused
        claim(out_dir, {name: cfg.to_dict() for name, cfg in configs.items()}, folders.values())
        table, curves = train_variants(configs, folders, out_dir, progress)
        if per_byte := tokenizers_differ(table):  # a token of one is not a token of another
            log.warning("the variants' tokenizers differ, so their losses (nats per token) do not "
                        "compare: compare.png and the table compare validation bits per byte")
        plot_overlay(curves, out_dir / "compare.png", title=", ".join(variants), per_byte=per_byte)
        atomic_write_text(out_dir / "compare.json", json.dumps(table, indent=2) + "\n")
    return table


def train_variants(configs: dict, folders: dict[str, Path], out_dir: Path,
                   progress: bool) -> tuple[list[dict], dict[str, list[dict]]]:
    """Each variant trained (or kept, where an earlier compare trained it): the table's rows
    and each variant's metrics."""
    table, curves = [], {}
    for name, cfg in configs.items():
        folder = folders[name]
        if (folder / "summary.json").is_file():  # trained by an earlier, interrupted compare
            log.warning(f"{name}: trained before, in {folder}; kept")
            summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
        else:  # a variant stopped part-way continues from its last checkpoint
            resume = (folder / "checkpoints" / "last.json").is_file()
            try:
                summary = train(cfg, folder, resume=resume, probes=standard_probes(cfg),
                                progress=progress).summary
            except TrainingStopped as e:  # (not the variant's own train(..., resume=True))
                raise TrainingStopped(e.signum, f"{name}: checkpoint saved; the same compare "
                                                f"call, with out_dir={str(out_dir)!r}, "
                                                f"continues the comparison", e.folder,
                                      e.steps, e.processes) from None
            except Diverged as e:  # an answer, not a failure (SGD at a rate too high, say)
                log.warning(f"{name}: diverged at step {e.step}; the comparison goes on")
                summary = diverged_summary(folder, cfg, e.step)
            except MiniGPTError as e:  # (its text not found, say): which variant's
                raise MiniGPTError(f"variant {name}: {e}") from None
        trained = read_config_file(folder)  # its settings as trained: its vocabulary's size
        tokenizer = f"{trained['data']['tokenizer']}, vocab {trained['model']['vocab_size']:,}"
        table.append({"variant": name, "folder": folder.name, "tokenizer": tokenizer, **summary})
        curves[name] = read_jsonl(folder / "metrics.jsonl")
    return table, curves


def diverged_summary(folder: Path, cfg, step: int) -> dict:
    """A table row's figures for a variant that diverged at `step`: no final loss, the best
    of its evaluations and its seconds from its metrics, the steps it took (that one the last)
    and the step it diverged at (not saved: the same compare, run again, trains it again from
    its last checkpoint)."""
    rows = read_jsonl(folder / "metrics.jsonl")
    losses = [r["val_loss"] for r in rows if r.get("val_loss") is not None]
    return {"final_val_loss": None, "final_val_bpb": None,
            "best_val_loss": min(losses, default=None), "steps": step + 1,
            "train_s": rows[-1].get("time_s", 0.0) if rows else 0.0,
            "time_to": {f"{x:g}": None for x in parse_targets(cfg.train.targets)},
            "diverged": step}


def difference(was: dict, now: dict) -> str:
    """The first way two comparisons' settings (variant -> section -> key -> value) differ,
    in words: 'its variants were a, b', or "a's lr was 0.001, not 0.002"."""
    if list(was) != list(now):
        return f"its variants were {', '.join(was)}"
    for name, sections in now.items():
        for section in {**was[name], **sections}:
            before, after = was[name].get(section, {}), sections.get(section, {})
            for key in {**before, **after}:
                if before.get(key) != after.get(key):
                    return f"{name}'s {key} was {before.get(key)!r}, not {after.get(key)!r}"
    return "its settings were others"


def claim(out_dir: Path, settings: dict, folders) -> None:
    """Write the settings of every variant (variants.json) before the first is trained, so
    that the same command, run again after an interruption or a failure, continues the
    comparison; refuse a folder that holds a comparison of other variants or settings, or,
    for a new comparison, a variant's folder (a run it did not train would stand for it)."""
    path = out_dir / "variants.json"
    if (what := folder_holds(out_dir)) not in (None, "a comparison"):
        raise MiniGPTError(f"{out_dir} holds {what}; choose another --out")
    earlier = path.is_file()  # a comparison was begun here
    if earlier and list(json.loads(path.read_text(encoding="utf-8")).items()) == \
            list(settings.items()):  # (in order: a variant's folder is numbered by its place)
        return  # the same comparison: it continues
    if earlier and any(p.is_dir() and folder_holds(p) for p in out_dir.iterdir()):
        was = json.loads(path.read_text(encoding="utf-8"))
        raise MiniGPTError(f"{out_dir} holds a comparison of other variants or settings "
                           f"({difference(was, json.loads(json.dumps(settings)))}), some "
                           f"trained; choose another --out, or run that comparison's command "
                           f"to continue it")
    # a new comparison, or one that failed before any checkpoint (the corrected command takes
    # its place): a variant's folder may be one it began (a run's config.json), no other
    if taken := [f for f in folders
                 if f.exists() and not (earlier and (f / "config.json").is_file())]:
        raise MiniGPTError(f"{taken[0]} exists, and no comparison there trained it; choose "
                           f"another --out")
    atomic_write_text(path, json.dumps(settings, indent=1) + "\n")


def tokenizers_differ(table: list[dict]) -> bool:
    return len({r.get("tokenizer") for r in table}) > 1


def _loss(x: float | None, width: int) -> str:
    """A loss in its column: 1.5147; a diverged run's 1.94e+06; nan for none."""
    return fmt(x, f"{width}.4f") if x is None or abs(x) < 1e4 else f"{x:{width}.2e}"


def format_table(table: list[dict]) -> str:
    """Each variant's losses (and its final validation bits per byte, where the variants'
    tokenizers differ), steps, seconds of training and seconds to each target (in nats per
    byte of text; -: not reached; n/a: not among the variant's targets)."""
    per_byte = tokenizers_differ(table)
    width = max(len("variant"), *(len(r["variant"]) for r in table))
    targets = list(dict.fromkeys(x for r in table for x in r.get("time_to", {})))  # all
    header = (f"{'variant':<{width}}  final val{'  val bpb' * per_byte}  best val   steps  "
              f"train s" + "".join(f"  {'to ' + x:>7}" for x in targets))
    lines = [header, "-" * len(header)]
    for r in table:
        reached = "".join(f"  {_seconds(r['time_to'][x]) if x in r['time_to'] else 'n/a':>7}"
                          for x in targets)  # n/a: a target this variant did not track
        bpb = f"  {fmt(r['final_val_bpb'], '7.4f')}" if per_byte else ""
        final = (f"{'diverged':>9}" if r.get("diverged") is not None
                 else _loss(r["final_val_loss"], 9))  # (at its "steps")
        lines.append(f"{r['variant']:<{width}}  {final}{bpb}  "
                     f"{_loss(r['best_val_loss'], 8)}  {r['steps']:6d}  {r['train_s']:7.1f}"
                     f"{reached}")
    return "\n".join(lines)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
