"""The corpus on its way to batches: download + verify + cache, prepare once into token shards
(minigpt.corpus), the contiguous 90/10 split, and random (x, y) batches.

    text file -> prepare (char or BPE) -> <cache>/prepared/<name>-<key>/ -> train / val -> get_batch

`load_corpus` is the one entry point for training data: a text file, prepared on first use into
the cache (a later run reads the shards), or a folder written by `minigpt prepare`.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import numbers
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from minigpt.corpus import (
    FORMAT,
    PROGRESS,
    ShardedTokens,
    is_prepared,
    open_prepared,
    prepare,
    split_point,
)
from minigpt.errors import MiniGPTError, shell_path
from minigpt.files import atomic_path, lock_folder, sha256_file
from minigpt.tokenizer import MIN_BPE_VOCAB, AnyTokenizer

log = logging.getLogger(__name__)

TINYSHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


def cache_dir() -> Path:
    """`$MINIGPT_DATA_DIR`, else ~/.cache/minigpt."""
    env = os.environ.get("MINIGPT_DATA_DIR")
    if env and Path(env).expanduser().is_file():
        raise MiniGPTError(f"MINIGPT_DATA_DIR={env} is a file; it names the folder minigpt "
                           f"keeps its data in")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "minigpt"


def tinyshakespeare_path() -> Path:
    return cache_dir() / "tinyshakespeare" / "input.txt"


def download(url: str, dest: str | Path, sha256: str, timeout: float = 30.0) -> Path:
    """Fetch url to dest through a temporary file, renamed only once the checksum matches."""
    dest = Path(dest)
    by_hand = (f"copy the file to {dest} by hand, or train on another file (--text PATH; in "
               f"Python, load_tokens(PATH))")
    try:
        with atomic_path(dest) as tmp:
            with urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, "wb") as f:
                size = r.headers.get("Content-Length", "")
                while chunk := r.read(1 << 20):
                    f.write(chunk)
                if size.isdigit() and f.tell() < int(size):
                    raise MiniGPTError(f"download of {url} stopped after {f.tell():,} of "
                                       f"{int(size):,} bytes (the connection closed early); not "
                                       f"saved. {by_hand}")
            got = sha256_file(tmp)
            if got != sha256:
                raise MiniGPTError(f"download of {url} has sha256 {got[:12]}..., expected "
                                   f"{sha256[:12]}...; not saved. {by_hand}")
    except urllib.error.HTTPError as e:
        raise MiniGPTError(f"cannot download {url} (HTTP {e.code} {e.reason}); {by_hand}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise MiniGPTError(f"cannot download {url} ({reason}); {by_hand}") from None
    return dest


def ensure_tinyshakespeare(url: str = TINYSHAKESPEARE_URL) -> Path:
    """The cached TinyShakespeare, downloaded (and verified) on first use."""
    path = tinyshakespeare_path()
    if not path.exists():
        log.info(f"downloading TinyShakespeare (1.1 MB) from {url} into {writable(path.parent)}")
        download(url, path, TINYSHAKESPEARE_SHA256)
    return path


def writable(folder: Path) -> Path:
    """`folder`, in the data cache, made if missing; or the one-line error of a cache that
    cannot be written (a read-only home, say), which names the setting that moves it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        raise MiniGPTError(f"cannot write the data cache {folder} ({e.strerror}); set "
                           f"MINIGPT_DATA_DIR to a folder you can write") from None
    return folder


def text_file(path: str | Path) -> Path:
    """The path of a text file that exists (~ expanded), or a one-line error (a folder that
    prepare has not finished writing is told apart: the error says what to run)."""
    found = Path(path).expanduser()
    if (found / PROGRESS).is_file():
        raise MiniGPTError(f"{path} is a corpus whose prepare did not finish: run the same "
                           f"minigpt prepare again, and it continues")
    if found.is_dir():
        raise MiniGPTError(f"{path} is a folder, not a text file or a prepared corpus: "
                           f"minigpt prepare --text {shell_path(path)} --out DIR, then "
                           f"--text DIR")
    if found.exists() and not found.is_file():  # a FIFO, /dev/null: not read twice alike
        raise MiniGPTError(f"{path} is not a regular file; copy the text into one")
    if not found.is_file() and glob.has_magic(str(path)):
        raise MiniGPTError(f"{path} is a pattern, not a text file: minigpt prepare --text "
                           f"{shell_path(path)} --out DIR reads the files it matches, "
                           f"then --text DIR")
    if not found.is_file():
        raise MiniGPTError(f"text file not found: {path}")
    return found


