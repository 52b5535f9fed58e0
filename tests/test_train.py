"""The loop and its pieces: clipping, early stopping, evaluation, reproducibility, checkpoints,
resume, and a short real run on TinyShakespeare."""

import copy
import io
import json
import logging
import math
import re
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import minigpt.step
from conftest import (
    TINY,
    CrashAt,
    in_process,
    one_line_error,
    same_weights,
    tiny_config,
    without_speed,
)
from minigpt import (
    MiniGPT,
    MiniGPTError,
    TrainState,
    console,
    load_checkpoint,
    load_model,
    make_optimizer,
    prepare,
    resolve_config,
    resume_config,
    split_loss,
    train,
    trainer,
)
from minigpt import clock as clock_module
from minigpt.clock import Speed
from minigpt.data import Batches, Splits, load_corpus
from minigpt.diagnostics.probes import Probe
from minigpt.diagnostics.reading import read_run
from minigpt.distributed import HOST_WAIT, World, start, world_from_env
from minigpt.evaluate import estimate_loss, evaluating, target_bytes
from minigpt.run import open_run
from minigpt.sample import sample_text
from minigpt.schedule import schedule_lr
from minigpt.step import (
    MicroSteps,
    clip_gradients,
    step_unless_nonfinite,
    timed_steps,
    train_step,
)


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_clipping_bounds_the_norm():
    model = MiniGPT(20, n_embd=16, n_layer=1, n_head=2, block_size=8)
    _, loss = model(torch.randint(0, 20, (2, 8)), torch.randint(0, 20, (2, 8)))
    (loss * 1000).backward()
    before = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    reported = clip_gradients(model, 1.0)
    after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert reported.item() == pytest.approx(before.item(), rel=1e-5)
    assert before.item() > 10 and after.item() == pytest.approx(1.0, rel=1e-4)
    assert clip_gradients(model, 0.0).item() == pytest.approx(1.0, rel=1e-4)  # 0: no clipping
    untouched = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert untouched.item() == pytest.approx(1.0, rel=1e-4)  # (max_norm 0 would zero them)


def test_a_step_is_the_lessons_steps_by_autograd():
    """train_step against torch autograd on a twin of the model and the same batches: two
    micro-batches and gradients left over from before. The loss it returns is the mean of the
    micro-batches' losses, the norm that of their mean's gradient (nothing left over added),
    and SGD at lr 1 moves each weight by that gradient clipped to norm 1e-2, not before."""
    torch.manual_seed(0)
    model = MiniGPT(20, n_embd=16, n_layer=1, n_head=2, block_size=8)
    twin = copy.deepcopy(model)
    splits = Splits.from_tokens(np.random.default_rng(0).integers(0, 20, 400).astype(np.uint16))
    batches, replay = (Batches(splits, 4, 8, seed=1, streams=(0, 1)) for _ in range(2))
    for p in model.parameters():
        p.grad = torch.full_like(p, 5.0)  # the last step's, which zero_grad must forget
    loss, norm = train_step(model, torch.optim.SGD(model.parameters(), lr=1.0), batches,
                            grad_clip=1e-2, micro=MicroSteps(2))

    mean = (twin(*replay.get_batch("train", 0))[1] + twin(*replay.get_batch("train", 1))[1]) / 2
    grads = torch.autograd.grad(mean, list(twin.parameters()))
    total = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
    assert loss.item() == pytest.approx(mean.item(), rel=1e-6)
    assert norm.item() == pytest.approx(total.item(), rel=1e-5) and total > 1e-2
    for p, before, g in zip(model.parameters(), twin.parameters(), grads, strict=True):
        torch.testing.assert_close(p.detach(), before.detach() - g * 1e-2 / total,
                                   rtol=1e-4, atol=1e-7)


