"""The corpus on its way to batches: download + verify + cache, encode once to a memory-mapped
token file, split contiguously 90/10, and draw random (x, y) batches.

    text file -> CharTokenizer -> <text>.char.tokens.bin (memmap) -> train / val -> get_batch

`load_corpus` is the one entry point for training data: a text file with the char tokenizer (as
above) or a byte-level BPE trained on its training split, or a folder of token shards written by
`minigpt prepare` (minigpt.corpus).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from minigpt.corpus import is_prepared, open_prepared, token_dtype
from minigpt.errors import MiniGPTError
from minigpt.files import atomic_path, atomic_write_text, sha256_file
from minigpt.tokenizer import AnyTokenizer, BPETokenizer, CharTokenizer, tokenizer_from_dict

TINYSHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


def cache_dir() -> Path:
    """`$MINIGPT_DATA_DIR`, else ~/.cache/minigpt."""
    env = os.environ.get("MINIGPT_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "minigpt"


def tinyshakespeare_path() -> Path:
    return cache_dir() / "tinyshakespeare" / "input.txt"


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


def token_file_paths(text_path: Path, tag: str = "char") -> tuple[Path, Path]:
    """Where a text's token file and its description live: beside the text, else (a folder
    that cannot be written) in the cache. The tag names the tokenizer: 'char', or for a BPE,
    say, 'bpe512-val0.1'."""
    folder = text_path.parent if os.access(text_path.parent, os.W_OK) else cache_dir() / "tokens"
    stem = text_path.name if folder == text_path.parent else sha256_file(text_path)[:16]
    return folder / f"{stem}.{tag}.tokens.bin", folder / f"{stem}.{tag}.tokens.json"


def encode_text(text: str, tokenizer: str, vocab_size: int,
                val_fraction: float) -> tuple[np.ndarray, int, AnyTokenizer]:
    """A text's tokens, how many of them are the training split's, and the tokenizer.

    The text is cut at character int((1 - val_fraction) * len(text)). 'char' is the lesson's
    vocabulary, every character of the whole text (and one token per character, so the cut is
    the lesson's int(0.9 * len(data))); 'bpe' learns vocab_size tokens from the training part
    only, so nothing of the held-out tail shapes the tokenizer."""
    cut = int((1 - val_fraction) * len(text))
    if tokenizer == "char":
        tok = CharTokenizer.from_text(text)
    else:
        tok = BPETokenizer.train([text[:cut]], vocab_size)
    train, val = tok.encode_array(text[:cut]), tok.encode_array(text[cut:])
    return np.concatenate([train, val]), len(train), tok


def cached_tokens(text_path: str | Path, tokenizer: str = "char", vocab_size: int = 0,
                  val_fraction: float = 0.1) -> tuple[np.memmap, int, AnyTokenizer]:
    """`encode_text` of a text file, encoded once and kept in a token file beside it (uint16,
    or uint32 past 65,536 tokens), memory-mapped. The file is reused while the text's sha256
    is unchanged, and for BPE also vocab_size and val_fraction (which shape its merges)."""
    text_path = Path(text_path)
    if not text_path.is_file():
        raise MiniGPTError(f"text file not found: {text_path}")
    key = {"text_sha256": sha256_file(text_path), "kind": tokenizer}
    if tokenizer == "bpe":
        key |= {"vocab_size": vocab_size, "val_fraction": val_fraction}
    tag = "char" if tokenizer == "char" else f"bpe{vocab_size}-val{val_fraction:g}"
    tokens_path, meta_path = token_file_paths(text_path, tag)
    meta = _read_json(meta_path)
    if {k: meta.get(k) for k in key} != key or not tokens_path.exists():
        ids, n_train, tok = encode_text(read_text(text_path), tokenizer, vocab_size,
                                        val_fraction)
        dtype = token_dtype(tok.vocab_size)
        with atomic_path(tokens_path) as tmp:
            ids.astype(dtype).tofile(tmp)
        meta = {**key, "dtype": dtype.name, "n_tokens": len(ids), "n_train": n_train,
                "tokenizer": tok.to_dict()}
        atomic_write_text(meta_path, json.dumps(meta, ensure_ascii=False) + "\n")
    tokens = np.memmap(tokens_path, dtype=np.dtype(meta["dtype"]), mode="r")
    if len(tokens) != meta["n_tokens"]:
        raise MiniGPTError(f"token file {tokens_path} is damaged; delete it to rebuild")
    n_train = meta["n_train"] if tokenizer == "bpe" else int((1 - val_fraction) * len(tokens))
    return tokens, n_train, tokenizer_from_dict(meta["tokenizer"])


def load_tokens(text_path: str | Path) -> tuple[np.memmap, CharTokenizer]:
    """The lesson's `data = encode(text)`: a text's characters as tokens (memory-mapped,
    encoded once) and the character tokenizer of the whole text."""
    tokens, _, tok = cached_tokens(text_path, "char")
    return tokens, tok


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

    - a text file: its characters ('char') or a byte-level BPE of vocab_size tokens trained on
      the text's first 1 - val_fraction ('bpe'), the last val_fraction held out (see
      encode_text; the tokens are cached beside the text);
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
    else:
        tokens, n_train, tok = cached_tokens(path, tokenizer, vocab_size, val_fraction)
        splits = Splits(train=tokens[:n_train], val=tokens[n_train:])
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

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every stream's generator state, by name (what a checkpoint keeps)."""
        return {name: g.get_state() for name, g in self.generators.items()}

    def load_state_dict(self, states: dict[str, torch.Tensor]) -> None:
        for name, g in self.generators.items():
            g.set_state(states[name])
