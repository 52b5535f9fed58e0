"""lr_at: a pure function checked against a table, and against PyTorch's own scheduler."""

import math

import pytest
import torch

from minigpt import MiniGPTError, lr_at
from minigpt.config import TrainConfig
from minigpt.schedule import batch_shape, grows, schedule_lr, size_at

COSINE = dict(lr=1.0, min_lr=0.1, warmup_steps=10, total_steps=111, schedule="cosine")
QUARTER = 0.1 + 0.9 * (1 + math.cos(math.pi / 4)) / 2  # min + (max - min) * (1 + cos(pi/4)) / 2


@pytest.mark.parametrize("schedule, step, expected", [
    ("cosine", 0, 0.1),  # step 0 already learns: lr / warmup, not 0
    ("cosine", 4, 0.5),
    ("cosine", 9, 1.0),  # the last warmup step reaches the peak
    ("cosine", 10, 1.0),  # the decay starts at the peak
    ("cosine", 35, QUARTER),  # a quarter of the way into the decay
    ("cosine", 60, 0.55),  # half way through the decay: the mean of peak and floor
    ("cosine", 110, 0.1),  # the last step sits on the floor
    ("cosine", 500, 0.1),  # past the end it stays there
    *[("linear", step, lr) for step, lr in [(0, 0.1), (9, 1.0), (10, 1.0), (60, 0.55),
                                            (85, 0.325), (110, 0.1), (500, 0.1)]],
])
def test_warmup_then_decay_table(schedule, step, expected):
    assert lr_at(step, **{**COSINE, "schedule": schedule}) == pytest.approx(expected)


def test_warmup_as_long_as_training():
    kw = dict(lr=1e-3, min_lr=0.0, warmup_steps=50, total_steps=50, schedule="cosine")
    rates = [lr_at(s, **kw) for s in range(50)]
    assert rates[0] == pytest.approx(1e-3 / 50)
    assert rates[-1] == pytest.approx(1e-3)
    assert all(b > a for a, b in zip(rates, rates[1:], strict=False))


def test_constant_and_unknown_schedules():
    assert {lr_at(s, lr=3e-4, total_steps=100, schedule="constant") for s in range(100)} == {3e-4}
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_at(0, lr=1.0, total_steps=10, schedule="exponential")


def test_cosine_annealing_matches_pytorch():
    """The lesson's CosineAnnealingLR(optimizer, T_max=steps), stepped once per step."""
    steps, lr, eta_min = 40, 3e-3, 1e-4
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=eta_min)
    for step in range(steps):
        ours = lr_at(step, lr=lr, min_lr=eta_min, total_steps=steps, schedule="cosine-annealing")
        assert ours == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9, abs=1e-12)
        opt.step()
        sched.step()


@pytest.mark.parametrize("schedule", ["cosine", "linear", "cosine-annealing"])
def test_a_time_fraction_drives_the_decay_like_the_step_count(schedule):
    """With a time budget the decay follows the fraction of the budget spent: the same curve,
    at the same fraction of the way, as a run that counts steps."""
    kw = dict(lr=1.0, min_lr=0.1, total_steps=111, schedule=schedule)
    warm = 0 if schedule == "cosine-annealing" else 10
    for step in range(warm, 111):
        frac = (step - warm) / (110 - warm) if warm else step / 111
        by_steps = lr_at(step, warmup_steps=warm, **kw)
        by_time = lr_at(step, warmup_steps=warm, fraction=frac, **kw)
        assert by_time == pytest.approx(by_steps)
    assert lr_at(200, warmup_steps=warm, fraction=1.0, **kw) == pytest.approx(0.1)  # the floor
    if warm:
        assert lr_at(3, warmup_steps=10, fraction=0.9, **kw) == pytest.approx(0.4)  # warming
        assert lr_at(200, warmup_steps=10, fraction=1.7, **kw) == pytest.approx(0.1)


@pytest.mark.parametrize("progress, expected", [
    (0.0, 8), (0.05, 8),  # 8 + 24 * 0.05 / 0.3 = 12: floored to a multiple of the start
    (0.1, 16), (0.15, 16), (0.2, 24), (0.29, 24),  # 31.2 is still 24
    (0.3, 32), (0.9, 32),  # full at the end of the ramp, and after it
])
def test_a_size_grows_from_its_start_in_steps_of_it(progress, expected):
    assert size_at(progress, start=8, full=32, ramp=0.3) == expected


