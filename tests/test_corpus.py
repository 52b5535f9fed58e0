"""minigpt prepare and ShardedTokens: the shards of each split hold exactly its part of the
files' text, a dataset's records prepare to the tokens of a file of its documents, an
interrupted prepare continues to the same shards, a damaged shard is refused, gathers and batches
across shards equal those of one concatenated array, and bad input is one line, leaving nothing
behind. (That the tokenizer never sees the validation split: tests/test_bpe.py.)"""

import io
import json
import logging
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import minigpt.corpus
from conftest import TINY_FLAGS, as_flags, in_process, one_line_error
from minigpt import (
    CharTokenizer,
    MiniGPT,
    MiniGPTError,
    ShardedTokens,
    Splits,
    get_batch,
    load_corpus,
    prepare,
)
from minigpt.checkpoint import load_model
from minigpt.cli import main
from minigpt.corpus import (
    changed,
    comparable,
    find_sources,
    is_prepared,
    open_prepared,
    read_chunks,
    read_index,
    split_point,
    token_dtype,
    tokens_done,
)
from minigpt.evaluate import split_loss
from minigpt.records import Records, local_files
from minigpt.sample import sample_text

WORDS = ["the", "king", "queen", "ünïcode", "😀", "e\u0301", "  ", "\t", "'s", "1984", "中文"]


def write_corpus(folder, n_files=5, words=400, seed=0):
    """Several small files of random words and line breaks, one in a subfolder, one hidden."""
    rng = random.Random(seed)
    (folder / "sub").mkdir(parents=True)
    names = [f"f{i}.txt" for i in range(n_files - 1)] + ["sub/g.txt"]
    for name in names:
        text = "".join(rng.choice(WORDS) + rng.choice([" ", "\n", " \n", "\r\n", ""])
                       for _ in range(words))
        (folder / name).write_bytes(text.encode("utf-8"))
    (folder / ".hidden").write_bytes(b"\xff not text, and skipped")
    return sorted(folder / n for n in names)


def read_text(path) -> str:
    return Path(path).read_text(encoding="utf-8")  # universal newlines, as prepare reads


def all_tokens(folder):
    """A prepared folder's tokens, both splits, as one int64 array; its tokenizer; its index."""
    train, val, tok, index = open_prepared(folder)
    return np.concatenate([train.astype(np.int64), val.astype(np.int64)]), tok, index


def test_links_are_read_once_and_a_loop_of_them_ends(corpus, caplog):
    """Two links from the folder to itself (a glob following them would list 2^40 paths), a
    link to a file beside it (its text would sit in both splits): each file is read once, by
    the folder, by `**` and by `*`; a pattern naming hidden files finds them."""
    src, files = corpus
    (src / "loop").symlink_to(".")
    (src / "sub" / "up").symlink_to("..")
    (src / "z.txt").symlink_to("f0.txt")
    top = [f for f in files if f.parent == src]
    for spec, want in [(src, files), (src / "**" / "*.txt", files), (src / "**", files),
                       (src / "*.txt", top), (src / "**.txt", top),  # ('**.txt': '*.txt')
                       (src / "***.txt", top)]:
        with caplog.at_level(logging.WARNING, logger="minigpt"):
            caplog.clear()
            assert find_sources(str(spec)) == want
        assert "1 of the files" in caplog.text and "each file is read once" in caplog.text
    assert find_sources(str(src / ".hid*")) == [src / ".hidden"]


@pytest.fixture
def corpus(tmp_path):
    return tmp_path / "src", write_corpus(tmp_path / "src")


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_prepared_shards_decode_to_the_files(corpus, tmp_path, kind):
    src, files = corpus
    out = tmp_path / "out"
    index = prepare(str(src), out, kind, vocab_size=300, shard_tokens=500, chunk_chars=256,
                    progress=False)
    assert find_sources(str(src)) == files  # sorted, the subfolder's file in, hidden out
    assert find_sources(str(src / "*.txt")) == [f for f in files if f.parent == src]
    assert find_sources(str(src / "**" / "*.txt")) == files
    tokens, tok, _ = all_tokens(out)
    shards = index["shards"]["train"] + index["shards"]["val"]
    assert len(shards) > 5 and all(s["tokens"] <= 500 for s in shards)
    assert len(tokens) == index["tokens"] == sum(s["tokens"] for s in shards)
    text = "".join(read_text(f) for f in files)  # the oracle: the files as text, one by one
    assert tok.decode(tokens) == text
    # the split: the last tenth of the characters; chunks are cut where the tokenizer would
    # split anyway, so each file's tokens are its own, the file that holds the cut in two
    cut, seen, parts = split_point(len(text), 0.1), 0, {"train": [], "val": []}
    for f in files:
        t = read_text(f)
        here = min(max(cut - seen, 0), len(t))
        parts["train"].append(tok.encode_array(t[:here]))
        parts["val"].append(tok.encode_array(t[here:]))
        seen += len(t)
    train, val, _, _ = open_prepared(out)
    assert np.array_equal(train.astype(np.int64), np.concatenate(parts["train"]))
    assert np.array_equal(val.astype(np.int64), np.concatenate(parts["val"]))
    assert index["train_tokens"] == len(train) and tok.decode(train) == text[:cut]
    assert index["dtype"] == "uint16" and train.dtype == np.uint16
    assert index["tokenizer"] == {"kind": kind, "vocab_size": tok.vocab_size,
                                  "file": "tokenizer.json"}
    assert index["sources"]["files"] == [str(f) for f in files]
    assert not list(out.glob(".*"))  # no temporary files left
    # load_corpus reads the folder as prepared: the folder decides, not the arguments
    splits, tok, info = load_corpus(out, {"char": "bpe", "bpe": "char"}[kind], 65, 0.2)
    assert info["val_fraction"] == 0.1 and info["tokens"] == len(splits.train) + len(splits.val)
    assert info["tokenizer"] == kind and tok.vocab_size == info["vocab_size"]
    assert kind == "char" or tok.vocab_size == 300  # the vocabulary BPE was asked for
    assert tok.decode(splits.train) == text[:cut]
    assert tok.decode(splits.train) + tok.decode(splits.val) == text


def test_each_bar_counts_what_its_total_counts(tmp_path, monkeypatch):
    """On text of multi-byte characters: scan and encode count the file's bytes, to its size;
    BPE's bar counts the characters it learns from, to the split point (not bytes against a
    total of characters)."""
    ended = {}

    class Recording(minigpt.corpus.tqdm):
        def __init__(self, *args, **kwargs):  # (shown, as on a terminal)
            super().__init__(*args, **{**kwargs, "disable": False, "file": io.StringIO()})

        def close(self):
            ended[self.desc] = (self.n, self.total)
            super().close()

    monkeypatch.setattr(minigpt.corpus, "tqdm", Recording)
    path = tmp_path / "accents.txt"
    path.write_text("où est la forêt? à côté du château.\n" * 400, encoding="utf-8")
    prepare(str(path), tmp_path / "out", tokenizer="bpe", vocab_size=300, progress=True)
    size, chars = path.stat().st_size, len(path.read_text(encoding="utf-8"))
    assert size > chars
    assert ended["scan"] == ended["encode"] == (size, size)
    assert ended["train bpe"] == (split_point(chars, 0.1), split_point(chars, 0.1))


@pytest.mark.parametrize("data, at", [
    (b"a" * 9 + "\u4f60".encode() + b"\xff", 12),  # just after a character cut between reads
    (b"hello\n\xe4\xbd", 6),  # a character the file's end cuts
    (b"\xef\xbb\xbfab\xff", 5),  # after a byte-order mark (which is not text, but bytes)
])
def test_a_byte_that_is_not_utf8_is_named_where_it_is(tmp_path, data, at):
    path = tmp_path / "t.txt"
    path.write_bytes(data)
    for chunk in (1, 2, 4, 10, 100):
        with pytest.raises(MiniGPTError, match=f"is not UTF-8 text \\(at byte {at}: "):
            list(minigpt.corpus._decoded(path, chunk, lambda n: None))


def test_dtype_follows_the_vocabulary(tmp_path):
    assert token_dtype(65) == token_dtype(65_536) == np.uint16
    assert token_dtype(65_537) == np.uint32
    # a text of more than 65,536 distinct characters needs uint32 token ids
    chars = [chr(c) for c in [*range(1, 0xD800), *range(0xE000, 0x10000),
                              *range(0x10000, 0x10000 + 3000)]]
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "wide.txt").write_text("".join(chars), encoding="utf-8")
    index = prepare(str(tmp_path / "src"), tmp_path / "out", shard_tokens=20_000,
                    progress=False)
    tokens, tok, _ = all_tokens(tmp_path / "out")
    assert tok.vocab_size > 65_536 and index["dtype"] == "uint32"
    assert open_prepared(tmp_path / "out")[0].dtype == np.uint32 and int(tokens.max()) > 65_535
    assert tok.decode(tokens) == read_text(tmp_path / "src" / "wide.txt")


