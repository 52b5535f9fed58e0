"""The `minigpt` command and `python -m minigpt ...` (and `torchrun -m minigpt ...`).

The command line itself is minigpt.cli. Importing it (and with it torch) takes a second or two,
and a Ctrl-C raised inside another library's import can be swallowed there and surface later as
an unrelated error; so a Ctrl-C in that time is held until the import is done, then ends the
command in one line, as a later one does. Once the command has returned, its work is done and
its exit status is said: a Ctrl-C during the interpreter's teardown (torch's takes a while)
changes neither.
"""

import os
import signal
import sys

from minigpt.errors import ctrl_c_held, ctrl_c_raises


def another_rank() -> bool:
    """Whether torchrun's variables place this process at a rank other than 0, read as
    distributed.world_from_env reads them (without importing torch): RANK '00' is rank 0, and
    RANK 1 with no WORLD_SIZE no place torchrun gives (the command refuses it in each process)."""
    try:
        rank, size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:  # (refused by the command in every process, as said)
        return False
    return 0 < rank < size


def main() -> int:
    try:
        with ctrl_c_held():
            from minigpt.cli import main as run
    except KeyboardInterrupt:  # (under torchrun, which passes its Ctrl-C to all: rank 0 says it)
        if not another_rank():
            print("minigpt: interrupted", file=sys.stderr)
        return 130
    code = run()
    if ctrl_c_raises():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    return code


if __name__ == "__main__":
    sys.exit(main())
