"""minigpt.export, with transformers as the oracle: the exported folder, loaded by
AutoModelForCausalLM and AutoTokenizer from disk (offline), must compute minigpt's logits, make
minigpt's greedy continuations and encode/decode as minigpt's tokenizer does."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from conftest import MAIN_THREAD_ONLY, in_process, one_line_error
from minigpt import export
from minigpt.checkpoint import load_model
from minigpt.cli import main
from minigpt.errors import MiniGPTError
from minigpt.export import check_exportable, export_hf
from minigpt.model import MiniGPT
from minigpt.sample import generate
from minigpt.tokenizer import BPETokenizer, CharTokenizer

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers and huggingface_hub are imported
transformers = pytest.importorskip("transformers")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Offline even if huggingface_hub was imported (reading the variable) before this module."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
    "All:\nSpeak, speak.\n\nFirst Citizen:\nYou are all resolved rather to die than to "
    "famish?\n\nAll:\nResolved. resolved.\n\t(tab) and  two spaces , odd ! spacing .\n"
) * 4
BLOCK = 32


@pytest.fixture(scope="module")
def char_tok() -> CharTokenizer:
    return CharTokenizer.from_text(TEXT)


@pytest.fixture(scope="module")
def bpe_tok() -> BPETokenizer:
    return BPETokenizer.train([TEXT], 300)


def peaked_model(vocab: int, bias: bool = True, tie: bool = False, seed: int = 0) -> MiniGPT:
    """A small MiniGPT whose weights are scaled up and biases randomised, so its logits are far
    from uniform and greedy decoding has clear winners (no near-ties)."""
    torch.manual_seed(seed)
    model = MiniGPT(vocab, n_embd=32, n_head=4, n_layer=2, block_size=BLOCK, bias=bias,
                    tie_weights=tie)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.mul_(15.0)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.2)
            else:  # LayerNorm gains
                p.uniform_(0.5, 1.5)
    return model.eval()


def load_hf(folder):
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    return model.eval(), tokenizer


ROUND_TRIPS = [
    "First Citizen:\nSpeak, speak.\n\n",
    "  two spaces , odd ! spacing . and\ttabs\n",
    "Resolved.resolved?die",
]
UNSEEN = "never seen: ünïcödé 日本語 🙂 \r\n"  # byte-level BPE encodes any text

CASES = [  # (tokenizer, bias, tie_weights): each setting on both sides
    ("char", True, False),
    ("char", False, True),
    ("bpe", True, True),
    ("bpe", False, False),
]


@pytest.mark.parametrize(("kind", "bias", "tie"), CASES)
def test_logits_generation_and_tokens_match(tmp_path, char_tok, bpe_tok, kind, bias, tie):
    tok = char_tok if kind == "char" else bpe_tok
    model = peaked_model(tok.vocab_size, bias=bias, tie=tie)
    out = export_hf(model, tok, tmp_path / "hf")
    hf, hf_tok = load_hf(out)

    assert isinstance(hf, transformers.GPT2LMHeadModel)
    assert (hf.lm_head.weight is hf.transformer.wte.weight) == tie
    assert hf.config.n_positions == BLOCK and hf.config.activation_function == "gelu"

    idx = torch.tensor([tok.encode(TEXT)[:BLOCK], tok.encode(TEXT)[5:BLOCK + 5]])  # (2, 32)
    with torch.no_grad():
        ours = model(idx)[0]  # (2, 32, V)
        theirs = hf(idx).logits  # (2, 32, V)
    assert ours.std() > 1.0  # far from uniform: the comparison means something
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)

    prompt = "First Citizen:\n"
    ids = hf_tok(prompt, return_tensors="pt").input_ids  # (1, T): transformers' own encoding
    assert ids[0].tolist() == tok.encode(prompt)
    n_new = BLOCK - ids.size(1)  # GPT-2 cannot go past n_positions
    mine = generate(model, ids, n_new, temperature=0)  # (1, BLOCK)
    with torch.no_grad():
        hf_out = hf.generate(ids, max_new_tokens=n_new, do_sample=False)  # (1, BLOCK)
    assert hf_out.tolist() == mine.tolist()
    assert len(set(mine[0, ids.size(1):].tolist())) > 1  # not one token over and over
    assert hf_tok.decode(hf_out[0]) == tok.decode(mine[0].tolist())
    pipe = transformers.pipeline("text-generation", model=hf, tokenizer=hf_tok)  # its defaults:
    assert pipe(prompt, do_sample=False)[0]["generated_text"] == hf_tok.decode(hf_out[0])  # BLOCK

    for text in ROUND_TRIPS if kind == "char" else [*ROUND_TRIPS, UNSEEN]:
        ids = hf_tok.encode(text, add_special_tokens=False)
        assert ids == tok.encode(text)
        assert hf_tok.encode(text) == ids  # nothing is added by default either
        assert hf_tok.decode(ids) == text
    # minigpt's CharTokenizer raises on a character it has no id for; so does the export
    # (rather than dropping it or inventing an id)
    if kind == "char":
        with pytest.raises(MiniGPTError):
            tok.encode("speak 日")
        with pytest.raises(Exception, match="UNK"):
            hf_tok.encode("speak 日")


def test_folder_contents_and_config_written_into_an_empty_folder(tmp_path, char_tok):
    model = MiniGPT(char_tok.vocab_size, n_embd=32, n_head=4, n_layer=1, block_size=BLOCK,
                    dropout=0.2)  # (not 0.1: GPT2Config's default for each of the three)
    (tmp_path / "hf").mkdir()  # an empty existing folder is used
    out = export_hf(model, char_tok, tmp_path / "hf")
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
        "tokenizer_config.json"]
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "gpt2"
    assert config["layer_norm_epsilon"] == 1e-5
    assert config["attn_pdrop"] == config["resid_pdrop"] == config["embd_pdrop"] == 0.2
    assert config["bos_token_id"] is config["eos_token_id"] is config["pad_token_id"] is None
    assert config["tie_word_embeddings"] is False
    tok_config = json.loads((out / "tokenizer_config.json").read_text())
    assert tok_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert tok_config["model_max_length"] == BLOCK
    assert not list(tmp_path.glob(".*"))  # no temporary folder left beside it


UNSUPPORTED = [
    ({"pos": "rope"}, "cannot export: rotary position embeddings (pos='rope') have no GPT-2 "
                      "counterpart"),
    ({"norm": "rmsnorm"}, "norm='rmsnorm'"),
    ({"mlp": "relu2"}, "mlp='relu2'"),
    ({"mlp": "swiglu"}, "mlp='swiglu'"),
    ({"qk_norm": True}, "qk_norm=True"),
    ({"pos": "alibi"}, "pos='alibi'"),  # a value the exporter has never heard of
    ({"logit_cap": 30.0}, "logit_cap=30.0"),  # no parameter: only the config tells
    ({"pos": "learned", "norm": "layernorm", "mlp": "gelu", "qk_norm": False}, None),
]


@pytest.mark.parametrize(("extra", "message"), UNSUPPORTED)
def test_unsupported_settings_are_one_line_errors(tmp_path, char_tok, extra, message):
    model = peaked_model(char_tok.vocab_size)
    model.config = SimpleNamespace(**{**dataclasses.asdict(model.config), **extra})
    if message is None:  # the GPT-2-compatible values, spelled out, and the defaults: accepted
        assert check_exportable(model.config) is None
        assert check_exportable(MiniGPT(10, n_embd=8, n_head=2, n_layer=1).config) is None
        return
    with pytest.raises(MiniGPTError) as err:
        export_hf(model, char_tok, tmp_path / "hf")
    text = str(err.value)
    assert "\n" not in text and text.startswith("cannot export:") and message in text
    assert "no GPT-2 counterpart" in text
    assert not (tmp_path / "hf").exists() and not list(tmp_path.iterdir())


LACKING = [  # (where, the layer put there, the error)
    ("blocks.0.attn.q_norm", nn.LayerNorm(8), r"no GPT-2 counterpart: blocks\.0\.attn\.q_norm"),
    ("blocks.1.ff.1", nn.GELU(approximate="tanh"), r"blocks\.1\.ff\.1 is not the exact GELU"),
    ("ln_f", nn.LayerNorm(32, eps=1e-6), "ln_f is not a LayerNorm with eps"),
    ("blocks.0.ln1", nn.RMSNorm(32), r"blocks\.0\.ln1 is not a LayerNorm"),  # (its weight
    ("blocks.1.ln2", nn.RMSNorm(32), r"blocks\.1\.ln2 is not a LayerNorm"),  # fits GPT-2's)
    ("blocks.0.attn.Wk", nn.Linear(32, 16),  # fewer key heads than query heads
     "the weights do not fit GPT-2: size mismatch"),
    ("blocks.0.attn.Wo", nn.Identity(),  # no output projection: a weight GPT-2 needs is missing
     r"^cannot export: the model has no parameter blocks\.0\.attn\.Wo\.weight$"),
]


@pytest.mark.parametrize(("where", "layer", "message"), LACKING)
def test_layers_gpt2_lacks_are_refused(tmp_path, char_tok, where, layer, message):
    """The model itself is checked beside its config: an extra parameter, a tanh GELU, another
    norm or narrower keys have no place in GPT-2."""
    model = peaked_model(char_tok.vocab_size)
    parent, _, name = where.rpartition(".")
    setattr(model.get_submodule(parent), name, layer)
    with pytest.raises(MiniGPTError, match=message):
        export_hf(model, char_tok, tmp_path / "hf")
    assert not list(tmp_path.iterdir())


def test_without_transformers_exporting_says_how_to_install_it(tmp_path, char_tok, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if it were not installed
    with pytest.raises(MiniGPTError) as err:
        export_hf(peaked_model(char_tok.vocab_size), char_tok, tmp_path / "hf")
    assert str(err.value) == "exporting needs transformers: pip install 'minigpt-loop[export]'"
    assert not list(tmp_path.iterdir())


def test_tokenizer_larger_than_the_model_is_refused(tmp_path, bpe_tok):
    with pytest.raises(MiniGPTError, match="tokenizer has"):
        export_hf(peaked_model(100), bpe_tok, tmp_path / "hf")
    with pytest.raises(MiniGPTError, match="tokenizer has 300 tokens but the model only 299"):
        export_hf(peaked_model(299), bpe_tok, tmp_path / "hf")  # one id without a row
    assert not list(tmp_path.iterdir())


def test_an_existing_folder_or_file_is_refused_and_left_alone(tmp_path, char_tok):
    model = peaked_model(char_tok.vocab_size)
    out = tmp_path / "hf"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(MiniGPTError, match="already exists and is not empty") as err:
        export_hf(model, char_tok, out)
    assert "\n" not in str(err.value)
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    assert (out / "mine.txt").read_text() == "keep me"
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(MiniGPTError, match="is not a folder"):
        export_hf(model, char_tok, afile)


def test_a_tokenizer_of_another_kind_is_refused_in_one_line(tmp_path, char_tok):
    other = SimpleNamespace(kind="word", vocab_size=char_tok.vocab_size)
    with pytest.raises(MiniGPTError, match="cannot export a tokenizer of kind 'word'"):
        export_hf(peaked_model(char_tok.vocab_size), other, tmp_path / "hf")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("enabled", [True, False])
def test_transformers_progress_bars_are_left_as_they_were(tmp_path, char_tok, enabled):
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    try:
        (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
        export_hf(peaked_model(char_tok.vocab_size), char_tok, tmp_path / "hf")
        assert hf_logging.is_progress_bar_enabled() is enabled
    finally:
        (hf_logging.enable_progress_bar if was else hf_logging.disable_progress_bar)()


def test_failure_part_way_leaves_nothing(tmp_path, char_tok, monkeypatch):
    """The model files are written, then writing the tokenizer fails: no out_dir, and the
    staging folder is gone too."""
    parent = tmp_path / "sub"

    def broken(block_size):
        staged = list(parent.glob(".hf.*.tmp"))
        assert len(staged) == 1 and (staged[0] / "model.safetensors").is_file()
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(export, "tokenizer_config", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        export_hf(peaked_model(char_tok.vocab_size), char_tok, parent / "hf")
    assert not (parent / "hf").exists()
    assert not list(parent.iterdir())


@pytest.mark.slow
@MAIN_THREAD_ONLY
def test_sigterm_mid_export_leaves_no_temporary_folder(cli_run, tmp_path, capsys, monkeypatch):
    """SIGTERM (a kill, a scheduler's stop) unwinds as Ctrl-C does: the half-written folder is
    removed, one line says so, exit status 143 (it was killed at once, the folder left)."""
    def killed(block_size):  # SIGTERM arrives while the folder is half written
        os.kill(os.getpid(), signal.SIGTERM)
        return {"model_max_length": block_size}

    monkeypatch.setattr(export, "tokenizer_config", killed)
    out = tmp_path / "hf"
    assert main(["export", "--run", str(cli_run[0]), "--out", str(out)]) == 143
    assert capsys.readouterr().err == "minigpt: terminated\n"
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_the_command_exports_a_run_whose_greedy_text_is_minigpt_samples(cli_run, tmp_path,
                                                                         capsys):
    """`minigpt export` (export_run), then transformers as the oracle: the logits of the run's
    best checkpoint, and a greedy continuation of a prompt that is what `minigpt sample
    --temperature 0` prints."""
    run, _, _ = cli_run
    out = tmp_path / "hf"
    r = in_process(capsys, "export", "--run", str(run), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "from_pretrained" in r.stdout and "up to the block size in all" in r.stdout
    assert "Writing" not in r.stderr and "%|" not in r.stderr  # no transformers progress bar
    assert "already exists" in one_line_error(capsys, ["export", "--run", str(run), "--out",
                                                        str(out)])  # not twice
    sample = in_process(capsys, "sample", "--run", str(run), "--prompt", "ROMEO:",
                        "--temperature", "0", "--max-new-tokens", "20")
    assert sample.returncode == 0, sample.stderr
    model, tokenizer = load_hf(out)
    ours, tok, _ = load_model(run, "best")
    ids = tokenizer("ROMEO:", return_tensors="pt").input_ids  # (1, T)
    assert ids[0].tolist() == tok.encode("ROMEO:")
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ours(ids)[0], atol=1e-5, rtol=0)
    text = tokenizer.decode(model.generate(ids, max_new_tokens=20, do_sample=False)[0])
    assert text == sample.stdout.rstrip("\n")


def test_export_run_reads_the_best_checkpoint_unless_told(tmp_path, monkeypatch):
    """export_run's documented default is the run's best checkpoint (the command passes its
    own --checkpoint): the tag it asks load_model for."""
    from minigpt import checkpoint

    asked = []

    def load(run_dir, tag):
        asked.append(tag)
        raise MiniGPTError("read no further")

    monkeypatch.setattr(checkpoint, "load_model", load)
    for kw in ({}, {"tag": "last"}):
        with pytest.raises(MiniGPTError, match="read no further"):
            export.export_run(tmp_path / "run", tmp_path / "hf", **kw)
    assert asked == ["best", "last"]
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "mine.txt").write_text("x")  # a folder it must refuse: refused before
    with pytest.raises(MiniGPTError, match="already exists"):  # the checkpoint is read
        export.export_run(tmp_path / "run", tmp_path / "hf")
    assert asked == ["best", "last"]
