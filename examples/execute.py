"""Execute examples/lesson.ipynb top to bottom in a real Jupyter kernel (nbclient) and save it
with its outputs, so that it shows its results where no code runs (on GitHub, say):

    python examples/execute.py            # run it and save it in place, with its outputs
    python examples/execute.py --check    # run it; fail on the first error; save nothing

It runs in a temporary folder (the runs it trains are thrown away), records in the notebook's
metadata the hash of its cells' sources and the seconds it took (tests/test_notebook.py checks
that the saved outputs belong to the cells as they are), and writes the notebook atomically.
Needs the notebook extras: pip install -e '.[test]' (or '.[notebook]' plus nbclient).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path

NOTEBOOK = Path(__file__).resolve().with_name("lesson.ipynb")


def sources_hash(nb) -> str:
    """The sha256 of every cell's source, markdown and code, in order."""
    return hashlib.sha256("\n\0".join(c.source for c in nb.cells).encode("utf-8")).hexdigest()


def execute(nb, cwd: str | Path, env: dict | None = None, timeout: float = 300):
    """Run every cell of `nb` in a fresh python3 kernel started in `cwd` (with the
    environment `env`, or this process's), filling in the outputs; the first cell that fails,
    or runs past `timeout` seconds, raises nbclient's CellExecutionError or a TimeoutError.

    The kernel talks over Unix sockets in a private folder, not TCP ports: nothing else on
    the machine (a server a test left listening, another kernel) can take its messages."""
    import nbclient
    from jupyter_client.manager import KernelManager

    with tempfile.TemporaryDirectory(prefix="minigpt-kernel-") as sockets:
        # its connection file there too (by default a tmpXXXXXXXX.json in the system's temp
        # folder), and the kernel shut down at the end (cleanup_kc: nbclient leaves running a
        # kernel whose manager it was given, and its connection file with it)
        km = KernelManager(kernel_name="python3", transport="ipc",
                           ip=str(Path(sockets) / "kernel"),
                           connection_file=str(Path(sockets) / "kernel.json"))
        client = nbclient.NotebookClient(nb, km=km, timeout=timeout, record_timing=False,
                                         resources={"metadata": {"path": str(cwd)}})
        client.execute(cleanup_kc=True, **({"env": env} if env is not None else {}))
    return nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="run it, but do not save it")
    parser.add_argument("notebook", nargs="?", default=str(NOTEBOOK))
    args = parser.parse_args(argv)
    import nbclient.exceptions
    import nbformat

    from minigpt.files import atomic_write_text

    path = Path(args.notebook)
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="minigpt-notebook-") as cwd:
        try:
            execute(nb, cwd)
        except nbclient.exceptions.CellExecutionError as e:
            lines = [line for line in str(e).splitlines() if line.strip()]
            print(f"{path}: a cell failed: {lines[-1] if lines else e}", file=sys.stderr)
            return 1
    seconds = time.perf_counter() - start
    nb.metadata["minigpt"] = {"sources_sha256": sources_hash(nb), "executed_s": round(seconds)}
    if not args.check:
        atomic_write_text(path, nbformat.writes(nb) + "\n")
    print(f"{path}: executed in {seconds:.0f} s" + ("" if args.check else ", saved"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
