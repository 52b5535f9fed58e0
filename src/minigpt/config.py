"""Typed configuration: dataclasses with defaults, TOML presets and files, command-line overrides.

The dataclasses hold the only defaults. Precedence, lowest first: those defaults < a preset
(`configs/<name>.toml`; `seed`, the default, sets nothing) < `--config FILE` < command-line
flags. A TOML file has the sections `[model]`, `[train]` and `[data]`, and those a caller adds
(the diagnostics' `[diag]`, see RunConfig); an unknown section or key is an error that suggests
the closest valid name. `validate` is the one place settings are checked: everything past it
takes a config as valid.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import numbers
import os
import re
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path

from minigpt.errors import MiniGPTError
from minigpt.files import as_path, not_utf8

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib


def opt(default, help: str, **kw):
    """A dataclass field whose help text becomes the command-line flag's help; parse= (a
    duration, say) is what turns a flag's or TOML's text into its value."""
    return field(default=default, metadata={"help": help, **kw})


UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DURATIONS = "90, 30m, 8h or 1h30m"  # what a duration looks like, for the errors that ask one
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([dhms])")


def duration(text: str) -> float:
    """Seconds, from text such as '90', '90s', '30m', '8h', '1.5h' or '1h30m'."""
    text = text.strip().lower().replace(" ", "")
    if text[-1:] not in UNITS:
        seconds = float(text)  # ValueError: not a duration
    elif re.fullmatch(f"(?:{_PART.pattern})+", text):
        seconds = sum(float(n) * UNITS[u] for n, u in _PART.findall(text))
    else:
        raise ValueError(text)
    if not math.isfinite(seconds):
        raise ValueError(text)
    return seconds


@dataclass
class ModelConfig:
    """The lesson's MiniGPT, and options beyond it (each off by default, so the default stays
    the lesson's model)."""

    vocab_size: int = opt(65, "vocabulary size: set by the char tokenizer from the text; "
                               "for --tokenizer bpe, the size to train (give one, at least 257)")
    n_embd: int = opt(64, "embedding width C")
    n_head: int = opt(4, "attention heads (must divide n_embd)")
    n_layer: int = opt(4, "transformer blocks")
    block_size: int = opt(128, "context length T")
    dropout: float = opt(0.0, "dropout probability (the lesson uses none)")
    bias: bool = opt(True, "biases in Linear layers and LayerNorms (the lesson has them)")
    tie_weights: bool = opt(False, "share the token embedding with lm_head")
    pos: str = opt("learned", "position information: learned embeddings added to the tokens "
                               "(the lesson's) or rope (rotary, applied to queries and keys)",
                    choices=("learned", "rope"))
    norm: str = opt("layernorm", "the blocks' and final normalisation: layernorm (the "
                                  "lesson's) or rmsnorm", choices=("layernorm", "rmsnorm"))
    qk_norm: bool = opt(False, "RMS-normalise each head's queries and keys (with a learned "
                                "gain) before attention")
    mlp: str = opt("gelu", "the MLP: gelu (the lesson's, 4C wide), relu2 (ReLU squared, 4C) "
                            "or swiglu (8C/3 wide, three matrices)",
                    choices=("gelu", "relu2", "swiglu"))
    # from the modded-nanogpt speedrun (docs/speedrun.md measures each)
    bigram: bool = opt(False, "add an embedding of each (previous, current) token pair: exact "
                               "for a character vocabulary, hashed beyond 8192 pairs")
    smear: bool = opt(False, "add to each token's embedding a learned, gated share of the "
                              "previous token's")
    value_embeds: int = opt(0, "N token-embedding tables added to the attention values of the "
                                "first N and the last N blocks (0 = none)")
    unet: bool = opt(False, "U-net skips: the first half's block outputs added, with learned "
                             "weights, to the second half's inputs in reverse order")
    logit_cap: float = opt(0.0, "soft-cap the logits to (-cap, cap) with cap * tanh(x / cap) "
                                 "(0 = off)")
    zero_init: bool = opt(False, "initialise the attention and MLP output projections to zero")


