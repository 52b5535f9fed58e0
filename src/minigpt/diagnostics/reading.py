"""Reading the curve: what a run's loss curve shows, found in what the run recorded, each with
the usual remedy. minigpt reads the rows of metrics.jsonl against the run's settings.

    findings = read_run("runs/seed")             # metrics.jsonl and config.json
    print(format_reading(findings))
    findings = read_curve(rows, facts_from_config(cfg))   # a loop of your own

One small function per pattern (`RULES`), each taking the rows and the `Facts` and giving back
its findings, or none: where warmup ends, the best checkpoint, early stopping, clipped and
skipped steps, spikes, a loss blown up above ln V (worse than a uniform guess), the point where
the validation loss stops following the training loss, a plateau (at the unigram entropy:
nothing learnt of context), a training loss that rises again (divergence), the initial loss
against ln V, and the lesson's shape (near ln V, a fast drop in the first tenth, a slow plateau
after). Every message is worded in `WORDING`, and nowhere else; `plots.plot_loss` draws the
findings on the curve and `report` lists them.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from minigpt.config import RunConfig
from minigpt.console import count
from minigpt.errors import MiniGPTError
from minigpt.evaluate import INITIAL_LOSS_TOLERANCE
from minigpt.files import as_path, read_jsonl
from minigpt.run import TrainState

SPIKE_RISE = 0.10  # a spike: train loss 10 % above the median of the rows before it,
SPIKE_NATS = 0.10  # and at least this far above it (at a loss of 0.4, 10 % is batch noise)
SPIKE_WINDOW = 5  # rows in that median (fewer at the start: from the second row on)
DIVERGE_RISE = 0.10  # diverging: the smoothed train loss ends 10 % above its lowest,
DIVERGE_NATS = 0.10  # and at least this far above it (near 0.04, 10 % is batch noise)
SLOW_WARMUP = 0.5  # warmup past this share of a time budget leaves the decay too little
SMOOTH = 5  # rows in the running median that overfitting and plateaus read
PLATEAU_NATS = 0.05  # a plateau: the smoothed train loss stays within this band ...
PLATEAU_SHARE = 0.25  # ... for at least this share of the run, up to its end
UNIGRAM_NATS = 0.1  # a plateau this close to the unigram entropy: nothing learnt of context
SETTLING_LR = 0.5  # a plateau begun below this share of the peak rate: the schedule settling
MARGIN_NATS, MARGIN_SHARE = 0.02, 0.01  # a rise or fall: more than max(nats, share * loss)
CLIPPED_MOSTLY = 0.5  # clipping on more than half of the steps is the learning rate's doing
CLIPPED_RARE = 0.1  # on at most this share, it is insurance against the rare large gradient
EARLY_SHARE = 0.10  # the lesson's "first few percent": the first tenth of the run
BLOWUP_NATS = 0.5  # blew up: the smoothed train loss this far above ln V, a uniform guess's

WORDING = {  # kind: the message, with the usual remedy where there is one
    "start": "step 0: loss {loss:.2f}, near ln {V} = {lnV:.2f}: a fresh model guesses each of "
             "the {V} tokens about equally, as it should",
    "initial loss": "step 0: loss {loss:.2f}, far from ln {V} = {lnV:.2f} (a uniform guess): "
                    "check the initialisation (small weights, std 0.02) and that the targets "
                    "are the inputs shifted by one",
    "warmup": "warmup ends at step {step:,}: the learning rate reaches its peak, {lr:.2e}",
    "all warmup": "warmup ({warmup:,} steps) is the whole run ({total}): the learning "
                  "rate only rose, to {last:.2e} by step {step:,}, and never decayed; make "
                  "warmup a small part of the run (--warmup-steps {tenth:,}, a tenth)",
    "slow warmup": "warmup ({warmup:,} steps) took {share:.0%} of the {budget:g} s time "
                   "budget: the decay, which follows the clock, had the rest, so the learning "
                   "rate fell from its peak at once; try --warmup-steps {fewer:,} (a tenth of "
                   "the budget at this speed)",
    "warmup unfinished": "warmup ({warmup:,} steps) had not ended by step {step:,}, {share:.0%} "
                         "of the {budget:g} s time budget: the learning rate has only risen "
                         "(to {last:.2e}); try --warmup-steps {fewer:,} (a tenth of the budget "
                         "at this speed)",
    "best": "best validation loss {val:.4f} at step {step:,} (the weights a run keeps as its "
            "'best' checkpoint){worse}",
    "early stop": "early stopping at step {step:,}: {n} without improvement after "
                  "the best, at step {best:,}",
    "early stop, none finite": "early stopping at step {step:,}: {n} without a "
                               "finite loss",
    "unfinished": "the rows end at step {step:,}{of}: the run was stopped there or before its "
                  "next row (Ctrl-C, a crash), or is still training; what is read here is of "
                  "its steps so far",
    "clipped": "the gradient was clipped (norm above {clip:g}) on {n:,} of {total:,}{logged} "
               "steps ({share:.0%}): {why}",
    "clipped mostly": "the gradient was clipped (norm above {clip:g}) on {n:,} of "
                      "{total:,}{logged} steps ({share:.0%}): {effect}; {remedy}",
    "val not finite": "the validation loss was NaN or inf at {n:,} evaluation(s), the first at "
                      "step {step:,}: the weights evaluated hold NaN or inf, or values so "
                      "large that the loss overflows; lower the peak learning rate (--lr), "
                      "resuming from a checkpoint before it if there is one",
    "skipped": "{n:,} batch(es) had NaN or inf gradients and were skipped, the first by step "
               "{step:,}: lower the peak learning rate, keep --grad-clip 1.0, or look for bad "
               "data",
    "skipped, stopped": "the run stopped at step {stop:,}{of} on NaN or inf gradients ({n:,} "
                        "batch(es), the first by step {step:,}): lower the peak learning rate, "
                        "keep --grad-clip 1.0, or look for bad data (--skip-nonfinite N skips up "
                        "to N such batches instead of stopping)",
    "spikes in warmup": "the loss spiked {times} during warmup (at step {at}): lower the "
                        "peak learning rate or lengthen warmup (--warmup-steps)",
    "spikes": "the loss spiked {times}{after} (at step {at}): lower the learning rate "
              "(--lr){clip_hint}",
    "blew up": "the loss went above ln {V} = {lnv:.2f}, worse than a uniform guess, {when} "
               "(its running median up to {high:.2f} at step {peak:,}){fate}: "
               "{remedy}",
    "overfitting": "validation stopped improving at step {step:,} while training kept falling "
                   "(train, its running median, {train0:.2f} -> {train1:.2f}; validation "
                   "{val0:.2f} -> {val1:.2f}): "
                   "more data, dropout (--dropout 0.1), or stop earlier (--patience 3)",
    "rising": "the training loss (its running median over {width} rows) was lowest at step "
              "{step:,} ({low:.2f}) and rose to {high:.2f} "
              "by step {last:,}: the run is diverging; lower the peak learning rate (--lr)"
              "{clip_hint}",
    "plateau": "the training loss has stayed near {loss:.2f} (within {band:g} nats) since "
               "step {step:,}, the last {share:.0%} of the run: more steps of the same buy "
               "little; a higher learning rate if that is high for this data, a bigger model "
               "or more data if not",
    "plateau, unigram": "the training loss has stayed near {loss:.2f} since step {step:,}, the "
                        "last {share:.0%} of the run, level with the unigram entropy of the "
                        "training text ({unigram:.2f} nats), the loss of a model that knows "
                        "only how common each token is: it has learnt nothing from the tokens "
                        "before it; look at the learning rate, too low (SGD needs far more than "
                        "AdamW) or too high if the loss blew up or spiked first, then at more "
                        "steps, and check that the targets are the inputs shifted by one",
    "plateau, untrained": "the training loss has stayed near {loss:.2f} since step {step:,}, "
                          "the last {share:.0%} of the run, above the unigram entropy of the "
                          "training text ({unigram:.2f} nats; ln V: {lnv:.2f}): the model has "
                          "not learnt even how common each token is; the weights hardly move: "
                          "a far higher learning rate (SGD needs far more than AdamW), or check "
                          "that the optimizer steps",
    "plateau, uniform": "the training loss has stayed near {loss:.2f} since step {step:,}, the "
                        "last {share:.0%} of the run, near or above ln V = {lnv:.2f}, the loss "
                        "of a uniform guess over the {V} tokens: the model has learnt nothing; "
                        "the weights hardly move: a far higher learning rate (SGD needs far "
                        "more than AdamW), or check that the optimizer steps",
    "plateau, settling": "the training loss has stayed near {loss:.2f} (within {band:g} nats) "
                         "since step {step:,}, the last {share:.0%} of the run, as the "
                         "learning rate decayed (to {rate:.0%} of its peak there): the schedule "
                         "settling the weights, not the model at its limit, for validation was "
                         "still improving at the end (its best at step {best:,}); a longer run "
                         "(more {longer}) would go lower",
    "plateau, decayed": "the training loss has stayed near {loss:.2f} (within {band:g} nats) "
                        "since step {step:,}, the last {share:.0%} of the run, as the learning "
                        "rate decayed (to {rate:.0%} of its peak there): a decaying rate "
                        "flattens any curve, so this one cannot say whether the model is at its "
                        "limit; a longer run (more {longer}) would tell, a bigger model or more "
                        "data if it is",
    "shape": "the lesson's shape: from {loss0:.2f} at step 0, {share:.0%} of the whole drop "
             "came in the first tenth of the run (its running median to {loss1:.2f} by step "
             "{step:,}), the rest slowly (to {loss2:.2f}{lowest})",
    "shape, blew up": "the loss rose in the first tenth of the run (its running median "
                      "{loss1:.2f} by step {step:,}, from {loss0:.2f} at step 0) before it fell "
                      "(to {loss2:.2f}{lowest}): a learning rate too high for the start; lower "
                      "the peak learning rate (--lr) or lengthen warmup (--warmup-steps)",
    "shape, unigram": "the lesson's fast drop, but only to the unigram entropy: from "
                      "{loss0:.2f} at step 0, {share:.0%} of the drop came in the first tenth "
                      "of the run (its running median to {loss1:.2f} by step {step:,}), to "
                      "{loss2:.2f}, level with the loss of a model that knows only how common "
                      "each token is ({unigram:.2f} nats): nothing yet of context",
    "shape, not yet": "not yet the lesson's shape: from {loss0:.2f} at step 0, only {share:.0%} "
                      "of the drop came in the first tenth of the run (its running median to "
                      "{loss1:.2f} by step {step:,}), the rest later (to {loss2:.2f}{lowest})",
}
CLIPPED_EFFECT = {  # SGD's step is the gradient's size; AdamW's and Muon's are not
    "sgd": "clipping that often acts as a lower learning rate",
    "adaptive": "under {optimizer}, whose steps do not grow with the gradient's size, clipping "
                "that often changes little (it is no lower learning rate there)"}
CLIPPED_REMEDY = {  # the rate too high (the loss spiked, rose or blew up); else the clip too low
    "too high": "with the loss spiking, rising or blown up too, lower the peak learning rate "
                "(--lr)",
    "sgd": "the loss neither spiked nor rose, so the rate is not too high for it: raise "
           "--grad-clip (or 0: none) to let the steps take the rate they were given",
    "adaptive": "the loss neither spiked nor rose: nothing to change for it"}
CLIP_HINT = {True: ", or clip harder (--grad-clip 0.5)",
             False: ", or turn gradient clipping on (--grad-clip 1.0)"}


@dataclass(frozen=True)
class Finding:
    """One thing the curve shows. step: where (the start of a span); kind: a key of WORDING;
    message: what was found, with the usual remedy; value: the loss there, for the plot; end:
    the last step of a span (a plateau, overfitting); steps: the steps of repeated events
    (spikes, skipped or clipped steps)."""

    step: int
    kind: str
    message: str
    value: float | None = None
    end: int | None = None
    steps: tuple[int, ...] = ()


@dataclass(frozen=True)
class Facts:
    """What a curve is read against, from the run's config (see `facts_from_config`)."""

    vocab_size: int
    warmup_steps: int = 0
    total_steps: int | None = None  # None: the run had a time budget, not a number of steps
    time_budget: float | None = None  # its seconds of training, if it had one
    grad_clip: float = 0.0
    patience: int = 0
    min_delta: float = 0.0
    lr: float | None = None  # the peak learning rate (None: the largest the rows logged)
    skip_nonfinite: int = 0  # the non-finite batches a run skips before it stops
    optimizer: str = "adamw"  # sgd, whose step clipping shrinks; adamw or muon, whose not
    unigram_nats: float | None = None  # the training text's unigram entropy (config.json's
    # "data"): the loss of a model that knows only how common each token is


