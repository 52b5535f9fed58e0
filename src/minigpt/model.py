"""MiniGPT, the lesson's model: token + position embeddings, pre-LayerNorm blocks of causal
multi-head attention and a 4x GELU MLP, a final LayerNorm and a bias-free lm_head, every Linear
and Embedding weight initialised N(0, 0.02) (the biases keep PyTorch's default, uniform in
+-1/sqrt(fan_in), as in the lesson's code; nanoGPT zeroes them). No I/O and no printing here.

The module names are the lesson's (token_emb, pos_emb, blocks[i].ln1/attn/ln2/ff, ln_f,
lm_head, attn.Wq/Wk/Wv/Wo), so the lesson's own code runs against it; with vocab 65 and the
defaults it has 216,576 parameters. One forward serves training, evaluation and sampling:

    logits, loss = model(idx, targets)   # (B, T, vocab) and the mean cross-entropy
    logits, _ = model(idx, cache=cache)  # sampling: idx are the tokens after the cached ones

A cache (minigpt.sample.KVCache) keeps every layer's keys and values, so a new token costs one
position's work instead of a forward over the whole window. The model asks four things of it:
`cache.length`, the positions it holds, `cache.layers[i].update(k, v)`, which stores layer
i's new keys and values and gives back all of them, `cache.layers[i].length`, the positions
that layer holds, and `cache.tokens`, (B, block_size), where the model keeps the token ids
(the bigram and smear options look one or two tokens back).

Options beyond the lesson (minigpt.config.ModelConfig; each off by default): rotary position
embeddings instead of learned ones (pos="rope"), RMSNorm instead of LayerNorm, RMS-normalised
queries and keys (qk_norm), a ReLU-squared or SwiGLU MLP, no biases, a tied head; and from the
modded-nanogpt speedrun: a bigram embedding, the one-token smear, value embeddings, U-net
skips, logit soft-capping, zero-initialised output projections.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from minigpt.config import ModelConfig, validate_model
from minigpt.errors import MiniGPTError, outside_vocabulary


def norm_layer(config: ModelConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd, eps=1e-5)
    return nn.LayerNorm(config.n_embd, bias=config.bias)


class Rotary(nn.Module):
    """Rotary position embeddings: each pair of channels (i, i + hs/2) of a query or key at
    position t is turned by the angle t * 10000^(-2i/hs), so q . k depends on how far apart the
    two positions are, not on where they are."""

    def __init__(self, head_size: int, block_size: int):
        super().__init__()
        freqs = 10000.0 ** (-torch.arange(0, head_size, 2).float() / head_size)  # (hs/2,)
        angles = torch.outer(torch.arange(block_size).float(), freqs)  # (bs, hs/2)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """x (B, nh, T, hs) at positions start .. start + T - 1 -> the same, turned."""
        T = x.size(2)
        cos, sin = self.cos[start:start + T], self.sin[start:start + T]  # (T, hs/2)
        x1, x2 = x.chunk(2, dim=-1)  # (B, nh, T, hs/2) each
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **options) -> torch.Tensor:
    """F.scaled_dot_product_attention, but in float32 on a CPU under bf16 autocast: there its
    bf16 backward measured 8x slower than float32's (46 ms against 6 ms a call, on a CPU with
    AMX), while the projections around it gain from bf16. CUDA's flash kernel wants bf16."""
    if q.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), **options)
    return F.scaled_dot_product_attention(q, k, v, **options)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig, value_embed: bool = False):
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
        self.q_norm = nn.RMSNorm(self.d_k, eps=1e-5) if config.qk_norm else None
        self.k_norm = nn.RMSNorm(self.d_k, eps=1e-5) if config.qk_norm else None
        self.rotary = Rotary(self.d_k, config.block_size) if config.pos == "rope" else None
        # the share of a value embedding added to the values (value_embeds; this block has one)
        self.ve_lambda = nn.Parameter(torch.tensor(0.5)) if value_embed else None

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, nh, T, hs): the channels split into the heads."""
        B, T, C = x.shape
        return x.view(B, T, self.n_head, self.d_k).transpose(1, 2)  # (B, nh, T, hs)

    def queries_keys(self, x: torch.Tensor, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """The queries and keys (B, nh, T, hs) of x (B, T, C), the positions start onwards:
        normalised and turned by their positions when the options say so."""
        q, k = self.heads(self.Wq(x)), self.heads(self.Wk(x))
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rotary is not None:
            q, k = self.rotary(q, start), self.rotary(k, start)
        return q, k

    def forward(self, x: torch.Tensor, kv=None, ve: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C): each position attends to itself and the positions before it.

        kv (sampling only): this layer's cache; x holds the T positions after the ones it holds,
        their keys and values join it, and each query also attends to every cached position.
        ve (B, T, C): the tokens' value embedding, added to the values (value_embeds)."""
        B, T, C = x.shape
        q, k = self.queries_keys(x, 0 if kv is None else kv.length)  # (B, nh, T, hs) each
        v = self.Wv(x)  # (B, T, C)
        if ve is not None:
            v = v + self.ve_lambda * ve
        v = self.heads(v)  # (B, nh, T, hs)
        if kv is not None:
            k, v = kv.update(k, v)  # (B, nh, S, hs): the S - T cached positions, then these T
        S = k.size(2)
        p = self.dropout if self.training else 0.0
        if S == T:  # softmax(q k^T / sqrt(d_k)) v, causally masked, as one fused kernel (the
            # lesson's tril mask and masked_fill, written out: minigpt.lesson.CausalSelfAttention)
            y = attend(q, k, v, is_causal=True, dropout_p=p)
        elif T == 1:  # one query after the cached keys (sampling): it sees them all, no mask
            y = attend(q, k, v, dropout_p=p)
        else:  # T queries after S - T cached keys: query i sees keys 0 .. S - T + i
            mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(S - T)  # (T, S)
            y = attend(q, k, v, attn_mask=mask, dropout_p=p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_drop(self.Wo(y))


class ReLUSquared(nn.Module):
    """relu(x)^2 (Primer, So et al. 2021; modded-nanogpt's MLP): as cheap as ReLU, with a
    gradient, 2 relu(x), that is continuous at 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x).square()


class SwiGLU(nn.Module):
    """silu(a) * b for the two halves a, b of the last dimension: (..., 2H) -> (..., H)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=-1)
        return F.silu(a) * b


