"""Gradient-flow health: statistics equal a hand computation, the update ratio equals one computed
from two state dicts, flags fire for exactly the parameters a zeroed path, a scaled loss or a NaN
should flag, per-layer norms, the table, the one-batch probe, and the plot."""

import copy
import dataclasses
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import read_png
from minigpt import MiniGPT, MiniGPTError
from minigpt.config import TrainConfig
from minigpt.diagnostics.gradflow import (
    EXPLODE,
    VANISH,
    format_table,
    grad_stats,
    layer_norms,
    plot_layer_norms,
    probe_batch_stats,
    snapshot,
)
from minigpt.optim import make_optimizer, set_lr


def tiny(**kw) -> MiniGPT:
    return MiniGPT(11, n_embd=16, n_layer=2, n_head=2, block_size=16, **kw)


def batch(B: int = 4, T: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.randint(0, 11, (B, T + 1))
    return idx[:, :-1], idx[:, 1:]


def backward(model: MiniGPT, scale: float = 1.0) -> None:
    _, loss = model(*batch())
    (loss * scale).backward()


def hand_norm(g: torch.Tensor) -> float:
    return math.sqrt((g.double() ** 2).sum().item())


def by_name(stats) -> dict:
    return {s.name: s for s in stats}


def flagged(stats, flag: str) -> set[str]:
    return {s.name for s in stats if flag in s.flags}


def test_statistics_and_layer_norms_equal_a_hand_computation():
    model = tiny()
    backward(model)
    stats = grad_stats(model)
    params = dict(model.named_parameters())
    assert [s.name for s in stats] == list(params)
    for s in stats:
        g = params[s.name].grad.double()
        n = g.numel()
        mean = g.sum().item() / n
        assert s.shape == tuple(params[s.name].shape)
        assert s.grad_mean_abs == pytest.approx(g.abs().sum().item() / n, rel=1e-5)
        assert s.grad_std == pytest.approx(
            math.sqrt(((g - mean) ** 2).sum().item() / n), rel=1e-4, abs=1e-12)
        assert s.grad_norm == pytest.approx(hand_norm(g), rel=1e-5)
        assert s.weight_norm == pytest.approx(hand_norm(params[s.name].detach()), rel=1e-5)
        assert s.update_ratio is None  # no snapshot given
    # a layer's norm is the square root of its members' summed squares
    groups: dict[str, list[torch.Tensor]] = {}
    for name, p in params.items():
        head = name.split(".")[0]
        key = head if head != "blocks" else "blocks." + name.split(".")[1]
        groups.setdefault(key, []).append(p.grad)
    norms = layer_norms(stats)
    assert list(norms) == ["token_emb", "pos_emb", "blocks.0", "blocks.1", "ln_f", "lm_head"]
    for key, grads in groups.items():
        expected = math.sqrt(sum((g.double() ** 2).sum().item() for g in grads))
        assert norms[key] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.SGD(p, lr=0.1),
    lambda p: torch.optim.SGD(p, lr=0.05),
    lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
])
def test_update_ratio_equals_one_from_two_state_dicts(make_opt):
    """The ratio equals one computed from two state dicts; for plain SGD it is also exactly the
    issue's lr * |update| / |weight|."""
    model = tiny()
    opt = make_opt(model.parameters())
    w0 = {k: v.clone() for k, v in model.state_dict().items()}
    backward(model)
    before = snapshot(model)
    lr, eps = opt.defaults["lr"], torch.finfo(torch.float32).eps
    sgd = {n: lr * hand_norm(p.grad) / hand_norm(p.detach())
           for n, p in model.named_parameters() if p.detach().abs().sum() > 0}
    opt.step()
    w1, stats = model.state_dict(), by_name(grad_stats(model, before))
    assert sgd
    for name, ratio in sgd.items() if isinstance(opt, torch.optim.SGD) else ():
        # w - w0 is a float32 subtraction: its rounding is at most eps / 2 of ||w||
        assert stats[name].update_ratio == pytest.approx(ratio, rel=1e-4, abs=eps)
    for s in stats.values():
        old = hand_norm(w0[s.name])
        if old == 0:  # a fresh LayerNorm bias: the ratio is undefined
            assert s.update_ratio is None and s.name.endswith("bias")
            continue
        assert s.update_ratio == pytest.approx(hand_norm(w1[s.name] - w0[s.name]) / old,
                                               rel=1e-4)


# --- the flags -----------------------------------------------------------------------------


