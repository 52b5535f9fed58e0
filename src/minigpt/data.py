"""The corpus on its way to batches: download + verify + cache, encode once to a memory-mapped
uint16 token file, split contiguously 90/10, and draw random (x, y) batches.

    text file -> CharTokenizer -> <text>.tokens.u16 (memmap) -> train / val views -> get_batch

`load_corpus` is the one entry point for training data: a text file with the char tokenizer (as
above) or a byte-level BPE trained on its training split, or a folder of token shards written by
`minigpt prepare` (minigpt.corpus).
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from minigpt.atomic import atomic_path, atomic_write_text
from minigpt.corpus import is_prepared, open_prepared, token_dtype
from minigpt.errors import MiniGPTError
from minigpt.tokenizer import AnyTokenizer, BPETokenizer, CharTokenizer, tokenizer_from_dict

TINYSHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
TOKEN_DTYPE = np.uint16


def cache_dir() -> Path:
    """`$MINIGPT_DATA_DIR`, else ~/.cache/minigpt."""
    env = os.environ.get("MINIGPT_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "minigpt"


def tinyshakespeare_path() -> Path:
    return cache_dir() / "tinyshakespeare" / "input.txt"


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(url: str, dest: str | Path, sha256: str, timeout: float = 30.0) -> Path:
    """Fetch url to dest through a temporary file, renamed only once the checksum matches."""
    dest = Path(dest)
    by_hand = f"copy the file to {dest} by hand, or pass --text PATH to train on another file"
    try:
        with atomic_path(dest) as tmp:
            with urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, "wb") as f:
                while chunk := r.read(1 << 20):
                    f.write(chunk)
            got = sha256_file(tmp)
            if got != sha256:
                raise MiniGPTError(
                    f"download of {url} has sha256 {got[:12]}..., expected {sha256[:12]}...; "
                    f"not saved. {by_hand}"
                )
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
        download(url, path, TINYSHAKESPEARE_SHA256)
    return path


def read_text(path: str | Path) -> str:
    path = Path(path)
    if not path.is_file():
        raise MiniGPTError(f"text file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise MiniGPTError(f"{path} is not UTF-8 text (byte {e.start}: {e.reason})") from None
    if "\x00" in text:
        raise MiniGPTError(f"{path} looks binary (it contains NUL bytes), not text")
    if not text:
        raise MiniGPTError(f"{path} is empty")
    return text


def token_file_paths(text_path: Path, tag: str = "") -> tuple[Path, Path]:
    """Where the token file and its description live: beside the text, else in the cache.
    Without a tag, the char tokenizer's uint16 file; with one (say 'bpe512-val0.1'), the .bin
    file of that tokenizer's tokens."""
    folder = text_path.parent if os.access(text_path.parent, os.W_OK) else cache_dir() / "tokens"
    stem = text_path.name if folder == text_path.parent else sha256_file(text_path)[:16]
    stem, suffix = (f"{stem}.{tag}", "bin") if tag else (stem, "u16")
    return folder / f"{stem}.tokens.{suffix}", folder / f"{stem}.tokens.json"


def load_tokens(text_path: str | Path) -> tuple[np.memmap, CharTokenizer]:
    """Encode the text once to a uint16 token file (reused while the text is unchanged) and
    return it memory-mapped together with the tokenizer built from the whole text."""
    text_path = Path(text_path)
    if not text_path.is_file():
        raise MiniGPTError(f"text file not found: {text_path}")
    tokens_path, meta_path = token_file_paths(text_path)
    digest = sha256_file(text_path)
    meta = _read_json(meta_path)
    if meta.get("text_sha256") != digest or not tokens_path.exists():
        text = read_text(text_path)
        tok = CharTokenizer.from_text(text)
        if tok.vocab_size > np.iinfo(TOKEN_DTYPE).max + 1:
            raise MiniGPTError(f"{text_path} has {tok.vocab_size} distinct characters; "
                               f"a uint16 token file holds at most 65,536")
        ids = tok.encode_array(text).astype(TOKEN_DTYPE)
        with atomic_path(tokens_path) as tmp:
            ids.tofile(tmp)
        meta = {"text_sha256": digest, "n_tokens": len(ids), "tokenizer": tok.to_dict()}
        atomic_write_text(meta_path, json.dumps(meta, ensure_ascii=False) + "\n")
    tok = tokenizer_from_dict(meta["tokenizer"])
    tokens = np.memmap(tokens_path, dtype=TOKEN_DTYPE, mode="r")
    if len(tokens) != meta["n_tokens"]:
        raise MiniGPTError(f"token file {tokens_path} is damaged; delete it to rebuild")
    return tokens, tok


def load_bpe_tokens(text_path: Path, vocab_size: int,
                    val_fraction: float) -> tuple[np.memmap, int, BPETokenizer]:
    """A text's BPE tokens, cached beside it as load_tokens' are, and how many of them are the
    training split's. The text is cut at character int((1 - val_fraction) * len(text)); the
    BPE is trained on the first part only (the training split) and encodes both parts. The
    cache is used while the text's sha256, vocab_size and val_fraction are unchanged; the token
    file is uint16, or uint32 for a vocabulary over 65,536."""
    tokens_path, meta_path = token_file_paths(text_path, f"bpe{vocab_size}-val{val_fraction:g}")
    key = {"text_sha256": sha256_file(text_path), "kind": "bpe", "vocab_size": vocab_size,
           "val_fraction": val_fraction}
    meta = _read_json(meta_path)
    if {k: meta.get(k) for k in key} != key or not tokens_path.exists():
        text = read_text(text_path)
        cut = int((1 - val_fraction) * len(text))
        tok = BPETokenizer.train([text[:cut]], vocab_size)
        train, val = tok.encode_array(text[:cut]), tok.encode_array(text[cut:])
        dtype = token_dtype(tok.vocab_size)
        with atomic_path(tokens_path) as tmp:
            np.concatenate([train, val]).astype(dtype).tofile(tmp)
        meta = {**key, "dtype": dtype.name, "n_tokens": len(train) + len(val),
                "n_train": len(train), "tokenizer": tok.to_dict()}
        atomic_write_text(meta_path, json.dumps(meta, ensure_ascii=False) + "\n")
    tok = tokenizer_from_dict(meta["tokenizer"])
    tokens = np.memmap(tokens_path, dtype=np.dtype(meta["dtype"]), mode="r")
    if len(tokens) != meta["n_tokens"]:
        raise MiniGPTError(f"token file {tokens_path} is damaged; delete it to rebuild")
    return tokens, meta["n_train"], tok


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


