"""Reading the curve: each rule on synthetic curves that have its pattern and curves that do
not; the findings drawn on the plot; and a real run that spikes and overfits."""

import json
import math
import re
import statistics

import numpy as np
import pytest

from conftest import tiny_config
from minigpt.diagnostics import reading
from minigpt.diagnostics.plots import plot_loss
from minigpt.diagnostics.reading import Facts, Finding, format_reading, read_curve, read_run
from minigpt.errors import MiniGPTError

LN65 = math.log(65)
FACTS = Facts(vocab_size=65, warmup_steps=100, total_steps=5000, grad_clip=1.0)
SGD = Facts(**{**vars(FACTS), "optimizer": "sgd"})


def lesson_curve(steps=5000, every=50, eval_every=250, start=LN65, floor=1.3, tau=300.0,
                 gap=0.05):
    """A healthy run: near ln 65 at step 0, a fast drop, a slow plateau; validation a little
    above training, following it. Rows every `every` steps and at the last, as the trainer
    writes them."""
    rows = []
    for step in [*range(0, steps - 1, every), steps - 1]:
        train = floor + (start - floor) * math.exp(-step / tau)
        row = {"step": step, "train_loss": train, "lr": 1e-2, "grad_norm": 0.5, "clipped": 0}
        if step % eval_every == 0 or step == steps - 1:
            row["val_loss"] = train + gap
        rows.append(row)
    return rows


def kinds(rows, facts=FACTS):
    return [f.kind for f in read_curve(rows, facts)]


def only(rows, kind, facts=FACTS):
    found = [f for f in read_curve(rows, facts) if f.kind == kind]
    assert len(found) == 1, kinds(rows, facts)
    return found[0]


def test_a_healthy_run_reads_as_the_lessons_shape_and_nothing_wrong():
    found = kinds(lesson_curve())
    assert found[:2] == ["start", "warmup"] and "best" in found and "shape" in found
    for bad in ("initial loss", "spikes", "spikes in warmup", "overfitting", "skipped",
                "clipped", "clipped mostly", "early stop", "rising"):
        assert bad not in found
    shape = only(lesson_curve(), "shape")
    assert shape.step == 500 and "of the whole drop came in the first tenth" in shape.message


def test_initial_loss_against_ln_v():
    assert "ln 65 = 4.17" in only(lesson_curve(), "start").message
    far = only(lesson_curve(start=6.0), "initial loss")
    assert far.message.startswith("step 0: loss 6.00, far from ln 65 = 4.17")
    assert "check the initialisation" in far.message
    rows = lesson_curve(start=6.0)  # drawn: a marker on step 0's loss, beside the line at ln V
    ax = plot_loss(rows, findings=read_curve(rows, FACTS)).axes[0]
    marker = next(line for line in ax.lines if line.get_label() == "step 0, far from ln V")
    assert list(marker.get_xdata()) == [0] and list(marker.get_ydata()) == [6.0]


def test_each_span_is_shaded_over_its_findings_steps_and_nothing_else():
    """A span (overfitting, a plateau, a rise, a blow-up) is a band from the finding's step to
    its end, where the reading put it (no test looked at where a band lies)."""
    rows = lesson_curve()
    for kind in ("overfitting", "plateau", "plateau, unigram", "rising", "blew up"):
        found = Finding(1200, kind, "", end=3400)
        (band,) = plot_loss(rows, findings=[found]).axes[0].patches
        assert (band.get_x(), band.get_x() + band.get_width()) == (1200, 3400), kind


def test_the_best_checkpoints_star_is_on_the_validation_curve():
    """The star marks the best evaluation: at its step, at its validation loss (the rows'
    lowest val_loss), not at the training loss of that step."""
    rows = lesson_curve()
    ax = plot_loss(rows, findings=[only(rows, "best")]).axes[0]
    star = next(line for line in ax.lines if line.get_label() == "best checkpoint")
    best = min((r for r in rows if "val_loss" in r), key=lambda r: r["val_loss"])
    assert list(star.get_xdata()) == [best["step"]] and list(star.get_ydata()) == [best["val_loss"]]


def test_warmup_ends_where_the_config_says():
    assert only(lesson_curve(), "warmup").step == 100
    rows = [r for r in lesson_curve() if r["step"] != 100]  # no row at the peak
    for r in rows:
        r["lr"] = 3e-3 * min(1, (r["step"] + 1) / 101)  # logged below the peak
    peak = Facts(vocab_size=65, warmup_steps=100, lr=3e-3)
    assert "its peak, 3.00e-03" in only(rows, "warmup", peak).message
    assert "warmup" not in kinds(lesson_curve(), Facts(vocab_size=65))
    assert "warmup" not in kinds(lesson_curve(steps=100))  # the run never got there


def test_a_run_no_longer_than_its_warmup_is_all_warmup():
    rows = lesson_curve(steps=60, every=10)
    for r in rows:
        r["lr"] = 1e-2 * (r["step"] + 1) / 100  # the schedule's, warmup 100
    short = Facts(vocab_size=65, warmup_steps=100, total_steps=60, lr=1e-2)
    f = only(rows, "all warmup", short)
    assert f.step == 59 and "warmup" not in kinds(rows, short)
    assert f.message == ("warmup (100 steps) is the whole run (60 steps): the learning rate "
                         "only rose, to 6.00e-03 by step 59, and never decayed; make warmup "
                         "a small part of the run (--warmup-steps 6, a tenth)")
    # a run stopped part-way through its warmup (it has more steps to come), or with none
    assert "all warmup" not in kinds(rows, Facts(vocab_size=65, warmup_steps=100,
                                                 total_steps=5000))
    assert "all warmup" not in kinds(rows, Facts(vocab_size=65, total_steps=60))
    one = Facts(vocab_size=65, warmup_steps=1, total_steps=1)  # step 0 at the peak: no warmup
    assert "all warmup" not in kinds(rows[:1], one)
    assert "the whole run (1 step):" in only(rows[:1], "all warmup", Facts(  # not "1 steps"
        vocab_size=65, warmup_steps=100, total_steps=1)).message
    legend = plot_loss(rows, findings=[f]).axes[0].get_legend().get_texts()
    assert "all warmup" in {t.get_text() for t in legend}
    assert "all warmup" not in kinds(rows, Facts(vocab_size=65, warmup_steps=100,
                                                 total_steps=None, time_budget=60))


def test_a_warmup_that_takes_most_of_a_time_budget_is_slow():
    """Warmup counts steps, the decay the seconds: 100 warmup steps in 2.3 s of a 3 s budget
    leave the decay 0.7 s, and the rate falls from its peak at once."""
    rows = lesson_curve(steps=130, every=10)
    for r in rows:
        r["time_s"] = 0.023 * r["step"]
    budget = Facts(vocab_size=65, warmup_steps=100, total_steps=None, time_budget=3.0, lr=1e-2)
    f = only(rows, "slow warmup", budget)
    assert f.step == 100 and "warmup" not in kinds(rows, budget)
    assert f.message == ("warmup (100 steps) took 77% of the 3 s time budget: the decay, which "
                         "follows the clock, had the rest, so the learning rate fell from its "
                         "peak at once; try --warmup-steps 13 (a tenth of the budget at this "
                         "speed)")
    long = Facts(vocab_size=65, warmup_steps=1000, total_steps=None, time_budget=3.0, lr=1e-2)
    assert only(rows, "warmup unfinished", long).message == (  # (not "fell from its peak")
        f"warmup (1,000 steps) had not ended by step 129, 99% of the 3 s time budget: the "
        f"learning rate has only risen (to {rows[-1]['lr']:.2e}); try --warmup-steps 13 (a "
        f"tenth of the budget at this speed)")
    roomy = Facts(vocab_size=65, warmup_steps=100, total_steps=None, time_budget=30.0, lr=1e-2)
    assert "slow warmup" not in kinds(rows, roomy) and only(rows, "warmup", roomy).step == 100


def test_best_is_the_trainers_best_with_min_delta():
    rows = [{"step": s, "train_loss": 2.0, "lr": 1e-3, "val_loss": v}
            for s, v in [(0, 3.0), (10, 2.0), (20, 1.99), (30, 2.1)]]
    assert only(rows, "best", Facts(vocab_size=65)).step == 20
    assert only(rows, "best", Facts(vocab_size=65, min_delta=0.05)).step == 10


def test_early_stop_only_when_the_run_ended_before_its_steps():
    rows = lesson_curve(steps=1251)  # the trainer stops after the third evaluation, at 1,250
    for r in rows:  # validation stuck from step 500 on
        if "val_loss" in r and r["step"] > 500:
            r["val_loss"] = 3.0
    stopped = Facts(vocab_size=65, total_steps=5000, patience=3)
    finding = only(rows, "early stop", stopped)
    assert finding.step == 1250 and "after the best, at step 500" in finding.message
    ax = plot_loss(rows, findings=read_curve(rows, stopped)).axes[0]  # drawn where it stopped
    line = next(line for line in ax.lines if line.get_label() == "early stop")
    assert list(line.get_xdata()) == [1250, 1250]
    assert "early stop" not in kinds(rows, Facts(vocab_size=65, total_steps=1251, patience=3))
    assert "early stop" not in kinds(rows, Facts(vocab_size=65, total_steps=5000))
    for r in rows:  # a time budget of 60 s: stopped at 15 s, or when the budget was spent
        r["time_s"] = r["step"] * 0.012
    timed = Facts(vocab_size=65, time_budget=60.0, patience=3)
    assert only(rows, "early stop", timed).step == 1250
    assert "early stop" not in kinds(rows, Facts(vocab_size=65, time_budget=15.0, patience=3))


def test_a_run_stopped_by_hand_or_still_training_says_its_rows_end_there():
    """Rows that end before the steps or the budget, with neither early stopping nor a NaN
    stop to explain it: what is read is of the steps so far (a stopped notebook cell's rows
    read 'not yet the lesson's shape' of 52 steps of 200, saying nothing of the rest). A Ctrl-C
    between two rows saves a checkpoint but writes no row (a run stopped after 44 steps, its
    rows every 50, ends at step 0): the wording must not say it stopped at the last row."""
    rows = lesson_curve(steps=1000)[:9]  # to step 400
    found = only(rows, "unfinished", Facts(vocab_size=65, total_steps=1000))
    assert found.step == 400 and found.message.startswith(
        "the rows end at step 400 of 1,000: the run was stopped there or before its next row "
        "(Ctrl-C, a crash), or is still training")
    assert "unfinished" not in kinds(rows, Facts(vocab_size=65, total_steps=401))  # its end
    assert "unfinished" not in kinds(rows, Facts(vocab_size=65))  # (own rows: no end known)
    own = [r for r in lesson_curve(steps=200, every=10) if r["step"] < 199]  # every 10th step,
    assert "unfinished" not in kinds(own, Facts(vocab_size=65, total_steps=200))  # to 190: done
    for r in rows:
        r["time_s"] = r["step"] * 0.05
    budget = Facts(vocab_size=65, time_budget=60.0)
    assert ", 20 s into its 60 s time budget:" in only(rows, "unfinished", budget).message
    assert "unfinished" not in kinds(rows, Facts(vocab_size=65, time_budget=20.0))  # spent
    rows[-1].update(train_loss=None, grad_norm=None, skipped=1)  # stopped on a NaN: said so
    assert "unfinished" not in kinds(rows, budget) and "skipped, stopped" in kinds(rows, budget)
    early = lesson_curve(steps=1251)
    for r in early:  # validation stuck from step 500 on: early stopping at 1,250
        if "val_loss" in r and r["step"] > 500:
            r["val_loss"] = 3.0
    stopped = kinds(early, Facts(vocab_size=65, total_steps=5000, patience=3))
    assert "early stop" in stopped and "unfinished" not in stopped