def test_timed_steps_times_each_step_after_one_to_warm_up(monkeypatch):
    """As many times as steps asked, and one step more taken: the weights of steps + 1 plain
    train_steps on a twin. A clock that each step advances by 1, 2, 4 and 8 s reads each
    step's own seconds, the warm-up's 1 left out (not the time since the first began)."""
    model = MiniGPT(20, n_embd=16, n_layer=1, n_head=2, block_size=8)
    twin = copy.deepcopy(model)
    splits = Splits.from_tokens(np.random.default_rng(0).integers(0, 20, 400).astype(np.uint16))
    batches, replay = (Batches(splits, 4, 8, seed=1) for _ in range(2))
    clock = [0.0]

    def ticking_step(*args):
        clock[0] += 2.0 ** len(calls)
        calls.append(args)
        return train_step(*args)

    calls = []
    monkeypatch.setattr(minigpt.step.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(minigpt.step, "train_step", ticking_step)
    times = timed_steps(model, torch.optim.SGD(model.parameters(), lr=0.1), batches, 3)
    monkeypatch.undo()
    optimizer = torch.optim.SGD(twin.parameters(), lr=0.1)
    for _ in range(4):
        train_step(twin, optimizer, replay)
    assert times == [2.0, 4.0, 8.0]
    pairs = zip(model.parameters(), twin.parameters(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


def test_timed_steps_take_the_clip_and_micro_batches_given():
    """timed_steps with gradient accumulation and a tight clip: the weights of the same
    train_steps (steps + 1 of them) on a twin."""
    model = MiniGPT(20, n_embd=16, n_layer=1, n_head=2, block_size=8)
    twin = copy.deepcopy(model)
    splits = Splits.from_tokens(np.random.default_rng(0).integers(0, 20, 400).astype(np.uint16))
    batches, replay = (Batches(splits, 4, 8, seed=1, streams=(0, 1)) for _ in range(2))
    timed_steps(model, torch.optim.SGD(model.parameters(), lr=1.0), batches, 2, grad_clip=1e-3,
                micro=MicroSteps(2))
    optimizer = torch.optim.SGD(twin.parameters(), lr=1.0)
    for _ in range(3):
        train_step(twin, optimizer, replay, grad_clip=1e-3, micro=MicroSteps(2))
    equal = lambda a, b: all(torch.equal(p, q) for p, q in zip(  # noqa: E731
        a.parameters(), b.parameters(), strict=True))
    assert equal(model, twin)
    plain = copy.deepcopy(twin)  # (the oracle tells: an unclipped step moves it elsewhere)
    train_step(plain, torch.optim.SGD(plain.parameters(), lr=1.0), replay)
    assert not equal(plain, twin)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_steps_forward_multiplies_in_the_micro_steps_dtype(dtype):
    """MicroSteps(dtype=bf16): the forward under bf16 autocast (its Linears output bf16), the
    loss that of the same forward under torch.autocast; float32: no autocast at all."""
    model = MiniGPT(20, n_embd=16, n_layer=1, n_head=2, block_size=8)
    twin = copy.deepcopy(model)
    splits = Splits.from_tokens(np.random.default_rng(0).integers(0, 20, 400).astype(np.uint16))
    batches, replay = (Batches(splits, 4, 8, seed=1) for _ in range(2))
    seen = []
    model.lm_head.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    loss, _ = train_step(model, torch.optim.SGD(model.parameters(), lr=0.1), batches,
                         micro=MicroSteps(1, dtype))
    assert seen == [dtype]
    with torch.autocast("cpu", torch.bfloat16, enabled=dtype == torch.bfloat16):
        _, expected = twin(*replay.get_batch("train", 0))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_ddp_all_reduces_in_a_steps_last_micro_batch_only():
    """Under DDP, train_step's micro-batches keep their gradients to themselves (no_sync) but
    for the last, whose backward all-reduces the accumulated sum: counted by a communication
    hook, in a gloo group of one process. (The two-process tests take one micro-batch a
    process, which an all-reduce in every micro-batch, or in the first alone, passed.) The
    weights are those of the same accumulated step without DDP."""
    dist = torch.distributed
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("this PyTorch has no gloo backend")
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
    from torch.nn.parallel import DistributedDataParallel

    torch.manual_seed(0)
    plain = MiniGPT(20, n_embd=16, n_layer=1, n_head=2, block_size=8)
    twin = copy.deepcopy(plain)
    splits = Splits.from_tokens(np.random.default_rng(0).integers(0, 20, 400).astype(np.uint16))
    batches, replay = (Batches(splits, 4, 8, seed=1, streams=(0, 1, 2)) for _ in range(2))
    micro, reduced = [], []  # the micro-batch being drawn; the one of each all-reduce
    draw = batches.get_batch
    batches.get_batch = lambda split, i=0: micro.append(i) or draw(split, i)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        model = DistributedDataParallel(plain)
        model.register_comm_hook(None, lambda group, bucket: reduced.append(micro[-1])
                                 or allreduce_hook(group, bucket))
        train_step(model, torch.optim.SGD(model.parameters(), lr=0.1), batches,
                   micro=MicroSteps(3))
    finally:
        dist.destroy_process_group()
    assert micro == [0, 1, 2] and reduced and set(reduced) == {2}, reduced
    train_step(twin, torch.optim.SGD(twin.parameters(), lr=0.1), replay, micro=MicroSteps(3))
    for a, b in zip(plain.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_weight_decay_only_on_matrices():
    model = MiniGPT(20, n_embd=16, n_layer=1, n_head=2, block_size=8)
    opt = make_optimizer(model, resolve_config().train)
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] > 0 and plain["weight_decay"] == 0
    assert all(p.dim() >= 2 for p in decayed["params"])
    assert all(p.dim() == 1 for p in plain["params"])
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))
    t = resolve_config(overrides={"beta1": 0.8, "beta2": 0.95}).train
    assert [g["betas"] for g in make_optimizer(model, t).param_groups] == [(0.8, 0.95)] * 2
    sgd = make_optimizer(model, resolve_config(overrides={"optimizer": "sgd"}).train)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.9


@pytest.mark.parametrize("optimizer", ["adamw", "sgd", "muon"])
def test_every_optimizer_decays_the_matrices_by_the_runs_weight_decay_and_nothing_else(optimizer):
    """Each parameter's decay, read from the groups it is stepped in (Muon's and its AdamW's
    for muon): --weight-decay on the matrices and embeddings, 0 on the biases and gains, and
    each parameter in one group. (SGD's and muon's AdamW could drop the decay unseen.)"""
    model = MiniGPT(20, n_embd=16, n_layer=1, n_head=2, block_size=8, bias=True)
    opt = make_optimizer(model, resolve_config(overrides={"optimizer": optimizer,
                                                          "weight_decay": 0.25}).train)
    decay = [(id(p), g["weight_decay"]) for g in opt.param_groups for p in g["params"]]
    assert len(decay) == len(dict(decay))  # (no parameter in two groups)
    assert dict(decay) == {id(p): 0.25 if p.dim() >= 2 else 0.0 for p in model.parameters()}
    assert {p.dim() for p in model.parameters()} == {1, 2}  # (both kinds are there)


def test_adamw_is_fused_on_a_cpu():  # (the device-side skip of non-finite steps needs it)
    model = MiniGPT(20, n_embd=16, n_layer=1, n_head=2, block_size=8)
    assert make_optimizer(model, resolve_config().train).defaults["fused"] is True
    muon = make_optimizer(model, resolve_config(overrides={"optimizer": "muon"}).train)
    assert muon.parts[1].defaults["fused"] is True


@pytest.mark.parametrize("norm", [math.nan, math.inf])
def test_an_optimizer_not_fused_skips_a_step_whose_gradient_norm_is_not_finite(norm):
    """SGD (as --optimizer sgd makes it, and Muon's) decides on the host: a NaN or inf norm
    leaves the weights and the momentum as they were; a finite one steps (the oracle)."""
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([weight], lr=0.1, momentum=0.9)
    weight.grad = torch.ones(3)
    step_unless_nonfinite(optimizer, torch.tensor(norm))
    assert torch.equal(weight.detach(), torch.ones(3)) and not optimizer.state
    step_unless_nonfinite(optimizer, torch.tensor(1.0))
    assert not torch.equal(weight.detach(), torch.ones(3)) and optimizer.state


@pytest.mark.parametrize("norm", [math.nan, math.inf])
def test_a_fused_adamw_skips_a_step_whose_gradient_norm_is_not_finite(norm):
    """The fused AdamW (the default's) decides on the device through found_inf: a NaN or an inf
    norm leaves the weights and the moments as they were; a finite one steps (the oracle).
    (A flag of NaN alone let an inf norm's step through: weight decay moved the weights.)"""
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([weight], lr=0.1, fused=True)
    weight.grad = torch.ones(3)
    step_unless_nonfinite(optimizer, torch.tensor(norm))
    assert torch.equal(weight.detach(), torch.ones(3))
    assert all(not s["exp_avg"].any() for s in optimizer.state.values())
    step_unless_nonfinite(optimizer, torch.tensor(1.0))
    assert not torch.equal(weight.detach(), torch.ones(3))


def test_early_stopping_counts_evaluations_without_improvement():
    state = TrainState()
    assert state.record_eval(3.0, min_delta=0.1) and not state.out_of_patience(2)
    assert not state.record_eval(2.95, min_delta=0.1)  # better, but not by more than min_delta
    assert state.record_eval(2.5, min_delta=0.1)  # a real improvement resets the count
    assert not state.record_eval(2.6, min_delta=0.1) and not state.out_of_patience(2)
    assert not state.record_eval(2.7, min_delta=0.1) and state.out_of_patience(2)
    assert not state.out_of_patience(0)  # patience 0: never stop early


def test_an_evaluation_equal_to_the_best_is_no_improvement():
    """The best is the first evaluation to reach a loss: an equal one later neither takes its
    place nor resets the count toward early stopping."""
    state = TrainState()
    assert state.record_eval(3.0)
    assert not state.record_eval(3.0) and state.bad_evals == 1 and state.out_of_patience(1)


def test_a_state_saved_before_skipped_logged_reads_its_skips_as_told():
    """(Then `skipped` was the count its rows had told of: a resume must not tell them again.)"""
    state = TrainState()
    state.load_state_dict({"step": 8, "skipped": 3})
    assert (state.step, state.skipped, state.skipped_logged) == (8, 3, 3)
    state.load_state_dict(TrainState(skipped=3, skipped_logged=1).state_dict())
    assert (state.skipped, state.skipped_logged) == (3, 1)  # (a newer one's, as saved)


def test_a_saved_state_is_checked_field_by_field_as_a_number_of_its_kind():
    """A whole number where a float is due (a hand-edited best_val 2) is a float; True (a bool
    is an int to isinstance) and a negative count are refused, as a string is."""
    state = TrainState()
    state.load_state_dict({"step": 3, "best_val": 2})
    assert (state.step, state.best_val) == (3, 2)
    for edit, said in [({"step": True}, "step is True"), ({"bad_evals": -1}, "bad_evals is -1"),
                       ({"best_val": False}, "best_val is False")]:
        with pytest.raises(ValueError, match=rf"parts\.state\.{said}, not a"):
            TrainState().load_state_dict({"step": 3, **edit})


def test_the_bar_keeps_the_last_validation_loss_and_stops_at_the_time_budget(monkeypatch):
    """A row without an evaluation leaves the bar's val as the last one; a time budget's bar
    runs over seconds and ends at the budget, however far past it the last step ends. (A bar
    shown: off a terminal tqdm draws nothing and counts nothing.)"""
    from tqdm.std import tqdm as drawn

    monkeypatch.setattr(console, "tqdm", lambda **kw: drawn(**kw | {"disable": False,
                                                                    "file": io.StringIO()}))
    bar = console.Progress(resolve_config(overrides={"time_budget": 10.0}).train, 0, 0.0, True)
    row = {"train_loss": 3.0, "lr": 1e-3, "tokens_per_s": 100, "mfu": 0.1}
    bar.show(row | {"val_loss": 2.5})
    bar.show(row)
    bar.advance(7, 12.5)
    assert "val=2.500" in bar.bar.postfix and bar.bar.n == bar.bar.total == 10
    bar.close()


def test_a_resumed_runs_bar_starts_where_it_stopped(monkeypatch):
    """Resumed at step 7 (or 3.14 s into a time budget), the bar starts there, to the tenth of a
    second: from 0, its first advance counted the steps before the resume as this command's."""
    from tqdm.std import tqdm as drawn

    monkeypatch.setattr(console, "tqdm", lambda **kw: drawn(**kw | {"disable": False,
                                                                    "file": io.StringIO()}))
    step, seconds = 7, 3.14
    for overrides, at in [({"steps": 20}, step), ({"time_budget": 10.0}, round(seconds, 1))]:
        bar = console.Progress(resolve_config(overrides=overrides).train, step, seconds, True)
        assert bar.bar.n == at
        bar.close()


def test_a_target_is_reached_by_a_loss_equal_to_it_and_recorded_once():
    state = TrainState()
    assert state.record_targets(2.6, [3.0, 2.5], seconds=1.234) == {"3": 1.23}
    assert state.record_targets(2.5, [3.0, 2.5], seconds=2.0) == {"2.5": 2.0}  # equal: reached
    assert state.reached == {"3": 1.23, "2.5": 2.0}  # each at the first time it was reached


def test_split_loss_covers_every_token_once():
    model = MiniGPT(11, n_embd=16, n_layer=1, n_head=2, block_size=8).eval()
    data = np.random.default_rng(0).integers(0, 11, 100).astype(np.uint16)
    t = torch.from_numpy(data.astype(np.int64))
    logits = torch.cat([model(t[i : min(i + 8, 99)][None])[0][0] for i in range(0, 99, 8)])
    expected = torch.nn.functional.cross_entropy(logits, t[1:]).item()
    assert split_loss(model, data, 8, 5, torch.device("cpu")) == pytest.approx(expected, rel=1e-5)


def test_split_loss_of_a_training_model_is_its_eval_mode_loss_without_a_graph(monkeypatch):
    """The trainer evaluates the model it trains, in training mode: split_loss turns dropout
    off (the eval model's loss, the same at each call), builds no graph, and gives the model
    back in training mode."""
    model = MiniGPT(11, n_embd=16, n_layer=1, n_head=2, block_size=8, dropout=0.5)
    data = np.random.default_rng(0).integers(0, 11, 100).astype(np.uint16)
    expected = split_loss(model.eval(), data, 8, 5, torch.device("cpu"))
    graphs = []
    real = MiniGPT.forward
    monkeypatch.setattr(MiniGPT, "forward", lambda self, *a, **kw: graphs.append(
        torch.is_grad_enabled()) or real(self, *a, **kw))
    assert split_loss(model.train(), data, 8, 5, torch.device("cpu")) == pytest.approx(
        expected, rel=1e-6)
    assert model.training and graphs and not any(graphs)


def test_split_loss_reads_the_device_once_not_once_a_batch(monkeypatch):
    """A GPU is never made to wait for Python between the batches of a whole-split evaluation:
    the losses are read once, at the end (13 batches here)."""
    model = MiniGPT(11, n_embd=16, n_layer=1, n_head=2, block_size=8).eval()
    data = np.random.default_rng(0).integers(0, 11, 200).astype(np.uint16)
    reads = []
    for name in ("item", "tolist", "__float__", "__bool__"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name,
                            lambda self, real=real, name=name: reads.append(name) or real(self))
    split_loss(model, data, 8, 2, torch.device("cpu"))
    assert reads == ["tolist"]


def test_the_estimate_is_the_mean_over_its_batches():
    model = MiniGPT(11, n_embd=16, n_layer=1, n_head=2, block_size=8)
    splits = Splits.from_tokens(np.random.default_rng(0).integers(0, 11, 400).astype(np.uint16))
    batches, replay = (Batches(splits, 4, 8, seed=3) for _ in range(2))
    with torch.no_grad():
        losses = [model.eval()(*replay.get_batch("val"))[1].item() for _ in range(5)]
    assert estimate_loss(model.train(), batches, "val", 5) == pytest.approx(np.mean(losses))
    assert model.training  # (given back as it came)


def test_the_estimate_reads_the_split_it_is_asked_for_even_in_one_batch():
    model = MiniGPT(11, n_embd=16, n_layer=1, n_head=2, block_size=8)
    splits = Splits.from_tokens(np.random.default_rng(0).integers(0, 11, 400).astype(np.uint16))
    batches, replay = (Batches(splits, 4, 8, seed=3) for _ in range(2))
    with torch.no_grad():
        expected = model.eval()(*replay.get_batch("train"))[1].item()
        val = model(*Batches(splits, 4, 8, seed=3).get_batch("val"))[1].item()
    assert val != pytest.approx(expected)  # (the splits tell apart)
    assert estimate_loss(model, batches, "train", 1) == pytest.approx(expected)


def test_split_loss_of_the_shortest_split_is_its_one_targets_loss():
    model = MiniGPT(11, n_embd=16, n_layer=1, n_head=2, block_size=8).eval()
    data = np.array([3, 7], dtype=np.uint16)
    with torch.no_grad():
        logits = model(torch.tensor([[3]]))[0][0]  # (1, V)
    expected = F.cross_entropy(logits, torch.tensor([7])).item()
    assert split_loss(model, data, 8) == pytest.approx(expected, rel=1e-6)


def test_evaluating_gives_the_model_back_in_its_mode_and_builds_no_graph():
    model = MiniGPT(11, n_embd=16, n_layer=1, n_head=2, block_size=8, dropout=0.5)
    for training in (True, False):
        model.train(training)
        with evaluating(model):
            assert not model.training
            assert not model(torch.zeros(1, 8, dtype=torch.long))[0].requires_grad
        assert model.training is training


def test_target_bytes_read_in_chunks_count_every_target_once():
    data = np.random.default_rng(0).integers(0, 11, 100).astype(np.uint16)
    lengths = np.arange(1, 12)  # token i stands for i + 1 bytes
    expected = int(lengths[data[1:]].sum())
    assert [target_bytes(data, lengths, chunk) for chunk in (1, 7, 99, 1000)] == [expected] * 4


def test_run_folder_contents_targets_and_checkpoint(small_text, tmp_path):
    """One run: the files it writes, the seconds to each target loss, and a last checkpoint that
    gives back the trained model (load_model, and the run itself rebuilt and restored)."""
    out = tmp_path / "run"
    result = train(tiny_config(small_text, steps=40, eval_every=10, log_every=5,
                               targets="10,2.5,0.01"), out, progress=False)
    summary = result.summary
    assert set(summary) >= {"final_val_loss", "best_val_loss", "steps", "train_s", "wall_s",
                            "tokens_per_s", "params"}
    assert result.folder == out  # and the model it gives back is the one last saved
    model, tok, meta = load_model(out, "last")
    saved = model.state_dict()
    assert all(torch.equal(v, saved[k]) for k, v in result.model.state_dict().items())
    assert not result.model.training  # as load_model gives it: ready to sample (no dropout)
    assert json.loads((out / "summary.json").read_text()) == summary
    assert summary["steps"] == 40 and summary["final_val_loss"] < math.log(27)
    rows = metrics(out)
    assert [r["step"] for r in rows] == [0, 5, 10, 15, 20, 25, 30, 35, 39]
    assert all({"step", "train_loss", "lr", "grad_norm", "tokens_per_s"} <= set(r) for r in rows)
    evals = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in evals] == [0, 10, 20, 30, 39]
    assert min(r["val_loss"] for r in evals) == summary["best_val_loss"]
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["train"]["steps"] == 40
    assert {"torch", "python", "device", "torch_threads"} <= set(config["environment"])
    assert json.loads((out / "tokenizer.json").read_text())["kind"] == "char"
    assert {p.name for p in (out / "checkpoints").iterdir()} >= {"last.json", "best.json"}

    first = {x: next((r for r in evals if r["val_loss"] <= float(x)), None)
             for x in ("10", "2.5", "0.01")}
    assert first["10"] is evals[0] and first["0.01"] is None
    assert first["2.5"] is not None and first["2.5"] is not evals[0]  # learned to get there
    assert summary["time_to"] == {x: (r["time_s"] if r else None) for x, r in first.items()}
    assert [r.get("reached") for r in evals if "reached" in r] == [
        {x: first[x]["time_s"]} for x in ("10", "2.5")]

    assert meta["step"] == 40
    groups = load_checkpoint(out / "checkpoints", "last").meta["optimizer"]["param_groups"]
    assert len(groups) == 2 and {g["lr"] for g in groups} == {rows[-1]["lr"]}  # the last step's
    run = open_run(out, "last")
    assert run.state.step == 40 and not run.model.training  # (ready for the diagnostics)
    idx = torch.tensor([tok.encode("the quick brown fox")])
    torch.testing.assert_close(model(idx)[0], run.model.eval()(idx)[0], rtol=0, atol=0)
    torch.testing.assert_close(model(idx)[0], result.model.eval()(idx)[0], rtol=0, atol=0)
    assert not torch.equal(MiniGPT.from_config(run.cfg.model)(idx)[0], model(idx)[0])


