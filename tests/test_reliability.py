"""Nothing lost, nothing unsafe: signals, resume, killed checkpoint writes, non-finite values,
checkpoints that must not load, and a full disk. An uninterrupted run is the oracle for every
interrupted one."""

import errno
import json
import logging
import os
import pickle
import random
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch

import minigpt.checkpoint as ckpt
import minigpt.diagnostics.compare as comparing
import minigpt.trainer
from conftest import (
    MAIN_THREAD_ONLY,
    TINY,
    TINY_FLAGS,
    CrashAt,
    SignalAt,
    as_rank,
    in_process,
    not_warnings,
    one_line_error,
    run_cli,
    same_weights,
    tiny_config,
    without_speed,
)
from minigpt import (
    CharTokenizer,
    MiniGPT,
    MiniGPTError,
    TrainingStopped,
    distributed,
    load_checkpoint,
    load_model,
    resume_config,
    train,
)
from minigpt.cli import main, run_command
from minigpt.diagnostics.compare import compare
from minigpt.diagnostics.probes import Probe
from minigpt.errors import Terminated, training_error
from minigpt.files import (
    append_line,
    atomic_folder,
    atomic_path,
    atomic_write_text,
    lock_folder,
    lock_holder,
    os_error,
    printable,
    read_jsonl,
    remove_temporaries,
    sha256_file,
    truncate_jsonl,
)
from minigpt.signals import StopSignals

QUIET = [*TINY_FLAGS, "--log-every", "1"]  # a metrics row every step: the oracle sees all


def start_training(*args, env=None):
    return subprocess.Popen([sys.executable, "-m", "minigpt", "train", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def wait_for_lines(path, n, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError(f"{path} never reached {n} lines")


@pytest.fixture(scope="module")
def straight_160(tmp_path_factory):
    """The oracle for both signals: (its arguments, its run folder), never interrupted."""
    folder = tmp_path_factory.mktemp("straight")
    text = folder / "corpus.txt"
    text.write_text("But soft, what light through yonder window breaks?\n" * 150)
    args = ["--text", str(text), "--steps", "160", "--eval-every", "50", *QUIET]
    # in this process (what the command runs, without a second or two of imports): the oracle,
    # not the process under test
    assert main(["train", *args, "--out", str(folder / "run")]) == 0
    return args, folder / "run"


HELD_AT_STEP_41 = """
import os, sys, time
import minigpt.trainer
real, calls = minigpt.trainer.train_step, []
def step(*args, **kwargs):  # the 41st step waits for the test's signal, then its go file
    calls.append(1)
    if len(calls) == 41:
        go = os.environ["MINIGPT_TEST_GO"]
        open(go + ".waiting", "w").close()
        while not os.path.exists(go):
            time.sleep(0.01)
    return real(*args, **kwargs)
minigpt.trainer.train_step = step
from minigpt.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_and_resume_matches_an_uninterrupted_run(straight_160, tmp_path, sig, code):
    args, straight = straight_160
    stopped, go = tmp_path / "stopped", tmp_path / "go"
    proc = subprocess.Popen([sys.executable, "-c", HELD_AT_STEP_41, "train", *args, "--out",
                             str(stopped)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "MINIGPT_TEST_GO": str(go)})
    wait_for_lines(tmp_path / "go.waiting", 0, proc)  # (a file of no lines: it exists)
    proc.send_signal(sig)  # pending in the child before this returns; its handler runs before
    go.touch()  # the held step can see this file, so the stop comes at step 41, on any CPU
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert f"minigpt train --resume {stopped}" in out + err
    step = load_checkpoint(stopped / "checkpoints", "last").meta["step"]
    assert step == 41  # the step held when the signal came, finished
    assert f"stopped after {step} steps by {sig.name}; checkpoint saved" in out + err

    assert main(["train", "--resume", str(stopped), "--no-progress"]) == 0  # (in this process)
    assert without_speed(read_jsonl(stopped / "metrics.jsonl")) == without_speed(
        read_jsonl(straight / "metrics.jsonl"))
    assert same_weights(stopped, straight)
    times = [r["time_s"] for r in read_jsonl(stopped / "metrics.jsonl")]
    assert times == sorted(times)  # the training clock carries over the resume
    summary = json.loads((stopped / "summary.json").read_text())
    assert summary["train_s"] >= times[-1]


def ctrl_c_at_step(monkeypatch, n: int) -> list:
    """Make the trainer's n-th train_step send this process SIGINT first (a Ctrl-C between two
    metrics rows); returns the list that counts its calls."""
    real, calls = minigpt.trainer.train_step, []

    def step(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(minigpt.trainer, "train_step", step)
    return calls


@MAIN_THREAD_ONLY
def test_a_stop_between_rows_keeps_the_counts_of_clipped_steps_and_skipped_batches(
        small_text, tmp_path, monkeypatch):
    """Ctrl-C at a step between two metrics rows, after a NaN batch: the row after the resume
    counts the clipped steps and the skipped batch before the stop too, as the uninterrupted
    run's row does (and so does --skip-nonfinite's allowance)."""
    cfg = tiny_config(small_text, steps=20, log_every=10, eval_every=100, grad_clip=0.01,
                      skip_nonfinite=1)
    straight = train(cfg, tmp_path / "straight", progress=False, probes=[PoisonBatches({12})])
    ctrl_c_at_step(monkeypatch, 14)
    with pytest.raises(TrainingStopped, match="after 14 steps"):
        train(cfg, tmp_path / "stopped", progress=False, probes=[PoisonBatches({12})])
    monkeypatch.undo()
    shutil.copytree(tmp_path / "stopped", tmp_path / "again")
    with pytest.raises(MiniGPTError, match="step 19: 2 batch.*not finite"):  # one more NaN:
        train(cfg, tmp_path / "again", resume=True, progress=False,  # beyond the allowance
              probes=[PoisonBatches({16})])
    train(cfg, tmp_path / "stopped", resume=True, progress=False)
    rows = [read_jsonl(folder / "metrics.jsonl") for folder in (straight.folder,
                                                                 tmp_path / "stopped")]
    assert [r["clipped"] for r in rows[1]] == [r["clipped"] for r in rows[0]] == [1, 10, 8]
    assert [r.get("skipped") for r in rows[1]] == [r.get("skipped") for r in rows[0]] == [
        None, None, 1]


@MAIN_THREAD_ONLY
def test_under_torchrun_a_signal_stops_after_its_step_as_in_one_process(small_text, tmp_path,
                                                                        monkeypatch):
    """Under torchrun the processes agree to stop (a collective call) after every step, not
    only at a log line: torchrun kills them 30 s after passing a Ctrl-C on, and with
    --log-every 20000 they were killed before the next row, with no checkpoint, after saying one
    would be saved. The oracle: one process, which stops after the step the signal came in.
    Two processes are stood for by this one (its flag is every process's)."""
    from minigpt import distributed

    monkeypatch.setattr(distributed, "agree", lambda values, world: values)
    agreed = minigpt.trainer.agreed
    monkeypatch.setattr(minigpt.trainer, "agreed", lambda clock, signals, world: agreed(
        clock, signals, distributed.World(rank=0, size=2)))  # (as the loop calls it)
    calls = ctrl_c_at_step(monkeypatch, 14)
    cfg = tiny_config(small_text, steps=40, log_every=10, eval_every=100)
    with pytest.raises(TrainingStopped, match="after 14 steps"):
        train(cfg, tmp_path / "run", progress=False)
    assert load_model(tmp_path / "run", "last")[2]["step"] == 14 == len(calls)


@pytest.mark.parametrize("sig, stop", [(signal.SIGINT, KeyboardInterrupt),
                                       (signal.SIGTERM, Terminated)])
def test_second_signal_stops_at_once(sig, stop):
    """A second SIGTERM stops not as Ctrl-C: the command says "terminated" and exits 143
    (minigpt.cli)."""
    before = signal.getsignal(sig)
    with pytest.raises(stop), StopSignals() as signals:
        os.kill(os.getpid(), sig)
        assert signals.received == sig  # the first only asks
        os.kill(os.getpid(), sig)
    assert signal.getsignal(sig) is before  # the handler is given back, the stop raised through


def test_signals_in_another_thread_are_left_alone():
    """(a notebook's background thread: signal.signal would raise ValueError there)"""
    before, raised = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)], []

    def train_here():
        try:
            with StopSignals() as signals:
                assert signals.received is None
        except BaseException as e:  # (a thread's exception would be lost: kept to assert on)
            raised.append(e)

    worker = threading.Thread(target=train_here)
    worker.start()
    worker.join()
    assert raised == [] and [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)] == before