def zero_ln_f(model):
    """ln_f's output no longer depends on its input: nothing upstream gets a gradient."""
    with torch.no_grad():
        model.ln_f.weight.zero_()
        model.ln_f.bias.fill_(0.1)  # so lm_head still learns


def zero_attn_out(model):
    """Block 1's attention output projection is zero: its Wq, Wk, Wv and ln1 get no gradient."""
    with torch.no_grad():
        model.blocks[1].attn.Wo.weight.zero_()


def kill_mlp(model):
    """Block 0's MLP output multiplied by zero: the MLP and the LayerNorm before it are dead."""
    model.blocks[0].ff.register_forward_hook(lambda module, args, out: out * 0)


UPSTREAM = ("token_emb", "pos_emb", "blocks.")
ATTN_IN_1 = {f"blocks.1.{m}" for m in ["ln1.weight", "ln1.bias", "attn.Wq.weight",
                                        "attn.Wq.bias", "attn.Wk.weight", "attn.Wk.bias",
                                        "attn.Wv.weight", "attn.Wv.bias"]}
MLP_0 = {f"blocks.0.{m}" for m in ["ln2.weight", "ln2.bias", "ff.0.weight", "ff.0.bias",
                                    "ff.2.weight", "ff.2.bias"]}


@pytest.mark.parametrize("break_it, expected", [
    (zero_ln_f, lambda names: {n for n in names if n.startswith(UPSTREAM)}),
    (zero_attn_out, lambda names: ATTN_IN_1),
    (kill_mlp, lambda names: MLP_0),
])
def test_a_cut_path_is_flagged_dead_for_exactly_the_parameters_behind_it(break_it, expected):
    model = tiny()
    break_it(model)
    backward(model)
    names = [n for n, _ in model.named_parameters()]
    want = expected(names)
    # the oracle, by hand: exactly the gradients that are all zeros
    assert want == {n for n, p in model.named_parameters() if (p.grad == 0).all()}
    assert flagged(grad_stats(model, exempt=()), "dead") == want
    # by default the key biases (zero by symmetry) are never flagged; nothing else is flagged
    stats = grad_stats(model)
    assert flagged(stats, "dead") == {n for n in want if not n.endswith("Wk.bias")}
    assert all(s.flags == [] for s in stats if s.name not in want)


def test_key_bias_gradient_is_rounding_noise_and_exempt():
    model = tiny()
    backward(model)
    for block in model.blocks:
        assert 0 < hand_norm(block.attn.Wk.bias.grad) < VANISH  # zero in exact arithmetic
    keys = {f"blocks.{i}.attn.Wk.bias" for i in range(2)}
    assert not flagged(grad_stats(model), "vanishing") & keys
    assert flagged(grad_stats(model, exempt=()), "vanishing") >= keys


def test_scaled_loss_is_flagged_exploding():
    model = tiny()
    backward(model, scale=1e6)
    stats = grad_stats(model)
    norms = {n: hand_norm(p.grad) for n, p in model.named_parameters()}
    want = {n for n, v in norms.items() if v > EXPLODE}
    assert "lm_head.weight" in want and len(want) > 10
    assert flagged(stats, "exploding") == want
    model.zero_grad()
    backward(model)  # the same model, unscaled: nothing explodes
    assert not flagged(grad_stats(model), "exploding")
    # a huge learning rate makes the next gradients explode
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=1e4)
    backward(model)
    opt.step()
    opt.zero_grad()
    backward(model)
    norms = {n: hand_norm(p.grad) for n, p in model.named_parameters()}
    want = {n for n, v in norms.items() if v > EXPLODE}
    assert want and flagged(grad_stats(model), "exploding") == want


def test_tiny_gradients_are_flagged_vanishing_not_dead():
    model = tiny()
    backward(model, scale=1e-9)
    stats = grad_stats(model)
    want = {n for n, p in model.named_parameters()
            if 0 < hand_norm(p.grad) < VANISH and not n.endswith("Wk.bias")}
    assert len(want) == len(stats) - 2  # all but the two exempt key biases
    assert flagged(stats, "vanishing") == want
    assert not flagged(stats, "dead")