def test_gathers_and_slices_equal_those_of_the_concatenation():
    """The oracle: numpy on the shards (of random sizes) concatenated into one array."""
    rng = np.random.default_rng(0)
    sizes = [1, 7, 1, 300, 2, 150, 1, 64]
    t = ShardedTokens([rng.integers(0, 60_000, n).astype(np.uint16) for n in sizes])
    whole = np.concatenate(t.shards)
    assert len(t) == len(whole) and t.shape == whole.shape
    bounds = np.cumsum(sizes)[:-1]
    starts = np.concatenate([rng.integers(0, len(whole) - 9, 32), bounds - 3])  # + crossings
    rows = starts[:, None] + np.arange(9)  # (B, T+1) windows, some across shard boundaries
    assert np.array_equal(t[rows], whole[rows]) and t[rows].dtype == np.uint16
    for shape in [(5,), (2, 3, 4), (0,)]:
        pos = rng.integers(-len(whole), len(whole), shape)
        assert np.array_equal(t[pos], whole[pos])
    assert all(t[i] == whole[i] for i in [0, 1, 8, 9, len(whole) - 1, -1])
    assert list(t) == list(whole) and np.array_equal(np.asarray(t), whole)
    for a, b in [(0, 10), (5, 400), (9, 9), (300, -20), (-50, None), (None, 3), (520, 999)]:
        view, ref = t[a:b], whole[a:b]
        assert len(view) == len(ref) and np.array_equal(view.astype(np.int64), ref)
        assert view.shards is t.shards  # no copy
        if len(ref):
            pos = rng.integers(0, len(ref), (3, 4))
            assert np.array_equal(view[pos], ref[pos])
            assert np.array_equal(view[2:][:-1].astype(np.int32), ref[2:][:-1])
    with pytest.raises(IndexError):
        t[::2]
    with pytest.raises(IndexError):
        t[np.array([len(whole)])]
    with pytest.raises(IndexError):
        t[5:10][np.array([5])]
    with pytest.raises(IndexError):
        t[np.array([0.5])]


def test_negative_positions_count_from_the_end_of_a_view_that_starts_inside():
    """The oracle: numpy's negative indexing of the concatenation's same slice, for views that
    start past the first shard (and one that ends before the last)."""
    rng = np.random.default_rng(1)
    sizes = [3, 40, 5, 100, 7]
    t = ShardedTokens([rng.integers(0, 60_000, n).astype(np.uint16) for n in sizes])
    whole = np.concatenate(t.shards)
    for a, b in [(10, 120), (50, None), (2, 5), (44, 60)]:
        view, ref = t[a:b], whole[a:b]
        assert view[-1] == ref[-1] and view[-len(ref)] == ref[0]
        pos = np.array([-1, -3])
        assert np.array_equal(view[pos], ref[pos])
        pos = np.array([[0, -1], [-2, 1]])  # negative and not, in one gather
        assert np.array_equal(view[pos], ref[pos])
        with pytest.raises(IndexError):
            view[np.array([-len(ref) - 1])]


def test_batches_and_split_loss_over_shards_equal_one_arrays(corpus, tmp_path):
    """get_batch, Splits and the final whole-split loss (which reads shards a batch at a time)
    on the training split in many shards: the same as on that split as one array."""
    prepare(str(corpus[0]), tmp_path / "out", shard_tokens=97, chunk_chars=100, progress=False)
    tokens, _, tok, _ = open_prepared(tmp_path / "out")  # the training split, in many shards
    whole = tokens.astype(tokens.dtype)
    for seed in range(3):
        a = get_batch(tokens, 32, 24, torch.Generator().manual_seed(seed))
        b = get_batch(whole, 32, 24, torch.Generator().manual_seed(seed))
        assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    splits = Splits.from_tokens(tokens, 0.1)
    splits.check(24)
    ref = Splits.from_tokens(whole, 0.1)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.equal(get_batch(splits.val, 8, 24, g1)[0], get_batch(ref.val, 8, 24, g2)[0])
    torch.manual_seed(0)
    model = MiniGPT(tok.vocab_size, n_embd=16, n_head=2, n_layer=1, block_size=16)
    cpu = torch.device("cpu")
    assert split_loss(model, tokens, 16, 7, cpu) == pytest.approx(
        split_loss(model, np.asarray(whole, dtype=np.uint32), 16, 7, cpu), rel=1e-6)


def test_read_chunks_are_bounded_and_lossless(tmp_path):
    path = tmp_path / "t.txt"
    text = "x" * 5000 + "\nline\n" * 300 + "y" * 3000  # long stretches without a safe break
    path.write_text(text)
    seen = []
    chunks = list(read_chunks(path, 256, seen.append))
    assert "".join(chunks) == text and sum(seen) == len(text.encode())
    assert max(len(c) for c in chunks) <= 2 * 256


def interrupt_at(monkeypatch, kind, call):
    """Make the call-th encode of a prepare raise KeyboardInterrupt (a Ctrl-C, or a kill)."""
    from minigpt.tokenizer import TOKENIZERS

    calls, real = [], TOKENIZERS[kind].encode_array

    def failing(self, text):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return real(self, text)

    monkeypatch.setattr(TOKENIZERS[kind], "encode_array", failing)


def test_settings_compare_as_absolute_normal_paths(tmp_path, monkeypatch):
    """A prepare's settings as an earlier minigpt recorded them (relative paths, the dataset's
    name as typed) and as another spelling gives them are one prepare's."""
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "docs.jsonl").write_text("{}\n")
    monkeypatch.chdir(tmp_path)
    typed = {"format": "f", "sources": "books", "files": [["books/a.txt", 3, 4]],
             "tokenizer": "char"}
    spelt = {"format": "f", "sources": str(tmp_path / "x" / ".." / "books"),
             "files": [["./books/../books/a.txt", 3, 4]], "tokenizer": "char"}
    assert comparable(typed) == comparable(spelt) != comparable({**typed, "sources": "b"})
    assert comparable(typed)["files"] == [[str(tmp_path / "books" / "a.txt"), 3, 4]]
    local = {"sources": {"dataset": "ds/docs.jsonl", "files": ["ds/docs.jsonl"]}}
    assert comparable(local) == comparable({"sources": {"dataset": "./ds/docs.jsonl",
                                                        "files": ["./ds/docs.jsonl"]}})
    hub = {"sources": {"dataset": "user/stories", "files": []}}  # a name, not a path
    assert comparable(hub) == hub



def test_settings_spelt_with_a_tilde_compare_as_the_home_folders(tmp_path, monkeypatch):
    """~/books (a config file's, or Python's: no shell expands it) is the home folder's books,
    not a folder named ~ below the current one."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    home = str(tmp_path / "home" / "books")
    tilde = {"format": "f", "sources": "~/books", "files": [["~/books/a.txt", 3, 4]]}
    assert comparable(tilde) == {"format": "f", "sources": home,
                                 "files": [[os.path.join(home, "a.txt"), 3, 4]]}

def test_what_changed_since_a_prepare_began_is_named():
    was = {"format": 1, "sources": "books", "tokenizer": "bpe",
           "files": [["a.txt", 10, 1], ["b.txt", 20, 2]]}
    assert changed(was, {**was, "files": was["files"][:1]}) == "b.txt is gone"
    assert changed(was, {**was, "files": was["files"][::-1]}) == (  # (edited by hand)
        "its files are listed in another order")
    assert changed(was, {**was, "files": [*was["files"], ["c.txt", 1, 3]]}) == (
        "c.txt is new or has changed")
    assert changed(was, {**was, "tokenizer": "char"}) == "tokenizer was 'bpe', now 'char'"
    assert changed(was, {**was, "sources": "texts", "files": []}) == (  # (not its files)
        "sources was 'books', now 'texts'")
    data = {**was, "sources": {"dataset": "d", "field": "text", "files": ["a"]}}
    assert changed(data, {**data, "sources": {**data["sources"], "field": "body"}}) == (
        "field was 'text', now 'body'")  # (a dataset's field: not its whole description)
    assert changed(data, {**data, "sources": {**data["sources"], "files": ["a", "b"]}}) == (
        "b is new or has changed")
    assert changed(data, {**data, "sources": {**data["sources"], "dataset": "e",
                                              "files": ["b"]}}) == "dataset was 'd', now 'e'"
    for odd in ([1, 2], {**was, "foo": None}, {"x": 1}):  # (a progress.json edited by hand)
        assert changed(odd, was) == "its progress.json is not minigpt's"


@pytest.mark.parametrize("text", ["[1, 2]", "{}", "", "null"])  # (before the scan, not after)
def test_a_progress_file_edited_by_hand_is_one_line(corpus, tmp_path, text):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "progress.json").write_text(text)
    with pytest.raises(MiniGPTError, match="its progress.json is not minigpt's"):
        prepare(str(corpus[0]), tmp_path / "out", progress=False)


@pytest.mark.parametrize("kind, source", [("char", "files"), ("bpe", "files"),
                                          ("bpe", "parquet")])
def test_an_interrupted_prepare_continues_to_the_same_shards(corpus, tmp_path, monkeypatch,
                                                             request, kind, source):
    src, files = corpus
    src = str(src)
    if source == "parquet":  # the files' texts as a dataset's records
        hf = request.getfixturevalue("hf")
        src = Records(str(write_dataset(hf, tmp_path, documents(files), "parquet")))
    settings = dict(tokenizer=kind, vocab_size=300, shard_tokens=300, chunk_chars=128,
                    progress=False)
    prepare(src, tmp_path / "straight", **settings)
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        interrupt_at(m, kind, 2)  # before the first shard is full: nothing is left
        with pytest.raises(KeyboardInterrupt):
            prepare(src, out, **settings)
    assert not out.exists()
    with monkeypatch.context() as m:
        interrupt_at(m, kind, 9)
        with pytest.raises(KeyboardInterrupt):
            prepare(src, out, **settings)
    done = json.loads((out / "progress.json").read_text())["shards"]["train"]
    assert done and not list(out.glob(".*.tmp")) and not (out / "index.json").exists()
    assert tokens_done(out) == sum(s["tokens"] for s in done) > 0  # (what the rate leaves out)
    with pytest.raises(MiniGPTError, match="unfinished prepare of other sources or settings "
                                           "\\(shard_tokens was 300, now 299\\)"):
        prepare(src, out, **{**settings, "shard_tokens": 299})
    touched = files[1] if source == "files" else src.files[0]  # (the dataset's file)
    stamp = touched.stat()  # the same bytes, but nothing says so without another scan
    os.utime(touched, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 10**9))
    with pytest.raises(MiniGPTError, match=re.escape(f"({touched} is new or has changed): put "
                                                     f"its files back as they were to continue "
                                                     f"it, or delete the folder")):
        prepare(src, out, **settings)
    os.utime(touched, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    index = prepare(src, out, **settings)
    straight = json.loads((tmp_path / "straight" / "index.json").read_text())
    assert index["shards"] == straight["shards"]  # the same files, sizes and sha256
    for s in index["shards"]["train"] + index["shards"]["val"]:
        assert (out / s["file"]).read_bytes() == (tmp_path / "straight" / s["file"]).read_bytes()
    assert not (out / "progress.json").exists()


@pytest.fixture
def hf(monkeypatch, tmp_path):
    """The datasets package, offline (no test reaches the hub) and with its cache (lock files)
    in the test's folder, or a skip without it."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # if imported before
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf")
    return datasets


