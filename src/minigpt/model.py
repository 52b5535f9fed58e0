"""MiniGPT, the lesson's model: token + position embeddings, pre-LayerNorm blocks of causal
multi-head attention and a 4x GELU MLP, a final LayerNorm and a bias-free lm_head, every Linear
and Embedding weight initialised N(0, 0.02). No I/O and no printing here.

The module names are the lesson's (token_emb, pos_emb, blocks[i].ln1/attn/ln2/ff, ln_f,
lm_head, attn.Wq/Wk/Wv/Wo), so the lesson's own code runs against it; with vocab 65 and the
defaults it has 216,576 parameters. One forward serves training, evaluation and sampling:

    logits, loss = model(idx, targets)   # (B, T, vocab) and the mean cross-entropy
    logits, _ = model(idx, cache=cache)  # sampling: idx are the tokens after the cached ones

A cache (minigpt.sample.KVCache) keeps every layer's keys and values, so a new token costs one
position's work instead of a forward over the whole window. The model asks two things of it:
`cache.length`, the positions it holds, and `cache.layers[i].update(k, v)`, which stores layer
i's new keys and values and gives back all of them.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from minigpt import lesson
from minigpt.config import ModelConfig, validate_model
from minigpt.errors import MiniGPTError


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        C = config.n_embd
        self.n_head = config.n_head
        self.d_k = C // config.n_head
        self.dropout = config.dropout
        self.Wq = nn.Linear(C, C, bias=config.bias)
        self.Wk = nn.Linear(C, C, bias=config.bias)
        self.Wv = nn.Linear(C, C, bias=config.bias)
        self.Wo = nn.Linear(C, C, bias=config.bias)
        self.resid_drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, kv=None) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C): each position attends to itself and the positions before it.

        kv (sampling only): this layer's cache; x holds the T positions after the ones it holds,
        their keys and values join it, and each query also attends to every cached position."""
        B, T, C = x.shape
        q = self.Wq(x).view(B, T, self.n_head, self.d_k).transpose(1, 2)  # (B, nh, T, hs)
        k = self.Wk(x).view(B, T, self.n_head, self.d_k).transpose(1, 2)  # (B, nh, T, hs)
        v = self.Wv(x).view(B, T, self.n_head, self.d_k).transpose(1, 2)  # (B, nh, T, hs)
        if kv is not None:
            k, v = kv.update(k, v)  # (B, nh, S, hs): the S - T cached positions, then these T
        S = k.size(2)
        p = self.dropout if self.training else 0.0
        if S == T:  # softmax(q k^T / sqrt(d_k)) v, causally masked, as one fused kernel
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
        else:  # T queries after S - T cached keys: query i sees keys 0 .. S - T + i
            mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(S - T)  # (T, S)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_drop(self.Wo(y))


class TransformerBlock(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        C = config.n_embd
        self.ln1 = nn.LayerNorm(C, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln2 = nn.LayerNorm(C, bias=config.bias)
        self.ff = nn.Sequential(
            nn.Linear(C, 4 * C, bias=config.bias),
            nn.GELU(),
            nn.Linear(4 * C, C, bias=config.bias),
            nn.Dropout(config.dropout),
        )

    def forward(self, x: torch.Tensor, kv=None) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C); kv: this layer's cache, when sampling."""
        x = x + self.attn(self.ln1(x), kv)
        x = x + self.ff(self.ln2(x))
        return x


class MiniGPT(nn.Module):
    """MiniGPT(vocab_size, n_embd=64, n_head=4, n_layer=4, block_size=128, ...): the options
    are the fields of minigpt.config.ModelConfig, whose defaults are the lesson's."""

    def __init__(self, vocab_size: int, **options):
        super().__init__()
        config = ModelConfig(vocab_size=vocab_size, **options)
        validate_model(config)
        self.config = config
        self.block_size = config.block_size
        self.token_emb = nn.Embedding(vocab_size, config.n_embd)
        self.pos_emb = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([TransformerBlock(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, vocab_size, bias=False)
        self.apply(self._init_weights)
        if config.tie_weights:
            self.lm_head.weight = self.token_emb.weight

    @classmethod
    def from_config(cls, config: ModelConfig) -> MiniGPT:
        options = vars(config).copy()
        return cls(options.pop("vocab_size"), **options)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    def num_params(self) -> int:
        """Distinct parameters (a tied weight counts once)."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache=None):
        """idx (B, T) token ids -> (logits (B, T, vocab), mean cross-entropy or None).

        With a cache, idx holds the positions cache.length .. cache.length + T - 1."""
        if idx.dim() != 2 or idx.dtype not in (torch.int64, torch.int32):
            raise MiniGPTError(
                f"idx must be a (B, T) tensor of token ids, got {tuple(idx.shape)} {idx.dtype}"
            )
        B, T = idx.shape
        past = 0 if cache is None else cache.length
        if past + T > self.block_size:
            raise MiniGPTError(
                f"sequence of length {T} is longer than block_size {self.block_size}; crop it "
                f"to the last {self.block_size} tokens" if cache is None else
                f"{past} cached + {T} new tokens do not fit in block_size {self.block_size}; "
                f"re-encode the last {self.block_size} tokens without the cache")
        pos = torch.arange(past, past + T, device=idx.device)  # positions in the window
        x = self.drop(self.token_emb(idx) + self.pos_emb(pos))  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, None if cache is None else cache.layers[i])
        x = self.ln_f(x)
        logits = self.lm_head(x)  # (B, T, vocab)

        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    def generate(self, idx: torch.Tensor, max_new_tokens: int = 200) -> torch.Tensor:
        """The lesson's `model.generate(context, 200)`: its own sampler (minigpt.lesson), the
        model's mode given back. minigpt.generate has temperature, top-k, top-p, a seeded
        generator and the KV cache, and draws the same tokens."""
        with evaluating(self):
            return lesson.generate(self, idx, max_new_tokens)


@contextmanager
def evaluating(model: nn.Module):
    """Inside: eval mode (no dropout) and no gradients. After: the mode the model had."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)
