"""Tokenizers, saved as JSON (never pickled): characters (the lesson's) or byte-level BPE.

`CharTokenizer` is the lesson's tokenizer (`chars = sorted(set(text))`, `stoi`, `itos`) as a small
class that knows how to save itself and how to say which characters it has never seen.
`BPETokenizer` is a byte-level BPE trained with Hugging Face `tokenizers` (offline): its first 256
tokens are the 256 bytes, so it encodes any text and decodes back to exactly that text.

Both have the same surface: `kind`, `vocab_size`, `encode`, `encode_array` (fast, for megabytes),
`decode`, `decode_stream` (text as soon as it is whole, for streaming), `can_encode`, `to_dict`,
`from_dict`, `save`, `load`; `tokenizer_from_dict` and `load_tokenizer` pick the class by `kind`.
"""

from __future__ import annotations

import codecs
import itertools
import json
import logging
import os
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import tiktoken
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from minigpt.errors import MiniGPTError
from minigpt.files import atomic_write_text

log = logging.getLogger("minigpt")

MIN_BPE_VOCAB = 257  # the 256 byte tokens and at least one merge
# 4x the largest vocabularies in use; `tokenizers` sizes its tables by vocab_size up front (5e9
# aborted the process, out of memory)
MAX_BPE_VOCAB = 1 << 20
# long texts are trained on in pieces of about this size (`tokenizers` trains 2x slower on 64 K
# pieces than on 1 K ones), and encoded in larger pieces, one a thread
TRAIN_PIECE_CHARS = 1 << 10
# a run of letters or of spaces longer than this is trained on in pieces of this size:
# `tokenizers`' training time grows with the square of a word's length (80 K letters: 3.5 s)
TRAIN_WORD_CHARS = 256
_LONG_RUN = re.compile(rf"\S{{{TRAIN_WORD_CHARS}}}(?=\S)|\s{{{TRAIN_WORD_CHARS}}}(?=\s)")
ENCODE_PIECE_CHARS = 1 << 16
# GPT-2's pre-tokenization, the regex of the ByteLevel pre-tokenizer that BPE is trained with
GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_SURROGATE = re.compile("[\ud800-\udfff]")

# A line break between two characters that are neither space nor control: byte-level
# pre-tokenization always splits there (a whitespace run always ends at such a break, and no
# pre-token runs through it), so texts cut just after it encode to the same tokens apart as whole.
_BOUNDARY = re.compile(r"(?<=[!-~\w])\n(?=[!-~\w])")


def check_bpe_vocab(vocab_size) -> None:
    """A vocabulary size a byte-level BPE can be trained to, or a one-line error."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) \
            or not MIN_BPE_VOCAB <= vocab_size <= MAX_BPE_VOCAB:
        raise MiniGPTError(f"a byte-level BPE's vocab_size must be at least {MIN_BPE_VOCAB} "
                           f"(256 bytes and one merge) and at most {MAX_BPE_VOCAB:,}, "
                           f"got {vocab_size!r}")


def last_boundary(text: str, end: int | None = None) -> int:
    """Index just after the last safe line break (see _BOUNDARY) before `end`, or 0 if none."""
    i = text.rfind("\n", 0, end)
    while i >= 0 and not _BOUNDARY.match(text, i):
        i = text.rfind("\n", 0, i)
    return i + 1  # 0 when none was found


def split_at_boundaries(text: str, size: int) -> list[str]:
    """`text` in pieces of about `size` characters, each cut just after a safe line break, so
    that encoding the pieces one by one gives the tokens of the whole (a piece is longer where
    the text has no such break)."""
    pieces, start = [], 0
    while len(text) - start > size:
        cut = last_boundary(text, start + size)
        if cut <= start:  # no break in the window: take the next one after it, if any
            found = _BOUNDARY.search(text, start + size)
            cut = found.end() if found else len(text)
        pieces.append(text[start:cut])
        start = cut
    if start < len(text) or not pieces:
        pieces.append(text[start:])
    return pieces


def cut_long_runs(text: str) -> list[str]:
    """`text` cut after every TRAIN_WORD_CHARS characters of a run without a space (or of
    spaces) where the run goes on: one piece for any text whose runs are no longer."""
    cuts = [m.end() for m in _LONG_RUN.finditer(text)]
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True) if b > a]


def _read_tokenizer_file(path: str | Path, from_dict: Callable):
    try:
        return from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, ValueError) as e:
        raise MiniGPTError(f"cannot read tokenizer {path}: {e}") from None


class _Tokenizer:
    """What both kinds share, through to_dict / from_dict: save (atomically) and load as JSON,
    equality and the repr."""

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: str | Path):
        return _read_tokenizer_file(path, cls.from_dict)

    def __eq__(self, other) -> bool:
        return isinstance(other, type(self)) and self.to_dict() == other.to_dict()

    def unknown(self, i):
        """decode's error for an id it has no text for."""
        raise MiniGPTError(f"id {int(i)} is outside this tokenizer's vocabulary (0 to "
                           f"{self.vocab_size - 1}): made by another run's model?")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


