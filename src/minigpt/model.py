"""MiniGPT, exactly the lesson's model: token + position embeddings, pre-LayerNorm blocks of
causal multi-head attention and a 4x GELU MLP, a final LayerNorm and a bias-free lm_head,
every Linear and Embedding weight initialised N(0, 0.02).

The module names are the lesson's (token_emb, pos_emb, blocks[i].ln1/attn/ln2/ff, ln_f, lm_head,
attn.Wq/Wk/Wv/Wo), so the lesson's own code runs against it. With vocab 65 and the defaults it
has 216,576 parameters. No I/O and no printing here.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from minigpt.config import ModelConfig
from minigpt.errors import MiniGPTError
from minigpt.sample import generate as _generate


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q = self.Wq(x).view(B, T, self.n_head, self.d_k).transpose(1, 2)  # (B, nh, T, hs)
        k = self.Wk(x).view(B, T, self.n_head, self.d_k).transpose(1, 2)  # (B, nh, T, hs)
        v = self.Wv(x).view(B, T, self.n_head, self.d_k).transpose(1, 2)  # (B, nh, T, hs)
        # softmax(q k^T / sqrt(d_k)) v with the causal mask, as one fused kernel
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
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

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                 generator=None):
        """Append max_new_tokens sampled tokens to idx (B, T); see minigpt.sample.generate."""
        return _generate(self, idx, max_new_tokens, temperature=temperature, top_k=top_k,
                        top_p=top_p, generator=generator)
