"""Character tokenizer: one token per distinct character, sorted, saved as JSON (never pickled).

This is the lesson's tokenizer (`chars = sorted(set(text))`, `stoi`, `itos`) as a small class
that knows how to save itself and how to say which characters it has never seen.
"""

from __future__ import annotations

import json
from pathlib import Path

from minigpt.atomic import atomic_write_text
from minigpt.errors import MiniGPTError


class CharTokenizer:
    """Maps each character of a fixed alphabet to an integer id and back."""

    kind = "char"

    def __init__(self, chars: str | list[str]):
        chars = list(chars)
        if len(set(chars)) != len(chars):
            raise MiniGPTError("a character tokenizer's alphabet must not repeat characters")
        if any(len(c) != 1 for c in chars):
            raise MiniGPTError("a character tokenizer's alphabet must be single characters")
        self.chars = chars
        self.stoi = {ch: i for i, ch in enumerate(chars)}
        self.itos = dict(enumerate(chars))

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """The lesson's vocabulary: every distinct character of `text`, sorted."""
        if not text:
            raise MiniGPTError("cannot build a vocabulary from an empty text")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            unseen = sorted(set(text) - self.stoi.keys())
            shown = ", ".join(repr(c) for c in unseen[:10])
            more = f" and {len(unseen) - 10} more" if len(unseen) > 10 else ""
            raise MiniGPTError(
                f"text has {len(unseen)} character(s) outside the vocabulary: {shown}{more}"
            ) from None

    def decode(self, ids) -> str:
        return "".join(self.itos[int(i)] for i in ids)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "chars": "".join(self.chars)}

    @classmethod
    def from_dict(cls, d: dict) -> CharTokenizer:
        if d.get("kind") != cls.kind or not isinstance(d.get("chars"), str):
            raise MiniGPTError("not a character tokenizer description (expected kind 'char')")
        return cls(d["chars"])

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> CharTokenizer:
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError) as e:
            raise MiniGPTError(f"cannot read tokenizer {path}: {e}") from None

    def __eq__(self, other) -> bool:
        return isinstance(other, CharTokenizer) and self.chars == other.chars

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"
