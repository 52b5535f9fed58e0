"""minigpt: train small GPT language models and see every part of the training loop.

The public API, loaded on first use: `import minigpt` imports neither torch nor any module of
its own, so the `minigpt` command can answer Ctrl-C from its first moment (importing torch takes
a second or two). `from minigpt import MiniGPT` imports minigpt.model then. The lesson's own code
is `minigpt.lesson`; the diagnostics (graph, autograd, gradient flow, attention, plots, report)
are `minigpt.diagnostics`, which the core never imports.
"""

import importlib

__version__ = "0.2.0"

# each public name -> the module that defines it
WHERE = {
    "lesson": "minigpt.lesson",
    **dict.fromkeys(["load_checkpoint", "load_model", "resume_config", "save_checkpoint"],
                    "minigpt.checkpoint"),
    **dict.fromkeys(["DataConfig", "ModelConfig", "RunConfig", "TrainConfig", "resolve_config"],
                    "minigpt.config"),
    **dict.fromkeys(["ShardedTokens", "prepare"], "minigpt.corpus"),
    **dict.fromkeys(["Batches", "Splits", "cache_dir", "download", "ensure_tinyshakespeare",
                     "get_batch", "load_corpus", "load_tokens"], "minigpt.data"),
    **dict.fromkeys(["MiniGPTError", "TrainingStopped"], "minigpt.errors"),
    **dict.fromkeys(["estimate_loss", "evaluating", "split_loss"], "minigpt.evaluate"),
    **dict.fromkeys(["CausalSelfAttention", "MiniGPT", "TransformerBlock"], "minigpt.model"),
    "make_optimizer": "minigpt.optim",
    "TrainState": "minigpt.run",
    **dict.fromkeys(["KVCache", "filter_logits", "generate", "stream"], "minigpt.sample"),
    "lr_at": "minigpt.schedule",
    **dict.fromkeys(["MicroSteps", "train_step"], "minigpt.step"),
    **dict.fromkeys(["BPETokenizer", "CharTokenizer", "load_tokenizer", "tokenizer_from_dict"],
                    "minigpt.tokenizer"),
    **dict.fromkeys(["TrainResult", "train"], "minigpt.trainer"),
}

__all__ = sorted(WHERE)


def __getattr__(name: str):
    """`minigpt.X` for a public name X: imported from its module the first time it is asked."""
    if name not in WHERE:
        raise AttributeError(f"module 'minigpt' has no attribute {name!r}")
    module = importlib.import_module(WHERE[name])
    value = module if name == "lesson" else getattr(module, name)
    globals()[name] = value  # (asked once)
    return value


def __dir__() -> list[str]:
    """The public names and the module's dunders, each once (a name already imported is in
    globals() too), without this file's helpers (importlib, WHERE)."""
    return sorted({*WHERE, *(name for name in globals() if name.startswith("__"))})