def test_a_target_is_compared_with_the_validation_loss_per_byte_that_val_bpb_tells(small_text,
                                                                                  tmp_path):
    """A target is a loss in nats per byte: val_bpb * ln 2, over the split's targets (one fewer
    than its tokens). A first run reads step 0's val_bpb; the same run again, its target a
    hair (1e-6) above that, reaches it; counted over every token, the loss per byte is
    1 / (tokens - 1) higher, well above the hair, and it would not. A target a hair below is
    not reached: a comparison with any slack (or none at all) would record it too. (Below by
    ten units of the 6th digit: time_to's keys are the targets to 6 digits, {x:g}.)"""
    first = train(tiny_config(small_text, steps=1), tmp_path / "first", progress=False)
    nats = metrics(first.folder)[-1]["val_bpb"] * math.log(2)
    above, below = nats * (1 + 1e-6), nats - 10.0 ** (math.floor(math.log10(nats)) - 4)
    again = train(tiny_config(small_text, steps=1, targets=f"{above!r},{below!r}"),
                  tmp_path / "again", progress=False)
    time_to = again.summary["time_to"]
    assert list(time_to) == [f"{above:g}", f"{below:g}"]
    assert time_to[f"{above:g}"] is not None and time_to[f"{below:g}"] is None


def test_a_run_records_the_tokenizer_split_and_vocabulary_of_its_data(small_text, tmp_path):
    """A prepared folder brings its own tokenizer and split, whatever the config asked for;
    the model is as wide as the vocabulary read (the text's distinct characters)."""
    prepare(str(small_text), tmp_path / "prepared", val_fraction=0.2, progress=False)
    cfg = tiny_config(tmp_path / "prepared", steps=1, tokenizer="bpe", vocab_size=300,
                      val_fraction=0.5)
    result = train(cfg, tmp_path / "run", progress=False)
    chars = len(set(small_text.read_text()))
    saved = resume_config(tmp_path / "run")
    assert (saved.data.tokenizer, saved.data.val_fraction) == ("char", 0.2)
    again = resume_config(tmp_path / "run", {"tokenizer": "bpe"})  # the command repeated:
    assert again.data.tokenizer == "char"  # the folder's tokenizer is no change
    assert saved.model.vocab_size == result.tokenizer.vocab_size == chars
    assert result.model(torch.tensor([[0]]))[0].shape[-1] == chars


