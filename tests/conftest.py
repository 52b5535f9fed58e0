"""Shared fixtures. Tests never touch the network or the user's cache: each session gets its own
MINIGPT_DATA_DIR, seeded with the real TinyShakespeare from $MINIGPT_DATA_DIR (as CI sets it)
or from ../shared/data beside the checkout."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest
import torch

from minigpt import load_model, resolve_config
from minigpt.cli import main
from minigpt.data import TINYSHAKESPEARE_SHA256
from minigpt.diagnostics.probes import SECTIONS, Probe
from minigpt.files import sha256_file
from minigpt.lesson import CausalSelfAttention as LessonAttention
from minigpt.precision import NATIVE_FLAGS, cpu_flags

ROOT = Path(__file__).resolve().parents[1]


def _find_tinyshakespeare() -> Path | None:
    candidates = []
    if os.environ.get("MINIGPT_DATA_DIR"):
        candidates.append(Path(os.environ["MINIGPT_DATA_DIR"]) / "tinyshakespeare" / "input.txt")
    candidates.append(ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt")
    return next((p for p in candidates if p.is_file()), None)


@pytest.fixture(scope="session")
def tinyshakespeare_source() -> Path:
    """The real TinyShakespeare file (read-only), or a skip saying where it was looked for."""
    path = _find_tinyshakespeare()
    if path is None:
        pytest.skip("TinyShakespeare not found: set MINIGPT_DATA_DIR to a folder holding "
                    "tinyshakespeare/input.txt, or put ../shared beside the checkout")
    assert sha256_file(path) == TINYSHAKESPEARE_SHA256
    return path


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory) -> Path:
    """Every test's cache: a private folder (MINIGPT_DATA_DIR, inherited by the commands the
    tests run), holding TinyShakespeare where it is found, so that nothing a test prepares
    lands in the user's cache."""
    folder = tmp_path_factory.mktemp("cache")
    source = _find_tinyshakespeare()
    if source is not None:
        (folder / "tinyshakespeare").mkdir()
        shutil.copy(source, folder / "tinyshakespeare" / "input.txt")
    old = os.environ.get("MINIGPT_DATA_DIR")
    os.environ["MINIGPT_DATA_DIR"] = str(folder)
    yield folder
    if old is None:
        os.environ.pop("MINIGPT_DATA_DIR", None)
    else:
        os.environ["MINIGPT_DATA_DIR"] = old


@pytest.fixture(scope="session")
def data_dir(_private_cache, tinyshakespeare_source) -> Path:
    """The private cache, for a test that needs TinyShakespeare in it (skipped without)."""
    return _private_cache


@pytest.fixture
def small_text(tmp_path) -> Path:
    """A small corpus in its own folder (so token files land beside it)."""
    path = tmp_path / "corpus" / "small.txt"
    path.parent.mkdir()
    line = "the quick brown fox jumps over the lazy dog. "
    path.write_text((line * 6 + "\n") * 40, encoding="utf-8")
    return path


def pytest_configure(config):
    """Under pytest -n, a core to each worker: one torch thread, and one for what it starts."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


def pytest_collection_modifyitems(items):
    """The notebook's file first, then the files with the most slow tests: the long runs
    start early, and the other workers take the short files beside them (a file to a worker:
    --dist loadfile)."""
    slow = Counter(item.path for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: (item.path.name != "test_notebook.py", -slow[item.path]))


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's many tiny steps: with two, on a busy two-core machine,
    OpenMP's spinning worker competes with the main thread and each step costs ~30x more.
    Yields the count torch had before."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield threads
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m minigpt ARGS` in a subprocess, as a user would run it."""
    return subprocess.run(
        [sys.executable, "-m", "minigpt", *args], cwd=cwd, capture_output=True, text=True,
        errors="surrogateescape", timeout=timeout, env={**os.environ, **(env or {})},
    )


def in_process(capsys, *args: str) -> subprocess.CompletedProcess:
    """`minigpt ARGS` in-process (`main`, what the command runs), its exit status and what it
    printed as run_cli returns them, for a test of what the command does rather than of the
    process (which costs a second or two of imports more): cwd and environment through
    monkeypatch. Its log lines are printed as the command prints them (pytest's own root
    handlers, which would keep them, are set aside meanwhile)."""
    capsys.readouterr()
    root, ours = logging.getLogger(), logging.getLogger("minigpt")
    saved = root.handlers[:], ours.handlers[:], ours.level
    root.handlers.clear()
    ours.handlers.clear()
    try:
        code = main(list(args))
    except SystemExit as e:  # (argparse's --help), as the process would exit
        code = e.code if isinstance(e.code, int) else int(e.code is not None)
    finally:
        root.handlers[:], ours.handlers[:] = saved[:2]
        ours.setLevel(saved[2])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["minigpt", *args], code, out, err)


