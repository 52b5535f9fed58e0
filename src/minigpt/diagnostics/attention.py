"""Attention maps: the softmax weights every head of every layer gives each earlier character of
one text, and a heatmap grid of them.

The model's attention runs as one fused kernel (F.scaled_dot_product_attention) that never
materialises the weights, so `attention_maps` captures each block's attention input with forward
pre-hooks during one ordinary forward pass and recomputes softmax(q k^T / sqrt(d_k)), causally
masked, from the block's own queries and keys (`queries_keys`, so with the model's options).
The model is left exactly as it was.

    ids = tok.encode(text)
    maps = attention_maps(model, torch.tensor([ids]))  # (n_layer, n_head, T, T)
    plot_attention(maps, token_labels(tok, ids), "attention.png", title="step 500")
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import torch

from minigpt.diagnostics.plots import new_figure, save_png
from minigpt.errors import MiniGPTError
from minigpt.evaluate import evaluating
from minigpt.sample import weights_blamed

# how characters that would print as nothing are shown on the axes
SHOWN_AS = {"\n": "⏎", " ": "␣", "\t": "⇥"}
LABEL_FONT = "DejaVu Sans Mono"  # matplotlib's own: every machine with matplotlib has it
MAX_TICKS = 64  # label every character up to this many; beyond it every k-th


def attention_weights(attn: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d_k)) with the causal mask, for a CausalSelfAttention and its input
    x (B, T, C): (B, n_head, T, T), exactly zero above the diagonal, rows summing to 1. The
    queries and keys are the module's own (normalised and rotated when the model says so)."""
    T = x.size(1)
    q, k = attn.queries_keys(x)  # (B, nh, T, hs) each
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(attn.d_k)  # (B, nh, T, T)
    future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)  # (T, T)
    return scores.masked_fill(future, float("-inf")).softmax(dim=-1)  # (B, nh, T, T)


def attention_maps(model: torch.nn.Module, idx: torch.Tensor) -> torch.Tensor:
    """Attention weights of every layer and head for one sequence idx (1, T) of token ids:
    a float32 CPU tensor (n_layer, n_head, T, T); row i is what position i attends to. It
    runs in eval mode (no dropout) without gradients; the model's mode is restored and its
    hooks removed, whatever happens. Weights that make them NaN or inf are a MiniGPTError."""
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.size(0) != 1:
        got = tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__
        raise MiniGPTError(f"attention maps need one sequence of shape (1, T), got {got}")
    inputs: list[torch.Tensor] = []  # each block's attention input x (1, T, C)
    hooks = [block.attn.register_forward_pre_hook(lambda _, args: inputs.append(args[0]))
             for block in model.blocks]
    try:
        with evaluating(model):
            model(idx)
            maps = [attention_weights(block.attn, x)[0]  # (nh, T, T)
                    for block, x in zip(model.blocks, inputs, strict=True)]
    finally:
        for h in hooks:
            h.remove()
    maps = torch.stack(maps).float().cpu()  # (n_layer, nh, T, T)
    if not torch.isfinite(maps).all():  # (it would draw a blank grid)
        raise MiniGPTError("the attention weights are not finite (NaN or inf): the model's "
                           f"{weights_blamed(model).removeprefix('its ')}; read an earlier "
                           "checkpoint")
    return maps


def readable_ids(tokenizer, text: str, block_size: int) -> list[int]:
    """The ids of the characters of `text` the tokenizer knows (a run's text may lack some of
    a default text's), at most one block of them."""
    return tokenizer.encode("".join(c for c in text if tokenizer.can_encode(c)))[:block_size]


def token_labels(tokenizer, ids) -> list[str]:
    """Each token's own text, to label an axis: a character for a character tokenizer; for
    BPE a piece of text (U+FFFD where a token holds only part of a character's bytes)."""
    return [tokenizer.decode([i]) for i in ids]


def display_label(label: str) -> str:
    """A label that shows on an axis: newline as ⏎, space as ␣, tab as ⇥, other unprintable
    characters escaped ('\\x07'), and a character the axis font has no glyph for by its code
    point ('U+65E5': it would be an empty box)."""
    shown = "".join(SHOWN_AS.get(c, c if has_glyph(c) else f"U+{ord(c):04X}") for c in label)
    return shown if shown.isprintable() else repr(shown)[1:-1]


def has_glyph(char: str) -> bool:
    """Whether the axis font (LABEL_FONT) draws `char` (matplotlib draws a box for a glyph it
    lacks, and warns)."""
    return not char.isprintable() or label_font().get_char_index(ord(char)) != 0


