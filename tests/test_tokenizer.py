"""CharTokenizer: the lesson's sorted-character vocabulary, encode_array as encode, JSON round
trip, clear errors."""

import json
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minigpt import CharTokenizer, MiniGPTError


@settings(deadline=None)  # (a loaded CI machine can stall one example past 200 ms)
@given(st.text(min_size=1))
def test_round_trip_any_text_over_the_sorted_distinct_characters(text):
    tok = CharTokenizer.from_text(text)
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.chars == sorted(set(text))
    assert [tok.stoi[c] for c in tok.chars] == list(range(tok.vocab_size))


@settings(deadline=None)
@given(st.text(min_size=1), st.text())
def test_unseen_characters_are_named_and_encode_array_is_encode(known, other):
    tok = CharTokenizer.from_text(known)
    assert np.array_equal(tok.encode_array(known), np.array(tok.encode(known)))
    unseen = set(other) - set(known)
    assert tok.can_encode(other) == (not unseen)
    if not unseen:
        assert tok.decode(tok.encode(other)) == other
        assert np.array_equal(tok.encode_array(other), np.array(tok.encode(other), dtype=int))
        return
    with pytest.raises(MiniGPTError) as e:
        tok.encode(other)
    first = sorted(unseen)[0]  # named by its repr, or its code point where that is invisible
    assert repr(first) in str(e.value) or f"U+{ord(first):04X} " in str(e.value)
    with pytest.raises(MiniGPTError, match="outside the vocabulary"):
        tok.encode_array(other)


@settings(deadline=None)
@given(st.lists(st.characters(blacklist_categories=("Cs",)), min_size=1, unique=True),
       st.randoms(use_true_random=False))
def test_encode_array_is_encode_for_an_alphabet_in_any_order(chars, rng):
    """(an alphabet given in code, or a saved one, need not be sorted)"""
    tok = CharTokenizer(chars)
    text = "".join(rng.choices(chars, k=3 * len(chars))) + "".join(chars)
    assert np.array_equal(tok.encode_array(text), np.array(tok.encode(text), dtype=np.int64))


def test_an_invisible_character_outside_the_vocabulary_is_named():
    tok = CharTokenizer.from_text("abcé")  # é precomposed; e + U+0301 is another text
    for text, name in [("a\u0301", "U+0301 COMBINING ACUTE ACCENT"),
                       ("a\u200bb", "U+200B ZERO WIDTH SPACE"),
                       ("a\u00a0b", "U+00A0 NO-BREAK SPACE")]:
        with pytest.raises(MiniGPTError, match=f"outside the vocabulary: {re.escape(name)}$"):
            tok.encode(text)


def test_saved_as_json_and_loaded_back(tmp_path):
    tok = CharTokenizer.from_text("hello, world\n")
    tok.save(tmp_path / "tok.json")
    saved = json.loads((tmp_path / "tok.json").read_text())
    assert saved == {"kind": "char", "chars": "\n ,dehlorw"}
    assert CharTokenizer.load(tmp_path / "tok.json") == tok


def test_byte_lengths_are_the_utf8_bytes_of_each_character():
    """The oracle: Python's own UTF-8 encoding; by hand, a is 1 byte, é 2, 日 3, 😀 4."""
    text = "aé日😀"
    tok = CharTokenizer.from_text(text)
    lengths = tok.byte_lengths()
    assert [int(lengths[i]) for i in tok.encode(text)] == [1, 2, 3, 4]
    assert sum(int(lengths[i]) for i in tok.encode(text)) == len(text.encode("utf-8")) == 10


def test_empty_text_and_bad_file_are_clear_errors(tmp_path):
    with pytest.raises(MiniGPTError, match="empty"):
        CharTokenizer.from_text("")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(MiniGPTError, match="cannot read tokenizer"):
        CharTokenizer.load(tmp_path / "bad.json")


@pytest.mark.parametrize("chars, said", [("aba", "must not repeat characters"),
                                         (["a", "bc"], "must be single characters"),
                                         (["a", ""], "must be single characters")])
def test_an_alphabet_must_be_distinct_single_characters(chars, said):
    with pytest.raises(MiniGPTError, match=said):
        CharTokenizer(chars)


@pytest.mark.parametrize("n_unseen", [9, 10, 11, 12])
def test_ten_unseen_characters_are_named_and_the_rest_counted(n_unseen):
    unseen = "bcdefghijklmnop"[:n_unseen]
    with pytest.raises(MiniGPTError) as e:
        CharTokenizer("a").encode("a" + unseen)
    said = str(e.value)
    assert said.startswith(f"text has {n_unseen} character(s) outside the vocabulary: ")
    assert [c for c in unseen if repr(c) in said] == list(unseen[:10])
    assert said.endswith(f" and {n_unseen - 10} more" if n_unseen > 10 else repr(unseen[-1]))


def test_a_description_without_its_characters_as_text_is_a_clear_error():
    for bad in ({"kind": "char", "chars": None}, {"kind": "char", "chars": 5}, {"kind": "char"}):
        with pytest.raises(MiniGPTError, match="not a character tokenizer description"):
            CharTokenizer.from_dict(bad)


def test_a_tokenizer_equals_only_a_tokenizer_of_its_kind_and_alphabet():
    tok = CharTokenizer("abc")
    assert tok == CharTokenizer.from_text("cab") and tok != CharTokenizer("abd")
    assert tok != tok.to_dict() and tok != "abc" and tok != None  # noqa: E711


def test_a_tokenizer_says_its_kind_and_vocabulary_size():
    assert repr(CharTokenizer.from_text("hello")) == "CharTokenizer(vocab_size=4)"


def test_a_plain_space_outside_the_vocabulary_is_named_as_its_repr():
    """Only spaces other than ' ' are named by code point (shown_char): ' ' reads as itself."""
    with pytest.raises(MiniGPTError, match=r"outside the vocabulary: ' '$"):
        CharTokenizer.from_text("ab").encode("a b")
