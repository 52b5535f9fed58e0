"""Every corpus on its way to token shards, and back: one file, a folder, or a glob of files,
or a dataset's records (minigpt.records).

    minigpt prepare --text 'books/**/*.txt' --out data/books [--tokenizer bpe --vocab-size 8192]
    minigpt prepare --dataset roneneldan/TinyStories --out data/stories --tokenizer bpe

`minigpt train --text FILE`, and the TinyShakespeare default, prepare a text the same way, into
the cache (minigpt.data.load_corpus). `prepare` never holds the corpus in memory: it reads its
source (Files, or minigpt.records.Records) in chunks of characters, in three passes, each
reading the source again:

1. scan: count the characters (for char, collect them too: the lesson's vocabulary is every
   character of the whole text). The validation split is the last val_fraction of the
   characters, from `split_point` (the lesson's n = int(0.9 * len(data))).
2. the tokenizer: char, from the characters seen; bpe, merges learned from the training split
   only (its first BPE_TRAIN_CHARS characters), so the held-out text never shapes it.
3. encode chunk by chunk (BPE on every core) into shards, the training split's, then the
   validation split's, each written to a temporary file and renamed when full.

The folder:

    train-00000.bin ...  each split's tokens in order, raw uint16 (uint32 when the vocabulary
    val-00000.bin ...    has more than 65,536 tokens), at most shard_tokens a shard
    tokenizer.json       the tokenizer (minigpt.tokenizer.load_tokenizer reads it)
    progress.json        while it is prepared: the settings, the split point, the shards done
                         and where the next one begins, so that the same command, run again
                         after an interruption, continues after the last complete shard
    index.json           written last, so a folder that has one is complete: each shard's file,
                         tokens and sha256, the sources, the tokenizer

Chunks end at a line break between two visible characters where the text has one
(minigpt.tokenizer.last_boundary), so BPE tokens come out as if each file were encoded whole.

`ShardedTokens` reads a split back as one array-like of its tokens, memory-mapped, each shard
checked against its size and sha256: len, step-1 slices as views (no copy), and gathers with
integer arrays of any shape, across shard boundaries, in work proportional to the number of
positions asked for. That is all get_batch needs, so a batch costs O(B * T) whatever the
corpus size.
"""

from __future__ import annotations

import codecs
import contextlib
import functools
import glob
import hashlib
import io
import itertools
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from minigpt.errors import MiniGPTError
from minigpt.files import (
    as_path,
    atomic_write_text,
    file_on_path,
    folder_holds,
    lock_folder,
    not_utf8,
    read_json,
    resolved,
    sha256_file,
)
from minigpt.tokenizer import (
    AnyTokenizer,
    BPETokenizer,
    CharTokenizer,
    check_bpe_vocab,
    last_boundary,
    load_tokenizer,
)

INDEX, TOKENIZER, PROGRESS = "index.json", "tokenizer.json", "progress.json"
FORMAT = "minigpt-shards/2"
SPLITS = ("train", "val")
SHARD_TOKENS = 100_000_000  # 200 MB of uint16 per shard
CHUNK_CHARS = 1 << 20  # characters read, and encoded, at a time (larger: no faster)
BPE_VOCAB = 4096  # prepare's default vocabulary size for --tokenizer bpe
BPE_TRAIN_CHARS = 1 << 27  # BPE learns its merges from at most this much of the training split

log = logging.getLogger("minigpt")


def split_point(n: int, val_fraction: float) -> int:
    """Where the validation split begins, of n characters (or tokens): the one definition of
    the split, the lesson's n = int(0.9 * len(data))."""
    return int((1 - val_fraction) * n)


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned type that holds every id: uint16 up to 65,536 tokens, else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def is_prepared(path: str | Path) -> bool:
    """Whether path is a folder written (completely) by prepare."""
    return (Path(path) / INDEX).is_file()