def shown_char(c: str) -> str:
    """A character as an error names it: its repr, or its code point and name where the repr
    shows nothing readable (a combining accent, a zero-width or other format character, a
    space other than ' ')."""
    if unicodedata.category(c) in ("Mn", "Me", "Cf", "Zs") and c != " ":
        return f"U+{ord(c):04X} {unicodedata.name(c, '')}".rstrip()
    return repr(c)


class CharTokenizer(_Tokenizer):
    """Maps each character of a fixed alphabet to an integer id and back."""

    kind = "char"

    def __init__(self, chars: str | list[str]):
        chars = list(chars)
        if len(set(chars)) != len(chars):
            raise MiniGPTError("a character tokenizer's alphabet must not repeat characters")
        if any(len(c) != 1 for c in chars):
            raise MiniGPTError("a character tokenizer's alphabet must be single characters")
        _unicode("".join(chars))  # (a lone surrogate has no UTF-8 bytes: bits per byte failed)
        self.chars = chars
        self.stoi = {ch: i for i, ch in enumerate(chars)}
        self.itos = dict(enumerate(chars))
        codes = np.array([ord(c) for c in chars], dtype=np.uint32)  # (V,) code points
        self._order = np.argsort(codes)  # (V,) ids in code-point order
        self._sorted_codes = codes[self._order]  # (V,)

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
            return [self.stoi[c] for c in _text(text)]
        except KeyError:
            unseen = sorted(set(text) - self.stoi.keys())
            shown = ", ".join(map(shown_char, unseen[:10]))
            more = f" and {len(unseen) - 10} more" if len(unseen) > 10 else ""
            raise MiniGPTError(f"text has {len(unseen)} character(s) outside the vocabulary: "
                               f"{shown}{more}") from None

    def encode_array(self, text: str) -> np.ndarray:
        """encode(text) as an int64 array, vectorised for long texts: the text's code points
        (as UTF-32) looked up among the alphabet's sorted code points."""
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")  # (N,)
        if not len(codes) or not self.chars:
            return np.array(self.encode(text), dtype=np.int64)  # empty, or an error
        pos = np.searchsorted(self._sorted_codes, codes).clip(max=self.vocab_size - 1)  # (N,)
        if not np.array_equal(self._sorted_codes[pos], codes):
            self.encode(text)  # raises, naming the unseen characters
        return self._order[pos].astype(np.int64, copy=False)  # (N,)

    def can_encode(self, text: str) -> bool:
        return set(text) <= self.stoi.keys()

    def decode(self, ids) -> str:
        return "".join(self.decode_stream(ids))

    def decode_stream(self, ids: Iterable[int]) -> Iterator[str]:
        """The text of each token as it comes (one character per token)."""
        return (self.itos.get(_id(i)) or self.unknown(i) for i in ids)

    def byte_lengths(self) -> np.ndarray:
        """(V,) the UTF-8 bytes each id stands for: what bits per byte divides by."""
        return np.array([len(c.encode("utf-8")) for c in self.chars], dtype=np.int64)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "chars": "".join(self.chars)}

    @classmethod
    def from_dict(cls, d: dict) -> CharTokenizer:
        if d.get("kind") != cls.kind or not isinstance(d.get("chars"), str):
            raise MiniGPTError("not a character tokenizer description (expected kind 'char')")
        return cls(d["chars"])