# The tiny model and quiet run that most tests train, declared once: as overrides for
# resolve_config (tiny_config) and as the same settings on the command line (TINY_FLAGS). A test
# that needs another value overrides just that key, after these.
TINY = dict(n_layer=1, n_embd=32, n_head=2, block_size=32, batch_size=8, eval_batches=4,
            sample_tokens=0, gradflow_every=0, attention_every=0, sample_every=0, plots=False)


def as_flags(settings: dict) -> list[str]:
    """Settings as `minigpt train` flags: n_layer=1 is --n-layer 1, plots=False is --no-plots."""
    flags = []
    for key, value in settings.items():
        name = key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(f"--{name}" if value else f"--no-{name}")
        else:
            flags += [f"--{name}", str(value)]
    return flags


TINY_FLAGS = [*as_flags(TINY), "--no-progress"]


def tiny_config(text, **overrides):
    """The RunConfig of a tiny run on `text` (with the command line's [diag] section)."""
    return resolve_config("seed", None, {"text": str(text), **TINY, **overrides}, SECTIONS)


@pytest.fixture(scope="session")
def cli_run(tmp_path_factory):
    """One small run made through the command line, shared by the CLI tests:
    (run folder, the finished process, the text it trained on)."""
    folder = tmp_path_factory.mktemp("cli")
    text = folder / "text.txt"
    text.write_text("ROMEO: what light through yonder window breaks?\n" * 200)
    out = folder / "run"
    r = run_cli("train", "--text", str(text), "--out", str(out), *TINY_FLAGS, "--steps", "40",
                "--eval-every", "20", "--gradflow-every", "10", "--attention-every", "20",
                "--sample-every", "20", "--plots", "--normuon")  # (which adamw ignores)
    assert r.returncode == 0, r.stderr
    return out, r, text


def lesson_attention(attn, x):
    """The lesson's CausalSelfAttention.forward (masked_fill then softmax), as transcribed in
    minigpt.lesson, run with the weights of minigpt's attention module `attn`."""
    return LessonAttention.forward(attn, x)


def read_png(path):
    """The pixels (H, W, channels) of a file that must be a PNG."""
    import matplotlib.image

    assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return matplotlib.image.imread(path)


def without_speed(rows: list[dict]) -> list[dict]:
    """Metrics rows without the timing columns, which differ between any two runs (`reached`
    holds the seconds at which a target loss was first reached)."""
    return [{k: v for k, v in r.items()
             if k not in ("tokens_per_s", "mfu", "time_s", "reached")}
            for r in rows]


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX; Linux's flags)."""
    return bool((cpu_flags() or set()) & NATIVE_FLAGS)  # (the rule --dtype auto follows)


class SignalAt(Probe):
    """Sends this process SIGINT at one step's metrics row, as Ctrl-C (or a notebook's stop
    button) does; signal handlers are set in the main thread only (MAIN_THREAD_ONLY)."""

    def __init__(self, step=3):
        self.step = step

    def on_row(self, row):
        if row["step"] == self.step:
            os.kill(os.getpid(), signal.SIGINT)


MAIN_THREAD_ONLY = pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                                      reason="signal handlers are set in the main thread only")


class CrashAt(Probe):
    """A probe that raises KeyboardInterrupt at the metrics row of one step (a crash)."""

    def __init__(self, step):
        self.step = step

    def on_row(self, row):
        if row["step"] == self.step:
            raise KeyboardInterrupt


def as_rank(monkeypatch, rank: int, size: int = 2) -> None:
    """This process as torchrun starts rank `rank` of `size`, all on this node (its variables)."""
    for key, value in dict(RANK=rank, LOCAL_RANK=rank, WORLD_SIZE=size,
                           LOCAL_WORLD_SIZE=size).items():
        monkeypatch.setenv(key, str(value))


def not_warnings(stderr: str) -> list[str]:
    """The lines of a command's stderr that are not warnings (which go there too)."""
    return [line for line in stderr.splitlines() if not line.startswith("warning: ")]


def one_line_error(capsys, args: list[str]) -> str:
    """Run `minigpt ARGS` in-process (`main`, what the command runs) where it must fail as a
    user's mistake: exit status 2 and one line on stderr, which is returned. An exception
    escaping `main` fails the test as surely as a traceback would."""
    code = main(args)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("minigpt: error:"), lines
    return lines[0]


def same_weights(run_a, run_b) -> bool:
    """Whether two run folders' last checkpoints hold the same weights, to the bit."""
    a = load_model(run_a, "last")[0].state_dict()
    b = load_model(run_b, "last")[0].state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def clock_at_230021(monkeypatch):
    """minigpt.run's clock stopped at 2026-12-06 23:00:21, for the names of runs and
    comparisons started within one second (runs/<name>-20261206-230021)."""
    from datetime import datetime

    import minigpt.run

    class Frozen(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2026, 12, 6, 23, 0, 21)

    monkeypatch.setattr(minigpt.run, "datetime", Frozen)
