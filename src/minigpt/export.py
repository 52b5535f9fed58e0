"""Export a trained MiniGPT to the Hugging Face format: a GPT-2 folder that `transformers` loads.

    from minigpt.export import export_run
    export_run("runs/seed", "exported/seed")        # the run's best checkpoint

    # then, wherever transformers is installed (no minigpt needed):
    tokenizer = AutoTokenizer.from_pretrained("exported/seed")
    model = AutoModelForCausalLM.from_pretrained("exported/seed")

MiniGPT is GPT-2's architecture (pre-LayerNorm blocks, learned absolute positions, causal softmax
attention scaled by 1/sqrt(head_dim), an exact-GELU 4x MLP, LayerNorm eps 1e-5), so
`GPT2LMHeadModel` holds it exactly; only the names and one layout differ:

    minigpt                         GPT-2 (transformers)
    token_emb, pos_emb              transformer.wte, transformer.wpe
    blocks.i.ln1, blocks.i.ln2      transformer.h.i.ln_1, transformer.h.i.ln_2
    blocks.i.attn.Wq | Wk | Wv      transformer.h.i.attn.c_attn (q, k, v side by side)
    blocks.i.attn.Wo                transformer.h.i.attn.c_proj
    blocks.i.ff.0, blocks.i.ff.2    transformer.h.i.mlp.c_fc, transformer.h.i.mlp.c_proj
    ln_f, lm_head                   transformer.ln_f, lm_head

GPT-2's linear layers are `Conv1D`s, whose weight is (in, out): the transpose of nn.Linear's
(out, in). A model built with bias=False gets zeros for GPT-2's biases, which is the same
function. Weights are written in float32.

Choices the folder records:
- dropout: the model's own probability, for embd_pdrop, attn_pdrop and resid_pdrop. MiniGPT
  drops out in exactly GPT-2's four places (the embedding sum, the attention probabilities, the
  attention output, the MLP output), so the export is the same model in training mode too, and
  fine-tuning it keeps the regularisation it was trained with. from_pretrained returns a model
  in eval mode, where dropout does nothing.
- special tokens: minigpt has none, so bos, eos and pad are None (GPT-2's default 50256 would
  name a token that does not exist or is an ordinary one). `generate` then stops only at
  max_new_tokens; to pad a batch of prompts, pass pad_token_id=<any id> and the attention_mask
  (the mask, not the id, keeps the padding out).
- the tokenizer is minigpt's own, as a `tokenizers` tokenizer.json that AutoTokenizer reads as
  a PreTrainedTokenizerFast: a BPE tokenizer as it is (byte-level, with its ByteLevel decoder);
  a character tokenizer as a word-level vocabulary (id = minigpt's id) behind a pre-tokenizer
  that splits text into single characters and a decoder that joins tokens with nothing between.
  Neither adds special tokens, and decoding does not "clean up" spaces, so encode and decode
  give minigpt's ids and the text back.

The folder is built beside out_dir and renamed into place, so a failure never leaves a
half-written export. `transformers` is imported only when exporting.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

from minigpt.errors import MiniGPTError, ctrl_c_held, last_line
from minigpt.files import atomic_folder, os_error

LAYER_NORM_EPS = 1e-5

# settings GPT-2 has no counterpart for: (field, its GPT-2-compatible values, what it sets)
GPT2_SETTINGS = [
    ("pos", ("learned",), "position embeddings ({}) have"),
    ("norm", ("layernorm",), "normalisation ({}) has"),
    ("mlp", ("gelu",), "an MLP ({}) has"),
    ("qk_norm", (False,), "query/key normalisation ({}) has"),
    ("bigram", (False,), "a bigram embedding ({}) has"),
    ("smear", (False,), "the smear ({}) has"),
    ("value_embeds", (0,), "value embeddings ({}) have"),
    ("unet", (False,), "U-net skips ({}) have"),
    ("logit_cap", (0.0,), "logit soft-capping ({}) has"),
]
# the values we know of, said plainly (any other value gets the setting's wording)
NO_COUNTERPART = {
    ("pos", "rope"): "rotary position embeddings ({}) have",
    ("norm", "rmsnorm"): "RMSNorm ({}) has",
    ("mlp", "relu2"): "a squared-ReLU MLP ({}) has",
    ("mlp", "swiglu"): "a SwiGLU MLP ({}) has",
}


def check_exportable(config) -> None:
    """Raise a one-line MiniGPTError naming the first setting of `config` (a ModelConfig, or
    any object with its fields) that GPT-2 cannot hold; return None if GPT-2 holds it exactly."""
    for field, compatible, what in GPT2_SETTINGS:
        value = getattr(config, field)
        if value not in compatible:
            reason = NO_COUNTERPART.get((field, value), what).format(f"{field}={value!r}")
            raise MiniGPTError(f"cannot export: {reason} no GPT-2 counterpart")


def check_modules(model: nn.Module) -> None:
    """The model's own layers, as a second check beside its config: every norm is a
    LayerNorm with eps 1e-5 and every MLP activation is the exact (erf) GELU."""
    for name, module in model.named_modules():
        if name.endswith(("ln1", "ln2", "ln_f")) and not (
                isinstance(module, nn.LayerNorm) and module.eps == LAYER_NORM_EPS):
            raise MiniGPTError(f"cannot export: {name} is not a LayerNorm with eps "
                               f"{LAYER_NORM_EPS} (GPT-2's norm)")
        if name.endswith("ff.1") and not (
                isinstance(module, nn.GELU) and module.approximate == "none"):
            raise MiniGPTError(f"cannot export: {name} is not the exact GELU (GPT-2's "
                               f"activation 'gelu')")


def gpt2_config_kwargs(config) -> dict:
    """GPT2Config's arguments for a MiniGPT of this config (see the module docstring)."""
    return {
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": 4 * config.n_embd,
        "activation_function": "gelu",  # exact erf GELU, as nn.GELU(); not GPT-2's gelu_new
        "layer_norm_epsilon": LAYER_NORM_EPS,
        **dict.fromkeys(("resid_pdrop", "embd_pdrop", "attn_pdrop"), config.dropout),
        "scale_attn_weights": True,  # 1/sqrt(head_dim), as scaled_dot_product_attention
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": bool(config.tie_weights),
        **dict.fromkeys(("bos_token_id", "eos_token_id", "pad_token_id"), None),
    }