def find_sources(sources: str, exclude: Path | None = None) -> list[Path]:
    """The files `sources` names: one file; every file under a folder (hidden ones skipped),
    sorted; or those a glob pattern matches (`**` for any depth), sorted. Links to folders are
    not followed (a loop of them would never end), a file reached twice through links is read
    once (it would sit in both splits), and files under `exclude` (the output folder) are left
    out."""
    path = Path(sources).expanduser()
    if path.is_file():
        files = [path]
    elif path.exists() and not path.is_dir():  # a FIFO, a device
        raise MiniGPTError(f"{sources} is not a regular file; copy the text into one")
    elif path.is_dir():
        root, files = path, visible_files(path, path.rglob("*"))
    else:
        parts = path.parts  # the pattern below the folder its first wildcard is in
        fixed = next((i for i, part in enumerate(parts) if glob.has_magic(part)), len(parts))
        root = Path(*parts[:fixed]) if fixed else Path()
        below = tuple(part if part == "**" else re.sub(r"\*{2,}", "*", part)  # ('**.txt':
                      for part in parts[fixed:])  # '*.txt', as glob's; Path.glob refuses it)
        below += ("*",) if below and below[-1] == "**" else ()  # (as glob's 'books/**')
        files = visible_files(root, root.glob(str(Path(*below))) if below else [],
                              hidden=any(is_hidden(part) for part in below))
    if exclude is not None:
        kept = [p for p in files if not resolved(p).is_relative_to(resolved(exclude))]
        if files and not kept:
            raise MiniGPTError(f"the {len(files)} file(s) {sources!r} names lie in the output "
                               f"folder {exclude}, which prepare leaves out; choose an --out "
                               f"outside them")
        files = kept
    if not path.is_file():  # a folder's or a glob's: less what minigpt made among them
        files = without_made_folders(root, files)
    if not files and path.is_dir():
        raise MiniGPTError(f"the folder {sources} holds no files (hidden ones left out)")
    if not files:
        raise MiniGPTError(f"no files matched {sources!r} (give a file, a folder or a glob "
                           f"pattern such as 'books/**/*.txt')")
    once = {}
    for p in sorted(files):
        once.setdefault(resolved(p), p)
    if len(once) < len(files):
        log.warning(f"{len(files) - len(once)} of the files {sources!r} names are files named "
                    f"before, reached again (through a link, or '..'): each file is read once")
    return sorted(once.values())


def without_made_folders(root: Path, files: list[Path]) -> list[Path]:
    """files (paths under root), less those in a folder under root that minigpt made (an
    earlier prepare's shards, a run's checkpoints), each such folder named in a warning."""
    if what := made_by_minigpt(root):
        raise MiniGPTError(f"{root} holds {what}, not text: give the text it was made from")

    @functools.cache
    def made(folder: Path) -> Path | None:  # the first folder minigpt made, root down to this
        if folder != root and (above := made(folder.parent)):
            return above
        return folder if made_by_minigpt(folder) else None

    for folder in sorted({made(p.parent) for p in files} - {None}):
        log.warning(f"left out {folder}: it holds {made_by_minigpt(folder)}, not text")
    return [p for p in files if made(p.parent) is None]


# what minigpt writes in each kind of folder it makes (files.MADE's names), and a key of it
RECORDS = {"a prepared corpus": (INDEX, "shards"), "an unfinished prepare": (PROGRESS, "settings"),
           "a training run": ("config.json", "config"), "a comparison": ("variants.json", None)}


def made_by_minigpt(folder: Path) -> str | None:
    """What minigpt made in folder, by the contents of its record there (folder_holds goes by
    names alone: a user's folder of text may have a `checkpoints` folder or an index.json)."""
    what = folder_holds(folder)
    if what in RECORDS:
        name, key = RECORDS[what]
        record = read_json(folder / name)
        if not isinstance(record, dict) or (key is not None and key not in record):
            return None
    return what


def visible_files(root: Path, found: Iterable[Path], hidden: bool = False) -> list[Path]:
    """The files among `found` (paths under root) with no hidden part below root, unless
    `hidden` (a pattern that names one)."""
    return [p for p in found if p.is_file() and (hidden or not any(
        is_hidden(part) for part in p.relative_to(root).parts))]


def is_hidden(name: str) -> bool:
    return name.startswith(".") and name not in (".", "..")


def file_stamps(files: list[Path]) -> list[list]:
    """Each file's path, size and modification time (none for a file gone since it was
    found): a changed file, another prepare."""
    stamps = []
    for p in files:
        try:
            stat = p.stat()
        except FileNotFoundError:
            continue
        stamps.append([str(p), stat.st_size, stat.st_mtime_ns])
    return stamps


def comparable(settings):
    """A prepare's settings with every path absolute and normal (no `..` or `./`), so that
    the same command from another folder, or with its paths spelt another way, compares
    equal; so does one of settings recorded with relative paths, from the folder it ran in."""
    if not isinstance(settings, dict):
        return settings

    def absolute(path):
        return os.path.abspath(Path(path).expanduser()) if isinstance(path, str) else path

    out = {}
    for key, value in settings.items():
        if isinstance(value, dict):  # a dataset's description
            value = comparable(value)
        elif key == "sources" or (key == "dataset" and Path(str(value)).expanduser().exists()):
            value = absolute(value)  # (a dataset's name, unless it is a local path)
        elif key == "files" and isinstance(value, list):  # [path, size, time], or a path
            value = [[absolute(v[0]), *v[1:]] if isinstance(v, list) and v else absolute(v)
                     for v in value]
        out[key] = value
    return out


def changed(was, now: dict) -> str:
    """What differs between a prepare's settings (`comparable`) and a command's, in words: the
    sources, the first file whose size or modification time is not as it was, or the first
    setting (of a dataset's: its field, split or config)."""
    if not isinstance(was, dict) or "format" not in was:
        return "its progress.json is not minigpt's"
    while True:
        key = next((k for k in ["format", "sources", "dataset", "files", *now, *was]
                    if was.get(k) != now.get(k)), None)
        a, b = was.get(key), now.get(key)
        if not (isinstance(a, dict) and isinstance(b, dict)):
            break
        was, now = a, b  # (a dataset's description: what in it)
    if key == "files" and isinstance(a, list) and isinstance(b, list):
        new = [stamp for stamp in b if stamp not in a]  # ([path, size, time], or a path)
        stamp = new[0] if new else next((s for s in a if s not in b), None)
        if stamp is None:  # (a progress.json edited by hand)
            return "its files are listed in another order"
        path = stamp[0] if isinstance(stamp, list) else stamp
        return f"{path} is new or has changed" if new else f"{path} is gone"
    return f"{key} was {a!r}, now {b!r}" if key else "its progress.json is not minigpt's"


def chunk_text(pieces: Iterable[str], chunk_chars: int) -> Iterator[str]:
    """A stream of text pieces (each at most about chunk_chars characters) as chunks of about
    chunk_chars characters (at most twice that), each cut after a safe line break where there
    is one near its end; line endings become \\n as in Python's text mode. Where the pieces
    break changes neither the text nor (BPE) its tokens."""
    newlines = io.IncrementalNewlineDecoder(None, translate=True)
    carry = ""
    for piece in itertools.chain(pieces, [None]):
        final = piece is None
        text = carry + newlines.decode(piece or "", final=final)
        cut = len(text) if final else last_boundary(text)
        if len(text) - cut > chunk_chars:  # no break near the end: cut anyway
            cut = len(text)
        if cut:
            yield text[:cut]
        carry = text[cut:]


def _decoded(path: Path, chunk_chars: int, on_bytes: Callable[[int], object]) -> Iterator[str]:
    """A UTF-8 file's text, read chunk_chars bytes at a time, refused in one line if it is not
    UTF-8 text; a byte-order mark at its start (as Windows' editors write) is not text."""
    utf8 = codecs.getincrementaldecoder("utf-8")()
    first = True
    with open(path, "rb") as f:
        while True:
            raw = f.read(chunk_chars)
            held = len(utf8.getstate()[0])  # the bytes of a character the last chunk cut
            try:
                text = utf8.decode(raw, final=not raw)
            except UnicodeDecodeError as e:  # (e.start counts from the held bytes)
                at = f.tell() - len(raw) - held + e.start
                if at == 1 and raw.startswith(b"\x1f\x8b"):  # gzip's magic number
                    raise MiniGPTError(f"{path} is gzip-compressed text: decompress it first "
                                       f"(gunzip -k)") from None
                raise not_utf8(path, e, at) from None
            if first and text:
                text, first = text.removeprefix("\ufeff"), False
            if "\x00" in text:
                raise MiniGPTError(f"{path} looks binary (it contains NUL bytes), not text")
            on_bytes(len(raw))
            yield text
            if not raw:
                return


def read_chunks(path: Path, chunk_chars: int, on_bytes: Callable[[int], object]) -> Iterator[str]:
    """The text of a UTF-8 file in chunks of about chunk_chars characters (chunk_text).
    on_bytes(n) hears of every n bytes read."""
    return chunk_text(_decoded(path, chunk_chars, on_bytes), chunk_chars)


class Files:
    """Text files as a corpus (the other is minigpt.records.Records): those `spec` names
    (find_sources), each chunked on its own, one after another, nothing between them."""

    unit = "B"  # the bars count bytes read

    def __init__(self, spec: str, exclude: Path | None = None):
        self.spec, self.files = str(spec), find_sources(spec, exclude)
        self.size = sum(p.stat().st_size for p in self.files)  # a bar's total, known up front

    def chunks(self, chunk_chars: int, on_progress: Callable[[int], object]) -> Iterator[str]:
        """Every file's chunks, in order; on_progress(n) hears of every n bytes read. A file
        that is not text, among several, is refused saying how to name the text files alone."""
        for path in self.files:
            try:
                yield from read_chunks(path, chunk_chars, on_progress)
            except MiniGPTError as e:
                if len(self.files) == 1:
                    raise
                raise MiniGPTError(f"{e}; it is one of the {len(self.files)} files "
                                   f"{self.spec!r} names: name the text files alone with a "
                                   f"quoted glob, such as 'books/**/*.txt'") from None

    def settings(self) -> dict:
        """What, changed, makes an unfinished prepare of these files another prepare."""
        return {"sources": self.spec, "files": file_stamps(self.files)}

    def describe(self) -> dict:
        """The index's `sources`."""
        return {"spec": self.spec, "files": [str(p) for p in self.files], "bytes": self.size}

    def __str__(self) -> str:
        return f"the {len(self.files)} file(s)"


def _bar(desc: str, total: int | None, unit: str, progress: bool) -> tqdm:
    """A progress bar of `total` units (None: no total known), on a terminal only."""
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, dynamic_ncols=True,
                disable=None if progress else True)


def _units(source, chunk_chars: int, cut: int,
           on_progress: Callable[[int], object]) -> Iterator[tuple[str, str]]:
    """Every chunk of the source as (split, text): 'train' before character `cut`, 'val' from
    it on (the chunk that holds the cut comes as two). Always the same units for the same
    source. on_progress hears of what the source reads, as its chunks do."""
    seen = 0
    for chunk in source.chunks(chunk_chars, on_progress):
        end = seen + len(chunk)
        if seen < cut < end:
            yield "train", chunk[:cut - seen]
            yield "val", chunk[cut - seen:]
        else:
            yield ("train" if end <= cut else "val"), chunk
        seen = end


def scan(source, kind: str, chunk_chars: int, progress: bool) -> tuple[int, str]:
    """Pass 1: how many characters the source (Files, or minigpt.records.Records) holds and
    (char) which, sorted. An empty corpus is an error."""
    count, alphabet = 0, set()
    with _bar("scan", source.size, source.unit, progress) as bar:  # a dataset: size None
        for chunk in source.chunks(chunk_chars, bar.update):
            count += len(chunk)
            if kind == "char":
                alphabet.update(chunk)
    if not count:
        raise MiniGPTError(f"empty corpus: {source} hold no text")
    return count, "".join(sorted(alphabet))


def learn_tokenizer(source, kind: str, vocab_size: int, chunk_chars: int, cut: int,
                    alphabet: str, progress: bool) -> AnyTokenizer:
    """Pass 2: the characters seen (char), or BPE merges learned from the training split's
    first BPE_TRAIN_CHARS characters (bpe)."""
    if kind == "char":
        return CharTokenizer(alphabet)
    learn = min(cut, BPE_TRAIN_CHARS)
    with _bar("train bpe", learn, "char", progress) as bar:  # characters, as `learn` counts

        def texts() -> Iterator[str]:
            for split, text in _units(source, chunk_chars, learn, lambda n: None):
                if split != "train":
                    return
                bar.update(len(text))
                yield text

        return BPETokenizer.train(texts(), vocab_size)


class _Shards:
    """Pass 3's writer: token arrays into the shards of one split after another, each shard a
    temporary file renamed (with its sha256 recorded) once full or once its split ends."""

    def __init__(self, out_dir: Path, shard_tokens: int, done: dict):
        self.out_dir, self.shard_tokens = out_dir, shard_tokens
        self.done = done  # split -> [{file, tokens, sha256}], the complete shards
        self.split = self.file = self.hash = self.path = self.tmp = None
        self.count = 0

    def write(self, split: str, ids: np.ndarray, on_full: Callable[[int], None]) -> None:
        """Append a split's tokens; on_full(n) after a shard fills on the unit's n-th token."""
        if self.split is not None and split != self.split:
            self.close()
        pos = 0
        while pos < len(ids):
            if self.file is None:
                self.split, self.count, self.hash = split, 0, hashlib.sha256()
                self.path = self.out_dir / f"{split}-{len(self.done[split]):05d}.bin"
                self.tmp = self.out_dir / f".{self.path.name}.tmp"
                self.file = open(self.tmp, "wb")
            piece = ids[pos:pos + self.shard_tokens - self.count]
            self.file.write(piece)  # its buffer: no bytes copy
            self.hash.update(piece)
            self.count, pos = self.count + len(piece), pos + len(piece)
            if self.count == self.shard_tokens:
                self.close()
                on_full(pos)

    def close(self) -> None:
        """The shard recorded, then renamed into place: a stop (Ctrl-C, SIGTERM) between the
        two leaves a record of a file not there, which the cleanup skips, never a renamed
        shard no record names (which it would leave, and a rerun refuse as others' files)."""
        if self.file is None:
            return
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        self.done[self.split].append({"file": self.path.name, "tokens": self.count,
                                      "sha256": self.hash.hexdigest()})
        os.replace(self.tmp, self.path)
        self.file = None

    def discard(self) -> None:
        """Drop the shard being written (after a failure)."""
        if self.file is not None:
            file, self.file = self.file, None
            with contextlib.suppress(OSError):  # (a full disk fails its flush again: the first
                file.close()  # error is the one to say)
            self.tmp.unlink(missing_ok=True)