def test_same_seed_same_losses(small_text, tmp_path):
    runs = []
    for name, seed in [("a", 1), ("b", 1), ("c", 2)]:
        train(tiny_config(small_text, steps=20, log_every=1, eval_every=10, seed=seed),
              tmp_path / name, progress=False)
        runs.append([r["train_loss"] for r in metrics(tmp_path / name)])
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_early_stopping_ends_the_run(small_text, tmp_path, caplog):
    caplog.set_level("INFO", logger="minigpt")
    cfg = tiny_config(small_text, steps=200, eval_every=5, patience=1, min_delta=10.0)
    summary = train(cfg, tmp_path / "run", progress=False).summary
    # evaluations at steps 0 (improves on infinity) and 5 (no improvement of 10 nats)
    assert summary["steps"] == 6
    assert "early stopping at step 5: no improvement for 1 evaluation (" in caplog.text
    assert "6 steps, " in caplog.text  # the summary's line
    found = {f.kind: f.step for f in read_run(tmp_path / "run")}  # and the curve says so
    assert found["early stop"] == 5 and found["best"] == 0
    # resumed, it has ended (each resume took one more step)
    again = train(resume_config(tmp_path / "run"), tmp_path / "run", resume=True, progress=False)
    assert again.summary["steps"] == 6 and "the run has ended: nothing to train" in caplog.text


def test_the_best_checkpoint_is_only_written_by_an_evaluation_that_improves(small_text, tmp_path):
    """With min_delta 10 nats only step 0's evaluation improves (on infinity): 'best' stays the
    state after it while 'last' moves on, and its weights are that state's, not the last's.
    Writing 'best' at every evaluation kept 'best' and 'last' the same checkpoint."""
    train(tiny_config(small_text, steps=10, eval_every=5, min_delta=10.0), tmp_path,
          progress=False)
    rows = [r for r in metrics(tmp_path) if "val_loss" in r]
    best, last = (load_checkpoint(tmp_path / "checkpoints", name) for name in ("best", "last"))
    assert [r["step"] for r in rows] == [0, 5, 9]
    assert (best.meta["step"], last.meta["step"]) == (rows[0]["step"] + 1, rows[-1]["step"] + 1)
    weights = [load_model(tmp_path, name)[0].state_dict() for name in ("best", "last")]
    assert not all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_the_evaluations_read_the_validation_split(tmp_path):
    """A text whose validation part (its last tenth: 'xy' repeated) the model never trains on:
    each evaluation's estimate over random batches is the validation loss (the final
    whole-split figure's, to a few percent, the split being periodic), far above the training
    loss. An estimate drawn from the training split read near the training loss."""
    text = tmp_path / "two.txt"
    text.write_text("ab" * 900 + "xy" * 100)
    summary = train(tiny_config(text, steps=30, eval_every=10, lr=3e-3), tmp_path / "run",
                    progress=False).summary
    last = metrics(tmp_path / "run")[-1]
    assert last["val_loss"] == pytest.approx(summary["final_val_loss"], rel=0.05)
    assert last["val_loss"] > 1.5 * last["train_loss"]


def test_the_final_sample_is_the_runs_seeds(small_text, tmp_path, caplog):
    """The sample logged at the end is sample_text's of the final model with the run's seed
    (so the same run samples the same text), not with sample_text's default seed."""
    caplog.set_level("INFO", logger="minigpt")
    cfg = tiny_config(small_text, steps=2, sample_tokens=40, seed=5)
    result = train(cfg, tmp_path, progress=False)
    expected = sample_text(result.model, result.tokenizer, None, 40, seed=5)
    assert "sample:\n" + console.visible(expected) in caplog.messages


def test_tokens_count_every_micro_batch(small_text, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(small_text, steps=4, grad_accum=2, eval_every=4), out, progress=False)
    state = load_model(out, "last")[2]["parts"]["state"]
    assert state["tokens"] == 4 * 2 * TINY["batch_size"] * TINY["block_size"]


def test_the_last_step_is_evaluated_whatever_eval_every_says(small_text, tmp_path):
    steps, every = 7, 5  # the last step, 6, is no multiple of 5
    train(tiny_config(small_text, steps=steps, log_every=every, eval_every=every), tmp_path,
          progress=False)
    evaluated = [r["step"] for r in metrics(tmp_path) if "val_loss" in r]
    assert evaluated == [*range(0, steps, every), steps - 1]


def test_rows_count_every_clipped_step(small_text, tmp_path):
    for clip, expected in [(1e-9, 10), (0.0, 0)]:  # every step clipped; clipping off
        out = tmp_path / f"clip-{clip}"
        train(tiny_config(small_text, steps=10, log_every=3, eval_every=5, grad_clip=clip), out,
              progress=False)
        assert sum(r["clipped"] for r in metrics(out)) == expected


def test_a_step_is_counted_clipped_when_its_norm_before_clipping_exceeds_the_clip(small_text,
                                                                                 tmp_path):
    """A clip inside the run's gradient norms (about 0.9 to 1.3 here), one row a step: each
    row counts its step clipped exactly when the norm it reports (before clipping) is above
    the clip. Clipping all or none (above) passed a count of every step."""
    clip = 1.15
    train(tiny_config(small_text, steps=10, log_every=1, eval_every=5, grad_clip=clip),
          tmp_path, progress=False)
    rows = metrics(tmp_path)
    assert [r["clipped"] for r in rows] == [int(r["grad_norm"] > clip) for r in rows]
    assert {r["clipped"] for r in rows} == {0, 1}  # (both kinds of step are there)


RESUMED = {"lesson": {}, "ema": dict(ema=0.9), "dropout": dict(dropout=0.1),
           "schedules": dict(batch_start=4, block_start=8, ramp=0.75),
           "accumulation": dict(grad_accum=2)}


@pytest.mark.parametrize("settings", RESUMED.values(), ids=RESUMED)
def test_resume_continues_exactly(small_text, tmp_path, settings):
    """An uninterrupted run is the oracle for one stopped part-way and resumed (with an average
    of the weights, with batch shapes that grow, and with two micro-batch streams, across the
    stop)."""
    cfg = lambda: tiny_config(small_text, steps=24, eval_every=6, log_every=1,  # noqa: E731
                              **settings)
    straight = train(cfg(), tmp_path / "straight", progress=False).summary
    with pytest.raises(KeyboardInterrupt):  # after the checkpoint at step 12, before the next
        train(cfg(), tmp_path / "resumed", progress=False, probes=[CrashAt(14)])
    assert load_model(tmp_path / "resumed", "last")[2]["step"] == 13
    resumed = train(resume_config(tmp_path / "resumed"), tmp_path / "resumed", resume=True,
                    progress=False).summary

    assert without_speed(metrics(tmp_path / "resumed")) == \
        without_speed(metrics(tmp_path / "straight"))
    assert resumed["final_val_loss"] == straight["final_val_loss"]
    assert same_weights(tmp_path / "straight", tmp_path / "resumed")  # (the averages, with EMA)


class BatchShapes(Probe):
    """Records the shape of every training batch the run draws."""

    def start(self, run):
        self.shapes, draw = [], run.batches.get_batch

        def recording(split, micro=0):
            x, y = draw(split, micro)
            if split == "train":
                self.shapes.append(tuple(x.shape))
            return x, y

        run.batches.get_batch = recording


def test_the_batch_and_the_context_grow_as_scheduled(small_text, tmp_path):
    """10 steps, batch 2 -> 8 and context 8 -> 32 over the first half: by hand, step s is at
    progress s / 10, where the batch is 2 + 6 s / 5 and the context 8 + 24 s / 5, each floored
    to a multiple of its start; the speed counts the tokens actually trained."""
    shapes = BatchShapes()
    cfg = tiny_config(small_text, steps=10, eval_every=5, batch_start=2, block_start=8,
                      ramp=0.5)
    summary = train(cfg, tmp_path / "run", progress=False, probes=[shapes]).summary
    assert shapes.shapes == [(2, 8), (2, 8), (4, 16), (4, 16), (6, 24)] + [(8, 32)] * 5
    tokens = sum(b * t for b, t in shapes.shapes)  # 1,584, where ten full batches are 2,560
    assert within_rounding(summary["tokens_per_s"], tokens, summary["train_s"])


def test_a_resumed_run_reports_the_speed_of_the_whole_run(small_text, tmp_path, caplog):
    """tokens/s in the summary is every token trained over the clock's seconds, across
    resumes: also when a resume has nothing left to train (it said 0), which it says."""
    caplog.set_level(logging.INFO, logger="minigpt")
    ended = "the run has ended: nothing to train"
    first = train(tiny_config(small_text, steps=10, eval_every=5), tmp_path, progress=False)
    assert not any(ended in m for m in caplog.messages)
    again = train(resume_config(tmp_path), tmp_path, resume=True, progress=False)
    assert sum(ended in m for m in caplog.messages) == 1
    more = train(resume_config(tmp_path, {"steps": 20}), tmp_path, resume=True, progress=False)
    assert sum(ended in m for m in caplog.messages) == 1
    for result, steps in [(first, 10), (again, 10), (more, 20)]:
        assert within_rounding(result.summary["tokens_per_s"], steps * 8 * 32,
                               result.summary["train_s"])