def bias_or_zeros(sd: dict[str, torch.Tensor], name: str, size: int) -> torch.Tensor:
    """sd's bias `name`, or zeros (size,) where the model was built without biases."""
    return sd.pop(name) if name in sd else torch.zeros(size)


def block_tensors(sd: dict[str, torch.Tensor], i: int, C: int) -> dict[str, torch.Tensor]:
    """Block i's tensors under GPT-2's names, taken (popped) from minigpt's state dict sd."""
    src, dst = f"blocks.{i}.", f"transformer.h.{i}."
    out = {}
    for mine, theirs in (("ln1", "ln_1"), ("ln2", "ln_2")):
        out[f"{dst}{theirs}.weight"] = sd.pop(f"{src}{mine}.weight")
        out[f"{dst}{theirs}.bias"] = bias_or_zeros(sd, f"{src}{mine}.bias", C)
    qkv = [sd.pop(f"{src}attn.W{n}.weight") for n in "qkv"]  # each (C, C): (out, in)
    # nn.Linear's (out, in) -> Conv1D's (in, out): (3C, C) -> (C, 3C)
    out[f"{dst}attn.c_attn.weight"] = torch.cat(qkv, dim=0).t().contiguous()
    out[f"{dst}attn.c_attn.bias"] = torch.cat(
        [bias_or_zeros(sd, f"{src}attn.W{n}.bias", C) for n in "qkv"])  # (3C,)
    linears = (("attn.Wo", "attn.c_proj", C), ("ff.0", "mlp.c_fc", 4 * C),
               ("ff.2", "mlp.c_proj", C))
    for mine, theirs, n_out in linears:
        out[f"{dst}{theirs}.weight"] = sd.pop(f"{src}{mine}.weight").t().contiguous()  # (in, out)
        out[f"{dst}{theirs}.bias"] = bias_or_zeros(sd, f"{src}{mine}.bias", n_out)
    return out


def gpt2_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """MiniGPT's weights under GPT2LMHeadModel's names and layouts, float32 on the CPU. Every
    parameter must find a place: one left over (a layer GPT-2 does not have) or one missing is
    a one-line MiniGPTError."""
    cfg, C = model.config, model.config.n_embd
    sd = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    try:
        out = {"transformer.wte.weight": sd.pop("token_emb.weight"),
               "transformer.wpe.weight": sd.pop("pos_emb.weight")}
        for i in range(cfg.n_layer):
            out |= block_tensors(sd, i, C)
        out["transformer.ln_f.weight"] = sd.pop("ln_f.weight")
        out["transformer.ln_f.bias"] = bias_or_zeros(sd, "ln_f.bias", C)
        out["lm_head.weight"] = sd.pop("lm_head.weight")  # (V, C): a Linear in GPT-2 too
    except KeyError as e:
        raise MiniGPTError(f"cannot export: the model has no parameter {e.args[0]}") from None
    if sd:
        raise MiniGPTError(f"cannot export: parameter(s) with no GPT-2 counterpart: "
                           f"{', '.join(sorted(sd))}")
    return out


