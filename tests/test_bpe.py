"""BPETokenizer: any Unicode round-trips, training is deterministic, pieces encode like the
whole, JSON round trip, kind dispatch, clear errors; and a BPE corpus of TinyShakespeare that
trains a model and samples from it."""

import json
import math
import random
import re
from functools import lru_cache

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from conftest import tiny_config
from minigpt import BPETokenizer, CharTokenizer, MiniGPT, MiniGPTError, get_batch
from minigpt.data import load_corpus, prepared_text
from minigpt.diagnostics.attention import token_labels
from minigpt.evaluate import target_bytes
from minigpt.lesson import train_step
from minigpt.sample import sample_text
from minigpt.tokenizer import (
    ENCODE_PIECE_CHARS,
    MAX_BPE_VOCAB,
    MIN_BPE_VOCAB,
    TRAIN_WORD_CHARS,
    byte_symbols,
    check_bpe_vocab,
    cut_long_runs,
    load_tokenizer,
    split_at_boundaries,
    tokenizer_from_dict,
)

# characters that stress byte-level BPE: multi-byte, emoji (4 bytes, and a ZWJ sequence),
# combining marks, every kind of space and line break the pre-tokenizer treats specially
TRICKY = ["a", "b", "s", "1", "'", " ", "  ", "\n", "\r", "\t", "\u3000", "\x85", "\x1c", "é",
          "e\u0301", "😀", "👩\u200d💻", "ß", "中", "\u2028", ".", "_"]


def tricky_corpus(n: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice(TRICKY) for _ in range(n))


@lru_cache(maxsize=1)
def trained() -> BPETokenizer:
    """One tokenizer for the property tests, trained with merges across all of TRICKY."""
    return BPETokenizer.train([tricky_corpus(20_000), "the quick brown fox\n" * 50], 400)


any_text = st.one_of(
    st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00")),
    st.lists(st.sampled_from(TRICKY)).map("".join),
)


@settings(max_examples=200, deadline=None)
@given(any_text)
def test_round_trip_any_unicode(text):
    tok = trained()
    ids = tok.encode(text)
    assert ids == tok.hf.encode(text).ids  # tiktoken's ids are the trainer's library's
    assert tok.decode(ids) == text
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.hf.decode(ids) == text  # the library's own ByteLevel decoder agrees
    assert np.array_equal(tok.encode_array(text), np.array(ids, dtype=np.int64))
    assert "".join(tok.decode_stream(ids)) == text


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(TRICKY), max_size=80).map("".join), st.integers(1, 8))
def test_pieces_cut_at_boundaries_encode_like_the_whole(text, size):
    tok = trained()
    pieces = split_at_boundaries(text, size)
    assert "".join(pieces) == text
    assert all(p.endswith("\n") for p in pieces[:-1])  # each cut just after a line break
    apart = [i for p in pieces for i in tok.hf.encode(p).ids]
    assert apart == tok.encode(text)


@settings(max_examples=200, deadline=None)
@example([(" ", TRAIN_WORD_CHARS), ("a", 1)])  # a run just as long stays whole: " a" is a word
@given(st.lists(st.tuples(st.sampled_from(["a", "é", "😀", ".", " ", "\n", "\u3000"]),
                          st.integers(1, 2 * TRAIN_WORD_CHARS + 10))))
def test_training_cuts_long_runs_and_nothing_else(runs):
    text = "".join(c * n for c, n in runs)
    pieces = cut_long_runs(text)
    assert "".join(pieces) == text
    longest = max((len(r) for r in re.findall(r"\S+|\s+", text)), default=0)
    if longest <= TRAIN_WORD_CHARS:  # a text of ordinary words is one piece, as it was
        assert pieces == ([text] if text else [])
    for p in pieces:
        assert all(len(r) <= TRAIN_WORD_CHARS for r in re.findall(r"\S+|\s+", p))


def test_a_long_word_trains_its_merges():  # 100,000 letters: the trainer took 5 s whole
    tok = BPETokenizer.train(["x" * 100_000, "the cat sat\n" * 20], 280)
    assert len(tok.encode("x" * 256)) <= 16


def test_byte_symbols_are_the_librarys_alphabet():
    symbols = byte_symbols()
    assert set(symbols) == set(pre_tokenizers.ByteLevel.alphabet())
    assert sorted(symbols.values()) == list(range(256))
    tok = trained()  # every single-byte token stands for the byte the library gives it
    for text in ["a", " ", "\n", "é", "😀"]:
        assert tok.to_bytes(tok.encode(text)) == text.encode("utf-8")


