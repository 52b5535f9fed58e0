"""Attention maps: causal, rows summing to one, equal to softmax(QK^T/sqrt(d)) recomputed by hand
from each block's LayerNorm output, consistent with the model's fused attention output, and the
model left exactly as it was; the heatmap grid is a real PNG of the right shape."""

import copy
import math
import warnings

import pytest
import torch

from conftest import read_png
from minigpt import MiniGPT, MiniGPTError
from minigpt.diagnostics.attention import (
    MAX_TICKS,
    attention_maps,
    display_label,
    plot_attention,
    readable_ids,
    tick_step,
    token_labels,
)
from minigpt.tokenizer import BPETokenizer, CharTokenizer


def peaky(**kw) -> MiniGPT:
    """A tiny model whose queries and keys are scaled up, so attention is far from uniform
    (at initialisation every head spreads its weight almost evenly, and any bug hides)."""
    model = MiniGPT(11, n_embd=16, n_layer=2, n_head=2, block_size=16, **kw)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.Wq.weight.mul_(40)
            block.attn.Wk.weight.mul_(40)
    return model


def sequence(T: int = 12) -> torch.Tensor:
    return torch.randint(0, 11, (1, T))


def explicit_maps(model: MiniGPT, idx: torch.Tensor) -> torch.Tensor:
    """The oracle: embeddings and blocks run by hand; each head's weights from its own slice of
    Wq and Wk, exp of the shifted scores with the future zeroed, divided by the row sums."""
    T = idx.shape[1]
    x = model.token_emb.weight[idx[0]] + model.pos_emb.weight[:T]  # (T, C)
    allowed = torch.tensor([[float(j <= i) for j in range(T)] for i in range(T)])  # (T, T)
    layers = []
    for block in model.blocks:
        a = block.attn
        h = block.ln1(x)  # (T, C)
        heads = []
        for n in range(a.n_head):
            rows = slice(n * a.d_k, (n + 1) * a.d_k)
            q = h @ a.Wq.weight[rows].T + a.Wq.bias[rows]  # (T, d)
            k = h @ a.Wk.weight[rows].T + a.Wk.bias[rows]  # (T, d)
            scores = (q @ k.T) / math.sqrt(a.d_k)
            scores = scores - scores.max(dim=1, keepdim=True).values
            e = torch.exp(scores) * allowed
            heads.append(e / e.sum(dim=1, keepdim=True))
        layers.append(torch.stack(heads))
        x = block(x[None])[0]
    return torch.stack(layers)  # (L, H, T, T)


@torch.no_grad()
def test_maps_equal_a_softmax_from_each_ln1_output_give_the_fused_output_and_are_causal():
    model = peaky().eval()
    idx = sequence()
    maps = attention_maps(model, idx)
    assert maps.shape == (2, 2, 12, 12) and maps.dtype == torch.float32
    expected = explicit_maps(model, idx)
    torch.testing.assert_close(maps, expected, atol=1e-6, rtol=1e-5)
    assert maps[:, :, 1:].amax(dim=-1).mean() > 0.6  # peaky: the comparison means something
    # weights @ V through Wo gives what scaled_dot_product_attention gave inside the model
    x = model.token_emb(idx) + model.pos_emb(torch.arange(idx.shape[1]))  # (1, T, C)
    for layer, block in enumerate(model.blocks):
        a, h = block.attn, block.ln1(x)
        v = a.Wv(h).view(1, -1, a.n_head, a.d_k).transpose(1, 2)  # (1, nh, T, hs)
        y = (maps[layer][None] @ v).transpose(1, 2).reshape(h.shape)  # (1, T, C)
        torch.testing.assert_close(a.Wo(y), a(h), atol=1e-5, rtol=1e-4)
        x = block(x)
    maps = attention_maps(model, sequence(16))  # causal, and the rows sum to one
    future = torch.ones(16, 16, dtype=torch.bool).triu(1)
    assert (maps[..., future] == 0).all()  # exactly zero above the diagonal
    assert (maps[..., ~future] >= 0).all()
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 2, 16), atol=1e-6, rtol=0)
    assert (maps[..., 0, 0] == 1).all()  # the first position can only attend to itself


