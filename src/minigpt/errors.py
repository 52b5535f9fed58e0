"""The exceptions the command line turns into a one-line message and a non-zero exit."""


class MiniGPTError(ValueError):
    """A problem the user can fix (bad input, missing file, bad config): said in one line."""


class TrainingStopped(Exception):
    """Training stopped on SIGINT or SIGTERM after saving a checkpoint (exit 128 + signum)."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum
