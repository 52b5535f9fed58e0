"""Big corpora: stream text files into token shards, and read them back.

    minigpt prepare --text 'books/**/*.txt' --out data/books [--tokenizer bpe --vocab-size 8192]

`prepare` never holds the corpus in memory. It reads each file in chunks of characters, twice:
the first pass learns the tokenizer (char: the set of characters; bpe: merges trained on the
chunks of all the files, so on the part later held out for validation too), the second encodes
chunk by chunk straight into shard files. The folder it writes:

    shard-00000.bin ...  the tokens of all the files, in order, raw uint16 (uint32 when the
                         vocabulary has more than 65,536 tokens), at most shard_tokens per shard
    tokenizer.json       the tokenizer (minigpt.tokenizer.load_tokenizer reads it)
    index.json           written last, so a folder that has one is complete: the dtype, each
                         shard's file and token count, the total, the sources, the tokenizer

Chunks end at a line break between two visible characters where the text has one
(minigpt.tokenizer.last_boundary), so BPE tokens come out as if each file were encoded whole.

`ShardedTokens` reads the folder back as one array-like of all its tokens, memory-mapped: len,
step-1 slices as views (no copy), and gathers with integer arrays of any shape, across shard
boundaries, in work proportional to the number of positions asked for. That is all get_batch
needs, so training on a prepared folder samples a batch in O(B * T) whatever the corpus size.
"""

from __future__ import annotations

import codecs
import glob
import io
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from minigpt.errors import MiniGPTError
from minigpt.files import atomic_path, atomic_write_text
from minigpt.tokenizer import (
    AnyTokenizer,
    BPETokenizer,
    CharTokenizer,
    last_boundary,
    load_tokenizer,
)

INDEX = "index.json"
TOKENIZER = "tokenizer.json"
FORMAT = "minigpt-shards/1"
SHARD_TOKENS = 100_000_000  # 200 MB of uint16 per shard
CHUNK_CHARS = 1 << 18  # characters read, and encoded, at a time (larger: no faster)
BPE_VOCAB = 4096  # prepare's default vocabulary size for --tokenizer bpe


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned type that holds every id: uint16 up to 65,536 tokens, else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def is_prepared(path: str | Path) -> bool:
    """Whether path is a folder written (completely) by prepare."""
    return (Path(path) / INDEX).is_file()


def find_sources(sources: str, exclude: Path | None = None) -> list[Path]:
    """The files `sources` names: one file; every file under a folder (hidden ones skipped),
    sorted; or those a glob pattern matches (`**` for any depth), sorted. Files under `exclude`
    (the output folder) are left out."""
    path = Path(sources).expanduser()
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file()
                 and not any(part.startswith(".") for part in p.relative_to(path).parts)]
    else:
        files = [Path(p) for p in glob.glob(os.path.expanduser(sources), recursive=True)]
        files = [p for p in files if p.is_file()]
    if exclude is not None:
        files = [p for p in files if not p.resolve().is_relative_to(exclude.resolve())]
    if not files:
        raise MiniGPTError(f"no files matched {sources!r} (give a file, a folder or a glob "
                           f"pattern such as 'books/**/*.txt')")
    return sorted(files)


def read_chunks(path: Path, chunk_chars: int,
                on_bytes: Callable[[int], object] = lambda n: None) -> Iterator[str]:
    """The text of a UTF-8 file in chunks of about chunk_chars characters (at most twice that),
    each cut after a safe line break where there is one near its end; line endings become \\n
    as in Python's text mode. on_bytes(n) hears of every n bytes read."""
    utf8 = codecs.getincrementaldecoder("utf-8")()
    decoder = io.IncrementalNewlineDecoder(utf8, translate=True)
    carry, offset = "", 0
    with open(path, "rb") as f:
        while True:
            raw = f.read(chunk_chars)
            try:
                text = carry + decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as e:
                raise MiniGPTError(f"{path} is not UTF-8 text (near byte {offset + e.start}: "
                                   f"{e.reason})") from None
            if "\x00" in text:
                raise MiniGPTError(f"{path} looks binary (it contains NUL bytes), not text")
            offset += len(raw)
            on_bytes(len(raw))
            cut = last_boundary(text) if raw else len(text)
            if len(text) - cut > chunk_chars:  # no break near the end: cut anyway
                cut = len(text)
            if cut:
                yield text[:cut]
            carry = text[cut:]
            if not raw:
                return


