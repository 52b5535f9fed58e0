"""Files that are never half-written, their checksums, and one process per run folder.

Every file minigpt writes goes through `atomic_path`: it is written to a temporary file in the
same folder, flushed to disk and renamed onto its name, so a reader (or a crash) only ever sees
the old file or the new one; a folder written whole (an export) goes through `atomic_folder`,
the same for a folder. Logs that grow a line at a time (metrics.jsonl and the like) are
appended with `append_line`, which cuts a failed write back off; `read_jsonl` still drops a
line a crash tore (a SIGKILL in mid-write) and says so. `lock_folder` keeps a second process
out of a run folder while the first is in it; the operating system drops the lock when the
process ends, however it ends.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from minigpt.errors import MiniGPTError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; the folder check still stands
    fcntl = None

log = logging.getLogger(__name__)


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside `path`; on success fsync it and rename it onto `path`; on
    any exception remove it and leave `path` as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:  # a read-only folder: name the file asked for, not a random one
        raise OSError(e.errno, e.strerror, str(path)) from None
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and (e.filename == tmp or (  # name the file asked for, not
                e.filename is None and e.errno in (errno.ENOSPC, errno.EDQUOT))):  # ours; a full
            raise OSError(e.errno, e.strerror, str(path)) from None  # disk's write names none
        raise


def as_path(value, what: str) -> Path:
    """A path a caller gave (str or os.PathLike), or one error naming what it was for."""
    if not isinstance(value, (str, os.PathLike)):
        raise MiniGPTError(f"{what} must be a path (str or Path), got {type(value).__name__}")
    return Path(value)


def resolved(path: str | Path) -> Path:
    """Path(path).resolve(), a loop of symbolic links said in one line naming the path as given
    (Python 3.11's resolve raises RuntimeError there, 3.13's an OSError)."""
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError) as e:
        if isinstance(e, OSError) and e.errno != errno.ELOOP:
            raise
        raise MiniGPTError(f"{path} is a loop of symbolic links (one that leads, in the end, "
                           f"back to itself)") from None


def file_on_path(path: str | Path | None) -> Path | None:
    """The file where a folder of `path` (or `path` itself) was to be: the first of them that
    exists, if it is not a folder (--out notes.txt/run); None otherwise."""
    path = Path(path or ".")
    on = next(p for p in [path, *path.absolute().parents] if p.exists())  # (/ at least)
    return None if on.is_dir() else on


def read_json(path: str | Path):
    """A JSON file's value, or None where it cannot be read (missing, damaged, not JSON)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def atomic_write_text(path: str | Path, text: str) -> None:
    """`text` as UTF-8, through a temporary file; a lone surrogate (a byte of a file name that
    is not UTF-8, as Python holds it: a run's --text, say) written as its escape, \\udcff."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(text.encode("utf-8", "backslashreplace"))


@contextmanager
def atomic_folder(path: str | Path):
    """Yield a temporary folder beside `path` to write a whole folder into; on success fsync
    its files and rename it onto `path` (which may be an empty folder); on any exception
    remove it and leave `path` as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    except OSError as e:  # as in atomic_path
        raise OSError(e.errno, e.strerror, str(path)) from None
    try:
        yield tmp
        mask = _umask()  # mkdtemp makes the folder 0700, and some writers make files 0600
        for file in tmp.rglob("*"):
            if file.is_file():
                with open(file, "rb") as f:
                    os.fsync(f.fileno())
                file.chmod(0o666 & ~mask)
        tmp.chmod(0o777 & ~mask)
        if path.is_dir():
            path.rmdir()  # fails, keeping it, if it is not empty
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def append_line(path: str | Path, line: str) -> None:
    """Append `line` and a newline; a write that fails part-way (a full disk) is cut back off,
    so the file never ends in half a line."""
    data = memoryview(line.encode("utf-8") + b"\n")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            while data:
                data = data[os.write(fd, data):]
        except OSError as e:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            raise OSError(e.errno, e.strerror, str(path)) from None
    finally:
        os.close(fd)


