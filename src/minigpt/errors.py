"""The exceptions the command line turns into a one-line message and a non-zero exit."""


class MiniGPTError(ValueError):
    """A problem the user can fix (bad input, missing file, bad config): said in one line."""


class TrainingStopped(Exception):
    """Training stopped on SIGINT or SIGTERM after saving a checkpoint (exit 128 + signum)."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum


def out_of_memory(e: BaseException) -> bool:
    """Whether an error is an allocation that failed: torch's on a GPU, the CPU allocator's
    ("can't allocate memory"), or Python's own."""
    text = str(e)
    return (isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError"
            or "can't allocate memory" in text or "out of memory" in text.lower())


def last_line(e: BaseException) -> str:
    """The last non-empty line of an error's message (torch's say what failed last)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return (lines[-1] if lines else type(e).__name__)[:200]