SLOW_WRITER = """
import sys, time
import minigpt.checkpoint as ckpt
import minigpt.trainer
real, calls = ckpt.save_file, []
def slow(tensors, path, metadata=None):
    calls.append(path)
    if len(calls) == 3:  # the third checkpoint: half a file, then hang until killed
        real(tensors, path, metadata=metadata)
        with open(path, "r+b") as f:
            f.truncate(1000)
        time.sleep(600)
    real(tensors, path, metadata=metadata)
ckpt.save_file = slow
from minigpt.cli import main
from minigpt.diagnostics.compare import compare
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_killed_during_a_checkpoint_write_resumes_from_the_last_good_one(small_text, tmp_path):
    run = tmp_path / "run"
    args = ["train", "--text", str(small_text), "--steps", "60", "--eval-every", "10",
            "--keep", "5", *QUIET, "--out", str(run)]
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    folder = run / "checkpoints"
    deadline = time.time() + 120
    while not list(folder.glob(".step-000021.safetensors.*.tmp")):  # the third save
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.02)
    time.sleep(0.5)  # now it hangs half-written
    proc.kill()  # SIGKILL: no handler runs, no cleanup
    proc.wait()
    assert list(folder.glob(".*.tmp"))  # the half-written file is there ...
    assert load_checkpoint(folder, "last").meta["step"] == 11  # ... and never named by last

    # the resume in this process (what the command runs): the process under test is the killed
    # one, whose files it reads; a second start of Python would add only its imports
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert not list(folder.glob(".*.tmp"))  # swept on the next save
    straight = tmp_path / "straight"  # the oracle, in this process
    assert main(["train", *args[1:-2], "--out", str(straight)]) == 0
    assert same_weights(run, straight)


class Scramble(Probe):
    """Replace the weights with noise after the metrics row of step 30: no later evaluation
    comes back to the best before it."""

    def start(self, run):
        self.model = run.model

    def on_row(self, row):
        if row["step"] == 30:
            with torch.no_grad():
                for p in self.model.parameters():
                    p.normal_()


def test_keep_the_best_and_the_newest_k(small_text, tmp_path):
    # keep=3, not the default (2): the run's own --keep reaches the pruning
    train(tiny_config(small_text, steps=50, eval_every=5, keep=3), tmp_path / "run",
          progress=False, probes=[Scramble()])
    folder = tmp_path / "run" / "checkpoints"
    best = json.loads((folder / "best.json").read_text())["file"]
    evals = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "val_loss" in r]
    lowest = min(evals, key=lambda r: r["val_loss"])  # (the row of step s: its weights after s+1)
    assert best == f"step-{lowest['step'] + 1:06d}.safetensors" and lowest["step"] <= 30
    kept = sorted(p.name for p in folder.glob("step-*.safetensors"))
    assert kept == sorted({best, "step-000041.safetensors", "step-000046.safetensors",
                           "step-000050.safetensors"})
    assert sorted(p.name for p in folder.glob("step-*.json")) == [
        k.replace(".safetensors", ".json") for k in kept]
    for k in kept:  # every kept step loads on its own
        assert load_checkpoint(folder, k.removesuffix(".safetensors")).meta["file"] == k


class PoisonBatches(Probe):
    """Make the training forward return NaN logits at the given steps."""

    def __init__(self, steps):
        self.steps = set(steps)

    def start(self, run):
        def hook(module, args, output):
            if module.training and run.state.step in self.steps:
                return output * float("nan")
        run.model.lm_head.register_forward_hook(hook)


@pytest.mark.parametrize("skip", [2, 1])
def test_nonfinite_batches_are_skipped_up_to_the_allowance(small_text, tmp_path, skip):
    """NaN logits at steps 3 and 5. Two allowed: both are skipped (no loss, no gradient norm)
    and the run ends; one allowed: it stops at step 5, naming the step and the cause, its row
    the last in metrics.jsonl. Either way
    the last checkpoint (at the end; the last good one, step 5) is finite."""
    config = tiny_config(small_text, steps=12, eval_every=4, log_every=1, skip_nonfinite=skip)
    poison = [PoisonBatches({3, 5})]
    if skip == 2:
        summary = train(config, tmp_path / "run", progress=False, probes=poison).summary
        rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
        assert [r["step"] for r in rows if r["train_loss"] is None] == [3, 5]
        assert all(r["grad_norm"] is None for r in rows if r["train_loss"] is None)
        assert summary["steps"] == 12 and summary["final_val_loss"] < 10
    else:
        with pytest.raises(MiniGPTError, match=r"step 5: 1 batch.*not finite.*learning rate.*"
                                               r"lower --lr, or --skip-nonfinite N above 1 "
                                               r"\(counted at log lines\)$"):  # (clipping on)
            train(config, tmp_path / "run", progress=False, probes=poison)
        last = read_jsonl(tmp_path / "run" / "metrics.jsonl")[-1]  # the row that stopped it
        assert (last["step"], last["train_loss"], last["skipped"]) == (5, None, 1)
    model = load_model(tmp_path / "run", "last")[0]
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_batch_whose_gradient_norm_is_inf_is_counted_skipped_not_clipped(small_text, tmp_path,
                                                                         monkeypatch):
    """inf > grad_clip, yet such a batch is skipped, not clipped: its row counts it in
    `skipped` alone. (Step 3's norm is reported inf; the clip so loose no finite step is
    clipped, so every row's count of clipped steps is 0.)"""
    real, calls = minigpt.trainer.train_step, []

    def step(*args, **kwargs):
        loss, norm = real(*args, **kwargs)
        calls.append(None)
        return loss, norm * float("inf") if len(calls) == 4 else norm

    monkeypatch.setattr(minigpt.trainer, "train_step", step)
    config = tiny_config(small_text, steps=6, log_every=1, eval_every=100, grad_clip=1e6,
                         skip_nonfinite=1)
    train(config, tmp_path / "run", progress=False)
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r.get("skipped") for r in rows] == [None, None, None, 1, None, None]
    assert [r["clipped"] for r in rows] == [0] * 6


def test_a_new_run_into_a_folder_a_run_is_training_in_says_so(small_text, tmp_path):
    """Not 'resume it with --resume', which the lock would then refuse."""
    run = tmp_path / "run"
    train(tiny_config(small_text, steps=2, eval_every=1), run, progress=False)
    with lock_folder(run):  # (another process's hold, as the lock sees it)
        with pytest.raises(MiniGPTError, match=rf"run is in use by another minigpt process "
                                               rf"\(pid {os.getpid()}\), training there; wait"):
            train(tiny_config(small_text, steps=2, eval_every=1), run, progress=False)


def test_exploding_learning_rate_is_one_line(small_text, tmp_path, capsys):
    """The weights go NaN: the run stops on its own check, which names the learning rate (not
    on a probe that can sample or read no attention from such weights), its metrics in JSON
    (null, not NaN); allowed to go on, it ends, with a warning where a sample cannot be had."""
    args = ["train", "--text", str(small_text), "--steps", "40", "--lr", "1e9", "--min-lr", "0",
            "--grad-clip", "0", "--eval-every", "10", *QUIET, "--sample-every", "10",
            "--attention-every", "10", "--sample-tokens", "20"]
    r = in_process(capsys, *args, "--out", str(tmp_path / "r"))
    assert r.returncode == 2
    error = not_warnings(r.stderr)
    assert len(error) == 1 and "not finite" in error[0] and "--lr" in error[0]
    assert "learning rate 1e+09 too high (" in error[0] and ", --grad-clip 1.0," in error[0]
    for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in metrics.jsonl"))
    # the loop above reads every row there is: they are every step's up to the one the error
    # names, that one's too, its loss written (null), not left out with its row
    stopped = re.match(r"minigpt: error: step (\d+): ", error[0])
    assert stopped, error[0]
    rows = read_jsonl(tmp_path / "r" / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(int(stopped[1]) + 1))
    assert (rows[-1]["train_loss"], rows[-1]["skipped"]) == (None, 1)
    r = in_process(capsys, *args, "--skip-nonfinite", "1000", "--out", str(tmp_path / "on"))
    assert r.returncode == 0, r.stderr
    assert "warning: step 10: no samples recorded: the model's outputs are not finite" in r.stderr
    assert "warning: no sample: the model's outputs are not finite" in r.stderr
    summary = json.loads((tmp_path / "on" / "summary.json").read_text(),  # JSON, not NaN
                         parse_constant=lambda c: pytest.fail(f"{c} in summary.json"))
    assert summary["final_val_loss"] is None and summary["steps"] == 40
    assert "final validation loss (whole split, " in r.stderr + r.stdout


def test_ctrl_c_outside_the_steps_under_torchrun_names_torchrun(small_text, tmp_path,
                                                                monkeypatch, caplog):
    """Under torchrun (rank 0 of 2), a Ctrl-C in the final evaluation leaves the last
    checkpoint standing as in one process, and the way on is the torchrun command the run
    needs (a resume in one process is refused): the hint was left out there."""
    def interrupted(cfg, folder, **kwargs):  # train() stopped after its last checkpoint
        (Path(folder) / "checkpoints").mkdir(parents=True)
        (Path(folder) / "checkpoints" / "last.json").write_text("{}")
        raise KeyboardInterrupt

    as_rank(monkeypatch, 0)
    monkeypatch.setattr(minigpt.trainer, "train", interrupted)
    run = tmp_path / "run"
    assert run_command(["train", "--text", str(small_text), *TINY_FLAGS, "--out", str(run)]) \
        == 130
    assert ("the last checkpoint stands; continue with: torchrun --nproc_per_node=2 -m minigpt "
            f"train --resume {run}") in caplog.text


