"""Data parallel training with torchrun on CPU (gloo, 2 processes), checked against one process
that accumulates the same micro-batches: same losses, same weights; and resume under torchrun."""

import fcntl
import json
import os
import random
import subprocess
import sys
import tempfile
import time

import pytest
import torch

from conftest import TINY_FLAGS, as_flags, in_process, same_weights, without_speed
from minigpt import load_checkpoint, load_model
from minigpt.files import read_jsonl

pytestmark = pytest.mark.slow  # torchrun starts three processes a run
pytest.importorskip("torch.distributed")
if not torch.distributed.is_gloo_available():
    pytest.skip("this PyTorch has no gloo backend", allow_module_level=True)

SMALL = [*TINY_FLAGS, *as_flags(dict(batch_size=4, log_every=1, eval_every=5, schedule="constant",
                                    lr=3e-3, dtype="float32", gradflow_every=4))]
# 4 a process: 8 a step, as TINY's one process; float32 in both, since --dtype auto times the
# step and could pick bf16 in one of the runs compared


def torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    """`torchrun -m minigpt ARGS`, its temp folder a private one removed after it: torchrun
    leaves a torchelastic_* folder (its agent's logs) in the temp folder of every run."""
    with tempfile.TemporaryDirectory(prefix="minigpt-torchrun-") as tmp:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": tmp}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", "-m", "minigpt", *args]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def weights(run_dir):
    return load_model(run_dir, "last")[0].state_dict()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("ddp") / "corpus.txt"
    path.write_text("Now is the winter of our discontent made glorious summer.\n" * 120)
    return path