def test_training_is_deterministic_and_depends_on_the_text():
    texts = [tricky_corpus(5000, seed=1), "to be or not to be\n" * 30]
    a, b = BPETokenizer.train(texts, 300), BPETokenizer.train(iter(texts), 300)
    assert a == b and a.to_dict() == b.to_dict()
    other = BPETokenizer.train([tricky_corpus(5000, seed=2)], 300)
    assert other != a
    # fed in pieces cut at safe breaks, the trainer learns what it learns from the whole text
    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator(["".join(texts)], trainer=trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[], show_progress=False))
    assert BPETokenizer(hf) == BPETokenizer.train(["".join(texts)], 300)


def test_vocab_size_is_respected(caplog):
    text = tricky_corpus(20_000, seed=3)
    for n in (257, 300, 350):
        assert BPETokenizer.train([text], n).vocab_size == n
    assert not caplog.records
    small = BPETokenizer.train(["abab"], 1000)  # too few pairs to reach 1000: stops early
    assert 257 <= small.vocab_size < 1000
    assert caplog.messages == [f"the BPE has {small.vocab_size:,} tokens, not the 1,000 asked: "
                               f"its text has no more pairs to merge"]


def test_json_round_trip_kind_dispatch_and_a_bad_file(tmp_path):
    tok = trained()
    d = json.loads(json.dumps(tok.to_dict()))
    assert d["kind"] == "bpe"
    back = BPETokenizer.from_dict(d)
    assert back == tok and back.encode("😀 ab\n") == tok.encode("😀 ab\n")
    assert tokenizer_from_dict(d) == tok
    char = CharTokenizer.from_text("hello")
    assert isinstance(tokenizer_from_dict(char.to_dict()), CharTokenizer)
    assert tokenizer_from_dict(char.to_dict()) == char and char != tok
    tok.save(tmp_path / "bpe.json")
    char.save(tmp_path / "char.json")
    assert load_tokenizer(tmp_path / "bpe.json") == tok == BPETokenizer.load(tmp_path / "bpe.json")
    assert load_tokenizer(tmp_path / "char.json") == char
    (tmp_path / "t.json").write_text('{"kind": "bpe", "tokenizer": 3}')
    with pytest.raises(MiniGPTError, match="cannot read tokenizer"):
        load_tokenizer(tmp_path / "t.json")


def test_can_encode_and_labels():
    char = CharTokenizer.from_text("hello world")  # its can_encode: tests/test_tokenizer.py
    assert trained().can_encode("anything at all 😀")
    assert token_labels(char, char.encode("hello")) == list("hello")
    tok = trained()
    labels = token_labels(tok, tok.encode("the quick fox"))
    assert "".join(labels) == "the quick fox" and len(labels) < len("the quick fox")


def test_decode_stream_holds_back_split_characters():
    tok = BPETokenizer.train(["plain ascii text\n" * 20], 260)  # no merge inside the emoji
    ids = tok.encode("ab😀c")
    assert len(ids) > 3 and "\ufffd" in tok.decode(ids[:3])  # a token ends mid-character
    pieces = list(tok.decode_stream(ids))
    assert "".join(pieces) == "ab😀c" and not any("\ufffd" in p for p in pieces)


def test_bits_per_byte_counts_the_bytes_of_targets_that_begin_mid_character():
    """A validation split's first token may be the first byte of a character no merge covers
    (the emoji; é and the CJK are bytes too): its targets then begin mid-character. What bits
    per byte divides by is the UTF-8 bytes those targets stand for, the text's less that one
    byte; decoding them first counts each stray byte as U+FFFD's three (a byte_lengths that
    decoded each token did so, and no run's text had an unmerged character to show it)."""
    tok = BPETokenizer.train(["plain ascii text\n" * 20], 260)  # no merge outside ASCII
    text = "😀 日本 café ☃ text"
    ids = np.array(tok.encode(text))
    assert tok.to_bytes(ids[:1]) == text.encode("utf-8")[:1]  # the targets begin mid-character
    expected = len(text.encode("utf-8")[1:])
    assert len(tok.decode(ids[1:]).encode("utf-8")) > expected  # (the U+FFFDs a decode gives)
    assert target_bytes(ids, tok.byte_lengths()) == expected