def finding(kind: str, step: int, value: float | None = None, end: int | None = None,
            steps: tuple[int, ...] = (), **words) -> Finding:
    """A Finding worded from WORDING[kind] with `words` (and the step)."""
    return Finding(step, kind, WORDING[kind].format(step=step, **words), value, end, steps)


# --- the rows, as the rules read them --------------------------------------------------------


def train_points(rows: list[dict]) -> list[tuple[int, float]]:
    """(step, train loss) of every row with a finite train loss."""
    return [(r["step"], r["train_loss"]) for r in rows if finite(r.get("train_loss"))]


def evaluations(rows: list[dict]) -> list[tuple[int, float]]:
    """(step, validation loss) of every evaluation row."""
    return [(r["step"], r["val_loss"]) for r in rows if finite(r.get("val_loss"))]


def finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def smoothed(points: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """The running median over SMOOTH rows (centred; fewer at the ends)."""
    half, losses = SMOOTH // 2, [v for _, v in points]
    return [(s, statistics.median(losses[max(0, i - half):i + half + 1]))
            for i, (s, _) in enumerate(points)]


def margin(loss: float) -> float:
    """How much a loss must move to count as moving."""
    return max(MARGIN_NATS, MARGIN_SHARE * abs(loss))


def best_evaluation(rows: list[dict], facts: Facts) -> tuple[int, float] | None:
    """The step and loss of the evaluation the 'best' checkpoint holds: the trainer's own
    bookkeeping (TrainState.record_eval, with min_delta) replayed over the evaluations."""
    state, best = TrainState(), None
    for step, val in evaluations(rows):
        if state.record_eval(val, facts.min_delta):
            best = (step, val)
    return best


def peak_lr(rows: list[dict], facts: Facts) -> float:
    """The peak learning rate: the configured one, else the largest the rows logged (0: none;
    one's own loop may log no rate)."""
    if facts.lr is not None:
        return facts.lr
    return max((r["lr"] for r in rows if finite(r.get("lr"))), default=0.0)


def steps_done(rows: list[dict]) -> int:
    return rows[-1]["step"] + 1 if rows else 0


def times(n: int) -> str:
    return {1: "once", 2: "twice"}.get(n, f"{n} times")


def list_steps(steps: list[int], most: int = 6) -> str:
    """'20, 40 and 60'; the first `most` and a count of the rest when there are more."""
    words = [f"{s:,}" for s in steps[:most]]
    if len(steps) > most:
        return ", ".join(words) + f" and {len(steps) - most} more"
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


# --- the rules: one pattern each -------------------------------------------------------------


def initial_loss(rows: list[dict], facts: Facts) -> list[Finding]:
    """The step-0 loss against ln V, the loss of a uniform guess over the vocabulary."""
    if not rows or rows[0]["step"] != 0 or not finite(rows[0].get("train_loss")):
        return []
    loss, ln_v = rows[0]["train_loss"], math.log(facts.vocab_size)
    kind = "start" if abs(loss - ln_v) <= INITIAL_LOSS_TOLERANCE else "initial loss"
    return [finding(kind, 0, ln_v, loss=loss, V=facts.vocab_size, lnV=ln_v)]


def warmup_end(rows: list[dict], facts: Facts) -> list[Finding]:
    """The step where warmup ends and the learning rate is at its peak; or, when the run has
    no more steps than its warmup, that it never got past it (a warmup of one step is none:
    step 0 is at the peak)."""
    if facts.warmup_steps <= 0 or not rows:
        return []
    if facts.total_steps is not None and 1 < facts.warmup_steps >= facts.total_steps:
        return [finding("all warmup", rows[-1]["step"], warmup=facts.warmup_steps,
                        total=count(facts.total_steps, "step"), last=rows[-1].get("lr", math.nan),
                        tenth=max(1, facts.total_steps // 10))]
    if facts.time_budget:  # warmup counts steps, the decay follows the seconds of training
        at = next((r for r in rows if r["step"] >= facts.warmup_steps), rows[-1])
        share = min(1.0, at.get("time_s", 0.0) / facts.time_budget)
        if share >= SLOW_WARMUP and at["step"] > 0:  # fewer: a tenth of the budget's steps
            fewer = max(1, int(0.1 * facts.time_budget * at["step"] / at["time_s"]))
            kind = "slow warmup" if at["step"] >= facts.warmup_steps else "warmup unfinished"
            return [finding(kind, at["step"], warmup=facts.warmup_steps, share=share,
                            budget=facts.time_budget, fewer=fewer, last=at.get("lr", math.nan))]
    if steps_done(rows) <= facts.warmup_steps:
        return []
    return [finding("warmup", facts.warmup_steps, lr=peak_lr(rows, facts))]


def best_checkpoint(rows: list[dict], facts: Facts) -> list[Finding]:
    """The evaluation with the lowest validation loss (as the trainer counts it)."""
    best = best_evaluation(rows, facts)
    if best is None:
        return []
    ln_v = math.log(facts.vocab_size)
    worse = (f", above ln {facts.vocab_size} = {ln_v:.2f}: no better than a uniform guess"
             if best[1] > ln_v + BLOWUP_NATS else "")
    return [finding("best", best[0], best[1], val=best[1], worse=worse)]


def early_stop(rows: list[dict], facts: Facts) -> list[Finding]:
    """A run that ended before its steps (or its time budget), `patience` evaluations after
    its best."""
    if facts.patience <= 0:
        return []
    best = best_evaluation(rows, facts)
    after = [r["step"] for r in rows if "val_loss" in r  # NaN too, as the trainer counts it
             and (best is None or r["step"] > best[0])]
    if not ended_early(rows, facts) or len(after) < facts.patience or \
            after[-1] != rows[-1]["step"]:  # (rows that go on past it: it stopped elsewhere)
        return []
    n = count(facts.patience, "evaluation")
    if best is None:
        return [finding("early stop, none finite", after[-1], n=n)]
    return [finding("early stop", after[-1], n=n, best=best[0])]


def unfinished(rows: list[dict], facts: Facts) -> list[Finding]:
    """A run whose rows end before its steps or its time budget with no reason of its own to
    stop there (early stopping, NaN gradients): stopped by hand or by a crash, or training."""
    if not ended_early(rows, facts) or early_stop(rows, facts) or any(
            f.kind == "skipped, stopped" for f in skipped_steps(rows, facts)):
        return []
    spacing = rows[-1]["step"] - rows[-2]["step"] if len(rows) > 1 else 1
    if facts.total_steps is not None and steps_done(rows) + spacing > facts.total_steps:
        return []  # (one's own loop may log every 10th step, and not the last)
    last = rows[-1]
    of = (f" of {facts.total_steps:,}" if facts.total_steps is not None else
          f", {last['time_s']:.0f} s into its {facts.time_budget:g} s time budget")
    return [finding("unfinished", last["step"], of=of)]


def ended_early(rows: list[dict], facts: Facts) -> bool:
    """Whether the run stopped before its steps, or before its time budget was spent."""
    if facts.total_steps is not None:
        return steps_done(rows) < facts.total_steps
    return rows[-1].get("time_s", math.inf) < (facts.time_budget or 0)  # (at or past: spent)


def val_not_finite(rows: list[dict], facts: Facts) -> list[Finding]:
    """Evaluations whose loss was NaN or inf (written as null), which the other rules skip."""
    where = [r["step"] for r in rows if "val_loss" in r and not finite(r["val_loss"])]
    return [finding("val not finite", where[0], steps=tuple(where), n=len(where))] if where else []


def clipped(rows: list[dict], facts: Facts) -> tuple[list[int], int, int, str]:
    """The steps whose gradient was clipped, how many, of how many, and " logged" where they
    are counted in the logged steps alone: the rows' `clipped` counts (every step), or, in rows
    without them, the logged steps whose gradient norm was above the clip."""
    if facts.grad_clip <= 0 or not rows:
        return [], 0, 0, ""
    if all("clipped" in r for r in rows):
        where = [r["step"] for r in rows if r["clipped"]]
        return where, sum(r["clipped"] for r in rows), steps_done(rows), ""
    where = [r["step"] for r in rows if finite(r.get("grad_norm"))
             and r["grad_norm"] > facts.grad_clip]
    return where, len(where), len(rows), " logged"


def clipped_steps(rows: list[dict], facts: Facts) -> list[Finding]:
    """How many steps had their gradient clipped, and what that says: under SGD, clipping most
    steps is a lower learning rate; under AdamW or Muon, whose steps do not grow with the
    gradient, it changes little."""
    where, n, total, logged = clipped(rows, facts)
    if n == 0:
        return []
    share, sgd = n / total, facts.optimizer == "sgd"
    kind = "clipped mostly" if share > CLIPPED_MOSTLY else "clipped"
    why = ("insurance against the rare large gradient" if share <= CLIPPED_RARE else
           "often, more than insurance against the rare large gradient: "
           + ("below half the steps it trims the larger ones, above half it acts as a lower "
              "learning rate" if sgd else "it trims the larger ones"))
    too_high = bool(spikes(rows, facts) or rising(rows, facts) or blown_up(rows, facts))
    effect = CLIPPED_EFFECT["sgd" if sgd else "adaptive"].format(optimizer=facts.optimizer)
    return [finding(kind, where[0], steps=tuple(where), clip=facts.grad_clip, n=n, total=total,
                    logged=logged, share=share, why=why, effect=effect,
                    remedy=CLIPPED_REMEDY["too high" if too_high else "sgd" if sgd else
                                          "adaptive"])]


def clip_hint(rows: list[dict], facts: Facts) -> str:
    """The clipping a too-high rate's remedy adds: turn it on, clip harder, or nothing where
    most steps were clipped already."""
    _, n, total, _ = clipped(rows, facts)
    return "" if total and n / total > CLIPPED_MOSTLY else CLIP_HINT[facts.grad_clip > 0]


def skipped_steps(rows: list[dict], facts: Facts) -> list[Finding]:
    """Batches whose gradient was NaN or inf (the step skipped them, or the loss is gone): as
    the trainer writes them, null; in one's own rows, NaN or inf too."""
    where = [r["step"] for r in rows if r.get("skipped") or not finite(r.get("grad_norm", 0))
             or not finite(r.get("train_loss", 0))]
    if not where:
        return []
    n = sum(r.get("skipped") or 1 for r in rows if r["step"] in where)
    before = n - (rows[-1].get("skipped") or 1)  # (those of the rows before the last)
    stopped = where[-1] == rows[-1]["step"] and ended_early(rows, facts) and \
        before <= facts.skip_nonfinite < n  # (the trainer's rule: it stops at the first row
    # beyond it; a loop that went on past that row, to stop later, stopped for another reason)
    if stopped:
        of = f" of {facts.total_steps:,}" if facts.total_steps is not None else ""
        return [finding("skipped, stopped", where[0], steps=tuple(where), n=n,
                        stop=rows[-1]["step"], of=of)]
    return [finding("skipped", where[0], steps=tuple(where), n=n)]


def spike_steps(points: list[tuple[int, float]]) -> list[int]:
    """Steps where the train loss jumps SPIKE_RISE, and SPIKE_NATS, above the median of the
    SPIKE_WINDOW rows before it (fewer at the start, so that a short warmup's spikes are
    seen); a spike lasting several rows counts once, at its first."""
    spikes, inside = [], False
    for i in range(1, len(points)):
        base = statistics.median(v for _, v in points[max(0, i - SPIKE_WINDOW):i])
        high = points[i][1] > max(base * (1 + SPIKE_RISE), base + SPIKE_NATS)
        if high and not inside:
            spikes.append(points[i][0])
        inside = high
    return spikes


def spikes(rows: list[dict], facts: Facts) -> list[Finding]:
    """Sudden jumps of the train loss, during warmup and after it (not those of a stretch
    where it blew up above ln V: `blew_up` says that)."""
    points = train_points(rows)
    loss_at, found = dict(points), spike_steps(points)
    if up := blown_up(rows, facts):
        found = [s for s in found if not up[0] <= s <= (up[3] or math.inf)]
    warm = [s for s in found if s <= facts.warmup_steps]
    late = [s for s in found if s > facts.warmup_steps]
    return [finding(kind, where[0], loss_at[where[0]], steps=tuple(where),
                    times=times(len(where)), at=list_steps(where), clip_hint=clip_hint(
                        rows, facts),  # (the warmup wording has none)
                    after=" after warmup" if facts.warmup_steps > 0 else "")
            for kind, where in (("spikes in warmup", warm), ("spikes", late)) if where]


def blown_up(rows: list[dict], facts: Facts
             ) -> tuple[int, int, float, int | None, tuple[int, ...]] | None:
    """Whether the smoothed train loss rose BLOWUP_NATS above ln V after step 0 (a fresh model
    starts near ln V; above it, the model does worse than a uniform guess), or above step 0's
    loss where that was higher, or its running median there (by BLOWUP_NATS at most) where a
    model started far from ln V and that is higher still (a model that starts high and falls
    has not blown up; rows that begin up there, resumed, show a blow-up only where the loss
    came back at or below ln V and rose again): the first step of the rise (the first row
    above, from SMOOTH // 2 rows before the running median crossed), the step and loss of its
    highest, and the first step back at or below ln V (or step 0's loss) after its last step
    above (None: it never came back); and where the loss went up there again after coming
    back, the first step of each such rise, found the same way (a second blow-up)."""
    points = train_points(rows)
    start = points[0][1] if points and points[0][0] == 0 else 0.0
    train, ln_v = smoothed(points), math.log(facts.vocab_size)
    if start and abs(start - ln_v) > INITIAL_LOSS_TOLERANCE:  # a model that starts far off:
        start = max(start, min(train[0][1], start + BLOWUP_NATS))  # its level there (one
        # lucky batch sets no bar; a level above it by a blow-up's height is a blow-up)
    base = max(ln_v, start)
    above = [i for i, (s, v) in enumerate(train) if s > 0 and v > base + BLOWUP_NATS]
    if above and all(v > base + BLOWUP_NATS for _, v in points[:above[0]]):  # rows that begin
        # up there (resumed) show no rise there: only a stretch after they came back is one
        above = [i for i in above if any(v <= base for _, v in train[above[0]:i])]
    if not above:
        return None

    def rise(crossed: int) -> int:  # a stretch's step: its first row above the bar
        return next(s for s, v in points[max(1, crossed - SMOOTH // 2):]
                    if v > base + BLOWUP_NATS)  # (a median above: some row is)

    peak = max((train[i] for i in above), key=lambda p: p[1])
    back = next((s for s, v in train[above[-1]:] if v <= base), None)
    return rise(above[0]), peak[0], peak[1], back, tuple(  # (each later blow-up: its step)
        rise(i) for j, i in zip(above, above[1:], strict=False)
        if any(v <= base for _, v in train[j + 1:i]))


def blew_up(rows: list[dict], facts: Facts) -> list[Finding]:
    """A loss far above ln V for a stretch: not a spike, but a learning rate too high; for the
    start alone where the run came back within warmup (or the first tenth) and then learnt."""
    if (up := blown_up(rows, facts)) is None:
        return []
    (first, peak, high, back, again), last = up, smoothed(train_points(rows))[-1]
    ln_v = math.log(facts.vocab_size)
    if back is None:
        fate = (f", and ended there ({last[1]:.2f})" if last[1] > ln_v + BLOWUP_NATS else
                f", and fell back only to {last[1]:.2f}, still above ln {facts.vocab_size}")
    else:
        fate = (f", and came back under it by step {back:,}, to {last[1]:.2f} at the end" +
                ", the unigram level: a model that knows only how common each token is" *
                at_unigram(last[1], facts))
    early = max(facts.warmup_steps, EARLY_SHARE * last[0])
    learnt = back is not None and back <= early and last[1] < ln_v - UNIGRAM_NATS and \
        not at_unigram(last[1], facts)
    remedy = ("a learning rate too high for the start; " + (
        "lengthen warmup (--warmup-steps) or lower the peak learning rate (--lr)"
        if facts.warmup_steps else "warm it up (--warmup-steps) or lower the peak (--lr)")
        if learnt else "a learning rate far too high for this model; lower the peak learning "
                       "rate (--lr)")
    when = (f"{times(1 + len(again))}, from steps {list_steps([first, *again])}" if again else
            f"from step {first:,}")
    return [finding("blew up", first, high, end=back or last[0], steps=(first, *again),
                    V=facts.vocab_size, lnv=ln_v, high=high, peak=peak, fate=fate, when=when,
                    remedy=remedy)]


def overfitting(rows: list[dict], facts: Facts) -> list[Finding]:
    """The validation loss stops following the training loss: after its best, it rises while
    the (smoothed) training loss keeps falling."""
    evals, train = evaluations(rows), smoothed(train_points(rows))
    best = best_evaluation(rows, facts)
    if best is None or not train or len([s for s, _ in evals if s > best[0]]) < 2 or \
            ended_blown_up(rows, facts):  # (its validation rises with the training loss)
        return []
    val_end, train_end = evals[-1][1], train[-1][1]
    train_best = min(train, key=lambda p: abs(p[0] - best[0]))[1]
    if val_end - best[1] <= margin(best[1]) or train_best - train_end <= margin(train_best):
        return []
    return [finding("overfitting", best[0], best[1], end=evals[-1][0], train0=train_best,
                    train1=train_end, val0=best[1], val1=val_end)]


def plateau(rows: list[dict], facts: Facts) -> list[Finding]:
    """The longest stretch up to the end where the smoothed train loss stays in a band of
    PLATEAU_NATS, when it covers PLATEAU_SHARE of the run or more: the model at its limit; at
    the unigram entropy, a model that has learnt nothing of context (above it, or at ln V where
    the unigram entropy is not known, not even the tokens' frequencies); begun after warmup
    with the learning rate decayed below SETTLING_LR of its peak, the schedule settling a run
    too short, where validation fell to the end by more than noise, and otherwise a curve that
    cannot say which."""
    train = smoothed(train_points(rows))
    up = blown_up(rows, facts)  # (a plateau after it: not weights that hardly move)
    if len(train) < 2 * SMOOTH or diverging(train) or (up and up[3] is None):  # (their high
        return []  # level is said by `rising` or `blew_up`)
    lo = hi = train[-1][1]
    start = len(train) - 1
    for i in range(len(train) - 1, -1, -1):
        lo, hi = min(lo, train[i][1]), max(hi, train[i][1])
        if hi - lo > PLATEAU_NATS:
            break
        start = i
    first, last = train[start][0], train[-1][0]
    share = (last - first) / max(1, last - train[0][0])
    if share < PLATEAU_SHARE or len(train) - start < SMOOTH:
        return []
    level = statistics.median(v for _, v in train[start:])
    words = dict(end=last, loss=level, band=PLATEAU_NATS, share=share)
    ln_v = math.log(facts.vocab_size)  # (whatever the rate did: no schedule explains these)
    if facts.unigram_nats is not None and level >= facts.unigram_nats - UNIGRAM_NATS:
        kind = "plateau, unigram" if at_unigram(level, facts) else "plateau, untrained"
        return [] if up and kind == "plateau, untrained" else [
            finding(kind, first, level, unigram=facts.unigram_nats, lnv=ln_v, **words)]
    if level >= ln_v - UNIGRAM_NATS:  # the unigram entropy unknown (one's own loop), but below
        return [] if up else [
            finding("plateau, uniform", first, level, lnv=ln_v, V=facts.vocab_size, **words)]
    peak, there = peak_lr(rows, facts), next((r.get("lr") for r in rows if r["step"] == first),
                                              None)  # (one's own rows may log no rate)
    rate = there / peak if finite(there) and peak > 0 else 1.0
    if first < facts.warmup_steps or rate >= SETTLING_LR:  # (a rate still rising, or high)
        return [finding("plateau", first, level, **words)]
    during = [(s, v) for s, v in evaluations(rows) if s >= first]  # validation on the plateau
    improving = len(during) >= 2 and during[0][1] - during[-1][1] > margin(during[0][1]) and \
        min(during, key=lambda p: p[1])[0] == during[-1][0]  # (by more than noise, to the end)
    words |= dict(rate=rate, longer="--steps" if facts.total_steps is not None else
                  "--time-budget" if facts.time_budget else "steps")
    if improving:
        return [finding("plateau, settling", first, level, best=during[-1][0], **words)]
    return [finding("plateau, decayed", first, level, **words)]


def at_unigram(loss: float, facts: Facts) -> bool:
    """Whether a loss is within UNIGRAM_NATS of the unigram entropy, where it is known."""
    return facts.unigram_nats is not None and abs(loss - facts.unigram_nats) <= UNIGRAM_NATS


def diverging(train: list[tuple[int, float]]) -> tuple[int, float] | None:
    """The (step, loss) of a smoothed train loss's lowest point, if the curve ends more than
    DIVERGE_RISE and DIVERGE_NATS above it (None if not)."""
    low = min(train, key=lambda p: p[1])
    return low if train[-1][1] > max(low[1] * (1 + DIVERGE_RISE), low[1] + DIVERGE_NATS) \
        else None


def rising(rows: list[dict], facts: Facts) -> list[Finding]:
    """A training loss that climbs back from its lowest point and ends well above it."""
    train = smoothed(train_points(rows))
    if len(train) < 2 * SMOOTH or blown_up(rows, facts):  # (`blew_up` says what it was)
        return []
    if (low := diverging(train)) is None:
        return []
    (step, loss), (last, high) = low, train[-1]
    return [finding("rising", step, loss, end=last, low=loss, high=high, last=last,
                    width=SMOOTH, clip_hint=clip_hint(rows, facts))]


def ended_blown_up(rows: list[dict], facts: Facts) -> bool:
    """Whether the loss blew up above ln V and stayed there (`blew_up` says all of it)."""
    return (up := blown_up(rows, facts)) is not None and up[3] is None


def shape(rows: list[dict], facts: Facts) -> list[Finding]:
    """The lesson's closing claim on this curve: how much of the drop, from step 0 to the
    lowest point, came in the first tenth of the run (not read on a diverging curve, nor on one
    that blew up above ln V; a fast drop that ends at the unigram entropy learnt only how common
    each token is, and says so)."""
    points = train_points(rows)
    train = smoothed(points)
    if len(train) < 2 * SMOOTH or points[0][0] != 0 or diverging(train) or blown_up(rows, facts):
        return []
    loss0, loss2 = points[0][1], train[-1][1]
    low = min(v for _, v in train)
    early_step = EARLY_SHARE * points[-1][0]
    step, loss1 = min(train, key=lambda p: abs(p[0] - early_step))
    if loss0 - low <= margin(loss0):
        return []
    # at most 1 (loss1 is never below the lowest); 0, not negative, where the first tenth
    # ended a little above step 0 (more than the margin above: "blew up", below)
    share = max(0.0, (loss0 - loss1) / (loss0 - low))
    kind = "shape" if share >= 0.5 else "shape, not yet"
    if kind == "shape" and at_unigram(loss2, facts):  # a fast drop that learnt only frequencies
        kind = "shape, unigram"
    if loss1 - loss0 > margin(loss0):  # up, not down, in the first tenth
        kind = "shape, blew up"
    lowest = f"; its lowest {low:.2f}" if f"{low:.2f}" != f"{loss2:.2f}" else ""  # (the share's)
    return [finding(kind, step, loss1, loss0=loss0, loss1=loss1, loss2=loss2, share=share,
                    lowest=lowest, unigram=facts.unigram_nats)]


RULES: list[Callable[[list[dict], Facts], list[Finding]]] = [
    initial_loss, warmup_end, best_checkpoint, early_stop, val_not_finite, clipped_steps,
    skipped_steps, spikes, blew_up, overfitting, plateau, rising, shape, unfinished]


# --- reading a run ---------------------------------------------------------------------------


def read_curve(rows: list[dict], facts: Facts) -> list[Finding]:
    """Every finding of every rule on these metrics rows, in step order."""
    if not (isinstance(rows, (list, tuple)) and all(isinstance(r, dict) for r in rows)
            and isinstance(facts, Facts)):
        raise MiniGPTError("read_curve takes metrics rows (a list of dicts, as read_jsonl gives "
                           "them) and Facts (facts_from_config(cfg)); read_run(folder) reads a "
                           "run folder")
    if not rows:  # a run stopped before its first row: nothing to read (the rules ask for one)
        return []
    by_step = {}  # one row a step: a loop may log a step's validation in a row of its own, or,
    for r in rows:  # resumed, write a step again (the later row's figures win)
        by_step.setdefault(r["step"], {}).update(r)
    rows = sorted(by_step.values(), key=lambda r: r["step"])
    return sorted((f for rule in RULES for f in rule(rows, facts)), key=lambda f: f.step)


def facts_from_config(config: RunConfig | dict, unigram_nats: float | None = None) -> Facts:
    """The Facts of a run from its settings: a RunConfig, or its to_dict(), as config.json holds
    them under "config"; and, where known, the unigram entropy of its training tokens
    (minigpt.evaluate.unigram_entropy), which the plateau and the shape are read against."""
    config = config.to_dict() if isinstance(config, RunConfig) else config
    if not (isinstance(config, dict) and {"model", "train"} <= config.keys()):
        raise MiniGPTError("facts_from_config takes a RunConfig, or its to_dict() (config.json's "
                           "\"config\")")
    t = config["train"]
    return Facts(vocab_size=config["model"]["vocab_size"],
                 warmup_steps=t["warmup_steps"] if t["schedule"] in ("cosine", "linear") else 0,
                 total_steps=None if t.get("time_budget") else t["steps"],
                 time_budget=t.get("time_budget") or None,
                 grad_clip=t["grad_clip"], patience=t["patience"], min_delta=t["min_delta"],
                 lr=t["lr"], skip_nonfinite=t.get("skip_nonfinite", 0),
                 optimizer=t.get("optimizer", "adamw"), unigram_nats=unigram_nats)


def run_facts(run_dir: str | Path) -> Facts:
    """The Facts of a run folder, from its config.json (its settings, and its data's unigram
    entropy)."""
    try:
        config = json.loads((Path(run_dir) / "config.json").read_text(encoding="utf-8"))
        data = config.get("data") if isinstance(config, dict) else None
        unigram = data.get("unigram_nats") if isinstance(data, dict) else None  # (older: None)
        return facts_from_config(config["config"], unigram if finite(unigram) else None)
    except (OSError, ValueError, KeyError, TypeError):
        raise MiniGPTError(f"{run_dir} is not a run folder (no readable config.json)") from None


def read_run(run_dir: str | Path) -> list[Finding]:
    """The findings of a run folder: its metrics.jsonl read against its config.json."""
    return read_curve(read_jsonl(as_path(run_dir, "run_dir") / "metrics.jsonl"),
                      run_facts(run_dir))


def format_reading(findings: list[Finding]) -> str:
    """The findings as text, one line each (or a line saying there is nothing to read)."""
    if not findings:
        return "Reading the curve: too few rows to read anything yet."
    return "Reading the curve:\n" + "\n".join(f"- {f.message}" for f in findings)