def within_rounding(speed: int, tokens: int, seconds: float) -> bool:
    """Whether a summary's tokens/s is `tokens` over the training clock, which the summary
    rounds to 0.01 s (0.00 on a CPU fast enough: then any speed above the lowest)."""
    return tokens / (seconds + 0.005) - 1 <= speed <= (
        tokens / (seconds - 0.005) + 1 if seconds > 0.005 else math.inf)


def test_the_clock_counts_only_the_seconds_it_runs(monkeypatch):
    """At a timer moved by hand: starting a running clock, a pause and a stop lose no second and
    add none; catching up moves it forward only; a saved clock comes back stopped."""
    now = SimpleNamespace(s=100.0)
    monkeypatch.setattr(clock_module, "time", SimpleNamespace(perf_counter=lambda: now.s))
    clock = clock_module.Clock(5.0).start()
    now.s += 2
    clock.start()  # already running: nothing restarts
    now.s += 1
    assert clock.seconds() == 8.0
    with clock.paused():
        now.s += 10
        assert clock.seconds() == 8.0
    now.s += 1
    assert clock.seconds() == 9.0  # running again
    clock.catch_up(7.0)  # behind it: no change
    assert clock.seconds() == 9.0
    clock.catch_up(12.0)
    now.s += 1
    assert clock.seconds() == 13.0
    state = clock.state_dict()
    assert state == {"seconds": 13.0}
    clock.stop()
    with clock.paused():
        pass
    now.s += 4
    assert clock.seconds() == 13.0  # stopped, and still stopped after a pause

    resumed = clock_module.Clock().start()
    resumed.load_state_dict(state)
    now.s += 3
    assert resumed.seconds() == 13.0
    resumed.start()
    now.s += 2
    assert resumed.seconds() == 15.0


def test_a_process_behind_the_agreed_clock_catches_up_to_it(monkeypatch):
    """Under torchrun the agreement is the slowest process's clock: a faster process's own
    clock moves on to it, so its later readings (the schedule's, the budget's, time_s) are the
    others' too. agree is stood in for by a larger figure (another process's), as a one-process
    run never has one; test_distributed's twin agrees on the process's own, which passed with no
    catch_up at all."""
    behind = SimpleNamespace(s=100.0)
    monkeypatch.setattr(clock_module, "time", SimpleNamespace(perf_counter=lambda: behind.s))
    monkeypatch.setattr(trainer.distributed, "agree", lambda values, world: [values[0] + 5, 0.0])
    clock = clock_module.Clock(3.0).start()
    assert trainer.agreed(clock, SimpleNamespace(received=None), World()) == (8.0, False)
    assert clock.seconds() == 8.0  # the agreed figure, not its own 3.0


def test_a_resumed_run_goes_on_from_its_checkpoints_clock(small_text, tmp_path):
    """The checkpoint keeps the training clock: a time-budgeted run resumed with the same budget
    has it spent already (no fresh budget), and one given a longer budget logs seconds from the
    saved clock on, not from 0 (a resume that restarted the clock trained another 0.3 s and
    logged rows from a step's seconds, below the checkpoint's)."""
    folder = tmp_path / "run"
    cfg = tiny_config(small_text, steps=10**6, time_budget=0.3, log_every=1, eval_every=10**6)
    first = train(cfg, folder, progress=False).summary["steps"]
    saved = load_checkpoint(folder / "checkpoints", "last").meta
    assert saved["step"] == first and saved["parts"]["clock"]["seconds"] >= 0.3
    again = train(resume_config(folder), folder, resume=True, progress=False)
    assert again.summary["steps"] == first  # the budget was spent before the resume
    clock = saved["parts"]["clock"]["seconds"]  # (past 0.3 by its last step: a busy CPU's
    longer = {"time_budget": clock + 0.3}  # could be past a fixed 0.6, leaving nothing to train)
    train(resume_config(folder, longer), folder, resume=True, progress=False)
    after = [r["time_s"] for r in metrics(folder) if r["step"] >= first]
    assert after and min(after) >= round(clock, 2) - 0.01, (clock, after)


def test_the_clock_stops_once_the_device_has_done_the_steps_queued_on_it(monkeypatch):
    """A GPU runs behind the Python that queues its steps: the clock waits for it, then reads
    the time, or the steps' last seconds would fall outside training (tokens/s, MFU and a time
    budget would read them short). At a timer moved by hand; a device 3 s behind."""
    now = SimpleNamespace(s=100.0)
    monkeypatch.setattr(clock_module, "time", SimpleNamespace(perf_counter=lambda: now.s))
    waited = []

    def behind(device):
        now.s += 3
        waited.append(device)

    monkeypatch.setattr(clock_module, "wait_for", behind)
    gpu = torch.device("cuda")
    clock = clock_module.Clock(device=gpu).start()
    now.s += 1
    with clock.paused():
        assert clock.seconds() == 4.0 and waited == [gpu]
    clock.stop()
    assert clock.seconds() == 7.0
    clock_module.Clock().start().stop()  # no device: nothing to wait for
    assert waited == [gpu, gpu]


def test_a_runs_clock_waits_for_the_runs_device(small_text, tmp_path, monkeypatch):
    """build_run gives the clock the run's device, so the loop's clock waits for it (a GPU's;
    on a CPU, a call that returns at once)."""
    waited = []
    monkeypatch.setattr(clock_module, "wait_for", waited.append)
    train(tiny_config(small_text, steps=4, eval_every=2, log_every=2), tmp_path / "run",
          progress=False)
    assert waited and set(waited) == {torch.device("cpu")}


@pytest.mark.parametrize("env, place", [
    ({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}, (3, 4, 1)),
    ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}, (1, 2, 1)),  # one machine: all of them
])
def test_torchruns_variables_give_the_process_its_place(env, place, monkeypatch):
    """LOCAL_RANK picks the process's GPU on its machine (on a CPU nothing shows it), and
    without LOCAL_WORLD_SIZE every process is on this machine, so a LOCAL_RANK of 1 fits."""
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert world_from_env() == World(*place)


def test_one_process_on_a_numbered_gpu_makes_it_the_current_one(monkeypatch):
    """cuda:1 without torchrun: torch's current GPU becomes GPU 1, where the bf16 check and
    CUDA's context then go (GPU 0 otherwise); plain 'cuda' and the CPU are left alone."""
    made_current = []
    monkeypatch.setattr(torch.cuda, "set_device", made_current.append)
    one = World()
    assert start(one, torch.device("cuda", 1)) == torch.device("cuda", 1)
    assert start(one, torch.device("cuda")) == torch.device("cuda")
    assert start(one, torch.device("cpu")) == torch.device("cpu")
    assert made_current == [torch.device("cuda", 1)]


@pytest.mark.parametrize("device, backend, mine", [
    ("cuda", "nccl", torch.device("cuda", 1)), ("cpu", "gloo", torch.device("cpu"))])
def test_a_process_under_torchrun_joins_on_its_machines_gpu(device, backend, mine, monkeypatch):
    """Rank 5 of 8, second on its machine: GPU 1 (LOCAL_RANK), not GPU 5, which a machine of
    4 lacks; NCCL between GPUs, gloo between CPUs; and the host group of the agreements waits
    HOST_WAIT, longer than torch's default limit, for rank 0's tokenizing or final evaluation.
    torch's calls are recorded, not made: no GPU, no second process."""
    from torch.distributed.constants import default_pg_timeout

    from minigpt import distributed

    calls = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("current", d)))
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group",
                        lambda **kw: calls.append(("join", kw["backend"], kw["device_id"])))
    monkeypatch.setattr(distributed.dist, "new_group", lambda **kw: ("host", kw))
    monkeypatch.setattr(distributed, "HOST", {})
    assert start(World(rank=5, size=8, local_rank=1), torch.device(device)) == mine
    gpu = mine if device == "cuda" else None
    assert calls == [("current", gpu)] * (gpu is not None) + [("join", backend, gpu)]
    assert distributed.HOST["group"] == ("host", {"backend": "gloo", "timeout": HOST_WAIT})
    assert HOST_WAIT > default_pg_timeout


def test_the_agreements_go_through_the_host_group(monkeypatch):
    """agree and barrier use the gloo group start() made on the host, not the default group:
    under NCCL the default group cannot reduce agree's CPU tensor, and its 10-minute limit is
    not HOST_WAIT. torch's calls are recorded, not made."""
    from minigpt import distributed

    groups = []
    monkeypatch.setattr(distributed, "HOST", {"group": "host"})
    monkeypatch.setattr(distributed.dist, "all_reduce",
                        lambda t, op, group=None: groups.append((t.device.type, group)))
    monkeypatch.setattr(distributed.dist, "barrier", lambda group=None: groups.append(group))
    two = World(rank=0, size=2)
    assert distributed.agree([3.0], two)[0] == 3.0  # (the one process's value: nothing reduced)
    distributed.barrier(two)
    assert groups == [("cpu", "host"), "host"]