def test_a_norm_exactly_at_a_limit_is_not_flagged():
    """The limits are strict (docs: vanishing 0 < norm < 1e-7, exploding norm > 100): a norm
    equal to a limit is healthy, one float32 step beyond it is flagged. 1e-7 has no float32,
    so its nearest float32 is also passed as the limit itself."""
    assert (VANISH, EXPLODE) == (1e-7, 100)
    model = tiny()
    at_vanish = torch.tensor(VANISH)  # float32: 1.0000000117e-7
    below = torch.nextafter(at_vanish, torch.tensor(0.0))
    above = torch.nextafter(torch.tensor(EXPLODE), torch.tensor(math.inf))
    norms = {"token_emb.weight": at_vanish.item(), "pos_emb.weight": below.item(),
             "lm_head.weight": EXPLODE, "ln_f.weight": above.item()}
    grads = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for n, g in grads.items():
        g.view(-1)[-1] = norms.get(n, 1.0)  # one element: the norm is exactly its value
    for vanish in (VANISH, at_vanish.item()):
        stats = by_name(grad_stats(model, grads=grads, vanish=vanish))
        assert [stats[n].grad_norm for n in norms] == list(norms.values())
        assert {n: stats[n].flags for n in norms} == {
            "token_emb.weight": [], "pos_emb.weight": ["vanishing"],
            "lm_head.weight": [], "ln_f.weight": ["exploding"]}


def test_nan_and_inf_gradients_are_nonfinite_and_nothing_else():
    model = tiny()
    backward(model)
    model.blocks[0].attn.Wv.weight.grad[0, 0] = math.nan
    model.blocks[1].ff[0].bias.grad[3] = math.inf
    stats = by_name(grad_stats(model))
    assert {n for n, s in stats.items() if s.flags} == {"blocks.0.attn.Wv.weight",
                                                         "blocks.1.ff.0.bias"}
    assert stats["blocks.1.ff.0.bias"].flags == ["nonfinite"]  # inf is not "exploding"
    # an inf element's norm is inf, as by hand (the overflow-safe scaling would make it NaN)
    assert stats["blocks.1.ff.0.bias"].grad_norm == hand_norm(model.blocks[1].ff[0].bias.grad)
    assert stats["blocks.0.attn.Wv.weight"].flags == ["nonfinite"]
    model = tiny()  # a NaN weight makes every gradient nonfinite, exempt key biases included
    with torch.no_grad():
        model.lm_head.weight[0, 0] = math.nan
    backward(model)
    assert all(s.flags == ["nonfinite"] for s in grad_stats(model))


def test_a_step_that_blows_the_weights_up_is_nonfinite():
    """Finite gradients, AdamW at lr 1e308 (a step of about lr a weight): the weights the step
    leaves are inf, and every parameter with an inf weight is flagged (none was: 'none
    flagged'); weights of 1e20, finite, are not, and their norm is their own, not inf."""
    model = tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1.0, weight_decay=0.0)
    stats = probe_batch_stats(model, *batch(), opt, lr=1e308, grad_clip=0.0)
    assert all(math.isfinite(s.grad_norm) for s in stats)  # (the gradients were fine)
    blown = [s for s in stats if not math.isfinite(s.weight_norm)]
    assert blown and all(s.flags == ["nonfinite"] for s in blown)
    big = tiny()
    with torch.no_grad():
        big.lm_head.weight.fill_(1e20)
    backward(big)
    head = by_name(grad_stats(big))["lm_head.weight"]
    assert head.weight_norm == pytest.approx(hand_norm(big.lm_head.weight.detach()), rel=1e-5)
    assert "nonfinite" not in head.flags


def test_norms_of_huge_finite_gradients_are_finite_and_flagged_exploding():
    """A blowing-up run's gradients reach 1e20 and more, finite (seen: gradflow of a compare
    variant at lr 1e6 printed NORM(G) inf beside a MEAN|G| of 2e21, as float32 squares overflow
    past 1.8e19). The norms shown must be the norms (float64 by hand), and the flag exploding,
    not nonfinite: no element is NaN or inf."""
    model = tiny()
    backward(model)
    for p in model.parameters():
        p.grad.mul_(1e22 / p.grad.abs().max())  # largest element 1e22: its square overflows
    stats = grad_stats(model)
    for s, (name, p) in zip(stats, model.named_parameters(), strict=True):
        assert s.grad_norm == pytest.approx(hand_norm(p.grad), rel=1e-5), name
        assert s.flags == ["exploding"], name
    for name, norm in layer_norms(stats).items():
        assert math.isfinite(norm), name


def test_missing_and_frozen_gradients():
    model = tiny()
    model.token_emb.weight.requires_grad_(False)
    backward(model)
    model.pos_emb.weight.grad = None  # as if it were not on the loss's path
    stats = by_name(grad_stats(model))
    assert "token_emb.weight" not in stats  # frozen: not reported
    missing = stats["pos_emb.weight"]
    assert missing.flags == ["dead"] and missing.grad_norm == 0 and missing.grad_mean_abs == 0
    assert missing.weight_norm == pytest.approx(hand_norm(model.pos_emb.weight.detach()))


