"""The `minigpt` command: a thin argparse front end over the library.

    minigpt train [--preset seed] [--config FILE] [--steps N ...] [--out DIR] [--resume DIR]
    torchrun --nproc_per_node=N -m minigpt train ...      (data parallel: minigpt.distributed)
    minigpt sample --run DIR [--prompt TEXT] [--max-new-tokens N] [--temperature T] ...
    minigpt prepare --text PATH_OR_DIR_OR_GLOB --out DIR [--tokenizer char|bpe] ...
    minigpt prepare --dataset NAME_OR_PATH --out DIR [--dataset-config C] [--text-field F] ...
    minigpt export --run DIR --out HF_DIR                 (a folder transformers loads)

Every training flag is generated from the config dataclasses, so flags, TOML keys and the
Python API share one set of names; options several commands share are declared once
(`shared_options`). A MiniGPTError becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import difflib
import io
import json
import logging
import math
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from minigpt import __version__
from minigpt.config import (
    TrainConfig,
    check_seed,
    field_index,
    preset_names,
    read_config_file,
    resolve_config,
)
from minigpt.console import count, log, show_logs, visible
from minigpt.corpus import BPE_VOCAB, SHARD_TOKENS, is_prepared
from minigpt.diagnostics.probes import SECTIONS, DiagConfig
from minigpt.distributed import world_from_env
from minigpt.errors import (
    MiniGPTError,
    Terminated,
    TrainingStopped,
    launcher,
    shell_path,
)
from minigpt.files import file_on_path, resolved
from minigpt.sample import PROMPT


class Parser(argparse.ArgumentParser):
    """One-line errors, with the closest flag suggested for a mistyped one, and the help of the
    command they concern."""

    def parse_args(self, args=None, namespace=None):
        words = sys.argv[1:] if args is None else list(args)
        for parser in [self, *self.commands().values()]:  # (a command's parser says its errors)
            parser.words = words
        return super().parse_args(args, namespace)

    def commands(self) -> dict[str, argparse.ArgumentParser]:
        return {name: p for a in self._actions if isinstance(a, argparse._SubParsersAction)
                for name, p in a.choices.items()}

    def error(self, message: str):
        commands, given = self.commands(), getattr(self, "words", [])
        command = next((w for w in given if w in commands), None)
        if message.startswith("unrecognized arguments:"):
            flags = {name: [o for a in p._actions for o in a.option_strings]
                     for name, p in [(None, self), *commands.items()]}
            words = message.split(":", 1)[1].split()
            before = given[given.index(words[0]) - 1] if words and words[0] in given else ""
            if all(map(os.path.exists, [before, *words])):  # --text books/*.txt, unquoted
                message += " (files the shell found for a pattern? quote it: 'books/*.txt')"
            elif words and (hint := flag_hint(words[0], command, flags)):  # (the first word
                message += f" ({hint})"  # names the mistake; the rest are values)
        if message.endswith("expected one argument"):  # --clip -1,0: its value read as a flag
            names = message.split()[1].rstrip(":").split("/")  # (argument -o/--out:)
            at = next((i for i, w in enumerate(given) if w in names), len(given))
            value = given[at + 1] if at + 1 < len(given) else ""
            if value.startswith("-") and value != "--" and (
                    value.split("=")[0] not in self._option_string_actions):
                message += f" (a value that begins with '-' goes after '=': {given[at]}={value})"
        prog = commands[command].prog if command else self.prog
        raise MiniGPTError(f"{message} (see {prog} --help)")


# a flag of one command that another spells its own way: (command, flag) -> the command's;
# (None, flag): other tools' spelling of a flag, for any command that has it
ALSO_CALLED = {("sample", "--tokens"): "--max-new-tokens", ("sample", "--text"): "--prompt",
               ("attention", "--prompt"): "--text",
               **dict.fromkeys([(None, "--output"), (None, "--outdir"), (None, "--out-dir"),
                                (None, "--output-dir")], "--out")}


def flag_hint(word: str, command: str | None, flags: dict[str | None, list[str]]) -> str:
    """A hint for a word a command does not take: the flag of its own it most likely means
    (a prefix at a hyphen first, then any prefix, then a close spelling; -h never), or where
    the flag belongs; `flags`: each command's (None: minigpt's own, before any command)."""
    flag, own = word.split("=")[0], [o for o in flags[command] if o not in ("-h", "--help")]
    if command and flag in flags[None]:
        return f"{flag} goes before the command: minigpt {flag}"
    if any(flag in theirs for theirs in flags.values()):  # spelt right, for another command
        same = ALSO_CALLED.get((command, flag))
        return f"{flag} belongs to other commands" + f"; did you mean {same}?" * bool(same)
    if (alias := ALSO_CALLED.get((None, flag))) in own:
        return f"did you mean {alias}?"
    like = ([o for o in own if len(flag) > 3 and o.startswith(flag + "-")]  # --val: not
            or [o for o in own if len(flag) > 3 and o.startswith(flag)]  # --value-embeds
            or ["--" + o for o in difflib.get_close_matches(  # (the names, without the dashes
                flag.lstrip("-"), [o[2:] for o in own if o.startswith("--")], n=1,
                cutoff=0.7)])  # they share)
    if like:
        return f"did you mean {' or '.join(like[:3])}?"
    return "each value goes after its flag" if not word.startswith("-") else ""


METAVARS = {int: "N", float: "X", str: "TEXT"}
COMPARE_STEPS = 1000  # each variant's steps, unless --steps or --time-budget
OTHER_RANKS_WAIT = 5.0  # seconds a process other than rank 0 waits before saying its error


# what `plan` does not take: the ladder sets the shape, and the rest changes no step's cost
PLAN_IGNORES = {"n_embd", "n_head", "n_layer", "steps", "lr", "min_lr", "schedule",
                "warmup_steps", "weight_decay", "beta1", "beta2", "momentum", "muon_momentum",
                "eval_every", "eval_batches", "targets", "patience", "min_delta", "log_every",
                "keep", "ema", "skip_nonfinite", "seed", "compile", "sample_tokens",
                *field_index({"diag": DiagConfig})}
PLAN_HELP = {  # plan's own words, where train's speak of --steps or of a GPU
    "time_budget": "the training time to plan for: seconds, or 30m, 8h, 1h30m",
    "ramp": "the part of the training time (or tokens) over which --batch-start and "
            f"--block-start grow to full size (default {TrainConfig.ramp!r})",
    "device": f"plan times its steps on this machine's CPU: auto or cpu (default "
              f"{TrainConfig.device!r})"}


def add_config_flags(p: argparse.ArgumentParser, leave_out: set[str] = frozenset()) -> None:
    """--flag for every config field but those left out, default: not given."""
    for name, (_section, f) in field_index(SECTIONS).items():
        if name in leave_out:
            continue
        flag = "--" + name.replace("_", "-")
        kind = type(f.default)
        choices = f.metadata.get("choices")
        how = ({"action": argparse.BooleanOptionalAction} if kind is bool else
               {"type": str if "parse" in f.metadata else kind, "choices": choices,  # (text
                # a field parses, such as a duration, is checked as a file's: one message)
                "metavar": None if choices else f.metadata.get("metavar", METAVARS[kind])})
        aliases = [f.metadata["alias"]] if "alias" in f.metadata else []
        p.add_argument(flag, *aliases, dest=name, default=argparse.SUPPRESS,
                       help=f"{f.metadata['help']} (default {f.default!r})", **how)


def shared_options(name: str) -> argparse.ArgumentParser:
    """A group of options several commands share, declared once here (an argparse parent,
    made anew for each command that takes it)."""
    group = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    if name in ("run", "run?"):  # run?: optional
        group.add_argument("--run", required=name == "run", metavar="DIR",
                           help="a run folder made by train")
    elif name == "checkpoint":
        group.add_argument("--checkpoint", default="best", choices=("best", "last"),
                           help="the best validation checkpoint (default) or the latest")
    elif name == "device":
        device = field_index()["device"][1]  # the training setting's default and help
        group.add_argument("--device", default=device.default,
                           help=f"{device.metadata['help']} (default {device.default!r})")
    elif name in ("settings", "plan settings"):  # plan's: those that change a step's cost
        group.add_argument("--preset", metavar="NAME",
                           help=f"starting configuration: {', '.join(preset_names())} "
                                f"(default seed)")
        group.add_argument("--config", metavar="FILE",
                           help="TOML file with [model] [train] [data] [diag], over the preset; "
                                "or a run folder (its config.json), to train it again")
        if name == "settings":
            group.add_argument("--no-progress", action="store_true", help="no progress bar")
        add_config_flags(group, PLAN_IGNORES if name == "plan settings" else frozenset())
        if name == "plan settings":  # (train's help speaks of --steps, which plan has not)
            for action in group._actions:
                action.help = PLAN_HELP.get(action.dest, action.help)
    return group


def build_parser() -> Parser:
    parser = Parser(prog="minigpt", allow_abbrev=False,
                    description="Train a small GPT on TinyShakespeare (or any text) and see "
                                "every part of the training loop.")
    parser.add_argument("--version", action="version",
                        version=f"minigpt {__version__} (torch {torch.__version__})")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    def command(name: str, help: str, description: str, *shared: str) -> Parser:
        p = sub.add_parser(name, help=help, description=description, allow_abbrev=False,
                           parents=[shared_options(s) for s in shared])
        p.set_defaults(handler=globals()[f"cmd_{name}"])  # the cmd_<name> functions below
        return p

    t = command("train", "train a MiniGPT",
                "Train MiniGPT. With no arguments: the lesson's model on TinyShakespeare "
                "(downloaded and cached on first use), warmup + cosine, clipping, AdamW, "
                "5000 steps. Settings: preset < --config file < flags (the defaults "
                "shown are the seed preset's). On several "
                "processes or GPUs: torchrun --nproc_per_node=N -m minigpt train ...", "settings")
    t.add_argument("--out", metavar="DIR", help="run folder (default runs/<text>-<date>-<time>)")
    t.add_argument("--resume", metavar="DIR",
                   help="continue the run in DIR from its last checkpoint")

    c = command("compare", "train variants side by side: SGD vs AdamW, an ablation, ...",
                "Train each variant with the same seed, so the same model starts from the same "
                "weights and sees the same batches, for the same steps or --time-budget; "
                "overlay the validation curves against steps and seconds in compare.png and "
                "print a table: each variant's loss at the end and the seconds of training it "
                "took to reach each target loss. Variants: --variant NAME:KEY=VALUE,... "
                "(any setting; preset=NAME starts from a preset), repeated; or the axes "
                "--optimizers, --schedules, --clip, which combine: --optimizers sgd,adamw "
                "--clip 1,0 gives four runs. The flags given set every variant; each variant's "
                f"own settings win. Each variant trains to its end (compare takes no --patience): "
                f"{COMPARE_STEPS} steps unless --steps, the --config file or the variant "
                "sets them, or a time budget (--time-budget, a file's, a preset's) instead.",
                "settings")
    next(a for a in c._actions if a.dest == "steps").help = (
        f"optimizer steps of each variant (default {COMPARE_STEPS})")
    next(a for a in c._actions if a.dest == "patience").help = argparse.SUPPRESS  # (refused)
    c.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,...",
                   help="a variant, e.g. +rope+muon:pos=rope,optimizer=muon or fast:preset=fast "
                        "(repeat for more)")
    c.add_argument("--optimizers", metavar="LIST",
                   help="e.g. sgd,adamw; give each its own peak lr as sgd:0.5,adamw:3e-3")
    c.add_argument("--schedules", metavar="LIST", help="e.g. constant,cosine,cosine-annealing")
    c.add_argument("--clip", metavar="LIST", help="gradient-clipping norms, 0 = off: e.g. 1,0")
    c.add_argument("--out", metavar="DIR", help="comparison folder (default runs/compare-<time>)")

    au = command("autograd", "autograd by example: value, gradient, graph",
                 "Evaluate an expression of scalar variables, run backward(), and show the "
                 "value, each gradient, the backward graph PyTorch built (each node's local "
                 "derivative) and a finite-difference check of the chain rule. Default: the "
                 "lesson's y = x**2 + 3*x + 1 at x = 2 (value 11, dy/dx = 7).")
    au.add_argument("--expr", default="x**2 + 3*x + 1",
                    help="numbers, variables, + - * / **, sin cos tan exp log sqrt tanh "
                         "sigmoid relu abs; one that starts with '-' takes '=': "
                         "--expr=-x**2 (default: the lesson's x**2 + 3*x + 1)")
    au.add_argument("--at", metavar="NAME=VALUE,...", action="append",
                    help="where to evaluate, e.g. x=2 or x=1,y=-0.5 (or --at x=1 --at y=-0.5; "
                         "default x=2: an expression of other variables needs their values)")

    gr = command("graph", "draw the computation graph from the loss back",
                 "Trace loss.grad_fn back to the embeddings for one batch of random token ids and "
                 "draw it (DOT, and SVG + PNG with Graphviz): parameters with their names, "
                 "shapes and gradient norms. Without --run: a freshly initialised seed model.",
                 "run?", "checkpoint")
    gr.set_defaults(checkpoint=None)  # (given without --run: refused, not ignored; best)
    gr.add_argument("--collapse", action="store_true", help="one node per module")
    gr.add_argument("--depth", type=int, metavar="N",
                    help="with --collapse: modules N levels deep (default 1: blocks; "
                         "2: attn/ff/ln)")
    gr.add_argument("--out", metavar="PATH",
                    help="output path without suffix, or a folder for graph.dot/.svg/.png "
                         "(default DIR/graph or ./graph)")

    r = command("report", "write a run's report.html",
                "One self-contained HTML page for a run: figures, curves and their reading "
                "(printed here too: warmup, the best checkpoint, spikes, clipping, "
                "overfitting, plateaus, each with the usual remedy), gradient flow, "
                "attention, samples, the computation graph and the configuration.", "run")
    r.add_argument("--out", metavar="FILE", help="where to write (default DIR/report.html)")

    g = command("gradflow", "gradient health on one batch",
                "Forward and backward on one training batch of a run's checkpoint, then one "
                "optimizer step on a copy: mean |grad|, std, L2 norm and update/weight ratio "
                "for every parameter, with dead, vanishing, exploding and non-finite flagged.",
                "run", "checkpoint", "device")
    g.add_argument("--lr", type=float, metavar="X",
                   help="learning rate of the probe step (default: the schedule's at that step)")

    a = command("attention", "attention heatmaps for a text",
                "Every layer's and head's attention weights for a text, as a grid of heatmaps "
                "(layers x heads) with the text's tokens on the axes.",
                "run", "checkpoint", "device")
    a.add_argument("--text", help=f"the text to read (at most block_size tokens: characters, "
                                  f"for a character model; default "
                                  f"{DiagConfig.attention_text!r}, what a run records, less "
                                  f"any character the run's vocabulary lacks, cut to "
                                  f"block_size)")
    a.add_argument("--out", metavar="FILE", help="PNG to write (default DIR/attention.png)")

    s = command("sample", "generate text from a trained run",
                "Stream the prompt and its continuation to stdout.", "run", "checkpoint", "device")
    s.add_argument("--prompt", help=f"text to continue (default {PROMPT!r}, or the vocabulary's "
                                    f"first token, for characters the lowest, often a line "
                                    f"break, where it lacks one of those)")
    s.add_argument("--max-new-tokens", type=int, default=300, metavar="N",
                   help="how many tokens to generate (default 300)")
    s.add_argument("--temperature", type=float, default=1.0, metavar="T",
                   help="divide the logits by T (default 1; 0 = always the most likely token)")
    s.add_argument("--top-k", type=int, metavar="K",
                   help="sample among the K most likely (default: all)")
    s.add_argument("--top-p", type=float, metavar="P",
                   help="sample among the most likely tokens holding probability P "
                        "(default: all)")
    s.add_argument("--seed", type=int, default=1337, help="same seed, same text (default 1337)")

    ex = command("export", "write the model as a Hugging Face transformers folder",
                 "Write a run's model and tokenizer as a folder that transformers loads with "
                 "AutoModelForCausalLM.from_pretrained(OUT) and AutoTokenizer.from_pretrained(OUT) "
                 "(GPT-2's architecture, which holds the lesson's model exactly; char and BPE "
                 "tokenizers). Needs transformers (pip install 'minigpt-loop[export]'). A model "
                 "option GPT-2 has no counterpart for (rotary embeddings, RMSNorm, ...) is "
                 "refused.",
                 "run", "checkpoint")
    ex.add_argument("--out", required=True, metavar="DIR",
                    help="the folder to write (it must not exist, or be empty)")

    pl = command("plan", "the model shapes a budget of tokens or time allows",
                 "Size a run: for --tokens N and/or --time-budget DURATION, a ladder of model "
                 "shapes (2 x 64 up to 12 x 768) under the run's recipe (preset, --config, "
                 "flags: optimizer, dtype, batch, block size, vocabulary; --text DIR takes a "
                 "prepared corpus's), each with its parameters, peak memory (estimated), a "
                 "training step timed on this machine (~: estimated from the FLOP count where "
                 "a step would take over 2 s), tokens/s, the ETA, and the compute-optimal "
                 "one marked (about 20 tokens per parameter).", "plan settings")
    pl.add_argument("--tokens", type=float, default=0, metavar="N",
                    help="training tokens to plan for, e.g. 1e9")

    pr = command("prepare", "tokenize a big corpus into token shards",
                 "Stream text files, or a dataset's records, through a tokenizer into the "
                 "token shards of a training and a validation split (uint16, or uint32 when "
                 "the vocabulary has more than 65,536 tokens, each with its sha256) and a "
                 "JSON index, never holding the corpus in memory; then train on the folder "
                 "with minigpt train --text DIR. The last --val-fraction of the characters is "
                 "held out. char takes every character of the corpus; bpe learns its merges "
                 "from the training split only. Interrupted, the same command continues after "
                 "the last complete shard.")
    corpus = pr.add_mutually_exclusive_group(required=True)
    corpus.add_argument("--text", metavar="PATH_OR_DIR_OR_GLOB",
                        help="a UTF-8 text file, a folder (every file under it, hidden ones "
                             "skipped, in sorted order), or a quoted glob such as "
                             "'books/**/*.txt'; the files' texts follow one another")
    corpus.add_argument("--dataset", metavar="NAME_OR_PATH",
                        help="a Hugging Face dataset, streamed (e.g. roneneldan/TinyStories; "
                             "needs pip install 'minigpt-loop[datasets]'), or local parquet, "
                             "JSON lines (.jsonl, .json) or arrow files: a file, a folder or a "
                             "quoted glob such as 'data/*.parquet'. Each record's --text-field "
                             "is a document; documents are joined with a line break")
    pr.add_argument("--dataset-config", metavar="NAME",
                    help="the dataset's configuration (subset), e.g. wikitext-103-raw-v1")
    pr.add_argument("--split", metavar="NAME", help="the dataset's split (default train)")
    pr.add_argument("--text-field", metavar="NAME",
                    help="the field of each record that holds its text (default text)")
    pr.add_argument("--out", required=True, metavar="DIR",
                    help="folder for the shards, tokenizer.json and index.json (one that holds "
                         "a corpus prepared with other settings is refused; with the same, "
                         "there is nothing to do)")
    pr.add_argument("--tokenizer", default="char", choices=("char", "bpe"),
                    help="char (one token per character) or bpe (byte-level BPE; default char)")
    pr.add_argument("--vocab-size", type=int, default=BPE_VOCAB, metavar="N",
                    help=f"vocabulary size to train for bpe, 257 to 1,048,576 (default "
                         f"{BPE_VOCAB}; char ignores it)")
    pr.add_argument("--val-fraction", type=float, default=0.1, metavar="F",
                    help="the share of the characters, at the end, held out for validation "
                         "(default 0.1)")
    pr.add_argument("--shard-tokens", type=int, default=SHARD_TOKENS, metavar="N",
                    help=f"tokens per shard file at most (default {SHARD_TOKENS:,})")
    pr.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def settings_given(args: argparse.Namespace) -> dict:
    """The config settings given as flags, by name."""
    return {k: v for k, v in vars(args).items() if k in field_index(SECTIONS)}


def warn_if_prepared(args: argparse.Namespace, text: str) -> None:
    """A prepared corpus brings its own tokenizer and split: say so when flags asked for
    others, which it does not use."""
    unused = [f"--{key.replace('_', '-')}" for key in ("tokenizer", "vocab_size", "val_fraction")
              if key in settings_given(args)]
    if unused and text and is_prepared(Path(text).expanduser()):
        log.warning(f"{text} is a prepared corpus, with its own tokenizer and split: "
                    f"{', '.join(unused)} not used (minigpt prepare sets them)")


# the settings of one optimizer only: another ignores them
OPTIMIZER_SETTINGS = {  # the optimizers that use each setting
    "momentum": ("sgd",), "muon_momentum": ("muon",), "muon_variant": ("muon",),
    "normuon": ("muon",), "beta1": ("adamw", "muon"), "beta2": ("adamw", "muon")}


def cmd_train(args: argparse.Namespace) -> None:
    from minigpt.checkpoint import resume_config
    from minigpt.diagnostics.probes import standard_probes
    from minigpt.run import check_can_resume, default_run_dir, removed_if_left_empty
    from minigpt.trainer import train

    if args.resume:  # the command as first typed may be given again, with more steps, say
        if args.out and resolved(args.out) != resolved(args.resume):
            raise MiniGPTError(f"--out {args.out} and --resume {args.resume} name different "
                               f"folders; --resume continues the run where it is")
        check_can_resume(Path(args.resume))  # (or why there is none to resume from)
        cfg = resume_config(args.resume, settings_given(args), args.preset, args.config, SECTIONS)
        gone = cfg.data.text and not Path(cfg.data.text).expanduser().exists()
        if gone and "text" not in settings_given(args) and not args.config:  # the run's own
            raise MiniGPTError(f"text file not found: {cfg.data.text} (the run's text moved? "
                               f"resume with --text NEWPATH, the same text where it is now)")
    else:
        cfg = resolve_config(args.preset or "seed", args.config, settings_given(args), SECTIONS)
        warn_if_prepared(args, cfg.data.text)
        prepared = cfg.data.text and is_prepared(Path(cfg.data.text).expanduser())
        if args.preset == "pretrain" and cfg.data.tokenizer == "char" and not prepared:
            log.warning(f"the pretrain preset is sized for a prepared corpus of about 1 B BPE "
                        f"tokens (minigpt prepare, then --data DIR: docs/scaling.md); this run "
                        f"trains it on the characters of {cfg.data.text or 'TinyShakespeare'}")
    if unused := [f"--{key.replace('_', '-')} ({' or '.join(users)} only)"
                  for key, users in OPTIMIZER_SETTINGS.items()  # (typed: a preset's are not)
                  if key in settings_given(args) and cfg.train.optimizer not in users]:
        log.warning(f"{', '.join(unused)} set, but the run uses {cfg.train.optimizer}")
    if (steps := settings_given(args).get("steps")) and cfg.train.time_budget:  # a preset's
        log.warning(f"--steps {steps} does not end this run: its time budget of "
                    f"{cfg.train.time_budget:g} s does (add --time-budget 0 to train by steps)")
    given = args.resume or args.out
    folder = Path(given or default_run_dir(cfg))  # (made now: removed if the run never starts)
    try:
        with contextlib.nullcontext() if given else removed_if_left_empty(folder):
            result = train(cfg, folder, resume=bool(args.resume), probes=standard_probes(cfg),
                           progress=not args.no_progress)
    except (KeyboardInterrupt, Terminated):  # outside the steps (the final evaluation, say)
        if (folder / "checkpoints" / "last.json").is_file():  # (rank 0 alone logs)
            again = f"{launcher(world_from_env().size)} train --resume {shell_path(folder)}"
            how = ("the same command continues" if args.resume else  # (its settings: not saved
                   f"continue with: {again}")  # yet)
            log.warning(f"the last checkpoint stands; {how}")
        raise
    except TrainingStopped as e:  # the command that continues it, as it was trained
        log.warning(f"stopped after {count(e.steps, 'step')} by {signal.Signals(e.signum).name}; "
                    f"checkpoint saved. Continue with: {launcher(e.processes)} train --resume "
                    f"{shell_path(e.folder)}")
        raise
    if world_from_env().is_main:  # under torchrun, rank 0 reports for all
        print(json.dumps(result.summary))


def cmd_compare(args: argparse.Namespace) -> None:
    from minigpt.diagnostics.compare import by_name, compare, format_table, parse_variant, variants
    from minigpt.run import fresh_folder, removed_if_left_empty

    named = [parse_variant(v) for v in args.variant]
    if args.optimizers or args.schedules or args.clip or not named:
        named += variants(args.optimizers, args.schedules, args.clip).items()
    runs = by_name(named, "; give each variant its own name")
    if len(runs) == 1:
        log.warning(f"one variant ({next(iter(runs))}): nothing to compare it with; give "
                    f"another (--variant NAME:KEY=VALUE, or a second value on an axis)")
    common = settings_given(args)
    train = read_config_file(args.config).get("train") if args.config else None  # (checked
    if "steps" not in common and not (isinstance(train, dict) and "steps" in train):  # later)
        common["steps"] = COMPARE_STEPS  # compare's own: below a file's (a run's), over a preset's
    out = args.out or str(fresh_folder("compare"))  # (made now: removed if nothing starts)
    log.setLevel(logging.WARNING)  # the table says what matters
    try:
        with contextlib.nullcontext() if args.out else removed_if_left_empty(Path(out)):
            table = compare(runs, out, args.preset or "seed", args.config, common,
                            progress=not args.no_progress)
    except TrainingStopped:
        log.warning(f"the same command with --out {shell_path(out)} continues the comparison")
        raise
    print(format_table(table))
    print(f"curves: {out}/compare.png; table: {out}/compare.json")


def parse_point(text: str) -> dict[str, float]:
    """'x=1,y=-0.5' -> {'x': 1.0, 'y': -0.5}."""
    point = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        name = name.strip()
        if name in point:
            raise MiniGPTError(f"--at gives {name!r} twice in {text!r}")
        if not sep or not name:
            raise MiniGPTError(f"--at takes NAME=VALUE pairs separated by commas, got {text!r}")
        try:
            point[name] = float(value)
        except ValueError:  # (a pair all the same: x=pi, x=1/2, x=0x10) as explain says it
            raise MiniGPTError(f"the value of {name} must be a number, got "
                               f"{value.strip()!r}") from None
        if not math.isfinite(point[name]):  # (1e400 reads as inf: name what was typed)
            raise MiniGPTError(f"the value of {name} must be finite, got {value.strip()!r}")
    return point


def cmd_autograd(args: argparse.Namespace) -> None:
    from minigpt.diagnostics.autograd import explain, format_report

    at = None
    if args.at is not None:  # each --at adds its pairs (the last one replaced the others)
        if any(not text.strip() for text in args.at):  # (read as no --at, the lesson's x = 2)
            raise MiniGPTError("--at is empty (an unset shell variable?): give it a value")
        at = parse_point(",".join(args.at))
    print(format_report(explain(args.expr, at)))


def cmd_graph(args: argparse.Namespace) -> None:
    from minigpt.checkpoint import load_model
    from minigpt.diagnostics.graph import draw_loss_graph
    from minigpt.model import MiniGPT

    if args.depth is not None and not args.collapse:
        raise MiniGPTError("--depth goes with --collapse (without it, every op is drawn)")
    depth = 1 if args.depth is None else args.depth
    if depth < 1:  # (0 would be no collapse: the whole graph)
        raise MiniGPTError(f"--depth must be at least 1, got {depth}")
    if args.checkpoint and not args.run:
        raise MiniGPTError("--checkpoint goes with --run (without it, a fresh seed model is "
                           "drawn)")
    torch.manual_seed(0)  # a fresh model's weights, so its gradient norms, the same each time
    model = load_model(args.run, args.checkpoint or "best")[0] if args.run else MiniGPT(65)
    out = args.out or (f"{args.run}/graph" if args.run else "graph")
    if out.endswith(("/", os.sep)) or Path(out).is_dir():  # a folder: the pictures go inside
        out = str(Path(out) / "graph")
    paths = draw_loss_graph(model, model.config.vocab_size, out,
                            depth=depth if args.collapse else 0)  # (without dot: an error
    # that names the .dot it wrote, and a non-zero exit, as the pictures asked for are not made)
    print("wrote " + ", ".join(str(p) for p in paths))


def cmd_report(args: argparse.Namespace) -> None:
    from minigpt.checkpoint import check_holds_a_run, load_model
    from minigpt.diagnostics.graph import INSTALL_DOT, GraphvizMissing, draw_loss_graph
    from minigpt.diagnostics.reading import format_reading, read_curve, run_facts
    from minigpt.diagnostics.report import write_report
    from minigpt.files import folder_holds, read_jsonl

    if args.out:
        check_out_suffix(args.out, (".html", ".htm"), "report writes a web page")
        if file := file_on_path(Path(args.out).parent):  # said before the graph is drawn
            raise MiniGPTError(f"{file} is a file, not a folder")
    if folder_holds(args.run) == "a comparison":
        raise MiniGPTError(f"{args.run} holds a comparison: report each variant's folder, such as "
                           f"{shell_path(next(Path(args.run).glob('0-*'), 'DIR/0-...'))}")
    if not Path(args.run).is_dir():  # (as the other commands given --run say it)
        raise MiniGPTError(f"no run folder {args.run}")
    check_holds_a_run(Path(args.run))
    rows = read_jsonl(Path(args.run) / "metrics.jsonl")  # (read once: each reading warns of
    findings = read_curve(rows, run_facts(args.run))  # its damaged lines)
    # the graph, drawn for the page only: the run folder gets the page (without --out) and
    # nothing else (a graph.dot and graph.svg there left graph's graph.png of another drawing)
    with tempfile.TemporaryDirectory() as at:
        try:  # none for a run without a best checkpoint (gone NaN before its first
            # evaluation, whose curve the report is there to read)
            model, tok, _ = load_model(args.run, "best")
            draw_loss_graph(model, tok.vocab_size, f"{at}/graph", depth=1, formats=("svg",))
        except GraphvizMissing:  # (its message names a .dot in the folder about to go)
            log.warning(f"Graphviz's dot is not installed ({INSTALL_DOT}); the report will "
                        "have no graph")
        except (OSError, MiniGPTError) as e:
            why = f"{e.strerror}: {e.filename}" if isinstance(e, OSError) and e.filename else e
            log.warning(f"{why}; the report will have no graph")
        path = write_report(args.run, args.out, rows, graph_dir=Path(at))
    print(format_reading(findings))
    print(f"wrote {path}")


def check_out_suffix(out: str, suffixes: tuple[str, ...], writes: str) -> None:
    """Refuse an --out of another kind of file (it would be replaced: notes.txt, or x.jpg)."""
    if Path(out).suffix.lower() not in suffixes:
        raise MiniGPTError(f"--out {out}: {writes}; give a path ending in {suffixes[0]}")


def cmd_gradflow(args: argparse.Namespace) -> None:
    from minigpt.diagnostics.gradflow import format_table, probe_batch_stats
    from minigpt.run import open_run
    from minigpt.schedule import schedule_lr
    from minigpt.trainer import finished

    if args.lr is not None and not 0 <= args.lr <= 3.4e38:  # (float32's largest: SGD's step
        # could not convert more)
        raise MiniGPTError(f"--lr must be a number from 0 to 3.4e38, got {args.lr}")
    run = open_run(args.run, args.checkpoint, args.device)
    t, step, seconds = run.cfg.train, run.state.step, run.clock.seconds()
    lr, note = args.lr, ""
    if lr is None:  # the rate of the step the run takes next; a finished run's, of its last
        probe_step = step - 1 if step and finished(t, step, seconds) else step
        lr = schedule_lr(t, probe_step, seconds)
        note = " (where the schedule ends: --lr sets another)" if lr == 0 else ""
    x, y = run.batches.get_batch("train")
    stats = probe_batch_stats(run.model, x, y, run.optimizer, lr=lr, grad_clip=t.grad_clip,
                              dtype=run.dtype)
    print(f"{args.run} after {count(step, 'step')} ({args.checkpoint}), one batch of "
          f"{tuple(x.shape)} in {t.dtype}, probe step at lr {lr:.3g}{note}")
    print(format_table(stats))


def cmd_attention(args: argparse.Namespace) -> None:
    from minigpt.checkpoint import load_model
    from minigpt.diagnostics.attention import (
        attention_maps,
        plot_attention,
        readable_ids,
        token_labels,
    )
    from minigpt.environment import resolve_device

    out = args.out or f"{args.run}/attention.png"
    check_out_suffix(out, (".png",), "attention writes a PNG")
    device = resolve_device(args.device)
    model, tok, meta = load_model(args.run, args.checkpoint, device)
    if args.text is None:  # the text the run's attention probe reads
        ids = readable_ids(tok, DiagConfig.attention_text, model.block_size)
        if not ids:
            raise MiniGPTError("the run's vocabulary has none of the characters of the default "
                               "text: give one with --text")
    else:
        ids = encode(tok, args.text, "--text")
    if not ids or len(ids) > model.block_size:
        unit = "characters" if tok.kind == "char" else "tokens"
        raise MiniGPTError(f"--text must have 1 to {model.block_size} {unit} "
                           f"(block_size), got {len(ids)}")
    idx = torch.tensor([ids], device=device)  # (1, T)
    plot_attention(attention_maps(model, idx), token_labels(tok, ids), out,
                   title=f"attention after {count(meta['step'], 'step')}")
    print(f"wrote {out}")


def encode(tok, text: str, flag: str) -> list[int]:
    """A flag's text as the run's tokens; a character the run's text never had: the flag's error."""
    try:
        return tok.encode(text)
    except MiniGPTError as e:
        raise MiniGPTError(f"{flag}: {e}") from None


def cmd_sample(args: argparse.Namespace) -> None:
    from minigpt.checkpoint import load_model
    from minigpt.environment import resolve_device
    from minigpt.sample import check_sampling, default_prompt, stream

    if args.max_new_tokens < 0:
        raise MiniGPTError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    check_seed(args.seed, "--seed")
    try:
        check_sampling(args.temperature, args.top_k, args.top_p)
    except MiniGPTError as e:  # named as the flags are: --top-k, not top_k
        raise MiniGPTError("--" + str(e).replace("_", "-", 1)) from None
    device = resolve_device(args.device)
    model, tok, _ = load_model(args.run, args.checkpoint, device)
    prompt = default_prompt(tok) if args.prompt is None else args.prompt
    if "\r" in prompt and "\r" not in getattr(tok, "stoi", {}):  # (a char text that had \r)
        # line ends as a text file's were read (\r\n and \r as \n): a pasted Windows line
        prompt = prompt.replace("\r\n", "\n").replace("\r", "\n")
    if not prompt:
        raise MiniGPTError("--prompt must not be empty")
    idx = torch.tensor([encode(tok, prompt, "--prompt")], device=device)  # (1, T)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    sys.stdout.write(prompt)
    tokens = stream(model, idx, args.max_new_tokens, temperature=args.temperature,
                    top_k=args.top_k, top_p=args.top_p, generator=gen)
    shown = visible if sys.stdout.isatty() else str  # a file or pipe gets the model's text
    try:
        for piece in tok.decode_stream(int(t[0]) for t in tokens):  # whole characters only
            sys.stdout.write(shown(piece))
            sys.stdout.flush()
    finally:  # (Ctrl-C too: the line ends before the message)
        sys.stdout.write("\n")


def cmd_export(args: argparse.Namespace) -> None:
    from minigpt.export import export_run

    out = export_run(args.run, args.out, args.checkpoint)
    print(f"wrote {out}: load it with transformers' AutoModelForCausalLM.from_pretrained and "
          f"AutoTokenizer.from_pretrained; its generate goes up to the block size in all, "
          f"prompt included (GPT-2's learned positions end there; minigpt sample slides on)")


def cmd_plan(args: argparse.Namespace) -> None:
    from minigpt.data import cache_dir, load_corpus
    from minigpt.environment import resolve_device
    from minigpt.plan import MAX_STEP_S, format_duration, format_plan, plan, resident
    from minigpt.schedule import grows

    cfg = resolve_config(args.preset or "seed", args.config, settings_given(args), SECTIONS)
    seconds = cfg.train.time_budget
    if not (args.tokens == 0 or 1 <= args.tokens <= 1e15):  # (NaN fails this too)
        raise MiniGPTError(f"--tokens must be a number of tokens from 1 to 1e15, such as 1e9, "
                           f"got {args.tokens:g}")
    if args.tokens == 0 and seconds <= 0:
        raise MiniGPTError("plan needs a budget: --tokens N (e.g. 1e9), --time-budget "
                           "DURATION (e.g. 8h), or both")
    if cfg.train.device not in ("auto", "cpu"):
        if cfg.train.device.split(":")[0] not in ("cuda", "mps"):
            resolve_device(cfg.train.device)  # an unknown device: said as train says it
        raise MiniGPTError(f"plan times its steps on this machine's CPU, not on --device "
                           f"{cfg.train.device}; on a GPU, time a short run instead: minigpt "
                           f"train --steps 50 --device {cfg.train.device}")
    if cfg.data.text:  # its vocabulary, as train will have it (a text is prepared once)
        warn_if_prepared(args, cfg.data.text)
        d = cfg.data
        splits, tok, _ = load_corpus(d.text, d.tokenizer, cfg.model.vocab_size, d.val_fraction)
        splits.check(cfg.model.block_size)  # (a corpus train would refuse: refused here too)
        cfg.model.vocab_size = tok.vocab_size
    cache_dir()  # (where the timing keeps its dtype probe: a bad one said before the header)
    m, t = cfg.model, cfg.train
    growing = [f"{name} {start}" for name, start, full in [("batch", t.batch_start, t.batch_size),
                                                           ("block", t.block_start, m.block_size)]
               if grows(start, full, t.ramp)]  # a schedule's smaller first steps: slower a token
    duration = format_duration(seconds) if seconds >= 1 else f"{seconds:g} s"
    print("planning " + f"{args.tokens:,.0f} tokens" * bool(args.tokens)
          + " and " * bool(args.tokens and seconds) + duration * bool(seconds)
          + f": vocab {m.vocab_size:,}, block {m.block_size}, batch {t.batch_size} x "
          f"{t.grad_accum}, {t.optimizer}, dtype {t.dtype}"
          + f" (timed at full size: the run's first {t.ramp:.0%}, growing from "
            f"{' and '.join(growing)}, is slower a token)" * bool(growing)
          + "; timing each shape on this CPU...", flush=True)
    longest = min(MAX_STEP_S, seconds or MAX_STEP_S)  # a step beyond the budget: not timed
    shapes = plan(cfg, resident(cfg), longest)
    print(format_plan(shapes, args.tokens, seconds))


def cmd_prepare(args: argparse.Namespace) -> None:
    from minigpt.corpus import prepare, tokens_done
    from minigpt.records import Records

    dataset_options = (args.dataset_config, args.split, args.text_field)
    if args.text is not None and any(o is not None for o in dataset_options):
        raise MiniGPTError("--dataset-config, --split and --text-field go with --dataset, "
                           "not --text")
    source = args.text
    if args.dataset is not None:
        source = Records(args.dataset, args.dataset_config, args.split or "train",
                         args.text_field or "text", exclude=Path(args.out))
    before = tokens_done(args.out)  # an interrupted prepare's, which this one continues
    done_before = is_prepared(args.out)  # by this command, if prepare finds nothing to do
    t0 = time.perf_counter()
    try:
        index = prepare(source, args.out, args.tokenizer, args.vocab_size, args.val_fraction,
                        args.shard_tokens, progress=not args.no_progress)
    except (KeyboardInterrupt, Terminated, OSError):  # (a full disk, say)
        if tokens_done(args.out):  # complete shards were kept
            log.warning("the same command continues after the last complete shard")
        raise
    seconds = time.perf_counter() - t0
    tok, shards = index["tokenizer"], index["shards"]
    what = source.label() if args.text is None else f"{len(index['sources']['files']):,} file(s)"
    print(f"prepared {what}, {index['tokens']:,} tokens "
          f"(train {index['train_tokens']:,}, validation {index['val_tokens']:,}; "
          f"{tok['kind']}, vocab {tok['vocab_size']:,}, {index['dtype']}) in "
          f"{len(shards['train']) + len(shards['val']):,} shard(s) in {args.out}: "
          + ("already, with these settings: nothing to do" if done_before else
             f"{seconds:.1f} s, {(index['tokens'] - before) / seconds:,.0f} tokens/s"
             + f" (continued after {before:,} tokens)" * bool(before)))


def main(argv: list[str] | None = None) -> int:
    codecs.register_error("minigpt", escaped)
    for name in ("stdout", "stderr"):  # closed (>&-), which Python holds as None: nowhere
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "w"))  # noqa: SIM115 (the process's to close)
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):  # (a strict stream raised, the command unfinished)
            stream.reconfigure(errors="minigpt")
    try:
        world = world_from_env()
    except MiniGPTError as e:
        print(f"minigpt: error: {e}", file=sys.stderr)
        return 2
    show_logs(logging.INFO if world.is_main else logging.ERROR)  # rank 0 speaks for all
    # SIGTERM unwinds as Ctrl-C (not under torchrun, whose teardown it is: there it kills, as
    # the default does, a process that may be blocked in a collective call)
    unwind = threading.current_thread() is threading.main_thread() and not world.enabled
    previous = signal.signal(signal.SIGTERM, terminate) if unwind else None
    try:
        code = run_command(argv)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if world.enabled:
        # Under torchrun, leave without the interpreter's teardown: the process group is gone
        # and every file is written and closed by now, and a gloo process's teardown was seen
        # to abort now and then after a finished run (std::terminate, exit code -6), failing
        # the whole torchrun.
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)
    return code


def escaped(e: UnicodeError) -> tuple[str | bytes, int]:
    """What a stream writes for text it cannot encode: the bytes of a file name that is not
    UTF-8 (as surrogateescape does), and for any other character (a sample's, on an ASCII or
    cp1252 console) its escape, \\u65e5."""
    try:
        return codecs.lookup_error("surrogateescape")(e)
    except UnicodeError:
        return codecs.lookup_error("backslashreplace")(e)


def run_command(argv: list[str] | None) -> int:
    """Run the command argv names; its exit code, with every expected error as one line."""
    try:
        world = world_from_env()  # under torchrun, rank 0 prints --help and --version for all
        quiet = contextlib.redirect_stdout(io.StringIO())
        with contextlib.nullcontext() if world.is_main else quiet:
            args = build_parser().parse_args(argv)
        if world.enabled and args.command != "train":
            raise MiniGPTError(f"only train runs under torchrun; run minigpt {args.command} "
                               f"as one process")
        for key in ("out", "run", "resume", "config", "text", "preset"):
            if key == "text" and args.command == "attention":  # (a text to read, not a path)
                continue
            if isinstance(value := getattr(args, key, None), str) and not value.strip():
                raise MiniGPTError(f"--{key} is empty (an unset shell variable?): give it a "
                                   f"value")  # (not "or leave it out": some are required)
            if key in ("out", "run", "resume", "config") and isinstance(value, str):
                setattr(args, key, os.path.expanduser(value))  # --out=~/x: no shell expands it
        args.handler(args)  # a command that returns has done its work
        return finish_stdout(0)
    except SystemExit:  # argparse's --help and --version (its usage errors: on stderr)
        if code := finish_stdout(0):
            return code
        raise
    except MiniGPTError as e:
        say(f"minigpt: error: {e}")
        return 2
    except BrokenPipeError:  # the reader stopped reading (sample ... | head): not an error
        return finish_stdout(128 + 13)
    except OSError as e:  # disk full, permissions, a vanished file: say which, in one line
        if e.filename is None and (code := finish_stdout(0)):  # standard output's (said)
            return code
        if isinstance(e, (FileExistsError, NotADirectoryError)) and (
                file := file_on_path(e.filename)):  # --out notes.txt/run
            say(f"minigpt: error: {file} is a file, not a folder")
            return 2
        where = f": {e.filename}" if e.filename else ""
        say(f"minigpt: error: {e.strerror or e}{where}")
        return 1
    except TrainingStopped as e:  # SIGINT / SIGTERM: checkpoint saved, already said how
        return 128 + e.signum
    except KeyboardInterrupt:  # under torchrun, its Ctrl-C reached every process: rank 0 says it
        if world_from_env().is_main:
            print("minigpt: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("minigpt: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM


def finish_stdout(code: int) -> int:
    """`code`, once standard output has taken what is left in its buffer; if it cannot, the
    exit status that says so, said here rather than as Python's 'Exception ignored' at exit
    (standard output then points at /dev/null, where exit's own flush has nothing to say)."""
    try:
        sys.stdout.flush()
        return code
    except OSError as e:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        if isinstance(e, BrokenPipeError):  # the reader stopped reading (sample | head)
            return 128 + 13  # as the shell reports a process SIGPIPE stopped
        say(f"minigpt: error: cannot write to standard output: {e.strerror or e}")
        return 1


def terminate(signum, frame) -> None:
    raise Terminated


def say(line: str) -> None:
    """An error's line on stderr, once: under torchrun, rank 0 speaks for every process. The
    others wait first: an error every process meets is rank 0's to say, and torchrun stops them
    once it has; an error only one of them met, it says itself."""
    world = world_from_env()
    if not world.is_main:
        if threading.current_thread() is threading.main_thread():  # (where signals are set)
            for sig in (signal.SIGINT, signal.SIGTERM):  # torchrun's stop ends the wait silently
                signal.signal(sig, signal.SIG_DFL)
        time.sleep(OTHER_RANKS_WAIT)
        line = f"[rank {world.rank}] {line}"
    print(line, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