def test_mean_divides_the_sum_and_agree_takes_the_largest(monkeypatch):
    """Rank 0 of two, torch's reduction made here with the other process's values: the mean of
    [1, 4] and [3, 0] is [2, 2] (a sum would be [4, 4]); agree of [5, 2] and [1, 9] is [5, 9]
    on both (the smallest would let one process stop a step early and the other wait for ever)."""
    from minigpt import distributed

    theirs = iter([torch.tensor([3.0, 0.0]), torch.tensor([1.0, 9.0], dtype=torch.float64)])

    def all_reduce(t, op, group=None):  # (the reductions torch does, by the op named)
        ops = distributed.dist.ReduceOp
        how = next(f for o, f in [(ops.SUM, torch.add), (ops.MAX, torch.maximum),
                                  (ops.MIN, torch.minimum), (ops.PRODUCT, torch.mul)] if op == o)
        t.copy_(how(t, next(theirs)))

    monkeypatch.setattr(distributed, "HOST", {})
    monkeypatch.setattr(distributed.dist, "all_reduce", all_reduce)
    two, mine = World(rank=0, size=2), torch.tensor([1.0, 4.0])
    assert distributed.mean(mine, two).tolist() == [(1.0 + 3.0) / 2, (4.0 + 0.0) / 2]
    assert mine.tolist() == [1.0, 4.0]  # the caller's tensor, left as it was
    assert distributed.agree([5.0, 2.0], two) == [max(5.0, 1.0), max(2.0, 9.0)]


def test_stop_leaves_a_process_group_only_a_run_of_several_joined(monkeypatch):
    """One process never joins a group, so a group there is the caller's own (a notebook's,
    torchrun with one process): the run's end leaves it standing. torch's calls are recorded."""
    from minigpt import distributed

    left = []
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed.dist, "destroy_process_group", lambda: left.append(True))
    monkeypatch.setattr(distributed, "HOST", {})
    distributed.stop(World())
    assert left == []
    distributed.stop(World(rank=1, size=2))  # the group the run itself joined
    assert left == [True]


def test_main_first_has_only_rank_zero_say_how_its_block_ended(monkeypatch):
    """The others agree once, before their block; a failure in theirs calls nothing more, since
    rank 0 calls nothing to match it: it would pair with rank 0's next agreement (the clock)."""
    from minigpt import distributed

    said = []
    monkeypatch.setattr(distributed, "any_process", lambda flag, world: said.append(flag))
    for rank, fails, agreed in [(0, False, [False]), (0, True, [True]),
                                (1, False, [False]), (1, True, [False])]:
        said.clear()
        try:
            with distributed.main_first(World(rank=rank, size=2)):
                if fails:
                    raise OSError("no space left")
        except OSError:
            assert fails
        assert said == agreed, (rank, fails)


def test_speed_reads_since_the_last_reading_and_overall_since_the_count_began():
    fresh = Speed(flops_per_token=6e3, peak_flops=1e9, tokens=0, seconds=0.0)
    assert fresh.read(1000, 10.0) == {"tokens_per_s": 100, "mfu": round(100 * 6e3 / 1e9, 4)}
    assert fresh.read(3000, 15.0)["tokens_per_s"] == 2000 / 5
    assert fresh.overall()["tokens_per_s"] == 3000 / 15
    resumed = Speed(6e3, 1e9, tokens=5000, seconds=10.0)  # every token counted from the start
    resumed.read(6000, 20.0)
    assert resumed.overall()["tokens_per_s"] == 6000 / 20
    uncounted = Speed(6e3, 1e9, tokens=0, seconds=50.0)  # a checkpoint without a count: from here
    uncounted.read(1000, 60.0)
    assert uncounted.overall()["tokens_per_s"] == 1000 / 10


def test_speed_read_at_the_same_second_is_zero_not_a_division_error():
    """A reading with the clock not moved on (paused, or a resume with nothing to train) and
    the overall figure before any time has passed: 0 tokens/s, no ZeroDivisionError."""
    speed = Speed(6e3, 1e9, tokens=0, seconds=5.0)
    assert speed.overall() == {"tokens_per_s": 0, "mfu": 0.0}
    assert speed.read(0, 5.0) == {"tokens_per_s": 0, "mfu": 0.0}


def test_an_average_turned_on_at_a_resume_starts_from_the_trained_weights(small_text, tmp_path):
    trained = train(tiny_config(small_text, steps=10, eval_every=5), tmp_path, progress=False)
    weights = {k: v.clone() for k, v in trained.model.state_dict().items()}
    again = train(resume_config(tmp_path, {"ema": 0.9}), tmp_path, resume=True, progress=False)
    final = again.model.state_dict()  # the average: no step since, so the weights themselves
    assert all(torch.equal(final[k], v) for k, v in weights.items())
    more = train(resume_config(tmp_path, {"ema": 0.9, "steps": 14}), tmp_path, resume=True,
                 progress=False)
    assert load_model(tmp_path, "last")[2]["step"] == 14
    raw = load_checkpoint(tmp_path / "checkpoints", "last").section("model")
    assert any(not torch.equal(v, raw[k]) for k, v in more.model.state_dict().items())


def test_train_refuses_to_resume_with_another_model_or_data(small_text, tmp_path):
    """The command line's resume_config refuses these; train() called directly does too."""
    train(tiny_config(small_text, steps=4, eval_every=2), tmp_path, progress=False)
    for change, message in [(dict(val_fraction=0.2), "val_fraction from 0.1 to 0.2"),
                            (dict(n_embd=64), "n_embd from 32 to 64")]:
        with pytest.raises(MiniGPTError, match=re.escape(f"cannot change {message}")):
            train(tiny_config(small_text, steps=8, **change), tmp_path, resume=True,
                  progress=False)
    assert load_model(tmp_path, "last")[2]["step"] == 4
    was = load_model(tmp_path, "last")[2]["data"]["val_fraction"]  # refused at the config too
    with pytest.raises(MiniGPTError, match=re.escape(f"val_fraction from {was} to {was * 2}")):
        resume_config(tmp_path, {"val_fraction": was * 2})
    with pytest.raises(MiniGPTError, match="'lr' must be positive"):  # the settings asked on
        resume_config(tmp_path, {"lr": 0.0})  # top of the run's are checked as train checks them
    assert resume_config(tmp_path, {"vocab_size": 999}).model.vocab_size != 999  # the text's


def test_a_run_resumes_on_its_text_moved_elsewhere_but_not_on_another_text(small_text, tmp_path,
                                                                          capsys):
    """The checkpoint keeps the tokens' fingerprint: the same tokens at a new path continue the
    run; a text gone from its path says how to go on; other tokens are refused."""
    run = tmp_path / "run"
    train(tiny_config(small_text, steps=4, eval_every=2), run, progress=False)
    moved = small_text.rename(tmp_path / "moved.txt")
    assert (f"text file not found: {small_text} (the run's text moved? resume with --text "
            f"NEWPATH") in one_line_error(capsys, ["train", "--resume", str(run), "--steps", "6"])
    typo = tmp_path / "typo.txt"  # a path the user gave: no hint that blames the run
    assert one_line_error(capsys, ["train", "--resume", str(run), "--text", str(typo)]) == (
        f"minigpt: error: text file not found: {typo}")
    cfg = resume_config(run, {"text": str(moved), "steps": 6})
    train(cfg, run, resume=True, progress=False)
    model, _, meta = load_model(run, "last")
    assert meta["step"] == 6 and meta["data"]["text"] == str(moved)
    other = tmp_path / "other.txt"
    other.write_text(moved.read_text()[::-1])  # the same characters, other tokens
    with pytest.raises(MiniGPTError, match=re.escape(f"{other} is not the text the run was "
                                                     f"trained on, {moved}")):
        train(resume_config(run, {"text": str(other), "steps": 8}), run, resume=True,
              progress=False)
    assert load_model(run, "last")[2]["step"] == 6


def test_a_run_on_the_default_text_resumed_on_other_tokens_names_tinyshakespeare(data_dir,
                                                                                 tmp_path):
    train(tiny_config("", steps=2, eval_every=2), tmp_path / "run", progress=False)  # no text
    other = tmp_path / "reversed.txt"  # the same characters, other tokens
    other.write_text((data_dir / "tinyshakespeare" / "input.txt").read_text()[::-1])
    with pytest.raises(MiniGPTError, match="is not the text the run was trained on, "
                                           "TinyShakespeare"):
        train(resume_config(tmp_path / "run", {"text": str(other), "steps": 4}), tmp_path / "run",
              resume=True, progress=False)


@pytest.mark.parametrize("schedule", [dict(batch_start=8, block_start=64),  # not below
                                      dict(batch_start=2, block_start=8, ramp=0.0)])  # no ramp
def test_a_start_not_below_the_full_size_or_no_ramp_is_no_schedule(small_text, caplog, schedule):
    """As when a preset's start is above a smaller --batch-size; and the start line says so."""
    caplog.set_level(logging.INFO, logger="minigpt")
    shapes = BatchShapes()
    train(tiny_config(small_text, steps=3, eval_every=5, **schedule),
          small_text.parent / "run", progress=False, probes=[shapes])
    assert shapes.shapes == [(8, 32)] * 3
    model_line = next(m for m in caplog.messages if m.startswith("model:"))
    assert "batch 8 x 32 tokens, 3 steps" in model_line and "grown" not in model_line