@dataclass
class TrainConfig:
    steps: int = opt(5000, "optimizer steps")
    batch_size: int = opt(32, "sequences per batch B (per process, per micro-step)")
    batch_start: int = opt(0, "a batch-size schedule: start with N sequences a batch, growing N at "
                               "a time to batch_size over the first --ramp of training (off: 0, "
                               "or N not below batch_size)")
    block_start: int = opt(0, "a sequence-length schedule: start with windows of N tokens, "
                               "growing N at a time to block_size over the first --ramp of "
                               "training (off: 0, or N not below block_size)")
    ramp: float = opt(0.3, "the part of training (of --steps, or of --time-budget) over which "
                            "--batch-start and --block-start grow to full size")
    grad_accum: int = opt(1, "micro-batches per optimizer step: the global batch is "
                              "batch_size x grad_accum x processes")
    optimizer: str = opt("adamw", "adamw, sgd (with momentum), or muon (torch.optim.Muon for "
                                   "the blocks' weight matrices, AdamW for the rest)",
                          choices=("adamw", "sgd", "muon"))
    lr: float = opt(1e-2, "peak learning rate")
    min_lr: float = opt(0.0, "floor of the decay (0: the lesson's cosine ends near zero)")
    schedule: str = opt("cosine", "warmup, then cosine or linear decay to min_lr; constant; or "
                                  "the lesson's CosineAnnealingLR",
                        choices=("cosine", "linear", "constant", "cosine-annealing"))
    warmup_steps: int = opt(100, "linear warmup steps (cosine and linear schedules)")
    time_budget: float = opt(0.0, "train for this long (seconds, or 30m, 8h, 1h30m; evaluation "
                                   "not counted; one step at least), the schedule following the "
                                   "time; 0: train for --steps", parse=duration, metavar="DURATION")
    weight_decay: float = opt(0.1, "weight decay on >=2-D weights only: decoupled with adamw "
                                    "and muon; sgd's is L2, added to the gradient (through "
                                    "its momentum)")
    beta1: float = opt(0.9, "AdamW beta1 (with muon: its AdamW's, for the embeddings and head)")
    beta2: float = opt(0.99, "AdamW beta2 (with muon: its AdamW's, for the embeddings and head)")
    momentum: float = opt(0.9, "SGD momentum")
    muon_momentum: float = opt(0.95, "Muon momentum (--optimizer muon)")
    muon_variant: str = opt("newton-schulz", "Muon's orthogonalisation: newton-schulz "
                                             "(torch.optim.Muon's) or polar-express (a tuned "
                                             "polynomial per iteration)",
                            choices=("newton-schulz", "polar-express"))
    normuon: bool = opt(False, "NorMuon: normalise each neuron's Muon update by a running mean "
                                "of its square")
    grad_clip: float = opt(1.0, "clip the global gradient norm to this (0 = off)")
    eval_every: int = opt(250, "evaluate every N steps")
    eval_batches: int = opt(0, "validation batches per evaluation: N random batches, or 0 for "
                                "the whole split, every token once (as the final figure)")
    targets: str = opt("1.72,1.60,1.50", "validation losses in nats per byte of text (a "
                                          "character model's loss on ASCII text; across "
                                          "tokenizers alike), comma-separated, whose first "
                                          "crossing is timed (seconds of training); crossed by "
                                          "each evaluation's figure (see --eval-batches)")
    patience: int = opt(0, "stop after N evaluations without improvement (0 = off)")
    min_delta: float = opt(0.0, "an improvement of the validation loss smaller than this does "
                                "not count, for early stopping or for the 'best' checkpoint")
    log_every: int = opt(50, "write a metrics line every N steps")
    keep: int = opt(2, "checkpoints kept besides the best: the newest N")
    ema: float = opt(0.0, "keep an exponential moving average of the weights with this decay "
                           "(e.g. 0.99; the first step's weights start it): evaluated, "
                           "sampled and exported as the final model (0 = off)")
    skip_nonfinite: int = opt(0, "skip up to N batches whose gradients are NaN or inf")
    seed: int = opt(1337, "seed for initial weights and batch sampling")
    device: str = opt("auto", "auto, cpu, cuda, cuda:N or mps")
    dtype: str = opt("auto", "matmul precision: auto (bfloat16 on a CUDA GPU with bf16 tensor "
                              "cores, Ampere or newer; on a CPU only where a short probe "
                              "measures the step faster; else float32), float32 or "
                              "bfloat16 (autocast; weights stay float32)",
                      choices=("auto", "float32", "bfloat16"))
    compile: str = opt("auto", "torch.compile the model: auto (on CUDA only), on or off",
                        choices=("auto", "on", "off"))
    sample_tokens: int = opt(200, "length of the sample printed at the end (0 = none)")


