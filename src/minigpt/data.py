"""The corpus on its way to batches: download + verify + cache, encode once to a memory-mapped
uint16 token file, split contiguously 90/10, and draw random (x, y) batches.

    text file -> CharTokenizer -> <text>.tokens.u16 (memmap) -> train / val views -> get_batch
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
from minigpt.errors import MiniGPTError
from minigpt.tokenizer import CharTokenizer

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


def token_file_paths(text_path: Path) -> tuple[Path, Path]:
    """Where the token file and its description live: beside the text, else in the cache."""
    folder = text_path.parent if os.access(text_path.parent, os.W_OK) else cache_dir() / "tokens"
    stem = text_path.name if folder == text_path.parent else sha256_file(text_path)[:16]
    return folder / f"{stem}.tokens.u16", folder / f"{stem}.tokens.json"


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
        ids = np.array(tok.encode(text), dtype=TOKEN_DTYPE)
        with atomic_path(tokens_path) as tmp:
            ids.tofile(tmp)
        meta = {"text_sha256": digest, "n_tokens": len(ids), "tokenizer": tok.to_dict()}
        atomic_write_text(meta_path, json.dumps(meta, ensure_ascii=False) + "\n")
    tok = CharTokenizer.from_dict(meta["tokenizer"])
    tokens = np.memmap(tokens_path, dtype=TOKEN_DTYPE, mode="r")
    if len(tokens) != meta["n_tokens"]:
        raise MiniGPTError(f"token file {tokens_path} is damaged; delete it to rebuild")
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
    """The lesson's `get_batch(split)`: seeded random batches from the train or val split."""

    def __init__(self, splits: Splits, batch_size: int, block_size: int, seed: int = 1337,
                 device: str | torch.device = "cpu"):
        splits.check(block_size)
        self.splits = splits
        self.batch_size = batch_size
        self.block_size = block_size
        self.device = device
        # one stream per split, so how often we evaluate never changes the training batches
        self.generators = {
            "train": torch.Generator().manual_seed(seed),
            "val": torch.Generator().manual_seed(seed + 1),
        }

    def get_batch(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if split not in self.generators:
            raise MiniGPTError(f"split must be 'train' or 'val', got {split!r}")
        data = self.splits.train if split == "train" else self.splits.val
        return get_batch(data, self.batch_size, self.block_size, self.generators[split],
                         self.device)
