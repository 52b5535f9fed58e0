"""The exceptions the command line turns into a one-line message and a non-zero exit (and a
notebook shows as that line, below the cell's own lines that led to it), and the Ctrl-C held
back while a library loads."""

import json
import os
import shlex
import signal
import site
import sysconfig
import threading
import traceback
from contextlib import contextmanager
from pathlib import Path

PACKAGE = Path(__file__).parent  # minigpt's own files: no frame of them is the user's


class OneLine:
    """An error said in its one line, in a notebook too: IPython shows the frames of the
    user's own code that led to it (a cell's lines), then the line, not a traceback through
    minigpt's and torch's code (the command line says the line alone)."""

    def _render_traceback_(self) -> list[str]:  # IPython's hook for an exception's display
        libraries = {*(sysconfig.get_path(p) for p in ("stdlib", "purelib", "platlib")),
                     *site.getsitepackages(), site.getusersitepackages(), PACKAGE}
        mine = [f for f in traceback.extract_tb(self.__traceback__)
                if not any(Path(f.filename).is_relative_to(d) for d in libraries)]
        return [line.rstrip("\n") for line in traceback.format_list(mine)] + [
            f"{type(self).__name__}: {self}", *getattr(self, "__notes__", [])]


class MiniGPTError(OneLine, ValueError):
    """A problem the user can fix (bad input, missing file, bad config): said in one line."""


class Diverged(MiniGPTError):
    """Training stopped at `step`: more batches than --skip-nonfinite allows had gradients
    that were not finite (the last checkpoint holds the last good state)."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


class TrainingStopped(OneLine, Exception):
    """Training stopped on SIGINT or SIGTERM after saving a checkpoint (exit 128 + signum): in
    `folder`, after `steps`, trained by `processes`; its message says how to continue in
    Python (the command line says it in its own terms)."""

    def __init__(self, signum: int, message: str = "", folder=None, steps: int = 0,
                 processes: int = 1):
        super().__init__(message or f"stopped by signal {signum}")
        self.signum, self.folder, self.steps, self.processes = signum, folder, steps, processes


def shell_path(path) -> str:
    """A path as a printed command holds it, to paste into a shell: quoted where it must be,
    and behind './' where it starts with '-' (which the command would read as an option)."""
    text = str(path)
    return shlex.quote(f"./{text}" if text.startswith("-") else text)


def continue_in_python(folder) -> str:
    """The call that continues the run in folder with its own settings (a notebook's `cfg` may
    have been edited, or be another cell's): a TrainingStopped's, and a refused new run's."""
    return f"train(resume_config({str(folder)!r}), {str(folder)!r}, resume=True)"


class Terminated(BaseException):
    """SIGTERM, raised where Ctrl-C raises KeyboardInterrupt (outside training's loop, or a
    second signal inside it): it unwinds as Ctrl-C does, so that every temporary file is removed
    (minigpt.files), and the command exits 143."""


def out_of_memory(e: BaseException) -> bool:
    """Whether an error is an allocation that failed: torch's on a GPU, the CPU allocator's
    ("can't allocate memory"), or Python's own."""
    text = str(e)
    return (isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError"
            or "can't allocate memory" in text or "out of memory" in text.lower())


def compile_failed(e: BaseException) -> bool:
    """Whether an error is torch.compile's backend failing to build the model (no working C++
    compiler, say), by name: this module imports no torch."""
    return any(kind.__name__ == "BackendCompilerFailed" for kind in type(e).__mro__)


def peer_lost(e: BaseException) -> bool:
    """Whether an error is a collective call that lost another process of the run (killed, or
    its machine gone): torch.distributed's network error, by name, or gloo's words. (NCCL's own
    errors are not: out of memory in NCCL is one; a lost peer there is a watchdog's timeout.)"""
    return (any(kind.__name__ == "DistNetworkError" for kind in type(e).__mro__)
            or any(say in str(e) for say in ("Connection closed by peer",
                                             "Connection reset by peer")))


def torchrun_command(processes: int) -> str:
    """How to launch minigpt as a run of `processes` was launched: torchrun with this node's
    processes (LOCAL_WORLD_SIZE) and, across nodes, their count (GROUP_WORLD_SIZE), where this
    launch is of `processes` (a run resumed by another number: one node of them)."""
    env = os.environ if os.environ.get("WORLD_SIZE", str(processes)) == str(processes) else {}
    per_node = int(env.get("LOCAL_WORLD_SIZE") or 0) or processes
    nodes = int(env.get("GROUP_WORLD_SIZE") or 0) or -(-processes // per_node)
    return f"torchrun {f'--nnodes={nodes} ' * (nodes > 1)}--nproc_per_node={per_node} -m minigpt"


def launcher(processes: int) -> str:
    """The command that runs minigpt as a run of `processes` ran: minigpt itself for one."""
    return torchrun_command(processes) if processes > 1 else "minigpt"


def training_error(e: BaseException, steps: int, checkpoints, processes: int = 1) -> BaseException:
    """The one-line error that a training run's failure stands for, or `e` itself: torch.compile
    fails at the first step (nothing is lost), memory can run out at any, and under torchrun
    another process can die (`processes`: how many the run has)."""
    if processes > 1 and peer_lost(e) and not out_of_memory(e):
        folder = shell_path(Path(checkpoints).parent)
        again = f"{torchrun_command(processes)} train"
        try:
            step = json.loads((Path(checkpoints) / "last.json").read_text())["step"]
            way_on = (f"its last checkpoint, of step {step:,}, is intact: continue with {again} "
                      f"--resume {folder}")
        except (OSError, ValueError, KeyError, TypeError):  # none yet (or unreadable)
            way_on = f"it had no checkpoint yet: train it again with {again} --out {folder}"
        return MiniGPTError(f"another process of the run stopped, after {steps:,} "
                            f"step{'s' * (steps != 1)}; {way_on}")
    if compile_failed(e):
        return MiniGPTError(f"torch.compile failed ({str(e).splitlines()[0][:200]}); train "
                            f"without it: --compile off")
    if out_of_memory(e):
        return MiniGPTError(f"out of memory after {steps:,} step{'s' * (steps != 1)} "
                            f"({last_line(e)}); the last checkpoint in {checkpoints} is intact: "
                            f"resume with a smaller --batch-size, or --grad-accum")
    return e


def last_line(e: BaseException) -> str:
    """The last non-empty line of an error's message (torch's say what failed last)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return (lines[-1] if lines else type(e).__name__)[:200]


def ctrl_c_raises() -> bool:
    """Whether Ctrl-C raises KeyboardInterrupt here: Python's handler (not ignored, not another
    program's), in the main thread (where signals are set)."""
    return (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler)


@contextmanager
def ctrl_c_held():
    """Ctrl-C held until the block (an import) is done, then raised as KeyboardInterrupt: one
    raised inside another library's import can be swallowed there (in a callback of importlib's)
    and the command go on as if nothing happened. Only where Ctrl-C raises KeyboardInterrupt,
    in the main thread."""
    held = []
    if watch := ctrl_c_raises():
        signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        if watch:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    if held:
        raise KeyboardInterrupt


def outside_vocabulary(what: str, vocab_size: int) -> MiniGPTError:
    """A model given token ids its vocabulary does not have (`what`: "idx holds", say)."""
    return MiniGPTError(f"{what} ids outside the model's vocabulary (0 to "
                        f"{vocab_size - 1}): encoded by another run's tokenizer?")