def mlp_hidden(config: ModelConfig) -> int:
    """The MLP's hidden width: 4C, or 8C/3 for swiglu (three matrices of C x 8C/3: the
    parameters of two of C x 4C)."""
    return 8 * config.n_embd // 3 if config.mlp == "swiglu" else 4 * config.n_embd


def mlp(config: ModelConfig) -> nn.Sequential:
    """ff: Linear, activation, Linear, Dropout (ff.0 and ff.2 are the lesson's names)."""
    C, hidden = config.n_embd, mlp_hidden(config)
    if config.mlp == "swiglu":
        first, act = nn.Linear(C, 2 * hidden, bias=config.bias), SwiGLU()
    else:
        first = nn.Linear(C, hidden, bias=config.bias)
        act = ReLUSquared() if config.mlp == "relu2" else nn.GELU()
    return nn.Sequential(first, act, nn.Linear(hidden, C, bias=config.bias),
                         nn.Dropout(config.dropout))


class TransformerBlock(nn.Module):
    def __init__(self, config: ModelConfig, value_embed: bool = False):
        super().__init__()
        self.ln1 = norm_layer(config)
        self.attn = CausalSelfAttention(config, value_embed)
        self.ln2 = norm_layer(config)
        self.ff = mlp(config)

    def forward(self, x: torch.Tensor, kv=None, ve: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C); kv: this layer's cache, when sampling; ve: its value
        embedding of the tokens (value_embeds)."""
        x = x + self.attn(self.ln1(x), kv, ve)
        x = x + self.ff(self.ln2(x))
        return x


SMEAR_CHANNELS = 12  # the smear's gate reads this many of a token's embedding channels
EXACT_BIGRAMS = 8192  # beyond this many (previous, current) pairs, the bigram table is hashed


def bigram_rows(vocab_size: int) -> int:
    """Rows of the bigram table: one per (previous, current) pair, the previous token possibly
    none (the first position), for a small vocabulary; else 8 per token, pairs hashed in."""
    pairs = (vocab_size + 1) * vocab_size
    return pairs if pairs <= EXACT_BIGRAMS else 8 * vocab_size


def bigram_ids(idx: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """idx (B, T) -> (B, T): each position's row of the bigram table, from its token and the
    one before (the first position's 'before' is id vocab_size: none)."""
    idx = idx.long()  # (pair ids pass 2**31, and the hash's products 2**62)
    prev = F.pad(idx[:, :-1], (1, 0), value=vocab_size)  # (B, T)
    pair = prev * vocab_size + idx
    rows = bigram_rows(vocab_size)
    if rows == (vocab_size + 1) * vocab_size:
        return pair
    # Knuth's multiplicative hash, its top bits scaled to the rows (the bottom bits, `% rows`,
    # kept only the previous token mod 8: one of 8 rows for each token whatever came before)
    return ((pair * 2654435761) & 0xFFFFFFFF) * rows >> 32  # (bit operations: exact on any
    # device, and a product past 2**63 wraps to the same low 32 bits)


class MiniGPT(nn.Module):
    """MiniGPT(vocab_size, n_embd=64, n_head=4, n_layer=4, block_size=128, ...): the options
    are the fields of minigpt.config.ModelConfig, whose defaults are the lesson's."""

    def __init__(self, vocab_size: int, **options):
        super().__init__()
        if isinstance(vocab_size, ModelConfig):
            raise MiniGPTError("MiniGPT takes vocab_size and options; from a ModelConfig: "
                               "MiniGPT.from_config(config)")
        config = ModelConfig(vocab_size=vocab_size, **options)
        validate_model(config)
        self.config = config
        self.block_size = config.block_size
        C, L = config.n_embd, config.n_layer
        self.token_emb = nn.Embedding(vocab_size, C)
        if config.pos == "learned":
            self.pos_emb = nn.Embedding(config.block_size, C)
        if config.bigram:
            self.bigram_emb = nn.Embedding(bigram_rows(vocab_size), C)
        if config.smear:
            self.smear_gate = nn.Linear(min(SMEAR_CHANNELS, C), 1, bias=False)
            self.smear_lambda = nn.Parameter(torch.zeros(()))  # starts as no smear at all
        if config.value_embeds:
            self.value_emb = nn.ModuleList(
                [nn.Embedding(vocab_size, C) for _ in range(config.value_embeds)])
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([TransformerBlock(config, self.value_table(i) is not None)
                                     for i in range(L)])
        if config.unet:
            self.skip_weights = nn.Parameter(torch.ones(L // 2))
        self.ln_f = norm_layer(config)
        self.lm_head = nn.Linear(C, vocab_size, bias=False)
        self.apply(self._init_weights)
        if config.zero_init:  # each block starts as the identity; its inputs' gradients follow
            for projection in [p for b in self.blocks for p in (b.attn.Wo, b.ff[2])]:
                for tensor in projection.parameters():  # the weight, and the bias if any
                    nn.init.zeros_(tensor)
        if config.tie_weights:
            self.lm_head.weight = self.token_emb.weight

    @classmethod
    def from_config(cls, config: ModelConfig) -> MiniGPT:
        return cls(**vars(config))

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    def value_table(self, layer: int) -> int | None:
        """The value-embedding table block `layer` adds to its values: the first N blocks use
        tables 0 .. N-1 and the last N blocks use them again, in the same order; None for the
        blocks between."""
        n, L = self.config.value_embeds, self.config.n_layer
        if layer < n:
            return layer
        if layer >= L - n:
            return layer - (L - n)
        return None

    def embed(self, idx: torch.Tensor, cache=None) -> torch.Tensor:
        """idx (B, T) -> (B, T, C): the token embeddings, plus each (previous, current) pair's
        (bigram), plus a gated share of the previous position's (smear). With a cache, the
        two tokens before idx come from it, so a position embeds as in the full forward."""
        V, back = self.config.vocab_size, 0
        if cache is not None and (self.config.bigram or self.config.smear):
            past = cache.length
            back = min(past, 2)
            cache.tokens[:, past:past + idx.size(1)] = idx
            idx = cache.tokens[:, past - back:past + idx.size(1)]  # (B, back + T)
        x = self.token_emb(idx)  # (B, back + T, C)
        if self.config.bigram:
            x = x + self.bigram_emb(bigram_ids(idx, V))
        if self.config.smear:  # x_t + lambda * sigmoid(gate(x_t[:12])) * x_{t-1}
            gate = torch.sigmoid(self.smear_gate(x[..., :SMEAR_CHANNELS]))  # (B, back + T, 1)
            before = F.pad(x[:, :-1], (0, 0, 1, 0))  # x_{t-1}; zeros before the first position
            x = x + self.smear_lambda * gate * before
        return x[:, back:] if back else x  # (B, T, C); no slice (no graph node) without a cache

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
                f"sequence of length {T} is longer than the model's block_size "
                f"{self.block_size}: feed it at most {self.block_size} tokens (when sampling, "
                f"the last {self.block_size}), or build it with a larger block_size"
                if cache is None else
                f"{past} cached + {T} new tokens do not fit in block_size {self.block_size}; "
                f"re-encode the last {self.block_size} tokens without the cache")
        try:
            x = self.embed(idx, cache)  # (B, T, C)
        except IndexError:  # (eager, on a CPU: a compiled graph, or a GPU, raises its own)
            raise outside_vocabulary("idx holds", self.config.vocab_size) from None
        if self.config.pos == "learned":  # (rope turns queries and keys inside attention)
            x = x + self.pos_emb(torch.arange(past, past + T, device=idx.device))
        x = self.drop(x)
        L, skips = len(self.blocks), []
        for i, block in enumerate(self.blocks):
            if self.config.unet and i >= L - L // 2:  # the second half takes them in reverse
                x = x + self.skip_weights[i - (L - L // 2)] * skips.pop()
            table = self.value_table(i)
            ve = None if table is None else self.value_emb[table](idx)  # (B, T, C)
            x = block(x, None if cache is None else cache.layers[i], ve)
            if self.config.unet and i < L // 2:
                skips.append(x)
        x = self.ln_f(x)
        logits = self.lm_head(x)  # (B, T, vocab)
        if self.config.logit_cap:  # smoothly into (-cap, cap)
            logits = self.config.logit_cap * torch.tanh(logits / self.config.logit_cap)

        loss = None
        if targets is not None:
            try:
                loss = F.cross_entropy(logits.view(-1, logits.size(-1)),  # (B*T, vocab)
                                       targets.reshape(-1))  # (B*T,)
            except IndexError:
                raise outside_vocabulary("targets hold", self.config.vocab_size) from None
        return logits, loss

    def generate(self, idx: torch.Tensor, max_new_tokens: int = 200) -> torch.Tensor:
        """The lesson's `model.generate(context, 200)`: idx (B, T) and max_new_tokens tokens
        drawn at temperature 1 from the global random generator, as the lesson's sampler draws
        them. minigpt.generate adds temperature, top-k, top-p, a seeded generator."""
        from minigpt.sample import generate

        return generate(self, idx, max_new_tokens)


def count_params(config: ModelConfig) -> int:
    """The parameters a config's model has, counted on the meta device: nothing allocated."""
    try:
        with torch.device("meta"):
            return MiniGPT.from_config(config).num_params()
    except (RuntimeError, TypeError) as e:  # a matrix past 2^63 bytes, or a size past 2^63
        if "overflow" not in str(e).lower():  # (the TypeError's "Overflow when unpacking long")
            raise
        raise MiniGPTError(f"a model {config.n_embd} wide, block {config.block_size}, has "
                           f"matrices too large for torch to describe: lower --n-embd or "
                           f"--block-size") from None