def test_ctrl_c_outside_the_steps_says_whether_a_checkpoint_stands(small_text, tmp_path,
                                                                    monkeypatch, caplog):
    """In the final evaluation (the last checkpoint stands: a resume finishes the run); before
    the first checkpoint (nothing stands: no such hint)."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    run = tmp_path / "run"
    args = ["train", "--text", str(small_text), *TINY_FLAGS, "--steps", "6", "--eval-every", "3"]
    monkeypatch.setattr(minigpt.trainer, "split_loss", interrupted)  # (only the final one: TINY
    assert main([*args, "--out", str(run)]) == 130  # estimates over random batches)
    said = f"the last checkpoint stands; continue with: minigpt train --resume {run}"
    assert said in caplog.text and not (run / "summary.json").exists()
    caplog.clear()
    monkeypatch.setattr(minigpt.trainer, "build_run", interrupted)
    assert main([*args, "--out", str(tmp_path / "new")]) == 130
    assert "stands" not in caplog.text
    monkeypatch.undo()
    monkeypatch.setattr(minigpt.trainer, "split_loss", interrupted)  # in a resume's: its flags
    caplog.clear()  # (--steps here) are not in the checkpoint yet
    assert main(["train", "--resume", str(run), "--steps", "8", "--no-progress"]) == 130
    assert "the last checkpoint stands; the same command continues" in caplog.text
    monkeypatch.undo()
    assert main(["train", "--resume", str(run), "--steps", "8", "--no-progress"]) == 0
    assert json.loads((run / "summary.json").read_text())["steps"] == 8


# --- checkpoints that must not load ------------------------------------------------------------


class Planted:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("good")
    text = folder / "corpus.txt"
    text.write_text("Now is the winter of our discontent\n" * 100)
    assert main(["train", "--text", str(text), "--steps", "10", "--eval-every", "5", *QUIET,
                 "--out", str(folder / "run")]) == 0
    return folder / "run"


def copy_of(run, tmp_path):
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def test_a_run_folder_whose_name_is_not_utf8(good_run, tmp_path):
    """A Linux file name is bytes; Python holds the bytes that are not UTF-8 as lone surrogates,
    which matplotlib, safetensors, tokenizers, TensorBoard and a strict stdout each refused."""
    run, exported = tmp_path / "r\udcffun", tmp_path / "e\udcffx"  # the byte 0xff in each
    try:
        shutil.copytree(good_run, run)
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system takes only UTF-8 names")
    strict = {"PYTHONIOENCODING": "utf-8:strict"}  # as under a UTF-8 locale other than C's
    for args in (["train", "--resume", str(run), "--steps", "12", "--no-progress"],
                 ["report", "--run", str(run)],
                 ["export", "--run", str(run), "--out", str(exported)]):
        r = run_cli(*args, env=strict)
        assert r.returncode == 0, r.stderr
    assert f"wrote {exported}:" in r.stdout  # the name's own bytes, which paste back as they are
    assert "<title>minigpt run r\ufffdun</title>" in (run / "report.html").read_text()
    assert read_jsonl(run / "metrics.jsonl")[-1]["step"] == 11  # resumed, curves redrawn
    chars = json.loads((run / "tokenizer.json").read_text())["chars"]  # the run's, id by id
    assert json.loads((exported / "tokenizer.json").read_text())["model"]["vocab"] == \
        {c: i for i, c in enumerate(chars)}
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    tb = run_cli("train", "--resume", str(run), "--steps", "14", "--tensorboard", env=strict)
    assert tb.returncode == 2 and len(not_warnings(tb.stderr)) == 1
    # refused before the run was built: its folder as it was (config.json not rewritten for a
    # run that never trained, summary.json not removed, the lock not taken)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert "TensorBoard takes only paths that are UTF-8; rename the folder" in tb.stderr


def corrupt(run, tmp_path, how):
    copy = copy_of(run, tmp_path)
    folder = copy / "checkpoints"
    best = json.loads((folder / "best.json").read_text())
    tensors = folder / best["file"]
    if how == "pickle":
        tensors.write_bytes(pickle.dumps(Planted(str(tmp_path / "PWNED"))))
    elif how == "truncated":
        tensors.write_bytes(tensors.read_bytes()[:500])
    elif how == "tampered":
        data = bytearray(tensors.read_bytes())
        data[-10] ^= 0xFF
        tensors.write_bytes(bytes(data))
        return copy  # the sha256 is left as it was: the check must catch it
    elif how == "architecture":
        best["model"]["n_layer"] = 3
    elif how == "vocabulary":
        best["model"]["vocab_size"] += 1
    elif how == "format":
        best["format"] = "minigpt-checkpoint-v0"
    elif how == "missing":
        tensors.unlink()
    elif how == "not an object":  # valid JSON all the same
        best = [best]
    elif how == "incomplete":
        del best["tokenizer"]
    elif how == "setting":
        best["model"]["n_head"] = "two"
    if how in ("pickle", "truncated"):  # forge the recorded sha256 too: safetensors must refuse
        best["sha256"] = sha256_file(tensors)
    (folder / "best.json").write_text(json.dumps(best))
    return copy


@pytest.mark.parametrize("how, message", [
    ("pickle", "not valid safetensors"),
    ("truncated", "not valid safetensors"),
    ("tampered", "does not match its recorded sha256"),
    ("architecture", "does not fit the model"),
    ("vocabulary", "does not fit the model"),
    ("not an object", "is not readable: a JSON object was expected, got list"),
    ("incomplete", "is not readable: 'tokenizer' is missing or not a dict"),
    ("setting", "'n_head' must be int, got 'two'"),
    ("format", "best.json is not readable: unknown format 'minigpt-checkpoint-v0'"),
    ("missing", ".safetensors is missing"),
])
def test_bad_checkpoints_are_refused_in_one_line(good_run, tmp_path, capsys, how, message):
    run = corrupt(good_run, tmp_path, how)
    said = one_line_error(capsys, ["sample", "--run", str(run), "--prompt", "Now",
                                   "--max-new-tokens", "5"])
    assert message in said
    # the file at fault named whole, as the run's best.json names it: the tensor file, or the
    # JSON for what the JSON says (not a bare name, which a user could not find)
    checkpoints = run / "checkpoints"
    tensors = checkpoints / json.loads((good_run / "checkpoints" / "best.json").read_text())["file"]
    if how in ("pickle", "truncated", "tampered", "missing"):
        assert said.startswith(f"minigpt: error: checkpoint file {tensors} "), said
    elif how in ("not an object", "incomplete", "format"):
        assert said.startswith(f"minigpt: error: checkpoint {checkpoints / 'best.json'} is not "
                               f"readable: "), said
    elif how == "setting":  # (a model setting: the run's)
        assert said.startswith(f"minigpt: error: checkpoint in {run}: "), said
    elif how in ("architecture", "vocabulary"):  # what differs, as the two configs' models do
        saved, said_to_be = (MiniGPT(**json.loads((r / "checkpoints" / "best.json").read_text())
                                     ["model"]).state_dict() for r in (good_run, run))
        if how == "architecture":  # the layers best.json adds, each tensor by name
            assert f"missing {sorted(said_to_be.keys() - saved.keys())}, unexpected []" in said
        else:  # a tensor whose shape differs, with the checkpoint's shape, then the model's
            k = next((k for k in saved if k in said and saved[k].shape != said_to_be[k].shape), "")
            assert k, said
            tail = said[said.index(k):]
            assert tail.index(str(saved[k].shape)) < tail.index(str(said_to_be[k].shape)), said
    assert not (tmp_path / "PWNED").exists()  # no code from the file ran


def test_save_checkpoint_refuses_what_loading_would_before_writing(tmp_path):
    model = MiniGPT(3, n_embd=8, n_head=1, n_layer=1, block_size=4)
    opt, tok = torch.optim.AdamW(model.parameters()), CharTokenizer("abc")
    for meta, message in [({"step": 1}, "must hold 'step' (an int >= 0) and 'tokenizer'"),
                          ({"step": 1, "tokenizer": tok}, "'tokenizer' (a tokenizer's to_dict"),
                          ({"step": 1, "tokenizer": tok.to_dict(), "note": {1, 2}},
                           "must be plain JSON values"),
                          *[({"step": 1, "tokenizer": tok.to_dict(), key: "x"},
                             f"a checkpoint's meta may not hold {key!r}")
                            for key in ("format", "file", "sha256", "model", "optimizer")]]:
        with pytest.raises(MiniGPTError, match=re.escape(message)):
            ckpt.save_checkpoint(tmp_path / "c", ["last"], model, opt, meta, {})
        assert not (tmp_path / "c").exists()  # no tensor file left behind


def test_an_optimizer_state_of_plain_numbers_is_saved_and_restored(tmp_path):
    """LBFGS keeps counts and a loss as Python numbers beside its tensors: they go to the
    checkpoint's JSON and come back as they were."""
    torch.manual_seed(0)
    model = MiniGPT(3, n_embd=8, n_head=1, n_layer=1, block_size=4)
    opt = torch.optim.LBFGS(model.parameters(), max_iter=1)
    idx = torch.randint(0, 3, (2, 5))

    def closure():
        opt.zero_grad()
        loss = model(idx[:, :-1], idx[:, 1:])[1]
        loss.backward()
        return loss

    opt.step(closure)
    state = opt.state_dict()["state"][0]
    plain = {k: v for k, v in state.items() if not isinstance(v, torch.Tensor)}
    assert plain["n_iter"] == 1 and plain["func_evals"] == 1
    ckpt.save_checkpoint(tmp_path / "c", ["last"], model, opt,
                         {"step": 1, "tokenizer": CharTokenizer("abc").to_dict()}, {})
    again = torch.optim.LBFGS(model.parameters(), max_iter=1)
    ckpt.restore_optimizer(again, ckpt.load_checkpoint(tmp_path / "c"))
    restored = again.state_dict()["state"][0]
    assert {k: v for k, v in restored.items() if k in plain} == plain
    assert all(torch.equal(restored[k], v) for k, v in state.items() if k not in plain)


@pytest.mark.parametrize("added, said", [("XYZ", "vocabulary differs"),  # new characters
                                          ("winter ", "changed since the run was trained on it")])
def test_resume_on_a_changed_text_is_refused(good_run, tmp_path, capsys, added, said):
    copy = copy_of(good_run, tmp_path)
    text = Path(json.loads((copy / "config.json").read_text())["data"]["text"])
    saved = text.read_text()
    last = (copy / "checkpoints" / "last.json").read_text()
    try:
        text.write_text(saved + added * 100)  # (the old validation split now lies in training)
        r = in_process(capsys, "train", "--resume", str(copy), "--no-progress")
    finally:
        text.write_text(saved)
    assert r.returncode == 2 and said in r.stderr and "Traceback" not in r.stderr
    assert (copy / "checkpoints" / "last.json").read_text() == last  # (trained no further)