@functools.cache
def label_font():
    """LABEL_FONT's file, read once."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    return FT2Font(font_manager.findfont(LABEL_FONT))


def tick_step(n: int) -> int:
    """Label every k-th position so at most MAX_TICKS labels fit on an axis of n positions."""
    return max(1, math.ceil(n / MAX_TICKS))


def plot_attention(maps, labels: list[str], path: str | Path | None = None,
                   title: str | None = None):
    """A grid of heatmaps of maps (n_layer, n_head, T, T), a tensor or array: layers as rows,
    heads as columns, the T labels (characters or token strings) as queries down the side and
    keys along the bottom; the Figure, written to `path` as a PNG if given. One colour scale,
    linear from 0 to 1, so heads compare; the masked future is light grey. The layout is
    computed, not constrained: a 4 x 4 grid of 64 characters renders in seconds."""
    weights = _as_maps(maps, labels)
    n_layer, n_head, T, _ = weights.shape
    ticks = list(range(0, T, tick_step(T)))  # every position up to MAX_TICKS, then every k-th
    names = [display_label(labels[i]) for i in ticks]
    grid = _GridLayout(n_layer, n_head, len(ticks), max(map(len, names)), title)
    fig = new_figure(*grid.size, dpi=100)
    for layer in range(n_layer):
        for head in range(n_head):
            ax = fig.add_axes(grid.cell(layer, head))
            image = _heatmap(ax, weights[layer, head], names, ticks, grid.font_size)
            # a fixed y spares matplotlib a tight-bbox search for each title's place
            ax.set_title(f"layer {layer} · head {head}", fontsize=9, y=1.0, pad=3)
            if head == 0:
                ax.set_ylabel("query (attending)", labelpad=grid.gutter * 72)
            if layer == n_layer - 1:
                ax.set_xlabel("key (attended to)", labelpad=grid.gutter * 72)
    fig.colorbar(image, cax=fig.add_axes(grid.colour_bar()), label="attention weight")
    if title:
        fig.suptitle(title, y=1 - 0.12 / grid.size[1], va="top")
    return save_png(fig, path)


class _GridLayout:
    """Where each heatmap goes, in figure fractions, from sizes in inches: a square heatmap
    with room for one tick label per position, a gutter for the labels, a title above each."""

    LEFT, RIGHT, BOTTOM, GAP, TITLE = 0.35, 1.0, 0.35, 0.18, 0.3

    def __init__(self, n_layer: int, n_head: int, n_ticks: int, label_chars: int,
                 title: str | None):
        self.n_layer = n_layer
        self.font_size = 7 if n_ticks > 24 else 9
        self.side = max(1.6, 0.105 * n_ticks + 0.2)
        self.gutter = 0.12 + 0.075 * label_chars * self.font_size / 7  # tick labels
        self.top = 0.5 if title else 0.1
        self.col = self.gutter + self.side + self.GAP
        self.row = self.TITLE + self.side + self.gutter + self.GAP
        self.size = (self.LEFT + n_head * self.col + self.RIGHT,
                     self.top + n_layer * self.row + self.BOTTOM)

    def cell(self, layer: int, head: int) -> tuple[float, float, float, float]:
        x = self.LEFT + head * self.col + self.gutter
        y = self.BOTTOM + (self.n_layer - 1 - layer) * self.row + self.gutter + self.GAP
        return self._fraction(x, y, self.side, self.side)

    def colour_bar(self) -> tuple[float, float, float, float]:
        height = min(self.size[1] - self.top - self.BOTTOM, max(2.0, 0.3 * self.size[1]))
        y = self.size[1] - self.top - self.TITLE - height
        return self._fraction(self.size[0] - self.RIGHT + 0.1, max(y, self.BOTTOM), 0.18, height)

    def _fraction(self, x: float, y: float, w: float, h: float):
        width, height = self.size
        return (x / width, y / height, w / width, h / height)


def _as_maps(maps, labels: list[str]):
    """maps as a float numpy array (L, H, T, T), checked against the labels."""
    import numpy as np

    weights = maps.detach().float().cpu().numpy() if isinstance(maps, torch.Tensor) else maps
    weights = np.asarray(weights, dtype=np.float32)
    if weights.ndim != 4 or weights.shape[-1] != weights.shape[-2] or 0 in weights.shape:
        raise MiniGPTError(f"attention maps must be (n_layer, n_head, T, T), got {weights.shape}")
    if len(labels) != weights.shape[-1]:
        raise MiniGPTError(f"{len(labels)} labels for attention maps over "
                           f"{weights.shape[-1]} positions")
    return weights


def _heatmap(ax, w, names: list[str], ticks: list[int], font_size: int):
    """One head's (T, T) weights with the future masked out, and the names at the ticks under
    the columns and left of the rows, as plain text: matplotlib's tick machinery costs a few
    milliseconds per tick, and a 4 x 4 grid of 64 characters has 2048."""
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.transforms import blended_transform_factory

    future = np.triu(np.ones(w.shape, dtype=bool), 1)  # (T, T)
    cmap = colormaps["magma_r"].with_extremes(bad="#e6e6e6")
    image = ax.imshow(np.ma.masked_where(future, w), cmap=cmap, vmin=0.0, vmax=1.0,
                      interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    font = {"fontsize": font_size, "family": LABEL_FONT}
    below = blended_transform_factory(ax.transData, ax.transAxes)  # x in data, y in axes
    left = blended_transform_factory(ax.transAxes, ax.transData)  # x in axes, y in data
    rotation = 90 if any(len(n) > 1 for n in names) else 0
    for i, name in zip(ticks, names, strict=True):
        ax.text(i, -0.008, name, transform=below, ha="center", va="top", rotation=rotation, **font)
        ax.text(-0.008, i, name, transform=left, ha="right", va="center", **font)
    return image