def test_no_gradients_bad_thresholds_and_snapshots_are_clear_errors():
    with pytest.raises(MiniGPTError, match="call loss.backward"):
        grad_stats(tiny())
    model = tiny()
    backward(model)
    with pytest.raises(MiniGPTError, match="vanish < explode"):
        grad_stats(model, vanish=1.0, explode=0.5)
    other = snapshot(MiniGPT(11, n_embd=8, n_layer=2, n_head=2, block_size=16))
    with pytest.raises(MiniGPTError, match="snapshot does not fit"):
        grad_stats(model, other)


# --- the table -----------------------------------------------------------------------------


def test_table_is_aligned_has_flags_and_a_summary():
    model = tiny()
    zero_attn_out(model)
    backward(model)
    stats = grad_stats(model)
    lines = format_table(stats).splitlines()
    header, rule, rows, summary = lines[0], lines[1], lines[2:-1], lines[-1]
    assert header.split() == ["PARAMETER", "SHAPE", "MEAN|G|", "STD(G)", "NORM(G)", "NORM(W)",
                              "UPDATE/W", "FLAGS"]
    assert set(rule) <= {"-", " "}
    assert [r.split()[0] for r in rows] == [s.name for s in stats]
    # numbers are right-aligned under their headings, FLAGS left-aligned under its own
    for word in ["MEAN|G|", "NORM(G)", "UPDATE/W"]:
        end = header.index(word) + len(word)
        assert all(r[end - 1] != " " and r[end] == " " for r in rows), word
    flags_at = header.index("FLAGS")
    assert all(r[flags_at - 1] == " " and r[flags_at] != " " for r in rows)
    dead_rows = [r for r in rows if r[flags_at:] == "dead"]
    assert len(dead_rows) == 7
    assert summary == f"7 of {len(stats)} parameters flagged: 7 dead"
    unflagged = [dataclasses.replace(s, flags=[]) for s in stats]
    assert format_table(unflagged).splitlines()[-1] == f"{len(stats)} parameters, none flagged"


# --- the one-batch probe -------------------------------------------------------------------


def test_probe_without_optimizer_equals_a_manual_backward_and_touches_nothing():
    model = tiny().eval()
    x, y = batch()
    state = copy.deepcopy(model.state_dict())
    stats = probe_batch_stats(model, x, y)
    assert not model.training  # mode kept
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    model.train()
    _, loss = model(x, y)
    loss.backward()
    for s, (name, p) in zip(stats, model.named_parameters(), strict=True):
        assert s.name == name
        assert s.grad_norm == pytest.approx(hand_norm(p.grad), rel=1e-5)
        assert s.update_ratio is None


def test_probe_runs_the_forward_in_the_runs_precision():
    """A bf16 run's probe: the gradients of a forward under bf16 autocast, as its steps had."""
    model = tiny()
    x, y = batch()
    with torch.autocast("cpu", torch.bfloat16):
        _, loss = model(x, y)
    loss.backward()
    stats = probe_batch_stats(model, x, y, dtype=torch.bfloat16)
    mixed = {n: hand_norm(p.grad) for n, p in model.named_parameters()}
    assert all(s.grad_norm == pytest.approx(mixed[s.name], rel=1e-5) for s in stats)
    float32 = probe_batch_stats(model, x, y)  # another answer
    assert any(s.grad_norm != pytest.approx(f.grad_norm, rel=1e-5)
               for s, f in zip(stats, float32, strict=True))


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])  # muon: two optimizers as one
def test_probe_with_optimizer_steps_a_copy_exactly_as_the_real_step_would(optimizer):
    model = tiny()
    opt = make_optimizer(model, TrainConfig(optimizer=optimizer, lr=1e-3, normuon=True))
    for _ in range(2):  # the optimizer has state (moments, step count)
        opt.zero_grad()
        backward(model)
        opt.step()
    opt.zero_grad(set_to_none=True)
    x, y = batch()
    weights = copy.deepcopy(model.state_dict())
    opt_state = copy.deepcopy(opt.state_dict())
    stats = probe_batch_stats(model, x, y, opt, lr=0.02, grad_clip=1e-3)
    # nothing of the caller's changed
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert {g["lr"] for g in opt.param_groups} == {1e-3}
    after = opt.state_dict()
    for pid, st in opt_state["state"].items():
        assert all(torch.equal(v, after["state"][pid][k]) for k, v in st.items())
    # the oracle: the same step done for real, ratios from the two state dicts
    set_lr(opt, 0.02)
    _, loss = model(x, y)
    loss.backward()
    raw = {n: hand_norm(p.grad) for n, p in model.named_parameters()}
    assert torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-3) > 1e-2  # clipping acts
    opt.step()
    new = model.state_dict()
    for s in stats:  # the gradients backward gave, not the clipped ones the step used
        assert s.grad_norm == pytest.approx(raw[s.name], rel=1e-5)
        old = hand_norm(weights[s.name])
        if old > 0:
            assert s.update_ratio == pytest.approx(hand_norm(new[s.name] - weights[s.name]) / old,
                                                   rel=1e-4)
    with pytest.raises(MiniGPTError, match=r"does not hold this model's parameters \(was the "
                                           r"model made again after it\? make the optimizer"):
        probe_batch_stats(model, x, y, optimizer=torch.optim.SGD(tiny().parameters(), lr=0.1))