def encode_shards(source, tok: AnyTokenizer, out_dir: Path, state: dict,
                  progress: bool) -> None:
    """Pass 3: the units' tokens into shards, from where state["next"] says (a continued
    prepare skips the units, and the tokens of a unit, its complete shards already hold). The
    state is saved after every complete shard."""
    settings, dtype = state["settings"], np.dtype(state["dtype"])
    writer = _Shards(out_dir, settings["shard_tokens"], state["shards"])
    first, skip = state["next"]
    written = 0

    def saved(unit: int, offset: int) -> None:
        state["next"] = [unit, offset]
        atomic_write_text(out_dir / PROGRESS, json.dumps(state) + "\n")

    try:
        # the files' bytes, or a dataset's characters, which the scan counted
        total = state["chars"] if source.size is None else source.size
        with _bar("encode", total, source.unit, progress) as bar:
            for i, (split, text) in enumerate(_units(source, settings["chunk_chars"],
                                                     state["cut"], bar.update)):
                if i < first:
                    continue
                drop = skip if i == first else 0
                ids = tok.encode_array(text)[drop:].astype(dtype)
                writer.write(split, ids, lambda n, i=i, drop=drop: saved(i, drop + n))
                written += len(ids)
                bar.set_postfix_str(f"{written / max(bar.format_dict['elapsed'], 1e-9):,.0f} "
                                    f"tokens/s", refresh=False)
            writer.close()
    except OSError as e:  # a full disk's error names no file: the shard being written, by its
        # own name (as atomic_path names a file), not the temporary removed below
        if e.filename is None and writer.file is not None:
            e.filename = str(writer.path)
        raise
    finally:
        writer.discard()


def check_out_folder(out_dir: Path, settings: dict) -> dict | None:
    """A prepare's folder may be new, or hold an unfinished prepare, but nothing else minigpt
    makes; or a corpus prepared there with these settings, whose index this returns (the same
    command run again: nothing to do), once its shards are checked."""
    if is_prepared(out_dir):
        index = read_json(out_dir / INDEX)
        was = comparable(index.get("settings")) if isinstance(index, dict) else None
        if was == settings:
            try:  # whole: every shard, and its tokenizer
                return open_prepared(out_dir)[3]
            except MiniGPTError as e:
                raise MiniGPTError(f"{out_dir} holds a damaged prepared corpus ({e}): delete "
                                   f"it and run the command again") from None
        why = (f" of other sources or settings ({changed(was, settings)})" if was is not None
               else " (its index.json cannot be read)" if index is None
               else "")  # (an older index: no settings)
        raise MiniGPTError(f"{out_dir} already holds a prepared corpus{why}; choose another "
                           f"--out or delete it first")
    if (what := folder_holds(out_dir)) in ("a training run", "a comparison", "an exported model"):
        raise MiniGPTError(f"{out_dir} holds {what}; choose another --out")
    if out_dir.is_dir() and not (out_dir / PROGRESS).exists():  # (not an unfinished prepare)
        others = sorted(p.name for p in out_dir.iterdir() if not is_hidden(p.name)  # .DS_Store
                        and p.name not in ("run.lock", TOKENIZER))  # (a prepare killed early)
        if others:  # the shards would mix with them, and the folder no longer read as text
            more = f" and {len(others) - 1} more" if len(others) > 1 else ""
            raise MiniGPTError(f"{out_dir} holds other files ({others[0]}{more}): prepare "
                               f"writes into a new or empty folder; choose another --out")
    return None


def without_times(settings: dict) -> dict:
    """A prepare's settings without its files' modification times: what a touch leaves."""
    return {**settings, "files": [s[:2] if isinstance(s, list) else s
                                  for s in settings.get("files", [])]}