def test_an_id_outside_the_vocabulary_is_refused_by_decode_and_decode_stream():
    """As a sample from another run's model would give (decode_stream wrapped -1 around to the
    last token, and raised a bare KeyError for the character tokenizer)."""
    for tok in (CharTokenizer.from_text("abc"), trained()):
        for bad in (-1, tok.vocab_size):
            for decode in (tok.decode, lambda ids, tok=tok: "".join(tok.decode_stream(ids))):
                with pytest.raises(MiniGPTError, match=f"id {bad} is outside"):
                    decode([0, bad])


def test_decode_stream_that_ends_mid_character_says_so_as_decode_does():
    """Ids that stop after 0xE6, the first of 日's three UTF-8 bytes: the stream's last piece is
    the U+FFFD that Python's own decoder gives those bytes, as decode's is."""
    tok = BPETokenizer.train(["plain ascii text\n" * 20], 260)  # no merge inside 日
    first = tok.encode("日")[0]
    assert tok.to_bytes([first]) == b"\xe6"  # the single byte's token
    ids = tok.encode("ab") + [first]
    expected = b"ab\xe6".decode("utf-8", errors="replace")  # "ab\ufffd"
    assert tok.decode(ids) == expected
    assert "".join(tok.decode_stream(ids)) == expected


def byte_level(vocab: dict[str, int]) -> Tokenizer:
    """A BPE tokenizer of this vocabulary (no merges) behind the ByteLevel pre-tokenizer."""
    hf = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel()
    return hf


@pytest.mark.parametrize("call, message", [
    (lambda: BPETokenizer.train(["abc"], 256), "at least 257"),
    (lambda: BPETokenizer.train(["abc"], 65), "got 65"),
    (lambda: BPETokenizer.train(["abc"], 1 << 21), "at most 1,048,576"),
    (lambda: BPETokenizer.from_dict({"kind": "bpe", "tokenizer": {"model": 1}}),
     "not a valid BPE tokenizer"),
    (lambda: BPETokenizer.from_dict({"kind": "char", "chars": "ab"}), "expected kind 'bpe'"),
    (lambda: BPETokenizer.from_dict({**trained().to_dict(), "kind": "char"}),
     "expected kind 'bpe'"),  # a BPE's description under another kind
    (lambda: BPETokenizer.train("one text, not a list", 300), "texts must be an iterable"),
    (lambda: tokenizer_from_dict({"kind": "wordpiece"}), "unknown tokenizer kind"),
    (lambda: tokenizer_from_dict([]), "unknown tokenizer kind"),
    (lambda: BPETokenizer(Tokenizer(models.BPE())), "not a byte-level BPE"),
    (lambda: BPETokenizer(byte_level({"a b": 0, "c": 1})),  # a plain space, not its symbol Ġ
     "^not a byte-level BPE tokenizer \\(a token is not made of the 256 byte symbols, or its "
     "ids have gaps\\)$"),
    (lambda: BPETokenizer(byte_level({"a": 0, "b": 2})), "or its ids have gaps"),  # no id 1
    (lambda: trained().encode("a\ud800"), "lone surrogate"),
    (lambda: BPETokenizer.train(["ab\ud800c"], 300), "lone surrogate"),  # (was UnicodeEncodeError)
    (lambda: CharTokenizer.from_text("ab\ud800c"), "lone surrogate"),  # (it failed at save)
])
def test_errors_are_clear(call, message):
    with pytest.raises(MiniGPTError, match=message):
        call()


def test_load_corpus_bpe_splits_the_text_and_caches(small_text):
    text = small_text.read_text()
    small_text.write_text(text + "ünïcödé 😀 at the end\n")
    text = small_text.read_text()
    splits, tok, info = load_corpus(small_text, "bpe", 300, 0.25)
    cut = int(0.75 * len(text))
    assert tok.decode(splits.train) == text[:cut] and tok.decode(splits.val) == text[cut:]
    assert info["train_tokens"] + info["val_tokens"] == info["tokens"]
    assert info["tokens"] < len(text) and info["tokenizer"] == "bpe"
    # trained on the training split only: the same as training on that part by hand
    assert tok == BPETokenizer.train([text[:cut]], 300)
    folder = prepared_text(small_text, "bpe", 300, 0.25)
    path = folder / "val-00000.bin"
    stamp = path.stat().st_mtime_ns
    again, tok2, _ = load_corpus(small_text, "bpe", 300, 0.25)
    assert path.stat().st_mtime_ns == stamp and tok2 == tok  # read from the cache
    assert np.array_equal(np.asarray(again.val), np.asarray(splits.val))
    assert json.loads((folder / "index.json").read_text())["dtype"] == "uint16"
    _, tok3, _ = load_corpus(small_text, "bpe", 280, 0.25)  # another size: another folder
    assert tok3.vocab_size == 280 and path.stat().st_mtime_ns == stamp
    assert prepared_text(small_text, "bpe", 280, 0.25) != folder
    with pytest.raises(MiniGPTError, match="at least 257"):
        load_corpus(small_text, "bpe", 65, 0.1)