@pytest.mark.parametrize("training", [True, False])
def test_the_model_is_left_exactly_as_it_was(training):
    model = peaky(dropout=0.2)
    idx = sequence()
    model.eval()
    logits_before, _ = model(idx)
    state = copy.deepcopy(model.state_dict())
    model.train(training)
    first = attention_maps(model, idx)
    second = attention_maps(model, idx)
    torch.testing.assert_close(first, second, atol=0, rtol=0)  # eval inside: no dropout
    assert all(m.training == training for m in model.modules())
    assert all(not b.attn._forward_pre_hooks and not b.attn._forward_hooks
               for b in model.blocks)
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    model.eval()
    logits_after, _ = model(idx)
    assert torch.equal(logits_before, logits_after)


ONE_SEQUENCE = r"one sequence of shape \(1, T\)"


@pytest.mark.parametrize("shape, message", [((1, 17), "longer than the model's block_size"),
                                            ((2, 8), ONE_SEQUENCE),
                                            ((8,), ONE_SEQUENCE),
                                            ((1, 2, 8), ONE_SEQUENCE)])
def test_a_bad_sequence_is_refused_with_hooks_removed_and_mode_restored(shape, message):
    model = peaky().train()
    with pytest.raises(MiniGPTError, match=message):
        attention_maps(model, torch.zeros(shape, dtype=torch.long))
    assert model.training
    assert all(not b.attn._forward_pre_hooks for b in model.blocks)


def test_token_ids_in_a_list_are_refused_saying_so():  # (a notebook's first try)
    with pytest.raises(MiniGPTError, match=ONE_SEQUENCE + ", got list$"):
        attention_maps(peaky(), [[1, 2, 3]])


def test_weights_that_are_not_finite_are_refused_not_drawn_blank():
    model = peaky()
    with torch.no_grad():
        model.blocks[0].attn.Wq.weight[0, 0] = float("nan")
    with pytest.raises(MiniGPTError, match="attention weights are not finite"):
        attention_maps(model, torch.zeros(1, 8, dtype=torch.long))


def test_finite_weights_that_overflow_are_said_to_be_too_large_not_nan():
    """Finite query and key biases of 1e30 overflow the scores: not 'the model's weights are'
    (not finite), which they are not."""
    model = peaky()
    with torch.no_grad():
        model.blocks[0].attn.Wq.bias.fill_(1e30)
        model.blocks[0].attn.Wk.bias.fill_(1e30)
    with pytest.raises(MiniGPTError, match=r"the model's weights are finite, but so large "
                                           r"\(up to 1e\+30\)"):
        attention_maps(model, torch.zeros(1, 8, dtype=torch.long))


def test_labels_show_invisible_characters():
    assert [display_label(c) for c in "a\n \t"] == ["a", "⏎", "␣", "⇥"]
    assert display_label("\x07") == "\\x07"
    assert display_label("ab c") == "ab␣c"


def test_characters_the_axis_font_lacks_are_named_by_code_point(tmp_path):
    """DejaVu Sans Mono has é but no CJK or emoji: those would be empty boxes, and matplotlib
    would warn of each glyph in the middle of a run's output."""
    assert [display_label(c) for c in "é日😀"] == ["é", "U+65E5", "U+1F600"]
    labels = list("Café 日本😀")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Glyph 26085 missing from font(s)" fails the test
        plot_attention(torch.rand(1, 1, 8, 8).tril(), labels, tmp_path / "a.png")


@pytest.mark.parametrize("T, step", [(1, 1), (64, 1), (65, 2), (128, 2), (129, 3), (500, 8)])
def test_tick_step_labels_at_most_max_ticks(T, step):
    assert tick_step(T) == step
    assert len(range(0, T, step)) <= MAX_TICKS


# --- the picture ---------------------------------------------------------------------------


@pytest.mark.parametrize("n_layer, n_head", [(1, 3), (3, 1)])
def test_plot_is_a_png_with_layers_as_rows_and_heads_as_columns(tmp_path, n_layer, n_head):
    T = 10
    maps = torch.rand(n_layer, n_head, T, T).tril().softmax(-1)
    path = tmp_path / "attn" / "step-1.png"
    fig = plot_attention(maps, list("to be or n"), path, title="a title")
    assert len(fig.axes) == n_layer * n_head + 1  # the heatmaps and the colour bar
    pixels = read_png(path)
    height, width = pixels.shape[:2]
    if n_head > n_layer:
        assert width / height > 1.8  # three heatmaps side by side
    else:
        assert height / width > 1.8  # three heatmaps stacked
    assert pixels[..., :3].std() > 0.1  # not blank
    assert [p.name for p in path.parent.iterdir()] == ["step-1.png"]  # no temporary left