# --- a full disk ----------------------------------------------------------------------------


def test_disk_full_while_writing_a_checkpoint(small_text, tmp_path, monkeypatch, capsys):
    real = ckpt.save_file

    def full_disk(tensors, path, metadata=None):
        real(tensors, path, metadata=metadata)  # some bytes made it ...
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)  # ... then no more room

    monkeypatch.setattr(ckpt, "save_file", full_disk)
    code = main(["train", "--text", str(small_text), "--steps", "20", "--eval-every", "10", *QUIET,
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("minigpt: error: No space left on device") and err.count("\n") == 1
    folder = tmp_path / "run" / "checkpoints"
    # the file asked for, whole: the first save's (after step 0's evaluation), not the
    # temporary the write failed in, nor no file at all
    assert err == f"minigpt: error: {os.strerror(errno.ENOSPC)}: {folder}/step-000001.safetensors\n"
    assert list(folder.iterdir()) == []  # no partial file, no temporary left behind


def test_an_unwritable_folder_names_the_file_asked_for(tmp_path, monkeypatch):
    """(Root writes anywhere, so the refusal is mkstemp's, as a read-only folder gives it.)"""
    def refuse(dir, prefix, suffix):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), f"{dir}/{prefix}x{suffix}")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    for write, name in [(lambda p: atomic_write_text(p, "{}"), "a.json"),
                        (lambda p: atomic_folder(p).__enter__(), "export")]:
        with pytest.raises(PermissionError) as e:
            write(tmp_path / name)
        assert e.value.filename == str(tmp_path / name)  # not the temporary's random name


def test_a_failed_write_names_the_file_asked_for_and_leaves_no_temporary(tmp_path):
    other = str(tmp_path / "other")
    cases = [("temporary", True, errno.ENOSPC), ("other", False, errno.ENOSPC),
             (None, True, errno.ENOSPC), (None, True, errno.EDQUOT)]  # None: a full disk, or a
    for named, asked, code in cases:  # used-up quota, met by write_bytes or savefig
        with pytest.raises(OSError) as e, atomic_path(tmp_path / "a.json") as tmp:
            raise OSError(code, os.strerror(code),
                          *{"temporary": [str(tmp)], "other": [other], None: []}[named])
        assert e.value.errno == code
        assert e.value.filename == (str(tmp_path / "a.json") if asked else other)
        assert list(tmp_path.iterdir()) == []


def test_ctrl_c_mid_write_leaves_the_old_file_and_no_temporary(tmp_path):
    """KeyboardInterrupt is no Exception, yet the temporary goes as for any error."""
    (tmp_path / "a.json").write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_path(tmp_path / "a.json") as tmp:
        tmp.write_text("half")
        raise KeyboardInterrupt
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
    assert (tmp_path / "a.json").read_text() == "old"


def test_files_and_folders_written_whole_get_the_usual_permissions(tmp_path):
    """(mkstemp makes a file 0600, mkdtemp a folder 0700: renamed as they are, another user
    could not read a run.) The oracle: what the process's umask gives a file made plainly."""
    (tmp_path / "plain").write_text("")
    usual = stat.S_IMODE((tmp_path / "plain").stat().st_mode)
    atomic_write_text(tmp_path / "a.json", "{}")
    with atomic_folder(tmp_path / "export") as tmp:
        os.close(os.open(tmp / "weights", os.O_CREAT | os.O_WRONLY, 0o600))
        (tmp / "sub").mkdir()  # a file in a subfolder too
        os.close(os.open(tmp / "sub" / "w", os.O_CREAT | os.O_WRONLY, 0o600))
    (tmp_path / "folder").mkdir()
    for made, plain in [("a.json", "plain"), ("export/weights", "plain"), ("export", "folder"),
                        ("export/sub/w", "plain")]:
        assert stat.S_IMODE((tmp_path / made).stat().st_mode) == \
            stat.S_IMODE((tmp_path / plain).stat().st_mode), made
    assert usual != 0o600  # (else the test could not tell)


def test_files_written_whole_reach_the_disk_before_they_take_their_names(tmp_path, monkeypatch):
    """Each file is fsynced, its new bytes in it, while its name still holds the old file: a
    power cut after the rename must find the new bytes, not an empty file (the rename can reach
    the disk before the data does). The oracle: what each fsync'd file held, and when."""
    synced, real = [], os.fsync

    def fsync(fd):
        synced.append((os.pread(fd, 64, 0), (tmp_path / "a.json").exists(),
                       (tmp_path / "export").exists()))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    atomic_write_text(tmp_path / "a.json", '{"k": 1}')
    assert synced == [(b'{"k": 1}', False, False)]
    with atomic_folder(tmp_path / "export") as tmp:
        (tmp / "weights").write_bytes(b"w")
    assert synced[1:] == [(b"w", True, False)]


# --- files written whole, logs appended a line at a time ----------------------------------------


def test_a_folder_write_that_fails_leaves_the_old_folder_and_no_temporary(tmp_path):
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "old").write_text("kept")
    with pytest.raises(RuntimeError), atomic_folder(tmp_path / "export") as tmp:
        (tmp / "weights").write_text("half")
        raise RuntimeError("killed in mid-export")
    assert [p.name for p in tmp_path.iterdir()] == ["export"]
    assert [p.name for p in (tmp_path / "export").iterdir()] == ["old"]


def test_a_folder_written_whole_replaces_an_empty_folder_but_never_a_full_one(tmp_path):
    (tmp_path / "empty").mkdir()
    with atomic_folder(tmp_path / "empty") as tmp:
        (tmp / "weights").write_text("new")
    assert (tmp_path / "empty" / "weights").read_text() == "new"
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "old").write_text("kept")
    with pytest.raises(OSError), atomic_folder(tmp_path / "full") as tmp:
        (tmp / "weights").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "full"]
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["old"]


def test_an_append_written_in_pieces_is_whole_and_one_that_fails_is_cut_back_off(tmp_path,
                                                                                  monkeypatch):
    """os.write may write less than it was given (not an error: append_line writes the rest);
    one that fails part-way (a full disk) leaves the file as it was before the line."""
    path, real = tmp_path / "m.jsonl", os.write
    append_line(path, '{"step": 0}')
    monkeypatch.setattr(os, "write", lambda fd, data: real(fd, data[:3]))  # 3 bytes a call
    append_line(path, '{"step": 1}')
    assert path.read_text() == '{"step": 0}\n{"step": 1}\n'
    calls = []

    def full_after_one_piece(fd, data):
        calls.append(len(data))
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data[:3])

    monkeypatch.setattr(os, "write", full_after_one_piece)
    with pytest.raises(OSError) as e:
        append_line(path, '{"step": 2}')
    monkeypatch.undo()
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(path)
    assert path.read_text() == '{"step": 0}\n{"step": 1}\n'  # not '{"s'