@dataclass
class DataConfig:
    text: str = opt("", "a UTF-8 text file, or a folder written by minigpt prepare, to train "
                         "on (left out: TinyShakespeare); --data is the same flag",
                    alias="--data")
    tokenizer: str = opt("char", "char (one token per character) or bpe (byte-level BPE "
                                  "trained on the training split; see --vocab-size)",
                          choices=("char", "bpe"))
    val_fraction: float = opt(0.1, "fraction of the text held out for validation: its tail, "
                                    "cut at a character")


@dataclass
class RunConfig:
    """A run's settings: the core's three sections, and the sections a caller adds (`extra`,
    by name: the diagnostics add [diag]; the core never reads them, only carries them)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    extra: dict = field(default_factory=dict)

    @classmethod
    def with_sections(cls, sections: dict[str, type]) -> RunConfig:
        """Defaults, with a default instance of each section beyond the core's."""
        return cls(extra={name: kind() for name, kind in sections.items()
                          if name not in SECTIONS})

    def sections(self) -> dict:
        return {"model": self.model, "train": self.train, "data": self.data, **self.extra}

    def to_dict(self) -> dict:
        return {name: dataclasses.asdict(sec) for name, sec in self.sections().items()}


SECTIONS = {"model": ModelConfig, "train": TrainConfig, "data": DataConfig}


def field_index(sections: dict[str, type] = SECTIONS) -> dict[str, tuple[str, dataclasses.Field]]:
    """Every settable key, flat (keys are unique across sections): name -> (section, field)."""
    return {f.name: (sec, f) for sec, cls in sections.items() for f in fields(cls)}


def closest(name: str, valid) -> str | None:
    """The valid name a mistyped one most likely means, if any is close."""
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.6)  # (0.5: nope->compile)
    return close[0] if close else None


def suggest(name: str, valid) -> str:
    return f"; did you mean '{close}'?" if (close := closest(name, valid)) else ""


def _coerce(value, f: dataclasses.Field):
    """Check a TOML, flag or code value against the field's type; any integer is accepted for
    an int (numpy's too), any real number for a float, a path for text, and a field with
    parse= (a duration, say) takes text too."""
    kind = type(f.default)
    number = not isinstance(value, bool)  # (a bool is an int to Python, not to a setting)
    if kind is str and isinstance(value, os.PathLike):
        value = os.fspath(value)
    elif kind is int and number and isinstance(value, numbers.Integral):
        value = int(value)
    elif kind is float and number and isinstance(value, numbers.Real):
        value = float(value)
    if isinstance(value, str) and f.metadata.get("parse"):
        try:
            value = f.metadata["parse"](value)
        except ValueError:
            raise MiniGPTError(f"'{f.name}' must be a duration such as {DURATIONS}, got "
                               f"{value!r}") from None
    choices = f.metadata.get("choices")
    if choices and (type(value) is not kind or value not in choices):  # (compile = true:
        # the choices say what to write; 'must be str' would not)
        raise MiniGPTError(f"'{f.name}' must be one of {', '.join(choices)}; got {value!r}")
    if type(value) is not kind:
        raise MiniGPTError(f"'{f.name}' must be {kind.__name__}, got {value!r}")
    return value


def apply_overrides(cfg: RunConfig, table: dict, origin: str = "") -> None:
    """Apply a {section: {key: value}} table onto cfg (in place), checking every key; an error
    names the origin (a preset, a file) first, unless it is "" (flags, or code's overrides)."""
    origin = f"{origin}: " if origin else ""
    sections = cfg.sections()
    home = {f.name: name for name, section in sections.items() for f in fields(section)}
    for sec, values in table.items():
        if sec == "preset":  # (a flag of the command line, not a setting)
            raise MiniGPTError(f"{origin}a config file does not choose a preset: give --preset "
                               f"{values} (the file's settings go over the preset's)")
        if sec not in sections and sec in home:  # steps = 10 above every [section]
            raise MiniGPTError(f"{origin}'{sec}' belongs in the [{home[sec]}] section")
        if sec not in sections:
            raise MiniGPTError(f"{origin}unknown section [{sec}]{suggest(sec, sections)}")
        if not isinstance(values, dict):
            raise MiniGPTError(f"{origin}[{sec}] must be a table of settings")
        target = sections[sec]
        valid = {f.name: f for f in fields(target)}
        for key, value in values.items():
            if isinstance(value, dict):  # [train.optim]
                raise MiniGPTError(f"{origin}[{sec}.{key}]: sections do not nest; put its "
                                   f"settings in [{sec}] itself")
            if key not in valid and key in home:
                raise MiniGPTError(f"{origin}'{key}' belongs in [{home[key]}], not [{sec}]")
            if key not in valid:
                raise MiniGPTError(f"{origin}unknown key '{key}' in "
                                   f"[{sec}]{suggest(key, valid)}")
            try:
                setattr(target, key, _coerce(value, valid[key]))
            except MiniGPTError as e:  # a file's or preset's wrong type: say which file
                raise MiniGPTError(f"{origin}{e}") from None


