"""The `minigpt` command: a thin argparse front end over the library.

    minigpt train [--preset seed] [--config FILE] [--steps N ...] [--out DIR] [--resume DIR]
    minigpt sample --run DIR [--prompt TEXT] [--max-new-tokens N] [--temperature T] ...

Every training flag is generated from the config dataclasses, so flags, TOML keys and the
Python API share one set of names. A MiniGPTError becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import sys
from dataclasses import MISSING

from tqdm.auto import tqdm

from minigpt.config import field_index, preset_names, resolve_config
from minigpt.errors import MiniGPTError


class Parser(argparse.ArgumentParser):
    """One-line errors, with the closest flag suggested for a mistyped one."""

    def error(self, message: str):
        if message.startswith("unrecognized arguments:"):
            parsers = [self] + [p for a in self._actions
                                if isinstance(a, argparse._SubParsersAction)
                                for p in a.choices.values()]
            flags = [o for p in parsers for a in p._actions for o in a.option_strings]
            for word in message.split(":", 1)[1].split():
                close = difflib.get_close_matches(word.split("=")[0], flags, n=1)
                if close:
                    message += f" (did you mean {close[0]}?)"
                    break
        raise MiniGPTError(f"{message} (see {self.prog} --help)")


class TqdmHandler(logging.Handler):
    """Log lines printed above the progress bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        prefix = "warning: " if record.levelno >= logging.WARNING else ""
        tqdm.write(prefix + record.getMessage(), file=sys.stdout)


METAVARS = {int: "N", float: "X", str: "TEXT"}


def add_config_flags(p: argparse.ArgumentParser) -> None:
    """--flag for every config field (except those set by the program), default: not given."""
    for name, (section, f) in field_index().items():
        if f.metadata.get("cli") is False:
            continue
        flag = "--" + name.replace("_", "-")
        help_text = f"{f.metadata['help']} (default {f.default!r})"
        kind = type(f.default) if f.default is not MISSING else str
        if kind is bool:
            p.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction,
                           default=argparse.SUPPRESS, help=help_text)
        else:
            p.add_argument(flag, dest=name, type=kind, default=argparse.SUPPRESS,
                           choices=f.metadata.get("choices"), help=help_text,
                           metavar=None if f.metadata.get("choices") else METAVARS[kind])


def build_parser() -> Parser:
    parser = Parser(prog="minigpt", allow_abbrev=False,
                    description="Train a small GPT on TinyShakespeare (or any text) and see "
                                "every part of the training loop.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    t = sub.add_parser(
        "train", allow_abbrev=False, help="train a MiniGPT",
        description="Train MiniGPT. With no arguments: the lesson's model on TinyShakespeare "
                    "(downloaded and cached on first use), warmup + cosine, clipping, AdamW, "
                    "5000 steps. Settings: preset < --config file < flags.")
    t.add_argument("--preset", default="seed", metavar="NAME",
                   help=f"starting configuration: {', '.join(preset_names())} (default seed)")
    t.add_argument("--config", metavar="FILE", help="TOML file with [model] [train] [data]")
    t.add_argument("--out", metavar="DIR", help="run folder (default runs/<text>-<time>)")
    t.add_argument("--resume", metavar="DIR",
                   help="continue the run in DIR from its last checkpoint")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_flags(t)

    s = sub.add_parser("sample", allow_abbrev=False, help="generate text from a trained run",
                       description="Stream the prompt and its continuation to stdout.")
    s.add_argument("--run", required=True, metavar="DIR", help="a run folder made by train")
    s.add_argument("--prompt", default="ROMEO:", help="text to continue (default ROMEO:)")
    s.add_argument("--max-new-tokens", type=int, default=300, metavar="N",
                   help="how many tokens to generate (default 300)")
    s.add_argument("--temperature", type=float, default=1.0, metavar="T",
                   help="divide the logits by T (0 = always the most likely token)")
    s.add_argument("--top-k", type=int, metavar="K", help="sample among the K most likely")
    s.add_argument("--top-p", type=float, metavar="P",
                   help="sample among the most likely tokens holding probability P")
    s.add_argument("--seed", type=int, default=1337, help="same seed, same text")
    s.add_argument("--checkpoint", default="best", choices=("best", "last"),
                   help="the best validation checkpoint (default) or the latest")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    from minigpt.trainer import resume_config, train

    overrides = {k: v for k, v in vars(args).items() if k in field_index()}
    if args.resume:
        if args.out or args.config or args.preset != "seed":
            raise MiniGPTError("--resume continues a run as it was saved: no --out, --config "
                               "or --preset with it")
        cfg = resume_config(args.resume, overrides)
        summary = train(cfg, args.resume, resume=True, progress=not args.no_progress)
    else:
        cfg = resolve_config(args.preset, args.config, overrides)
        summary = train(cfg, args.out, progress=not args.no_progress)
    print(json.dumps(summary))
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from minigpt.checkpoint import load_model
    from minigpt.environment import resolve_device
    from minigpt.sample import check_sampling, stream

    if args.max_new_tokens < 0:
        raise MiniGPTError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    check_sampling(args.temperature, args.top_k, args.top_p)
    device = resolve_device(args.device)
    model, tok, _ = load_model(args.run, args.checkpoint, device)
    if not args.prompt:
        raise MiniGPTError("--prompt must not be empty")
    idx = torch.tensor([tok.encode(args.prompt)], device=device)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    sys.stdout.write(args.prompt)
    for token in stream(model, idx, args.max_new_tokens, temperature=args.temperature,
                        top_k=args.top_k, top_p=args.top_p, generator=gen):
        sys.stdout.write(tok.decode(token[0].tolist()))
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    logger = logging.getLogger("minigpt")
    if not logger.handlers:
        logger.addHandler(TqdmHandler())
        logger.setLevel(logging.INFO)
    try:
        args = build_parser().parse_args(argv)
        return {"train": cmd_train, "sample": cmd_sample}[args.command](args)
    except MiniGPTError as e:
        print(f"minigpt: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("minigpt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
