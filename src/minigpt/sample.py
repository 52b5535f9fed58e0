"""Sampling text from a trained model: temperature, top-k, top-p, streaming, seeded, KV cache.

As in the lesson, the context is cropped to the last `block_size` tokens before each forward,
and the model runs in eval mode while it samples (the mode it had is given back).

By default the sampler keeps a key/value cache (`KVCache`) while the sequence fits in the block,
so each new token costs one position's work; `cache=False` is the lesson's sampler (a full
forward over the cropped window per token), kept as the oracle the cached one is tested
against: for the same seed both draw the same tokens.
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from minigpt.errors import MiniGPTError, outside_vocabulary
from minigpt.evaluate import evaluating

PROMPT = "ROMEO:"  # the prompt a sample starts from when none is given


class LayerCache:
    """One layer's keys and values for window positions 0 .. length-1, each
    (B, nh, block_size, hs), preallocated (nothing grows while sampling)."""

    def __init__(self, shape: tuple[int, ...], like: torch.Tensor):
        self.k = torch.empty(shape, dtype=like.dtype, device=like.device)  # (B, nh, bs, hs)
        self.v = torch.empty(shape, dtype=like.dtype, device=like.device)  # (B, nh, bs, hs)
        self.length = 0

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the keys and values (B, nh, T, hs) of the next T positions; return those of
        every position held, (B, nh, length, hs)."""
        if k.size(0) != self.k.size(0):
            raise MiniGPTError(f"the cache holds {self.k.size(0)} rows, idx has {k.size(0)}")
        start, self.length = self.length, self.length + k.size(2)
        self.k[:, :, start:self.length] = k
        self.v[:, :, start:self.length] = v
        return self.k[:, :, :self.length], self.v[:, :, :self.length]


