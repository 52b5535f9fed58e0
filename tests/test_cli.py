"""The `minigpt` command as a user runs it: train, sample, --help, and one-line errors."""

import fcntl
import gzip
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import minigpt
from conftest import (
    MAIN_THREAD_ONLY,
    TINY_FLAGS,
    as_rank,
    in_process,
    one_line_error,
    run_cli,
    tiny_config,
)
from minigpt.cli import COMPARE_STEPS, check_out_suffix, main
from minigpt.console import count, finite_or_none, log_eval, log_start, log_summary, visible
from minigpt.environment import describe, resolve_device
from minigpt.errors import MiniGPTError, ctrl_c_held, torchrun_command
from minigpt.files import MADE, read_jsonl
from minigpt.sample import sample_text
from minigpt.tokenizer import CharTokenizer


def test_train_prints_split_sizes_figures_and_summary(cli_run):
    out, r, text = cli_run
    n = len(text.read_text())
    n_train = int(0.9 * n)
    assert f"vocab {len(set(text.read_text()))}," in r.stdout
    assert f"{n_train:,} train and {n - n_train:,} val tokens" in r.stdout
    assert (f"warning: --eval-batches 4 reads 1,024 tokens an evaluation, more than the "
            f"validation split's {n - n_train:,}") in r.stderr  # 4 x 8 x 32, TINY's
    assert "final validation loss (whole split" in r.stdout
    assert ("warning: warmup (100 steps) is the whole run: the learning rate will only rise, "
            "and never decay; try --warmup-steps 4") in r.stderr  # 40 steps, default warmup
    assert "warning: --normuon (muon only) set, but the run uses adamw" in r.stderr
    assert "warning" not in r.stdout  # (the run's lines are its output; warnings are not)
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary == json.loads((out / "summary.json").read_text())


@pytest.mark.slow  # three processes that each load torch
def test_sample_streams_prompt_and_is_seeded(cli_run):
    out, _, _ = cli_run
    args = ["sample", "--run", str(out), "--prompt", "ROMEO:", "--max-new-tokens", "60"]
    a, b = run_cli(*args, "--seed", "1"), run_cli(*args, "--seed", "1")
    c = run_cli(*args, "--seed", "2")
    assert a.returncode == 0, a.stderr
    assert a.stdout.startswith("ROMEO:") and len(a.stdout) == len("ROMEO:") + 60 + 1
    assert a.stdout == b.stdout != c.stdout  # (greedy sampling: test_export, against transformers)


def test_sample_into_a_pipe_that_closes_stops_quietly(cli_run):
    """sample ... | head -c 50: the reader leaves, and sample stops without a word."""
    proc = subprocess.Popen([sys.executable, "-m", "minigpt", "sample", "--run", str(cli_run[0]),
                             "--max-new-tokens", "100000"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert len(proc.stdout.read(50)) == 50
    proc.stdout.close()
    assert proc.wait(timeout=120) == 141
    assert proc.stderr.read() == b""


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize("args", [["--version"], ["autograd"], ["sample", "--max-new-tokens",
                                                                 "20000"]])
def test_standard_output_on_a_full_disk_is_one_line_and_exit_1(cli_run, args):
    """stdout > /dev/full: what was left in its buffer failed at exit, as Python's two-line
    'Exception ignored' and exit 120 (sample: after the command's own error line)."""
    args = [*args, "--run", str(cli_run[0])] if args[0] == "sample" else args
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "minigpt", *args], stdout=full,
                           stderr=subprocess.PIPE, text=True, timeout=120,
                           env={**os.environ, "PYTHONUNBUFFERED": ""})  # (as by default;
    # unbuffered, argparse drops --version's failed write itself, and sample's error is the
    # disk's: 'No space left on device', without naming standard output)
    assert (r.returncode, r.stderr) == (
        1, "minigpt: error: cannot write to standard output: No space left on device\n")


@pytest.mark.parametrize("args", [["--version"], ["autograd"]])
def test_a_closed_standard_output_is_nowhere_to_write_not_an_error(args):
    """>&-: Python holds a closed stdout as None; the last flush failed on it with a
    traceback and exit 1, after the command's work was done."""
    r = subprocess.run([sys.executable, "-m", "minigpt", *args], stderr=subprocess.PIPE,
                       text=True, timeout=120, preexec_fn=lambda: os.close(1))
    assert (r.returncode, r.stderr) == (0, "")


@pytest.mark.parametrize("args", [["--version"], ["autograd"]])
def test_a_pipe_closed_before_the_last_flush_stops_quietly_as_sigpipe(args):
    """The reader gone before any of the output was flushed (buffered, as by default): the
    last flush is the one that meets the closed pipe, and it exits as a pipe's stop (141),
    without a word, as sample | head does, not as a failed write (1)."""
    reader, writer = os.pipe()
    os.close(reader)
    try:
        r = subprocess.run([sys.executable, "-m", "minigpt", *args], stdout=writer,
                           stderr=subprocess.PIPE, text=True, timeout=120,
                           env={**os.environ, "PYTHONUNBUFFERED": ""})
    finally:
        os.close(writer)
    assert (r.returncode, r.stderr) == (141, "")


def test_a_closed_standard_error_still_ends_an_error_with_its_exit_status():
    """2>&-: Python holds a closed stderr as None; the one-line error has nowhere to go, but
    the command still exits 2, as for any error, not with a crash writing it."""
    r = subprocess.run([sys.executable, "-m", "minigpt", "autograd", "--at", "x=2,x=3"],
                       stdout=subprocess.PIPE, text=True, timeout=120,
                       preexec_fn=lambda: os.close(2))
    assert (r.returncode, r.stdout) == (2, "")


def test_autograd_at_given_twice_adds_the_points_up(capsys):
    """--at x=2 --at y=3 is x=2,y=3, as a learner who repeats a flag means: the second one
    replaced the first, and 'no value for variable 'x'' came of an x given. The gradients are
    by hand: d(x*y)/dx = y, d(x*y)/dy = x."""
    assert main(["autograd", "--expr", "x*y", "--at", "x=2", "--at", "y=3"]) == 0
    out = capsys.readouterr().out
    assert "df/dx = 3" in out and "df/dy = 2" in out
    assert "'x' twice" in one_line_error(capsys, ["autograd", "--at", "x=2", "--at", "x=3"])


