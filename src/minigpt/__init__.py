"""minigpt: train small GPT language models and see every part of the training loop.

The public API; importing it does no work (no data loaded, nothing downloaded).
"""

__version__ = "0.1.0"

from minigpt.checkpoint import load_checkpoint, load_model, save_checkpoint
from minigpt.config import DataConfig, ModelConfig, RunConfig, TrainConfig, resolve_config
from minigpt.data import (
    Batches,
    Splits,
    cache_dir,
    download,
    ensure_tinyshakespeare,
    get_batch,
    load_tokens,
)
from minigpt.errors import MiniGPTError
from minigpt.model import CausalSelfAttention, MiniGPT, TransformerBlock
from minigpt.sample import filter_logits, generate, stream
from minigpt.schedule import lr_at
from minigpt.tokenizer import CharTokenizer
from minigpt.trainer import EarlyStopping, estimate_loss, make_optimizer, split_loss, train

__all__ = [
    "Batches", "CausalSelfAttention", "CharTokenizer", "DataConfig", "EarlyStopping",
    "MiniGPT", "MiniGPTError", "ModelConfig", "RunConfig", "Splits", "TrainConfig",
    "TransformerBlock", "cache_dir", "download", "ensure_tinyshakespeare", "estimate_loss",
    "filter_logits", "generate", "get_batch", "load_checkpoint", "load_model", "load_tokens",
    "lr_at", "make_optimizer", "resolve_config", "save_checkpoint", "split_loss", "stream",
    "train",
]
