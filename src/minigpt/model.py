"""MiniGPT, exactly the lesson's model: token + position embeddings, pre-LayerNorm blocks of
causal multi-head attention and a 4x GELU MLP, a final LayerNorm and a bias-free lm_head,
every Linear and Embedding weight initialised N(0, 0.02).

The module names are the lesson's (token_emb, pos_emb, blocks[i].ln1/attn/ln2/ff, ln_f, lm_head,
attn.Wq/Wk/Wv/Wo), so the lesson's own code runs against it. With vocab 65 and the defaults it
has 216,576 parameters. No I/O and no printing here.

For sampling there is a second way in, `MiniGPT.next_logits(idx, cache)`: the logits of the
token that follows idx, computing only what that needs. A `KVCache` keeps every layer's keys and
values, so each new token costs one position's work instead of a forward over the whole window.
`forward` (training, evaluation, the uncached sampler) is the lesson's computation, untouched.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from minigpt.config import ModelConfig
from minigpt.errors import MiniGPTError


class LayerKV(NamedTuple):
    """One layer's cached keys and values, each (B, nh, block_size, hs); the cache's `length`
    says how many window positions, from position 0, are filled."""

    k: torch.Tensor
    v: torch.Tensor


class KVCache:
    """Every layer's keys and values for window positions 0..length-1, preallocated for a whole
    block (nothing grows while sampling).

    The cached window always starts at position 0, the first token of the sequence: the model's
    position embeddings are learned and absolute, so once a sequence outgrows the block and its
    window slides, every token's position changes and so does every cached key and value. A cache
    is therefore only good while the sequence fits in the block (see minigpt.sample.stream).
    """

    def __init__(self, model: MiniGPT, batch_size: int):
        cfg = model.config
        p = model.lm_head.weight
        shape = (batch_size, cfg.n_head, cfg.block_size, cfg.n_embd // cfg.n_head)
        self.layers = [
            LayerKV(torch.empty(shape, dtype=p.dtype, device=p.device),  # (B, nh, bs, hs)
                    torch.empty(shape, dtype=p.dtype, device=p.device))  # (B, nh, bs, hs)
            for _ in range(cfg.n_layer)
        ]
        self.batch_size = batch_size
        self.length = 0  # window positions filled; the next token goes at this position

    def reset(self) -> None:
        """Forget everything (the buffers are kept and overwritten)."""
        self.length = 0


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        if n_embd % n_head:
            raise MiniGPTError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head})")
        self.n_head = n_head
        self.d_k = n_embd // n_head
        self.dropout = dropout
        self.Wq = nn.Linear(n_embd, n_embd, bias=bias)
        self.Wk = nn.Linear(n_embd, n_embd, bias=bias)
        self.Wv = nn.Linear(n_embd, n_embd, bias=bias)
        self.Wo = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, kv: LayerKV | None = None, past: int = 0,
                last_only: bool = False) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C): each position attends to itself and the positions before it.

        With a cache (sampling only): kv holds this layer's keys and values for window positions
        0..past-1; x is positions past..past+T-1, whose keys and values are written into kv, and
        each of its queries attends to every cached position and the new ones up to its own.
        last_only: compute the output of the last position only -> (B, 1, C).
        """
        B, T, C = x.shape
        if kv is None and not last_only:  # training and the uncached sampler: the lesson's path
            q = self.Wq(x).view(B, T, self.n_head, self.d_k).transpose(1, 2)  # (B, nh, T, hs)
            k = self.Wk(x).view(B, T, self.n_head, self.d_k).transpose(1, 2)  # (B, nh, T, hs)
            v = self.Wv(x).view(B, T, self.n_head, self.d_k).transpose(1, 2)  # (B, nh, T, hs)
            # softmax(q k^T / sqrt(d_k)) v with the causal mask, as one fused kernel
            y = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
            )  # (B, nh, T, hs)
            y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
            return self.resid_drop(self.Wo(y))
        return self._forward_cached(x, kv, past, last_only)

    def _forward_cached(self, x: torch.Tensor, kv: LayerKV | None, past: int,
                        last_only: bool) -> torch.Tensor:
        B, T, C = x.shape
        k = self.Wk(x).view(B, T, self.n_head, self.d_k).transpose(1, 2)  # (B, nh, T, hs)
        v = self.Wv(x).view(B, T, self.n_head, self.d_k).transpose(1, 2)  # (B, nh, T, hs)
        if kv is not None:
            kv.k[:, :, past:past + T] = k
            kv.v[:, :, past:past + T] = v
            k = kv.k[:, :, :past + T]  # (B, nh, S, hs), S = past + T keys: cached and new
            v = kv.v[:, :, :past + T]  # (B, nh, S, hs)
        S = k.size(2)
        if last_only:
            x = x[:, -1:]  # (B, 1, C): only the last position's query is needed
        Tq = x.size(1)
        q = self.Wq(x).view(B, Tq, self.n_head, self.d_k).transpose(1, 2)  # (B, nh, Tq, hs)
        if Tq == 1:  # one query, the newest position: it may attend to every key, no mask
            mask, causal = None, False
        elif Tq == S:  # the whole window at once: the ordinary causal mask
            mask, causal = None, True
        else:  # queries are the last Tq of S positions: query i sees keys 0..S-Tq+i
            mask, causal = torch.ones(Tq, S, dtype=torch.bool, device=x.device).tril(S - Tq), False
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal,
            dropout_p=self.dropout if self.training else 0.0,
        )  # (B, nh, Tq, hs)
        y = y.transpose(1, 2).contiguous().view(B, Tq, C)  # (B, Tq, C)
        return self.resid_drop(self.Wo(y))


