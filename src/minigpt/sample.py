"""Sampling text from a trained model: temperature, top-k, top-p, streaming, seeded.

As in the lesson, the context is cropped to the last `block_size` tokens before each forward,
and the model is put in eval mode for sampling and given back in the mode it was in.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from minigpt.errors import MiniGPTError


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
        drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """One token id per row from the last-position logits (B, V) -> (B, 1)."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = filter_logits(logits / temperature, top_k, top_p)
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


@torch.no_grad()
def stream(model, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
           top_k: int | None = None, top_p: float | None = None,
           generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
    """Yield each new token (B, 1) as soon as it is sampled; idx is (B, T) token ids."""
    check_sampling(temperature, top_k, top_p)
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
    """idx (B, T) followed by max_new_tokens sampled tokens: (B, T + max_new_tokens)."""
    new = list(stream(model, idx, max_new_tokens, **kw))
    return torch.cat([idx, *new], dim=1)


def sample_text(model, tokenizer, prompt: str, max_new_tokens: int, seed: int = 1337,
                **kw) -> str:
    """A seeded sample continuing `prompt`, or the first vocabulary character when the prompt
    has characters the tokenizer does not know (a run on another text)."""
    if not set(prompt) <= set(tokenizer.chars):
        prompt = tokenizer.chars[0]
    device = next(model.parameters()).device
    idx = torch.tensor([tokenizer.encode(prompt)], device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    out = generate(model, idx, max_new_tokens, generator=gen, **kw)
    return tokenizer.decode(out[0].tolist())