def _chunks(files: list[Path], chunk_chars: int, bar: tqdm) -> Iterator[str]:
    """Every file's chunks, in order, advancing the progress bar by the bytes read."""
    for path in files:
        yield from read_chunks(path, chunk_chars, bar.update)


def _bar(files: list[Path], desc: str, progress: bool) -> tqdm:
    total = sum(p.stat().st_size for p in files)
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, disable=not progress,
                dynamic_ncols=True)


def learn_tokenizer(files: list[Path], kind: str, vocab_size: int, chunk_chars: int,
                    progress: bool) -> AnyTokenizer:
    """Pass 1: the characters of all the files (char), or BPE merges trained on all their
    chunks (bpe). An empty corpus is an error."""
    seen = 0

    def counted(chunks: Iterable[str]) -> Iterator[str]:
        nonlocal seen
        for chunk in chunks:
            seen += len(chunk)
            yield chunk

    with _bar(files, "scan" if kind == "char" else "train bpe", progress) as bar:
        chunks = counted(_chunks(files, chunk_chars, bar))
        if kind == "bpe":
            tok = BPETokenizer.train(chunks, vocab_size)
        else:
            alphabet: set[str] = set()
            for chunk in chunks:
                alphabet.update(chunk)
            tok = CharTokenizer(sorted(alphabet)) if alphabet else None
    if not seen:
        raise MiniGPTError(f"empty corpus: the {len(files)} file(s) hold no text")
    return tok


class _TokenStream:
    """Token arrays from an iterator, handed out again in runs of at most n tokens."""

    def __init__(self, arrays: Iterable[np.ndarray]):
        self.arrays = iter(arrays)
        self.head = np.empty(0, dtype=np.int64)

    def more(self) -> bool:
        while not len(self.head):
            nxt = next(self.arrays, None)
            if nxt is None:
                return False
            self.head = nxt
        return True

    def take(self, n: int) -> Iterator[np.ndarray]:
        """Pieces adding up to n tokens, or to what is left when fewer are."""
        while n > 0 and self.more():
            piece, self.head = self.head[:n], self.head[n:]
            n -= len(piece)
            yield piece


def write_shards(arrays: Iterable[np.ndarray], out_dir: Path, dtype: np.dtype,
                 shard_tokens: int) -> Iterator[tuple[str, int]]:
    """Pass 2: write the token arrays to shard-00000.bin, ... of at most shard_tokens tokens
    each (each written to a temporary file and renamed when full), yielding (file, tokens)."""
    stream = _TokenStream(arrays)
    number = 0
    while stream.more():
        name = f"shard-{number:05d}.bin"
        count = 0
        with atomic_path(out_dir / name) as tmp, open(tmp, "wb") as f:
            for piece in stream.take(shard_tokens):
                f.write(piece.astype(dtype, copy=False))  # its buffer: no bytes copy
                count += len(piece)
        yield name, count
        number += 1


def _remove_partial(out_dir: Path, names: list[str], created: bool) -> None:
    """Undo a prepare that failed part-way: its files, and its folder if it made it."""
    for name in names:
        (out_dir / name).unlink(missing_ok=True)
    if created and out_dir.is_dir() and not any(out_dir.iterdir()):
        out_dir.rmdir()


def prepare(sources: str, out_dir: str | Path, tokenizer: str = "char",
            vocab_size: int = BPE_VOCAB, shard_tokens: int = SHARD_TOKENS,
            chunk_chars: int = CHUNK_CHARS, progress: bool = True) -> dict:
    """Tokenize the files `sources` names (a file, a folder, or a glob) into token shards in
    out_dir, streaming (memory stays bounded by the chunk size, whatever the corpus size), and
    return the index written to out_dir/index.json. vocab_size is for bpe only."""
    out_dir = Path(out_dir)
    if tokenizer not in ("char", "bpe"):
        raise MiniGPTError(f"tokenizer must be char or bpe, got {tokenizer!r}")
    for name, value in (("shard_tokens", shard_tokens), ("chunk_chars", chunk_chars)):
        if not value > 0:
            raise MiniGPTError(f"{name} must be positive, got {value}")
    if is_prepared(out_dir):
        raise MiniGPTError(f"{out_dir} already holds a prepared corpus; choose another --out "
                           f"or delete it first")
    files = find_sources(sources, exclude=out_dir)
    tok = learn_tokenizer(files, tokenizer, vocab_size, chunk_chars, progress)
    dtype = token_dtype(tok.vocab_size)
    created = not out_dir.exists()
    shards: list[dict] = []
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with _bar(files, "encode", progress) as bar:
            arrays = (tok.encode_array(c) for c in _chunks(files, chunk_chars, bar))
            for name, count in write_shards(arrays, out_dir, dtype, shard_tokens):
                shards.append({"file": name, "tokens": count})
        tok.save(out_dir / TOKENIZER)
        index = {
            "format": FORMAT, "dtype": dtype.name, "tokens": sum(s["tokens"] for s in shards),
            "shards": shards,
            "tokenizer": {"kind": tok.kind, "vocab_size": tok.vocab_size, "file": TOKENIZER},
            "sources": {"spec": str(sources), "files": [str(p) for p in files],
                        "bytes": sum(p.stat().st_size for p in files)},
            "shard_tokens": shard_tokens, "chunk_chars": chunk_chars,
        }
        atomic_write_text(out_dir / INDEX, json.dumps(index, indent=1) + "\n")
    except BaseException:
        _remove_partial(out_dir, [s["file"] for s in shards] + [TOKENIZER], created)
        raise
    return index