def read_jsonl(path: str | Path) -> list[dict]:
    """The rows of a JSON-lines file ([] when there is none), without the lines that are not
    JSON objects (a crash can tear the last line); a warning says how many were dropped."""
    rows, torn = jsonl_rows(path)
    if torn:
        log.warning(f"{path}: dropped {torn} damaged line(s), as a crash leaves them")
    return rows


def jsonl_rows(path: str | Path) -> tuple[list[dict], int]:
    """read_jsonl's rows, and how many damaged lines it dropped, without a word (a line that
    is not a JSON object, or whose step is missing or not a whole number: every row minigpt
    writes has one)."""
    path = Path(path)
    if not path.exists():
        return [], 0
    rows, torn = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        step = row.get("step") if isinstance(row, dict) else None
        if isinstance(step, int) and not isinstance(step, bool):
            rows.append(row)
        else:
            torn += 1
    return rows, torn


def remove_temporaries(folder: Path) -> None:
    """Remove the temporary files and folders that atomic_path and atomic_folder leave in
    `folder` when their process is killed (.NAME.XXXXXXXX.tmp: nothing else of that shape)."""
    for tmp in folder.glob(".*.tmp"):
        if re.fullmatch(r"\..+\.[a-z0-9_]{8}\.tmp", tmp.name):
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()


def truncate_jsonl(path: str | Path, step: int) -> None:
    """Keep only the rows of a JSON-lines log from steps before `step` (those a checkpoint at
    `step` includes), and none that a crash tore: a resumed run writes the rest again."""
    path = Path(path)
    if path.exists():
        kept = [row for row in read_jsonl(path) if row["step"] < step]
        atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n"
                                        for row in kept))


@contextmanager
def lock_folder(folder: Path, wait: bool = False):
    """Hold `folder`/run.lock for the block: a second process asking for it fails at once with
    a one-line error (or, wait=True, waits its turn). The lock dies with the process, so a
    crashed run never leaves it stuck."""
    if fcntl is None:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / "run.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise MiniGPTError(f"{folder} is in use by another minigpt process (pid {owner}); "
                               f"wait for it to end, or choose another folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing drops the lock


def lock_holder(folder: Path) -> str | None:
    """The pid of the process holding folder/run.lock (a run training there now), or None."""
    if fcntl is None:
        return None
    try:
        fd = os.open(folder / "run.lock", os.O_RDONLY)
    except OSError:  # none (or unreadable): no run holds it that this can tell
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # (let go at once, as fd closes)
    except BlockingIOError:
        return os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
    finally:
        os.close(fd)
    return None


# what minigpt makes in a folder, by the file or folder that marks it
MADE = {"a training run": "checkpoints", "a comparison": "variants.json",
        "a prepared corpus": "index.json", "an unfinished prepare": "progress.json",
        "an exported model": "model.safetensors"}


def folder_holds(folder: str | Path) -> str | None:
    """What minigpt has made in a folder (a key of MADE), or None: one folder, one kind."""
    return next((what for what, mark in MADE.items() if (Path(folder) / mark).exists()), None)


def printable(name: str) -> str:
    """A file name as text any output takes (a plot's title, a web page): the bytes of a name
    that are not UTF-8, which Python holds as lone surrogates, become U+FFFD."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def os_error(e: Exception, path: Path) -> Exception:
    """A library's error for a failed write (safetensors': "... (os error 28)") as the OSError
    it stands for, naming the file; any other error as it is."""
    found = re.search(r"os error (\d+)", str(e))
    if isinstance(e, OSError) or not found:
        return e
    code = int(found.group(1))
    return OSError(code, os.strerror(code), str(path))


def not_utf8(path: str | Path, e: UnicodeDecodeError, at: int) -> MiniGPTError:
    """A file that is not UTF-8 text, said in one line: the bad byte's offset `at` in the
    file (the codec's counts from what it was given) and why, not Python's codec message."""
    return MiniGPTError(f"{path} is not UTF-8 text (at byte {at}: {e.reason})")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