def check_unchanged(source, settings: dict, out_dir: Path) -> None:
    """Refuse shards made while a source changed size (a file written to as it was read): their
    split is no longer the one the scan counted. A file only touched (the same size, a new
    modification time: a sync, a checkout) is said, not refused."""
    if (now := comparable({**settings, **source.settings()})) == settings:
        return
    if without_times(now) == without_times(settings):
        log.warning(f"{changed(settings, now)} (touched, the same size) while {out_dir} was "
                    f"being prepared: if its text changed, delete the folder and prepare again")
        return
    raise MiniGPTError(f"{changed(settings, now)} while {out_dir} was being prepared: its "
                       f"shards may not match the sources; delete the folder and prepare "
                       f"again once they are settled")


def prepare(sources, out_dir: str | Path, tokenizer: str = "char",
            vocab_size: int = BPE_VOCAB, val_fraction: float = 0.1,
            shard_tokens: int = SHARD_TOKENS, chunk_chars: int = CHUNK_CHARS,
            progress: bool = True) -> dict:
    """Tokenize the files `sources` names (a file, a folder, or a glob), or a
    minigpt.records.Records, into the shards of a training and a validation split in out_dir,
    in memory bounded by the chunk size, and return the index written to out_dir/index.json.
    vocab_size is for bpe only. Run again after an interruption, with the same sources and
    settings, it continues after the last complete shard."""
    out_dir = as_path(out_dir, "out_dir")
    if tokenizer not in ("char", "bpe"):
        raise MiniGPTError(f"tokenizer must be char or bpe, got {tokenizer!r}")
    for name, value in (("shard_tokens", shard_tokens), ("chunk_chars", chunk_chars)):
        if not value > 0:
            raise MiniGPTError(f"'{name}' must be positive, got {value}")
    if not 0 < val_fraction < 1:  # (as train says these)
        raise MiniGPTError(f"'val_fraction' must be in (0, 1), got {val_fraction}")
    if tokenizer == "bpe":  # checked before the scan, which can take minutes
        check_bpe_vocab(vocab_size)
    if file := file_on_path(out_dir):  # before the scan, which can take minutes
        where = "" if file == out_dir else f": {file}"
        raise MiniGPTError(f"--out {out_dir}{where} is a file, not a folder")
    if isinstance(sources, (str, Path)):
        source = Files(sources, exclude=out_dir)
    elif hasattr(sources, "chunks"):  # a minigpt.records.Records
        source = sources
    else:
        raise MiniGPTError(f"sources must be a file, a folder or a glob (one str or Path; a "
                           f"folder or glob for several files), or a Records, got "
                           f"{type(sources).__name__}")
    settings = comparable({"format": FORMAT, **source.settings(), "tokenizer": tokenizer,
                           "vocab_size": vocab_size if tokenizer == "bpe" else None,
                           "val_fraction": val_fraction, "shard_tokens": shard_tokens,
                           "chunk_chars": chunk_chars})
    if index := check_out_folder(out_dir, settings):
        return index
    continuing = (out_dir / PROGRESS).exists()  # an unfinished prepare's
    # (None where it cannot be read, emptied say: changed() calls it not minigpt's)
    state = read_json(out_dir / PROGRESS) if continuing else {}
    was = comparable(state.get("settings")) if isinstance(state, dict) else state
    if continuing and was != settings:
        same = isinstance(was, dict) and {**was, "files": None} == {**settings, "files": None}
        # (the same command: only its files changed)
        how = "put its files back as they were" if same else "run that command again"
        raise MiniGPTError(f"{out_dir} holds an unfinished prepare of other sources or settings "
                           f"({changed(was, settings)}): {how} to continue it, or delete the "
                           f"folder")
    if continuing:
        tok = load_tokenizer(out_dir / TOKENIZER)
        done = sum(map(len, state["shards"].values()))
        log.info(f"{out_dir}: continuing an interrupted prepare after its {done} complete "
                 f"shard(s)")
    else:
        chars, alphabet = scan(source, tokenizer, chunk_chars, progress)
        cut = split_point(chars, val_fraction)
        if not 0 < cut < chars:  # before the tokenizer and the shards, not after
            raise MiniGPTError(f"--val-fraction {val_fraction} of {chars:,} characters leaves the "
                               f"{'training' if cut == 0 else 'validation'} split empty")
        tok = learn_tokenizer(source, tokenizer, vocab_size, chunk_chars, cut, alphabet,
                              progress)
        state = {"settings": settings, "chars": chars, "cut": cut,
                 "dtype": token_dtype(tok.vocab_size).name,
                 "shards": {split: [] for split in SPLITS}, "next": [0, 0]}
    created = not out_dir.exists()
    with lock_folder(out_dir):
        if index := check_out_folder(out_dir, settings):  # again, held: another prepare may
            return index  # have finished there since (this one's work, done),
        if (out_dir / PROGRESS).exists() != continuing:  # or started (and stopped) there
            raise MiniGPTError(f"another prepare wrote into {out_dir} while this one read its "
                               f"sources; choose another --out")
        try:
            if not continuing:
                tok.save(out_dir / TOKENIZER)
                atomic_write_text(out_dir / PROGRESS, json.dumps(state) + "\n")
            encode_shards(source, tok, out_dir, state, progress)
        except BaseException as e:
            if not tokens_done(out_dir):  # nothing worth continuing from: progress.json,
                # not memory (a shard renamed but not yet recorded there is rewritten anyway)
                _remove_partial(out_dir, created, state["shards"])
            if isinstance(e, MiniGPTError):  # (a character outside the vocabulary: perhaps
                check_unchanged(source, settings, out_dir)  # from a file that grew)
            raise
        check_unchanged(source, settings, out_dir)
        shards = state["shards"]
        counts = {f"{split}_tokens": sum(s["tokens"] for s in shards[split]) for split in SPLITS}
        index = {
            "format": FORMAT, "dtype": state["dtype"], "tokens": sum(counts.values()), **counts,
            "shards": shards, "val_fraction": val_fraction, "chars": state["chars"],
            "tokenizer": {"kind": tok.kind, "vocab_size": tok.vocab_size, "file": TOKENIZER},
            "sources": source.describe(), "shard_tokens": shard_tokens, "chunk_chars": chunk_chars,
            "settings": settings,  # (the same command again finds nothing to do)
        }
        atomic_write_text(out_dir / INDEX, json.dumps(index, indent=1) + "\n")
        (out_dir / PROGRESS).unlink()
    return index