def test_python_m_minigpt_cli_is_the_command_too():
    """`python -m minigpt.cli` (the module itself run) works as `minigpt` does, its exit
    status and its one-line error included."""
    r = subprocess.run([sys.executable, "-m", "minigpt.cli", "autograd", "--at", "x=2,x=3"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("minigpt: error: ") and r.stderr.count("\n") == 1


def test_an_out_suffix_in_capitals_is_the_same_kind_of_file():
    """report --out R.HTML, attention --out A.PNG: the suffix is read whatever its case."""
    for out, suffixes in [("r.HTML", (".html", ".htm")), ("r.Htm", (".html", ".htm")),
                          ("a.PNG", (".png",))]:
        check_out_suffix(out, suffixes, "writes one")
    with pytest.raises(MiniGPTError, match="give a path ending in .png"):
        check_out_suffix("a.PNG.txt", (".png",), "writes one")


def test_the_command_a_run_suggests_pastes_as_it_is_for_a_folder_named_with_a_dash(
        cli_run, tmp_path, capsys, monkeypatch):
    """--out=-run: the hint said 'minigpt sample --run -run', which the command read as an
    option without a value."""
    monkeypatch.chdir(tmp_path)
    r = in_process(capsys, "train", "--text", str(cli_run[2]), *TINY_FLAGS, "--steps", "2",
                   "--eval-every", "1", "--out=-my run")
    assert r.returncode == 0, r.stderr
    hint = next(line for line in r.stdout.splitlines() if "sample from it with:" in line)
    command = shlex.split(hint.split("sample from it with: ", 1)[1])
    assert command == ["minigpt", "sample", "--run", "./-my run"]
    s = in_process(capsys, *command[1:], "--max-new-tokens", "5")
    assert s.returncode == 0, s.stderr
    assert s.stdout.startswith("ROMEO:")


def test_a_prompt_with_windows_line_ends_reads_as_the_text_was_read(cli_run, capsys):
    out, _, text = cli_run
    assert "\r" not in text.read_text() and "\n" in text.read_text()
    assert main(["sample", "--run", str(out), "--prompt", "the\r\nthe\rthe",
                 "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("the\nthe\nthe")


def test_a_run_folder_as_config_trains_the_same_run_again(cli_run, tmp_path, capsys):
    """--config runs/x: the settings a run ran with (its config.json), to run it again."""
    out, _, _ = cli_run
    again = tmp_path / "again"
    assert main(["train", "--config", str(out), "--out", str(again), "--no-progress"]) == 0
    rows = [read_jsonl(folder / "metrics.jsonl") for folder in (out, again)]
    assert [r["train_loss"] for r in rows[0]] == [r["train_loss"] for r in rows[1]]
    assert [r.get("val_loss") for r in rows[0]] == [r.get("val_loss") for r in rows[1]]
    (tmp_path / "other.json").write_text('{"steps": 3}')
    assert one_line_error(capsys, ["train", "--config", str(tmp_path / "other.json")]) == (
        f"minigpt: error: {tmp_path / 'other.json'} is not a run's config.json (a config file "
        f"is TOML)")


# Ctrl-C (os.kill) while torch is imported: the first import of torch sends it
CTRL_C_IN_IMPORT = """
import os, runpy, signal, sys
class CtrlC:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
sys.meta_path.insert(0, CtrlC())
sys.argv = ["minigpt", "--version"]
runpy.run_module("minigpt", run_name="__main__")
"""


TORCHRUN_1_OF_2 = {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}


@pytest.mark.parametrize("place, said", [({}, "minigpt: interrupted\n"), (TORCHRUN_1_OF_2, ""),
                                         ({"RANK": "00"}, "minigpt: interrupted\n"),
                                         ({"RANK": "1"}, "minigpt: interrupted\n"),
                                         ({"RANK": "one", "WORLD_SIZE": "2"},
                                          "minigpt: interrupted\n")])
def test_ctrl_c_while_torch_loads_is_one_line_and_exit_130(place, said):
    """Under torchrun (rank 1 of 2), torchrun passes its Ctrl-C to every process: rank 0 says
    it, and another rank's line would say it again, once a process. RANK is read as the
    command reads it (world_from_env): '00' is rank 0, and RANK=1 with no WORLD_SIZE is a
    process alone, which said nothing where its string was not '0'. A RANK that is no number
    places the process at no other rank (the command refuses it in every process), so the
    interruption is said, not swallowed as another rank's."""
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_1_OF_2} | place
    r = subprocess.run([sys.executable, "-c", CTRL_C_IN_IMPORT], capture_output=True, text=True,
                       timeout=120, env=env)
    assert (r.returncode, r.stdout, r.stderr) == (130, "", said)


@pytest.mark.parametrize("rank", [0, 1])
def test_version_and_help_under_torchrun_are_printed_by_rank_zero_alone(rank, monkeypatch,
                                                                        capsys):
    """`torchrun ... -m minigpt --version` (or `train --help`) runs the command in every
    process: each printed it, so the terminal showed it once a process."""
    import minigpt.cli as cli

    as_rank(monkeypatch, rank)
    for args in (["--version"], ["train", "--help"]):
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            cli.run_command(args)
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert (out == "") == (rank == 1), out[:200]


@pytest.mark.parametrize("rank", [0, 1])
def test_ctrl_c_under_torchrun_is_said_by_rank_zero_alone(rank, monkeypatch, capsys):
    """torchrun passes a Ctrl-C to every process at once: each is interrupted, not by an error
    of its own, so rank 0's line is the one line (rank 1 waited, then said it again as
    '[rank 1] minigpt: interrupted'). Both exit 130."""
    import minigpt.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt

    as_rank(monkeypatch, rank)
    monkeypatch.setattr(cli, "cmd_train", interrupted)
    monkeypatch.setattr(cli, "OTHER_RANKS_WAIT", 0.0)
    monkeypatch.setattr(cli.signal, "signal", lambda *a: None)  # (say's, for rank 1: not ours)
    capsys.readouterr()
    assert cli.run_command(["train"]) == 130
    assert capsys.readouterr().err == ("minigpt: interrupted\n" if rank == 0 else "")


@pytest.mark.parametrize("rank", [0, 1])
def test_a_command_other_than_train_under_torchrun_is_refused_each_rank_naming_itself(
        rank, monkeypatch, capsys):
    """Every process meets the refusal: rank 0 says it as any error, the others (after a wait,
    for torchrun to stop them first) with their rank in front, so a line is never rank 0's
    twice. Exit status 2 on each."""
    import minigpt.cli as cli

    as_rank(monkeypatch, rank)
    monkeypatch.setattr(cli, "OTHER_RANKS_WAIT", 0.0)
    monkeypatch.setattr(cli.signal, "signal", lambda *a: None)  # (say's, for rank 1: not ours)
    capsys.readouterr()
    assert cli.run_command(["autograd"]) == 2
    line = ("minigpt: error: only train runs under torchrun; run minigpt autograd as one "
            "process\n")
    assert capsys.readouterr() == ("", line if rank == 0 else f"[rank {rank}] {line}")


def test_a_config_file_after_an_equals_sign_is_found_under_the_home_folder(tmp_path, capsys,
                                                                          monkeypatch):
    """--config=~/x.toml: no shell expands it, so minigpt does (the file's own error shows it
    was read, where ~/x.toml as typed is no file)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "x.toml").write_text("[diag]\nsample_every = -1\n")
    line = one_line_error(capsys, ["train", "--config=~/x.toml"])
    assert "x.toml: 'sample_every' must not be negative" in line, line


@MAIN_THREAD_ONLY
def test_ctrl_c_held_during_an_import_is_raised_after_it():
    """(export's import of transformers: a KeyboardInterrupt inside it can be swallowed)"""
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with ctrl_c_held():
            os.kill(os.getpid(), signal.SIGINT)
            done = True  # (not interrupted here)
    assert done and signal.getsignal(signal.SIGINT) is before is signal.default_int_handler


def test_ctrl_c_held_outside_the_main_thread_leaves_the_handler_alone():
    """(an import in another thread, a notebook's background one: no handler can be set there,
    signal.signal would raise ValueError; Ctrl-C is the main thread's to raise)"""
    import threading

    before, raised = signal.getsignal(signal.SIGINT), []

    def load():
        try:
            with ctrl_c_held():
                pass
        except BaseException as e:  # (a thread's exception would be lost: kept to assert on)
            raised.append(e)

    worker = threading.Thread(target=load)
    worker.start()
    worker.join()
    assert raised == [] and signal.getsignal(signal.SIGINT) is before


def test_a_finished_command_is_not_undone_by_ctrl_c_in_the_teardown():
    code = ("import signal, sys; from minigpt.__main__ import main; sys.argv = ['minigpt', "
            "'autograd']; code = main(); "
            "print(code, signal.getsignal(signal.SIGINT) == signal.SIG_IGN)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.splitlines()[-1] == "0 True", r.stderr


def test_what_a_console_cannot_encode_is_escaped_not_a_crash():
    """A sample's characters on an ASCII console (a cp1252 one, PYTHONIOENCODING=ascii) come
    out escaped; a file name's undecodable bytes come out as those bytes."""
    import codecs
    import io

    from minigpt.cli import escaped
    codecs.register_error("minigpt", escaped)
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii", errors="minigpt")
    stream.write("caf\u00e9 \u65e5 " + b"n\xe4me".decode("utf-8", "surrogateescape"))
    stream.flush()
    assert raw.getvalue() == b"caf\\xe9 \\u65e5 n\xe4me"


def test_help_explains_every_lesson_flag(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")  # argparse's width, as in a terminal of 80 columns

    def said(*args: str) -> str:
        with pytest.raises(SystemExit) as done:
            main(list(args))
        assert done.value.code == 0
        return capsys.readouterr().out

    train = said("train", "--help")
    for flag in ["--steps", "--batch-size", "--block-size", "--n-embd", "--n-head", "--n-layer",
                 "--lr", "--min-lr", "--warmup-steps", "--optimizer", "--weight-decay",
                 "--grad-clip", "--eval-every", "--eval-batches", "--patience", "--seed",
                 "--text", "--out", "--resume", "--preset", "--config"]:
        assert flag in train
    assert "--seed SEED           same seed, same text (default 1337)" in said("sample", "--help")
    compare = said("compare", "--help")  # compare's own default, not train's 5000
    assert f"optimizer steps of each variant (default {COMPARE_STEPS})" in compare
    assert "--patience" not in compare.split("options:")[1]  # (compare refuses it)
    # the package's version and the torch it runs on
    assert said("--version") == f"minigpt {minigpt.__version__} (torch {torch.__version__})\n"


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    """Inputs a user might pass by mistake, one file each."""
    d = tmp_path_factory.mktemp("bad")
    (d / "empty.txt").write_text("")
    (d / "latin1.txt").write_bytes("caf\xe9 cr\xe8me br\xfbl\xe9e\n".encode("latin-1") * 50)
    (d / "text.txt.gz").write_bytes(gzip.compress(b"To be, or not to be\n" * 50))
    (d / "nul.txt").write_bytes(b"To be\x00 or not\n" * 50)  # (UTF-8, but not text)
    (d / "short.txt").write_text("x" * 300)  # 270 train, 30 validation tokens
    (d / "a-file").write_text("not a folder")
    (d / "latin1.toml").write_bytes("# caf\xe9\n[train]\nsteps = 5\n".encode("latin-1"))
    (d / "bom-latin1.toml").write_bytes(b"\xef\xbb\xbf" + (d / "latin1.toml").read_bytes())
    (d / "forever.toml").write_text("[train]\ntime_budget = inf\n")  # TOML's own infinity
    (d / "diag.toml").write_text("[diag]\nsample_every = -1\n")  # a section beyond the core's
    (d / "half-prepared").mkdir()  # what an interrupted prepare leaves
    (d / "half-prepared" / "progress.json").write_text("{}")
    (d / "half-prepared" / "config.json").write_text('{"config": {}}')  # a run's, copied in
    (d / "emptied-run" / "checkpoints").mkdir(parents=True)  # its checkpoints deleted, or a
    (d / "emptied-run" / "checkpoints" / ".step-000005.json.x.tmp").write_text("")  # first save
    (d / "a-comparison").mkdir()  # killed: a temporary file at most
    (d / "a-comparison" / "variants.json").write_text("{}")
    for name, record in [("list-run", []), ("keyless-run", {"format": "minigpt-checkpoint/1"})]:
        (d / name / "checkpoints").mkdir(parents=True)  # a last.json damaged into valid JSON
        (d / name / "checkpoints" / "last.json").write_text(json.dumps(record))
    model = minigpt.MiniGPT(3, n_embd=8, n_head=1, n_layer=1, block_size=4)  # a model alone,
    minigpt.save_checkpoint(d / "model-only-run" / "checkpoints", ["last"], model,  # no run
                            torch.optim.AdamW(model.parameters()),
                            {"step": 1, "tokenizer": CharTokenizer.from_text("abc").to_dict()},
                            {"torch": torch.get_rng_state()})
    return d


# every row: a mistake, and the words the one-line error must contain
BAD_INPUT = [
    (["train", "--lrr", "1"], "(did you mean --lr?) (see minigpt train --help)"),
    (["autograd", "x**2"], "unrecognized arguments: x**2 (each value goes after its flag) "
                           "(see minigpt autograd --help)"),
    (["graph", "--device", "cpu"], "unrecognized arguments: --device cpu (--device belongs to "
                                   "other commands)"),  # not "did you mean --device?"
    # a suggestion is one of the command's own flags (--steps, graph's --depth were offered)
    (["sample", "--run", "x", "--temp", "0.5"], "--temp 0.5 (did you mean --temperature?) (see"),
    (["prepare", "--text", "x", "--out", "y", "--tok", "bpe"], "(did you mean --tokenizer?) (see"),
    (["sample", "--run", "x", "--tokens", "5"], "(--tokens belongs to other commands; did you "
                                                "mean --max-new-tokens?) (see"),
    (["sample", "--run", "x", "--length", "5"], "arguments: --length 5 (see minigpt sample"),
    (["train", "--val", "0.1"], "(did you mean --val-fraction?)"),  # not --value-embeds
    (["train", "--grad", "1"], "(did you mean --grad-accum or --grad-clip?)"),
    (["autograd", "--batch", "2"], "arguments: --batch 2 (see"),  # not --at (the dashes)
    (["graph", "--temp", "1"], "arguments: --temp 1 (see"),  # not --help
    (["attention", "--run", "x", "--prompt", "hi"], "(--prompt belongs to other commands; "
                                                    "did you mean --text?)"),
    (["train", "--version"], "(--version goes before the command: minigpt --version)"),
    (["train", "--output", "runs/x"], "--output runs/x (did you mean --out?)"),
    (["report", "--run", "x", "--output-dir", "y"], "(did you mean --out?)"),
    (["train", "--preset", "sede"], "did you mean 'seed'"),
    (["train", "--config", "{bad}/missing.toml"], "config file not found"),
    (["train", "--config", "{bad}"], "is a folder but not a run's (no config.json)"),  # (errno)
    (["train", "--resume", "{bad}/a-comparison"], "a-comparison holds a comparison, not a "
                                                   "training run: no checkpoint to load there"),
    (["sample", "--run", "{bad}/half-prepared"], "half-prepared holds an unfinished prepare, not "
                                                 "a training run: no checkpoint to load there"),
    (["train", "--resume", "{bad}/half-prepared"], "half-prepared holds an unfinished prepare"),
    (["report", "--run", "{bad}/half-prepared"], "half-prepared holds an unfinished prepare"),
    (["train", "--text", "/nonexistent/x.txt"], "text file not found"),
    (["train", "--text", "{bad}/*.txt"], "*.txt is a pattern, not a text file: minigpt prepare"),
    (["train", "--data", "/nonexistent/y.txt"], "text file not found: /nonexistent/y.txt"),
    (["train", "--text", "{bad}/a-comparison"], "a-comparison is a folder, not a text file or "
                                                 "a prepared corpus: minigpt prepare --text "),
    (["train", "--text", "{bad}/half-prepared"], "half-prepared is a corpus whose prepare did "
                                                 "not finish: run the same minigpt prepare"),
    (["train", "--text", "{bad}/empty.txt"], "is empty"),
    (["train", "--text", "{bad}/latin1.txt"], "is not UTF-8 text"),
    (["train", "--text", "{bad}/text.txt.gz"], "text.txt.gz is gzip-compressed text: decompress"),
    (["train", "--text", "{bad}/nul.txt"], "nul.txt looks binary (it contains NUL bytes)"),
    (["train", "--text", "{bad}/short.txt"], "validation split has 30 tokens, fewer than "
     "block_size + 1 = 129; use a longer text, a smaller --block-size or a larger --val-fraction "
     "(a prepared corpus's: minigpt prepare's)"),
    (["train", "--text", "{text}", "--tokenizer", "bpe"], "give one of at least 257, such as 1024"),
    (["train", "--text", "{bad}/short.txt", "--block-size", "280"], "train split has 270"),
    (["train", "--n-embd", "30", "--n-head", "4"], "divisible"),
    (["train", "--steps", "0"], "'steps' must be positive"),
    (["train", "--steps", str(10**20)], "'steps' must be below 2**63"),
    (["train", "--batch-size", "-1"], "'batch_size' must be positive"),
    (["train", "--block-size", "0"], "'block_size' must be positive"),
    (["train", "--lr", "0"], "'lr' must be positive"),
    (["train", "--optimizer", "adam"], "invalid choice"),
    (["train", "--attention-text="], "'attention_text' is empty: give the attention maps a text"),
    (["compare", "--variant", "a:targets=3.9,3.3"], "'3.3' is not KEY=VALUE, such as pos=rope "
                                                    "(commas part the settings, so no value"),
    (["train", "--seed", "99999999999999999999"], "'seed' must be a 64-bit integer"),
    (["train", "--grad-clip", "nan"], "'grad_clip' must be a finite number, got nan"),
    (["train", "--weight-decay", "inf"], "'weight_decay' must be a finite number, got inf"),
    # a config file's bytes not UTF-8 are said as --text's are: where in the file, not
    # Python's codec message ("'utf-8' codec can't decode byte 0xe9 in position 5: ...")
    (["train", "--config", "{bad}/latin1.toml"], "latin1.toml is not UTF-8 text (at byte 5: "
                                                 "invalid continuation byte)"),
    (["train", "--config", "{bad}/bom-latin1.toml"], "(at byte 8: "),  # (the mark's 3 counted)
    (["train", "--config", "{bad}/forever.toml"], "'time_budget' must be a finite number"),
    (["train", "--config", "{bad}/diag.toml"], "diag.toml: 'sample_every' must not be negative"),
    (["train", "--text", "{text}", "--eval-batches", "5000"],  # (10**12: it evaluated for ever)
     "--eval-batches 5,000 draws more batches an evaluation than the validation split has "
     "tokens (960)"),
    (["train", "--time-budget", "soon"], "'time_budget' must be a duration such as 90, 30m, "
                                           "8h or 1h30m, got 'soon'"),
    (["train", "--beta1", "2"], "'beta1' must be in [0, 1), got 2.0"),
    (["train", "--targets", "1.72,nan"], "'targets' must be positive losses separated by commas"),
    (["train", "--targets", "1.72,x"], "'targets' must be positive losses separated by commas"),
    (["train", "--optimizer", "sgd", "--momentum", "1.5"], "'momentum' must be in [0, 1)"),
    (["train", "--block-size", "5000", "--text", "{text}", "--val-fraction", "0.5"],
     "the train split has 4,800 tokens, fewer than block_size + 1 = 5,001"),
    # a typo'd shape is refused before its terabytes are allocated (or, past 64 blocks, counted)
    (["train", "--text", "{text}", "--n-embd", "65536", "--n-head", "1", "--block-size", "8"],
     "parameters (4 layers, 65536 wide) needs about 3,07"),  # 12 C² a layer: 206 G params
    (["train", "--text", "{text}", "--n-embd", str(2**40), "--n-head", "1"],
     "matrices too large for torch to describe"),  # (torch's overflow, a traceback)
    (["train", "--text", "{text}", "--n-embd", str(2**64), "--n-head", "1"],
     "matrices too large for torch to describe"),  # (a size past int64: a TypeError's traceback)
    (["train", "--grad-accum", str(10**12)], "'grad_accum' must be at most 65,536"),
    (["train", "--text", "{text}", "--n-layer", "10000000", "--block-size", "8"],
     "parameters (10000000 layers, 64 wide) needs about 7,4"),  # 50 K a layer: 500 G
    (["train", "--text", "{text}", "--out", "{bad}/a-file/run"], "a-file is a file"),
    (["train", "--text", "{bad}/no.txt", "--out", "{bad}/a-file/run"], "a-file is a file"),  # (said
    # before the text is read)
    (["train", "--text", "{text}", "--out", "{bad}/a-file"], "/a-file: is a file"),
    (["train", "--text", "/dev/null"], "/dev/null is not a regular file"),  # (said: not found)
    (["prepare", "--text", "/dev/null", "--out", "{bad}/p"], "/dev/null is not a regular file"),
    (["train", "--text", "{text}", "--out", "{run}"], "already holds a run"),
    (["train", "--resume", "{run}", "--steps", "5"], "the run is at step 40, past --steps 5: "
                                                      "give a larger"),  # (config.json said 5)
    (["train", "--resume", "{run}", "--n-layer", "3"], "cannot change n_layer"),
    (["train", "--resume", "{run}", "--block-size", "64"], "cannot change block_size"),
    (["train", "--resume", "{run}", "--steps", "50", "--seed", "7"],  # (it would change nothing
     "cannot change seed from 1337 to 7 (the batch streams and random state go on from the "  # but
     "checkpoint)"),  # the record)
    (["train", "--resume", "{run}", "--preset", "fast"], "; resume without --preset: the run "
                                                         "keeps its own settings"),
    # --out beside --resume must name the same folder: another would be neither continued
    # nor made (the run goes on in --resume's), so it is refused rather than ignored
    (["train", "--resume", "{run}", "--out", "{bad}/elsewhere"], "name different folders"),
    # (the same folder spelt another way is the same: the resume goes on to its own check)
    (["train", "--resume", "{bad}/emptied-run", "--out", "{bad}/emptied-run/./"],
     "emptied-run/checkpoints has no last.json"),
    (["train", "--resume", "{bad}"], "holds no checkpoints: not a run folder"),
    (["train", "--resume", "{bad}/list-run"],
     "last.json is not readable: a JSON object was expected, got list"),
    (["train", "--resume", "{bad}/keyless-run"], "is not readable: 'file' is missing or not a str"),
    (["train", "--resume", "{bad}/model-only-run"], "holds a model but not its training run's"),
    (["gradflow", "--run", "{bad}/model-only-run"], "train --resume and gradflow cannot"),
    (["sample", "--run", "{bad}/model-only-run"], "checkpoints (it has a 'last' one)"),  # best?
    (["export", "--run", "{bad}/model-only-run", "--out", "{bad}/hf"], "(it has a 'last' one)"),
    (["sample", "--run", "{run}", "--prompt", "ZZZ"], "--prompt: text has 1 character(s) outside "
                                                       "the vocabulary: 'Z'"),
    (["sample", "--run", "/nonexistent"], "no run folder /nonexistent"),
    (["report", "--run", "/nonexistent"], "no run folder /nonexistent"),
    (["sample", "--run", "{bad}"], "holds no checkpoints"),  # (not "... in {bad}/checkpoints")
    # a checkpoints folder there but holding none: the same words, from every command (they
    # said "no 'best' checkpoint in .../checkpoints", as if a 'last' one could be asked for)
    (["sample", "--run", "{bad}/emptied-run"], "emptied-run holds no checkpoints: not a run"),
    (["gradflow", "--run", "{bad}/emptied-run"], "emptied-run holds no checkpoints: not a run"),
    (["attention", "--run", "{bad}/emptied-run"], "emptied-run holds no checkpoints: not a run"),
    (["graph", "--run", "{bad}/emptied-run"], "emptied-run holds no checkpoints: not a run"),
    (["sample", "--run", "{text}"], "is a file, not a run folder"),  # (not "no run folder")
    (["sample", "--run", "{run}", "--prompt", ""], "minigpt: error: --prompt must not be empty"),
    (["compare", "--steps", "1", "--out", "{bad}/compare"],  # (no variant, no axis)
     "nothing to compare: give --variant, --optimizers, --schedules or --clip"),
    (["train", "--resume", "{run}", "--grad-accum", "2"],  # (its batch streams would change)
     "the run was trained by 1 process(es) with --grad-accum 1; resume it the same way to "
     "continue its batch streams: minigpt train --resume {run}"),  # (its own --grad-accum)
    (["sample", "--run", "{run}", "--top-p", "2"], "--top-p must be in"),
    (["sample", "--run", "{run}", "--top-k", "0"], "--top-k must be a whole number >= 1"),
    (["sample", "--run", "{run}", "--temperature", "-1"], "--temperature must be >= 0"),
    (["sample", "--run", "{run}", "--max-new-tokens", "-3"], "--max-new-tokens must be >= 0"),
    (["sample", "--run", "{run}", "--seed", str(2**63)], "--seed must be a 64-bit integer"),
    (["attention", "--run", "{run}", "--text", ""], "1 to 32 characters"),  # (text, not a path)
    (["attention", "--run", "{run}", "--text", "w" * 40], "1 to 32 characters"),
    (["report", "--run", "{run}", "--out", "{text}"], "report writes a web page; give a path "
                                                     "ending in .html"),  # (it replaced the text)
    (["train", "--resume", ""], "--resume is empty (an unset shell variable?)"),  # (a new run)
    (["train", "--config", ""], "--config is empty (an unset shell variable?)"),  # not the cwd
    (["prepare", "--text", "{text}", "--out", "{bad}/p", "--split", "validation"],
     "--dataset-config, --split and --text-field go with --dataset, not --text"),
    (["export", "--run", "{run}", "--out", "{text}/hf"], "is a file, not a folder"),  # (not
    (["graph", "--out", "{text}/g.svg"], "is a file, not a folder"),  # "File exists", exit 1)
    (["report", "--run", "{run}", "--out", "{text}/a/r.html"], "is a file, not a folder"),
    (["train", "--text", " "], "--text is empty"),  # (trained on TinyShakespeare)
    (["prepare", "--text", "", "--out", "{bad}/p"], "--text is empty"),  # (read the folder)
    (["train", "--preset", ""], "--preset is empty"),  # (the default preset)
    (["attention", "--run", "{run}", "--text", "ZZZ"], "--text: text has 1 character(s) outside"),
    (["attention", "--run", "{run}", "--out", "{bad}/short.txt"],  # (a text file, overwritten)
     "short.txt: attention writes a PNG; give a path ending in .png"),
    (["graph", "--collapse", "--depth", "0", "--out", "{bad}/g"], "--depth must be at least 1"),
    (["graph", "--depth", "2", "--out", "{bad}/g"], "--depth goes with --collapse"),
    (["autograd", "--at", "x=2,x=3"], "--at gives 'x' twice in 'x=2,x=3'"),
    (["autograd", "--at", ""], "--at is empty (an unset shell variable?)"),  # (not x = 2)
    (["autograd", "--at", "x=1", "--at", ""], "--at is empty"),  # any one of several --at
    (["autograd", "--at", "x=1e400"], "the value of x must be finite, got '1e400'"),  # (not inf)
    (["compare", "--variant", "a:lr=1e-3", "--variant", "a:lr=1e-2", "--steps", "1",
      "--out", "{bad}/compare"], "variant name(s) 'a' given twice; give each variant its own"),
    (["compare", "--optimizers", "sgd", "--steps", "1", "--out", "{run}"],
     "holds a training run; choose another --out"),
    (["train", "--text", "{text}", "--out", "{bad}/a-comparison"],
     "holds a comparison; choose another --out"),
    (["train", "--text", "{text}", "--out", "{bad}/half-prepared"],
     "holds an unfinished prepare; choose another --out"),
    (["compare", "--variant", "sgd:lr=0.5", "--optimizers", "sgd,adamw", "--steps", "1",
      "--out", "{bad}/compare"], "variant name(s) 'sgd' given twice"),
    (["plan", "--tokens", "1e5", "--text", "/nonexistent/x.txt", "--block-size", "8"],
     "text file not found: /nonexistent/x.txt"),
    (["plan", "--tokens", "1e5", "--text", "{bad}/short.txt"],  # 270 and 30 tokens: block 128
     "the validation split has 30 tokens, fewer than block_size + 1 = 129"),
    (["graph", "--checkpoint", "last"], "--checkpoint goes with --run (without it, a fresh "
                                        "seed model is drawn)"),  # (it was ignored)
    (["compare", "--clip", "1,1.0", "--steps", "1", "--out", "{bad}/compare"],
     "variant name(s) 'clip 1' given twice by the axes"),
    (["plan", "--tokens", "1e6", "--device", "cuda"], "plan times its steps on this machine's"),
    (["plan", "--tokens", "1e6", "--device", "tpu"], "unknown device 'tpu' (use auto, cpu,"),
    (["plan", "--tokens", "1e6", "--n-layer", "3"], "--n-layer belongs to other commands"),
    (["plan", "--tokens", "1e6", "--lr", "1e-3"], "--lr belongs to other commands"),
    (["plan", "--tokens", "nan"], "--tokens must be a number of tokens from 1 to 1e15, such "
                                  "as 1e9, got nan"),
    (["plan", "--tokens", "inf"], "got inf"),
    (["plan", "--tokens", "0.4"], "got 0.4"),  # (it planned 0 tokens)
    (["plan", "--tokens", "1e300"], "got 1e+300"),  # (300-digit ETAs)
]


@pytest.mark.parametrize("args, message", BAD_INPUT)
def test_bad_input_is_one_line_and_non_zero(cli_run, bad_files, args, message, capsys):
    out, _, text = cli_run
    args = [a.format(run=out, text=text, bad=bad_files) for a in args]

    def files():  # the token cache beside a text is a whole, reusable file: not a leftover
        return sorted(p.name for p in bad_files.iterdir() if ".tokens." not in p.name)

    before = files()
    if args[0] == "train":  # were a check lost, one step into a folder of its own, not 5000
        where = [] if "--resume" in args else ["--out", str(bad_files / "trained")]
        args = ["train", "--steps", "1", *where, *args[1:], "--no-progress"]  # (args win)
    elif args[0] not in ("graph", "autograd", "prepare", "report", "export") and (
            "--device" not in args):
        args = [*args, "--device=cpu"]  # (those take none)
    line = one_line_error(capsys, args)
    assert message.format(run=out, text=text, bad=bad_files) in line
    assert files() == before  # nothing half-written left behind


def test_a_resume_by_other_processes_names_the_torchrun_command_that_resumes_it(
        cli_run, tmp_path, monkeypatch, capsys):
    """A run of 2 processes (its checkpoint says so) resumed by one is refused with the command
    that resumes it, torchrun's, and no --grad-accum: --resume restores the run's own. Under a
    torchrun of 3, this launch's LOCAL_WORLD_SIZE is not the run's: still --nproc_per_node=2."""
    run = tmp_path / "ddp-run"
    shutil.copytree(cli_run[0], run)
    meta = json.loads((run / "checkpoints" / "last.json").read_text())
    (run / "checkpoints" / "last.json").write_text(json.dumps({**meta, "world_size": 2}))
    line = one_line_error(capsys, ["train", "--resume", str(run), "--no-progress"])
    assert line.endswith("by 2 process(es) with --grad-accum 1; resume it the same way to "
                         f"continue its batch streams: {torchrun_command(2)} train --resume {run}")
    as_rank(monkeypatch, 0, 3)
    assert torchrun_command(2) == "torchrun --nproc_per_node=2 -m minigpt"


def test_a_run_of_two_processes_stopped_by_a_signal_says_to_continue_with_torchrun(
        small_text, tmp_path, monkeypatch, capsys, caplog):
    """A TrainingStopped keeps how many processes trained the run: the command that continues
    it is torchrun's for 2, and the exit status is 128 + the signal's number."""
    import minigpt.trainer

    def stopped(cfg, folder, **kwargs):
        raise minigpt.TrainingStopped(signal.SIGTERM, "", folder, 7, processes=2)

    monkeypatch.setattr(minigpt.trainer, "train", stopped)
    run = tmp_path / "run"
    code = main(["train", "--text", str(small_text), "--out", str(run), "--no-progress"])
    assert code == 128 + signal.SIGTERM
    assert (f"stopped after 7 steps by SIGTERM; checkpoint saved. Continue with: "
            f"{torchrun_command(2)} train --resume {run}") in caplog.text + capsys.readouterr().err


def test_a_resume_of_a_folder_a_prepare_is_working_in_says_it_is_in_use(tmp_path, capsys):
    """A corpus being prepared (its progress.json written, its lock held): not 'an unfinished
    prepare' alone, which reads as one abandoned there."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "progress.json").write_text("{}\n")
    with open(corpus / "run.lock", "w") as held:
        held.write("4242")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX)
        line = one_line_error(capsys, ["train", "--resume", str(corpus), "--no-progress"])
    assert line.endswith("holds an unfinished prepare (in use by another minigpt process, pid "
                         "4242), not a training run: no checkpoint to load there")


def test_a_run_starting_to_train_is_not_called_a_folder_without_a_run(cli_run, tmp_path,
                                                                      capsys):
    """Its lock held, its config.json written and no checkpoint yet (data loading, the dtype
    probe, step 0): the look is early, not at the wrong folder; a resume is told to wait, not
    to train the run again."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_bytes((cli_run[0] / "config.json").read_bytes())
    with open(run / "run.lock", "w") as held:
        held.write("4242")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX)
        line = one_line_error(capsys, ["sample", "--run", str(run), "--device=cpu"])
        resume = one_line_error(capsys, ["train", "--resume", str(run), "--no-progress"])
    assert "holds a run starting to train (process 4242): it has no checkpoint until its first " \
           "evaluation; try again in a moment" in line
    assert resume.endswith("is in use by another minigpt process (pid 4242), training there; "
                           "wait for it to end")  # (not "stopped before ...: train it again")
    line = one_line_error(capsys, ["sample", "--run", str(run), "--device=cpu"])  # let go
    assert "holds no checkpoints: not a run folder, or a run stopped before its first" in line


def test_a_missing_checkpoint_names_the_other_tag_only_where_it_is_there(cli_run, tmp_path,
                                                                        capsys):
    """A checkpoints folder with neither tag (last.json and best.json removed, a step's JSON
    left): no 'best' is said alone, with no other tag offered that is not there either."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "step-000040.json").write_text("{}")
    (run / "config.json").write_bytes((cli_run[0] / "config.json").read_bytes())
    line = one_line_error(capsys, ["sample", "--run", str(run), "--device=cpu"])
    assert line.endswith(f"no 'best' checkpoint in {run / 'checkpoints'}")
    # the folder there but empty (its checkpoints deleted, or a first save killed before any
    # was renamed in) is a run with no checkpoint at all, as a missing folder is; no tag's
    (run / "checkpoints" / "step-000040.json").unlink()
    line = one_line_error(capsys, ["sample", "--run", str(run), "--device=cpu"])
    assert "holds no checkpoints: not a run folder, or a run stopped before its first" in line


def test_a_value_that_begins_with_a_dash_is_told_to_go_after_an_equals_sign(capsys):
    line = one_line_error(capsys, ["compare", "--clip", "-1,0"])  # (argparse: a flag)
    assert "one argument (a value that begins with '-' goes after '=': --clip=-1,0)" in line
    for flag in ("--top-k", "--"):  # (a flag, or the end of the flags: no hint)
        line = one_line_error(capsys, ["sample", "--run", flag, "3"])
        assert line.endswith("argument --run: expected one argument (see minigpt sample --help)")



@pytest.mark.parametrize("args, given", [(["train", "--epochs", "3"], "--epochs 3"),
                                         (["train", "--bs", "8"], "--bs 8"),
                                         (["train", "--quiet"], "--quiet"),
                                         (["train", "--format", "x"], "--format x"),
                                         (["sample", "--run", "x", "--token", "5"], "--token 5")])
def test_a_flag_only_loosely_like_one_of_the_commands_gets_no_guess(args, given, capsys):
    """Other tools' flags, near one of the command's names only by chance (--epochs and --pos,
    --bs and --bias, --quiet and --unet, --token and --top-k: under 0.7 alike): a guess would
    send the user to the wrong flag."""
    line = one_line_error(capsys, args)
    assert line.endswith(f"unrecognized arguments: {given} (see minigpt {args[0]} --help)")


@pytest.mark.parametrize("args", [["train", "--n", "3"], ["train", "--s", "3"],
                                  ["train", "--hepl"], ["graph", "--hel"]])
def test_no_guess_from_a_single_letter_nor_of_help_which_the_line_names_already(args, capsys):
    """One letter (--n: --n-layer, --n-head or --n-embd? --s: a dozen) is too little to guess
    from; and the line ends '(see minigpt COMMAND --help)', so a hint of --help says it twice."""
    line = one_line_error(capsys, args)
    assert "did you mean" not in line and line.endswith(f"(see minigpt {args[0]} --help)")
    assert line.count("--help") == 1


def test_a_flag_given_with_equals_and_its_value_is_hinted_as_the_flag_alone(capsys):
    """--flag=value is one word: the hint is the flag's, not that of 'flag=value'."""
    for args, hint in [(["graph", "--device=cpu"], "(--device belongs to other commands)"),
                       (["sample", "--run", "x", "--temp=0.5"], "(did you mean --temperature?)"),
                       (["train", "--lrr=1"], "(did you mean --lr?)")]:
        assert f"unrecognized arguments: {args[-1]} {hint}" in one_line_error(capsys, args)

def test_an_empty_required_option_is_not_told_to_be_left_out(capsys):
    line = one_line_error(capsys, ["sample", "--run", ""])  # (sample needs its --run)
    assert line.endswith("--run is empty (an unset shell variable?): give it a value")


@pytest.mark.parametrize("what", [w for w in MADE if w != "a training run"])
def test_train_into_a_folder_made_for_something_else_leaves_it_untouched(small_text, tmp_path,
                                                                         capsys, what):
    """Refused before the run is built: nothing is written there, not even the run's lock."""
    folder = tmp_path / "made"
    folder.mkdir()
    (folder / MADE[what]).write_text("{}")
    line = one_line_error(capsys, ["train", "--text", str(small_text), *TINY_FLAGS, "--steps",
                                   "1", "--out", str(folder), "--no-progress"])
    assert f"{folder} holds {what}; choose another --out" in line
    assert sorted(p.name for p in folder.iterdir()) == [MADE[what]]


def test_steps_under_a_time_budget_are_said_not_to_end_the_run(small_text, tmp_path, capsys):
    r = in_process(capsys, "train", "--text", str(small_text), *TINY_FLAGS, "--time-budget",
                   "0.5", "--steps", "3", "--out", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr
    assert "--steps 3 does not end this run: its time budget of 0.5 s does" in r.stderr


@pytest.mark.parametrize("env, said", [
    ({"WORLD_SIZE": "abc"}, "must be integers"),  # (a traceback, even for --help)
    ({"LOCAL_WORLD_SIZE": "x"}, "must be integers"),  # (a traceback in train's memory check)
    ({"LOCAL_WORLD_SIZE": "0"}, "LOCAL_WORLD_SIZE 0 do not fit"),  # (the memory check off)
    ({"RANK": "1"}, "RANK 1, LOCAL_RANK 0, WORLD_SIZE 1"),  # (a rank 1 of one said nothing)
    ({"WORLD_SIZE": "2", "RANK": "5"}, "RANK 5"),
    ({"WORLD_SIZE": "2", "RANK": "-1"}, "RANK -1"),  # (gloo's traceback, or no rank 0)
    ({"WORLD_SIZE": "2", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "2"}, "LOCAL_RANK 2"),  # (a GPU
    # the machine lacks)
    ({"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "3"}, "LOCAL_WORLD_SIZE 3 do not fit"),  # (more
    # processes on this machine than in the whole run)
])
def test_torchruns_variables_set_wrong_are_one_line(env, said, monkeypatch, capsys):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["autograd"]) == 2
    err = capsys.readouterr().err
    assert said in err and "unset them for one process" in err and err.count("\n") == 1


def test_a_data_dir_that_is_a_file_is_named(tmp_path, capsys, monkeypatch):
    (tmp_path / "cache").write_text("")
    monkeypatch.setenv("MINIGPT_DATA_DIR", str(tmp_path / "cache"))
    r = in_process(capsys, "train", "--steps", "1")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert f"MINIGPT_DATA_DIR={tmp_path / 'cache'} is a file" in r.stderr


def test_load_model_takes_the_device_names_the_commands_take(cli_run):
    model = minigpt.load_model(cli_run[0], "best", "auto")[0]
    assert next(model.parameters()).device == resolve_device("auto")
    # and a torch.device, the weights moved to it ("auto" on a machine without a GPU is the cpu
    # they load on anyway: that alone would pass with the device ignored)
    moved = minigpt.load_model(cli_run[0], "best", torch.device("meta"))[0]
    assert next(moved.parameters()).is_meta
    with pytest.raises(minigpt.MiniGPTError, match="unknown device 'gpu'"):
        minigpt.load_model(cli_run[0], "best", "gpu")


def test_auto_picks_cuda_then_mps_then_the_cpu_and_cuda_alone_is_its_first_gpu(monkeypatch):
    """(this machine has neither: their availability faked, as the device tests do) 'cuda'
    without an index is a GPU's name too, not a count to compare."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for cuda, mps, picked in [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")]:
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda mps=mps: mps)
        assert resolve_device("auto") == torch.device(picked)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda:0") == torch.device("cuda:0")  # the one GPU's index is its last
    with pytest.raises(MiniGPTError, match="this machine has 1 CUDA GPU"):
        resolve_device("cuda:1")


def test_a_runs_environment_records_its_compute_threads_and_its_gpu(monkeypatch):
    """config.json's environment: the intra-op threads torch computes with (set apart from the
    inter-op pool's count here, which could stand in for it), and on a GPU its name and the
    CUDA version torch was built with (a CPU run has neither)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(torch.get_num_interop_threads() + 1)
    try:
        assert describe(torch.device("cpu"))["torch_threads"] == torch.get_num_threads()
    finally:
        torch.set_num_threads(threads)
    assert not {"gpu", "cuda"} & set(describe(torch.device("cpu")))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: f"GPU of {device}")
    info = describe(torch.device("cuda:1"))
    assert (info["gpu"], info["cuda"]) == ("GPU of cuda:1", torch.version.cuda)


def test_a_log_level_the_program_set_stays(small_text, tmp_path):
    """A notebook that quiets minigpt's logger, then trains: only warnings print, and those as
    minigpt prints them (a warmup as long as the run gives one; the empty stdout alone held
    for a minigpt that, given a level, added no handler and left its lines to Python's)."""
    code = (f"import logging, minigpt\n"
            f"logging.getLogger('minigpt').setLevel(logging.WARNING)\n"
            f"minigpt.train(minigpt.resolve_config(overrides=dict(text={str(small_text)!r}, "
            f"steps=2, warmup_steps=5, n_layer=1, n_embd=16, n_head=2, block_size=16, "
            f"batch_size=2, sample_tokens=0)), {str(tmp_path / 'run')!r}, progress=False)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and (tmp_path / "run" / "summary.json").exists()
    assert r.stderr == ("warning: warmup (5 steps) is the whole run: the learning rate will only "
                        "rise, and never decay; try --warmup-steps 1\n")


def test_logs_print_once_where_they_belong_even_when_the_program_sets_up_logging_later():
    """The run's lines on stdout, warnings on stderr; once a notebook calls basicConfig after a
    first run, its handler prints them, and minigpt's does not print them a second time."""
    code = ("import logging\n"
            "from minigpt.console import show_logs\n"
            "show_logs()\n"
            "log = logging.getLogger('minigpt.trainer')\n"
            "log.info('a line'); log.warning('a warning')\n"
            "logging.basicConfig(format='root: %(message)s')\n"
            "log.info('later')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (r.stdout, r.stderr) == ("a line\n", "warning: a warning\nroot: later\n")


def test_the_start_lines_of_one_process_with_micro_steps_and_a_warmup_as_long_as_the_run(
        tmp_path, caplog):
    """grad_accum 2 on one process; warmup 5 of 5 steps; evaluations reading exactly the split."""
    cfg = tiny_config(tmp_path / "t.txt", steps=5, warmup_steps=5, grad_accum=2)
    read = cfg.train.eval_batches * cfg.train.batch_size * cfg.model.block_size
    env = dict(torch="2", device="cpu", torch_threads=1, cpu_capability="x", dtype="float32",
               dtype_why="asked", compile=False)
    data = dict(text="t.txt", vocab_size=9, train_tokens=10 * read, val_tokens=read, params=99)
    run = SimpleNamespace(cfg=cfg, env=env, data=data, world=SimpleNamespace(size=1),
                          folder=tmp_path)
    with caplog.at_level("INFO", logger="minigpt"):
        log_start(run, 1e9)
    first, _, model_line, *warnings = [r.getMessage() for r in caplog.records]
    assert " on cpu, " in first and "process" not in first
    assert f"batch {cfg.train.batch_size} x 2 micro-steps x 1 process x" in model_line
    assert warnings == ["warmup (5 steps) is the whole run: the learning rate will only rise, "
                        "and never decay; try --warmup-steps 1"]  # (5 // 10 is 0)
    caplog.clear()
    with caplog.at_level("INFO", logger="minigpt"):  # one step of warmup is none: at the peak
        log_start(SimpleNamespace(**{**vars(run), "cfg": tiny_config(
            tmp_path / "t.txt", steps=1, warmup_steps=1, grad_accum=2)}), 1e9)
    assert not [r for r in caplog.records if "warmup" in r.getMessage()]
    caplog.clear()
    cfg = tiny_config(tmp_path / "t.txt", batch_start=1, ramp=0.5)  # the batch alone grows
    with caplog.at_level("INFO", logger="minigpt"):  # no micro-steps, one process: batch x block
        log_start(SimpleNamespace(**{**vars(run), "cfg": cfg}), 1e9)
    assert (f"batch 1->{cfg.train.batch_size} x {cfg.model.block_size} tokens (grown over the "
            f"first 50%)") in caplog.messages[2]


@pytest.mark.parametrize("processes", [1, 2])
def test_whole_split_evaluations_longer_than_the_training_between_them_are_warned_of(
        tmp_path, caplog, processes):
    """A big prepared corpus's validation split, read whole (--eval-batches 0) at every
    evaluation, can take longer than the steps between them (a forward: a third of a step's
    work); the start says so, and how to estimate instead. TinyShakespeare's does not. Under
    torchrun every process trains its own batches between two."""
    cfg = tiny_config(tmp_path / "t.txt", eval_batches=0, eval_every=10)
    between = 10 * cfg.train.batch_size * cfg.model.block_size * processes
    env = dict(torch="2", device="cpu", torch_threads=1, cpu_capability="x", dtype="float32",
               dtype_why="asked", compile=False)
    said = {}
    for val_tokens in (3 * between, 3 * between + 1):
        data = dict(text="t.txt", vocab_size=9, train_tokens=10**9, val_tokens=val_tokens,
                    params=99)
        run = SimpleNamespace(cfg=cfg, env=env, data=data, world=SimpleNamespace(size=processes),
                              folder=tmp_path)
        caplog.clear()
        with caplog.at_level("INFO", logger="minigpt"):
            log_start(run, 1e9)
        said[val_tokens] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert said[3 * between] == []
    assert said[3 * between + 1] == [
        f"each evaluation reads the whole validation split, {3 * between + 1:,} tokens, longer "
        f"than training the {between:,} between two: --eval-batches 20 estimates it from 20 "
        f"random batches (the final figure still reads the whole split)"]


def test_a_figure_that_is_not_finite_is_written_as_json_null():
    """JSON has no NaN nor infinity: json.dumps(allow_nan=False), the standard, is the oracle
    (an inf loss or gradient norm wrote Infinity, which strict readers refuse)."""
    figures = [finite_or_none(x) for x in (math.nan, math.inf, -math.inf, 1.5)]
    assert json.dumps(figures, allow_nan=False) == "[null, null, null, 1.5]"


def test_the_evaluation_and_final_lines_show_their_figures_in_their_units(caplog):
    """Each figure read back from the two lines against the row it came from: the step, losses,
    bits per byte, learning rate, tokens per second, MFU a percentage of its fraction, seconds
    of training apart from the command's."""
    row = dict(step=42, train_loss=2.5, val_loss=2.25, val_bpb=1.125, lr=3e-4,
               tokens_per_s=12345, mfu=0.25, time_s=61.6)
    summary = dict(final_val_loss=2.0, final_val_bpb=1.0, best_val_loss=2.125, steps=43,
                   train_s=61.6, wall_s=90.2, tokens_per_s=12345, mfu=0.37)
    with caplog.at_level("INFO", logger="minigpt"):
        log_eval(row, improved=True)
        log_summary(summary, val_tokens=1000)
    line, final = caplog.messages
    n = r"([\d.,e+-]+)"
    got = re.fullmatch(rf"step +{n} \| train {n} \| val {n} \({n} bpb\) \| lr {n} \| "
                       rf"{n} tok/s, MFU {n}% \| {n} s \| best", line).groups()
    shown = [float(g.replace(",", "")) for g in got]
    assert shown == pytest.approx([row["step"], row["train_loss"], row["val_loss"], row["val_bpb"],
                                   row["lr"], row["tokens_per_s"], 100 * row["mfu"],
                                   row["time_s"]], rel=0.01)
    got = re.search(rf"{n} steps, {n} s of training \(this command: {n} s\), {n} tok/s, "
                    rf"MFU {n}%$", final).groups()
    assert [float(g.replace(",", "")) for g in got] == pytest.approx(
        [summary["steps"], summary["train_s"], summary["wall_s"], summary["tokens_per_s"],
         100 * summary["mfu"]], rel=0.01)


def test_counts_and_visible_controls():
    assert [count(n, "step") for n in (0, 1, 2, 1000)] == ["0 steps", "1 step", "2 steps",
                                                           "1,000 steps"]
    controls = "".join(map(chr, range(0x20)))
    assert visible(controls + "\x7f") == "".join(
        c if c in "\t\n\r" else chr(0x2400 + ord(c)) for c in controls) + "\u2421"  # DEL: ␡
    bidi = "".join(map(chr, [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]))
    assert visible(bidi) == "".join(f"<U+{ord(c):04X}>" for c in bidi)


@pytest.mark.parametrize("key, other", [("beta1", 0.5), ("beta2", 0.9), ("momentum", 0.5),
                                        ("muon_momentum", 0.5), ("normuon", True),
                                        ("muon_variant", "polar-express")])
def test_the_optimizer_only_settings_name_every_optimizer_that_reads_them(key, other):
    """train warns of a typed setting 'the run's optimizer ignores' from OPTIMIZER_SETTINGS; the
    oracle is the optimizer itself: three steps on the same gradients, the setting at its
    default and at another value, move the weights apart iff that optimizer reads it (muon's
    AdamW reads beta1 and beta2: a table without muon there warned of a setting that works)."""
    from dataclasses import replace

    from minigpt.cli import OPTIMIZER_SETTINGS
    from minigpt.config import ModelConfig, TrainConfig
    from minigpt.model import MiniGPT
    from minigpt.optim import make_optimizer

    def trained(t):
        torch.manual_seed(0)
        model = MiniGPT.from_config(ModelConfig(vocab_size=16, n_layer=1, n_embd=16, n_head=2,
                                                block_size=8))
        opt = make_optimizer(model, t)
        for _ in range(3):  # (Adam's first step is g/|g| whatever its betas)
            x = torch.randint(16, (2, 8))
            opt.zero_grad()
            model(x, x)[1].backward()
            opt.step()
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    for optimizer in ("sgd", "adamw", "muon"):
        t = TrainConfig(optimizer=optimizer, lr=1e-2)
        reads = not torch.equal(trained(t), trained(replace(t, **{key: other})))
        assert reads == (optimizer in OPTIMIZER_SETTINGS[key]), (key, optimizer)


def test_sample_of_no_new_tokens_prints_the_prompt_alone(cli_run, capsys):
    """--max-new-tokens 0 is allowed (>= 0, the help and the check say): the prompt, unchanged,
    and its line end; not refused as a count that must be positive."""
    r = in_process(capsys, "sample", "--run", str(cli_run[0]), "--prompt", "ROMEO",
                   "--max-new-tokens", "0", "--device", "cpu")
    assert (r.returncode, r.stdout) == (0, "ROMEO\n"), r.stderr


def test_sample_at_the_default_temperature_draws_from_the_models_own_distribution(cli_run,
                                                                                 capsys):
    """No --temperature is T = 1 and no --seed is 1337, the help's defaults: the same text as
    --temperature 1 --seed 1337, and not what another T draws (0.8, say, which sharpens the
    distribution) nor another seed (0)."""
    args = ["sample", "--run", str(cli_run[0]), "--prompt", "ROMEO:", "--max-new-tokens", "40",
            "--device", "cpu"]
    said = [in_process(capsys, *args, *t).stdout for t in (
        [], ["--temperature", "1", "--seed", "1337"], ["--temperature", "0.8"], ["--seed", "0"])]
    assert said[0] == said[1] != said[2] and said[0] != said[3]
    # and the text is the best checkpoint's, drawn by generate (not the command's stream) on
    # the whole prompt: the four comparisons alone held for a sampler fed its last token only
    model, tok, _ = minigpt.load_model(cli_run[0], "best", "cpu")
    assert said[0] == sample_text(model, tok, "ROMEO:", 40, seed=1337) + "\n"


def test_prepare_holds_out_the_lessons_tenth_by_default(small_text, tmp_path, capsys):
    """Without --val-fraction, a prepared text splits as the lesson does, n = int(0.9 * len):
    the same training and validation tokens as Splits.from_tokens(tokens, 0.1) of the text."""
    from minigpt import Splits, load_tokens
    from minigpt.corpus import open_prepared

    r = in_process(capsys, "prepare", "--text", str(small_text), "--out", str(tmp_path / "p"),
                   "--no-progress")
    assert r.returncode == 0, r.stderr
    train, val, _, _ = open_prepared(tmp_path / "p")
    lesson = Splits.from_tokens(load_tokens(small_text)[0], 0.1)
    assert (len(train), len(val)) == (len(lesson.train), len(lesson.val))


def test_a_terminal_gets_progress_bars_unless_no_progress(small_text, tmp_path, capsys,
                                                          monkeypatch):
    """On a terminal (stderr a tty, as tqdm asks it), train and prepare draw their bars, and
    --no-progress turns them off (every other test runs off a terminal, or with the flag)."""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    for quiet in ([], ["--no-progress"]):
        t = in_process(capsys, "train", "--text", str(small_text), "--steps", "1",
                       *[f for f in TINY_FLAGS if f != "--no-progress"],
                       "--out", str(tmp_path / f"run{len(quiet)}"), *quiet)
        p = in_process(capsys, "prepare", "--text", str(small_text),
                       "--out", str(tmp_path / f"data{len(quiet)}"), *quiet)
        assert t.returncode == p.returncode == 0, (t.stderr, p.stderr)
        # (the bar as drawn at its start, "0/1 [", or after the step, "1/1 [", which tqdm
        # skips when the step takes under its 0.1 s refresh interval, in a warmed-up process)
        drawn = re.search(r"[01]/1 \[", t.stderr) is not None, "encode: 100%|" in p.stderr
        assert drawn == (not quiet,) * 2, quiet