def test_validation_gone_nan_is_said_and_counts_toward_early_stopping():
    rows = lesson_curve(steps=1251)
    for r in rows:  # metrics.jsonl writes a NaN loss as null
        if "val_loss" in r and r["step"] > 500:
            r["val_loss"] = None
    stopped = Facts(vocab_size=65, total_steps=5000, patience=3)
    finding = only(rows, "val not finite", stopped)
    assert finding.steps == (750, 1000, 1250) and finding.message.startswith(
        "the validation loss was NaN or inf at 3 evaluation(s), the first at step 750")
    assert only(rows, "early stop", stopped).step == 1250  # as the trainer counted them
    assert only(rows, "best", stopped).step == 500
    assert "val not finite" not in kinds(lesson_curve())
    rows = [r for r in lesson_curve(steps=1251) if r["step"] <= 500]  # NaN from the first
    for r in rows:  # evaluation: no best, and the trainer stops at the third all the same
        if "val_loss" in r:
            r["val_loss"] = None
    assert only(rows, "early stop, none finite", stopped).message == (
        "early stopping at step 500: 3 evaluations without a finite loss")


def test_clipped_steps_from_the_rows_counts_or_the_gradient_norms():
    rows = lesson_curve(steps=1000)
    rows[1]["clipped"] = 7
    finding = only(rows, "clipped")
    assert finding.steps == (50,) and "on 7 of 1,000 steps (1%)" in finding.message
    assert finding.message.endswith("(1%): insurance against the rare large gradient")
    for n, often in [(100, False), (101, True)]:  # a tenth of the steps at most: insurance
        rows[1]["clipped"] = n
        assert ("(10%): often, more than insurance" in only(rows, "clipped").message) == often
    assert "than insurance against the rare large gradient: below half the steps it trims the " \
        "larger ones, above half it acts as a lower learning rate" in only(rows, "clipped",
                                                                           SGD).message
    assert only(rows, "clipped").message.endswith("than insurance against the rare large "
                                                  "gradient: it trims the larger ones")
    for r in rows:
        r["clipped"] = 40
    assert "clipping that often acts as a lower learning rate" in \
        only(rows, "clipped mostly", SGD).message
    assert "(84%): under adamw, whose steps do not grow with the gradient's size, clipping " \
        "that often changes little" in only(rows, "clipped mostly").message
    assert not {"clipped", "clipped mostly"} & set(kinds(rows, Facts(vocab_size=65)))
    rows = [{"step": s, "train_loss": 2.0, "lr": 1e-3, "grad_norm": n}  # without the counts
            for s, n in enumerate([0.5, 3.0, 0.2, 2.0])]
    finding = only(rows, "clipped")
    assert finding.steps == (1, 3) and "on 2 of 4 logged steps (50%)" in finding.message


def test_clipping_most_steps_blames_the_rate_only_where_the_loss_spiked_or_rose():
    calm = lesson_curve(steps=1000)
    stuck = [{"step": s, "train_loss": LN65, "lr": 1e-7, "clipped": 1} for s in range(200)]
    spiky = with_spikes(lesson_curve(steps=1000), [500])
    for rows, too_high in [(calm, False), (stuck, False), (spiky, True),
                           (climbing_from_2500(0.15), True)]:
        for r in rows:
            r["clipped"] = 1 if rows is stuck else 40
        message = only(rows, "clipped mostly", SGD).message
        assert ("lower the peak learning rate (--lr)" in message) == too_high, message
        assert ("raise --grad-clip" in message) != too_high, message
        message = only(rows, "clipped mostly").message  # AdamW: clipping it all changes little
        assert ("lower the peak learning rate (--lr)" in message) == too_high, message
        assert ("nothing to change for it" in message) != too_high, message
        assert "raise --grad-clip" not in message
    hints = [f.message for f in read_curve(spiky, FACTS) if f.kind == "spikes"]
    assert hints[0].endswith("lower the learning rate (--lr)")  # (no clipping harder: it clips)


def test_clipping_read_from_rows_without_a_finite_train_loss_is_still_read():
    """One's own loop may log the gradient norm and validation alone (or every train loss may
    be NaN): the clipping is still counted, and which remedy fits cannot come from a training
    curve there is none of (no crash reading it)."""
    rows = [{"step": s, "grad_norm": 3.0, "val_loss": 2.0} for s in range(0, 100, 10)]
    finding = only(rows, "clipped mostly", SGD)
    assert finding.steps == tuple(range(0, 100, 10))
    assert "raise --grad-clip" in finding.message


def test_skipped_steps():
    rows = lesson_curve(steps=1000)
    assert "skipped" not in kinds(rows)
    rows[4]["skipped"], rows[9]["grad_norm"] = 2, None
    finding = only(rows, "skipped")
    assert finding.steps == (200, 450) and finding.message.startswith("3 batch(es)")
    assert "the first by step 200" in finding.message  # (a row counts the steps since the last)


def test_a_run_that_stopped_on_a_nan_gradient_says_it_stopped():
    """With --skip-nonfinite 0 (the default) the trainer stops at the first row of NaN
    gradients: the reading said only that the batches 'were skipped'."""
    rows = lesson_curve(steps=1000)[:9]  # rows every 50 steps, to step 400: there it stopped
    rows[-1].update(train_loss=None, grad_norm=None, skipped=3)
    found = only(rows, "skipped, stopped", Facts(vocab_size=65, total_steps=1000))
    assert found.message.startswith("the run stopped at step 400 of 1,000 on NaN or inf "
                                    "gradients (3 batch(es), the first by step 400)")
    assert "skipped, stopped" not in kinds(rows, Facts(vocab_size=65, total_steps=401))  # end
    allowed = Facts(vocab_size=65, total_steps=1000, skip_nonfinite=3)  # (stopped otherwise:
    assert "skipped, stopped" not in kinds(rows, allowed)  # Ctrl-C, patience)
    assert "skipped" in kinds(rows, Facts(vocab_size=65, total_steps=401))
    rows[-1]["time_s"] = 30.0  # a time budget: of it, no count of steps
    budget = Facts(vocab_size=65, total_steps=None, time_budget=60.0)
    assert "run stopped at step 400 on NaN" in only(rows, "skipped, stopped", budget).message


def test_a_run_that_skipped_batches_then_stopped_on_one_says_where_it_stopped():
    """With --skip-nonfinite N the trainer skips N batches, then stops at the next: the stop
    is the last of the NaN rows (not the first), at the last row the run wrote."""
    rows = lesson_curve(steps=1000)[:9]  # to step 400
    rows[3]["skipped"] = 2  # step 150: skipped, and the run went on
    rows[-1].update(train_loss=None, grad_norm=None, skipped=1)  # step 400: there it stopped
    found = only(rows, "skipped, stopped", Facts(vocab_size=65, total_steps=1000,
                                                 skip_nonfinite=2))
    assert found.steps == (150, 400)
    assert found.message.startswith(f"the run stopped at step {rows[-1]['step']} of 1,000 on "
                                    f"NaN or inf gradients (3 batch(es), the first by step 150)")


def test_rows_read_without_steps_or_a_budget_do_not_say_the_run_stopped_early():
    """Facts that know neither the run's steps nor its time budget (one's own loop's rows) say
    nothing of where the run would have ended: a NaN on the last row is skipped, not 'the run
    stopped'; deciding it compared the clock with no budget, or steps with None."""
    rows = lesson_curve(steps=1000)[:9]
    rows[-1].update(train_loss=None, grad_norm=None, skipped=1, time_s=30.0)
    unknown = Facts(vocab_size=65)
    assert unknown.total_steps is None and unknown.time_budget is None
    assert only(rows, "skipped", unknown).steps == (rows[-1]["step"],)
    assert "skipped, stopped" not in kinds(rows, unknown)


def with_spikes(rows, steps, rise=1.0, length=1):
    for r in rows:
        if any(s <= r["step"] < s + length * 10 for s in steps):
            r["train_loss"] += rise
    return rows


def test_spikes_during_warmup_and_after_one_lasting_several_rows_counts_once():
    rows = lesson_curve(steps=2000, every=10)
    assert not {"spikes", "spikes in warmup"} & set(kinds(rows))
    rows = with_spikes(rows, [60, 80, 1200], length=1)
    warm = only(rows, "spikes in warmup")
    assert warm.steps == (60, 80) and warm.message.startswith("the loss spiked twice during warmup")
    assert "lengthen warmup" in warm.message
    late = only(rows, "spikes")
    assert late.steps == (1200,) and "lower the learning rate" in late.message
    rows = with_spikes(lesson_curve(steps=2000, every=10), [1500], length=3)  # counts once
    assert only(rows, "spikes").steps == (1500,)
    for first in (10, 20):  # the second row, the third: seen
        rows = with_spikes(lesson_curve(steps=2000, every=10), [first])
        assert only(rows, "spikes in warmup", Facts(vocab_size=65, warmup_steps=30)).steps == (
            first,)


def overfit_curve():
    """Training keeps falling; validation follows until step 2,750, then rises."""
    rows = lesson_curve()
    turn = next(r["val_loss"] for r in rows if r["step"] == 2750)
    for r in rows:
        r["train_loss"] -= 0.00005 * r["step"]
        if "val_loss" in r and r["step"] > 2750:
            r["val_loss"] = turn + 0.0002 * (r["step"] - 2750)
    return rows


def test_overfitting_where_validation_stops_following_training():
    finding = only(overfit_curve(), "overfitting")
    assert finding.step == 2750 and finding.end == 4999
    assert finding.message.startswith("validation stopped improving at step 2,750 while "
                                      "training kept falling")
    assert "more data, dropout" in finding.message
    assert "overfitting" not in kinds(lesson_curve())
    both_rise = overfit_curve()
    for r in both_rise:  # training rises with validation: divergence, not overfitting
        r["train_loss"] += 0.0003 * max(0, r["step"] - 2750)
    assert "overfitting" not in kinds(both_rise)
    # best as the trainer counts it: with min_delta, an evaluation barely better is not
    rows = [{"step": s, "train_loss": 3.0 - 0.02 * s, "lr": 1e-3} for s in range(50)]
    for r, val in zip(rows[::10], [3.0, 2.0, 1.995, 2.2, 2.4], strict=True):
        r["val_loss"] = val
    min_delta = Facts(vocab_size=65, min_delta=0.05)
    assert only(rows, "overfitting", min_delta).step == only(rows, "best", min_delta).step == 10
    assert only(rows, "overfitting").step == only(rows, "best").step == 20