def test_truncating_a_log_keeps_the_rows_before_the_step_and_drops_a_torn_one(tmp_path):
    """What a checkpoint at step 5 includes: steps 0 to 4 (a resumed run writes step 5 again);
    a row with no step (none minigpt writes) and a torn line are dropped."""
    path = tmp_path / "m.jsonl"
    rows = [{"step": 0}, {"step": 4, "loss": 1.5}, {"note": "no step"}, {"step": 5}, {"step": 9}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 6, "lo')
    truncate_jsonl(path, 5)
    assert read_jsonl(path) == rows[:2]
    assert path.read_text().endswith("\n")


def test_a_lock_asked_to_wait_gets_the_folder_when_its_holder_lets_go(tmp_path, monkeypatch):
    """lock_folder(wait=True) (a cache's prepare) waits for the holder instead of refusing."""
    fcntl = pytest.importorskip("fcntl")  # (Windows has no advisory locks)
    asking, got = threading.Event(), []
    flock = fcntl.flock

    def announced(fd, op):
        asking.set()
        return flock(fd, op)

    def second():
        with lock_folder(tmp_path, wait=True):
            got.append((tmp_path / "run.lock").read_text())

    with lock_folder(tmp_path):
        monkeypatch.setattr(fcntl, "flock", announced)
        thread = threading.Thread(target=second)
        thread.start()
        assert asking.wait(30)
        time.sleep(0.1)  # (into flock: a refusal comes at once, a wait until the release)
    thread.join(30)
    assert got == [f"{os.getpid()}\n"]


def test_a_librarys_os_error_becomes_the_oserror_it_stands_for(tmp_path):
    """safetensors says "... (os error 28)": the OSError 28 naming the file; an OSError, or an
    error that names no os error, is left as it is."""
    path = tmp_path / "model.safetensors"
    e = os_error(RuntimeError("I/O error: No space left on device (os error 28)"), path)
    assert isinstance(e, OSError)
    assert (e.errno, e.strerror, e.filename) == (28, os.strerror(28), str(path))
    already = OSError(28, "No space left on device (os error 28)", "/elsewhere")
    other = ValueError("header too large")
    assert os_error(already, path) is already and os_error(other, path) is other


def test_a_name_that_is_not_utf8_is_printable_with_a_replacement_character():
    name = b"caf\xe9.txt".decode("utf-8", "surrogateescape")  # (how Python holds it)
    assert printable(name) == "caf\ufffd.txt" and printable("café.txt") == "café.txt"


# --- resuming with the command as typed -----------------------------------------------------------


def test_resume_takes_the_command_as_first_typed(small_text, tmp_path, capsys, monkeypatch):
    run = tmp_path / "runs" / "b"
    typed = ["train", "--text", str(small_text), *TINY_FLAGS, "--eval-every", "10",
             "--out", str(run)]
    assert main([*typed, "--steps", "20"]) == 0
    monkeypatch.chdir(tmp_path)  # the same paths, written another way
    again = [a.replace(str(tmp_path), ".") if a.startswith(str(tmp_path)) else a for a in typed]
    assert main([*again, "--resume", "runs/b", "--steps", "40"]) == 0
    assert load_checkpoint(run / "checkpoints", "last").meta["step"] == 40
    capsys.readouterr()
    code = main([*again, "--resume", "runs/b", "--steps", "60", "--block-size", "64",
                 "--n-embd", "64"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "block_size from 32 to 64" in err and "n_embd from 32 to 64" in err
    assert main([*again, "--resume", "runs/b", "--out", "runs/c"]) == 2
    assert "name different folders" in capsys.readouterr().err


def test_an_interrupted_compare_continues_where_it_stopped(small_text, tmp_path, monkeypatch):
    common = {"text": str(small_text), **TINY, "steps": 30, "eval_every": 10, "log_every": 1}
    runs = {"a": {"lr": 1e-3}, "b": {"lr": 3e-3}, "c": {"lr": 2e-3, "steps": 10}}
    straight = compare(runs, tmp_path / "straight", common=common, progress=False)
    probes = comparing.standard_probes  # b crashes at step 15, after its checkpoint at 10; c waits
    monkeypatch.setattr(comparing, "standard_probes",
                        lambda cfg: [*probes(cfg), *[CrashAt(15)] * (cfg.train.lr == 3e-3)])
    with pytest.raises(KeyboardInterrupt):
        compare(runs, tmp_path / "cut", common=common, progress=False)
    monkeypatch.undo()
    a = tmp_path / "cut" / "0-a" / "checkpoints" / "last.json"
    trained = a.stat().st_mtime_ns
    saved = load_checkpoint(tmp_path / "cut" / "1-b" / "checkpoints", "last").meta["step"]
    starts = []  # the step each variant trained by the second call starts from

    class Start(Probe):
        def start(self, run):
            starts.append((run.cfg.train.lr, run.state.step))

    monkeypatch.setattr(comparing, "standard_probes", lambda cfg: [*probes(cfg), Start()])
    table = compare(runs, tmp_path / "cut", common=common, progress=False)  # the same again
    monkeypatch.undo()
    assert a.stat().st_mtime_ns == trained  # a was kept; b went on from its checkpoint (from
    assert starts == [(3e-3, saved), (2e-3, 0)] and saved > 0  # step 0, it ends with the same
    # weights: only where it starts tells), and then c began
    keys = ("variant", "final_val_loss", "best_val_loss", "steps")
    assert [[r[k] for k in keys] for r in table] == [[r[k] for k in keys] for r in straight]
    assert same_weights(tmp_path / "cut" / "1-b", tmp_path / "straight" / "1-b")
    for other in ({**runs, "d": {}}, {"b": runs["b"], "a": runs["a"], "c": runs["c"]}):
        with pytest.raises(MiniGPTError, match="holds a comparison of other variants or se"):
            compare(other, tmp_path / "cut", common=common, progress=False)  # (reordered:
            # 0-b, 1-a trained anew)
    # a new comparison where a variant's folder holds a run of something else (a 30-step `a`
    # for a 5-step one): it stood for the variant, "trained before"
    shutil.copytree(tmp_path / "straight" / "0-a", tmp_path / "mine" / "0-a")
    with pytest.raises(MiniGPTError, match="0-a exists, and no comparison there trained it"):
        compare(runs, tmp_path / "mine", common={**common, "steps": 5}, progress=False)


@MAIN_THREAD_ONLY
def test_a_stopped_compare_says_how_to_continue_the_comparison_only(small_text, tmp_path,
                                                                     monkeypatch, caplog):
    probes, log = comparing.standard_probes, logging.getLogger("minigpt")
    monkeypatch.setattr(comparing, "standard_probes", lambda cfg: [*probes(cfg), SignalAt(0)])
    level = log.level
    try:  # (compare quiets the "minigpt" logger: the process's next test wants it back)
        code = main(["compare", "--text", str(small_text), *TINY_FLAGS, "--steps", "10",
                     "--optimizers", "sgd", "--out", str(tmp_path / "c")])
    finally:
        log.setLevel(level)
    said = caplog.text
    assert code == 130
    assert f"the same command with --out {tmp_path / 'c'} continues the comparison" in said
    assert "train --resume" not in said  # (the variant's own run said it too)
    # in Python (a notebook's cell): the same compare call, in the same folder (a cell that
    # names a new one each time it runs would start again: the folder is said)
    monkeypatch.setattr(comparing, "standard_probes", lambda cfg: [*probes(cfg), SignalAt(2)])
    with pytest.raises(TrainingStopped) as info:
        compare({"sgd": {"optimizer": "sgd"}}, tmp_path / "py", progress=False,
                common={**TINY, "text": str(small_text), "steps": 10, "log_every": 1})
    assert str(info.value) == (f"sgd: checkpoint saved; the same compare call, with out_dir="
                               f"{str(tmp_path / 'py')!r}, continues the comparison")


def test_resume_applies_changed_optimizer_settings_and_keeps_the_optimizer(good_run, tmp_path,
                                                                           capsys, caplog):
    run = copy_of(good_run, tmp_path)  # 10 steps of adamw with the defaults
    with caplog.at_level(logging.INFO, logger="minigpt"):
        assert main(["train", "--resume", str(run), "--steps", "20", "--beta2", "0.95",
                     "--weight-decay", "0.01", "--no-progress", "--sample-every", "5"]) == 0
    # what changed is said, in the order of the settings
    assert ("resuming from step 10, with steps 10 -> 20, weight_decay 0.1 -> 0.01, beta2 0.99 -> "
            "0.95, sample_every 0 -> 5") in caplog.text  # (0.99: the default)
    groups = load_checkpoint(run / "checkpoints", "last").meta["optimizer"]["param_groups"]
    assert [(g["betas"], g["weight_decay"]) for g in groups] == [([0.9, 0.95], 0.01),
                                                                ([0.9, 0.95], 0.0)]
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--steps", "30", "--optimizer", "sgd",
                 "--no-progress"]) == 2
    assert "trained with adamw, whose state cannot continue under sgd" in capsys.readouterr().err


# --- one run per folder -------------------------------------------------------------------------


def test_a_held_folder_names_its_holders_pid_over_an_earlier_longer_one(tmp_path):
    (tmp_path / "run.lock").write_text("123456789012\n")  # a crashed holder's (locks are per
    with lock_folder(tmp_path):  # open file, so a second open in this process is refused too)
        with pytest.raises(MiniGPTError, match=rf"in use by another minigpt process "
                                               rf"\(pid {os.getpid()}\);"), lock_folder(tmp_path):
            pass
    with lock_folder(tmp_path):  # and freed when the first ends
        pass


def test_a_lock_names_its_whole_pid_and_is_let_go_when_its_block_fails(tmp_path):
    """lock_holder (report, resume's checks) reads the holder's pid whole, over a longer one a
    crashed holder left; a block that raises lets the folder go (a failed train() in a notebook
    kept it, every later run there refused)."""
    (tmp_path / "run.lock").write_text("123456789012\n")
    with lock_folder(tmp_path):  # (flock: a second open file is refused, in this process too)
        assert lock_holder(tmp_path) == str(os.getpid())
    with pytest.raises(KeyboardInterrupt), lock_folder(tmp_path):
        raise KeyboardInterrupt
    assert lock_holder(tmp_path) is None


@pytest.mark.slow
def test_a_second_process_in_a_run_folder_is_refused_and_a_crash_frees_it(small_text, tmp_path,
                                                                          capsys):
    """The second process is this one (`main`, what the command runs: the lock is the
    process's, flock's, whichever process asks for it)."""
    run = tmp_path / "run"
    args = ["--text", str(small_text), "--steps", "100000", "--eval-every", "50", *QUIET]
    first = start_training(*args, "--out", str(run))
    try:  # (a failed assertion must not leave 100,000 steps running beside the other tests)
        wait_for_lines(run / "metrics.jsonl", 2, first)
        second = in_process(capsys, "train", "--resume", str(run), "--no-progress")
        assert second.returncode == 2 and second.stderr.count("\n") == 1
        assert f"in use by another minigpt process (pid {first.pid})" in second.stderr
        new = in_process(capsys, "train", "--text", str(small_text), "--out", str(run), *QUIET)
        assert new.returncode == 2 and ("in use" in new.stderr or "already holds" in new.stderr)
        # the run training there is said, not "already holds a run: resume it", which the
        # lock would refuse
        assert new.stderr == (f"minigpt: error: {run} is in use by another minigpt process "
                              f"(pid {first.pid}), training there; wait for it to end, or "
                              f"choose another --out\n"), new.stderr
    finally:
        first.kill()  # SIGKILL: no clean-up; the lock goes with the process
        first.wait()
    at = load_checkpoint(run / "checkpoints", "last").meta["step"]  # (50 or later)
    resumed = in_process(capsys, "train", "--resume", str(run), "--steps", str(at + 10),
                         "--no-progress")
    assert resumed.returncode == 0, resumed.stderr


def test_a_run_that_ends_in_the_folder_while_a_new_one_sets_up_is_kept(good_run, tmp_path,
                                                                        monkeypatch):
    """train() checks the folder at once, then builds the run (a new corpus to read can take
    minutes), then takes the folder's lock: a run that finished there in between was
    overwritten, all its files, with exit 0."""
    folder, build = tmp_path / "run", minigpt.trainer.build_run

    def build_while_another_finishes(cfg, out):
        run = build(cfg, out)
        shutil.copytree(good_run, folder)
        return run

    monkeypatch.setattr(minigpt.trainer, "build_run", build_while_another_finishes)
    with pytest.raises(MiniGPTError, match="already holds a run"):
        train(tiny_config(good_run.parent / "corpus.txt", steps=2), folder, progress=False)
    assert all((folder / p.relative_to(good_run)).read_bytes() == p.read_bytes()
               for p in good_run.rglob("*") if p.is_file() and p.name != "run.lock")


# --- torn logs ------------------------------------------------------------------------------------


def test_torn_last_lines_are_dropped_with_a_warning(good_run, tmp_path, capsys):
    run = copy_of(good_run, tmp_path)
    for name in ("metrics.jsonl", "gradflow.jsonl", "samples.jsonl"):
        with open(run / name, "a") as f:
            f.write('{"step": 7, "train_lo')  # what a SIGKILL in mid-write leaves
    report = in_process(capsys, "report", "--run", str(run))
    assert report.returncode == 0, report.stderr
    for name in ("metrics.jsonl", "samples.jsonl"):  # each said once (the run has no gradflow)
        assert report.stderr.count(f"{name}: dropped 1 damaged line") == 1, report.stderr
    resumed = in_process(capsys, "train", "--resume", str(run), "--steps", "14", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    rows = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(14))
    assert all(json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines())


def test_only_names_a_killed_writer_leaves_are_swept_away(tmp_path):
    """.NAME.XXXXXXXX.tmp, eight of tempfile's characters (a-z, 0-9, _), file or folder; a
    user's .tmp of another shape stays."""
    for name in (".loss.png.k1l2m3n4.tmp", ".export.a_b2c3d4.tmp"):
        (tmp_path / name).write_text("")
    (tmp_path / ".attention.x1y2z3w4.tmp").mkdir()
    theirs = [".notes.draft.tmp", ".notes.tmp", ".x.ABCDEFGH.tmp", ".x.k1l2m3n4o.tmp", "a.tmp"]
    for name in theirs:
        (tmp_path / name).write_text("mine")
    remove_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(theirs)


def test_blank_lines_are_no_damage_and_a_line_not_an_object_is(tmp_path, caplog):
    rows = [{"step": 0, "loss": 4.2}, {"step": 5, "loss": 3.1}]
    lines = [json.dumps(rows[0]), "", "  ", json.dumps(rows[1]), "[1, 2]", "",
             '{"step": "x", "train_loss": "abc"}', '{"step": true}', '{"loss": 1.0}']  # (by hand:
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")  # the report's sort and a
    with caplog.at_level(logging.WARNING, logger="minigpt"):  # resume's cut read their steps)
        assert read_jsonl(tmp_path / "m.jsonl") == rows
        truncate_jsonl(tmp_path / "m.jsonl", 5)
    assert read_jsonl(tmp_path / "m.jsonl") == rows[:1]
    assert [r.getMessage() for r in caplog.records][0] == \
        f"{tmp_path / 'm.jsonl'}: dropped 4 damaged line(s), as a crash leaves them"


def test_a_damaged_tag_keeps_every_checkpoint_and_the_run_going(good_run, tmp_path, caplog):
    """prune() reads last.json and best.json to know which steps to keep: a damaged one
    stopped a resumed run at its next checkpoint with a traceback."""
    folder = copy_of(good_run, tmp_path) / "checkpoints"
    (folder / "best.json").write_text('{"file": ')
    before = sorted(p.name for p in folder.iterdir())
    with caplog.at_level(logging.WARNING, logger="minigpt"):
        ckpt.prune(folder, keep=1)
    assert sorted(p.name for p in folder.iterdir()) == before
    assert "best.json is damaged: no checkpoint removed" in caplog.text


def test_pruning_keeps_the_newest_steps_past_a_million(tmp_path):
    """Step names sort as text until step 999,999; then step-1000000 came first, and pruning
    removed the newest checkpoint."""
    for step in (999_998, 999_999, 1_000_000):
        (tmp_path / f"step-{step:06d}.json").write_text("{}")
    ckpt.prune(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-1000000.json", "step-999999.json"]


def test_pruning_leaves_a_file_minigpt_did_not_write(tmp_path):
    """A user's step-notes.json beside the checkpoints sorted as the oldest step, and pruning
    deleted it."""
    (tmp_path / "step-notes.json").write_text("{}")
    for step in (1, 2):
        (tmp_path / f"step-{step:06d}.json").write_text("{}")
    ckpt.prune(tmp_path, keep=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000002.json", "step-notes.json"]


def tiny_save(folder, step, tags, keep=1, **options):
    """save_checkpoint of a tiny model at `step`; returns the model."""
    model = MiniGPT(3, n_embd=8, n_head=1, n_layer=2, block_size=4, **options)
    meta = {"step": step, "tokenizer": CharTokenizer("abc").to_dict()}
    ckpt.save_checkpoint(folder, tags, model, torch.optim.AdamW(model.parameters()), meta, {},
                         keep=keep)
    return model


def test_keep_zero_keeps_only_the_steps_a_tag_names(tmp_path):
    for step, tags in [(1, ["last", "best"]), (2, ["last"]), (3, ["last"])]:
        tiny_save(tmp_path, step, tags, keep=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "best.json", "last.json", "step-000001.json", "step-000001.safetensors",
        "step-000003.json", "step-000003.safetensors"]


def test_a_tied_model_at_step_0_is_saved_once_and_fits_only_its_own_shape(tmp_path):
    """Step 0 is a step (>= 0); a tied lm_head is stored once, as token_emb.weight; and a
    checkpoint with a block the model lacks is refused, not loaded partly."""
    model = tiny_save(tmp_path, 0, ["last"], tie_weights=True)
    saved = load_checkpoint(tmp_path)
    assert saved.meta["step"] == 0 and "model.lm_head.weight" not in saved.tensors
    again = MiniGPT(3, n_embd=8, n_head=1, n_layer=2, block_size=4, tie_weights=True)
    ckpt.restore_model(again, saved)
    assert again.lm_head.weight is again.token_emb.weight
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())
    shallower = MiniGPT(3, n_embd=8, n_head=1, n_layer=1, block_size=4, tie_weights=True)
    with pytest.raises(MiniGPTError, match=r"does not fit the model: .*unexpected \['blocks\.1"):
        ckpt.restore_model(shallower, saved)
    untied = MiniGPT(3, n_embd=8, n_head=1, n_layer=2, block_size=4)  # lm_head of its own:
    with pytest.raises(MiniGPTError, match=re.escape("missing ['lm_head.weight']")):  # not saved
        ckpt.restore_model(untied, saved)


def test_load_model_gives_the_saved_model_in_eval_mode(tmp_path):
    """load_model's model is in eval mode, as it says: a model saved with dropout (and in
    training mode, as the loop saves it) gives back the saved model's eval logits at every
    call, not a different dropout mask each time."""
    model = tiny_save(tmp_path / "run" / "checkpoints", 1, ["last"], dropout=0.5).train()
    loaded = load_model(tmp_path / "run", "last")[0]
    idx = torch.tensor([[0, 2, 1, 1]])
    with torch.no_grad():
        expected = model.eval()(idx)[0]
        assert not loaded.training
        assert all(torch.equal(loaded(idx)[0], expected) for _ in range(2))


def test_a_tensor_file_outside_the_checkpoints_folder_is_refused(tmp_path):
    """The JSON names a file beside it; "../x" is refused even when x is there and matches."""
    tiny_save(tmp_path / "c", 1, ["last"])
    meta = json.loads((tmp_path / "c" / "last.json").read_text())
    (tmp_path / "c" / meta["file"]).rename(tmp_path / "x.safetensors")
    meta["file"] = "../x.safetensors"
    (tmp_path / "c" / "last.json").write_text(json.dumps(meta))
    with pytest.raises(MiniGPTError, match="tensor file must sit beside the JSON"):
        load_checkpoint(tmp_path / "c")


def test_a_folder_where_a_checkpoints_file_should_be_is_refused_in_one_line(tmp_path):
    """A directory in place of the tensor file or of last.json is no checkpoint: one line, not
    an IsADirectoryError's traceback."""
    tiny_save(tmp_path / "c", 1, ["last"])
    tensors = tmp_path / "c" / json.loads((tmp_path / "c" / "last.json").read_text())["file"]
    tensors.unlink()
    tensors.mkdir()
    with pytest.raises(MiniGPTError, match=f"checkpoint file {re.escape(str(tensors))} is missing"):
        load_checkpoint(tmp_path / "c")
    (tmp_path / "c" / "last.json").unlink()
    (tmp_path / "c" / "last.json").mkdir()
    with pytest.raises(MiniGPTError, match="no 'last' checkpoint in "):
        load_checkpoint(tmp_path / "c")


def test_a_checkpoint_record_without_its_step_is_refused_in_one_line(tmp_path):
    tiny_save(tmp_path / "c", 1, ["last"])
    meta = json.loads((tmp_path / "c" / "last.json").read_text())
    for step in (None, "1"):  # gone, or not an int
        (tmp_path / "c" / "last.json").write_text(json.dumps(meta | {"step": step}))
        with pytest.raises(MiniGPTError, match="is not readable: 'step' is missing or not a int"):
            load_checkpoint(tmp_path / "c")


def test_a_checkpoint_without_the_tokens_fingerprint_compares_text_paths_resolved(
        small_text, tmp_path, monkeypatch):
    """Where a checkpoint keeps no fingerprint, --text is compared as a path: the run's own
    file spelt relative is the same setting, another file is not."""
    cfg = tiny_config(str(small_text.resolve()))
    monkeypatch.chdir(small_text.parent)
    assert ckpt.same_setting(cfg, "data", "text", f"./{small_text.name}")
    other = tmp_path / "other.txt"
    other.write_text(small_text.read_text())
    assert not ckpt.same_setting(cfg, "data", "text", str(other))
    assert ckpt.same_setting(cfg, "data", "text", str(other), fingerprinted=True)


# --- a full disk, for real ------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 1.5 MiB tmpfs: a real file system that fills up (needs root and mount)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1536k", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], capture_output=True)


@pytest.mark.slow
def test_a_disk_that_fills_up_mid_run(small_text, small_disk, capsys):
    """Checkpoints of ~0.5 MB each (two layers) on 1.5 MiB: the disk fills within a few
    evaluations."""
    run = small_disk / "run"
    r = in_process(capsys, "train", "--text", str(small_text), "--steps", "400", "--eval-every",
                   "5", "--keep", "8", *QUIET, "--n-layer", "2", "--out", str(run))
    assert r.returncode == 1
    assert r.stderr.startswith("minigpt: error: No space left on device") and \
        r.stderr.count("\n") == 1
    last = load_checkpoint(run / "checkpoints", "last")  # the last good checkpoint loads
    assert last.meta["step"] >= 1
    # ... and it is the newest saved whole, not an earlier one: last moved at every save
    saved = [int(p.stem.removeprefix("step-")) for p in (run / "checkpoints").glob("step-*.json")]
    assert last.meta["step"] == max(saved)
    # the error names the file it could not write: the run's own, not a temporary, not there
    named = Path(r.stderr.removeprefix(f"minigpt: error: {os.strerror(errno.ENOSPC)}: ")[:-1])
    assert named.parent in (run, run / "checkpoints") and not named.name.startswith("."), named
    assert not named.exists()
    assert not list(run.rglob(".*.tmp"))  # no temporary file left behind
    for line in (run / "metrics.jsonl").read_text().splitlines():
        json.loads(line)  # every line whole
    # (the loop above reads what there is: there is a row of every step the checkpoint holds)
    steps = [r["step"] for r in read_jsonl(run / "metrics.jsonl")]
    assert steps == list(range(len(steps))) and len(steps) >= last.meta["step"]


def test_prepare_report_and_export_on_a_full_disk(good_run, small_disk, tmp_path, capsys):
    big = tmp_path / "big.txt"
    big.write_text("All the world's a stage, and all the men and women merely players.\n" * 40000)
    out = small_disk / "shards"
    r = in_process(capsys, "prepare", "--text", str(big), "--out", str(out), "--no-progress")
    assert r.returncode == 1 and "No space left on device" in r.stderr
    assert r.stderr.count("\n") == 1 and not out.exists()  # no shard, no folder left
    full = f"minigpt: error: {os.strerror(errno.ENOSPC)}: "  # then the file it could not write:
    shard = re.escape(f"{full}{out}{os.sep}") + r"(train|val)-\d{5}\.bin\n"  # by the name asked
    assert re.fullmatch(shard, r.stderr), r.stderr  # for, not its temporary, removed by now
    filler = small_disk / "filler"
    with open(filler, "wb") as f:  # leave no room for the report
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    r = in_process(capsys, "report", "--run", str(good_run), "--out",
                   str(small_disk / "report.html"))
    assert r.returncode == 1 and "No space left on device" in r.stderr
    assert r.stderr == f"{full}{small_disk / 'report.html'}\n"
    assert not (small_disk / "report.html").exists()
    os.truncate(filler, filler.stat().st_size - 40960)  # room for config.json, not the weights
    r = in_process(capsys, "export", "--run", str(good_run), "--out", str(small_disk / "exported"))
    assert r.returncode == 1 and r.stderr.count("\n") == 1  # (safetensors' error: a traceback)
    assert "No space left on device" in r.stderr and "model.safetensors" in r.stderr
    assert r.stderr == f"{full}{small_disk / 'exported' / 'model.safetensors'}\n"  # not ours
    assert not (small_disk / "exported").exists()
    assert not [p for p in small_disk.iterdir() if p.name.startswith(".")]


# --- chaos: killed at random, resumed, the same weights ----------------------------------------


@pytest.mark.slow
def test_killed_at_random_moments_and_resumed_ends_as_an_uninterrupted_run(small_text, tmp_path):
    """Four SIGKILLs at random moments (starting up, mid-step, mid-write), each followed by the
    command a user would type next: the run ends bit-identical to one never interrupted."""
    args = ["--text", str(small_text), "--steps", "200", "--eval-every", "15", *QUIET]
    assert main(["train", *args, "--out", str(tmp_path / "straight")]) == 0  # the oracle, in
    # this process (the kills are of the processes launched below)
    run, rng = tmp_path / "chaos", random.Random(4)

    def launch():  # resume once there is a checkpoint; before that, start again
        if (run / "checkpoints" / "last.json").exists():
            return start_training("--resume", str(run), "--no-progress")
        return start_training(*args, "--out", str(run))

    last, rows = run / "checkpoints" / "last.json", run / "metrics.jsonl"

    def saved_step():
        try:
            return json.loads(last.read_text())["step"]
        except (OSError, ValueError):  # not written yet
            return 0

    def logged_step():  # the newest metrics row (one per step): progress finer than a save
        try:
            return json.loads(rows.read_text().splitlines()[-1])["step"]
        except (OSError, ValueError, IndexError):  # not written yet, or a row half-written
            return -1

    # Kills are placed by progress, not by the clock: a tiny run makes 200 steps in under a
    # second, so a random sleep could outlast it. The last one leaves 60 steps to go (the kills
    # fall among the first 140 steps; 100 more would add only their seconds, twice).
    targets = sorted(rng.sample(range(20, 140), 3))
    proc, steps_at_kills = launch(), []
    for kill in range(4):
        if kill == 0:  # the first kill: most likely while it starts up, never past step 10
            until = time.monotonic() + rng.uniform(0.5, 3.0)
            while time.monotonic() < until and logged_step() < 10 and proc.poll() is None:
                time.sleep(0.005)
        else:  # the others: past a random step, mid-step or mid-write, after progress is saved
            deadline = time.monotonic() + 120  # however loaded the machine
            while (logged_step() < targets[kill - 1] or saved_step() <= steps_at_kills[-1]) \
                    and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.02))
        assert proc.poll() is None, proc.communicate()  # still running: the kill lands
        proc.kill()
        proc.wait()
        steps_at_kills.append(saved_step())
        proc = launch()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert steps_at_kills[-1] > 0  # it had made progress before at least one kill
    assert without_speed(read_jsonl(run / "metrics.jsonl")) == without_speed(
        read_jsonl(tmp_path / "straight" / "metrics.jsonl"))
    assert same_weights(run, tmp_path / "straight")


