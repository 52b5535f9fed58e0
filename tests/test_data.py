"""The data path: the real file's split sizes, a text prepared once into the cache (its
characters as load_tokens and load_corpus read them), and get_batch. (A bad text file, or one
too short for the block, is one line: test_cli.py's and test_corpus.py's bad input.)"""

import shutil

import numpy as np
import pytest
import torch

from minigpt import (
    Batches,
    MiniGPTError,
    Splits,
    data,
    get_batch,
    load_corpus,
    load_tokens,
    prepare,
    split_loss,
)
from minigpt import lesson as lesson_code
from minigpt.corpus import is_prepared, read_index
from minigpt.data import cache_dir, prepared_text, tinyshakespeare_path


def test_tinyshakespeare_split_sizes(data_dir):
    tokens, tok = load_tokens(tinyshakespeare_path())
    assert len(tokens) == 1_115_394
    assert tok.vocab_size == 65
    splits = Splits.from_tokens(tokens)
    assert (len(splits.train), len(splits.val)) == (1_003_854, 111_540)
    text = tinyshakespeare_path().read_text()
    assert tok.decode(splits.val[:50]) == text[1_003_854:1_003_904]


def test_a_text_is_prepared_once_into_the_cache(small_text):
    (small_text.parent / "small.txt.char.tokens.bin").write_bytes(b"\x01")  # an old format's
    tokens, tok = load_tokens(small_text)
    splits, same, info = load_corpus(small_text, "char", 999, 0.1)  # the same tokens, split
    n = int(0.9 * len(tokens))
    assert same == tok
    assert np.array_equal(splits.train, tokens[:n]) and np.array_equal(splits.val, tokens[n:])
    fingerprint = info.pop("tokens_sha256")  # (the shards' hashes, hashed: checked on resume)
    assert info == {"text": str(small_text), "tokens": len(tokens), "train_tokens": n,
                    "val_tokens": len(tokens) - n, "val_fraction": 0.1, "tokenizer": "char",
                    "vocab_size": tok.vocab_size}
    assert load_corpus(small_text, "char", 0, 0.2)[2]["tokens_sha256"] != fingerprint
    folder = prepared_text(small_text)
    assert folder.parent == cache_dir() / "prepared"
    assert tokens.dtype == np.uint16 and tok.decode(tokens) == small_text.read_text()
    shards = sorted(folder.glob("*.bin"))
    before = [p.stat().st_mtime_ns for p in shards]
    load_tokens(small_text)
    assert [p.stat().st_mtime_ns for p in shards] == before  # not prepared again
    small_text.write_text("abc" * 100)  # a changed text is prepared anew, elsewhere
    tokens2, tok2 = load_tokens(small_text)
    assert tok2.decode(tokens2) == "abc" * 100 and prepared_text(small_text) != folder
    old = shutil.copytree(folder, small_text.parent / "old")  # of an earlier format: refused
    (old / "index.json").write_text((old / "index.json").read_text().replace(
        "minigpt-shards/2", "minigpt-shards/1"))
    with pytest.raises(MiniGPTError, match="prepare the corpus again"):
        read_index(old)


def test_get_batch_shapes_shift_offsets_seeding_and_range():
    data = np.arange(1000, dtype=np.uint16)
    g = torch.Generator().manual_seed(3)
    x, y = get_batch(data, 16, 24, g)
    assert x.shape == y.shape == (16, 24)
    assert x.dtype == y.dtype == torch.int64
    assert torch.equal(y[:, :-1], x[:, 1:])  # y is x shifted by one
    starts = x[:, 0]
    expected = starts[:, None] + torch.arange(24)
    assert torch.equal(x, expected) and torch.equal(y, expected + 1)
    assert int(starts.max()) <= 1000 - 24 - 1  # y never runs past the end
    data = np.arange(200, dtype=np.uint16)
    a = get_batch(data, 8, 10, torch.Generator().manual_seed(1))
    b = get_batch(data, 8, 10, torch.Generator().manual_seed(1))
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    g = torch.Generator().manual_seed(0)
    starts = torch.cat([get_batch(data, 64, 10, g)[0][:, 0] for _ in range(50)])
    assert int(starts.min()) == 0 and int(starts.max()) == 200 - 10 - 1
    # the lesson keeps its data as a tensor: the same batches from it
    lesson = torch.tensor(data.astype(np.int64))
    c = get_batch(lesson, 8, 10, torch.Generator().manual_seed(1))
    assert all(torch.equal(u, v) for u, v in zip(a, c, strict=True))
    torch.manual_seed(1)  # the lesson's own, on the global generator, with the same arguments
    d = lesson_code.get_batch(lesson, 8, 10)
    assert all(torch.equal(u, v) for u, v in zip(a, d, strict=True))


