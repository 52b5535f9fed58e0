"""What the benchmark scripts share: a parser described by the script's first paragraph, argument
types that refuse a value that cannot be meant (argparse's one line, before anything is timed),
a main whose MiniGPTError (a download that fails, say) is one line too, and the machine the
figures were measured on, as the table's first line and the JSON line say it.

    from common import cpu, exit_status, machine, one_of, parser, positive, positives
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
from collections.abc import Callable

import torch

from minigpt import precision
from minigpt.errors import MiniGPTError


def parser(doc: str) -> argparse.ArgumentParser:
    """The script's parser; its description, the docstring's first paragraph."""
    return argparse.ArgumentParser(description=" ".join(doc.split("\n\n")[0].split()))


def positive(kind: type = int, zero: bool = False) -> Callable[[str], float]:
    """An argument type: a finite number of `kind` above 0 (or at least 0, with `zero`)."""

    def check(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if not (value >= 0 if zero else value > 0):
            raise argparse.ArgumentTypeError(f"must be {'at least 0' if zero else 'above 0'}, "
                                             f"got {text}")
        return value

    return check


def one_of(names: tuple[str, ...]) -> Callable[[str], list[str]]:
    """An argument type: comma-separated names, each one of `names` ("lesson,minigpt"), each
    once (a second would be a second row of the same thing)."""

    def check(text: str) -> list[str]:
        given = text.split(",")
        if unknown := [n for n in given if n not in names]:
            raise argparse.ArgumentTypeError(f"unknown {unknown[0]!r} (choose from "
                                             f"{', '.join(names)})")
        return list(dict.fromkeys(given))

    return check


def positives(kind: type = int) -> Callable[[str], list]:
    """An argument type: comma-separated numbers of `kind`, each above 0 ("100,500"), each
    once (20 and 20.0 are one)."""
    return lambda text: list(dict.fromkeys(positive(kind)(part) for part in text.split(",")))


def exit_status(main: Callable[[], int]) -> int:
    """main's exit status; a MiniGPTError is one line on stderr and status 2."""
    try:
        return main()
    except MiniGPTError as e:
        print(f"{os.path.basename(sys.argv[0])}: error: {e}", file=sys.stderr)  # as argparse
        return 2


def cpu() -> str:
    """The CPU's model and its bf16 flags, for a table's first line: "AMD EPYC (no bf16 flags)"."""
    return f"{precision.cpu_name()} ({'+'.join(precision.bf16_flags()) or 'no bf16 flags'})"


def machine() -> dict:
    """What the JSON line records of the machine and of torch, as the figures were measured."""
    return {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "machine": platform.machine(), "cpu": precision.cpu_name(),
            "bf16_flags": precision.bf16_flags()}