def read_index(folder: str | Path) -> dict:
    """A prepared folder's index.json, checked for the keys a reader needs."""
    path = Path(folder) / INDEX
    if not path.is_file():
        raise MiniGPTError(f"{folder} is not a folder written by minigpt prepare (no {INDEX})")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
        if index.get("format") != FORMAT:
            raise ValueError(f"format {index.get('format')!r}, expected {FORMAT!r}")
        np.dtype(index["dtype"])
        [(s["file"], int(s["tokens"])) for s in index["shards"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise MiniGPTError(f"cannot read {path}: {e}") from None
    return index


class ShardedTokens:
    """The tokens of a prepared corpus as one array-like, memory-mapped shard by shard.

    `len(t)` is the number of tokens; `t[a:b]` is a view (no copy) of global positions a..b-1;
    `t[positions]` for an integer array of any shape gathers those tokens into an array of the
    same shape, across shard boundaries; `t[i]` is one token; `t.astype(dtype)` and
    `np.asarray(t)` copy a (small) view out. This is what get_batch and Splits need.
    """

    def __init__(self, shards: list[np.ndarray], start: int = 0, stop: int | None = None):
        self.shards = shards
        self.offsets = np.cumsum([0] + [len(s) for s in shards])  # (S+1,) where each begins
        self.start = start
        self.stop = int(self.offsets[-1]) if stop is None else stop
        self.dtype = shards[0].dtype if shards else np.dtype(np.uint16)

    @classmethod
    def open(cls, folder: str | Path) -> ShardedTokens:
        """All the tokens of a folder written by prepare, checked against its index."""
        folder = Path(folder)
        index = read_index(folder)
        dtype = np.dtype(index["dtype"])
        shards = []
        for s in index["shards"]:
            path = folder / s["file"]
            expected = int(s["tokens"]) * dtype.itemsize
            if not path.is_file() or path.stat().st_size != expected:
                raise MiniGPTError(f"shard {path} is missing or damaged (expected {expected:,} "
                                   f"bytes); prepare the corpus again")
            # a plain ndarray over the mapping: fancy indexing skips np.memmap's overhead
            shards.append(np.memmap(path, dtype=dtype, mode="r").view(np.ndarray))
        return cls(shards)

    def __len__(self) -> int:
        return self.stop - self.start

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    def __getitem__(self, key):
        if isinstance(key, slice):
            return self._view(key)
        if isinstance(key, (int, np.integer)):
            return self._gather(np.asarray(key))[()]
        positions = np.asarray(key)
        if positions.dtype.kind not in "iu":
            raise IndexError(f"ShardedTokens takes slices and integer arrays, not {key!r}")
        return self._gather(positions)

    def _view(self, key: slice) -> ShardedTokens:
        begin, end, step = key.indices(len(self))
        if step != 1:
            raise IndexError("ShardedTokens slices must have step 1")
        view = ShardedTokens.__new__(ShardedTokens)
        view.shards, view.offsets, view.dtype = self.shards, self.offsets, self.dtype
        view.start, view.stop = self.start + begin, self.start + max(begin, end)
        return view

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


def open_prepared(folder: str | Path) -> tuple[ShardedTokens, AnyTokenizer]:
    """A prepared folder's tokens and tokenizer."""
    return ShardedTokens.open(folder), load_tokenizer(Path(folder) / TOKENIZER)