def byte_symbols() -> dict[str, int]:
    """The byte-level alphabet: which byte each of its 256 symbols stands for. Bytes that are
    printable Latin-1 characters stand for themselves; the other 68 (controls, space, DEL, NBSP,
    soft hyphen) take the characters from U+0100 on, in byte order (GPT-2's scheme, which the
    `tokenizers` ByteLevel pre-tokenizer uses)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [b for b in range(256) if b not in printable]
    return {chr(b): b for b in printable} | {chr(0x100 + n): b for n, b in enumerate(others)}


class BPETokenizer(_Tokenizer):
    """Byte-level BPE: text -> UTF-8 bytes -> merged byte pairs. Hugging Face `tokenizers`
    trains it and saves it (tokenizer.json, which transformers reads); `tiktoken` encodes with
    the same vocabulary, 4-5x faster (a token's id is its merge's rank, so both merge alike:
    tests/test_bpe.py holds them to the same ids).

    Any text encodes (the 256 single bytes are in the vocabulary), and decoding the ids of a
    text gives that text back. Ids that end part-way through a character's bytes decode with
    U+FFFD in its place; `decode_stream` holds such a character back until it is whole.
    """

    kind = "bpe"

    def __init__(self, hf: Tokenizer):
        if not isinstance(hf.pre_tokenizer, pre_tokenizers.ByteLevel):
            raise MiniGPTError("not a byte-level BPE tokenizer (its pre-tokenizer is not "
                               "ByteLevel)")
        self.hf = hf
        symbols = byte_symbols()
        try:  # id -> the bytes it stands for
            self._bytes = [bytes(symbols[c] for c in hf.id_to_token(i))
                           for i in range(hf.get_vocab_size())]
        except (KeyError, TypeError):
            raise MiniGPTError("not a byte-level BPE tokenizer (a token is not made of the "
                               "256 byte symbols, or its ids have gaps)") from None
        self._encoder = tiktoken.Encoding(
            "minigpt-bpe", pat_str=GPT2_SPLIT, special_tokens={},
            mergeable_ranks={b: i for i, b in enumerate(self._bytes)})

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> BPETokenizer:
        """Learn merges from `texts` (any iterable of strings: lines, chunks, whole files)
        until the vocabulary has vocab_size tokens, or no pair is left to merge. The same
        texts give the same tokenizer. Long texts are fed in pieces cut at safe line breaks,
        which count the same words as the whole, and within runs longer than TRAIN_WORD_CHARS
        without a space."""
        check_bpe_vocab(vocab_size)
        if isinstance(texts, str):  # (one text, not its characters as texts)
            raise MiniGPTError("texts must be an iterable of strings: [text] for one text")
        hf = Tokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()  # for other readers of tokenizer.json; see decode
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      special_tokens=[])
        pieces = (w for text in texts
                  for p in split_at_boundaries(_unicode(text), TRAIN_PIECE_CHARS)
                  for w in cut_long_runs(p))
        hf.train_from_iterator(pieces, trainer=trainer)
        if hf.get_vocab_size() < vocab_size:
            log.warning(f"the BPE has {hf.get_vocab_size():,} tokens, not the {vocab_size:,} "
                        f"asked: its text has no more pairs to merge")
        return cls(hf)

    @property
    def vocab_size(self) -> int:
        return len(self._bytes)

    def encode(self, text: str) -> list[int]:
        return self._encoder.encode_ordinary(_unicode(_text(text)))

    def encode_array(self, text: str) -> np.ndarray:
        """encode(text) as an int64 array; a long text is encoded in pieces cut at safe line
        breaks (the same tokens), one a thread."""
        pieces = split_at_boundaries(_unicode(text), ENCODE_PIECE_CHARS)
        ids = self._encoder.encode_ordinary_batch(pieces, num_threads=os.cpu_count() or 1)
        return np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64,
                           count=sum(map(len, ids)))  # (N,)

    def can_encode(self, text: str) -> bool:
        """Always: every text is a sequence of bytes."""
        return True

    def decode(self, ids) -> str:
        return self.to_bytes(ids).decode("utf-8", errors="replace")

    def to_bytes(self, ids) -> bytes:
        """The UTF-8 bytes the ids stand for."""
        return b"".join(self._bytes[i] if 0 <= i < self.vocab_size else self.unknown(i)
                        for i in map(_id, ids))

    def byte_lengths(self) -> np.ndarray:
        """(V,) the UTF-8 bytes each id stands for: what bits per byte divides by."""
        return np.array([len(b) for b in self._bytes], dtype=np.int64)

    def decode_stream(self, ids: Iterable[int]) -> Iterator[str]:
        """The text of a stream of ids, each piece as soon as its characters are whole (a
        character whose bytes are split across tokens waits for its last byte)."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        for i in ids:
            if piece := decoder.decode(self.to_bytes((i,))):
                yield piece
        if tail := decoder.decode(b"", final=True):
            yield tail

    def to_dict(self) -> dict:
        return {"kind": self.kind, "tokenizer": json.loads(self.hf.to_str())}

    @classmethod
    def from_dict(cls, d: dict) -> BPETokenizer:
        if d.get("kind") != cls.kind or not isinstance(d.get("tokenizer"), dict):
            raise MiniGPTError("not a BPE tokenizer description (expected kind 'bpe')")
        try:
            hf = Tokenizer.from_str(json.dumps(d["tokenizer"]))
        except Exception as e:  # tokenizers raises plain Exception
            raise MiniGPTError(f"not a valid BPE tokenizer: {str(e).splitlines()[0]}") from None
        return cls(hf)