def build_gpt2(model: nn.Module):
    """A transformers GPT2LMHeadModel (eval mode) computing what `model` computes."""
    check_exportable(model.config)
    check_modules(model)
    try:
        with ctrl_c_held():  # (transformers loads for seconds; see ctrl_c_held)
            from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        raise MiniGPTError("exporting needs transformers: pip install 'minigpt-loop[export]'") \
            from None
    tensors = gpt2_state_dict(model)
    hf = GPT2LMHeadModel(GPT2Config(**gpt2_config_kwargs(model.config)))
    # strict: every GPT-2 weight is set and has the shape GPT-2 expects; with tied weights
    # wte and lm_head are one tensor there and receive the same values
    try:
        hf.load_state_dict(tensors, strict=True)
    except RuntimeError as e:  # a shape GPT-2 does not have (say, fewer key/value heads)
        raise MiniGPTError(f"cannot export: the weights do not fit GPT-2: {last_line(e)}") from None
    hf.generation_config.max_length = model.config.block_size  # (generate's and pipeline's
    # default length: the positions GPT-2 has, not past them into an IndexError)
    return hf.eval()


def hf_tokenizer(tokenizer):
    """minigpt's tokenizer (of either kind) as a `tokenizers` Tokenizer with the same ids; a
    character outside a character tokenizer's vocabulary is an error there too."""
    kind = getattr(tokenizer, "kind", None)
    if kind == "bpe":  # a copy of its byte-level Tokenizer, ByteLevel decoder too
        return Tokenizer.from_str(tokenizer.hf.to_str())
    if kind != "char":
        raise MiniGPTError(f"cannot export a tokenizer of kind {kind!r} (expected 'char' or "
                           f"'bpe')")
    vocab = {c: i for i, c in enumerate(tokenizer.chars)}
    hf = Tokenizer(models.WordLevel(vocab, unk_token=None))
    # [\s\S]: any one character, line breaks included (unlike ".")
    hf.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    hf.decoder = decoders.Fuse()  # join the tokens with nothing between
    return hf


def tokenizer_config(block_size: int) -> dict:
    """tokenizer_config.json: a plain PreTrainedTokenizerFast over tokenizer.json, no special
    tokens, no space clean-up on decode (it would turn "a ." into "a.")."""
    return {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
            "model_max_length": block_size}


def export_hf(model: nn.Module, tokenizer, out_dir: str | Path) -> Path:
    """Write `model` (a MiniGPT) and its tokenizer to out_dir (which must not exist, or be
    empty) as a GPT-2 that AutoModelForCausalLM and AutoTokenizer load; return the folder.
    Everything is checked and converted before anything is written."""
    return _export(lambda: (model, tokenizer), out_dir)


def export_run(run_dir: str | Path, out_dir: str | Path, tag: str = "best") -> Path:
    """Export a run folder's checkpoint `tag` ("best", "last", "step-000500"); see export_hf."""
    from minigpt.checkpoint import load_model

    return _export(lambda: load_model(run_dir, tag)[:2], out_dir)


def _export(load, out_dir: str | Path) -> Path:
    """Check out_dir, then call load() for (model, tokenizer): a run is refused before its
    checkpoint is read. Then check, convert and write the folder."""
    out = Path(out_dir)
    if out.is_dir() and any(out.iterdir()):
        raise MiniGPTError(f"{out} already exists and is not empty; choose another folder")
    if out.exists() and not out.is_dir():
        raise MiniGPTError(f"{out} already exists and is not a folder")
    model, tokenizer = load()
    if tokenizer.vocab_size > model.config.vocab_size:  # every id must be an embedding row
        raise MiniGPTError(f"cannot export: the tokenizer has {tokenizer.vocab_size} tokens but "
                           f"the model only {model.config.vocab_size}")
    hf_model, hf_tok = build_gpt2(model), hf_tokenizer(tokenizer)
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # ("Writing model shards": the command says what it wrote)
    try:
        with atomic_folder(out) as tmp:
            try:
                hf_model.save_pretrained(tmp, safe_serialization=True)
            except Exception as e:  # a full disk, as safetensors reports it
                raise os_error(e, out / "model.safetensors") from None  # (what it was to be)
            # (written here: tokenizers' own save takes only paths that are UTF-8)
            (tmp / "tokenizer.json").write_text(hf_tok.to_str(pretty=True), encoding="utf-8")
            text = json.dumps(tokenizer_config(model.config.block_size), indent=2) + "\n"
            (tmp / "tokenizer_config.json").write_text(text, encoding="utf-8")
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    return out
