"""The one exception type the command line turns into a one-line error and a non-zero exit."""


class MiniGPTError(ValueError):
    """A problem the user can fix (bad input, missing file, bad config): said in one line."""