@pytest.mark.slow
@pytest.mark.usefixtures("data_dir")
def test_short_real_run_learns_shakespeare(tmp_path):
    # 150 steps reach ~2.44 (300 took twice as long to show the same thing). The final loss is
    # the whole split's, measured after the loop whatever eval_batches says; the loop's two
    # evaluations (steps 0 and 149) take 4 batches, not the whole split (~9 steps' time each),
    # and draw from their own generator: the training, and so the figure, is the same.
    cfg = resolve_config("seed", None, {"steps": 150, "eval_every": 150, "eval_batches": 4,
                                        "sample_tokens": 0})
    summary = train(cfg, tmp_path / "run", progress=False).summary
    assert summary["final_val_loss"] < 2.6
    assert summary["params"] == 216_576


@pytest.mark.parametrize("off, warned", [(0.45, False), (-0.45, False), (0.55, True),
                                         (-0.55, True), (-2.0, True)])
def test_initial_loss_check_warns_half_a_nat_from_ln_vocab_either_side(caplog, off, warned):
    """Below ln(vocab) is as suspect as above it (a loss that starts too low: a leak of the
    targets, say); the tolerance is half a nat."""
    from minigpt.trainer import check_initial_loss

    caplog.set_level("WARNING", logger="minigpt")
    check_initial_loss(math.log(65) + off, 65)
    assert ("far from ln(65) = 4.174" in caplog.text) == warned
    assert bool(caplog.text) == warned  # (and nothing else said)
    check_initial_loss(None, 65)  # (no loss recorded: nothing to check)


def test_the_initial_loss_checked_is_the_first_rows(small_text, tmp_path, monkeypatch, caplog):
    """(and the rows of a run without skipped batches say nothing of skipping)"""
    caplog.set_level("WARNING", logger="minigpt")
    checked = []
    monkeypatch.setattr(trainer, "check_initial_loss", lambda *args: checked.append(args))
    result = train(tiny_config(small_text, steps=3, log_every=1), tmp_path, progress=False)
    rows = metrics(tmp_path)
    assert checked == [(rows[0]["train_loss"], result.tokenizer.vocab_size)]
    assert len(rows) == 3 and not any("skipped" in r for r in rows)
    assert "not finite" not in caplog.text


def test_a_budget_shorter_than_starting_up_still_takes_a_step(small_text, tmp_path):
    """Spent before the first step: the run took none, saved nothing and told the user to
    sample it; its summary said an infinite best loss."""
    result = train(tiny_config(small_text, time_budget=1e-9), tmp_path / "run", progress=False)
    assert result.summary["steps"] == 1 and math.isfinite(result.summary["best_val_loss"])
    assert load_model(tmp_path / "run", "last")[2]["step"] == 1


def test_a_time_budget_trains_for_that_many_seconds(small_text, tmp_path):
    """The run stops once its training clock (evaluation left out) passes the budget, and the
    schedule decays over the budget: warmup, then down to the floor by the end."""
    cfg = tiny_config(small_text, time_budget=3.0, steps=1, eval_every=25, log_every=5,
                      warmup_steps=5, lr=1e-2, min_lr=1e-3)
    summary = train(cfg, tmp_path / "run", progress=False).summary
    rows = metrics(tmp_path / "run")
    assert summary["steps"] > 1  # steps is no limit under a budget
    assert rows[-1]["time_s"] >= 3.0 >= rows[-2]["time_s"]  # (rows round to 0.01 s)
    assert summary["train_s"] == pytest.approx(rows[-1]["time_s"], abs=0.5)
    lrs = [r["lr"] for r in rows if r["step"] >= 5]
    assert all(b <= a for a, b in zip(lrs, lrs[1:], strict=False))  # decaying, by the clock

    def cosine(seconds):  # the decay from 1e-2 to 1e-3 over the budget's 3 s, by hand
        return 1e-3 + 9e-3 * (1 + math.cos(math.pi * min(1.0, max(0.0, seconds / 3)))) / 2

    # to near the floor: the last step began in the budget's last third (a step under 1 s,
    # even on a loaded machine; "below 1.5e-3" needed the last step to start after 2.6 s)
    assert lrs[-1] <= cosine(2.0)

    for before, row in zip(rows, rows[1:], strict=False):  # each step's rate is the cosine
        if row["step"] >= 5:  # at its clock, read between the last row and its own (0.01 s)
            assert cosine(row["time_s"] + 0.01) <= row["lr"] + 1e-12
            assert row["lr"] <= cosine(before["time_s"] - 0.01) + 1e-12
    assert "val_loss" in rows[-1] and rows[-1]["step"] == summary["steps"] - 1


@pytest.mark.parametrize("tokenizer", ["char", "bpe"])
def test_bits_per_byte_is_the_nats_per_byte_of_the_validation_text(tmp_path, tokenizer,
                                                                   caplog):
    """val_bpb by hand: every validation target's loss in nats (the model run window by
    window, as the whole-split evaluation reads the split), summed, over ln 2 and the UTF-8
    bytes the targets decode to; the text mixes 1-, 2- and 3-byte characters. The lines the
    run prints show the same figures: each evaluation's '(x bpb)' its row's, and the final
    line's 'bits per byte' the hand figure (not the loss per token over ln 2, which the text's
    several bytes a token make larger)."""
    caplog.set_level("INFO", logger="minigpt")
    text = tmp_path / "t.txt"
    text.write_text("le café — naïve ☃ déjà vu, l'été. " * 120, encoding="utf-8")
    cfg = tiny_config(text, steps=20, eval_every=10, eval_batches=0, tokenizer=tokenizer,
                      vocab_size=300)
    result = train(cfg, tmp_path / "run", progress=False)
    splits, tok, _ = load_corpus(text, tokenizer, 300, cfg.data.val_fraction)
    val = torch.from_numpy(np.asarray(splits.val, dtype=np.int64))
    nats, T = 0.0, cfg.model.block_size
    with torch.no_grad():
        for start in range(0, len(val) - 1, T):
            x, y = val[start : start + T], val[start + 1 : start + T + 1]
            logits, _ = result.model.eval()(x[: len(y)][None])
            nats += F.cross_entropy(logits[0], y, reduction="sum").item()
    targets = val[1:].tolist()
    n_bytes = len(tok.to_bytes(targets) if tokenizer == "bpe" else
                  tok.decode(targets).encode("utf-8"))
    assert n_bytes > len(targets)  # more bytes than tokens: the two measures differ
    hand = nats / math.log(2) / n_bytes
    assert result.summary["final_val_bpb"] == pytest.approx(hand, rel=1e-6)
    last = metrics(tmp_path / "run")[-1]
    assert last["val_bpb"] == pytest.approx(hand, rel=1e-6)
    shown = [float(x) for x in re.findall(r"\(([\d.]+) bpb\)", caplog.text)]  # (3 decimals)
    rows = [r["val_bpb"] for r in metrics(tmp_path / "run") if "val_bpb" in r]
    assert shown == pytest.approx(rows, abs=5.01e-4) and len(shown) == 3
    final = re.search(r"\(([\d.]+) bits per byte\)", caplog.text)
    assert float(final[1]) == pytest.approx(hand, abs=5.01e-4)
    # evaluated over the whole split, the last row's loss is the final figure itself
    assert last["step"] == 19 and last["val_loss"] == result.summary["final_val_loss"]


def test_ema_is_what_is_evaluated_sampled_and_loaded(small_text, tmp_path):
    """With --ema the validation losses, the final loss and load_model are the average's;
    the checkpoint still holds the trained weights, and the average follows them by hand."""
    from minigpt.checkpoint import load_checkpoint, restore_model
    from minigpt.evaluate import split_loss

    cfg = tiny_config(small_text, steps=12, eval_every=6, ema=0.8)
    summary = train(cfg, tmp_path / "run", progress=False).summary
    averaged, tok, meta = load_model(tmp_path / "run", "last")
    trained = MiniGPT.from_config(averaged.config)
    restore_model(trained, load_checkpoint(tmp_path / "run" / "checkpoints", "last"))
    val = Splits.from_tokens(tok.encode(small_text.read_text()), 0.1).val
    assert split_loss(averaged, val, 32) == pytest.approx(summary["final_val_loss"], abs=1e-6)
    assert split_loss(trained, val, 32) != pytest.approx(summary["final_val_loss"], abs=1e-4)
    assert meta["parts"]["ema"] == {"n_averaged": 12}


def test_the_weight_average_is_an_ema_of_the_weights_by_hand_in_float64():
    """WeightAverage against a float64 EMA written out: the first update takes the weights
    (AveragedModel's start), each later one decay * average + (1 - decay) * weights. The run
    test above passed an average with decay and 1 - decay swapped."""
    from minigpt.run import WeightAverage

    torch.manual_seed(0)
    model = MiniGPT(11, n_embd=16, n_layer=1, n_head=2, block_size=8)
    average, decay, hand = WeightAverage(model, 0.8), 0.8, None
    for _ in range(4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))  # a step's change
        average.update(model)
        weights = [p.detach().double() for p in model.parameters()]
        hand = weights if hand is None else [decay * a + (1 - decay) * w
                                             for a, w in zip(hand, weights, strict=True)]
    for a, h in zip(average.model.parameters(), hand, strict=True):
        torch.testing.assert_close(a.detach().double(), h, rtol=0, atol=1e-5)