def test_a_size_without_a_schedule_is_full():
    assert size_at(0.0, start=0, full=32, ramp=0.3) == 32  # no start
    assert size_at(0.0, start=8, full=32, ramp=0.0) == 32  # no ramp


@pytest.mark.parametrize("total", [10, 11])  # no decay step left after the warmup
def test_a_run_no_longer_than_its_warmup_stays_at_the_peak(total):
    for step in (10, 15):
        assert lr_at(step, lr=1.0, min_lr=0.1, warmup_steps=10, total_steps=total) == 1.0


def test_a_size_is_full_when_the_ramp_ends_even_off_the_multiples_of_its_start():
    assert size_at(0.5, start=3, full=32, ramp=0.5) == 32  # 30 is the last multiple of 3 below
    assert size_at(0.49, start=3, full=32, ramp=0.5) <= 30


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant", "cosine-annealing"])
@pytest.mark.parametrize("step, total", [(0, 0), (-1, 10)])
def test_a_run_of_no_steps_or_a_negative_step_is_refused_in_one_line(schedule, step, total):
    with pytest.raises(MiniGPTError, match="lr_at takes a step >= 0 of total_steps >= 1"):
        lr_at(step, lr=1.0, total_steps=total, schedule=schedule, warmup_steps=0)


def test_a_start_as_large_as_the_full_size_is_no_schedule():
    """TrainConfig: off at 0, or at a start not below the full size (what the console and
    the speed estimate read, not only size_at)."""
    assert not grows(32, 32, 0.3) and not grows(40, 32, 0.3) and not grows(8, 32, 0.0)
    assert grows(8, 32, 0.3) and grows(31, 32, 1.0)


def test_a_time_budgets_batch_shape_grows_with_the_seconds_not_the_steps():
    """batch_shape: with a time budget, progress is the part of the budget spent (the step
    count, whatever --steps says, no longer measures training); without, the steps done."""
    timed = TrainConfig(steps=1000, batch_size=32, batch_start=8, block_start=16, ramp=0.3,
                        time_budget=100.0)
    assert batch_shape(timed, 64, step=0, seconds=15.0) == (16, 32)  # 20, 40: half way up
    assert batch_shape(timed, 64, step=900, seconds=0.0) == (8, 16)
    assert batch_shape(timed, 64, step=0, seconds=30.0) == (32, 64)
    stepped = TrainConfig(steps=1000, batch_size=32, batch_start=8, block_start=16, ramp=0.3)
    assert batch_shape(stepped, 64, step=150, seconds=999.0) == (16, 32)


def test_a_size_before_the_start_of_training_is_the_start_size():
    """size_at clamps progress below 0 (a clock or step read before the first): the start, not
    a multiple of it rounded down to 0 or below."""
    assert size_at(-0.5, start=8, full=32, ramp=0.3) == 8


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_a_runs_schedule_matches_pytorchs_warmup_then_decay(schedule):
    """schedule_lr reads the run's schedule: PyTorch's LinearLR warmup, then its
    CosineAnnealingLR (or LinearLR) down to min_lr at the last step, stepped alongside."""
    t = TrainConfig(steps=30, lr=1.0, min_lr=0.1, warmup_steps=5, schedule=schedule)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=t.lr)
    lr_sched = torch.optim.lr_scheduler
    decay = (lr_sched.CosineAnnealingLR(opt, T_max=24, eta_min=0.1) if schedule == "cosine"
             else lr_sched.LinearLR(opt, start_factor=1.0, end_factor=0.1, total_iters=24))
    warm = lr_sched.LinearLR(opt, start_factor=1 / 5, end_factor=1.0, total_iters=4)
    sched = lr_sched.SequentialLR(opt, [warm, decay], milestones=[5])
    for step in range(t.steps):
        assert schedule_lr(t, step) == pytest.approx(opt.param_groups[0]["lr"]), step
        opt.step()
        sched.step()
