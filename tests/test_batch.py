"""The batch trade behind the lesson's sliders: the shape, B*T predictions, the activation
memory (linear in B*T) and a measured step time, on a copy of the model."""

import numpy as np
import pytest
import torch

import minigpt.diagnostics.batch
from minigpt import MiniGPT, MiniGPTError, Splits
from minigpt.config import TrainConfig
from minigpt.diagnostics.batch import Trade, batch_sliders, batch_trade, format_trade


@pytest.fixture
def tiny():
    tokens = np.random.default_rng(0).integers(0, 20, 4000).astype(np.uint16)
    return MiniGPT(20, n_layer=1, n_embd=32, n_head=2, block_size=32), Splits.from_tokens(tokens)


def test_the_trade_of_a_shape(tiny):
    model, splits = tiny
    before = [p.clone() for p in model.parameters()]
    t = batch_trade(model, splits, B=4, T=16)
    assert (t.batch_size, t.block_size, t.x_shape, t.predictions) == (4, 16, (4, 16), 4 * 16)
    assert 0 < t.step_s < 10
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    double_b = batch_trade(model, splits, B=8, T=16, measure=False)
    double_t = batch_trade(model, splits, B=4, T=32, measure=False)
    assert double_b.activation_bytes == double_t.activation_bytes == 2 * t.activation_bytes
    assert double_b.step_s is None
    line = format_trade(t)
    assert line.startswith("B=4    T=16 ") and "x, y: (4, 16)" in line
    assert "64 predictions per step" in line and " ms here" in line


def test_sliders_for_b_and_t(tiny, capsys):
    pytest.importorskip("ipywidgets")
    model, splits = tiny
    widget = batch_sliders(model, splits, max_batch=16)
    b, t = widget.children[:2]
    assert (b.max, t.max) == (16, 32)  # T goes up to the model's block size
    b.value, t.value = 3, 5
    widget.update()  # outside a kernel, the line goes to stdout
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "x, y: (3, 5)" in last and "15 predictions per step" in last


def test_a_slider_top_below_one_or_a_shape_not_whole_is_a_clear_error(tiny):
    """True is an int to Python, but no B slider's top: it is refused as 0 is."""
    for top in (0, True):
        with pytest.raises(MiniGPTError, match=rf"^max_batch \(the B slider's top\) must be a "
                                               rf"whole number >= 1, got {top}$"):
            batch_sliders(*tiny, max_batch=top)
    with pytest.raises(MiniGPTError, match=r"^batch_size and block_size must be whole numbers "
                                           r">= 1, got 2.5 and 4$"):
        batch_trade(*tiny, 2.5, 4)


def test_without_ipywidgets_the_sliders_say_how_to_get_them(tiny, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "ipywidgets", None)  # import fails
    with pytest.raises(MiniGPTError, match=r"^the sliders need ipywidgets: pip install "
                                           r"'minigpt-loop\[notebook\]' \(in a checkout: pip "
                                           r"install -e "):
        batch_sliders(*tiny)


def test_the_line_gives_mebibytes_milliseconds_and_predictions_per_second():
    """By hand: 3 MiB of activations, a step of 2 ms over 64 predictions, 32,000 a second."""
    line = format_trade(Trade(4, 16, (4, 16), 64, 3 * 2**20, 0.002))
    assert "activations    3.0 MiB" in line and "one step    2.0 ms here" in line
    assert "(32,000 predictions/s)" in line


def test_the_step_time_is_the_median_of_the_timed_steps(tiny, monkeypatch):
    """One slow step (a page fault, another process) does not make the shape look slow."""
    monkeypatch.setattr(minigpt.diagnostics.batch, "timed_steps",
                        lambda model, optimizer, batches, steps, clip: [0.9, 0.1, 0.2])
    assert batch_trade(*tiny, B=2, T=8).step_s == 0.2


def test_the_step_is_timed_on_the_shape_asked_for_with_the_defaults_and_several_steps(
        tiny, monkeypatch):
    """The time shown for B x T is that of B x T batches (B != T here, so the two cannot be
    swapped unseen), with the default gradient clip the comment promises, and a median of at
    least three timed steps: of one, a slow step would be the figure."""
    seen = {}

    def timed(model, optimizer, batches, steps, clip):
        seen.update(shape=tuple(batches.get_batch("train")[0].shape), steps=steps, clip=clip,
                    training=model.training)
        return [0.1] * steps

    monkeypatch.setattr(minigpt.diagnostics.batch, "timed_steps", timed)
    batch_trade(tiny[0].eval(), tiny[1], B=3, T=7)  # (a notebook's model, after sampling)
    assert seen["shape"] == (3, 7) and seen["training"]  # a training step is timed
    assert seen["steps"] >= 3 and seen["clip"] == TrainConfig().grad_clip