# --- the plot ------------------------------------------------------------------------------


def test_plot_layer_norms_writes_a_png_atomically(tmp_path):
    model = tiny()
    history = []
    for step in range(0, 50, 10):
        model.zero_grad()
        backward(model)
        row = {"step": step, "layers": layer_norms(grad_stats(model)), "flagged": {}}
        row["layers"]["blocks.1"] = 0.0 if step == 20 else row["layers"]["blocks.1"]  # dead once
        history.append(row)
    path = tmp_path / "plots" / "gradflow.png"
    fig = plot_layer_norms(history, path)
    lines = fig.axes[0].get_lines()
    assert len(lines) == len(history[0]["layers"])  # a line per layer
    # each line is its layer's norms against the steps; the dead step's zero, which a log
    # axis cannot hold, is a gap (NaN) that the legend counts
    assert fig.axes[0].get_yscale() == "log"
    for line, layer in zip(lines, history[0]["layers"], strict=True):
        want = [r["layers"][layer] or math.nan for r in history]
        assert list(line.get_xdata()) == [r["step"] for r in history]
        np.testing.assert_array_equal(line.get_ydata(), want)
        dead = " (zero or non-finite at 1 steps)" if layer == "blocks.1" else ""
        assert line.get_label() == layer + dead
    assert plot_layer_norms(history).get_size_inches().tolist() == [9.0, 5.0]  # no path: no file
    pixels = read_png(path)  # (H, W, 4)
    height, width = pixels.shape[:2]
    assert width / height == pytest.approx(9 / 5, rel=0.02)  # the 9 x 5 inch figure
    assert pixels[..., :3].std() > 0.05  # not blank
    assert [p.name for p in path.parent.iterdir()] == ["gradflow.png"]  # no temporary left
    with pytest.raises(MiniGPTError, match="no gradient-flow rows"):  # and none for no rows
        plot_layer_norms([], tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_importing_the_diagnostics_does_not_import_matplotlib():
    code = ("import sys, minigpt.diagnostics.gradflow, minigpt.diagnostics.attention; "
            "print('matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_equal_thresholds_and_gradients_of_another_model_are_refused():
    model = tiny()
    backward(model)
    with pytest.raises(MiniGPTError, match="vanish < explode"):
        grad_stats(model, vanish=1.0, explode=1.0)
    with pytest.raises(MiniGPTError, match="call loss.backward"):  # none of this model's names
        grad_stats(model, grads={"elsewhere.weight": torch.ones(3)})


def test_probe_of_a_model_in_eval_mode_runs_its_dropout_as_training_does():
    model = tiny(dropout=0.5).eval()
    x, y = batch()
    torch.manual_seed(1)
    stats = probe_batch_stats(model, x, y)
    reference = copy.deepcopy(model).train()
    torch.manual_seed(1)
    reference(x, y)[1].backward()
    for s, (name, p) in zip(stats, reference.named_parameters(), strict=True):
        assert s.name == name and s.grad_norm == pytest.approx(hand_norm(p.grad), rel=1e-5)


def test_an_optimizer_holding_parameters_of_another_model_is_refused():
    model = tiny()
    optimizer = torch.optim.SGD([*model.parameters(), torch.zeros(3, requires_grad=True)], lr=0.1)
    with pytest.raises(MiniGPTError, match="does not hold this model's parameters"):
        probe_batch_stats(model, *batch(), optimizer)