@pytest.mark.usefixtures("one_thread")  # (one thread, and the count given back after)
def test_bpe_on_tinyshakespeare_trains_and_samples(data_dir):
    text_path = data_dir / "tinyshakespeare" / "input.txt"
    splits, tok, info = load_corpus(text_path, "bpe", 512, 0.1)
    text = text_path.read_text()
    cut = int(0.9 * len(text))
    assert tok.vocab_size == 512 and info["tokens"] < 0.6 * len(text)  # merges compress
    assert tok.decode(splits.train) == text[:cut] and tok.decode(splits.val) == text[cut:]
    torch.manual_seed(0)
    model = MiniGPT(tok.vocab_size, n_embd=32, n_head=2, n_layer=1, block_size=32)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    batch = lambda split: get_batch(splits.train, 16, 32, g)  # noqa: E731
    losses = [train_step(model, opt, batch).item() for _ in range(60)]  # the lesson's step
    assert losses[0] > np.log(512) - 0.5 and np.mean(losses[-10:]) < losses[0] - 1.0
    sample = sample_text(model, tok, "ROMEO:", 40, seed=1)
    assert sample.startswith("ROMEO:") and len(sample) > len("ROMEO:") + 20
    assert sample == sample_text(model, tok, "ROMEO:", 40, seed=1)  # seeded


def test_the_vocabulary_bounds_are_inclusive():
    """"at least 257 ... and at most 1,048,576": both ends are sizes a BPE may have (checked
    without training one of a million tokens)."""
    for fine in (MIN_BPE_VOCAB, MAX_BPE_VOCAB):
        check_bpe_vocab(fine)
    for bad in (MIN_BPE_VOCAB - 1, MAX_BPE_VOCAB + 1, True, 300.0):
        with pytest.raises(MiniGPTError, match=f"got {bad!r}"):
            check_bpe_vocab(bad)


def test_a_line_break_after_a_space_is_no_place_to_cut():
    """Before a word, ' ' and '\\n' are pre-tokens apart; at a text's end ' \\n' is one (a run of
    whitespace that ends the text): a piece cut just after ' \\n' would encode the merge of the
    two, which the whole text does not. split_at_boundaries (and encode_array's pieces of a
    long text) must not cut there."""
    tok = BPETokenizer.train(["x \n\ny \n\n" * 50], 257)
    assert len(tok.encode(" \n")) == 1  # the one merge: ' ' + '\n'
    text = "a \nb x \n\ny\nz"
    for size in range(1, len(text) + 1):
        pieces = split_at_boundaries(text, size)
        assert [i for p in pieces for i in tok.encode(p)] == tok.encode(text), pieces
    long = text * (ENCODE_PIECE_CHARS // len(text) + 2)
    assert tok.encode_array(long).tolist() == tok.encode(long)


def test_a_window_without_a_safe_break_ends_at_the_next_one():
    """"a piece is longer where the text has no such break": only as long as it must be, to
    the first safe break after the window, not the rest of the text."""
    text = "x" * 10 + "\n" + "y\n" * 10 + "z"
    pieces = split_at_boundaries(text, 4)
    assert "".join(pieces) == text and pieces[0] == "x" * 10 + "\n"
    assert max(map(len, pieces[1:])) <= 4


def test_a_bpe_run_reaches_a_target_by_its_loss_per_byte(small_text, tmp_path):
    """Targets are nats per byte of text, as a character model's loss on ASCII text is: a BPE
    run, whose tokens are several bytes each, reaches one that its loss per token is above."""
    from minigpt import train
    from minigpt.files import read_jsonl

    def run(folder, targets):
        cfg = tiny_config(small_text, steps=2, eval_every=2, tokenizer="bpe", vocab_size=300,
                          targets=targets)
        return train(cfg, tmp_path / folder, progress=False).summary

    run("a", "")
    last = read_jsonl(tmp_path / "a" / "metrics.jsonl")[-1]
    per_byte = last["val_bpb"] * math.log(2)
    assert per_byte < last["val_loss"]  # (several bytes a token)
    target = (per_byte + last["val_loss"]) / 2
    assert run("b", f"{target}")["time_to"][f"{target:g}"] is not None