def prepared_text(text_path: str | Path, tokenizer: str = "char", vocab_size: int = 0,
                  val_fraction: float = 0.1) -> Path:
    """The folder holding a text file's shards, prepared on first use (minigpt.corpus.prepare)
    into <cache>/prepared/<name>-<key>, the key a hash of the text's sha256, the format and
    the settings that shape the tokens (tokenizer, val_fraction, and a BPE's vocab_size). A
    later run with the same text and settings reads it; anything else prepares anew (a cache
    of an earlier format included). Processes preparing at once take turns."""
    text_path = text_file(text_path)
    if not text_path.stat().st_size:
        raise MiniGPTError(f"{text_path} is empty")
    if tokenizer == "bpe" and vocab_size < MIN_BPE_VOCAB:  # (--vocab-size 65, the default, too)
        raise MiniGPTError(f"--tokenizer bpe learns a vocabulary of --vocab-size tokens: give "
                           f"one of at least {MIN_BPE_VOCAB}, such as 1024 (got {vocab_size})")
    key = {"format": FORMAT, "text_sha256": sha256_file(text_path), "tokenizer": tokenizer,
           "val_fraction": val_fraction, "vocab_size": vocab_size if tokenizer == "bpe" else 0}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    folder = cache_dir() / "prepared" / f"{text_path.name}-{digest}"
    if not is_prepared(folder):
        with lock_folder(writable(folder.parent), wait=True):
            if not is_prepared(folder):
                prepare(str(text_path), folder, tokenizer, vocab_size, val_fraction,
                        progress=text_path.stat().st_size > 1 << 26)  # a bar past 64 MB
    return folder


def open_text(text: str | Path, tokenizer: str = "char", vocab_size: int = 0,
              val_fraction: float = 0.1):
    """open_prepared of a folder written by `minigpt prepare`, or of a text file's cache
    (prepared_text), which is prepared again if it cannot be read: it is the cache's to make,
    and a damaged one would refuse every run on the text."""
    if is_prepared(text):
        return open_prepared(text)
    folder = prepared_text(text, tokenizer, vocab_size, val_fraction)
    try:
        return open_prepared(folder)
    except MiniGPTError as e:
        with lock_folder(folder.parent, wait=True):  # (where the caches are prepared)
            try:  # another process may have prepared it again meanwhile
                return open_prepared(folder)
            except MiniGPTError:
                log.warning(f"the token cache of {text} cannot be read, so it is prepared "
                            f"again: {e}")
                shutil.rmtree(folder, ignore_errors=True)
        return open_prepared(prepared_text(text, tokenizer, vocab_size, val_fraction))


def load_tokens(text_path: str | Path) -> tuple[ShardedTokens, AnyTokenizer]:
    """The lesson's `data = encode(text)`: a text's characters as tokens (memory-mapped,
    prepared once) and the character tokenizer of the whole text; or a folder written by
    `minigpt prepare`: its tokens, both splits in order, and its tokenizer."""
    train, val, tok, _ = open_text(text_path)
    return ShardedTokens(train.shards + val.shards, dtype=train.dtype), tok


@dataclass
class Splits:
    """Contiguous train / validation views of one token array (no copy)."""

    train: np.ndarray
    val: np.ndarray

    @classmethod
    def from_tokens(cls, tokens: np.ndarray, val_fraction: float = 0.1) -> Splits:
        """The first 1 - val_fraction of the tokens to train on, the rest held out."""
        if not 0 < val_fraction < 1:
            raise MiniGPTError(f"val_fraction (the part held out) must be in (0, 1), got "
                               f"{val_fraction}")
        n = split_point(len(tokens), val_fraction)  # the lesson's int(0.9 * len(data))
        return cls(train=tokens[:n], val=tokens[n:])

    def check(self, block_size: int) -> None:
        """Each split needs one window of block_size inputs plus the shifted target."""
        for name, part in (("train", self.train), ("validation", self.val)):
            if len(part) < block_size + 1:
                more = (" or a larger --val-fraction (a prepared corpus's: minigpt prepare's)"
                        if name == "validation" else "")
                raise MiniGPTError(f"the {name} split has {len(part):,} tokens, fewer than "
                                   f"block_size + 1 = {block_size + 1:,}; use a longer text, a "
                                   f"smaller --block-size{more}")