def _text(text: str) -> str:
    """encode's text, or one error naming what it was given instead (a list of texts, say)."""
    if not isinstance(text, str):
        raise MiniGPTError(f"encode takes a str, got {type(text).__name__}")
    return text


def _id(i) -> int:
    """One of decode's ids, or one error where it is none (a row of generate's (B, T) batch,
    where the batch was given whole)."""
    try:
        if getattr(i, "ndim", 0) == 0:  # (a tensor or array of one id, but no row of them)
            return int(i)
    except (TypeError, ValueError):
        pass
    shape = f" of shape {tuple(i.shape)}" if hasattr(i, "shape") else ""
    raise MiniGPTError(f"decode takes one sequence of token ids (of generate's (B, T) batch, a "
                       f"row: ids[0].tolist()), got an element of type {type(i).__name__}{shape}")


def _unicode(text: str) -> str:
    """The text, if UTF-8 can hold it (a lone surrogate cannot: tiktoken would encode it as
    U+FFFD, and it would not decode back)."""
    if _SURROGATE.search(text):
        raise MiniGPTError("text is not valid Unicode (it has a lone surrogate)")
    return text


TOKENIZERS = {"char": CharTokenizer, "bpe": BPETokenizer}
AnyTokenizer = CharTokenizer | BPETokenizer


def tokenizer_from_dict(d: dict) -> AnyTokenizer:
    """The tokenizer a to_dict() describes, of whichever kind it names."""
    kind = d.get("kind") if isinstance(d, dict) else None
    if kind not in TOKENIZERS:
        raise MiniGPTError(f"unknown tokenizer kind {kind!r} (expected one of "
                           f"{', '.join(TOKENIZERS)})")
    return TOKENIZERS[kind].from_dict(d)


def load_tokenizer(path: str | Path) -> AnyTokenizer:
    """A tokenizer saved with save(), of either kind."""
    return _read_tokenizer_file(path, tokenizer_from_dict)
