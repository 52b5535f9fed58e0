"""minigpt: train small GPT language models and see every part of the training loop.

The public API; importing it does no work (no data loaded, nothing downloaded). The lesson's own
code is `minigpt.lesson`; the diagnostics (graph, autograd, gradient flow, attention, plots,
report) are `minigpt.diagnostics`, which the core never imports.
"""

__version__ = "0.2.0"

from minigpt import lesson
from minigpt.checkpoint import load_checkpoint, load_model, resume_config, save_checkpoint
from minigpt.config import (
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    resolve_config,
)
from minigpt.corpus import ShardedTokens, prepare
from minigpt.data import (
    Batches,
    Splits,
    cache_dir,
    download,
    ensure_tinyshakespeare,
    get_batch,
    load_corpus,
    load_tokens,
)
from minigpt.errors import MiniGPTError, TrainingStopped
from minigpt.evaluate import estimate_loss, evaluating, split_loss
from minigpt.model import CausalSelfAttention, MiniGPT, TransformerBlock
from minigpt.optim import make_optimizer
from minigpt.run import TrainState
from minigpt.sample import KVCache, filter_logits, generate, stream
from minigpt.schedule import lr_at
from minigpt.step import MicroSteps, train_step
from minigpt.tokenizer import BPETokenizer, CharTokenizer, load_tokenizer, tokenizer_from_dict
from minigpt.trainer import TrainResult, train

__all__ = [
    "BPETokenizer", "Batches", "CausalSelfAttention", "CharTokenizer", "DataConfig",
    "KVCache", "MicroSteps", "MiniGPT", "MiniGPTError", "ModelConfig", "RunConfig",
    "ShardedTokens", "Splits", "TrainConfig", "TrainResult", "TrainState", "TrainingStopped",
    "TransformerBlock",
    "cache_dir", "download", "ensure_tinyshakespeare", "estimate_loss", "evaluating",
    "filter_logits", "generate", "get_batch", "lesson", "load_checkpoint", "load_corpus",
    "load_model", "load_tokenizer", "load_tokens", "lr_at", "make_optimizer", "prepare",
    "resolve_config", "resume_config", "save_checkpoint", "split_loss", "stream",
    "tokenizer_from_dict", "train", "train_step",
]