def load_corpus(text: str | Path, tokenizer: str, vocab_size: int,
                val_fraction: float) -> tuple[Splits, AnyTokenizer, dict]:
    """The training data, its tokenizer and a description of it, from

    - a text file: its characters ('char') or a byte-level BPE of vocab_size tokens learned
      from the text's first 1 - val_fraction ('bpe'), the last val_fraction held out, prepared
      once into the cache (prepared_text);
    - a folder written by `minigpt prepare`: its splits and its tokenizer as prepared
      (`tokenizer`, `vocab_size` and `val_fraction` are not used).
    """
    path = Path(text)
    train, val, tok, index = open_text(path, tokenizer, vocab_size, val_fraction)
    info = {"text": str(path), "tokens": len(train) + len(val), "train_tokens": len(train),
            "val_tokens": len(val), "val_fraction": index["val_fraction"],
            "tokenizer": tok.kind, "vocab_size": tok.vocab_size,
            "tokens_sha256": hashlib.sha256(  # the tokens' fingerprint: of their shards' hashes
                json.dumps(index["shards"], sort_keys=True).encode()).hexdigest()[:16]}
    return Splits(train=train, val=val), tok, info


def get_batch(data: np.ndarray, batch_size: int, block_size: int,
              generator: torch.Generator | None = None,
              device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """B random windows of data: x = data[i : i+T], y = data[i+1 : i+T+1], both (B, T) int64,
    at offsets drawn from `generator`, gathered in one fancy-index (no Python loop over rows).
    `data` may also be a 1-D tensor of token ids, as the lesson keeps its data."""
    if isinstance(data, torch.Tensor):
        data = data.cpu().numpy()
    shape = getattr(data, "shape", None)  # (an array, a memmap, a prepared corpus's shards)
    if shape is None or len(shape) != 1 or shape[0] <= block_size:
        raise MiniGPTError(f"data must be one row of token ids longer than block_size "
                           f"({block_size}), got {type(data).__name__ if shape is None else shape}")
    ix = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    rows = ix.numpy()[:, None] + np.arange(block_size + 1)  # (B, T+1) positions
    buf = torch.from_numpy(data[rows].astype(np.int64))  # (B, T+1)
    x, y = buf[:, :-1].contiguous(), buf[:, 1:].contiguous()  # (B, T) each, y shifted by one
    return to_device(x, device), to_device(y, device)


def to_device(t: torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """t on the device; to a GPU, through pinned memory: a copy Python need not wait for."""
    if torch.device(device).type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class Batches:
    """The lesson's `get_batch(split)`: seeded random batches from the train or val split.

    Training batches come from numbered streams, one generator each: stream 0 is seeded with
    `seed`, stream s with seed + 1,000,003 s. A step made of several micro-batches (gradient
    accumulation, or several processes) draws micro-batch k from `streams[k]`; one process
    accumulating 4 micro-batches and 4 processes taking one each see the same batches."""

    def __init__(self, splits: Splits, batch_size: int, block_size: int, seed: int = 1337,
                 device: str | torch.device = "cpu", streams: tuple[int, ...] = (0,)):
        if not all(isinstance(n, numbers.Integral) and not isinstance(n, bool) and n >= 1
                   for n in (batch_size, block_size)):
            raise MiniGPTError(f"batch_size and block_size must be whole numbers >= 1, got "
                               f"{batch_size!r} and {block_size!r}")
        splits.check(block_size)
        self.splits = splits
        self.batch_size = batch_size
        self.block_size = block_size
        self.train_shape = (batch_size, block_size)  # (B, T) of training; the schedules grow it
        self.device = device
        self.streams = tuple(streams)
        # separate generators, so how often we evaluate never changes the training batches
        self.generators = {"val": torch.Generator().manual_seed(seed + 1)}
        for s in self.streams:
            self.generators[f"train{s}"] = torch.Generator().manual_seed(
                seed + 1_000_003 * s)  # (a stride above 1: no train seed is val's, seed + 1)

    def get_batch(self, split: str, micro: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y), each (B, T): from the val stream, or from this step's micro-th train stream."""
        if split not in ("train", "val"):
            raise MiniGPTError(f"split must be 'train' or 'val', got {split!r}")
        if split == "val":  # at full size, whatever the training batch's shape
            return get_batch(self.splits.val, self.batch_size, self.block_size,
                             self.generators["val"], self.device)
        return get_batch(self.splits.train, *self.train_shape,
                         self.generators[f"train{self.streams[micro]}"], self.device)

    @property
    def tokens(self) -> int:
        """Tokens in one training micro-batch: B x T."""
        return self.train_shape[0] * self.train_shape[1]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every stream's generator state, by name (what a checkpoint keeps)."""
        return {name: g.get_state() for name, g in self.generators.items()}

    def load_state_dict(self, states: dict[str, torch.Tensor]) -> None:
        for name, g in self.generators.items():
            g.set_state(states[name])