@dataclass
class Splits:
    """Contiguous train / validation views of one token array (no copy)."""

    train: np.ndarray
    val: np.ndarray

    @classmethod
    def from_tokens(cls, tokens: np.ndarray, val_fraction: float = 0.1) -> Splits:
        n = int((1 - val_fraction) * len(tokens))  # the lesson's int(0.9 * len(data))
        return cls(train=tokens[:n], val=tokens[n:])

    def check(self, block_size: int) -> None:
        """Each split needs one window of block_size inputs plus the shifted target."""
        for name, part in (("train", self.train), ("validation", self.val)):
            if len(part) < block_size + 1:
                raise MiniGPTError(
                    f"the {name} split has {len(part)} tokens, fewer than block_size + 1 = "
                    f"{block_size + 1}; use a longer text or a smaller --block-size"
                )


def load_corpus(text: str | Path, tokenizer: str, vocab_size: int,
                val_fraction: float) -> tuple[Splits, AnyTokenizer, dict]:
    """The training data, its tokenizer and a description of it, from

    - a text file and tokenizer 'char': its characters (load_tokens), the last val_fraction of
      the tokens held out;
    - a text file and tokenizer 'bpe': a byte-level BPE of vocab_size tokens trained on the
      text's first 1 - val_fraction (the training split; see load_bpe_tokens);
    - a folder written by `minigpt prepare`: its shards and its tokenizer as prepared
      (`tokenizer` and `vocab_size` are not used), the last val_fraction of all its tokens
      held out.

    The description has text, tokens, train_tokens, val_tokens, tokenizer (the kind used) and
    vocab_size.
    """
    path = Path(text)
    if is_prepared(path):
        tokens, tok = open_prepared(path)
        splits = Splits.from_tokens(tokens, val_fraction)
    elif tokenizer == "bpe":
        if not path.is_file():
            raise MiniGPTError(f"text file not found: {path}")
        tokens, n_train, tok = load_bpe_tokens(path, vocab_size, val_fraction)
        splits = Splits(train=tokens[:n_train], val=tokens[n_train:])
    elif tokenizer == "char":
        tokens, tok = load_tokens(path)
        splits = Splits.from_tokens(tokens, val_fraction)
    else:
        raise MiniGPTError(f"tokenizer must be char or bpe, got {tokenizer!r}")
    info = {"text": str(path), "tokens": len(tokens), "train_tokens": len(splits.train),
            "val_tokens": len(splits.val), "tokenizer": tok.kind, "vocab_size": tok.vocab_size}
    return splits, tok, info


def get_batch(
    data: np.ndarray,
    batch_size: int,
    block_size: int,
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """B random windows of data: x = data[i : i+T], y = data[i+1 : i+T+1], both (B, T) int64.

    The offsets come from `generator`, and the windows are gathered in one fancy-index of the
    (memory-mapped) array: no Python loop over rows.
    """
    ix = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    rows = ix.numpy()[:, None] + np.arange(block_size + 1)  # (B, T+1) positions
    buf = torch.from_numpy(data[rows].astype(np.int64))  # (B, T+1)
    x, y = buf[:, :-1].contiguous(), buf[:, 1:].contiguous()  # (B, T) each, y shifted by one
    if torch.device(device).type == "cuda":
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(
            device, non_blocking=True
        )
    return x.to(device), y.to(device)


class Batches:
    """The lesson's `get_batch(split)`: seeded random batches from the train or val split.

    Training batches come from numbered streams, one generator each: stream 0 is seeded with
    `seed`, stream s with seed + 1,000,003 s. A step made of several micro-batches (gradient
    accumulation, or several processes) draws micro-batch k from `streams[k]`; one process
    accumulating 4 micro-batches and 4 processes taking one each see the same batches."""

    def __init__(self, splits: Splits, batch_size: int, block_size: int, seed: int = 1337,
                 device: str | torch.device = "cpu", streams: tuple[int, ...] = (0,)):
        splits.check(block_size)
        self.splits = splits
        self.batch_size = batch_size
        self.block_size = block_size
        self.device = device
        self.streams = tuple(streams)
        # separate generators, so how often we evaluate never changes the training batches
        self.generators = {"val": torch.Generator().manual_seed(seed + 1)}
        for s in self.streams:
            self.generators[f"train{s}"] = torch.Generator().manual_seed(seed + 1_000_003 * s)

    def get_batch(self, split: str, micro: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y), each (B, T): from the val stream, or from this step's micro-th train stream."""
        if split not in ("train", "val"):
            raise MiniGPTError(f"split must be 'train' or 'val', got {split!r}")
        data = self.splits.train if split == "train" else self.splits.val
        key = f"train{self.streams[micro]}" if split == "train" else "val"
        return get_batch(data, self.batch_size, self.block_size, self.generators[key],
                         self.device)
