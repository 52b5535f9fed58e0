"""minigpt: train small GPT language models and see every part of the training loop.

The public API; importing it does no work (no data loaded, nothing downloaded).
"""

__version__ = "0.1.0"

from minigpt.checkpoint import load_checkpoint, load_model, save_checkpoint
from minigpt.config import DataConfig, ModelConfig, RunConfig, TrainConfig, resolve_config
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
from minigpt.errors import MiniGPTError
from minigpt.model import CausalSelfAttention, MiniGPT, TransformerBlock
from minigpt.sample import filter_logits, generate, stream
from minigpt.schedule import lr_at
from minigpt.tokenizer import BPETokenizer, CharTokenizer, load_tokenizer, tokenizer_from_dict
from minigpt.trainer import EarlyStopping, estimate_loss, make_optimizer, split_loss, train

__all__ = [
    "BPETokenizer", "Batches", "CausalSelfAttention", "CharTokenizer", "DataConfig",
    "EarlyStopping", "MiniGPT", "MiniGPTError", "ModelConfig", "RunConfig", "ShardedTokens",
    "Splits", "TrainConfig", "TransformerBlock", "cache_dir", "download",
    "ensure_tinyshakespeare", "estimate_loss", "filter_logits", "generate", "get_batch",
    "load_checkpoint", "load_corpus", "load_model", "load_tokenizer", "load_tokens", "lr_at",
    "make_optimizer", "prepare", "resolve_config", "save_checkpoint", "split_loss", "stream",
    "tokenizer_from_dict", "train",
]