def read_config_file(path: str | Path) -> dict:
    """A TOML file's tables; or a run's own settings, from its folder's config.json (given
    the folder or the file), to train the same run again."""
    if (run := as_path(path, "config_file")).is_dir():
        if not (run / "config.json").is_file():
            raise MiniGPTError(f"{path} is a folder but not a run's (no config.json): give a "
                               f"TOML config file, or a run folder")
        path = run / "config.json"
    try:
        with open(path, "rb") as f:  # (a byte-order mark, as Notepad writes, is no TOML
            text = f.read().decode("utf-8").removeprefix("\ufeff")  # statement)
        if Path(path).suffix != ".json":
            return tomllib.loads(text)
        record = json.loads(text)
    except FileNotFoundError:
        raise MiniGPTError(f"config file not found: {path}") from None
    except UnicodeDecodeError as e:  # (said as --text's are; e.start counts from byte 0)
        raise not_utf8(path, e, e.start) from None
    except (OSError, ValueError) as e:  # (TOML's and JSON's errors among them)
        raise MiniGPTError(f"cannot read config {path}: {e}") from None
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise MiniGPTError(f"{path} is not a run's config.json (a config file is TOML)")
    return record["config"]


def preset_names() -> list[str]:
    files = resources.files("minigpt").joinpath("configs").iterdir()
    return sorted(p.name.removesuffix(".toml") for p in files if p.name.endswith(".toml"))


def preset_table(name: str) -> dict:
    names = preset_names()
    if name not in names:
        raise MiniGPTError(f"unknown preset '{name}'{suggest(name, names)} (presets: "
                           f"{', '.join(names)})")
    preset = resources.files("minigpt").joinpath("configs", f"{name}.toml")
    return tomllib.loads(preset.read_text(encoding="utf-8"))


def resolve_config(preset: str = "seed", config_file: str | None = None,
                   overrides: dict | None = None,
                   sections: dict[str, type] = SECTIONS) -> RunConfig:
    """Defaults < preset < config file < overrides ({key: value}, flat, as flags give them).
    sections: the core's, or those and more (see RunConfig.extra)."""
    cfg = RunConfig.with_sections(sections)
    asked = asked_settings(preset, config_file, overrides, sections)
    apply_overrides(cfg, by_section(asked, sections))
    validate(cfg)
    return cfg


def asked_settings(preset: str | None, config_file: str | None, overrides: dict | None,
                   sections: dict[str, type] = SECTIONS) -> dict:
    """A command's preset, config file and flags as flat settings, a later one winning (the
    preset's and the file's checked here, so that an error names where it came from). A
    preset's [[fit]] tables take part at the preset's level (`fit_to_budget`)."""
    table = preset_table(preset) if preset else {}
    fits = table.pop("fit", [])
    asked = settings_of(table, f"preset {preset}", sections)
    in_file = (settings_of(read_config_file(config_file), str(config_file), sections)
               if config_file else {})
    flags = settings_of(by_section(overrides or {}, sections), "", sections)
    if config_file:
        check_alone({k: v for k, v in in_file.items() if k not in flags}, str(config_file),
                    sections)
    later = in_file | flags
    budget = (asked | later).get("time_budget", 0.0)
    return asked | fit_to_budget(fits, budget, f"preset {preset}", sections) | later


def check_alone(settings: dict, origin: str, sections: dict[str, type] = SECTIONS) -> None:
    """Each of a file's settings (those no flag replaces) checked on its own (check_values), so
    that a value out of range names the file it came from."""
    cfg = RunConfig.with_sections(sections)
    apply_overrides(cfg, by_section(settings, sections))
    try:
        check_values(cfg)  # (the other settings: the defaults)
    except MiniGPTError as e:
        raise MiniGPTError(f"{origin}: {e}") from None


