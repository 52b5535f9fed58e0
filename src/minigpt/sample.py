"""Sampling text from a trained model: temperature, top-k, top-p, streaming, seeded, KV cache.

As in the lesson, the context is cropped to the last `block_size` tokens before each forward,
and the model is put in eval mode for sampling and given back in the mode it was in.

By default the sampler keeps a key/value cache (minigpt.model.KVCache) while the sequence fits
in the block, so each new token costs one position's work; `cache=False` is the lesson's sampler
(a full forward over the cropped window per token), kept as the oracle the cached one is tested
against: for the same seed both draw the same tokens.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from minigpt.errors import MiniGPTError
from minigpt.model import KVCache


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if not temperature >= 0:
        raise MiniGPTError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise MiniGPTError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise MiniGPTError(f"top_p must be in (0, 1], got {top_p}")


def filter_logits(logits: torch.Tensor, top_k: int | None = None,
                  top_p: float | None = None) -> torch.Tensor:
    """Set to -inf every logit outside the top k, and outside the smallest set of most likely
    tokens whose probabilities add up to top_p. logits: (B, V)."""
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
    logits = filter_logits(logits / max(temperature, 1e-6), top_k, top_p)
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


@torch.no_grad()
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
      step then re-encodes the cropped window from scratch, as the lesson does, except that the
      last block and the head run for the last position only (model.next_logits).

    Same tokens, not same bits: the cached logits are the same function of the same window, but
    evaluated in another order (one row at a time instead of the whole window; another attention
    call), so they match the uncached ones to float rounding (about 1e-6 relative). One sample
    from torch.multinomial is argmax_i p_i / E_i over exponential draws E_i taken from the
    generator, the same draws on both paths, so a token could differ only where the two best
    candidates tie to within rounding: never seen in the tests (tests/test_kvcache.py).

    A model without next_logits (the lesson's own class, say) is always sampled uncached.
    """
    check_sampling(temperature, top_k, top_p)
    if idx.dim() != 2 or idx.size(1) == 0:
        raise MiniGPTError(f"idx must be (B, T) token ids with T >= 1, got {tuple(idx.shape)}")
    if not cache or not hasattr(model, "next_logits"):
        yield from _stream_uncached(model, idx, max_new_tokens, temperature, top_k, top_p,
                                    generator)
        return
    was_training = model.training
    model.eval()
    try:
        B, T = idx.shape
        block_size = model.block_size
        N = max(max_new_tokens, 0)
        seq = torch.empty(B, T + N, dtype=idx.dtype, device=idx.device)  # (B, T+N): no torch.cat
        seq[:, :T] = idx
        kv = KVCache(model, B)
        for n in range(T, T + N):  # seq[:, :n] is known; sample token n
            if n <= block_size:  # the window is seq[:, :n], positions 0..n-1: use the cache
                logits = model.next_logits(seq[:, kv.length:n], kv)  # (B, vocab)
            else:  # the window slid: re-encode the last block_size tokens
                logits = model.next_logits(seq[:, n - block_size:n])  # (B, vocab)
            idx_next = sample_next(logits, temperature, top_k, top_p, generator)  # (B, 1)
            seq[:, n:n + 1] = idx_next
            yield idx_next
    finally:
        model.train(was_training)


def _stream_uncached(model, idx, max_new_tokens, temperature, top_k, top_p, generator):
    """The lesson's sampler: a full forward over the cropped window for every new token."""
    was_training = model.training
    model.eval()
    try:
        for _ in range(max_new_tokens):
            idx_cond = idx[:, -model.block_size:]  # crop to the last block_size tokens
            logits, _ = model(idx_cond)
            idx_next = sample_next(logits[:, -1, :], temperature, top_k, top_p, generator)
            idx = torch.cat([idx, idx_next], dim=1)  # (B, T+1)
            yield idx_next
    finally:
        model.train(was_training)


def generate(model, idx: torch.Tensor, max_new_tokens: int, **kw) -> torch.Tensor:
    """idx (B, T) followed by max_new_tokens sampled tokens: (B, T + max_new_tokens).
    Keywords as for stream (temperature, top_k, top_p, generator, cache)."""
    new = list(stream(model, idx, max_new_tokens, **kw))
    return torch.cat([idx, *new], dim=1)


def sample_text(model, tokenizer, prompt: str, max_new_tokens: int, seed: int = 1337,
                **kw) -> str:
    """A seeded sample continuing `prompt`, or the text of token 0 when the tokenizer cannot
    encode the prompt (a character tokenizer of another text)."""
    if not tokenizer.can_encode(prompt):
        prompt = tokenizer.decode([0])
    device = next(model.parameters()).device
    idx = torch.tensor([tokenizer.encode(prompt)], device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    out = generate(model, idx, max_new_tokens, generator=gen, **kw)
    return tokenizer.decode(out[0].tolist())