class TransformerBlock(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        self.ln1 = nn.LayerNorm(n_embd, bias=bias)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout, bias)
        self.ln2 = nn.LayerNorm(n_embd, bias=bias)
        self.ff = nn.Sequential(
            nn.Linear(n_embd, 4 * n_embd, bias=bias),
            nn.GELU(),
            nn.Linear(4 * n_embd, n_embd, bias=bias),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor, kv: LayerKV | None = None, past: int = 0,
                last_only: bool = False) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C), or (B, 1, C) with last_only; kv, past: see the attention."""
        if kv is None and not last_only:
            x = x + self.attn(self.ln1(x))
        else:
            a = self.attn(self.ln1(x), kv, past, last_only)  # (B, T, C), or (B, 1, C)
            if last_only:
                x = x[:, -1:]  # (B, 1, C)
            x = x + a
        x = x + self.ff(self.ln2(x))
        return x


class MiniGPT(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        n_embd: int = 64,
        n_head: int = 4,
        n_layer: int = 4,
        block_size: int = 128,
        dropout: float = 0.0,
        bias: bool = True,
        tie_weights: bool = False,
    ):
        super().__init__()
        self.config = ModelConfig(
            vocab_size=vocab_size, n_embd=n_embd, n_head=n_head, n_layer=n_layer,
            block_size=block_size, dropout=dropout, bias=bias, tie_weights=tie_weights,
        )
        self.block_size = block_size
        self.token_emb = nn.Embedding(vocab_size, n_embd)
        self.pos_emb = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            [TransformerBlock(n_embd, n_head, dropout, bias) for _ in range(n_layer)]
        )
        self.ln_f = nn.LayerNorm(n_embd, bias=bias)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.apply(self._init_weights)
        if tie_weights:
            self.lm_head.weight = self.token_emb.weight

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> MiniGPT:
        return cls(**vars(cfg))

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    def num_params(self) -> int:
        """Distinct parameters (a tied weight counts once)."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """idx (B, T) token ids -> (logits (B, T, vocab), mean cross-entropy or None)."""
        if idx.dim() != 2 or idx.dtype not in (torch.int64, torch.int32):
            raise MiniGPTError(
                f"idx must be a (B, T) tensor of token ids, got {tuple(idx.shape)} {idx.dtype}"
            )
        B, T = idx.shape
        if T > self.block_size:
            raise MiniGPTError(
                f"sequence of length {T} is longer than block_size {self.block_size}; "
                f"crop it to the last {self.block_size} tokens"
            )
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.token_emb(idx) + self.pos_emb(pos))  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(x)
        logits = self.lm_head(x)  # (B, T, vocab)

        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    def next_logits(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """The logits (B, vocab) of the token that follows idx: those of idx's last position.

        Without a cache, idx (B, T) is a whole window (positions 0..T-1, T <= block_size): the
        same numbers as forward(idx)[0][:, -1], but the last block and the head run for the last
        position only. With a cache, idx holds the tokens after the cache.length cached ones
        (positions cache.length.., usually one token); their keys and values join the cache.
        """
        B, T = idx.shape
        past = 0 if cache is None else cache.length
        if T == 0:
            raise MiniGPTError("next_logits needs at least one new token")
        if past + T > self.block_size:
            raise MiniGPTError(
                f"{past} cached + {T} new tokens do not fit in block_size {self.block_size}; "
                f"re-encode the last {self.block_size} tokens without the cache"
            )
        if cache is not None and cache.batch_size != B:
            raise MiniGPTError(f"the cache holds {cache.batch_size} rows, idx has {B}")
        pos = torch.arange(past, past + T, device=idx.device)  # positions within the window
        x = self.drop(self.token_emb(idx) + self.pos_emb(pos))  # (B, T, C)
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            kv = None if cache is None else cache.layers[i]
            x = block(x, kv, past, last_only=i == last)  # (B, T, C); (B, 1, C) after the last
        if cache is not None:
            cache.length = past + T
        return self.lm_head(self.ln_f(x[:, -1]))  # (B, vocab)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                 generator=None, cache=True):
        """Append max_new_tokens sampled tokens to idx (B, T); see minigpt.sample.stream."""
        from minigpt.sample import generate  # sample.py imports this module

        return generate(self, idx, max_new_tokens, temperature=temperature, top_k=top_k,
                        top_p=top_p, generator=generator, cache=cache)