def fit_to_budget(fits: list[dict], budget: float, origin: str,
                  sections: dict[str, type] = SECTIONS) -> dict:
    """A preset's recipe for a short time budget: the settings of its tightest [[fit]] table
    whose `below` (seconds) exceeds the budget; none without a budget or a table that fits.
        [[fit]]
        below = 60.0          # for --time-budget under 60 s:
        batch_size = 16       # more, smaller steps
    """
    if not all(isinstance(fit.get("below"), (int, float)) for fit in fits):
        raise MiniGPTError(f"{origin}: every [[fit]] table needs below = SECONDS")
    for fit in sorted(fits, key=lambda f: f["below"]):
        if 0 < budget < fit["below"]:
            settings = {key: value for key, value in fit.items() if key != "below"}
            return settings_of(by_section(settings, sections), f"{origin} [[fit]]", sections)
    return {}


def settings_of(table: dict, origin: str, sections: dict[str, type] = SECTIONS) -> dict:
    """A {section: {key: value}} table (a preset, a TOML file) as flat, checked settings, each
    as its field holds it (a duration's text, '30m', as its seconds)."""
    cfg = RunConfig.with_sections(sections)
    apply_overrides(cfg, table, origin)  # one-line errors
    return {key: getattr(cfg.sections()[sec], key) for sec, values in table.items()
            for key in values}


def by_section(settings: dict, sections: dict[str, type] = SECTIONS) -> dict[str, dict]:
    """{key: value} -> {section: {key: value}}; an unknown key is an error."""
    if not isinstance(settings, dict):
        raise MiniGPTError(f"overrides must be a dict of settings ({{'steps': 300}}), got "
                           f"{type(settings).__name__}")
    index = field_index(sections)
    table: dict[str, dict] = {}
    for key, value in settings.items():
        if key not in index:
            beyond = (" (if it is a setting beyond [model], [train] and [data], such as the "
                      "diagnostics' [diag], pass its section: "
                      "sections=minigpt.diagnostics.probes.SECTIONS)"
                      if sections is SECTIONS else "")  # (only code passes the core's alone)
            raise MiniGPTError(f"unknown setting '{key}'{suggest(key, index)}{beyond}")
        table.setdefault(index[key][0], {})[key] = value
    return table


def check_seed(seed: int, name: str) -> None:
    """A seed is what torch's generators and a TOML integer both hold: a signed 64-bit one."""
    if not -2**63 <= seed < 2**63:
        raise MiniGPTError(f"{name} must be a 64-bit integer, from -2**63 to 2**63 - 1, got {seed}")


MAX_GRAD_ACCUM = 65_536


def validate(cfg: RunConfig) -> None:
    """Reject settings that cannot train, each with a one-line reason (a value set in code is
    checked as a file's would be)."""
    if not isinstance(cfg, RunConfig):
        raise MiniGPTError(f"a RunConfig was expected, such as resolve_config(overrides="
                           f"{{'steps': 300}}) makes; got {type(cfg).__name__}")
    check_names(cfg)
    check_values(cfg)
    check_model_shape(cfg.model)
    if cfg.train.min_lr > cfg.train.lr:
        raise MiniGPTError(f"min_lr ({cfg.train.min_lr}) must not exceed lr ({cfg.train.lr})")


def check_names(cfg: RunConfig) -> None:
    """A setting set in code under a name no section has (cfg.steps for cfg.train.steps, or a
    misspelling) is refused, as a file's unknown key is: the run would never read it."""
    index = field_index({name: type(section) for name, section in cfg.sections().items()})
    at = {n: f"cfg.{n}" if n in SECTIONS else f"cfg.extra[{n!r}]" for n in cfg.sections()}
    for where, obj in [("cfg", cfg), *((at[n], s) for n, s in cfg.sections().items())]:
        for name in sorted(getattr(obj, "__dict__", {}).keys() - {f.name for f in fields(obj)}):
            close = closest(name, index)
            hint = f"; did you mean {at[index[close][0]]}.{close}?" if close else ""
            raise MiniGPTError(f"{where} has no setting '{name}'{hint}")


