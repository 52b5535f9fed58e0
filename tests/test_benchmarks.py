"""The benchmark scripts' arguments: a count that cannot be meant (0 rounds, 'abc' tokens) is
argparse's one line before anything is timed, and a MiniGPTError (no TinyShakespeare to
download, say) is one line too; each script's --help describes it in whole sentences, and
every option."""

import argparse
import json
import runpy
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from minigpt import MiniGPTError

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def script(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCHMARKS / name), *args], capture_output=True,
                          text=True, timeout=120)


def as_main(monkeypatch, capsys, name: str, *args: str) -> tuple[int, str, str]:
    """`python benchmarks/NAME ARGS` in this process, for what it does before it times anything
    (a process of its own cost ~2.5 s, torch's import): the script run as __main__ with its
    folder first on the path; its exit status, stdout and stderr. One that gets past its
    arguments, and would start the benchmark itself, fails after 30 s instead of hanging."""
    def too_long(*_):
        raise TimeoutError(f"{name} {' '.join(args)} ran on past its arguments")

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setattr(sys, "argv", [str(BENCHMARKS / name), *args])
    previous = signal.signal(signal.SIGALRM, too_long)
    signal.alarm(30)
    try:
        with pytest.raises(SystemExit) as exited:
            runpy.run_path(str(BENCHMARKS / name), run_name="__main__")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return exited.value.code, *capsys.readouterr()


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
    ("local_corpus.py", ["--out", str(BENCHMARKS)], f"--out {BENCHMARKS} is not empty: give a "
     "new or empty folder"),  # (its old parts would be read with the new)
    ("local_corpus.py", ["--out", str(BENCHMARKS / "common.py")],
     f"--out {BENCHMARKS / 'common.py'} is a file"),
])
def test_a_count_that_cannot_be_meant_is_one_line(name, args, said, monkeypatch, capsys):
    code, out, err = as_main(monkeypatch, capsys, name, *args)
    assert code == 2 and out == "" and err.splitlines()[-1] == f"{name}: error: {said}"


def test_an_error_of_minigpt_is_one_line_and_help_is_whole_sentences(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # as a script there imports it
    from common import exit_status

    def main():
        raise MiniGPTError("cannot download it")

    assert exit_status(main) == 2
    assert capsys.readouterr().err == f"{Path(sys.argv[0]).name}: error: cannot download it\n"
    code, out, _ = as_main(monkeypatch, capsys, "speedrun.py", "--help")
    assert code == 0
    described = out.split("\n\n")[1]
    assert " ".join(described.split()).endswith("the default run and the `fast` preset.")


@pytest.mark.parametrize("name", sorted(p.name for p in BENCHMARKS.glob("*.py")
                                         if p.name != "common.py"))
def test_every_option_of_a_benchmark_says_what_it_does(name, monkeypatch, capsys):
    """Each script's parser, caught as it parses, has a help text for every option."""
    parsers = []

    def caught(parser, *args, **kwargs):
        parsers.append(parser)
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", caught)
    assert as_main(monkeypatch, capsys, name)[0] == 0 and parsers
    silent = [a.option_strings for p in parsers for a in p._actions if not a.help]
    assert silent == []


def test_the_data_benchmark_removes_what_it_made_and_nothing_of_the_users(tmp_path):
    """--dir names a folder of the user's: it was removed whole, with what was in it before."""
    (tmp_path / "mywork.txt").write_text("precious")
    args = ["--tokens", "20000", "--small", "0", "--files", "1", "--shard-tokens", "50000",
            "--batch-seconds", "0.1", "--dir", str(tmp_path)]
    r = script("data.py", *args)
    assert r.returncode == 0, r.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["mywork.txt"]
    assert json.loads(r.stdout.splitlines()[-1])["benchmark"] == "data"
    (tmp_path / "corpus-20000").mkdir()  # kept by --keep: not written over, nor removed
    r = script("data.py", *args)
    assert r.returncode == 2 and r.stderr.splitlines()[-1].endswith(
        f"--dir {tmp_path} holds corpus-20000 already (kept by --keep?): remove them, or choose "
        f"another --dir")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus-20000", "mywork.txt"]


def test_a_name_or_number_given_twice_is_one_row(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from common import one_of, positives

    assert one_of(("lesson", "minigpt"))("lesson,minigpt,lesson") == ["lesson", "minigpt"]
    assert positives(float)("20,180,20.0") == [20.0, 180.0]


def test_the_speedrun_says_the_dtype_auto_chose_and_prints_only_its_table(tmp_path):
    """Its rows said 'auto' (the caller's config; train resolves its own copy), and every run's
    log came before the table on stdout."""
    r = script("speedrun.py", "--budgets", "1", "--skip-default", "--rounds", "1",
               "--eval-every", "1000", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("speedrun on TinyShakespeare") and len(lines) == 6  # head, table
    row = json.loads(lines[-1])["rows"][1]
    run = next(tmp_path.glob("*/fast-1s"))
    assert row["dtype"] == json.loads((run / "config.json").read_text())["environment"]["dtype"]
    assert row["dtype"] in ("float32", "bfloat16") and f"dtype auto ({row['dtype']})" in lines[0]