def test_a_run_without_last_json_says_how_to_go_on(good_run, tmp_path, capsys):
    """A full disk at the first save's last.json left a whole step checkpoint and no tag: a
    new run there said to resume, and the resume said there was no 'last' checkpoint."""
    run = copy_of(good_run, tmp_path)
    (run / "checkpoints" / "last.json").unlink()
    newest = sorted(p.name for p in (run / "checkpoints").glob("step-*.json"))[-1]
    for args in (["--resume", str(run)],
                 ["--text", str(good_run.parent / "corpus.txt"), *QUIET, "--out", str(run)]):
        line = one_line_error(capsys, ["train", *args])
        assert f"has no last.json (a save cut short, or deleted): copy its newest step, " \
               f"{newest}, to last.json to resume from it" in line
    shutil.copy(run / "checkpoints" / newest, run / "checkpoints" / "last.json")
    # the oracle: the run's 12 steps uninterrupted (all in the warmup, whose rates do not hang
    # on --steps): the resume from the copied step must have trained on as if never stopped
    straight = tmp_path / "straight"
    for args in (["--resume", str(run), "--steps", "12", "--no-progress"],
                 ["--text", str(good_run.parent / "corpus.txt"), "--steps", "12",
                  "--eval-every", "5", *QUIET, "--out", str(straight)]):
        assert main(["train", *args]) == 0
    assert same_weights(run, straight)
    assert [(r["step"], r["train_loss"], r["lr"]) for r in read_jsonl(run / "metrics.jsonl")] \
        == [(r["step"], r["train_loss"], r["lr"]) for r in read_jsonl(straight / "metrics.jsonl")]