class KVCache:
    """Every layer's keys and values for the window positions seen so far. The window starts
    at the sequence's first token, so a cache is good only while the sequence fits in the block
    (why: see `stream`)."""

    def __init__(self, model, batch_size: int):
        cfg = model.config
        shape = (batch_size, cfg.n_head, cfg.block_size, cfg.n_embd // cfg.n_head)
        self.layers = [LayerCache(shape, model.lm_head.weight) for _ in range(cfg.n_layer)]
        # the token ids held (the model writes them: its bigram and smear look back)
        self.tokens = torch.zeros(batch_size, cfg.block_size, dtype=torch.long,
                                  device=model.lm_head.weight.device)

    @property
    def length(self) -> int:
        """Window positions held; the next token goes at this position."""
        return self.layers[0].length


def shown(value) -> str:
    """A value as an error says it: a string quoted (the '0.8' typed for a number), any other
    as it prints (np.float64(-1.0) as -1.0)."""
    return repr(value) if isinstance(value, str) else str(value)


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if not isinstance(temperature, numbers.Real) or not 0 <= temperature < float("inf"):
        raise MiniGPTError(f"temperature must be >= 0 (and finite), got {shown(temperature)}")
    check_filter(top_k, top_p)


def check_filter(top_k: int | None, top_p: float | None) -> None:
    whole = isinstance(top_k, numbers.Integral) and not isinstance(top_k, bool) or (
        isinstance(top_k, torch.Tensor) and top_k.dim() == 0 and not top_k.is_floating_point()
        and top_k.dtype != torch.bool)
    if top_k is not None and (not whole or top_k < 1):
        raise MiniGPTError(f"top_k must be a whole number >= 1, got {shown(top_k)}")
    real = isinstance(top_p, numbers.Real) or (isinstance(top_p, torch.Tensor)
                                               and top_p.dim() == 0)
    if top_p is not None and not (real and 0 < top_p <= 1):
        raise MiniGPTError(f"top_p must be in (0, 1], got {shown(top_p)}")


def filter_logits(logits: torch.Tensor, top_k: int | None = None,
                  top_p: float | None = None) -> torch.Tensor:
    """Set to -inf every logit outside the top k, and outside the smallest set of most likely
    tokens whose probabilities add up to top_p. logits: (B, V)."""
    check_filter(top_k, top_p)
    if logits.dim() != 2:
        raise MiniGPTError(f"logits must be (B, V), got shape {tuple(logits.shape)}")
    return keep_likely(logits, top_k, top_p)


def keep_likely(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """filter_logits without its checks, for the sampler, which checked once (stream)."""
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
        probs = F.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens ranked before it already reach top_p
        drop_sorted = (torch.cumsum(probs, dim=-1) - probs) >= top_p
        drop_sorted[:, 0] = False  # the most likely token always stays (top_p may round to 0)
        drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """One token id per row from the last-position logits (B, V) -> (B, 1)."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    # shift so the largest logit is 0 (softmax does not change): a tiny temperature then
    # sends the others to -inf instead of overflowing every logit to inf; below 1e-6 (greedy
    # in all but name) the temperature is held at 1e-6 so it cannot round to 0 in float32
    logits = logits - logits.max(dim=-1, keepdim=True).values
    logits = keep_likely(logits / max(temperature, 1e-6), top_k, top_p)
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


def stream(model, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
           top_k: int | None = None, top_p: float | None = None,
           generator: torch.Generator | None = None,
           cache: bool = True) -> Iterator[torch.Tensor]:
    """Yield each new token (B, 1) as soon as it is sampled; idx is (B, T) token ids.

    cache=False is the lesson's sampler: every token runs the model over the last block_size
    tokens. cache=True (the default) computes the same logits with less work, and draws each
    token with the same single torch.multinomial call on the same generator, so for the same
    seed it yields the same tokens:

    - while the sequence fits in the block, the window starts at the sequence's first token and
      positions never move, so the keys and values of the tokens already seen are kept in a
      KVCache and each new token runs through the model alone (the prompt once, at the start);
    - once the sequence is longer than block_size, the window slides by one token per step; the
      position embeddings are learned and absolute, so every token in the window changes
      position, every cached key and value is stale, and no cache can be reused exactly. Each
      step then re-encodes the cropped window from scratch, as the lesson does.

    Same tokens, not same bits: the cached logits are the same function of the same window, but
    evaluated in another order (one row at a time instead of the whole window; another attention
    call), so they match the uncached ones to float rounding (about 1e-6 relative). One sample
    from torch.multinomial is argmax_i p_i / E_i over exponential draws E_i taken from the
    generator, the same draws on both paths, so a token could differ only where the two best
    candidates tie to within rounding: never seen in the tests (tests/test_kvcache.py).

    A model other than a MiniGPT (the lesson's own class, say) is always sampled uncached.
    The arguments are checked at the call, before the first token is asked for.
    """
    check_sampling(temperature, top_k, top_p)
    if not isinstance(max_new_tokens, numbers.Integral) or max_new_tokens < 0:
        raise MiniGPTError(f"max_new_tokens must be a whole number >= 0, got {max_new_tokens!r}")
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.size(1) == 0:
        shape = tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__
        raise MiniGPTError(f"idx must be a (B, T) tensor of token ids with T >= 1, got {shape}")
    if hasattr(model, "config") and not 0 <= idx.min() <= idx.max() < model.config.vocab_size:
        raise outside_vocabulary("idx holds", model.config.vocab_size)
    return _tokens(model, idx, int(max_new_tokens), temperature, top_k, top_p, generator, cache)


@torch.no_grad()  # on a generator: gradients are off only while it computes, not between tokens
def _tokens(model, idx: torch.Tensor, max_new_tokens: int, temperature: float,
            top_k: int | None, top_p: float | None, generator: torch.Generator | None,
            cache: bool) -> Iterator[torch.Tensor]:
    """stream's tokens, its arguments checked."""
    B, T = idx.shape
    block_size = model.block_size
    cached = cache and hasattr(model, "config")  # a MiniGPT: its forward takes a cache
    kv = KVCache(model, B) if cached else None
    # the tokens so far, filled in as they come (no torch.cat); when full, the last block_size
    # of them (all the model reads) move to its start: memory does not grow with the text
    seq = torch.empty(B, T + min(max_new_tokens, 2 * block_size), dtype=idx.dtype,
                      device=idx.device)  # (B, width)
    seq[:, :T] = idx
    n = T  # seq[:, :n] is known
    for i in range(max_new_tokens):  # sample token T + i
        if n == seq.size(1):  # (n - block_size >= block_size here: the two never overlap)
            seq[:, :block_size] = seq[:, n - block_size:n]
            n = block_size
        # eval mode for this token only (between tokens the model is the caller's, and streams
        # on one model may take turns); a model in eval mode already is left alone
        with evaluating(model) if model.training else contextlib.nullcontext():
            if cached and T + i <= block_size:  # the window is seq[:, :n], positions 0..n-1
                logits, _ = model(seq[:, kv.length:n], cache=kv)  # only the new positions
            else:  # the lesson's way: the whole window, cropped to the last block_size
                logits, _ = model(seq[:, max(0, n - block_size):n])
        if i == 0 and not torch.isfinite(logits[:, -1]).all():  # once: no sync a token
            raise MiniGPTError(f"the model's outputs are not finite (NaN or inf): "
                               f"{weights_blamed(model)}; sample from an earlier checkpoint")
        idx_next = sample_next(logits[:, -1], temperature, top_k, top_p, generator)  # (B, 1)
        seq[:, n:n + 1] = idx_next
        n += 1
        yield idx_next


def generate(model, idx: torch.Tensor, max_new_tokens: int, **kw) -> torch.Tensor:
    """idx (B, T) followed by max_new_tokens sampled tokens: (B, T + max_new_tokens).
    Keywords as for stream (temperature, top_k, top_p, generator, cache)."""
    return torch.cat([idx, *stream(model, idx, max_new_tokens, **kw)], dim=1)


def default_prompt(tokenizer) -> str:
    """PROMPT, or the text of token 0 where the tokenizer cannot encode it (a character
    tokenizer of a text without those characters)."""
    return PROMPT if tokenizer.can_encode(PROMPT) else tokenizer.decode([0])


def sample_text(model, tokenizer, prompt: str | None, max_new_tokens: int, seed: int = 1337,
                **kw) -> str:
    """A seeded sample continuing `prompt` (None: the default prompt)."""
    prompt = default_prompt(tokenizer) if prompt is None else prompt
    device = next(model.parameters()).device
    idx = torch.tensor([tokenizer.encode(prompt)], device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    out = generate(model, idx, max_new_tokens, generator=gen, **kw)
    return tokenizer.decode(out[0].tolist())


def weights_blamed(model: torch.nn.Module) -> str:
    """Why a model's outputs are NaN or inf: its weights are, or (a run that blew up under
    --skip-nonfinite, its weights 1e7 and finite) they are finite but so large that float32
    overflows on the way."""
    params = list(model.parameters())
    if not all(torch.isfinite(p).all() for p in params):
        return "its weights are"
    top = max(p.detach().abs().max().item() for p in params)
    return f"its weights are finite, but so large (up to {top:.3g}) that they overflow"