def test_a_loss_that_rises_again_is_diverging_not_the_lessons_shape():
    rows = lesson_curve()
    for r in rows:  # falls as the lesson's, then climbs from step 2,000
        r["train_loss"] += 0.0004 * max(0, r["step"] - 2000)
    finding = only(rows, "rising")
    assert 1900 <= finding.step <= 2100 and finding.end == 4999
    assert "rose to 2.48 by step 4,999" in finding.message
    rows = [{"step": s, "train_loss": loss} for s, loss in enumerate(  # 2.2 to 3.5: up from 1
        [2.2, 2.43, 2.6, 2.8, 2.9, 3.0, 3.1, 3.2, 3.3, 3.4, 3.45, 3.5])]
    message = only(rows, "rising").message  # what it names is the smoothed curve's, said so
    assert message.startswith("the training loss (its running median over 5 rows) was lowest "
                              "at step 0 (2.43) and rose to")
    assert "lower the peak learning rate" in finding.message
    assert not {"shape", "shape, not yet", "plateau"} & set(kinds(rows))
    rows = lesson_curve(steps=2000)  # diverged, then stuck high: rising, not a plateau
    for r in rows:
        r["train_loss"] = 3.5 if r["step"] >= 1000 else r["train_loss"]
    assert "rising" in kinds(rows) and "plateau" not in kinds(rows)
    legend = plot_loss(rows, findings=read_curve(rows, FACTS)).axes[0].get_legend().get_texts()
    assert "loss rising" in {t.get_text() for t in legend}
    rows = lesson_curve(tau=100)
    for r in rows:  # a fast drop, then up 9 %: still the lesson's shape, its share at most 100 %
        r["train_loss"] += 0.00003 * max(0, r["step"] - 1000)
    assert "rising" not in kinds(rows)
    share = only(rows, "shape").message.split("% of the whole")[0].rsplit(" ", 1)[1]
    assert 95 <= int(share) <= 100  # of the drop to the lowest point (to the end: 103 %)