@pytest.mark.parametrize("overrides, message", [
    ({"ema": 1.0}, "'ema' must be in \\[0, 1\\)"),
    ({"ema": -0.1}, "'ema' must be in \\[0, 1\\)"),
    ({"ramp": 1.5}, "'ramp' must be in \\[0, 1\\]"),  # a ramp is a part of training
])
def test_an_average_or_a_ramp_out_of_range_is_refused(overrides, message):
    with pytest.raises(MiniGPTError, match=message):
        resolve_config(overrides=overrides)


class Pause(Probe):
    """Sleeps at each metrics row: time the run's wall clock counts and its training clock does
    not (probes run with the training clock paused)."""

    def __init__(self, seconds):
        self.seconds, self.rows = seconds, 0

    def on_row(self, row):
        self.rows += 1
        time.sleep(self.seconds)


class LeavesEvalMode(Probe):
    """A probe whose start reads the model in eval mode and leaves it there."""

    def start(self, run):
        run.model.eval()


def test_the_loop_trains_in_train_mode_whatever_a_probe_left(small_text, tmp_path):
    """With dropout, the same run's losses are the oracle: a probe that leaves the model in eval
    mode at its start changes none (the loop sets train mode after the probes start); without
    that, dropout was off and every loss differed."""
    cfg = lambda: tiny_config(small_text, steps=3, log_every=1, dropout=0.2)  # noqa: E731
    train(cfg(), tmp_path / "plain", progress=False)
    train(cfg(), tmp_path / "probed", probes=[LeavesEvalMode()], progress=False)
    losses = [[r["train_loss"] for r in metrics(tmp_path / run)] for run in ("plain", "probed")]
    assert losses[0] == losses[1]


def test_each_steps_rate_is_the_schedules_at_that_step(small_text, tmp_path):
    """schedule_lr is the oracle: every row's learning rate is that of its own step (warmup,
    then cosine), not of the step after it."""
    cfg = tiny_config(small_text, steps=8, log_every=1, warmup_steps=3)
    train(cfg, tmp_path, progress=False)
    rows = metrics(tmp_path)
    assert [r["lr"] for r in rows] == [schedule_lr(cfg.train, r["step"]) for r in rows]


def test_the_summary_times_training_apart_from_the_whole_run(small_text, tmp_path):
    """train_s is the training clock (rows' probes left out); wall_s is the whole call's."""
    pause = Pause(0.2)
    started = time.perf_counter()
    summary = train(tiny_config(small_text, steps=4, log_every=1, eval_every=4), tmp_path / "run",
                    probes=[pause], progress=False).summary
    took = time.perf_counter() - started
    paused = pause.rows * pause.seconds
    assert pause.rows == 4
    assert summary["train_s"] == pytest.approx(metrics(tmp_path / "run")[-1]["time_s"], abs=0.1)
    assert summary["train_s"] + paused <= summary["wall_s"] + 0.01  # (each rounded to 0.01 s)
    assert summary["wall_s"] <= took + 0.01


def test_a_text_given_relative_is_recorded_absolute_and_resumes_from_anywhere(
        small_text, tmp_path, monkeypatch):
    monkeypatch.chdir(small_text.parent)
    train(tiny_config(small_text.name, steps=2, eval_every=2), tmp_path / "run", progress=False)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["config"]["data"]["text"]
    assert saved == str(small_text.resolve())
    monkeypatch.chdir(tmp_path)  # where no small.txt is
    cfg = resume_config(tmp_path / "run", {"steps": 3})
    assert train(cfg, tmp_path / "run", resume=True, progress=False).summary["steps"] == 3


def test_a_run_under_a_time_budget_resumes_past_its_steps(small_text, tmp_path):
    """Under a time budget --steps is no limit: a resume with a longer budget trains on, though
    the run is past its --steps (without a budget, that is refused: test_cli's bad input)."""
    cfg = tiny_config(small_text, time_budget=1.5, steps=1, eval_every=1000)  # (a first step
    first = train(cfg, tmp_path / "run", progress=False).summary  # on a busy machine: 0.5 s)
    assert first["steps"] > cfg.train.steps
    longer = first["train_s"] + 1.0  # past the clock it stopped at, however loaded the machine
    again = train(resume_config(tmp_path / "run", {"time_budget": longer}), tmp_path / "run",
                  resume=True, progress=False).summary
    assert again["steps"] > first["steps"]


def test_runs_named_by_the_clock_in_the_same_second_get_their_own_folders(tmp_path,
                                                                           monkeypatch,
                                                                           clock_at_230021):
    """A sweep's runs started within one second: the second was refused (the first's folder
    in use, or 'already holds a run: resume it'), though its user had chosen no folder. The
    name is taken as it is given (the folder made, empty): a run started beside it, while
    this one reads its data, gets the next."""
    import minigpt.run

    monkeypatch.chdir(tmp_path)
    cfg = resolve_config(overrides={"text": "/data/sonnets.txt"})
    first = minigpt.run.default_run_dir(cfg)
    assert first == Path("runs/sonnets-20261206-230021") and first.is_dir()
    assert minigpt.run.default_run_dir(cfg) == Path("runs/sonnets-20261206-230021-2")
    Path("runs/sonnets-20261206-230021-3").write_text("a file")  # (taken all the same)
    assert minigpt.run.default_run_dir(cfg) == Path("runs/sonnets-20261206-230021-4")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")  # under torchrun, rank 0 makes it; rank 1 writes nothing
    assert minigpt.run.default_run_dir(cfg) == first
    assert len(list(Path("runs").iterdir())) == 4


def test_a_run_that_never_starts_leaves_no_folder_it_named(tmp_path, monkeypatch, capsys,
                                                           clock_at_230021):
    """train() without a folder, and `minigpt train` and `compare` without --out, name one
    and make it at once; a run that fails before it writes there removes it again, but never
    a folder the user named."""
    monkeypatch.chdir(tmp_path)
    missing = str(tmp_path / "sonnets.txt")
    with pytest.raises(MiniGPTError, match="text file not found"):
        train(resolve_config(overrides={"text": missing}), progress=False)
    r = in_process(capsys, "train", "--text", missing, "--no-progress")
    assert r.returncode == 2 and "text file not found" in r.stderr
    r = in_process(capsys, "compare", "--optimizers", "sgd,adamw", "--lr=-1", "--no-progress")
    assert r.returncode == 2 and "'lr' must be positive" in r.stderr
    assert not (tmp_path / "runs").exists()
    for runs in ("a file", tmp_path / "nowhere"):  # runs/ a file, or a link to nowhere
        (tmp_path / "runs").unlink(missing_ok=True)
        if isinstance(runs, str):
            (tmp_path / "runs").write_text(runs)
        else:
            (tmp_path / "runs").symlink_to(runs)
        said = "is a file" if isinstance(runs, str) else ""  # (a link to nowhere: the OS's words)
        with pytest.raises(MiniGPTError, match=f"cannot create run folder runs: {said}"):
            train(resolve_config(overrides={"text": missing}), progress=False)
    (tmp_path / "mine").mkdir()  # the user's own empty folder, kept
    r = in_process(capsys, "train", "--text", missing, "--out", "mine", "--no-progress")
    assert r.returncode == 2 and (tmp_path / "mine").is_dir()


def test_a_run_stopped_by_ctrl_c_before_it_starts_leaves_no_folder_it_named(small_text, tmp_path,
                                                                           monkeypatch):
    """Ctrl-C while the data is read (a BPE vocabulary learned, say) is a run that never
    started, as an error there is: the folder train() named for it is removed, runs/ too."""
    import minigpt.run

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(minigpt.run, "load_corpus", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(small_text, steps=2), progress=False)
    assert not (tmp_path / "runs").exists()


def test_eval_batches_as_many_as_the_validation_split_has_tokens_are_allowed():
    """The refusal is of more batches an evaluation than the validation split has tokens:
    as many is not more."""
    from minigpt.run import check_eval_batches

    check_eval_batches(960, 960)
    with pytest.raises(MiniGPTError, match=r"^--eval-batches 961 draws more batches an "
                                           r"evaluation than the validation split has tokens "
                                           r"\(960\)"):
        check_eval_batches(961, 960)


def test_a_several_process_runs_checkpoint_is_read_in_one_but_resumed_only_as_trained(
        small_text, tmp_path):
    """open_run (the diagnostic commands) reads a checkpoint of several processes in one, on
    rank 0's batch stream; a resume in one process is refused (its batch streams would change).
    The world size is the checkpoint JSON's, which the tensors' checksum does not cover: edited,
    it stands in for a torchrun run without starting one."""
    folder = tmp_path / "run"
    train(tiny_config(small_text, steps=4, eval_every=2), folder, progress=False)
    last = folder / "checkpoints" / "last.json"
    last.write_text(json.dumps({**json.loads(last.read_text()), "world_size": 2}))
    assert open_run(folder, "last").state.step == 4
    with pytest.raises(MiniGPTError, match=r"trained by 2 process\(es\) with --grad-accum 1"):
        train(resume_config(folder, {"steps": 6}), folder, resume=True, progress=False)