def test_helpers_refuse_what_they_cannot_use_in_one_line(tmp_path):
    model = torch.nn.Module()
    model.p = torch.nn.Parameter(torch.zeros(1))
    with pytest.raises(MiniGPTError, match="a split needs at least 2 tokens"):
        split_loss(model, np.arange(1, dtype=np.uint16), 8)
    with pytest.raises(MiniGPTError, match="sources must be a file, a folder or a glob"):
        prepare([str(tmp_path / "a.txt")], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_batches_uses_separate_streams_per_split():
    splits = Splits.from_tokens(np.arange(5000, dtype=np.uint16))
    a = Batches(splits, 4, 8, seed=5)
    b = Batches(splits, 4, 8, seed=5)
    b.get_batch("val")  # evaluating must not change the training batches
    assert torch.equal(a.get_batch("train")[0], b.get_batch("train")[0])
    assert int(a.get_batch("val")[0].min()) >= 4500



def test_a_split_of_exactly_block_size_plus_one_tokens_is_enough():
    """One window needs block_size inputs and the shifted target: block_size + 1 tokens, which
    get_batch can draw from; one token fewer is refused."""
    block = 8
    splits = Splits.from_tokens(np.arange(100, dtype=np.uint16), 0.5)
    exact = Splits(train=splits.train, val=splits.val[:block + 1])
    exact.check(block)
    x, y = get_batch(exact.val, 2, block)
    assert x.shape == y.shape == (2, block)
    with pytest.raises(MiniGPTError, match="validation split has 8 tokens"):
        Splits(train=splits.train, val=splits.val[:block]).check(block)
    with pytest.raises(MiniGPTError, match="longer than block_size \\(8\\), got \\(8,\\)"):
        get_batch(exact.val[:block], 2, block)  # (not torch's error from randint(0))


@pytest.mark.parametrize("val_fraction", [0, 0.0, 1])
def test_a_val_fraction_of_nothing_or_everything_is_refused(val_fraction):
    with pytest.raises(MiniGPTError, match="must be in \\(0, 1\\)"):
        Splits.from_tokens(np.arange(100), val_fraction)


def test_the_val_stream_is_seeded_with_seed_plus_1_and_keeps_the_full_batch_shape():
    """Val batches come from their own generator (seed + 1, no train stream's seed) at
    (batch_size, block_size), whatever shape a batch schedule gives training meanwhile."""
    splits = Splits.from_tokens(np.arange(5000, dtype=np.uint16))
    batches = Batches(splits, 4, 8, seed=5)
    batches.train_shape = (2, 4)  # as trainer.py's batch schedule sets it
    assert batches.get_batch("train")[0].shape == (2, 4)
    want = get_batch(splits.val, 4, 8, torch.Generator().manual_seed(6))
    got = batches.get_batch("val")
    assert all(torch.equal(u, v) for u, v in zip(got, want, strict=True))


def test_training_stream_s_is_seeded_with_seed_plus_1000003_s():
    """As Batches says: stream 0 with `seed`, stream s with seed + 1,000,003 s."""
    splits = Splits.from_tokens(np.arange(5000, dtype=np.uint16))
    batches = Batches(splits, 4, 8, seed=5, streams=(0, 2))
    for micro, s in enumerate(batches.streams):
        want = get_batch(splits.train, 4, 8, torch.Generator().manual_seed(5 + 1_000_003 * s))
        got = batches.get_batch("train", micro)
        assert all(torch.equal(u, v) for u, v in zip(got, want, strict=True))


def test_batches_resume_every_stream_from_its_state():
    """A checkpoint's state_dict, loaded into fresh Batches, continues every stream (each
    micro-batch's and val's) where it stopped: the uninterrupted Batches are the oracle. With
    one stream only, a restore of train0 alone passed every resume test."""
    splits = Splits.from_tokens(np.arange(5000, dtype=np.uint16))
    going, fresh = (Batches(splits, 4, 8, seed=5, streams=(2, 3, 4)) for _ in range(2))
    draws = [("train", 0), ("train", 1), ("train", 2), ("val", 0)]
    for split, micro in draws * 3:
        going.get_batch(split, micro)
    fresh.load_state_dict(going.state_dict())
    for split, micro in draws:
        got, want = fresh.get_batch(split, micro), going.get_batch(split, micro)
        assert all(torch.equal(u, v) for u, v in zip(got, want, strict=True)), (split, micro)


@pytest.mark.parametrize("damage", ["a shard's byte", "a torn index"])
def test_a_damaged_cache_of_a_text_is_prepared_again(small_text, caplog, damage):
    """The cache is minigpt's to make: a damaged one once refused every run on the text with
    'prepare the corpus again', which no prepare the user ran could mend."""
    tokens, tok = load_tokens(small_text)
    tokens = np.array(tokens)  # (a copy: the damage shows through the mapping)
    folder = prepared_text(small_text)
    if damage == "a shard's byte":
        shard = sorted(folder.glob("train-*.bin"))[0]
        data = bytearray(shard.read_bytes())
        data[10] ^= 0xFF
        shard.write_bytes(bytes(data))
    else:
        index = folder / "index.json"
        index.write_text(index.read_text()[:40])
    again, same = load_tokens(small_text)
    assert np.array_equal(again, tokens) and same == tok
    assert f"the token cache of {small_text} cannot be read, so it is prepared again" in caplog.text
    assert load_corpus(small_text, "char", 0, 0.1)[2]["tokens"] == len(tokens)  # and it stays


def test_the_cache_key_holds_what_shapes_the_tokens_and_only_that(small_text, monkeypatch):
    """A text's prepared folder is found again whatever --vocab-size a char run gives (it does
    not shape char tokens), but not for another tokenizer, split or corpus format."""
    import minigpt.data

    char = prepared_text(small_text, "char", 0)
    assert prepared_text(small_text, "char", 999) == char
    assert prepared_text(small_text, "char", 0, 0.2) != char
    bpe = prepared_text(small_text, "bpe", 300)
    assert bpe != char and prepared_text(small_text, "bpe", 301) != bpe
    monkeypatch.setattr(minigpt.data, "FORMAT", "minigpt-shards/next")
    assert prepared_text(small_text, "char", 0) != char


def test_bpe_takes_a_vocabulary_of_min_bpe_vocab_but_not_fewer(small_text):
    from minigpt.corpus import open_prepared
    from minigpt.tokenizer import MIN_BPE_VOCAB

    _, _, tok, _ = open_prepared(prepared_text(small_text, "bpe", MIN_BPE_VOCAB))
    assert (tok.kind, tok.vocab_size) == ("bpe", MIN_BPE_VOCAB)  # (the folder alone: any kind)
    with pytest.raises(MiniGPTError, match=f"at least {MIN_BPE_VOCAB}"):
        prepared_text(small_text, "bpe", MIN_BPE_VOCAB - 1)


def test_a_data_dir_under_home_is_expanded_and_refused_where_it_is_a_file(tmp_path,
                                                                          monkeypatch):
    """MINIGPT_DATA_DIR=~/... (as a shell leaves it in quotes) names a folder under $HOME, and
    where that is a file the one-line error says so (unexpanded, the check looked elsewhere)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("MINIGPT_DATA_DIR", "~/data")
    assert cache_dir() == tmp_path / "data"
    (tmp_path / "data").write_text("")
    with pytest.raises(MiniGPTError, match="MINIGPT_DATA_DIR=~/data is a file"):
        cache_dir()


def test_a_text_prepared_by_another_process_while_this_one_waited_is_not_prepared_again(
        small_text, monkeypatch):
    """Processes preparing at once take turns: the one that waited for the lock finds the
    folder the other wrote and reads it (here the first look says 'not prepared', as it did
    before the other finished; any prepare after it fails the test)."""
    folder = prepared_text(small_text)
    looks = []
    monkeypatch.setattr(data, "is_prepared", lambda f: looks.append(f) or (len(looks) > 1
                                                              and is_prepared(f)))
    monkeypatch.setattr(data, "prepare", lambda *a, **k: pytest.fail("prepared again"))
    assert prepared_text(small_text) == folder and looks == [folder, folder]