def test_plot_of_a_long_text_and_of_numpy_maps(tmp_path):
    T = 100  # every 2nd character labelled
    maps = attention_maps(MiniGPT(11, n_embd=8, n_layer=1, n_head=1, block_size=128),
                          torch.randint(0, 11, (1, T))).numpy()
    fig = plot_attention(maps, ["x"] * T, tmp_path / "long.png")
    below = fig.axes[0].texts[::2]  # (each labelled position: its key's label, then its query's)
    assert [t.get_position()[0] for t in below] == list(range(0, T, 2))
    pixels = read_png(tmp_path / "long.png")
    assert pixels.shape[0] > 500 and pixels.shape[1] > 500


def test_each_heatmap_is_its_own_layer_and_head_titled_placed_labelled_and_scaled():
    """Layer 0 on the top row and head 0 in the left column, each titled as such and drawing
    exactly its own map; the future (above the diagonal, not on it) greyed out; one fixed 0..1
    colour scale; axis names on the outer heatmaps; each label at its own position."""
    import numpy as np

    L, H, T = 2, 3, 5
    maps = torch.rand(L, H, T, T).tril() + 0.01 * torch.eye(T)
    maps = maps / maps.sum(-1, keepdim=True) * torch.arange(1, L * H + 1).view(L, H, 1, 1) / 6
    labels = list("ab\ncd")
    fig = plot_attention(maps, labels)
    future = np.triu(np.ones((T, T), dtype=bool), 1)
    for layer in range(L):
        for head in range(H):
            ax = fig.axes[layer * H + head]
            assert ax.get_title() == f"layer {layer} · head {head}"
            shown = ax.images[0].get_array()
            assert (np.ma.getmaskarray(shown) == future).all()
            assert np.array_equal(shown.data[~future], maps[layer, head].numpy()[~future])
            assert ax.images[0].get_clim() == (0.0, 1.0)
            assert ax.get_xlabel() == ("key (attended to)" if layer == L - 1 else "")
            assert ax.get_ylabel() == ("query (attending)" if head == 0 else "")
            below, left = ax.texts[::2], ax.texts[1::2]
            named = [("a", 0), ("b", 1), ("⏎", 2), ("c", 3), ("d", 4)]
            assert [(t.get_text(), t.get_position()[0]) for t in below] == named
            assert [(t.get_text(), t.get_position()[1]) for t in left] == named
    box = [[fig.axes[layer * H + head].get_position() for head in range(H)] for layer in range(L)]
    assert all(box[0][h].y0 > box[1][h].y0 for h in range(H))  # layer 0 above layer 1
    assert all(box[lay][0].x0 < box[lay][1].x0 < box[lay][2].x0 for lay in range(L))


def test_plot_rejects_mismatched_labels_and_shapes(tmp_path):
    maps = torch.rand(1, 1, 4, 4)
    with pytest.raises(MiniGPTError, match="3 labels for attention maps over 4 positions"):
        plot_attention(maps, list("abc"), tmp_path / "a.png")
    with pytest.raises(MiniGPTError, match=r"must be \(n_layer, n_head, T, T\)"):
        plot_attention(torch.rand(2, 4, 4), list("abcd"), tmp_path / "a.png")
    with pytest.raises(MiniGPTError, match="5 labels for attention maps over 4 positions"):
        plot_attention(maps, list("abcde"), tmp_path / "a.png")
    with pytest.raises(MiniGPTError, match=r"must be \(n_layer, n_head, T, T\)"):
        plot_attention(torch.rand(1, 1, 3, 4), list("abcd"), tmp_path / "a.png")
    assert not list(tmp_path.iterdir())


def test_the_text_read_is_its_known_characters_one_block_at_most():
    tok = CharTokenizer("abc ")
    assert readable_ids(tok, "abXc cab", 4) == tok.encode("abc ")  # X unknown, then a block
    assert readable_ids(tok, "aXb", 4) == tok.encode("ab")


def test_a_bpe_tokens_label_is_its_whole_piece_of_text():
    tok = BPETokenizer.train(["the cat sat\n" * 20], 270)
    ids = tok.encode("the cat")
    labels = token_labels(tok, ids)
    assert "".join(labels) == "the cat" and len(labels) == len(ids) < len("the cat")