def test_a_new_run_where_one_was_killed_before_its_first_checkpoint_starts_clean(small_text,
                                                                                  tmp_path,
                                                                                  capsys):
    """Killed at step 0 (its row and a plot's temporary file written, no checkpoint yet), the
    folder holds no run; the same command again trains there, and its log is its own."""
    cfg = tiny_config(small_text, steps=6, eval_every=3)
    fresh = train(cfg, tmp_path / "fresh", progress=False)
    folder = tmp_path / "killed"
    train(cfg, folder, progress=False)
    shutil.rmtree(folder / "checkpoints")  # as if killed while the first was written
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / ".step-000003.safetensors.k1l2m3n4.tmp").write_bytes(b"")
    (folder / ".loss.png.x1y2z3w4.tmp").write_bytes(b"")  # (named as tempfile names them)
    (folder / ".attention.a1b2c3d4.tmp").mkdir()
    (folder / ".notes.tmp").write_text("a file of the user's")
    with pytest.raises(MiniGPTError, match="stopped before its first checkpoint: nothing to "):
        train(cfg, folder, resume=True, progress=False)
    line = one_line_error(capsys, ["train", "--resume", str(folder)])  # (no 'last' checkpoint)
    assert "stopped before its first checkpoint: nothing to resume" in line
    again = train(cfg, folder, progress=False)
    rows = read_jsonl(folder / "metrics.jsonl")
    assert [r["step"] for r in rows] == [r["step"] for r in read_jsonl(tmp_path / "fresh" /
                                                                       "metrics.jsonl")]
    assert again.summary["final_val_loss"] == fresh.summary["final_val_loss"]
    assert [p.name for p in folder.glob(".*.tmp")] == [".notes.tmp"]
    # a folder that holds no run of minigpt's is not cleaned, and an export is not a run's
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / ".cache.x1y2z3w4.tmp").mkdir()
    train(cfg, theirs, progress=False)
    assert (theirs / ".cache.x1y2z3w4.tmp").is_dir()
    export = tmp_path / "export"
    export.mkdir()
    (export / "config.json").write_text('{"model_type": "gpt2"}')
    (export / "model.safetensors").write_bytes(b"")
    with pytest.raises(MiniGPTError, match="export holds an exported model, not a training "
                                           "run: no checkpoint to load there"):
        train(cfg, export, resume=True, progress=False)
    with pytest.raises(MiniGPTError, match="export holds an exported model; choose another"):
        train(cfg, export, progress=False)