def tokens_done(out_dir: str | Path) -> int:
    """The tokens in the complete shards of an unfinished prepare in out_dir (0: none)."""
    try:
        state = json.loads((Path(out_dir) / PROGRESS).read_text(encoding="utf-8"))
        return sum(s["tokens"] for split in state["shards"].values() for s in split)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # (edited by hand)
        return 0


def _remove_partial(out_dir: Path, created: bool, shards: dict) -> None:
    """Undo a prepare that failed before its first recorded shard: its files (a shard renamed
    but not recorded too), and the folder it made."""
    for name in (TOKENIZER, PROGRESS, "run.lock", *(s["file"] for v in shards.values()
                                                   for s in v)):
        (out_dir / name).unlink(missing_ok=True)
    if created and out_dir.is_dir() and not any(out_dir.iterdir()):
        out_dir.rmdir()


def read_index(folder: str | Path) -> dict:
    """A prepared folder's index.json, checked for the keys a reader needs. A folder prepared
    by an earlier minigpt (another format) is refused, saying so."""
    path = Path(folder) / INDEX
    if not path.is_file():
        raise MiniGPTError(f"{folder} is not a folder written by minigpt prepare (no {INDEX})")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
        if index.get("format") != FORMAT:
            raise ValueError(f"format {index.get('format')!r}, expected {FORMAT!r}: prepare "
                             f"the corpus again")
        np.dtype(index["dtype"])
        index["tokenizer"]["kind"], int(index["tokenizer"]["vocab_size"])
        [(s["file"], int(s["tokens"]), s["sha256"]) for split in SPLITS
         for s in index["shards"][split]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise MiniGPTError(f"cannot read {path}: {e}") from None
    return index


class ShardedTokens:
    """The tokens of a prepared corpus as one array-like, memory-mapped shard by shard (see the
    module's docstring): `t[a:b]` is a view, `t[positions]` a gather, `t.astype(dtype)` and
    `np.asarray(t)` a copy."""

    def __init__(self, shards: list[np.ndarray], start: int = 0, stop: int | None = None,
                 dtype: np.dtype | None = None):
        self.shards = shards
        self.offsets = np.cumsum([0] + [len(s) for s in shards])  # (S+1,) where each begins
        self.start = start
        self.stop = int(self.offsets[-1]) if stop is None else stop
        self.dtype = dtype or (shards[0].dtype if shards else np.dtype(np.uint16))

    @classmethod
    def open(cls, folder: Path, shards: list[dict], dtype: np.dtype) -> ShardedTokens:
        """Index entries' shards in a prepared folder, each checked for its size and sha256:
        a truncated or damaged shard is refused in one line."""
        arrays = []
        for s in shards:
            path = folder / s["file"]
            expected = int(s["tokens"]) * dtype.itemsize
            if not path.is_file() or path.stat().st_size != expected:
                raise MiniGPTError(f"shard {path} is missing or truncated (expected "
                                   f"{expected:,} bytes); prepare the corpus again")
            if sha256_file(path) != s["sha256"]:
                raise MiniGPTError(f"shard {path} is damaged (its sha256 is not the one "
                                   f"prepare recorded); prepare the corpus again")
            # a plain ndarray over the mapping: fancy indexing skips np.memmap's overhead
            arrays.append(np.memmap(path, dtype=dtype, mode="r").view(np.ndarray))
        return cls(arrays, dtype=dtype)

    def __len__(self) -> int:
        return self.stop - self.start

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    def __getitem__(self, key):
        if isinstance(key, slice):  # a view of the same shards
            begin, end, step = key.indices(len(self))
            if step != 1:
                raise IndexError("ShardedTokens slices must have step 1")
            return ShardedTokens(self.shards, self.start + begin, self.start + max(begin, end),
                                 self.dtype)
        if isinstance(key, (int, np.integer)):
            return self._gather(np.asarray(key))[()]
        positions = np.asarray(key)
        if positions.dtype.kind not in "iu":
            raise IndexError(f"ShardedTokens takes slices and integer arrays, not {key!r}")
        return self._gather(positions)

    def _gather(self, positions: np.ndarray) -> np.ndarray:
        """The tokens at positions (any shape, relative to this view; negative counts from the
        end): find each position's shard, then read each shard's positions in one go. The work
        is O(N log N) in the N positions asked for, whatever the corpus size."""
        flat = positions.reshape(-1).astype(np.int64) + self.start  # (N,) global positions
        if not flat.size:
            return np.empty(positions.shape, dtype=self.dtype)
        if flat.min() < self.start:
            flat = np.where(flat < self.start, flat + len(self), flat)  # (N,)
        lo, hi = int(flat.min()), int(flat.max())
        if lo < self.start or hi >= self.stop:
            raise IndexError(f"position out of range for {len(self):,} tokens")
        first, last = np.searchsorted(self.offsets, [lo, hi], side="right") - 1
        if first == last:  # all in one shard (always so for a single shard): one read
            return self.shards[first][flat - self.offsets[first]].reshape(positions.shape)
        shard = np.searchsorted(self.offsets, flat, side="right") - 1  # (N,) shard of each
        order = np.argsort(shard, kind="stable")  # (N,) positions grouped by shard
        ends = np.cumsum(np.bincount(shard))  # (S,) where each shard's group ends in order
        out = np.empty(flat.shape, dtype=self.dtype)  # (N,)
        for s in range(first, last + 1):
            group = order[ends[s - 1] if s else 0:ends[s]]
            if group.size:
                out[group] = self.shards[s][flat[group] - self.offsets[s]]
        return out.reshape(positions.shape)

    def _pieces(self) -> Iterator[np.ndarray]:
        """This view as consecutive slices of the shards (memory-mapped, no copy)."""
        for s, shard in enumerate(self.shards):
            lo, hi = max(self.start, self.offsets[s]), min(self.stop, self.offsets[s + 1])
            if lo < hi:
                yield shard[lo - self.offsets[s]:hi - self.offsets[s]]

    def astype(self, dtype) -> np.ndarray:
        """A copy of this view's tokens as one array (mind its size)."""
        return np.concatenate([np.empty(0, self.dtype), *self._pieces()]).astype(dtype)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return self.astype(dtype or self.dtype)

    def __iter__(self) -> Iterator:
        for piece in self._pieces():
            yield from piece

    def __repr__(self) -> str:
        return (f"ShardedTokens({len(self):,} tokens of {self.dtype}, "
                f"positions {self.start:,}..{self.stop:,} of {len(self.shards)} shards)")


def open_prepared(folder: str | Path) -> tuple[ShardedTokens, ShardedTokens, AnyTokenizer,
                                               dict]:
    """A prepared folder's training and validation tokens, its tokenizer (the one the index
    names: a tokenizer.json replaced since would read the shards' ids as other tokens) and its
    index."""
    folder = Path(folder)
    index = read_index(folder)
    train, val = (ShardedTokens.open(folder, index["shards"][split], np.dtype(index["dtype"]))
                  for split in SPLITS)
    tok, named = load_tokenizer(folder / TOKENIZER), index["tokenizer"]
    if (tok.kind, tok.vocab_size) != (named["kind"], named["vocab_size"]):
        raise MiniGPTError(f"{folder / TOKENIZER} is a {tok.kind} tokenizer of "
                           f"{tok.vocab_size:,} tokens, not the {named['kind']} one of "
                           f"{named['vocab_size']:,} its shards were made with; prepare the "
                           f"corpus again")
    return train, val, tok, index
