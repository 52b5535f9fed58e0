"""Evaluating a model: eval mode without gradients, and the two validation figures a run
reports, the lesson's estimate over random batches and the loss over every token of a split;
bits per byte, the loss in a unit that compares across tokenizers; the unigram entropy, the
loss of a model that knows only how common each token is; and the check that a fresh model's
loss is near ln(vocab).
"""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn as nn

from minigpt.data import to_device
from minigpt.errors import MiniGPTError

WHOLE_SPLIT_BATCH = 64  # windows per forward when a whole split is evaluated
INITIAL_LOSS_TOLERANCE = 0.5  # nats from ln(vocab) a fresh model's loss may be

log = logging.getLogger(__name__)


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


def estimate_loss(model: nn.Module, batches, split: str, n_batches: int) -> float:
    """Mean loss over n random batches of a split (batches: a minigpt.data.Batches), in eval
    mode: the lesson's estimate."""
    if n_batches < 1:
        raise MiniGPTError(f"n_batches must be at least 1, got {n_batches} (split_loss reads the "
                           f"whole split)")
    with evaluating(model):
        losses = torch.stack([model(*batches.get_batch(split))[1] for _ in range(n_batches)])
    return losses.mean().item()


def split_loss(model: nn.Module, data: np.ndarray, block_size: int,
               batch_size: int = WHOLE_SPLIT_BATCH, device: torch.device | None = None) -> float:
    """Mean loss over every token of a split, read as non-overlapping windows of block_size
    (the last one shorter): the figure a run reports. The split is read one batch of windows
    at a time, so a sharded split of any size is never loaded whole."""
    device = device or next(model.parameters()).device
    n_targets = len(data) - 1
    if n_targets < 1:
        raise MiniGPTError(f"a split needs at least 2 tokens (an input and its target), got "
                           f"{len(data)}")
    per_batch = batch_size * block_size
    losses, counts = [], []  # read once at the end: a GPU never waits for Python between
    with evaluating(model):
        for start in range(0, n_targets, per_batch):
            stop = min(start + per_batch, n_targets)
            chunk = torch.from_numpy(np.asarray(data[start : stop + 1], dtype=np.int64))
            n_full = (stop - start) // block_size
            pieces = []
            if n_full:
                x = chunk[: n_full * block_size].view(n_full, block_size)  # (N, T)
                y = chunk[1 : n_full * block_size + 1].view(n_full, block_size)  # (N, T)
                pieces.append((x, y))
            if n_full * block_size < stop - start:  # the split's last, shorter window
                pieces.append((chunk[n_full * block_size : -1][None],
                               chunk[n_full * block_size + 1 :][None]))  # (1, t)
            for x, y in pieces:
                losses.append(model(to_device(x, device), to_device(y, device))[1])
                counts.append(y.numel())
    means = torch.stack(losses).tolist()  # each batch's mean loss
    return sum(m * n for m, n in zip(means, counts, strict=True)) / sum(counts)


def target_bytes(data: np.ndarray, byte_lengths: np.ndarray, chunk: int = 1 << 22) -> int:
    """The UTF-8 bytes a split's targets (every token but the first) stand for, read a chunk at
    a time (a sharded split is never loaded whole)."""
    return sum(int(byte_lengths[np.asarray(data[start : start + chunk])].sum())
               for start in range(1, len(data), chunk))


def unigram_entropy(data: np.ndarray, vocab_size: int, chunks: int = 64,
                    chunk: int = 1 << 18) -> float:
    """The entropy, in nats, of the token frequencies of a split: the loss of a model that
    predicts how common each token is and nothing of the ones before it (about 3.31 for
    TinyShakespeare's characters). Counted over all of it up to `chunks` x `chunk` tokens, and
    beyond that over that many tokens in chunks spread evenly along it (a prepared corpus is
    never read whole)."""
    stride = max(chunk, -(-len(data) // chunks))
    counts = sum(np.bincount(np.asarray(data[start : start + chunk]), minlength=vocab_size)
                 for start in range(0, len(data), stride))
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def bits_per_byte(loss: float, n_targets: int, n_bytes: int) -> float:
    """A mean loss in nats per token as bits per byte of the text: the nats summed over the
    targets, over ln 2 and the bytes those targets decode to. A character model of ASCII text
    has one byte a token (bits per byte = loss / ln 2); a BPE model has several."""
    return loss * n_targets / math.log(2) / n_bytes


def check_initial_loss(loss: float | None, vocab_size: int) -> None:
    """A fresh model should be near-uniform: loss ~ ln(vocab). Far from it means a bug."""
    expected = math.log(vocab_size)
    if loss is not None and abs(loss - expected) > INITIAL_LOSS_TOLERANCE:
        log.warning(f"step 0 loss {loss:.3f} is far from ln({vocab_size}) = {expected:.3f}: "
                    f"check the initialisation and the data")