def documents(files) -> list[str]:
    """The files' texts as documents, line endings as written (\r\n among them)."""
    return [f.read_bytes().decode("utf-8") for f in files] + ["", "ends without a break"]


def write_dataset(hf, folder, docs, kind) -> Path:
    """The documents as a dataset file of that kind, each a record with a 'text' and an 'id'."""
    path = folder / f"docs.{kind}"
    data = hf.Dataset.from_dict({"id": list(range(len(docs))), "text": docs})
    {"parquet": data.to_parquet, "jsonl": data.to_json}[kind](str(path))  # json: JSON lines
    return path


@pytest.mark.parametrize("kind, tokenizer", [("parquet", "char"), ("parquet", "bpe"),
                                             ("jsonl", "bpe")])
def test_a_dataset_prepares_to_the_tokens_of_its_documents_joined(hf, corpus, tmp_path, kind,
                                                                  tokenizer):
    """The oracle: a file holding the documents, a line break between two, prepared as text."""
    docs = documents(corpus[1])
    path = write_dataset(hf, tmp_path, docs, kind)
    joined = tmp_path / "joined.txt"
    joined.write_bytes("\n".join(docs).encode("utf-8"))
    settings = dict(vocab_size=300, shard_tokens=500, chunk_chars=128, progress=False)
    index = prepare(Records(str(path)), tmp_path / "ds", tokenizer, **settings)
    expected = prepare(str(joined), tmp_path / "txt", tokenizer, **settings)
    tokens, tok, _ = all_tokens(tmp_path / "ds")
    assert np.array_equal(tokens, all_tokens(tmp_path / "txt")[0]) and len(tokens) > 1000
    assert tok.decode(tokens) == read_text(joined)
    assert index["shards"] == expected["shards"]  # the same shards, sha256 and all
    assert ((tmp_path / "ds" / "tokenizer.json").read_bytes()
            == (tmp_path / "txt" / "tokenizer.json").read_bytes())
    assert index["sources"] == {"dataset": str(path), "config": None, "split": "train",
                                "field": "text", "files": [str(path)]}


def test_a_corpus_of_another_split_or_field_of_a_dataset_is_not_taken_for_this_one(hf, corpus,
                                                                                   tmp_path):
    """A folder prepared from a dataset's train split and text field is refused, not returned,
    to a prepare of its validation split or of its id field (their records are other text)."""
    path = write_dataset(hf, tmp_path, documents(corpus[1]), "parquet")
    prepare(Records(str(path)), tmp_path / "ds", progress=False)
    for other, was in ((Records(str(path), split="validation"), "'train'"),
                       (Records(str(path), field="id"), "'text'")):
        with pytest.raises(MiniGPTError, match=f"already holds a prepared corpus of other "
                                               f"sources or settings \\(.* was {was}"):
            prepare(other, tmp_path / "ds", progress=False)


def test_cli_prepares_a_dataset_folder(hf, corpus, tmp_path, capsys):
    """--dataset FOLDER: its parquet files in sorted order, as one dataset's records."""
    docs = documents(corpus[1])
    (tmp_path / "parts").mkdir()
    for i, half in enumerate([docs[:3], docs[3:]]):  # two files: records follow on
        write_dataset(hf, tmp_path, half, "parquet").rename(tmp_path / "parts" / f"{i}.parquet")
    (tmp_path / "joined.txt").write_bytes("\n".join(docs).encode("utf-8"))
    flags = ["--tokenizer", "bpe", "--vocab-size", "300", "--no-progress"]
    assert main(["prepare", "--dataset", str(tmp_path / "parts"), "--out",
                 str(tmp_path / "ds"), *flags]) == 0
    assert "prepared dataset " in capsys.readouterr().out
    assert main(["prepare", "--text", str(tmp_path / "joined.txt"), "--out",
                 str(tmp_path / "txt"), *flags]) == 0
    assert np.array_equal(all_tokens(tmp_path / "ds")[0], all_tokens(tmp_path / "txt")[0])