@pytest.mark.parametrize("missing", ["train", "data", "parts", "world_size"])
def test_a_checkpoint_missing_any_part_of_the_runs_state_is_not_resumable(missing):
    from minigpt.checkpoint import check_resumable

    meta = {"train": {}, "data": {}, "parts": {}, "world_size": 1}
    check_resumable(meta, "run")
    with pytest.raises(MiniGPTError, match="holds a model but not its training run's state"):
        check_resumable({k: v for k, v in meta.items() if k != missing}, "run")


@pytest.mark.parametrize("edit, said", [
    (lambda parts: parts["state"].update(best_val="x"), "parts.state.best_val is 'x', not a float"),
    (lambda parts: parts["state"].update(step=4.0), "parts.state.step is 4.0, not a whole number"),
    (lambda parts: parts["state"].update(reached=5), "parts.state.reached is 5, not a dict"),
    (lambda parts: parts["clock"].update(seconds="x"), "parts.clock.seconds is 'x', not a number"),
    (lambda parts: parts["clock"].update(seconds=True), "parts.clock.seconds is True, not a "),
    (lambda parts: parts["clock"].pop("seconds"), "parts.clock.seconds is missing"),
    (lambda parts: parts.update(state={}), "its state is at step 0, not 4"),
    (lambda parts: parts.pop("clock"), "parts.clock is missing"),
    (lambda parts: parts["state"].update(steps=4), "unexpected keyword argument 'steps'"),
])
def test_a_checkpoints_parts_edited_out_of_shape_are_refused_in_one_line(small_text, tmp_path,
                                                                         edit, said):
    """The sha256 guards the tensors, not the JSON's parts: a string where a number was gave
    a traceback steps later, and an empty state resumed from step 0 on the trained weights."""
    run = tmp_path / "run"
    train(tiny_config(small_text, steps=4, eval_every=2), run, progress=False)
    last = run / "checkpoints" / "last.json"
    meta = json.loads(last.read_text())
    edit(meta["parts"])
    last.write_text(json.dumps(meta))
    with pytest.raises(MiniGPTError, match=rf"checkpoint {re.escape(str(last))} is not readable: "
                                           rf".*{re.escape(said)}"):
        train(resume_config(run, {"steps": 8}), run, resume=True, progress=False)


LOST = [RuntimeError("[gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:1"),
        RuntimeError("[gloo/transport/tcp/pair.cc:598] Connection reset by peer"),
        torch.distributed.DistNetworkError("failed to recv, got 0 bytes")]


@pytest.mark.parametrize("error", LOST)
def test_a_lost_peer_under_torchrun_is_told_with_the_command_that_goes_on(error, tmp_path):
    """The checkpoint's own step, and torchrun with as many processes as the run had; none
    yet: the run is trained again. One process (nobody to lose) or an out-of-memory error
    (NCCL's) is not a lost peer."""
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    again = "torchrun --nproc_per_node=3 -m minigpt train"
    said = str(training_error(error, 1, checkpoints, processes=3))
    assert said == (f"another process of the run stopped, after 1 step; it had no checkpoint "
                    f"yet: train it again with {again} --out {tmp_path / 'run'}")
    (checkpoints / "last.json").write_text(json.dumps({"step": 1200}))
    said = str(training_error(error, 1250, checkpoints, processes=3))
    assert said.endswith(f"after 1,250 steps; its last checkpoint, of step 1,200, is intact: "
                         f"continue with {again} --resume {tmp_path / 'run'}")
    assert training_error(error, 1250, checkpoints) is error  # one process: no peer
    memory = type(error)(f"{error}; out of memory")
    assert str(training_error(memory, 1250, checkpoints, processes=3)).startswith(
        "out of memory after 1,250 steps")


def test_the_command_that_goes_on_names_the_nodes_of_a_run_across_several(tmp_path,
                                                                          monkeypatch):
    """8 processes, 4 a node (torchrun's LOCAL_WORLD_SIZE): two nodes of 4, not 8 on one (a
    resume with 8 on one node is another run's shape; it said --nproc_per_node=8)."""
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    said = str(training_error(LOST[0], 1, tmp_path / "checkpoints", processes=8))
    assert "train it again with torchrun --nnodes=2 --nproc_per_node=4 -m minigpt train" in said
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")  # one node of 8
    said = str(training_error(LOST[0], 1, tmp_path / "checkpoints", processes=8))
    assert "train it again with torchrun --nproc_per_node=8 -m minigpt train" in said
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")  # uneven nodes: their count is torchrun's
    monkeypatch.setenv("GROUP_WORLD_SIZE", "3")
    said = str(training_error(LOST[0], 1, tmp_path / "checkpoints", processes=8))
    assert "train it again with torchrun --nnodes=3 --nproc_per_node=3 -m minigpt train" in said


def test_an_error_of_torchrun_that_is_no_lost_peer_is_left_as_it_is(tmp_path):
    error = RuntimeError("NCCL error in: ProcessGroupNCCL.cpp:1970, unhandled cuda error")
    assert training_error(error, 5, tmp_path / "checkpoints", processes=2) is error


def test_a_lost_peer_with_an_unreadable_last_checkpoint_record_is_trained_again(tmp_path):
    """last.json torn (not JSON), without a step, or not an object: the run has no checkpoint
    to go on from, said as such, not a JSONDecodeError, KeyError or TypeError in its place."""
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    for record in ('{"step": 12', "{}", "null"):
        (checkpoints / "last.json").write_text(record)
        said = str(training_error(LOST[0], 20, checkpoints, processes=2))
        assert said.endswith(f"it had no checkpoint yet: train it again with torchrun "
                             f"--nproc_per_node=2 -m minigpt train --out {tmp_path / 'run'}")


def test_pythons_own_memory_error_is_out_of_memory_too(tmp_path):
    """A MemoryError says nothing (its message is empty): it is known by its class, and told by
    its class's name; a message's last line of 300 characters is cut to 200."""
    said = str(training_error(MemoryError(), 3, tmp_path))
    assert said.startswith("out of memory after 3 steps (MemoryError); the last checkpoint")
    long = "x" * 300
    said = str(training_error(MemoryError(f"first\n{long}"), 3, tmp_path))
    assert f"({long[:200]})" in said


def test_out_of_memory_and_compile_failures_are_told_in_one_line(tmp_path):
    """An allocator's error, in any case, told by its last non-empty line (torch's say what
    failed last), the steps counted in words; torch.compile's failure known by its class's
    name anywhere in its ancestry, told by its first line."""
    memory = RuntimeError("in the allocator\n  Out of memory: tried to allocate 2 GiB\n\n")
    said = str(training_error(memory, 0, tmp_path))
    assert said.startswith("out of memory after 0 steps (Out of memory: tried to allocate 2 GiB)")
    lost = RuntimeError("Connection reset by peer")
    assert "stopped, after 0 steps;" in str(training_error(lost, 0, tmp_path, processes=2))

    class BackendCompilerFailed(RuntimeError):
        pass

    class InductorFailed(BackendCompilerFailed):
        pass

    said = str(training_error(InductorFailed("no C++ compiler\ndetails"), 1, tmp_path))
    assert said == "torch.compile failed (no C++ compiler); train without it: --compile off"


def test_a_signal_to_another_process_stops_this_one_after_the_same_step(monkeypatch):
    """Under torchrun a signal may reach one process alone (kill -INT of one pid): the others
    stop after the same step by the collective call's answer (any_process), not by their own
    flag, which would leave them stepping while it waits in its save. The oracle: that call."""
    from minigpt import distributed

    flags = []
    monkeypatch.setattr(distributed, "any_process", lambda flag, world: flags.append(flag) or True)
    with StopSignals() as signals:
        assert signals.agreed(distributed.World(rank=1, size=2))
    assert flags == [False]  # (this process got none: the stop was another's)


def test_a_stop_agreed_on_for_another_processs_signal_exits_as_sigterm(tmp_path):
    """A process that got no signal itself, stopped with its peers under torchrun: SIGTERM's
    exit, and the processes the run had, for the command that continues it."""
    with StopSignals() as signals:
        stopped = signals.stopped(tmp_path, 3, processes=2)
    assert (stopped.signum, stopped.steps, stopped.processes) == (signal.SIGTERM, 3, 2)


def test_outlasting_torchrun_ignores_its_sigterm_from_the_main_thread_only():
    """From another thread (where Python sets no signal handler) it does nothing, and does
    not fail."""
    was = signal.getsignal(signal.SIGTERM)
    failed = []

    def elsewhere():
        try:
            distributed.outlast_torchrun()
        except Exception as e:  # noqa: BLE001 (a thread's error reaches no test)
            failed.append(e)

    try:
        thread = threading.Thread(target=elsewhere)
        thread.start()
        thread.join()
        assert failed == [] and signal.getsignal(signal.SIGTERM) == was
        distributed.outlast_torchrun()
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, was)