def check_values(cfg: RunConfig) -> None:
    """`validate`'s checks of each setting on its own: its type and range (a section beyond the
    core's checks its own, in its `validate`)."""
    for section in cfg.sections().values():
        coerce_section(section)
    for section in cfg.extra.values():
        if hasattr(section, "validate"):
            section.validate()
    check_model_values(cfg.model)
    t, d = cfg.train, cfg.data
    for key in ("steps", "batch_size", "lr", "eval_every", "log_every", "keep", "grad_accum"):
        if not getattr(t, key) > 0:
            raise MiniGPTError(f"'{key}' must be positive, got {getattr(t, key)}")
    for key in ("min_lr", "warmup_steps", "weight_decay", "grad_clip", "patience",
                "min_delta", "sample_tokens", "skip_nonfinite",
                "eval_batches", "time_budget", "batch_start", "block_start"):
        if getattr(t, key) < 0:
            raise MiniGPTError(f"'{key}' must not be negative, got {getattr(t, key)}")
    for key in ("beta1", "beta2", "momentum", "muon_momentum"):  # decays, as torch takes them
        if not 0 <= getattr(t, key) < 1:
            raise MiniGPTError(f"'{key}' must be in [0, 1), got {getattr(t, key)}")
    check_seed(t.seed, "'seed'")
    if t.steps >= 2**63:  # (a step counter, and a TOML file, hold 64 bits)
        raise MiniGPTError(f"'steps' must be below 2**63, got {t.steps}")
    if t.grad_accum > MAX_GRAD_ACCUM:  # (a batch stream, and its generator, each)
        raise MiniGPTError(f"'grad_accum' must be at most {MAX_GRAD_ACCUM:,} micro-batches a "
                           f"step, got {t.grad_accum:,}")
    if not 0 <= t.ema < 1:
        raise MiniGPTError(f"'ema' must be in [0, 1) (a decay, e.g. 0.99; 0 = off), got {t.ema}")
    if not 0 <= t.ramp <= 1:
        raise MiniGPTError(f"'ramp' must be in [0, 1] (a part of training), got {t.ramp}")
    if not 0 < d.val_fraction < 1:
        raise MiniGPTError(f"'val_fraction' must be in (0, 1), got {d.val_fraction}")
    parse_targets(t.targets)


def parse_targets(text: str) -> list[float]:
    """'1.72,1.60,1.50' -> [1.72, 1.6, 1.5]; an empty text: no targets."""
    try:
        targets = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        targets = [math.nan]
    if not all(0 < x < math.inf for x in targets):  # nan: a target never reached
        raise MiniGPTError(f"'targets' must be positive losses separated by commas, got {text!r}")
    return targets


def validate_model(m: ModelConfig) -> None:
    """The model's part of `validate` (MiniGPT checks its own options with it too)."""
    coerce_section(m)
    check_model_values(m)
    check_model_shape(m)


def coerce_section(section) -> None:
    """Each setting of a config section as its field's type, and finite where it is a float."""
    for f in fields(section):
        setattr(section, f.name, value := _coerce(getattr(section, f.name), f))
        if isinstance(value, float) and not math.isfinite(value):  # NaN passes x < 0
            raise MiniGPTError(f"'{f.name}' must be a finite number, got {value}")


def check_model_values(m: ModelConfig) -> None:
    """The model settings that are wrong on their own."""
    for key in ("vocab_size", "n_embd", "n_head", "n_layer", "block_size"):
        if not getattr(m, key) > 0:
            raise MiniGPTError(f"'{key}' must be positive, got {getattr(m, key)}")
    if not m.logit_cap >= 0:
        raise MiniGPTError(f"'logit_cap' must be >= 0 (0 = off), got {m.logit_cap}")
    if not 0 <= m.dropout < 1:
        raise MiniGPTError(f"'dropout' must be in [0, 1), got {m.dropout}")


def check_model_shape(m: ModelConfig) -> None:
    """The model settings that must fit one another."""
    if m.n_embd % m.n_head:
        raise MiniGPTError(f"n_embd ({m.n_embd}) must be divisible by n_head ({m.n_head})")
    if m.pos == "rope" and (m.n_embd // m.n_head) % 2:
        raise MiniGPTError(f"rope needs an even head size, got {m.n_embd // m.n_head}")
    if not 0 <= m.value_embeds <= m.n_layer:
        raise MiniGPTError(f"'value_embeds' must be in [0, n_layer={m.n_layer}], got "
                           f"{m.value_embeds}")
    if m.unet and m.n_layer < 2:
        raise MiniGPTError(f"U-net skips need at least 2 blocks (a first half and a second), "
                           f"got n_layer {m.n_layer}")