def test_an_empty_data_file_beside_others_is_read_and_a_hub_dataset_named_with_its_config(
        tmp_path):
    (tmp_path / "a.jsonl").write_text("")
    (tmp_path / "b.jsonl").write_text('{"text": "a"}\n')
    assert local_files(str(tmp_path)) == [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    label = Records("someone/stories", config="en", split="validation").label()
    assert "'someone/stories'" in label and "validation" in label and "config en" in label


def test_a_config_given_with_local_data_files_is_refused_not_ignored(tmp_path):
    (tmp_path / "docs.jsonl").write_text('{"text": "a"}\n')
    with pytest.raises(MiniGPTError, match="--dataset-config en names a configuration of a "
                                           "dataset on the hub; local data files have none"):
        Records(str(tmp_path / "docs.jsonl"), config="en")


def test_without_the_datasets_package_dataset_says_how_to_install_it(tmp_path, monkeypatch):
    (tmp_path / "docs.jsonl").write_text('{"text": "a"}\n')
    monkeypatch.setitem(__import__("sys").modules, "datasets", None)  # import fails
    with pytest.raises(MiniGPTError, match=r"pip install 'minigpt-loop\[datasets\]'"):
        prepare(Records(str(tmp_path / "docs.jsonl")), tmp_path / "out", progress=False)


def test_training_refuses_a_damaged_shard_in_one_line(corpus, tmp_path, capsys):
    """A shard with a flipped bit, then the same shard cut short, of one prepare."""
    out = tmp_path / "out"
    prepare(str(corpus[0]), out, shard_tokens=500, progress=False)
    shard = out / "train-00001.bin"
    good = shard.read_bytes()
    flipped = good[:7] + bytes([good[7] ^ 1]) + good[8:]
    for i, (data, message) in enumerate([(flipped, "is damaged"), (good[:-2], "truncated")]):
        shard.write_bytes(data)
        line = one_line_error(capsys, ["train", "--text", str(out), *TINY_FLAGS, "--steps", "2",
                                       "--out", str(tmp_path / f"run{i}")])
        assert message in line and "train-00001.bin" in line


@pytest.fixture
def bad_sources(tmp_path):
    d = tmp_path / "bad"
    (d / "latin1").mkdir(parents=True)
    (d / "latin1" / "a.txt").write_text("fine\n")
    (d / "latin1" / "b.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    (d / "empty").mkdir()
    (d / "empty" / "e.txt").write_text("")
    (d / "hollow" / ".git").mkdir(parents=True)  # only hidden files
    (d / "hollow" / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (d / "binary.txt").write_bytes(b"ab\x00cd")
    (d / "ok.txt").write_text("some text\n")
    (d / "empty.jsonl").write_text("")
    (d / "cut.json").write_text('{"text": "a"')  # a download cut short
    (d / "no-text.jsonl").write_text('{"text": "a"}\n{"id": 1}\n')
    (d / "run" / "checkpoints").mkdir(parents=True)  # a training run's folder
    return d


BAD = [  # {d}: bad_sources' folder; {ds}: a folder of one dataset, as parquet and JSON lines
    (["--text", "{d}/nothing*.txt"], "no files matched"),
    (["--text", "{d}/latin1"], "b.txt is not UTF-8 text"),
    (["--text", "{d}/latin1"], "b.txt is not UTF-8 text (at byte 3: invalid continuation byte); "
                               "it is one of the 2 files '{d}/latin1' names: name the text files "
                               "alone with a quoted glob, such as 'books/**/*.txt'"),
    (["--text", "{d}/latin1", "--tokenizer", "bpe", "--vocab-size", "300"], "b.txt is not UTF-8"),
    (["--text", "{d}/empty"], "empty corpus"),
    (["--text", "{d}/hollow"], "the folder {d}/hollow holds no files (hidden ones left out)"),
    (["--text", "{d}/binary.txt"], "binary.txt looks binary"),
    # the size is checked before the scan, which would refuse b.txt
    (["--text", "{d}/latin1", "--tokenizer", "bpe", "--vocab-size", "100"], "at least 257"),
    (["--text", "{d}/ok.txt", "--tokenizer", "bpe", "--vocab-size", "1" + "0" * 20], "at most"),
    (["--text", "{d}/ok.txt", "--shard-tokens", "0"], "'shard_tokens' must be positive"),
    (["--text", "{d}/ok.txt", "--val-fraction", "1"], "'val_fraction' must be in (0, 1), got 1"),
    (["--text", "{d}/ok.txt", "--val-fraction", "1e-17"], "leaves the validation split empty"),
    (["--text", "{d}/ok.txt", "--val-fraction", "0.9999999"], "leaves the training split empty"),
    (["--dataset", "{ds}/docs.parquet", "--text-field", "body"], "have no field 'body'"),
    (["--dataset", "{ds}/docs.parquet", "--text-field", "id"], "its 'id' is int, not text"),
    (["--dataset", "{ds}/docs.parquet", "--split", "val"], "cannot read dataset"),
    (["--dataset", "{ds}/docs.parquet", "--dataset-config", "en"], "local data files have none"),
    (["--dataset", "{ds}/missing.parquet"], "no files matched"),
    (["--dataset", "{d}/empty.jsonl"], "empty corpus: the 1 file(s) hold no text"),
    (["--dataset", "{d}/cut.json"], "cut.json' (split train): JSON parse error"),
    (["--dataset", "{d}/no-text.jsonl"], "record 1 of dataset '{d}/no-text.jsonl' (split train): "
                                         "its 'text' is missing or null"),
    (["--text", "{d}/ok.txt", "--out", "{d}/run"], "run holds a training run; choose another"),
    (["--text", "{d}/ok.txt", "{d}/binary.txt"], "unrecognized arguments: {d}/binary.txt (files "
                                                  "the shell found for a pattern? quote it"),
    (["--dataset", "{ds}/none*.jsonl"], "no files matched"),
    (["--dataset", "{ds}"], "mixes json and parquet data files"),
    (["--dataset", "no-such-user/no-such-dataset"], "cannot read dataset"),  # offline
    (["--dataset", "nosuchfile"], "; nor is 'nosuchfile' a local file or folder"),  # a typo
    (["--dataset", "{d}/ok.txt"], "has no data files: give files of one kind (.parquet, "
                                  ".jsonl, .json, .arrow), e.g. 'data/*.parquet' (text files go "
                                  "to --text)"),
    (["--text", "{ds}/docs.jsonl", "--text-field", "id"], "go with --dataset"),
    (["--text", "{ds}/docs.jsonl", "--dataset-config", "a"], "go with --dataset"),
]


@pytest.mark.parametrize("args, message", BAD)
def test_bad_input_is_one_line_and_leaves_nothing(bad_sources, tmp_path, request, args, message,
                                                  capsys):
    d, ds = bad_sources, tmp_path / "ds"
    if any(a == "--dataset" or "{ds}" in a for a in args):  # offline, through the hf fixture
        hf = request.getfixturevalue("hf")
        ds.mkdir()
        for kind in ("parquet", "jsonl"):
            write_dataset(hf, ds, ["a text\n"], kind)
        capsys.readouterr()
    out, before = tmp_path / "out", sorted(d.rglob("*"))
    where = [] if "--out" in args else ["--out", str(out)]
    line = one_line_error(capsys, ["prepare", *[a.format(d=d, ds=ds) for a in args], *where,
                                   "--no-progress"])
    assert message.format(d=d) in line
    assert not out.exists() and sorted(d.rglob("*")) == before


def test_a_tilde_after_an_equals_sign_is_the_home_folder(small_text, tmp_path, capsys,
                                                          monkeypatch):
    """--text=~/x and --out=~/y: no shell expands those, so minigpt does."""
    home = small_text.parent
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    r = in_process(capsys, "prepare", "--text=~/small.txt", "--out=~/prepared", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert is_prepared(home / "prepared") and not (tmp_path / "~").exists()
    p = in_process(capsys, "plan", "--tokens", "1e4", "--text=~/small.txt", "--batch-size", "1",
                   "--block-size", "8", "--dtype", "float32")
    assert p.returncode == 0, p.stderr
    vocab = len(set(small_text.read_text()))  # the text's, not the default 65
    assert f"vocab {vocab}, block 8" in p.stdout


def test_prepares_flags_are_the_settings_prepare_takes(small_text, tmp_path, capsys):
    """Each of prepare's flags reaches its own setting: the command's index is the one the
    Python API makes from the same settings (shards of 97 tokens, not the default size)."""
    settings = dict(tokenizer="bpe", vocab_size=300, val_fraction=0.25, shard_tokens=97)
    r = in_process(capsys, "prepare", "--text", str(small_text), "--out", str(tmp_path / "cli"),
                   *as_flags(settings), "--no-progress")
    assert r.returncode == 0, r.stderr
    made = json.loads((tmp_path / "cli" / "index.json").read_text())
    index = prepare(str(small_text), tmp_path / "api", **settings, progress=False)
    assert made["shards"] == index["shards"] and made["tokenizer"] == index["tokenizer"]


@pytest.mark.parametrize("out, said", [(".", "lie in the output folder"),  # the text's folder
                                       ("small.txt", "small.txt is a file, not a folder")])
def test_sources_inside_the_output_folder_are_named(small_text, capsys, out, said):
    before = sorted(small_text.parent.iterdir())
    line = one_line_error(capsys, ["prepare", "--text", str(small_text), "--out",
                                   str(small_text.parent / out), "--no-progress"])
    assert said in line
    assert sorted(small_text.parent.iterdir()) == before


@pytest.mark.parametrize("out", ["ok.txt", "ok.txt/sub"])  # (a folder in the file: no less)
def test_a_file_as_out_is_refused_before_the_scan(bad_sources, capsys, out):
    line = one_line_error(capsys, ["prepare", "--text", str(bad_sources / "latin1"), "--out",
                                   str(bad_sources / out), "--no-progress"])
    assert "ok.txt is a file, not a folder" in line  # not the scan's "b.txt is not UTF-8"
    assert (bad_sources / "ok.txt").read_text() == "some text\n"


def test_an_existing_corpus_is_not_overwritten(small_text, tmp_path, capsys, monkeypatch):
    """The same command again (from another folder, the text spelt another way) has nothing
    to do, and says so with exit 0 (a script that prepares, then trains, may run twice); other
    settings are refused, naming what changed."""
    done = tmp_path / "done"
    prepare(str(small_text), done, progress=False)
    before = {p.name: p.stat().st_mtime_ns for p in done.iterdir()}
    monkeypatch.chdir(small_text.parent)
    again = in_process(capsys, "prepare", "--text", small_text.name, "--out", str(done),
                       "--no-progress")
    assert again.returncode == 0, again.stderr
    assert f"in {done}: already, with these settings: nothing to do" in again.stdout
    spelt = f"../{small_text.parent.name}/./{small_text.name}"  # (the same file)
    assert in_process(capsys, "prepare", "--text", spelt, "--out", str(done),
                      "--no-progress").returncode == 0
    line = one_line_error(capsys, ["prepare", "--text", str(small_text), "--out", str(done),
                                   "--tokenizer", "bpe", "--no-progress"])
    assert "already holds a prepared corpus of other sources or settings (tokenizer was " \
           "'char', now 'bpe')" in line
    line = one_line_error(capsys, ["train", "--text", str(small_text), *TINY_FLAGS, "--steps",
                                   "1", "--out", str(done)])  # (it overwrote tokenizer.json)
    assert f"{done} holds a prepared corpus; choose another --out" in line
    assert {p.name: p.stat().st_mtime_ns for p in done.iterdir()} == before
    (done / "val-00000.bin").unlink()  # damaged: not "nothing to do"
    line = one_line_error(capsys, ["prepare", "--text", str(small_text), "--out", str(done),
                                   "--no-progress"])
    assert f"{done} holds a damaged prepared corpus (shard {done / 'val-00000.bin'} is " \
           f"missing or truncated" in line and line.endswith("delete it and run the command again")
    shutil.rmtree(done)
    assert in_process(capsys, "prepare", "--text", str(small_text), "--out", str(done),
                      "--no-progress").returncode == 0  # (as it says)
    (done / "tokenizer.json").unlink()  # damaged too: the index names the tokenizer
    assert "holds a damaged prepared corpus" in one_line_error(
        capsys, ["prepare", "--text", str(small_text), "--out", str(done), "--no-progress"])


@pytest.mark.parametrize("finished, said", [(True, "already holds a prepared corpus"),
                                            (False, "another prepare wrote into")])
def test_a_corpus_prepared_there_meanwhile_is_not_overwritten(small_text, tmp_path,
                                                               monkeypatch, finished, said):
    """The folder is checked before the scan (minutes, on a big corpus) and again once its
    lock is held: another prepare that finished there in between was replaced, and one that
    was interrupted got shards of another tokenizer than its tokenizer.json."""
    out, other, scan = tmp_path / "out", tmp_path / "other", minigpt.corpus.scan
    prepare(str(small_text), other, progress=False)
    if not finished:  # (as an interrupted prepare leaves it)
        (other / "index.json").unlink()
        (other / "progress.json").write_text("{}")

    def scan_while_another_finishes(*args):
        found = scan(*args)
        shutil.copytree(other, out)
        return found

    monkeypatch.setattr(minigpt.corpus, "scan", scan_while_another_finishes)
    with pytest.raises(MiniGPTError, match=said):
        prepare(str(small_text), out, tokenizer="bpe", vocab_size=300, progress=False)
    assert all((out / p.name).read_bytes() == p.read_bytes() for p in other.iterdir()
               if p.name != "run.lock")


def test_a_corpus_prepared_there_meanwhile_with_these_settings_is_this_prepares_work_done(
        small_text, tmp_path, monkeypatch):
    """The same command run twice at once: the second to take the lock finds the first's
    corpus, of its own settings, and returns its index, writing nothing."""
    out, scan = tmp_path / "out", minigpt.corpus.scan
    done = {}

    def scan_while_the_same_prepare_finishes(*args):
        found = scan(*args)
        with monkeypatch.context() as m:
            m.setattr(minigpt.corpus, "scan", scan)
            done["index"] = prepare(str(small_text), out, progress=False)
        done["files"] = {p: p.stat().st_mtime_ns for p in out.iterdir() if p.name != "run.lock"}
        return found

    monkeypatch.setattr(minigpt.corpus, "scan", scan_while_the_same_prepare_finishes)
    assert prepare(str(small_text), out, progress=False) == done["index"]
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()
            if p.name != "run.lock"} == done["files"]


def test_splits_that_fill_their_last_shards_exactly_leave_no_empty_shard(tmp_path):
    """1,000 characters, the validation split the last 100: shards of 100 tokens end exactly
    where each split does (the writer is then closed with no shard open)."""
    text = tmp_path / "t.txt"
    text.write_text("".join(random.Random(0).choice("abcdefgh \n") for _ in range(1000)))
    index = prepare(str(text), tmp_path / "out", shard_tokens=100, progress=False)
    shards = index["shards"]
    assert [s["tokens"] for s in shards["train"]] == [100] * 9
    assert [s["tokens"] for s in shards["val"]] == [100]
    train, val, tok, _ = open_prepared(tmp_path / "out")
    assert tok.decode(train) + tok.decode(val) == text.read_text()
    assert tok.decode(val) == text.read_text()[900:]


def test_a_folder_minigpt_made_among_the_sources_is_left_out(small_text, tmp_path, caplog):
    """Preparing a folder a second time, into a second --out beside the first, read the
    first's shards as text ('looks binary'); a run folder's checkpoints would be read too."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(small_text, src / "a.txt")
    first = prepare(str(src), src / "prep", progress=False)
    shutil.copytree(src / "prep", src / "runs" / "r" / "checkpoints")  # (as a run holds them)
    (src / "runs" / "r" / "config.json").write_text('{"config": {}}')  # (and its settings)
    mine = src / "notes"  # a user's folder, with names minigpt uses but not minigpt's files
    (mine / "checkpoints").mkdir(parents=True)
    (mine / "checkpoints" / "b.txt").write_text("the second draft\n")
    (mine / "index.json").write_text('["chapter one", "chapter two"]\n')
    for spec in (str(src), str(src / "**")):
        again = prepare(spec, tmp_path / f"again-{len(spec)}", progress=False)
        assert again["sources"]["files"] == [str(src / "a.txt"), str(mine / "checkpoints" /
                                             "b.txt"), str(mine / "index.json")]
        assert again["tokens"] == first["tokens"] + len("the second draft\n") + len(
            '["chapter one", "chapter two"]\n')
    assert f"left out {src / 'prep'}: it holds a prepared corpus, not text" in caplog.text
    assert f"left out {src / 'runs' / 'r'}: it holds a training run, not text" in caplog.text
    with pytest.raises(MiniGPTError, match="prep holds a prepared corpus, not text: give the "
                                           "text it was made from"):
        prepare(str(src / "prep"), tmp_path / "p", progress=False)



def test_a_users_json_named_as_minigpts_records_but_not_theirs_is_text(tmp_path, caplog):
    """A folder is minigpt's by its record's contents, not its name alone: a user's notes with
    a checkpoints folder and a config.json, an index.json, or a progress.json (a dict without
    minigpt's key, or a number) are text; a comparison's variants.json, as claim writes it,
    is not."""
    from minigpt.diagnostics.compare import claim

    src = tmp_path / "src"
    (src / "draft" / "checkpoints").mkdir(parents=True)
    (src / "draft" / "checkpoints" / "c.txt").write_text("chapter one, second try\n")
    records = {"draft/config.json": {"title": "a draft"}, "book/index.json": {"ch": [1, 2]},
               "reading/progress.json": {"read": 3}, "diary/progress.json": 0.5}
    for name, record in records.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(json.dumps(record))
    (src / "a.txt").write_text("some text\n")
    (src / "cmp").mkdir()
    claim(src / "cmp", {"a": {"lr": 0.1}, "b": {"lr": 0.2}}, [src / "cmp" / "1-a"])
    with caplog.at_level(logging.WARNING, logger="minigpt"):
        found = find_sources(str(src))
    assert found == sorted([src / "a.txt", src / "draft" / "checkpoints" / "c.txt",
                            *(src / name for name in records)])
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("left out")]
    assert said == [f"left out {src / 'cmp'}: it holds a comparison, not text"]


def test_a_record_that_is_not_json_is_the_users_text(tmp_path, caplog):
    """A variants.json that does not parse (a user's notes on a sweep) is no comparison's record,
    though a comparison's has no key to check: its folder's files are text, none left out."""
    src = tmp_path / "src"
    (src / "sweep").mkdir(parents=True)
    (src / "sweep" / "variants.json").write_text("lr 0.1, then 0.2\n")
    (src / "sweep" / "notes.txt").write_text("the second was better\n")
    with caplog.at_level(logging.WARNING, logger="minigpt"):
        found = find_sources(str(src))
    assert found == [src / "sweep" / "notes.txt", src / "sweep" / "variants.json"]
    assert "left out" not in caplog.text


def test_a_folder_minigpt_made_inside_another_is_named_once_as_the_outer(tmp_path, caplog):
    """A run's folder holds its checkpoints (and a corpus copied into it): one warning, for
    the run, not one for each folder below it."""
    src = tmp_path / "src"
    run = src / "runs" / "r"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.json").write_text("{}")
    (run / "config.json").write_text('{"config": {}}')
    (run / "data" / "prep").mkdir(parents=True)
    (run / "data" / "prep" / "index.json").write_text('{"shards": {}}')
    (run / "data" / "prep" / "train-00000.bin").write_bytes(b"\0\1")
    (src / "a.txt").write_text("some text\n")
    with caplog.at_level(logging.WARNING, logger="minigpt"):
        assert find_sources(str(src)) == [src / "a.txt"]
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("left out")]
    assert said == [f"left out {run}: it holds a training run, not text"]


def test_the_output_folder_inside_the_sources_is_left_out_without_a_warning(tmp_path, caplog):
    """prepare books --out books/prep, interrupted, then run again: its own unfinished
    prepare is the output folder, left out as such, not 'left out ...: it holds an
    unfinished prepare' (the out folder's exclusion comes before the made-folder filter)."""
    src, out = tmp_path / "books", tmp_path / "books" / "prep"
    out.mkdir(parents=True)
    (out / "progress.json").write_text(json.dumps({"settings": {"format": "x"}}))
    (out / "train-00000.bin").write_bytes(b"\0\1")
    (src / "a.txt").write_text("some text\n")
    assert minigpt.corpus.made_by_minigpt(out) == "an unfinished prepare"
    with caplog.at_level(logging.WARNING, logger="minigpt"):
        assert find_sources(str(src), exclude=out) == [src / "a.txt"]
    assert not caplog.records, caplog.text


def test_a_corpus_an_older_minigpt_prepared_is_refused_without_a_guess_at_why(small_text,
                                                                              tmp_path):
    """An index.json without the settings (an earlier minigpt's) is no match for any command,
    and the refusal names no difference it cannot know ('progress.json is not minigpt's')."""
    done = tmp_path / "done"
    prepare(str(small_text), done, progress=False)
    index = json.loads((done / "index.json").read_text())
    del index["settings"]
    (done / "index.json").write_text(json.dumps(index))
    with pytest.raises(MiniGPTError) as e:
        prepare(str(small_text), done, progress=False)
    assert str(e.value) == (f"{done} already holds a prepared corpus; choose another --out or "
                            f"delete it first")
    (done / "index.json").write_text('{"format": ')  # torn: said so
    with pytest.raises(MiniGPTError, match=r"done already holds a prepared corpus \(its "
                                           r"index.json cannot be read\); choose another"):
        prepare(str(small_text), done, progress=False)


def test_an_exported_models_folder_is_no_place_to_prepare(small_text, tmp_path, capsys):
    out = tmp_path / "exported"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"")  # (the mark folder_holds goes by)
    line = one_line_error(capsys, ["prepare", "--text", str(small_text), "--out", str(out),
                                   "--no-progress"])
    assert f"{out} holds an exported model; choose another --out" in line
    assert [p.name for p in out.iterdir()] == ["model.safetensors"]

def test_a_corpus_whose_tokenizer_was_replaced_is_refused(small_text, tmp_path):
    """The shards' ids read with another tokenizer would be other tokens, silently."""
    prepare(str(small_text), tmp_path / "char", progress=False)
    prepare(str(small_text), tmp_path / "bpe", "bpe", vocab_size=300, progress=False)
    shutil.copy(tmp_path / "bpe" / "tokenizer.json", tmp_path / "char" / "tokenizer.json")
    with pytest.raises(MiniGPTError, match=r"char/tokenizer.json is a bpe tokenizer of \d+ "
                                           r"tokens, not the char one of \d+ its shards were "
                                           r"made with; prepare the corpus again"):
        load_corpus(tmp_path / "char", "char", 65, 0.1)


def test_a_byte_order_mark_is_not_text(tmp_path):
    (tmp_path / "src").mkdir()
    for i in range(3):  # as Windows' editors save UTF-8
        (tmp_path / "src" / f"{i}.txt").write_bytes(b"\xef\xbb\xbf" + f"doc {i}\n".encode())
    prepare(str(tmp_path / "src"), tmp_path / "out", progress=False)
    tokens, tok, _ = all_tokens(tmp_path / "out")
    assert tok.decode(tokens) == "doc 0\ndoc 1\ndoc 2\n"


def test_cli_prepare_prints_a_summary(corpus, tmp_path, capsys):
    src, files = corpus
    out = tmp_path / "out"
    r = in_process(capsys, "prepare", "--text", str(src), "--out", str(out), "--shard-tokens",
                   "1000")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # no terminal: no progress bar's updates written into it
    index = json.loads((out / "index.json").read_text())
    assert len(r.stdout.strip().splitlines()) == 1
    assert f"prepared {len(files)} file(s), {index['tokens']:,} tokens" in r.stdout
    shards = len(index["shards"]["train"]) + len(index["shards"]["val"])
    assert f"train {index['train_tokens']:,}, validation {index['val_tokens']:,}" in r.stdout
    assert f"in {shards} shard(s)" in r.stdout and "tokens/s" in r.stdout
    with pytest.raises(MiniGPTError, match="not a folder written by minigpt prepare"):
        open_prepared(src)


QUICK = [*TINY_FLAGS, *as_flags(dict(steps=20, eval_every=10, log_every=5, sample_tokens=30))]


@pytest.mark.slow
def test_train_on_a_prepared_folder_then_sample(corpus, tmp_path, capsys):
    out = tmp_path / "shards"
    prepare(str(corpus[0]), out, shard_tokens=500, progress=False)
    r = in_process(capsys, "train", "--text", str(out), *QUICK, "--out", str(tmp_path / "a run"),
                   "--val-fraction", "0.5")
    assert r.returncode == 0, r.stderr
    assert (f"warning: {out} is a prepared corpus, with its own tokenizer and split: "
            f"--val-fraction not used") in r.stderr
    summary = json.loads((tmp_path / "a run" / "summary.json").read_text())
    assert summary["final_val_loss"] < summary["best_val_loss"] + 0.5 < np.log(60)
    # the text has no "ROMEO:", so the sample starts from its first character, and the
    # command the run suggests gives no prompt the run cannot read
    hint = [line for line in r.stdout.splitlines() if "sample from it with:" in line]
    assert hint[0].endswith(f"sample from it with: minigpt sample --run '{tmp_path / 'a run'}'")
    model, tok, _ = load_model(tmp_path / "a run", device="cpu")
    assert not tok.can_encode("ROMEO:")
    s = in_process(capsys, "sample", "--run", str(tmp_path / "a run"), "--max-new-tokens", "20",
                   "--seed", "3", "--device", "cpu")
    assert s.returncode == 0 and s.stdout.startswith(tok.decode([0]))
    # all 20 new tokens, as generate draws them (a length over 10 held for half of them)
    assert s.stdout == sample_text(model, tok, None, 20, seed=3) + "\n"
    # the attention maps of the default text: those of its characters the run knows
    a = in_process(capsys, "attention", "--run", str(tmp_path / "a run"), "--device", "cpu")
    assert a.returncode == 0, a.stderr
    assert (tmp_path / "a run" / "attention.png").read_bytes()[:4] == b"\x89PNG"


def test_the_pretrain_preset_on_characters_says_it_was_sized_for_a_prepared_corpus(
        corpus, small_text, tmp_path, capsys, monkeypatch):
    out = tmp_path / "shards"
    prepare(str(corpus[0]), out, shard_tokens=500, progress=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # ~/shards: the prepared corpus too
    brief = [*TINY_FLAGS, *as_flags(dict(n_layer=2, steps=2, eval_every=1, eval_batches=1,
                                         sample_tokens=0))]
    warned = "the pretrain preset is sized for a prepared corpus"
    for i, (data, warns) in enumerate(((str(out), False),
                                       ("~/shards --val-fraction 0.5", False),
                                       (f"{small_text} --tokenizer bpe --vocab-size 300", False),
                                       (str(small_text), True))):
        text, *more = data.split(" ")
        r = in_process(capsys, "train", "--preset", "pretrain", "--data", text, *more, *brief,
                       "--out", str(tmp_path / f"run-{i}"))
        assert r.returncode == 0, r.stderr
        assert (warned in r.stderr) is warns, (data, r.stderr)
        if data.startswith("~"):  # ~/shards: a prepared corpus for warn_if_prepared too
            assert ("~/shards is a prepared corpus, with its own tokenizer and split: "
                    "--val-fraction not used") in r.stderr, r.stderr
    assert f"trains it on the characters of {small_text}" in r.stderr


@pytest.mark.slow
def test_train_bpe_from_the_command_line_saves_samples_and_resumes(small_text, tmp_path,
                                                                    capsys):
    run = tmp_path / "bpe"
    r = in_process(capsys, "train", "--text", str(small_text), "--tokenizer", "bpe",
                   "--vocab-size", "300", *QUICK, "--out", str(run))
    assert r.returncode == 0, r.stderr
    saved = json.loads((run / "tokenizer.json").read_text())
    assert saved["kind"] == "bpe"
    config = json.loads((run / "config.json").read_text())["config"]
    assert config["data"]["tokenizer"] == "bpe" and config["model"]["vocab_size"] <= 300
    s = in_process(capsys, "sample", "--run", str(run), "--prompt", "the quick",
                   "--max-new-tokens", "15")
    assert s.returncode == 0 and s.stdout.startswith("the quick")
    r = in_process(capsys, "train", "--resume", str(run), "--steps", "30", "--no-progress")
    assert r.returncode == 0, r.stderr
    meta = json.loads((run / "checkpoints" / "last.json").read_text())
    assert meta["step"] == 30 and meta["tokenizer"] == saved


def test_a_zero_width_no_break_space_inside_a_file_is_text(tmp_path):
    """Only a byte-order mark at a file's start is dropped: U+FEFF further in (here at the start
    of the second 3-byte read) is a character of the text."""
    path = tmp_path / "t.txt"
    text = "ab\n\ufeffcd\n"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert "".join(read_chunks(path, 3, lambda n: None)) == text


def test_an_unfinished_prepare_into_a_folder_the_user_made_leaves_that_folder(tmp_path,
                                                                              monkeypatch):
    """A prepare stopped before its first shard removes what it wrote, and the folder only
    where it made it."""
    (tmp_path / "t.txt").write_text("some text\n" * 50)
    for out, kept in [(tmp_path / "made", False), (tmp_path / "mine", True)]:
        if kept:
            out.mkdir()
        with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
            interrupt_at(m, "char", 1)
            prepare(str(tmp_path / "t.txt"), out, progress=False)
        assert out.exists() == kept and not (kept and any(out.iterdir()))


def test_a_stop_just_after_the_first_shard_is_renamed_leaves_nothing(tmp_path, monkeypatch):
    """A Ctrl-C (or SIGTERM) may land between a shard's rename and its record: the prepare,
    stopped before its first shard was saved, still removes everything, so the same command
    runs again (a stray shard left there was 'other files' to it) to the same shards."""
    (tmp_path / "t.txt").write_text("some text\n" * 200)
    prepare(str(tmp_path / "t.txt"), tmp_path / "straight", shard_tokens=300, progress=False)
    real = os.replace

    def replace_then_stop(src, dst):
        real(src, dst)
        if str(dst).endswith(".bin"):  # (the tokenizer's and progress' renames go through)
            raise KeyboardInterrupt

    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(minigpt.corpus.os, "replace", replace_then_stop)
        prepare(str(tmp_path / "t.txt"), tmp_path / "out", shard_tokens=300, progress=False)
    assert not (tmp_path / "out").exists()
    index = prepare(str(tmp_path / "t.txt"), tmp_path / "out", shard_tokens=300, progress=False)
    assert index["shards"] == read_index(tmp_path / "straight")["shards"]


def test_a_folder_of_the_users_own_files_is_no_place_to_prepare(small_text, tmp_path):
    """The shards would mix with the files, and the folder no longer read as text."""
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "todo.txt").write_text("buy milk\n")
    (mine / "ideas.txt").write_text("a tiny GPT\n")
    with pytest.raises(MiniGPTError, match=r"notes holds other files \(ideas.txt and 1 more\): "
                                           r"prepare writes into a new or empty folder"):
        prepare(str(small_text), mine, progress=False)
    assert sorted(p.name for p in mine.iterdir()) == ["ideas.txt", "todo.txt"]
    quiet = tmp_path / "quiet"  # what a file manager leaves, and a prepare killed early
    quiet.mkdir()
    (quiet / ".DS_Store").write_bytes(b"\0")
    (quiet / "tokenizer.json").write_text("{}")
    prepare(str(small_text), quiet, progress=False)
    tokens, tok, _ = all_tokens(quiet)  # the text whole, and the stale tokenizer.json replaced
    assert tok.decode(tokens) == small_text.read_text(encoding="utf-8")


@pytest.mark.parametrize("kind, grown", [("bpe", "more of the same text\n"),
                                         ("char", "a character it never saw: \u20ac\n")])
def test_a_file_that_grows_while_it_is_prepared_is_refused(corpus, tmp_path, monkeypatch, kind,
                                                           grown):
    """Its new text would land in the validation split the scan did not count (bpe), or stop
    the encoding outside the vocabulary (char): either way, the file is named as changed."""
    from minigpt.tokenizer import TOKENIZERS

    src, files = corpus
    real = TOKENIZERS[kind].encode_array

    def growing(self, text):  # the last file written to, once, as the first is encoded
        if not growing.done:
            with files[-1].open("a", encoding="utf-8") as f:
                f.write(grown)
        growing.done = True
        return real(self, text)

    growing.done = False

    monkeypatch.setattr(TOKENIZERS[kind], "encode_array", growing)
    out = tmp_path / "out"
    with pytest.raises(MiniGPTError, match=re.escape(
            f"{files[-1]} is new or has changed while {out} was being prepared: its shards may "
            f"not match the sources; delete the folder")):
        prepare(str(src), out, tokenizer=kind, vocab_size=300, shard_tokens=300,
                chunk_chars=128, progress=False)
    assert not (out / "index.json").exists()


def test_a_file_only_touched_while_it_is_prepared_is_said_not_refused(corpus, tmp_path,
                                                                       monkeypatch, caplog):
    """A sync or a checkout that rewrites a file's time but not its bytes leaves the shards
    right: the prepare finishes, and says which file was touched."""
    from minigpt.tokenizer import TOKENIZERS

    src, files = corpus
    real = TOKENIZERS["bpe"].encode_array

    def touching(self, text):
        stamp = files[-1].stat()
        os.utime(files[-1], ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 10**9))
        return real(self, text)

    monkeypatch.setattr(TOKENIZERS["bpe"], "encode_array", touching)
    with caplog.at_level(logging.WARNING, logger="minigpt"):
        index = prepare(str(src), tmp_path / "out", tokenizer="bpe", vocab_size=300,
                        shard_tokens=300, chunk_chars=128, progress=False)
    tokens, tok, _ = all_tokens(tmp_path / "out")
    assert len(tokens) == index["tokens"]
    assert tok.decode(tokens) == "".join(read_text(f) for f in files)  # every file, whole
    assert f"{files[-1]} is new or has changed (touched, the same size) while" in caplog.text


def test_a_stop_or_a_full_disk_mid_prepare_says_where_and_how_to_go_on(corpus, tmp_path,
                                                                      monkeypatch, capsys):
    """SIGTERM, as Ctrl-C, says the same command continues (once shards are complete); a full
    disk's error names the shard it was writing."""
    import errno

    from minigpt.errors import Terminated

    src, _ = corpus
    out = tmp_path / "out"
    calls, real = [], minigpt.corpus._Shards.write

    def stopping(self, split, ids, on_full):
        calls.append(1)
        if len(calls) == 3:  # (by then, shards are complete)
            raise Terminated
        real(self, split, ids, on_full)

    with monkeypatch.context() as m:
        m.setattr(minigpt.corpus._Shards, "write", stopping)
        r = in_process(capsys, "prepare", "--text", str(src), "--out", str(out),
                       "--shard-tokens", "100", "--no-progress")
    assert r.returncode == 143 and tokens_done(out) > 0
    assert "the same command continues after the last complete shard" in r.stderr

    class Unflushed:  # the shard's file, whose bytes a full disk holds back: closing fails
        def __init__(self, file):
            self.file = file

        def close(self):
            self.file.close()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def full(self, split, ids, on_full):
        real(self, split, ids[:1], on_full)  # (the shard opened, then the disk is full)
        self.file = Unflushed(self.file)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(minigpt.corpus._Shards, "write", full)
    r = in_process(capsys, "prepare", "--text", str(src), "--out", str(out), "--shard-tokens",
                   "100", "--no-progress")
    assert r.returncode == 1
    assert re.search(r"minigpt: error: No space left on device: \S+/out/train-\d{5}\.bin\n",
                     r.stderr), r.stderr  # by its name, not the temporary it is removed as
    assert not list(out.glob(".*.tmp"))  # (its close failing again once left it behind)
    assert "the same command continues after the last complete shard" in r.stderr


def test_a_source_removed_while_it_is_prepared_is_named(corpus, tmp_path, monkeypatch):
    """A file deleted once it was read: the prepare is refused naming it as gone (not a bare
    stat error); one deleted before it is read: the error names that file, not the shard
    being written."""
    from minigpt.tokenizer import TOKENIZERS

    src, files = corpus
    real = TOKENIZERS["char"].encode_array

    def removing(victim):
        def encode(self, text):
            if victim.exists():
                victim.unlink()
            return real(self, text)
        return encode

    settings = dict(tokenizer="char", shard_tokens=10**6, chunk_chars=128, progress=False)
    with monkeypatch.context() as m:
        m.setattr(TOKENIZERS["char"], "encode_array", removing(files[0]))
        out = tmp_path / "read"
        with pytest.raises(MiniGPTError, match=re.escape(
                f"{files[0]} is gone while {out} was being prepared")):
            prepare(str(src), out, **settings)
    monkeypatch.setattr(TOKENIZERS["char"], "encode_array", removing(files[-1]))
    with pytest.raises(FileNotFoundError) as e:
        prepare(str(src), tmp_path / "unread", **settings)
    assert e.value.filename == str(files[-1])


def test_a_continued_prepare_of_other_settings_or_sources_says_run_that_command_again(
        corpus, tmp_path, monkeypatch):
    """Only the same sources with changed files are told to put the files back; another
    setting, or other sources, are another command: run that one again to continue."""
    src, _ = corpus
    settings = dict(tokenizer="char", shard_tokens=300, chunk_chars=128, progress=False)
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        interrupt_at(m, "char", 9)
        with pytest.raises(KeyboardInterrupt):
            prepare(str(src), out, **settings)
    for spec, other in [(str(src), {"shard_tokens": 299}), (str(src / "*.txt"), {})]:
        with pytest.raises(MiniGPTError, match=r"\): run that command again to continue it"):
            prepare(spec, out, **{**settings, **other})


def test_a_stop_before_any_shard_is_complete_has_nothing_to_continue(corpus, tmp_path,
                                                                    monkeypatch, capsys):
    """Ctrl-C on the first shard leaves nothing: no 'the same command continues' hint; nor
    does a file changed meanwhile turn the Ctrl-C into an error."""
    src, files = corpus
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        interrupt_at(m, "char", 2)
        r = in_process(capsys, "prepare", "--text", str(src), "--out", str(out),
                       "--no-progress")
    assert r.returncode == 130 and not out.exists()
    assert "continues" not in r.stderr
    from minigpt.tokenizer import TOKENIZERS

    real = TOKENIZERS["char"].encode_array

    def grow_then_stop(self, text):
        if grow_then_stop.calls == 1:
            raise KeyboardInterrupt
        grow_then_stop.calls += 1
        with files[-1].open("a", encoding="utf-8") as f:
            f.write("more\n")
        return real(self, text)

    grow_then_stop.calls = 0
    monkeypatch.setattr(TOKENIZERS["char"], "encode_array", grow_then_stop)
    with pytest.raises(KeyboardInterrupt):
        prepare(str(src), out, progress=False)


def test_a_stop_between_a_shards_rename_and_its_record_leaves_nothing_unsaid(
        corpus, tmp_path, monkeypatch, capsys):
    """Ctrl-C after the first shard's rename, before progress.json records it (a kill -INT
    that lands as the file appears): progress.json, which the hint and a continued prepare
    read, holds no shard, so nothing is worth keeping: the folder goes, as before any shard,
    rather than staying without the hint (and a same-folder rerun still ends as a straight
    prepare does)."""
    src, _ = corpus
    out, flags = tmp_path / "out", ["--shard-tokens", "300", "--no-progress"]
    real = minigpt.corpus.atomic_write_text

    def stop_at_the_first_record(path, text):
        if path.name == "progress.json" and json.loads(text)["shards"]["train"]:
            raise KeyboardInterrupt
        return real(path, text)

    with monkeypatch.context() as m:
        m.setattr(minigpt.corpus, "atomic_write_text", stop_at_the_first_record)
        r = in_process(capsys, "prepare", "--text", str(src), "--out", str(out), *flags)
    assert r.returncode == 130
    assert not out.exists() or ("continues" in r.stderr and tokens_done(out))
    main(["prepare", "--text", str(src), "--out", str(out), *flags])
    main(["prepare", "--text", str(src), "--out", str(tmp_path / "straight"), *flags])
    assert sorted(p.name for p in out.iterdir()) == sorted(
        p.name for p in (tmp_path / "straight").iterdir())


def test_a_prepare_stopped_twice_inside_one_chunk_continues_to_the_same_shards(
        corpus, tmp_path, monkeypatch):
    """Shards of 40 tokens from chunks of about 256 characters (--shard-tokens below a chunk's
    tokens: each chunk fills several shards), stopped just after a shard is recorded, twice:
    the second run begins inside a chunk and records a shard it fills there, at an offset that
    must count from the chunk's start (not from where that run began in it) for the third run to
    go on from the right token. The oracle: an uninterrupted prepare."""
    src, settings = str(corpus[0]), dict(shard_tokens=40, chunk_chars=256, progress=False)
    prepare(src, tmp_path / "straight", **settings)
    out, real = tmp_path / "out", minigpt.corpus.atomic_write_text
    nexts = []
    for shards in (3, 4):  # stop once progress.json records this many shards

        def stop_after(path, text, shards=shards):
            real(path, text)
            state = json.loads(text) if path.name == "progress.json" else {}
            if sum(map(len, state.get("shards", {}).values())) == shards:
                nexts.append(state["next"])
                raise KeyboardInterrupt

        with monkeypatch.context() as m:
            m.setattr(minigpt.corpus, "atomic_write_text", stop_after)
            with pytest.raises(KeyboardInterrupt):
                prepare(src, out, **settings)
    assert nexts[0][0] == nexts[1][0] and nexts[0][1] > 0  # both stops inside one chunk
    index = prepare(src, out, **settings)
    straight = json.loads((tmp_path / "straight" / "index.json").read_text())
    assert index["shards"] == straight["shards"]  # the same files, sizes and sha256


def test_a_symbolic_link_loop_as_a_path_is_one_line(small_text, tmp_path, capsys):
    """A link that leads back to itself, given as train's --text, prepare's --out or --out
    beside --resume: Python 3.11's Path.resolve raises RuntimeError there (3.13 an OSError),
    which escaped as a traceback; each is one line naming the path as given."""
    loop = tmp_path / "loop"
    loop.symlink_to(tmp_path / "back")
    (tmp_path / "back").symlink_to(loop)
    for args in (["train", "--text", str(loop), *TINY_FLAGS, "--out", str(tmp_path / "r")],
                 ["prepare", "--text", str(small_text), "--out", str(loop)],
                 ["train", "--resume", str(loop), "--out", str(tmp_path / "r")]):
        line = one_line_error(capsys, args)
        assert f"{loop} is a loop of symbolic links" in line, line
    assert not (tmp_path / "r").exists()


def test_tokens_done_of_a_progress_file_edited_by_hand_is_none(tmp_path):
    for odd in ('{"shards": {"train": [1]}}', '{"shards": {"train": 3}}', '{"shards": [1]}',
                '[1]', "{"):
        (tmp_path / "progress.json").write_text(odd)
        assert tokens_done(tmp_path) == 0
    (tmp_path / "progress.json").write_text('{"shards": {"train": [{"tokens": 7}], "val": []}}')
    assert tokens_done(tmp_path) == 7


def test_a_chunk_that_ends_at_the_split_point_is_training_text(tmp_path):
    """4-character chunks of 40 characters: the 9th ends at the split point, 36, and belongs to
    the training split (split_point, the one definition)."""
    (tmp_path / "t.txt").write_text("abc\n" * 10)
    index = prepare(str(tmp_path / "t.txt"), tmp_path / "out", chunk_chars=4, progress=False)
    assert index["train_tokens"] == split_point(40, 0.1) == 36 and index["val_tokens"] == 4


@pytest.mark.parametrize("n", [15, 35, 1001])  # 13.5, 31.5, 900.9: the lesson rounds down
def test_the_validation_split_is_the_lessons_whatever_the_length(tmp_path, n):
    """The oracle: the lesson's n = int(0.9 * len(data)), of texts whose 0.9 * len is not whole
    (TinyShakespeare's test needs the download)."""
    text = "".join(random.Random(n).choice("ab \n") for _ in range(n))
    (tmp_path / "t.txt").write_text(text)
    prepare(str(tmp_path / "t.txt"), tmp_path / "out", progress=False)
    train, val, tok, _ = open_prepared(tmp_path / "out")
    assert tok.decode(train) == text[:int(0.9 * n)] and tok.decode(val) == text[int(0.9 * n):]


def test_files_named_once_are_found_without_a_warning(corpus, caplog):
    src, files = corpus
    with caplog.at_level(logging.WARNING, logger="minigpt"):
        assert find_sources(str(src)) == files
    assert not caplog.records


def test_a_pattern_through_dot_dot_still_leaves_hidden_files_out(corpus):
    """'..' is no hidden name: a pattern that goes up through it after a wildcard names no
    hidden file (the corpus has src/.hidden, which the last '*' would match)."""
    src, files = corpus
    found = find_sources(str(src / "*" / ".." / "*"))
    assert [p.resolve() for p in found] == [f.resolve() for f in files if f.parent == src]


def test_a_view_says_its_tokens_positions_and_shards():
    tokens = ShardedTokens([np.arange(5, dtype=np.uint16), np.arange(5, 9, dtype=np.uint16)])
    assert repr(tokens[2:6]) == "ShardedTokens(4 tokens of uint16, positions 2..6 of 2 shards)"


def test_a_boolean_mask_is_not_taken_for_positions():
    tokens = ShardedTokens([np.arange(5, dtype=np.uint16), np.arange(5, 9, dtype=np.uint16)])
    with pytest.raises(IndexError, match="takes slices and integer arrays"):
        tokens[np.array([True, False, True])]


def test_a_comparisons_folder_is_no_place_to_prepare(small_text, tmp_path, capsys):
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "variants.json").write_text("[]")
    line = one_line_error(capsys, ["prepare", "--text", str(small_text), "--out", str(out),
                                   "--no-progress"])
    assert "holds a comparison; choose another --out" in line
    assert [p.name for p in out.iterdir()] == ["variants.json"]


def test_a_slice_that_ends_before_it_begins_is_empty_as_numpys():
    parts = [np.arange(5, dtype=np.uint16), np.arange(5, 9, dtype=np.uint16)]
    whole, tokens = np.concatenate(parts), ShardedTokens(parts)
    for key in (slice(5, 2), slice(-1, 3), slice(7, 7)):
        assert len(tokens[key]) == len(whole[key]) == 0 and tokens[key].shape == (0,)
        assert np.array_equal(np.asarray(tokens[key]), whole[key])


def test_a_lone_surrogate_in_a_prepared_tokenizer_is_one_line(capsys, tmp_path):
    """A tokenizer.json whose alphabet holds a lone surrogate (as json writes one a Python
    string held, "\\ud800") has no UTF-8 bytes to count: refused when read, naming the file
    (it was a UnicodeEncodeError traceback, at bits per byte)."""
    (tmp_path / "a.txt").write_text("the king and the queen\n" * 200, encoding="utf-8")
    prepare(str(tmp_path / "a.txt"), tmp_path / "prep", progress=False)
    path = tmp_path / "prep" / "tokenizer.json"
    path.write_text(path.read_text(encoding="utf-8").replace('"\\n', '"\\ud800'),
                    encoding="utf-8")
    line = one_line_error(capsys, ["train", "--data", str(tmp_path / "prep"), "--steps", "1",
                                   "--out", str(tmp_path / "run"), *TINY_FLAGS])
    assert str(path) in line and "lone surrogate" in line
    assert not (tmp_path / "run").exists()
    with pytest.raises(MiniGPTError, match="lone surrogate"):
        CharTokenizer(["a", "\ud800"])