def test_plateau_and_a_steady_fall():
    sgd = [{"step": s, "train_loss": 3.36 + (-1) ** (s // 10) * 0.01 + 0.8 * (s < 200),
            "lr": 0.5} for s in range(0, 1000, 10)]  # SGD's stall at the unigram loss
    finding = only(sgd, "plateau", Facts(vocab_size=65))
    assert finding.step == 200 and finding.end == 990 and finding.value == pytest.approx(3.36,
                                                                                         abs=0.011)
    assert "the last 80% of the run" in finding.message
    steady = [{"step": s, "train_loss": 4.0 - 0.002 * s, "lr": 1e-3} for s in range(0, 1000, 10)]
    assert "plateau" not in kinds(steady, Facts(vocab_size=65))
    assert "shape, not yet" in kinds(steady, Facts(vocab_size=65))
    # flat after a slow start: not yet the lesson's shape, and a plateau; neither says it falls
    slow = [{"step": s, "train_loss": max(2.0, 4.2 - 2.2 * s / 300), "lr": 1e-3}
            for s in range(0, 1000, 10)]
    assert only(slow, "shape, not yet", Facts(vocab_size=65)).message.endswith(
        "(its running median to 3.47 by step 100), the rest later (to 2.00)")
    assert only(slow, "plateau", Facts(vocab_size=65)).step == 300
    # up a little at the end: the share is of the drop to the lowest, which is said too
    for r in slow[-20:]:
        r["train_loss"] = 2.15
    message = only(slow, "shape, not yet", Facts(vocab_size=65)).message
    share = (4.2 - 3.47) / (4.2 - 2.0)  # the printed figures give the printed share
    assert f"only {share:.0%} of the drop" in message and message.endswith(
        "the rest later (to 2.15; its lowest 2.00)")


# --- each threshold, with a curve clearly on either side of it --------------------------------


def test_clipped_mostly_is_more_than_half_of_the_steps():
    """CLIPPED_MOSTLY, a half: 600 of 1,000 steps clipped (60 %) is mostly, 400 (40 %) not."""
    for per_row, kind, other in [(30, "clipped mostly", "clipped"),
                                 (20, "clipped", "clipped mostly")]:
        rows = lesson_curve(steps=1000)  # rows at 0, 50, ..., 950 and 999
        for r in rows[1:]:
            r["clipped"] = per_row  # 20 rows after the first
        finding = only(rows, kind)
        assert f"on {20 * per_row} of 1,000 steps ({2 * per_row}%)" in finding.message
        assert other not in kinds(rows)


def climbing_from_2500(rise):
    """The lesson's curve (down to 1.30 by step 2,500), then up by `rise` of 1.3 over the
    last 2,500 steps."""
    rows = lesson_curve()
    for r in rows:
        r["train_loss"] += 1.3 * rise * max(0, r["step"] - 2500) / 2500
    return rows


def test_diverging_is_ending_more_than_a_tenth_above_the_lowest():
    """DIVERGE_RISE, a tenth: a curve that ends about 15 % above its lowest is diverging, one
    about 5 % above is not (the smoothed end, at step 4,950, is 0.98 of the way up)."""
    finding = only(climbing_from_2500(0.15), "rising")
    low, high = (float(x) for x in re.search(r"\((\d\.\d\d)\) and rose to (\d\.\d\d)",
                                             finding.message).groups())
    assert 1.12 < high / low < 1.18
    assert "rising" not in kinds(climbing_from_2500(0.05))


def test_slow_warmup_is_half_of_the_budget_or_more():
    """SLOW_WARMUP, a half: warmup ending at 2.3 s is slow in a budget of 2.3 / 0.55 s (55 %),
    not in one of 2.3 / 0.45 s (45 %), where warmup simply ends at its step."""
    rows = lesson_curve(steps=130, every=10)
    for r in rows:
        r["time_s"] = 0.023 * r["step"]  # step 100, the end of warmup, at 2.3 s

    def budget(share):
        return Facts(vocab_size=65, warmup_steps=100, total_steps=None, time_budget=2.3 / share,
                     lr=1e-2)

    assert "took 55% of the" in only(rows, "slow warmup", budget(0.55)).message
    found = kinds(rows, budget(0.45))
    assert "slow warmup" not in found and "warmup" in found
    for r in rows:
        r["time_s"] = 0.02 * r["step"]  # step 100 at 2.0 s: exactly half of 4 s
    half = Facts(vocab_size=65, warmup_steps=100, total_steps=None, time_budget=4.0, lr=1e-2)
    assert "took 50% of the 4 s" in only(rows, "slow warmup", half).message


def falling_then_flat(until):
    """A train loss falling 0.04 a row (every 10 steps) until step `until`, then flat to 990."""
    return [{"step": s, "train_loss": 4.0 - 0.004 * min(s, until), "lr": 1e-3}
            for s in range(0, 1000, 10)]


def test_a_plateau_covers_a_quarter_of_the_run_or_more():
    """PLATEAU_SHARE, a quarter: flat from step 700 (its band takes in the smoothed 690, 0.04
    above) is 300 / 990 of the run, 30 %: a plateau; flat from step 800, 20 %: not one."""
    finding = only(falling_then_flat(700), "plateau", Facts(vocab_size=65))
    assert finding.step == 690 and "the last 30% of the run" in finding.message
    assert "plateau" not in kinds(falling_then_flat(800), Facts(vocab_size=65))


def two_speeds(early):
    """From 4.0 at step 0, a drop of 2.0 nats: `early` of it by step 100 (the first tenth of a
    run to 990), the rest by step 900, flat after."""
    rows = []
    for s in range(0, 1000, 10):
        done = early * s / 100 if s <= 100 else early + (1 - early) * min(1, (s - 100) / 800)
        rows.append({"step": s, "train_loss": 4.0 - 2.0 * done, "lr": 1e-3})
    return rows


def test_the_lessons_shape_is_half_of_the_drop_in_the_first_tenth():
    """The 'shape' cut, a half: 55 % of the drop in the first tenth is the lesson's shape,
    45 % is not yet."""
    facts = Facts(vocab_size=65)
    assert "55% of the whole drop" in only(two_speeds(0.55), "shape", facts).message
    assert "only 45% of the drop" in only(two_speeds(0.45), "shape, not yet", facts).message
    assert "shape" not in kinds(two_speeds(0.45), facts)


def test_a_plateau_at_ln_v_without_the_unigram_figure_has_learnt_nothing():
    """One's own loop gives no unigram entropy; a loss that stays at ln V, the uniform guess,
    is still read as nothing learnt, not as a model at its limit."""
    rows = [{"step": s, "train_loss": LN65 + 0.01 * (-1) ** s, "lr": 1e-7} for s in range(150)]
    facts = Facts(vocab_size=65, total_steps=150)
    finding = only(rows, "plateau, uniform", facts)
    assert "near or above ln V = 4.17" in finding.message and "the 65 tokens" in finding.message
    known = Facts(vocab_size=65, total_steps=150, unigram_nats=3.31)
    assert "plateau, untrained" in kinds(rows, known)
    lower = [dict(r, train_loss=r["train_loss"] - reading.UNIGRAM_NATS - 0.05) for r in rows]
    assert "plateau" in kinds(lower, facts) and "plateau, uniform" not in kinds(lower, facts)


def test_a_plateau_within_a_tenth_of_a_nat_below_ln_v_is_still_nothing_learnt():
    """Without the unigram figure, "level with ln V" takes in a loss up to UNIGRAM_NATS below
    it (the band is inclusive, as at the unigram entropy); the reading and its drawing say
    nothing was learnt, not that the model is at its limit."""
    facts = Facts(vocab_size=65, total_steps=150)
    for below in (reading.UNIGRAM_NATS / 2, reading.UNIGRAM_NATS):
        rows = [{"step": s, "train_loss": LN65 - below, "lr": 1e-7} for s in range(150)]
        assert "plateau, uniform" in kinds(rows, facts), below
    findings = read_curve(rows, facts)
    legend = plot_loss(rows, findings=findings).axes[0].get_legend().get_texts()
    assert "plateau: untrained" in {t.get_text() for t in legend}


def test_a_plateau_at_the_unigram_entropy_has_learnt_nothing_of_context():
    """SGD at a rate far too low for it (say): a fast drop from ln V to how common each
    character is, then nothing. Known to be the unigram entropy (within a tenth of a nat), that
    is a plateau at the unigram level and the lesson's drop only to it; above it, a model that
    has not learnt even the frequencies; not known (one's own loop), a plateau and the lesson's
    shape; a healthy curve is none of these."""
    facts = Facts(**{**vars(FACTS), "unigram_nats": 3.31})
    stuck = lesson_curve(floor=3.31)
    found = only(stuck, "plateau, unigram", facts)
    assert "level with the unigram entropy of the training text (3.31 nats)" in found.message
    assert "only to the unigram entropy" in only(stuck, "shape, unigram", facts).message
    assert not {"shape", "plateau"} & set(kinds(stuck, facts))
    assert {"shape", "plateau"} <= set(kinds(stuck))  # (FACTS: no unigram entropy known)
    for floor, unigram in [(3.21, True), (3.19, False), (1.3, False)]:
        assert ("plateau, unigram" in kinds(lesson_curve(floor=floor), facts)) == unigram
    untrained = only(lesson_curve(floor=LN65), "plateau, untrained", facts)  # (at ln V)
    assert "above the unigram entropy of the training text (3.31 nats; ln V: 4.17)" in (
        untrained.message)
    legend = plot_loss(stuck, findings=read_curve(stuck, facts)).axes[0].get_legend()
    assert "plateau: unigram level" in {t.get_text() for t in legend.get_texts()}


def test_a_loss_that_blew_up_before_it_settled_at_the_unigram_level_still_says_so():
    facts = Facts(**{**vars(FACTS), "unigram_nats": 3.31})
    rows = lesson_curve(floor=3.33)
    for r in rows:  # up to 6 nats in the first tenth, then down
        if 0 < r["step"] <= 500:
            r["train_loss"] = 6.0
    blew = only(rows, "blew up", facts)
    assert blew.message.startswith("the loss went above ln 65 = 4.17, worse than a uniform "
                                   "guess, from step 50 (its running median up to 6.00 at step")
    assert "and came back under it by step 550, to 3.33 at the end, the unigram level" in \
        blew.message
    assert not {"shape", "shape, blew up", "spikes in warmup"} & set(kinds(rows, facts))


def test_a_split_of_at_most_chunks_times_chunk_tokens_is_counted_whole():
    from minigpt.evaluate import unigram_entropy

    tokens = np.array([0] * 30 + [1] * 10)  # 4 chunks of 10: every token counted once
    oracle = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert unigram_entropy(tokens, 2, chunks=4, chunk=10) == pytest.approx(oracle)


def test_the_unigram_entropy_is_of_the_token_frequencies_and_a_run_records_it(small_text,
                                                                             tmp_path):
    from collections import Counter

    from minigpt import train
    from minigpt.evaluate import unigram_entropy

    tokens = [0, 0, 0, 1, 1, 2, 5, 5]
    oracle = -sum(n / 8 * math.log(n / 8) for n in Counter(tokens).values())
    assert unigram_entropy(np.array(tokens, dtype=np.uint16), 6) == pytest.approx(oracle)
    halves = np.array([0] * 100 + [1] * 100)  # read in chunks spread over the whole split
    assert unigram_entropy(halves, 2, chunks=4, chunk=10) == pytest.approx(math.log(2))
    result = train(tiny_config(small_text, steps=2, eval_every=2), tmp_path / "run",
                   progress=False)
    text = small_text.read_text()
    train_text = text[:int(len(text) * 0.9)]  # (the split's first 90 %)
    counts = Counter(train_text).values()
    expected = -sum(n / len(train_text) * math.log(n / len(train_text)) for n in counts)
    assert result.tokenizer.vocab_size == len(set(text))
    assert reading.run_facts(tmp_path / "run").unigram_nats == pytest.approx(expected, abs=1e-3)


def test_format_and_read_run(tmp_path):
    assert "too few rows" in format_reading([])
    with pytest.raises(MiniGPTError, match="not a run folder"):
        read_run(tmp_path)
    text = format_reading(read_curve(overfit_curve(), FACTS))
    assert text.splitlines()[0] == "Reading the curve:"
    assert sum(line.startswith("- ") for line in text.splitlines()) >= 5


def test_every_kind_has_its_words_and_its_drawing():
    rows = with_spikes(overfit_curve(), [300])
    rows[3]["clipped"], rows[8]["skipped"] = 2, 1
    next(r for r in rows if r["step"] == 3000)["val_loss"] = None  # one evaluation gone NaN
    findings = read_curve(rows, Facts(vocab_size=65, warmup_steps=400, total_steps=5000,
                                      grad_clip=1.0))
    assert all(f.kind in reading.WORDING for f in findings)
    legend = plot_loss(rows, findings=findings).axes[0].get_legend().get_texts()
    labels = {t.get_text() for t in legend}
    assert {"ln V = 4.17", "warmup ends", "best checkpoint", "clipped", "skipped (NaN/inf)",
            "spike in warmup", "validation stops following train",
            "validation NaN/inf"} <= labels
    plain = {t.get_text() for t in plot_loss(rows).axes[0].get_legend().get_texts()}
    assert plain == {"train", "validation"}


def test_a_real_run_with_a_high_learning_rate_on_a_tiny_corpus(tmp_path, tinyshakespeare_source):
    from minigpt import train

    text = tmp_path / "tiny.txt"  # 1,000 characters: memorised long before it is learned
    text.write_text(tinyshakespeare_source.read_text()[:1000])
    # float32 on every CPU (--dtype auto may pick bf16 where it is native): 2,000 characters
    # overfit in 400 steps on the AVX-512 BF16 EPYC but not on the AVX2 one; 1,000 in float32
    # have their best validation loss at step 150 there
    cfg = tiny_config(text, n_embd=64, n_layer=2, steps=400, lr=0.01, warmup_steps=10,
                      eval_every=25, log_every=5, grad_clip=1.0, dtype="float32")
    out = tmp_path / "run"
    train(cfg, out, progress=False)
    found = {f.kind: f for f in read_run(out)}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert "start" in found and found["warmup"].step == 10
    assert "overfitting" in found, format_reading(list(found.values()))
    best = min((r for r in rows if "val_loss" in r), key=lambda r: r["val_loss"])
    assert found["overfitting"].step == found["best"].step == best["step"]
    assert rows[-1]["val_loss"] > best["val_loss"]
    clipped = found.get("clipped") or found["clipped mostly"]
    assert f"on {sum(r['clipped'] for r in rows):,} of 400 steps" in clipped.message


# --- edges the rules above leave open -----------------------------------------------------------


def test_a_run_exactly_as_long_as_its_warmup_is_all_warmup_and_a_tenth_is_at_least_one():
    rows = [{"step": s, "train_loss": 4.0, "lr": 1e-3 * (s + 1) / 5} for s in range(5)]
    f = only(rows, "all warmup", Facts(vocab_size=65, warmup_steps=5, total_steps=5))
    assert "(--warmup-steps 1, a tenth)" in f.message  # 5 // 10 is 0: at least one step


def test_a_warmup_far_too_slow_for_its_budget_suggests_at_least_one_step():
    rows = [{"step": s, "train_loss": 4.0, "lr": 1e-3, "time_s": 12.0 * s} for s in range(6)]
    budget = Facts(vocab_size=65, warmup_steps=5, total_steps=None, time_budget=100.0)
    assert "try --warmup-steps 1 (a tenth" in only(rows, "slow warmup", budget).message


def test_the_warmup_peak_is_the_configured_lr_even_when_no_row_logged_it():
    rows = lesson_curve(steps=400)  # rows every 50: warmup to step 100 has no row at its end
    for r in rows:
        r["lr"] = 3e-3 * (r["step"] + 1) / 101 if r["step"] < 100 else 1e-3  # decayed after
    assert "its peak, 3.00e-03" in only(rows, "warmup", Facts(vocab_size=65, warmup_steps=100,
                                                               lr=3e-3)).message


def test_early_stop_counts_only_the_evaluations_after_the_best():
    rows = lesson_curve(steps=1001)  # evaluations at 0, 250, 500 (the best), 750 and 1,000
    for r in rows:
        if "val_loss" in r and r["step"] > 500:
            r["val_loss"] = 3.0
    assert "early stop" not in kinds(rows, Facts(vocab_size=65, total_steps=5000, patience=3))
    assert only(rows, "early stop", Facts(vocab_size=65, total_steps=5000, patience=2)).step == 1000


@pytest.mark.parametrize("gone", [None, float("nan"), float("inf")])  # null: the trainer's
def test_a_train_loss_or_gradient_gone_nan_is_a_skipped_batch(gone):
    rows = lesson_curve(steps=1000)
    rows[6]["train_loss"] = gone  # (its gradient norm written, finite)
    rows[8]["grad_norm"] = gone
    assert only(rows, "skipped").steps == (300, 400)


# a spike: above the median of the five rows before it (step 5 below: those five have median
# 1.0, the four before 1.5) by more than SPIKE_RISE of it and SPIKE_NATS both, the edges out
RISE, NATS = 1 + reading.SPIKE_RISE, reading.SPIKE_NATS
SPIKES = [
    ([1.0, 1.0, 2.0, 2.0, 1.0, 1.5], [2, 5]),  # against the five rows before, not fewer
    ([1.0] * 5 + [RISE], []),  # exactly SPIKE_RISE above: no spike
    ([1.0] * 5 + [1.01 * RISE], [5]),
    ([0.4] * 5 + [0.48], []),  # 20 %, but 0.08 nats: batch noise (it read as three spikes)
    ([0.4] * 5 + [0.52], [5]),
    ([3.0] * 5 + [3.31], [5]),  # 10 %: 0.3 nats
    ([3.0] * 5 + [3.0 + (NATS + 3.0 * reading.SPIKE_RISE) / 2], []),  # past the nats, not 10 %
    ([3.0] * 5 + [3.0 * RISE * 1.01], [5]),
]


@pytest.mark.parametrize("losses, spikes", SPIKES)
def test_a_spike_is_a_tenth_and_a_tenth_of_a_nat_above_the_median_of_five(losses, spikes):
    assert NATS < 3.0 * reading.SPIKE_RISE  # (at a loss of 3, the rise is the larger)
    assert reading.spike_steps(list(enumerate(losses))) == spikes


def test_a_spike_at_warmups_last_step_is_in_warmup_and_without_clipping_says_turn_it_on():
    rows = with_spikes(lesson_curve(steps=2000, every=10), [100, 1200])
    no_clip = Facts(vocab_size=65, warmup_steps=100, grad_clip=0.0)
    assert only(rows, "spikes in warmup", no_clip).steps == (100,)
    assert only(rows, "spikes", no_clip).steps == (1200,)
    assert only(rows, "spikes", no_clip).message.endswith(
        "or turn gradient clipping on (--grad-clip 1.0)")


def test_one_evaluation_above_the_best_is_not_yet_overfitting():
    rows = [{"step": s, "train_loss": 3.0 - 0.02 * s, "lr": 1e-3} for s in range(40)]
    for r, val in zip(rows[::10], [3.0, 2.0, 2.5, 2.6], strict=True):
        r["val_loss"] = val
    facts = Facts(vocab_size=65)
    assert "overfitting" not in kinds(rows[:30], facts)  # only step 20's above step 10's best
    assert only(rows, "overfitting", facts).step == only(rows, "best", facts).step == 10


def test_a_fall_within_the_margin_is_not_the_lessons_shape():
    """margin: max(0.02 nats, 1 % of the loss); from 4.0 a fall of 0.03 (under 0.04) is noise."""
    assert reading.margin(1.0) == pytest.approx(0.02) == reading.margin(0.5)  # (the floor)
    rows = [{"step": s, "train_loss": 4.0 - 0.03 * min(1, s / 100), "lr": 1e-3}
            for s in range(0, 1000, 10)]
    assert reading.margin(4.0) == pytest.approx(0.04)
    assert not {"shape", "shape, not yet"} & set(kinds(rows, Facts(vocab_size=65)))


def test_shape_and_rising_need_enough_rows_and_shape_a_row_at_step_0():
    climbing = [{"step": s, "train_loss": 2.0 + 0.2 * s, "lr": 1e-3} for s in range(9)]
    assert "rising" not in kinds(climbing, Facts(vocab_size=65))  # under 2 x SMOOTH rows
    assert "rising" in kinds(climbing + [{"step": 9, "train_loss": 3.8, "lr": 1e-3}],
                             Facts(vocab_size=65))
    resumed = [r for r in two_speeds(0.55) if r["step"] >= 10]  # no step-0 loss to start from
    assert not {"shape", "shape, not yet"} & set(kinds(resumed, Facts(vocab_size=65)))


def test_a_step_written_twice_is_read_once_as_last_written():
    """One's own loop, resumed from step 300 without cutting its rows, writes 300..500 again:
    the later rows are the run's."""
    rows = lesson_curve(steps=1000)
    for r in rows:
        r["clipped"] = 30
    again = [dict(r, train_loss=r["train_loss"] - 0.2, clipped=0) for r in rows
             if 300 <= r["step"] <= 500]
    kept = [r for r in rows if not 300 <= r["step"] <= 500] + again
    assert read_curve(rows + again, FACTS) == read_curve(kept, FACTS)
    assert "on 480 of 1,000 steps" in only(rows + again, "clipped").message  # 16 rows, not 21


def test_a_steps_validation_in_a_row_of_its_own_joins_its_training_row():
    """A loop that logs {step, train_loss}, then {step, val_loss}: the step keeps both, so its
    step-0 loss and its shape are still read."""
    rows = lesson_curve()
    split = []
    for r in rows:
        split.append({k: v for k, v in r.items() if k != "val_loss"})
        if "val_loss" in r:
            split.append({"step": r["step"], "val_loss": r["val_loss"]})
    assert read_curve(split, FACTS) == read_curve(rows, FACTS)
    assert {"start", "shape"} <= set(kinds(split))


def test_rows_out_of_order_read_as_the_same_rows_sorted():
    rows = with_spikes(overfit_curve(), [300])
    shuffled = rows[1::2] + rows[::2]
    assert read_curve(shuffled, FACTS) == read_curve(rows, FACTS)


def test_six_steps_are_all_listed():
    assert reading.list_steps([10, 20, 30, 40, 50, 60]) == "10, 20, 30, 40, 50 and 60"
    assert reading.list_steps(list(range(7))) == "0, 1, 2, 3, 4, 5 and 1 more"


@pytest.mark.parametrize("overrides", [dict(schedule="linear", warmup_steps=7, steps=90),
                                       dict(schedule="cosine", warmup_steps=7, time_budget=30.0),
                                       dict(schedule="constant", warmup_steps=7, steps=90)])
def test_facts_from_config_read_the_settings(tmp_path, overrides):
    config = tiny_config(tmp_path / "t.txt", **overrides)
    cfg, facts = config.train, reading.facts_from_config(config.to_dict())
    assert reading.facts_from_config(config) == facts  # (the RunConfig itself, or its dict)
    assert facts.warmup_steps == (7 if cfg.schedule != "constant" else 0)
    assert facts.total_steps == (None if cfg.time_budget else cfg.steps)
    assert facts.time_budget == (cfg.time_budget or None) and facts.lr == cfg.lr


def test_a_warmup_unfinished_past_the_budget_took_all_of_it():
    rows = [{"step": s, "train_loss": 4.0, "lr": 1e-3, "time_s": 0.3 * s} for s in range(12)]
    long = Facts(vocab_size=65, warmup_steps=100, total_steps=None, time_budget=3.0)
    assert "by step 11, 100% of the 3 s" in only(rows, "warmup unfinished", long).message


def test_validation_back_down_at_the_end_is_not_overfitting():
    rows = overfit_curve()
    best = only(rows, "best").value
    rows[-1]["val_loss"] = best + 0.01  # up after the best, and back down to it by the end
    assert "overfitting" not in kinds(rows)


# --- the edges of each band and window (a mutation audit found them unpinned) -----------------


def two_levels(high_rows, low_steps, high=3.0, low=1.0):
    """`high_rows` rows at `high` (steps 0, 1, ...), then rows at `low` at `low_steps`: a
    step down that the running median keeps sharp."""
    return ([{"step": s, "train_loss": high, "lr": 1e-3} for s in range(high_rows)]
            + [{"step": s, "train_loss": low, "lr": 1e-3} for s in low_steps])


def plateaus(rows):
    return [f for f in read_curve(rows, Facts(vocab_size=65)) if f.kind == "plateau"]


def test_a_plateau_needs_smooth_rows_and_the_curve_two_smooth_widths():
    wide = [100 * (k + 1) for k in range(reading.SMOOTH)]  # a flat end of SMOOTH rows
    n = 2 * reading.SMOOTH - reading.SMOOTH  # rows before it: the curve is 2 x SMOOTH rows
    found = plateaus(two_levels(n, wide))
    assert [(f.step, f.end) for f in found] == [(wide[0], wide[-1])]
    assert not plateaus(two_levels(n - 1, wide))  # one row short of 2 x SMOOTH
    assert not plateaus(two_levels(n + 5, wide[1:]))  # a flat end one row short of SMOOTH


def test_a_plateaus_band_takes_in_a_loss_exactly_plateau_nats_away():
    """The band is PLATEAU_NATS wide, its edges in: 20 rows at 0.1 then 20 at 0.05 (0.1 - 0.05
    is 0.05 exactly in floating point) are one plateau, its level their median; a step of
    0.055 is two levels, the second too short a share to be a plateau."""
    low = 0.05
    assert 2 * low - low == reading.PLATEAU_NATS
    rows = (two_levels(10, [], high=3.0)
            + [{"step": s, "train_loss": 2 * low, "lr": 1e-3} for s in range(10, 30)]
            + [{"step": s, "train_loss": low, "lr": 1e-3} for s in range(30, 50)])
    (found,) = plateaus(rows)
    assert (found.step, found.end) == (10, 49)
    assert found.value == statistics.median([2 * low] * 20 + [low] * 20)
    for r in rows[10:30]:
        r["train_loss"] = low + 1.1 * reading.PLATEAU_NATS
    (found,) = plateaus(rows) or [None]
    assert found is None or found.step >= 30


def test_a_plateau_covers_exactly_a_quarter_of_the_run():
    """Steps 0 .. 400 with a flat end from step 300: 100 / 400, a quarter, is a plateau; from
    step 301, 99 / 400, under a quarter, is not."""
    def curve(flat_from):
        return [{"step": s, "train_loss": 3.0 if s < flat_from else 1.0, "lr": 1e-3}
                for s in range(401)]
    (found,) = plateaus(curve(300))
    assert found.step == 300 and (found.end - found.step) / 400 == reading.PLATEAU_SHARE
    assert not plateaus(curve(301))


def test_a_rise_of_a_hundredth_of_a_nat_at_a_low_loss_is_noise_not_divergence():
    """A loss at 0.04 that ends at 0.05 is 25 % up but 0.01 nats: batch noise, not diverging
    (DIVERGE_NATS); the same curve ending 0.15 nats up is."""
    for end, diverging in [(0.05, False), (0.04 + reading.DIVERGE_NATS, False), (0.19, True)]:
        rows = [{"step": 10 * s, "train_loss": 0.04 + (end - 0.04) * max(0, s - 50) / 50,
                 "lr": 1e-3} for s in range(101)]
        assert ("rising" in kinds(rows, Facts(vocab_size=65))) == diverging, end


def test_ending_exactly_diverge_rise_above_the_lowest_is_not_diverging():
    low = 1.0
    flat = [(s, low) for s in range(10)]
    assert reading.diverging(flat + [(10, low * (1 + reading.DIVERGE_RISE))]) is None
    assert reading.diverging(flat + [(10, low * 1.105)]) == (0, low)  # over "10 %": 10.5 %


def test_shape_needs_two_smooth_widths_of_rows():
    rows = [{"step": s, "train_loss": 4.0 - 2.0 * min(1, s / 2), "lr": 1e-3}
            for s in range(2 * reading.SMOOTH)]
    assert "shape" in kinds(rows, Facts(vocab_size=65))
    assert not {"shape", "shape, not yet"} & set(kinds(rows[:-1], Facts(vocab_size=65)))


def test_a_single_row_at_step_0_reads_no_warmup_however_long_it_took():
    rows = [{"step": 0, "train_loss": LN65, "lr": 1e-5, "time_s": 3.0}]  # compiling, say
    facts = Facts(vocab_size=65, warmup_steps=100, total_steps=None, time_budget=4.0)
    assert not {"warmup", "slow warmup", "warmup unfinished"} & set(kinds(rows, facts))


def test_rows_without_a_clock_under_a_time_budget_read_no_early_stop():
    rows = overfit_curve()
    for r in rows:
        r.pop("time_s", None)
    facts = Facts(vocab_size=65, total_steps=None, time_budget=60.0, patience=2)
    assert "early stop" not in kinds(rows, facts)


def test_a_nan_validation_loss_in_rows_of_ones_own_loop_is_not_finite():
    rows = lesson_curve(steps=500)
    rows[3]["val_loss"] = rows[5]["val_loss"] = float("nan")
    assert rows[3]["step"] in only(rows, "val not finite").steps


def test_rows_with_clipped_counts_and_without_read_the_gradient_norms():
    rows = [{"step": s, "train_loss": 2.0, "lr": 1e-3, "grad_norm": 2.0 if s % 2 else 0.5}
            for s in range(10)]
    rows[0]["clipped"] = 0
    found = only(rows, "clipped", Facts(vocab_size=65, grad_clip=1.0))
    assert found.steps == tuple(r["step"] for r in rows if r["grad_norm"] > 1.0)



@pytest.mark.parametrize("call, message", [
    (lambda: reading.facts_from_config({"config": {}}), "facts_from_config takes a RunConfig"),
    (lambda: read_curve("runs/x/metrics.jsonl", FACTS), "read_curve takes metrics rows"),
    (lambda: read_curve([{"step": 0}], {"vocab_size": 65}), "read_curve takes metrics rows"),
    (lambda: read_run(None), "run_dir must be a path"),
])
def test_a_reading_called_with_the_wrong_things_says_what_it_takes(call, message):
    with pytest.raises(MiniGPTError, match=message):  # (not a KeyError or TypeError inside)
        call()



def cosine_run(best_at_end: bool, decay: bool = True):
    """A short run whose training loss falls to 2.4 by step 120 and stays there as a cosine
    schedule decays to zero (or, decay=False, at a constant rate); validation improving to the
    last evaluation, or best at step 100."""
    rows = []
    for s in range(0, 200, 5):
        lr = 1e-2 * (0.5 * (1 + math.cos(math.pi * s / 199)) if decay else 1.0)
        row = {"step": s, "train_loss": max(2.4, 4.2 - 0.015 * s), "lr": lr}
        if s % 25 == 0 or s == 195:
            row["val_loss"] = 2.6 - 0.001 * s if best_at_end else 2.6 + 0.001 * abs(s - 100)
        rows.append(row)
    return rows


def test_a_plateau_as_the_learning_rate_decays_is_the_schedule_settling_a_short_run():
    """A flat end while the cosine schedule decays, validation still improving: it had said
    'more steps of the same buy little' of a run that a longer schedule takes lower."""
    facts = Facts(vocab_size=65, total_steps=200, lr=1e-2)
    found = only(cosine_run(best_at_end=True), "plateau, settling", facts)
    rate = 0.5 * (1 + math.cos(math.pi * found.step / 199))
    assert rate < reading.SETTLING_LR and f"(to {rate:.0%} of its peak there)" in found.message
    assert "its best at step 195); a longer run (more --steps) would go lower" in found.message
    assert "plateau" not in kinds(cosine_run(best_at_end=True), facts)
    legend = plot_loss(cosine_run(True), findings=[found]).axes[0].get_legend().get_texts()
    assert "flat as the rate decays" in {t.get_text() for t in legend}
    # validation best before the end: the curve cannot say; a rate that never decayed: the
    # model at its limit
    unsure = only(cosine_run(best_at_end=False), "plateau, decayed", facts)
    assert unsure.step == found.step and "cannot say whether the model is at its limit; a " \
        "longer run (more --steps) would tell" in unsure.message
    assert only(cosine_run(True, decay=False), "plateau", facts).step == found.step
    budget = Facts(vocab_size=65, total_steps=None, time_budget=60.0, lr=1e-2)
    assert "a longer run (more --time-budget)" in only(cosine_run(True), "plateau, settling",
                                                       budget).message  # (--steps: no use)


def test_a_plateau_in_warmup_or_with_validation_still_as_noise_is_no_settling():
    """A run flat from step 0, its rate still warming up (below half its peak, but rising),
    read as 'the schedule settling'; so did validation falling by noise alone, or read
    once on the plateau (the curve cannot say then)."""
    rows = [{"step": s, "train_loss": 2.0, "lr": 1e-6 * min(1, s / 300)} for s in
            range(0, 1000, 10)]
    for r in rows[::10]:
        r["val_loss"] = 2.03 - 2e-5 * r["step"]  # falling to the end, by 0.02: noise
    facts = Facts(vocab_size=65, warmup_steps=300, total_steps=1000, lr=1e-6)
    assert "plateau" in kinds(rows, facts) and "plateau, settling" not in kinds(rows, facts)
    once = cosine_run(True)
    for r in once[:-1]:
        if r["step"] >= 115:  # one evaluation on the plateau, the last: no trend to read
            r.pop("val_loss", None)
    facts = Facts(vocab_size=65, total_steps=200, lr=1e-2)
    assert "plateau, decayed" in kinds(once, facts) and "plateau, settling" not in kinds(
        once, facts)


def test_rows_of_ones_own_loop_without_a_rate_are_read():
    rows = [{k: v for k, v in r.items() if k != "lr"} for r in lesson_curve(steps=1000)]
    assert "warmup" in kinds(rows, Facts(vocab_size=65, warmup_steps=100, total_steps=1000))
    assert "all warmup" in kinds(rows, Facts(vocab_size=65, warmup_steps=2000, total_steps=1000))


def test_a_loss_that_rises_in_the_first_tenth_blew_up_at_the_start():
    """It read 'not yet the lesson's shape: only -315% of the drop came in the first
    tenth ... the rest later' of a run whose learning rate threw the loss up at the start."""
    rows = [{"step": s, "train_loss": 4.2 + 0.4 * (0 < s <= 100) - 2.0 * (s > 100) * min(
        1, (s - 100) / 300), "lr": 0.3} for s in range(0, 1000, 10)]  # (below ln V + 0.5)
    found = only(rows, "shape, blew up", Facts(vocab_size=65))
    assert "its running median 4.60 by step 100, from 4.20 at step 0) before it fell (to " \
           "2.20)" in found.message and "lower the peak learning rate (--lr)" in found.message
    assert not {"shape", "shape, not yet"} & set(kinds(rows, Facts(vocab_size=65)))
    legend = plot_loss(rows, findings=[found]).axes[0].get_legend().get_texts()
    assert "first tenth of the run" in {t.get_text() for t in legend}


def test_a_plateaus_rate_is_against_the_configured_peak_and_settling_is_strictly_below():
    """The rate where the plateau began is a share of Facts.lr (the configured peak, which the
    rows need not have logged), and 'settling' is a share below SETTLING_LR, not at it."""
    rows, facts = cosine_run(best_at_end=True), Facts(vocab_size=65, total_steps=200, lr=1e-2)
    start = only(rows, "plateau, settling", facts).step
    there = next(r["lr"] for r in rows if r["step"] == start)
    twice = Facts(vocab_size=65, total_steps=200, lr=2e-2)  # a peak above any rate logged
    assert f"(to {there / 2e-2:.0%} of its peak there)" in only(rows, "plateau, settling",
                                                                  twice).message
    at = next(r for r in rows if r["step"] == start)
    at["lr"] = reading.SETTLING_LR * facts.lr  # exactly at the line: the model at its limit
    assert only(rows, "plateau", facts).step == start
    at["lr"] = 0.99 * reading.SETTLING_LR * facts.lr
    assert only(rows, "plateau, settling", facts).step == start


def test_a_plateau_in_rows_with_no_rate_or_a_zero_rate_is_not_the_schedule_settling():
    """One's own rows may log no rate, or a rate of zero throughout (a frozen model): nothing
    says the rate decayed, so the flat end is a plateau (a missing rate read as 0 % of its
    peak; a zero peak divided by)."""
    settling = only(cosine_run(best_at_end=True), "plateau, settling",
                    Facts(vocab_size=65, total_steps=200, lr=1e-2))
    for lr in (None, 0.0):
        rows = cosine_run(best_at_end=True)
        for r in rows:
            r.pop("lr") if lr is None else r.update(lr=lr)
        assert only(rows, "plateau", Facts(vocab_size=65, total_steps=200)).step == settling.step


def blew_up_rows(rise: float) -> list[dict]:
    """The first tenth at `rise` above step 0's 4.2, then a fall of 2 nats."""
    return [{"step": s, "train_loss": 4.2 + rise * (0 < s <= 100) - 2.0 * (s > 100) * min(
        1, (s - 100) / 300), "lr": 0.3} for s in range(0, 1000, 10)]


def test_a_rise_in_the_first_tenth_blew_up_only_beyond_the_margin():
    """margin(4.2) is 0.042 nats: a first tenth 0.03 above step 0 is noise (not 'blew up'),
    one 0.06 above is a rise (which a threshold of several margins, or of half the loss, or of
    any rise at all, misread)."""
    edge = reading.margin(4.2)
    noise = kinds(blew_up_rows(0.75 * edge), Facts(vocab_size=65))
    assert "shape, blew up" not in noise and {"shape", "shape, not yet"} & set(noise)
    said = only(blew_up_rows(0.75 * edge), "shape, not yet", Facts(vocab_size=65)).message
    assert "only 0% of the drop" in said  # (no drop: not a negative share, -2 %)
    found = only(blew_up_rows(1.5 * edge), "shape, blew up", Facts(vocab_size=65))
    assert f"its running median {4.2 + 1.5 * edge:.2f} by step 100" in found.message


def test_a_loss_blown_up_above_ln_v_is_said_so_not_as_spikes_a_recovery_or_a_plateau():
    """A run that blew up (far above a uniform guess for a stretch): it read as spikes, then
    'fell', a lowest point of the smoothed curve at step 80, or an untrained plateau whose
    remedy was a far higher learning rate."""
    facts = Facts(vocab_size=65, warmup_steps=20, total_steps=200, grad_clip=1.0,
                  unigram_nats=3.31)
    rescued = [{"step": s, "train_loss": 4.19 if s == 0 else 60 + 30 * math.sin(s) if s <= 120
                else 3.37, "lr": 3.0} for s in range(0, 200, 10)]  # (back as the rate decayed)
    found = only(rescued, "blew up", facts)
    assert (found.step, found.end) == (10, 130)
    assert "and came back under it by step 130, to 3.37 at the end, the unigram level" in \
        found.message and found.message.endswith("lower the peak learning rate (--lr)")
    assert not {"spikes in warmup", "spikes", "shape", "shape, blew up"} & set(
        kinds(rescued, facts))
    never = [{"step": s, "train_loss": loss, "lr": 3.0, **({"val_loss": loss - 1} if s else {})}
             for s, loss in zip(range(0, 150, 10), [4.19, 126, 60, 47, 38, 45, 50, 62, 70, 79,
                                                    80, 78, 79, 81, 79], strict=True)]
    found = only(never, "blew up", facts)
    assert found.message.startswith("the loss went above ln 65 = 4.17, worse than a uniform "
                                    "guess, from step 10 (its running median up to 79.00")
    assert "and ended there (79.00)" in found.message
    assert not {"rising", "overfitting", "plateau, untrained"} & set(kinds(never, facts))
    assert only(never, "best", facts).message.endswith("above ln 65 = 4.17: no better than a "
                                                       "uniform guess")
    flat = [{"step": s, "train_loss": 4.19 if s == 0 else 6.0, "lr": 3.0}
            for s in range(0, 200, 10)]
    assert "blew up" in kinds(flat, facts) and not any(
        k.startswith("plateau") for k in kinds(flat, facts))  # (said: 'a far higher rate')
    legend = plot_loss(rescued, findings=read_curve(rescued, facts)).axes[0].get_legend()
    assert "above ln V: blew up" in {t.get_text() for t in legend.get_texts()}


def test_a_spike_in_a_run_without_warmup_is_not_said_to_come_after_it():
    rows = with_spikes(lesson_curve(steps=1000), [500])
    no_warmup = Facts(vocab_size=65, total_steps=1000)
    assert only(rows, "spikes", no_warmup).message.startswith("the loss spiked once (at step 500)")
    assert only(rows, "spikes").message.startswith("the loss spiked once after warmup (at step")


def test_a_real_run_at_a_learning_rate_far_too_high_blew_up(tmp_path, small_text):
    from minigpt import train

    cfg = tiny_config(small_text, steps=60, lr=3.0, schedule="constant", log_every=2,
                      eval_every=20, eval_batches=2, dtype="float32")
    train(cfg, tmp_path / "run", progress=False)
    found = {f.kind: f for f in read_run(tmp_path / "run")}
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert "blew up" in found, format_reading(list(found.values()))
    assert max(r["train_loss"] for r in rows) > math.log(65) + 1
    assert not {"spikes", "spikes in warmup", "overfitting"} & found.keys()


def test_a_model_that_starts_above_ln_v_and_falls_has_not_blown_up():
    """A fresh model far above ln V (its initialisation: the 'initial loss' finding says so)
    whose loss falls from there: the rows after step 0 are above ln V + 0.5, not above where
    the run began."""
    rows = lesson_curve(steps=1000, start=7.0)
    assert "initial loss" in kinds(rows) and "blew up" not in kinds(rows)
    rows[3]["train_loss"] = rows[4]["train_loss"] = rows[5]["train_loss"] = 9.0  # above 7.5
    assert "blew up" in kinds(rows)


def test_a_blow_up_is_read_against_ln_v_on_its_way_back_and_its_remedy_fits_its_fate():
    """It said 'came back under it' at ln V + 0.5, not at ln V; a blow-up in warmup that the
    run then left far behind was 'far too high for this model', without the warmup remedy; a
    run that blew up and came back was also 'diverging'; the spike that began it was one more
    finding; rows resumed up there were a blow-up with no rise."""
    facts = Facts(vocab_size=65, warmup_steps=50, total_steps=300, grad_clip=1.0)
    up = {s: 9.0 for s in range(10, 40, 5)}
    stuck = [{"step": s, "train_loss": 4.19 if s == 0 else up.get(s, 4.5)}
             for s in range(0, 300, 5)]
    found = only(stuck, "blew up", facts)
    assert "and fell back only to 4.50, still above ln 65" in found.message
    assert "far too high for this model" in found.message
    assert not {"rising", "plateau, uniform", "plateau, untrained"} & set(kinds(stuck, facts))
    learnt = [{"step": s, "train_loss": 4.19 if s == 0 else up.get(s, 4.0 - s / 150)}
              for s in range(0, 300, 5)]
    found = only(learnt, "blew up", facts)
    assert found.step == 10 and "came back under it by step 40, to 2.07 at the end" in \
        found.message
    assert found.message.endswith("a learning rate too high for the start; lengthen warmup "
                                  "(--warmup-steps) or lower the peak learning rate (--lr)")
    assert not {"rising", "spikes", "spikes in warmup"} & set(kinds(learnt, facts))
    no_warmup = Facts(vocab_size=65, total_steps=300)  # back within the first tenth: the start
    assert "far too high for this model" in only(learnt, "blew up", no_warmup).message
    learnt = [{"step": s, "train_loss": 4.19 if s == 0 else 9.0 if s < 20 else 4.0 - s / 150}
              for s in range(0, 300, 5)]
    assert only(learnt, "blew up", no_warmup).message.endswith(
        "a learning rate too high for the start; warm it up (--warmup-steps) or lower the peak "
        "(--lr)")
    resumed = [{"step": s, "train_loss": 9.0 - s / 1000} for s in range(1000, 2000, 10)]
    assert "blew up" not in kinds(resumed, facts)


def test_blown_up_and_no_better_than_a_guess_are_half_a_nat_above_ln_v():
    """BLOWUP_NATS, half a nat: a loss that sits 0.4 above ln V for a stretch (a best
    validation loss there too) is not yet read as worse than a uniform guess; 0.6 above is."""
    for above, blown in [(0.4, False), (0.5, False), (0.6, True)]:  # (0.5: not above)
        rows = lesson_curve(steps=1000)
        for r in rows:
            if 0 < r["step"] <= 300:
                r["train_loss"] = LN65 + above
            if "val_loss" in r:
                r["val_loss"] = LN65 + above
        assert ("blew up" in kinds(rows)) is blown, (above, kinds(rows))
        best = only(rows, "best")
        assert best.message.endswith("no better than a uniform guess") is blown, best.message


def test_a_loss_that_blew_up_and_came_back_is_read_after_it_came_back():
    """Only a loss that ended blown up leaves the plateau to `blew_up`: one that came back and
    settled is read there too (here at the unigram level)."""
    facts = Facts(vocab_size=65, warmup_steps=20, total_steps=200, grad_clip=1.0,
                  unigram_nats=3.31)
    rescued = [{"step": s, "train_loss": 4.19 if s == 0 else 60 + 30 * math.sin(s) if s <= 120
                else 3.37, "lr": 3.0} for s in range(0, 200, 10)]
    assert {"blew up", "plateau, unigram"} <= set(kinds(rescued, facts))


def test_clipping_most_steps_of_a_run_that_blew_up_blames_the_rate():
    """A loss blown up to the end has no spikes or rise of its own to read (`blew_up` says it
    all): the clipping's remedy is still the rate, not 'nothing to change' or a higher clip."""
    facts = Facts(vocab_size=65, warmup_steps=20, total_steps=200, grad_clip=1.0)
    never = [{"step": s, "train_loss": loss, "lr": 3.0, "clipped": 10}
             for s, loss in zip(range(0, 150, 10), [4.19, 126, 60, 47, 38, 45, 50, 62, 70, 79,
                                                    80, 78, 79, 81, 79], strict=True)]
    for optimizer in ("adamw", "sgd"):
        f = Facts(**{**vars(facts), "optimizer": optimizer})
        assert not {"spikes", "rising"} & set(kinds(never, f))
        message = only(never, "clipped mostly", f).message
        assert message.endswith("lower the peak learning rate (--lr)"), message


def test_a_spike_where_exactly_half_the_steps_were_clipped_may_still_clip_harder():
    """Half is not most (CLIPPED_MOSTLY): the clipping is 'clipped', and the spike's remedy
    still offers clipping harder, as it does below half."""
    for per_row, share in [(24, "48%"), (25, "50%")]:
        rows = with_spikes(lesson_curve(steps=1000), [500])  # rows at 0, 50, ..., 950 and 999
        for r in rows[1:]:
            r["clipped"] = per_row
        assert f"on {20 * per_row} of 1,000 steps ({share})" in only(rows, "clipped").message
        assert only(rows, "spikes").message.endswith(", or clip harder (--grad-clip 0.5)")


def test_a_loop_that_went_nan_and_stopped_early_says_only_the_stop_it_made():
    """The notebook's loop at lr 50: its gradients NaN from step 15 on, validation stuck far
    above the best (step 0's) until early stopping at step 150. It read as both a stop on NaN
    gradients and early stopping; a loop that stops at the first row of NaN gradients does so
    there, not 135 rows later. A loop that broke on a NaN at step 170, past the third
    evaluation after the best, did not stop early."""
    facts = Facts(vocab_size=58, warmup_steps=20, total_steps=200, grad_clip=1.0, patience=3)
    rows = [{"step": s, "train_loss": 4.05 if s == 0 else 2.5e6, "lr": 50.0,
             "grad_norm": 2.0 if s < 15 else math.nan} for s in range(151)]
    for r in rows[::50]:
        r["val_loss"] = 95.7 if r["step"] == 0 else 2.5e6
    found = kinds(rows, facts)
    assert "early stop" in found and "skipped, stopped" not in found, found
    assert only(rows, "skipped", facts).message.startswith("136 batch(es) had NaN or inf")
    broke = [{**r, "grad_norm": 2.0} for r in rows] + [
        {"step": 170, "train_loss": math.nan, "lr": 50.0, "grad_norm": math.nan}]
    found = kinds(broke, facts)
    assert "skipped, stopped" in found and "early stop" not in found, found


def test_a_bad_initialisation_that_falls_is_not_a_blow_up_that_came_back():
    """A model far above ln V at the start, falling from there, its step-0 batch a little
    below the next ones (batch noise): it read 'the loss went above ln 65 = 4.17 ... from step
    10 ... and came back under it by step 60'. The start is read as step 0's loss or its
    running median, whichever is higher."""
    rows = [{"step": s, "train_loss": 1.3 + 6.3 * math.exp(-s / 300)}
            for s in range(0, 1000, 10)]
    rows[0]["train_loss"] = 6.5  # (7.6 the level there)
    facts = Facts(vocab_size=65, total_steps=1000)
    assert "initial loss" in kinds(rows, facts) and "blew up" not in kinds(rows, facts)
    for r in rows[3:6]:  # a real blow-up above that start is still one
        r["train_loss"] = 9.0
    assert "blew up" in kinds(rows, facts)


def test_two_separate_blow_ups_are_told_as_two():
    """A loss that blew up at step 10, came back under ln V, and blew up again at step 150
    read as one blow-up 'from step 10'."""
    facts = Facts(vocab_size=65, total_steps=300)
    rows = [{"step": s, "train_loss": 4.19 if s == 0 else 9.0 if 10 <= s < 40 or
             150 <= s < 180 else 3.0} for s in range(0, 300, 5)]
    found = only(rows, "blew up", facts)
    assert found.message.startswith("the loss went above ln 65 = 4.17, worse than a uniform "
                                    "guess, twice, from steps 10 and 150 (its running median")
    assert found.steps == (10, 150)
    once = [{**r, "train_loss": 3.0} if r["step"] >= 150 and r["train_loss"] == 9.0 else r
            for r in rows]
    assert "guess, from step 10 (its" in only(once, "blew up", facts).message


def test_each_blow_up_is_told_from_its_first_row_up_there():
    """Two blow-ups of the same noisy shape (a row at 9.0, a lucky batch back at 3.0, then 9.0
    for a stretch): the first was told from its first row up there, step 10, but the second
    from the step its running median crossed, 155, not 150."""
    facts = Facts(vocab_size=65, total_steps=300)
    rows = [{"step": s, "train_loss": 4.19 if s == 0 else 9.0 if s in (10, 150) or
             20 <= s < 40 or 160 <= s < 180 else 3.0} for s in range(0, 300, 5)]
    found = only(rows, "blew up", facts)
    assert found.steps == (10, 150)
    assert "guess, twice, from steps 10 and 150 (its running median" in found.message


def test_a_resumed_run_that_begins_blown_up_still_shows_a_later_blow_up():
    """Rows of a resumed run (no step 0) that begin above ln V, come back to 3.0 by step 200
    and go up again at step 400: the opening stretch shows no rise, but the later one is a
    blow-up; skipping the rows altogether read it as a spike and a plateau (or as rising)."""
    facts = Facts(vocab_size=65, total_steps=1000)
    rows = [{"step": s, "train_loss": 9.0 if s < 200 or 400 <= s < 500 else 3.0}
            for s in range(100, 900, 10)]
    found = only(rows, "blew up", facts)
    assert (found.step, found.end, found.steps) == (400, 500, (400,)), found
    assert "guess, from step 400 (its running median up to 9.00" in found.message
    assert "spikes" not in kinds(rows, facts)
    ended = [r for r in rows if r["step"] < 500]
    found = only(ended, "blew up", facts)
    assert found.step == 400 and "and ended there (9.00)" in found.message
    assert "rising" not in kinds(ended, facts)
    opening = [r for r in rows if r["step"] < 400]  # (up there only as the rows begin)
    assert "blew up" not in kinds(opening, facts)


def test_a_bad_initialisation_that_blows_up_at_once_is_a_blow_up():
    """A model far above ln V at step 0 (6.0 against ln 65 = 4.17) whose loss went to 12 from
    the next row on: the running median at step 0 is that blow-up's own level, so taken as the
    start it hid the blow-up, read as a plateau 'near or above ln V' whose remedy is a far
    higher learning rate. Batch noise at step 0 raises the bar by at most BLOWUP_NATS."""
    facts = Facts(vocab_size=65, total_steps=300)
    rows = [{"step": s, "train_loss": 6.0 if s == 0 else 12.0} for s in range(0, 300, 10)]
    found = kinds(rows, facts)
    assert "blew up" in found and "plateau, uniform" not in found, found


def test_rows_one_row_short_of_the_last_step_are_unfinished():
    """The trainer writes a run's last step: rows every 10th step of a 91-step run end at 90;
    rows that end at 80 lack that row and are unfinished (the next row, 80 + 10, was within the
    run's steps). Kills `steps_done + spacing >= total_steps`, which read them as done."""
    facts = Facts(vocab_size=65, total_steps=91)
    rows = lesson_curve(steps=91, every=10)
    assert rows[-1]["step"] == 90 and "unfinished" not in kinds(rows, facts)
    assert only(rows[:-1], "unfinished", facts).step == 80


def test_a_blow_up_back_by_warmups_last_step_is_one_of_the_start():
    """A run back under ln V at step 40 with warmup_steps=40 came back within warmup (the
    rate peaks at step 40), so the start's remedy holds; with a warmup shorter than that it
    does not (the first tenth here ends before step 40 too)."""
    up = {s: 9.0 for s in range(10, 40, 5)}
    learnt = [{"step": s, "train_loss": 4.19 if s == 0 else up.get(s, 4.0 - s / 150)}
              for s in range(0, 300, 5)]
    for warmup, start in [(40, True), (39, False)]:
        found = only(learnt, "blew up", Facts(vocab_size=65, warmup_steps=warmup,
                                              total_steps=300))
        assert "came back under it by step 40" in found.message
        assert ("too high for the start" in found.message) is start, found.message


def test_a_blow_up_back_exactly_at_ln_v_came_back():
    """'Back' is at or below ln V: a loss that falls back to ln V itself came back (not 'fell
    back only to 4.17, still above ln 65'). Step 0 at ln V too: its loss is the bar where it
    is higher."""
    up = {s: 9.0 for s in range(10, 40, 5)}
    rows = [{"step": s, "train_loss": up.get(s, LN65)}
            for s in range(0, 300, 5)]
    found = only(rows, "blew up", Facts(vocab_size=65, total_steps=300))
    assert "came back under it by step 40, to 4.17 at the end" in found.message, found.message


def test_a_step_0_loss_exactly_the_tolerance_from_ln_v_is_a_fresh_start():
    """INITIAL_LOSS_TOLERANCE is inclusive, as evaluate's warning (> tolerance) reads it."""
    tol = reading.INITIAL_LOSS_TOLERANCE
    for loss, kind in [(LN65 + tol, "start"), (LN65 - tol, "start"),
                       (LN65 + tol + 1e-9, "initial loss")]:
        rows = lesson_curve()
        rows[0]["train_loss"] = loss
        assert kind in kinds(rows), (loss, kinds(rows))


def test_overfitting_needs_both_moves_beyond_the_margin():
    """A validation rise, or a training fall, of exactly margin() is noise, not overfitting; a
    little more is. 2.42 is a loss whose margin (0.0242) adds and subtracts exactly in floats,
    so the curves sit on the boundary itself."""
    m = reading.margin(2.42)
    assert (2.42 + m) - 2.42 == m == 2.42 - (2.42 - m)  # the boundary is exact here
    for extra, found in [(0.0, False), (1e-3, True)]:
        rows = [{"step": s, "train_loss": 3.0 - 0.02 * s, "lr": 1e-3} for s in range(40)]
        for r, val in zip(rows[::10], [3.0, 2.42, 2.43, 2.42 + m + extra], strict=True):
            r["val_loss"] = val
        assert ("overfitting" in kinds(rows, Facts(vocab_size=65))) is found, extra
        rows = [{"step": s, "train_loss": 2.42 if s < 30 else 2.42 - m - extra, "lr": 1e-3}
                for s in range(40)]
        for r, val in zip(rows[::10], [3.0, 2.0, 2.5, 2.6], strict=True):
            r["val_loss"] = val
        assert ("overfitting" in kinds(rows, Facts(vocab_size=65))) is found, extra


def test_validation_best_before_the_plateaus_end_is_no_settling():
    """'Still improving at the end': validation that fell on the plateau by more than noise but
    whose best is not the last evaluation (175 here, 195 a little above it) cannot say the
    schedule is settling the weights; the curve cannot say which ('decayed')."""
    facts = Facts(vocab_size=65, total_steps=200, lr=1e-2)
    rows = cosine_run(best_at_end=True)
    rows[-1]["val_loss"] = 2.43  # after 2.425 at step 175; from 2.475 at 125
    assert "plateau, decayed" in kinds(rows, facts)
    assert "plateau, settling" not in kinds(rows, facts)


def test_an_evaluation_at_the_plateaus_first_step_is_on_the_plateau():
    """Validation read at the plateau's first step (120) and its last (195), falling between
    them: two evaluations on the plateau, improving to the end: the schedule settling."""
    facts = Facts(vocab_size=65, total_steps=200, lr=1e-2)
    rows = cosine_run(best_at_end=True)
    for r in rows:
        if 100 < r["step"] < 195:
            r.pop("val_loss", None)
        if r["step"] == 120:
            r["val_loss"] = 2.48
    found = only(rows, "plateau, settling", facts)
    assert found.step == 120 and "its best at step 195" in found.message


def test_a_fall_of_exactly_the_margin_is_not_the_lessons_shape():
    """Shape needs a drop from step 0 of more than margin(loss0): exactly the margin is none, a
    little more is. (2.42's margin subtracts exactly in floats: the curve is on the boundary.)"""
    m = reading.margin(2.42)
    assert 2.42 - (2.42 - m) == m
    for extra, shape in [(0.0, False), (1e-3, True)]:
        rows = [{"step": s, "train_loss": 2.42 if s == 0 else 2.42 - m - extra}
                for s in range(0, 100, 5)]
        assert bool({"shape", "shape, not yet"} & set(kinds(rows, Facts(vocab_size=65)))) \
            is shape, (extra, kinds(rows, Facts(vocab_size=65)))


def test_half_the_drop_in_the_first_tenth_is_the_lessons_shape():
    """At least half: from 4.0 at step 0 to 3.0 by the first tenth (step 10 of 99) and 2.0 at
    the lowest is exactly half the drop (an exact 0.5 in floats), the lesson's shape."""
    rows = [{"step": s, "train_loss": 4.0 if s == 0 else 3.0 if s < 50 else 2.0}
            for s in range(100)]
    found = only(rows, "shape", Facts(vocab_size=65))
    assert found.step == 10 and "50% of the whole drop" in found.message


def test_a_first_tenth_up_by_exactly_the_margin_is_no_blow_up_at_the_start():
    """'Up, not down' in the first tenth needs more than margin(loss0): up by exactly it is
    noise; a little more is a rise. (2.42's margin adds exactly in floats.)"""
    m = reading.margin(2.42)
    assert (2.42 + m) - 2.42 == m
    for extra, blew in [(0.0, False), (1e-3, True)]:
        rows = [{"step": s, "train_loss": 2.42 if s == 0 else 2.42 + m + extra if s < 50
                 else 1.5} for s in range(100)]
        assert ("shape, blew up" in kinds(rows, Facts(vocab_size=65))) is blew, extra


def test_a_loss_back_exactly_at_ln_v_between_two_blow_ups_makes_them_two():
    """Back 'at or below' ln V between them: two blow-ups, as with a loss back well under it."""
    facts = Facts(vocab_size=65, total_steps=300)
    rows = [{"step": s, "train_loss": 9.0 if 10 <= s < 40 or 150 <= s < 180 else LN65}
            for s in range(0, 300, 5)]  # (step 0 at ln V too: its loss is the bar if higher)
    assert only(rows, "blew up", facts).steps == (10, 150)


def test_a_plateau_from_warmups_last_step_under_a_spent_clock_is_read_as_decayed():
    """Under a time budget the decay follows the clock: a warmup that took most of it leaves
    the rate far below its peak already at step warmup_steps (here a tenth of it), so a plateau
    that begins exactly there is read against that rate ('decayed'), not as one of a rate still
    rising (warmup is over at that step)."""
    facts = Facts(vocab_size=65, warmup_steps=100, time_budget=60.0, lr=1e-2)
    rows = [{"step": s, "train_loss": 2.4 if s >= 100 else 2.9 + 0.01 * (100 - s),
             "lr": 1e-2 * (s + 1) / 100 if s < 100 else 1e-3} for s in range(0, 200, 5)]
    found = only(rows, "plateau, decayed", facts)
    assert found.step == 100 and "(to 10% of its peak there)" in found.message


def test_overfitting_reads_the_smoothed_training_loss_not_a_last_rows_noise():
    """One noisy batch on the last row (a loss 0.5 above its neighbours) does not hide the
    overfitting: the training loss's end is its running median there (the last three rows),
    which is still below where it was at the best evaluation."""
    rows = overfit_curve()
    rows[-1]["train_loss"] += 0.5
    finding = only(rows, "overfitting")
    end = statistics.median(r["train_loss"] for r in rows[-3:])
    assert finding.step == 2750 and f"-> {end:.2f}; validation" in finding.message


def test_a_plateau_reads_the_smoothed_loss_so_one_noisy_row_does_not_end_it():
    """A single batch 0.5 nats up inside a flat stretch leaves the running median flat: the
    plateau is the one of the same curve without that row."""
    clean, noisy = falling_then_flat(700), falling_then_flat(700)
    next(r for r in noisy if r["step"] == 850)["train_loss"] += 0.5
    (found,), (expected,) = plateaus(noisy), plateaus(clean)
    assert (found.step, found.end, found.message) == (expected.step, expected.end,
                                                      expected.message)


def test_the_shape_reads_the_running_median_at_the_first_tenth_not_that_rows_loss():
    """A noisy batch (a nat up) on the row at the first tenth (step 100 of 990) does not turn a
    fast drop into 'not yet': the loss there is the running median of the five rows around it."""
    rows = two_speeds(0.7)
    next(r for r in rows if r["step"] == 100)["train_loss"] += 1.0
    found = only(rows, "shape", Facts(vocab_size=65))
    around = statistics.median(r["train_loss"] for r in rows if 80 <= r["step"] <= 120)
    assert found.step == 100 and found.value == around


def test_a_logged_norm_exactly_at_the_clip_is_not_clipped_as_the_trainer_counts():
    """Rows without the trainer's `clipped` counts are read by their gradient norm, with the
    trainer's own rule (clipped where the norm is above the clip, not at it): the same steps
    as the `clipped` column the trainer would have written for them."""
    norms = [0.5, 1.0, 1.5, 1.0, 2.0, 0.9, 1.0, 1.2]
    logged = [{"step": s, "train_loss": 2.0, "lr": 1e-3, "grad_norm": g}
              for s, g in enumerate(norms)]
    counted = [{**r, "clipped": int(r["grad_norm"] > FACTS.grad_clip)} for r in logged]
    (by_norm,) = [f for f in read_curve(logged, FACTS) if f.kind.startswith("clipped")]
    (by_count,) = [f for f in read_curve(counted, FACTS) if f.kind.startswith("clipped")]
    assert by_norm.steps == by_count.steps == (2, 4, 7)