@pytest.fixture(scope="module")
def ddp_run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "ddp"
    r = torchrun("train", "--text", str(corpus), "--steps", "12", *SMALL, "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r


OPTIONS = ["--pos", "rope", "--norm", "rmsnorm", "--qk-norm", "--mlp", "swiglu", "--no-bias",
           "--optimizer", "muon", "--muon-variant", "polar-express", "--normuon",
           *as_flags(dict(n_layer=2, bigram=True, smear=True, value_embeds=1, unet=True,
                          logit_cap=15.0, zero_init=True, ema=0.9,
                          batch_start=2, block_start=8, ramp=0.5))]  # and the speedrun's


@pytest.mark.parametrize("options, accum", [([], 1), (OPTIONS, 1), ([], 2)],
                         ids=["lesson", "options+muon", "accumulating"])
def test_two_processes_match_one_process_accumulating_their_batches(ddp_run, corpus, tmp_path,
                                                                    capsys, options, accum):
    """With --grad-accum a, rank r draws micro-batch streams r*a to r*a + a - 1; one process
    with --grad-accum 2a draws all of them: the global batch is the same, so DDP's averaged
    gradients equal the accumulated ones (with the model options and Muon too; accumulating
    under DDP, whose gradients are averaged in the last micro-batch's backward alone)."""
    out, _ = ddp_run
    if options or accum > 1:
        out = tmp_path / "ddp"
        r = torchrun("train", "--text", str(corpus), "--steps", "12", *SMALL, *options,
                     "--grad-accum", str(accum), "--out", str(out))
        assert r.returncode == 0, r.stderr[-3000:]
    one = tmp_path / "one"
    r = in_process(capsys, "train", "--text", str(corpus), "--steps", "12", *SMALL, *options,
                   "--grad-accum", str(2 * accum), "--out", str(one))
    assert r.returncode == 0, r.stderr
    ddp_rows, one_rows = read_jsonl(out / "metrics.jsonl"), read_jsonl(one / "metrics.jsonl")
    assert [r["step"] for r in ddp_rows] == [r["step"] for r in one_rows] == list(range(12))
    for a, b in zip(ddp_rows, one_rows, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
        assert a.get("val_loss") == pytest.approx(b.get("val_loss"), abs=1e-5)
    a, b = weights(out), weights(one)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    # gradient flow sees the averaged gradient, as the step does (it once saw rank 0's own)
    ddp_flow, one_flow = read_jsonl(out / "gradflow.jsonl"), read_jsonl(one / "gradflow.jsonl")
    assert [r["step"] for r in ddp_flow] == [r["step"] for r in one_flow] == [0, 4, 8]
    for a, b in zip(ddp_flow, one_flow, strict=True):
        assert a["layers"] == pytest.approx(b["layers"], rel=1e-4)
    assert ddp_rows[-1]["train_loss"] < ddp_rows[0]["train_loss"] - 0.3  # it learned


BUDGET = 2  # seconds: scores of steps, a stop as any other for the budget's test and the masks'


@pytest.fixture(scope="module")
def budget_run(corpus, tmp_path_factory):
    """One two-process run under a BUDGET-second budget, with dropout (its folder and process):
    what the budget's test and the dropout masks' test each read (a torchrun apiece cost ~12 s).
    Evaluated only at its end, and without the gradient-flow probe: over its ~130 steps, an
    evaluation every 5 saved and redrew gradflow.png 27 times (the command took 34 s; 11 s
    with an evaluation every 50). The budget was 4 s: its last 2 s only added steps, which
    neither test counts beyond 5."""
    out = tmp_path_factory.mktemp("runs") / "budget"
    r = torchrun("train", "--text", str(corpus), "--time-budget", str(BUDGET), *SMALL,
                 "--dropout", "0.5", "--eval-every", "100000", "--gradflow-every", "0",
                 "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r


def test_each_process_draws_its_own_dropout_masks(budget_run):
    """One seed gives every process the same weights; it gave them the same dropout masks too
    (their generators in one state), so the processes' noise was one noise."""
    out, _ = budget_run
    rng = load_checkpoint(out / "checkpoints", "last").section("rng")
    assert not torch.equal(rng["rank0_torch"], rng["rank1_torch"])


def test_only_rank_zero_speaks_and_writes(ddp_run):
    out, r = ddp_run
    assert r.stdout.count("final validation loss") == 1
    assert r.stdout.count('{"final_val_loss"') == 1 and '{"steps"' not in r.stdout
    config = json.loads((out / "config.json").read_text())
    assert config["environment"]["processes"] == 2
    assert "2 processes" in r.stdout and "x 1 micro-step x 2 processes" in r.stdout
    meta = json.loads((out / "checkpoints" / "last.json").read_text())
    assert meta["world_size"] == 2


def test_the_gradflow_command_reads_a_two_process_run_in_one(ddp_run, capsys):
    """A look at a run is not a resume: one process reads it, with rank 0's batch (4 of the
    step's 8 sequences), where the resume checks once refused it. Its table is autograd's:
    a row for each parameter of the last checkpoint's model, with the norm of the gradient of
    the loss on the batch rank 0 draws next (4 sequences of the block), and a summary counting
    them."""
    from minigpt.run import open_run

    out, _ = ddp_run
    r = in_process(capsys, "gradflow", "--run", str(out), "--checkpoint", "last")
    assert r.returncode == 0, r.stderr
    assert "after 12 steps (last), one batch of (4, " in r.stdout and "none flagged" in r.stdout
    run = open_run(out, "last", "cpu")  # the oracle, in one process: rank 0's stream
    x, y = run.batches.get_batch("train")
    assert tuple(x.shape) == (run.cfg.train.batch_size, run.cfg.model.block_size)
    assert f"one batch of {tuple(x.shape)} in " in r.stdout
    run.model.train()
    run.model(x, y)[1].backward()
    named = dict(run.model.named_parameters())
    lines = r.stdout.strip().splitlines()
    rows = {line.split()[0]: line.split() for line in lines[3:-1]}
    assert list(rows) == list(named) and lines[-1] == f"{len(named)} parameters, none flagged"
    for name, p in named.items():  # NORM(G), the 5th column, to 3 figures
        assert float(rows[name][4]) == pytest.approx(float(p.grad.norm()), rel=6e-3,
                                                     abs=1e-5), name


def test_a_two_process_run_resumes_exactly_and_only_in_two_processes(corpus, ddp_run, tmp_path,
                                                                     capsys):
    """Its two runs draw no gradient flow (gradflow.png was redrawn at each of their 5
    evaluations, ~2 s a run): the probe only reads the gradients, and the test reads neither
    of its files; the metrics and weights still match the straight run's, which drew it."""
    straight, _ = ddp_run
    part = tmp_path / "part"
    r = torchrun("train", "--text", str(corpus), "--steps", "6", *SMALL, "--gradflow-every", "0",
                 "--out", str(part))
    assert r.returncode == 0, r.stderr[-3000:]
    r = in_process(capsys, "train", "--resume", str(part), "--steps", "12")  # one: refused
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "2 process(es)" in r.stderr
    r = torchrun("train", "--resume", str(part), "--steps", "12")
    assert r.returncode == 0, r.stderr[-3000:]
    assert without_speed(read_jsonl(part / "metrics.jsonl")) == \
        without_speed(read_jsonl(straight / "metrics.jsonl"))
    assert same_weights(part, straight)


def test_a_refusal_of_rank_zero_stops_every_process_in_one_line(ddp_run):
    """The run folder in use: rank 0 alone finds out, every process stops, one line says why
    (rank 1 used to die in its next collective call, with gloo's traceback)."""
    out, _ = ddp_run
    with open(out / "run.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        r = torchrun("train", "--resume", str(out), "--steps", "14")
    assert r.returncode != 0
    errors = [line for line in r.stderr.splitlines() if "minigpt: error:" in line]
    assert len(errors) == 1 and "is in use by another minigpt process" in errors[0]
    assert "[rank1]" not in r.stderr and "gloo" not in r.stderr.lower()
    assert load_model(out, "last")[2]["step"] == 12  # nothing trained


def test_a_process_killed_mid_run_is_said_in_one_line_with_the_way_on(corpus, tmp_path):
    """Rank 1 killed (SIGKILL: nothing of its own said): rank 0's next collective call fails,
    and it says so in one line with the command that continues the run, not gloo's traceback;
    its last checkpoint stays whole."""
    out = tmp_path / "killed"
    with tempfile.TemporaryDirectory(prefix="minigpt-torchrun-") as tmp:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": tmp}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", "-m", "minigpt", "train", "--text", str(corpus),
               "--steps", "100000", *SMALL, "--gradflow-every", "0", "--out", str(out)]
        # (no gradient flow, which the test does not read: gradflow.png, matplotlib imported
        # first, was drawn at step 0's evaluation, before the first checkpoint it waits for)
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        try:
            deadline = time.monotonic() + 120
            while not (out / "checkpoints" / "last.json").is_file():
                assert time.monotonic() < deadline and proc.poll() is None, "no checkpoint"
                time.sleep(0.2)
            rank1 = [pid for pid in os.listdir("/proc") if pid.isdigit()
                     and b"\0RANK=1\0" in _environ(pid) and str(out).encode() in _cmdline(pid)]
            assert len(rank1) == 1
            time.sleep(random.uniform(0, 1))  # mid-step, mid-evaluation or mid-save
            os.kill(int(rank1[0]), 9)
            _, stderr = proc.communicate(timeout=120)
        finally:
            proc.kill()
    errors = [line for line in stderr.splitlines() if "minigpt: error:" in line]
    assert proc.returncode != 0 and len(errors) == 1, stderr[-3000:]
    step = load_model(out, "last")[2]["step"]
    assert "another process of the run stopped, after " in errors[0]
    assert errors[0].endswith(f"its last checkpoint, of step {step}, is intact: continue with "
                              f"torchrun --nproc_per_node=2 -m minigpt train --resume {out}")
    assert "[rank0]: Traceback" not in stderr


def _environ(pid: str) -> bytes:
    try:
        return b"\0" + open(f"/proc/{pid}/environ", "rb").read()
    except OSError:  # gone, or not ours
        return b""


def _cmdline(pid: str) -> bytes:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read()
    except OSError:
        return b""


@pytest.mark.parametrize("args, message", [
    (["train", "--text", "{missing}", *SMALL], "text file not found"),  # rank 0 reads it first
    (["plan", "--tokens", "1e6"], "only train runs under torchrun; run minigpt plan as one"),
])
def test_an_error_every_process_meets_is_said_once_by_rank_zero(tmp_path, args, message):
    """Rank 1 neither dies in the barrier rank 0 never reached (gloo's traceback) nor exits
    first, so that torchrun stops rank 0 before it has said why (no line at all)."""
    r = torchrun(*[a.format(missing=tmp_path / "missing.txt") for a in args])
    errors = [line for line in r.stderr.splitlines() if "minigpt: error:" in line]
    assert r.returncode != 0 and len(errors) == 1 and message in errors[0], r.stderr[-2000:]
    assert errors[0].startswith("minigpt: error:")  # rank 0's line, not "[rank 1] ..."
    assert "gloo" not in r.stderr.lower()


def test_a_time_budget_ends_every_process_after_the_same_step(budget_run):
    """The processes share one clock (the slowest's), so they take the same steps at the same
    learning rates and stop together; a disagreement would hang a collective call."""
    out, _ = budget_run
    rows = read_jsonl(out / "metrics.jsonl")
    summary = json.loads((out / "summary.json").read_text())
    assert rows[-1]["time_s"] >= BUDGET and summary["steps"] == rows[-1]["step"] + 1 > 5


def test_every_process_reads_the_agreed_seconds_not_its_running_clock(monkeypatch):
    """Read again after catching up, a running clock has moved on by a different amount in each
    process, so one could see the budget spent and stop while another takes one more step and
    waits for ever in its collective call."""
    from types import SimpleNamespace

    from minigpt import trainer
    from minigpt.clock import Clock

    agreed = []

    def agree(values, world):  # the slowest process's clock, a moment ago (and no signal)
        agreed.append(values[0])
        time.sleep(0.01)
        return values

    monkeypatch.setattr(trainer.distributed, "agree", agree)
    clock = Clock(3.0).start()
    signals = SimpleNamespace(received=None)
    assert trainer.agreed(clock, signals, SimpleNamespace(enabled=True)) == (agreed[0], False)
    assert clock.seconds() > agreed[0]  # the clock itself runs on
    # a signal another process got (its flag the largest) stops this one after the same step
    monkeypatch.setattr(trainer.distributed, "agree", lambda values, world: [values[0], 1.0])
    assert trainer.agreed(clock, signals, SimpleNamespace(enabled=True))[1] is True


# The helpers themselves, in two plain processes joined over gloo (no torchrun, no training):
# each prints what it got, and the parent checks it against what the other process was given.
HELPERS = """
import json, os, sys, time
import torch
from minigpt import distributed
from minigpt.errors import MiniGPTError
world = distributed.world_from_env()
distributed.start(world, torch.device("cpu"))
got = {"agree": distributed.agree([10.0 * (world.rank + 1)], world)[0],
       "any_false": distributed.any_process(False, world),
       "any_one": distributed.any_process(world.rank == 1, world),
       "mean": distributed.mean(mine := torch.tensor([1.0 + world.rank, 4.0 * world.rank]),
                                world).tolist()}
got["mine"] = mine.tolist()  # the caller's tensor, left as it was
marks = os.path.join(sys.argv[1], "order")
with distributed.main_first(world):  # rank 0's block ends before rank 1's begins
    with open(marks, "a") as f:
        f.write(f"start {world.rank}\\n")
    time.sleep(0.3 if world.is_main else 0)
    with open(marks, "a") as f:
        f.write(f"end {world.rank}\\n")
try:
    with distributed.main_first(world):
        got.setdefault("ran", []).append(world.rank)
        if world.is_main:
            raise MiniGPTError("rank 0's block failed")
except MiniGPTError as e:
    got["error"] = str(e)
distributed.stop(world)
print(json.dumps(got))
"""


def two_plain_processes(code: str, args: list[str], **env: str) -> list[str]:
    """Run `python -c code args` as ranks 0 and 1 of a gloo group (torchrun's variables, without
    torchrun), each with one thread; both must succeed. Returns their standard outputs."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(random.randint(20000, 60000)), **env}
    procs = [subprocess.Popen([sys.executable, "-c", code, *args],
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in range(2)]
    try:
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    return [out for out, _ in outs]


def test_the_agreements_and_main_first_over_two_gloo_processes(tmp_path):
    zero, one = (json.loads(out) for out in two_plain_processes(HELPERS, [str(tmp_path)]))
    for got in (zero, one):
        assert got["agree"] == max(10.0, 20.0)  # the larger, on both
        assert got["any_false"] is False and got["any_one"] is True
        assert got["mean"] == [(1.0 + 2.0) / 2, (0.0 + 4.0) / 2]
    assert zero["mine"] == [1.0, 0.0] and one["mine"] == [2.0, 4.0]
    order = (tmp_path / "order").read_text().split("\n")[:4]
    assert order == ["start 0", "end 0", "start 1", "end 1"]
    assert zero["ran"] == [0] and zero["error"] == "rank 0's block failed"
    assert "ran" not in one and one["error"] == "the first process failed; it says why"


# A timed two-process run in two plain processes, each counting the host's all-reduces
# (the agreements; DDP's gradients go through its own reducer) made before each of its steps.
COUNTED = """
import os, sys
import torch.distributed as dist
import minigpt.trainer
from minigpt.cli import main
reduce, step, calls = dist.all_reduce, minigpt.trainer.train_step, []
def counted(*args, **kwargs):
    calls.append(1)
    return reduce(*args, **kwargs)
def counting(*args, **kwargs):  # (a line a step: main leaves with os._exit under torchrun)
    with open(os.environ["COUNTS"] + os.environ["RANK"], "a") as f:
        f.write(f"{len(calls)}\\n")
    return step(*args, **kwargs)
dist.all_reduce, minigpt.trainer.train_step = counted, counting
sys.exit(main(sys.argv[1:]))
"""


def test_a_timed_step_under_torchrun_makes_one_agreement(small_text, tmp_path):
    """With a time budget every process agrees after each step on both the clock and whether to
    stop (a signal): one collective call carries both, where two made every step wait twice for
    the slowest process. Steps without a row (after the first) are counted."""
    args = ["train", "--text", str(small_text), *TINY_FLAGS, "--time-budget", "1", "--dtype",
            "float32", "--log-every", "100000", "--eval-every", "100000",
            "--out", str(tmp_path / "run")]
    two_plain_processes(COUNTED, args, COUNTS=str(tmp_path / "counts"))
    for rank in range(2):
        before = [int(n) for n in (tmp_path / f"counts{rank}").read_text().split()]
        # the calls between two steps' starts, from step 1 (step 0 had a row: the loss's mean)
        per_step = [b - a for a, b in zip(before[1:-1], before[2:], strict=True)]
        assert len(per_step) > 3 and set(per_step) == {1}, per_step
