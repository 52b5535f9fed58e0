"""The benchmark scripts' arguments: a count that cannot be meant (0 rounds, 'abc' tokens) is
argparse's one line before anything is timed, and a MiniGPTError (no TinyShakespeare to
download, say) is one line too; each script's --help describes it in whole sentences."""

import subprocess
import sys
from pathlib import Path

import pytest

from minigpt import MiniGPTError

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def script(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCHMARKS / name), *args], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("name, args, said", [
    ("train_step.py", ["--rounds", "0"], "argument --rounds: must be above 0, got 0"),
    ("train_step.py", ["--variants", "lesson,bogus"], "argument --variants: unknown 'bogus' "
     "(choose from lesson, minigpt, float32-eager, foreach-adamw, compile, bf16-autocast, "
     "bf16-compile, bf16-weights)"),
    ("data.py", ["--batch-seconds", "inf"], "argument --batch-seconds: must be a finite number, "
     "got inf"),
    ("sample.py", ["--new-tokens", "100,abc"], "argument --new-tokens: not a number: 'abc'"),
    ("speedrun.py", ["--budgets", "20,-1"], "argument --budgets: must be above 0, got -1"),
    ("data.py", ["--small", "-5"], "argument --small: must be at least 0, got -5"),
])
def test_a_count_that_cannot_be_meant_is_one_line(name, args, said):
    r = script(name, *args)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.splitlines()[-1] == f"{name}: error: {said}"


def test_an_error_of_minigpt_is_one_line_and_help_is_whole_sentences(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # as a script there imports it
    from common import exit_status

    def main():
        raise MiniGPTError("cannot download it")

    assert exit_status(main) == 2
    assert capsys.readouterr().err == f"{Path(sys.argv[0]).name}: error: cannot download it\n"
    described = script("speedrun.py", "--help").stdout.split("\n\n")[1]
    assert " ".join(described.split()).endswith("the default run and the `fast` preset.")
