"""What a run records about itself: curves, gradient flow, attention, samples, TensorBoard,
and `compare`, each checked against the run's own metrics or an independent computation."""

import json
import math
import re
import shutil
import sys
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

import minigpt.trainer
from conftest import (
    TINY,
    TINY_FLAGS,
    one_line_error,
    read_png,
    same_weights,
    tiny_config,
    without_speed,
)
from minigpt import resolve_config, resume_config, train
from minigpt.diagnostics.compare import (
    compare,
    format_table,
    parse_axis,
    parse_variant,
    variants,
)
from minigpt.diagnostics.gradflow import ParamStats
from minigpt.diagnostics.plots import (
    plot_loss,
    plot_lr,
    plot_overlay,
    run_curves,
    run_train_config,
)
from minigpt.diagnostics.probes import (
    SECTIONS,
    AttentionProbe,
    EveryNSteps,
    GradFlowProbe,
    Probe,
    standard_probes,
)
from minigpt.diagnostics.reading import Finding
from minigpt.errors import MiniGPTError
from minigpt.files import read_jsonl
from minigpt.schedule import schedule_lr
from minigpt.tokenizer import CharTokenizer


def assert_png(path):
    h, w, _ = read_png(path).shape
    assert h > 100 and w > 100


@pytest.fixture(scope="module")
def probed_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("probed")
    text = folder / "t.txt"
    text.write_text("ROMEO: But soft, what light through yonder window breaks?\n" * 60)
    cfg = tiny_config(text, n_layer=2, steps=23, eval_every=10, log_every=5, gradflow_every=5,
                      attention_every=11, sample_every=10, plots=True, tensorboard=True,
                      grad_clip=0.0)  # two layers: blocks.0 and blocks.1 in the gradient flow
    train(cfg, folder / "run", progress=False, probes=standard_probes(cfg))
    return folder / "run"


def test_curves_drawn_and_the_gradflow_probe_matches_the_loops_gradient_norm(probed_run):
    assert_png(probed_run / "loss.png")
    assert_png(probed_run / "lr.png")
    flows = read_jsonl(probed_run / "gradflow.jsonl")
    assert [r["step"] for r in flows] == [0, 5, 10, 15, 20]
    norms = {r["step"]: r["grad_norm"] for r in read_jsonl(probed_run / "metrics.jsonl")}
    for r in flows:  # no clipping: the probe sees the same gradients the loop measured
        total = math.sqrt(sum(v * v for v in r["layers"].values()))
        assert total == pytest.approx(norms[r["step"]], rel=1e-4)
        assert {"token_emb", "blocks.0", "blocks.1", "lm_head"} <= set(r["layers"])
    assert_png(probed_run / "gradflow.png")


def test_a_record_every_n_steps_is_at_the_first_row_from_each_multiple_of_n():
    class Steps(EveryNSteps):
        def record(self, step):
            self.steps.append(step)

    probe = Steps(11)
    probe.steps = []
    for step in range(0, 41, 5):  # rows every 5 steps; multiples of 11 at 11, 22 and 33
        probe.on_row({"step": step})
    assert probe.steps == [0, 15, 25, 35]
    probe.state = SimpleNamespace(step=41)  # 41 steps done: the last, step 40, not recorded
    probe.end({})
    assert probe.steps == [0, 15, 25, 35, 40]
    probe.on_row({"step": 44})  # (a multiple of 11)
    probe.state.step = 45
    probe.end({})  # its last record was of the final weights already
    assert probe.steps == [0, 15, 25, 35, 40, 44]


def test_a_resumed_probe_keeps_its_checkpoints_schedule_and_a_new_run_starts_fresh(tmp_path):
    """start() comes after the checkpoint's state is loaded: at a resume (12 steps done) the
    probe goes on from it; only a new run (0 steps done) starts from the fresh state."""
    probe = EveryNSteps(10)
    saved = {"next_step": 20, "recorded": 10}
    probe.load_state_dict(saved)
    probe.start(SimpleNamespace(state=SimpleNamespace(step=12), folder=tmp_path))
    assert probe.state_dict() == saved
    probe.start(SimpleNamespace(state=SimpleNamespace(step=0), folder=tmp_path))
    assert probe.state_dict() == EveryNSteps.fresh


class RowCount(Probe):
    """Counts the metrics rows it sees: a probe with state of its own."""

    fresh = {"rows": 0}

    def __init__(self):
        self.rows = 0

    def on_row(self, row):
        self.rows += 1

    def state_dict(self):
        return {"rows": self.rows}

    def load_state_dict(self, state):
        self.rows = state["rows"]


def test_a_probe_the_checkpoint_kept_no_state_for_starts_afresh_at_a_resume(tmp_path):
    """A run trained without a probe, resumed with one: the probe starts as made and sees the
    resumed steps' rows; its state is in the next checkpoint."""
    text = tmp_path / "text.txt"
    text.write_text("to be or not to be, that is the question. " * 60)
    train(tiny_config(text, steps=4, log_every=1, eval_every=4), tmp_path / "run",
          progress=False)
    probe = RowCount()
    cfg = resume_config(tmp_path / "run", {"steps": 6})
    train(cfg, tmp_path / "run", resume=True, probes=[probe], progress=False)
    assert probe.rows == 6 - 4
    saved = json.loads((tmp_path / "run" / "checkpoints" / "last.json").read_text())
    assert saved["parts"]["RowCount"] == {"rows": 6 - 4}


def test_a_resume_redraws_the_attention_map_at_the_step_it_resumes_at(tmp_path):
    """10 steps done: the rows are named 0 .. 9, so a map at step 10 is from after the
    checkpoint and is drawn again; the one at step 9 is kept, the probe's last record."""
    (tmp_path / "attention").mkdir()
    for step in (9, 10, 11):
        (tmp_path / "attention" / f"step-{step:06d}.png").touch()
    text = "ROMEO: But soft"
    run = SimpleNamespace(state=SimpleNamespace(step=10), folder=tmp_path,
                          tokenizer=CharTokenizer.from_text(text),
                          model=SimpleNamespace(block_size=8))
    probe = AttentionProbe(5, text)
    probe.load_state_dict({"next_step": 10, "recorded": 5})
    probe.start(run)
    assert sorted(p.name for p in (tmp_path / "attention").iterdir()) == ["step-000009.png"]
    assert probe.recorded == 9


def test_a_run_without_readable_training_settings_has_none(tmp_path):
    """No config.json, one without [train], or one whose [train] is wrong: None, and the lr
    figure draws the logged rates alone, rather than the report failing."""
    assert run_train_config(tmp_path) is None
    for config in ({"model": {}}, {"train": {"lr": "fast"}}):
        (tmp_path / "config.json").write_text(json.dumps({"config": config}))
        assert run_train_config(tmp_path) is None
    (tmp_path / "config.json").write_text(json.dumps({"config": {"train": {"lr": 0.5}}}))
    assert run_train_config(tmp_path).lr == 0.5


@pytest.mark.parametrize("budget", [0.0, 3.0])
def test_the_lr_curve_draws_the_warmup_the_logged_rows_step_over(tmp_path, budget):
    """Rows every 10 steps, a warmup of 4: the curve has the peak (at the warmup's last step),
    which the rows of a run by steps never see, meets every row's rate (a time budget's near it:
    the decay follows the rows' seconds) and, by steps, ends on min_lr."""
    text = tmp_path / "t.txt"
    text.write_text("ROMEO: But soft, what light through yonder window breaks?\n" * 60)
    cfg = tiny_config(text, steps=40, time_budget=budget, warmup_steps=4, log_every=10,
                      eval_every=20, lr=1e-2, min_lr=1e-3)
    train(cfg, tmp_path / "run", progress=False)
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert budget or max(r["lr"] for r in rows) < 0.0099  # (by steps: the peak is not logged)
    settings = run_train_config(tmp_path / "run")
    line = plot_lr(rows, train=settings).axes[0].lines[0]
    curve = dict(zip(line.get_xdata(), line.get_ydata(), strict=True))
    assert [curve[s] for s in range(4)] == pytest.approx([2.5e-3, 5e-3, 7.5e-3, 1e-2])
    assert max(curve.values()) == pytest.approx(1e-2)
    for before, r in zip([None, *rows], rows, strict=False):
        if budget and r["step"] >= 4:  # its rate was taken between the last row's seconds and
            # its own (read after the step), and the decay only falls
            start = schedule_lr(settings, r["step"], before["time_s"])
            assert curve[r["step"]] <= r["lr"] + 1e-4 and r["lr"] <= start + 1e-4  # (rounding)
        else:
            assert curve[r["step"]] == pytest.approx(r["lr"], abs=1e-12)
    if not budget:
        assert curve[39] == pytest.approx(1e-3) and sorted(curve) == list(range(40))
    assert len(plot_lr(rows).axes[0].lines) == 1  # no settings: the rows (the notebook's)
    resumed = [{**r, "lr": r["lr"] / 2} for r in rows]  # as if a resume had halved --lr
    lines = plot_lr(resumed, train=settings).axes[0].lines  # the settings no longer give them
    assert len(lines) == 1 and list(lines[0].get_xdata()) == [r["step"] for r in rows]


def test_a_time_budget_runs_lr_curve_is_the_schedule_at_the_rows_seconds_not_their_steps():
    """Under a time budget the rate decays with seconds: the curve between the rows takes each
    step's seconds from the rows' time_s (interpolated), so at a logged step it is the
    schedule at that row's own seconds (rows 5 seconds apart, 10 steps apart: steps read as
    seconds would run past the budget and draw min_lr)."""
    settings = replace(resolve_config("seed").train, time_budget=20.0, warmup_steps=2,
                       lr=1e-2, min_lr=1e-3, schedule="cosine")
    rows = [{"step": s, "time_s": s / 2, "lr": schedule_lr(settings, s, s / 2)}
            for s in range(0, 41, 10)]
    line = plot_lr(rows, train=settings).axes[0].lines[0]
    curve = dict(zip(line.get_xdata(), line.get_ydata(), strict=True))
    for r in rows:
        assert curve[r["step"]] == pytest.approx(schedule_lr(settings, r["step"], r["time_s"]))
    assert curve[25] == pytest.approx(schedule_lr(settings, 25, 12.5))  # between two rows


def test_attention_snapshots_and_samples(probed_run):
    # rows at steps 0, 5, 10, 15, 20 and the last, 22: a record at the first row of every
    # 11 (or 10) steps, and at the end one of the final weights unless the last row had it
    shots = sorted(p.name for p in (probed_run / "attention").iterdir())
    assert shots == ["step-000000.png", "step-000015.png", "step-000022.png"]
    assert_png(probed_run / "attention" / "step-000022.png")
    samples = read_jsonl(probed_run / "samples.jsonl")
    assert [s["step"] for s in samples] == [0, 10, 20, 22]
    assert all(s["text"].startswith("ROMEO:") and len(s["text"]) == 206 for s in samples)


@pytest.mark.parametrize("ema", [0.0, 0.5])
def test_probes_change_nothing_the_run_learns_and_sample_its_final_model(small_text, tmp_path,
                                                                         ema):
    """A run with every probe on and the same run without, with dropout (which draws from the
    global generator): the losses and the weights are the same to the bit (a probe that drew
    random numbers or left the model in eval mode changes them), and the last sample is the
    final model's (with --ema the average, not the raw weights), at the run's seed."""
    from minigpt.sample import sample_text

    def cfg(**diag):
        return tiny_config(small_text, steps=7, log_every=1, eval_every=3, dropout=0.2, ema=ema,
                           **diag)

    train(cfg(), tmp_path / "plain", progress=False)
    on = cfg(gradflow_every=2, attention_every=3, sample_every=3, plots=True)
    probed = train(on, tmp_path / "probed", progress=False, probes=standard_probes(on))
    rows = [without_speed(read_jsonl(tmp_path / run / "metrics.jsonl"))
            for run in ("plain", "probed")]
    assert rows[0] == rows[1]
    assert same_weights(tmp_path / "plain", tmp_path / "probed")
    last = read_jsonl(tmp_path / "probed" / "samples.jsonl")[-1]
    assert last["step"] == 6 and last["text"] == sample_text(
        probed.model, probed.tokenizer, None, 200, seed=on.train.seed)


@pytest.mark.parametrize("attention_text, said", [
    ("ROMEO:", "attention probe off: no character of its text is in the vocabulary"),
    ("ROMEO: 0123456789", "attention probe: its text is drawn as '0123456789' (the characters"),
    ("0123456789" * 4, "its text is drawn as '01234567890123456789012345678901'"),  # one block
])
def test_an_attention_text_drawn_otherwise_is_said(tmp_path, caplog, attention_text, said):
    text = tmp_path / "digits.txt"
    text.write_text("0123456789\n" * 50)
    cfg = tiny_config(text, steps=2, attention_every=1, attention_text=attention_text)
    train(cfg, tmp_path / "run", progress=False, probes=standard_probes(cfg))
    assert said in caplog.text
    assert "no attention recorded" not in caplog.text  # an off probe does not try every step
    assert bool(list((tmp_path / "run" / "attention").glob("*.png"))) == ("off" not in said)


def test_an_attention_record_draws_the_final_models_maps_titled_and_named_by_its_step(
        tmp_path, monkeypatch):
    """The maps drawn are those of final_model (with --ema the average, not the raw weights),
    over the text's characters, in step-NNNNNN.png titled with that step."""
    import numpy as np

    import minigpt.diagnostics.probes as probes
    from minigpt import MiniGPT
    from minigpt.diagnostics.attention import attention_maps

    drawn = []
    real = probes.plot_attention
    monkeypatch.setattr(probes, "plot_attention", lambda *a, **kw: drawn.append(real(*a, **kw)))
    tok = CharTokenizer.from_text("ROMEO: soft")
    final, raw = (MiniGPT(tok.vocab_size, n_embd=16, n_layer=2, n_head=2, block_size=16)
                  for _ in range(2))
    probe = AttentionProbe(5, "ROMEO")
    probe.run = SimpleNamespace(final_model=final, model=raw, tokenizer=tok, folder=tmp_path,
                                device="cpu")
    probe.ids = tok.encode("ROMEO")
    probe.record(7)
    assert [p.name for p in (tmp_path / "attention").iterdir()] == ["step-000007.png"]
    [fig] = drawn
    assert fig._suptitle.get_text() == "attention at step 7"
    assert [t.get_text() for t in fig.axes[0].texts[::2]] == list("ROMEO")
    shown = np.stack([ax.images[0].get_array().filled(0.0) for ax in fig.axes[:-1]])
    maps = attention_maps(final, torch.tensor([probe.ids])).flatten(0, 1).numpy()
    assert np.array_equal(shown, maps)


def test_a_resume_after_a_crash_records_each_step_once(probed_run, tmp_path):
    """Killed after the logs went past the last checkpoint (here: step 21's, the logs at 22):
    the resumed run's TensorBoard steps are its metrics rows, each once, and no attention map
    is left from the stretch it trains again."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    shutil.copytree(probed_run, run)
    shutil.copy(run / "checkpoints" / "step-000021.json", run / "checkpoints" / "last.json")
    cfg = resume_config(run, {"steps": 22}, sections=SECTIONS)
    train(cfg, run, resume=True, progress=False, probes=standard_probes(cfg))
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    steps = [e.step for e in acc.Scalars("loss/train")]
    assert steps == [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == [0, 5, 10, 15, 20,
                                                                                21]
    shots = sorted(p.name for p in (run / "attention").iterdir())
    assert shots == ["step-000000.png", "step-000015.png", "step-000021.png"]


def test_a_resume_keeps_no_probe_row_of_the_step_it_trains_again(small_text, tmp_path):
    """Killed after the step that follows its last checkpoint was recorded (here: the
    checkpoint of 3 steps done, a gradient-flow row at step 3): the resumed run writes that
    row again, so its log must drop it; the rows are the uninterrupted run's, each once."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_config(small_text, steps=4, eval_every=2, log_every=1, gradflow_every=1,
                      plots=False, sample_every=0, attention_every=0, tensorboard=True)
    run = tmp_path / "run"
    train(cfg, run, progress=False, probes=standard_probes(cfg))
    whole = [r["step"] for r in read_jsonl(run / "gradflow.jsonl")]
    checkpoint = json.loads((run / "checkpoints" / "step-000003.json").read_text())
    assert checkpoint["step"] == 3 and 3 in whole  # a row past the checkpoint: step 3's
    shutil.copy(run / "checkpoints" / "step-000003.json", run / "checkpoints" / "last.json")
    cfg = resume_config(run, sections=SECTIONS)
    train(cfg, run, resume=True, progress=False, probes=standard_probes(cfg))
    assert [r["step"] for r in read_jsonl(run / "gradflow.jsonl")] == whole
    (acc := EventAccumulator(str(run / "tensorboard"))).Reload()  # and TensorBoard's, once
    assert [e.step for e in acc.Scalars("loss/train")] == [0, 1, 2, 3]


def test_resuming_a_run_that_has_ended_records_its_end_once(probed_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(probed_run, run)
    cfg = resume_config(run, sections=SECTIONS)
    train(cfg, run, resume=True, progress=False, probes=standard_probes(cfg))  # nothing to train
    assert [s["step"] for s in read_jsonl(run / "samples.jsonl")] == [0, 10, 20, 22]
    shots = sorted(p.name for p in (run / "attention").iterdir())
    assert shots == ["step-000000.png", "step-000015.png", "step-000022.png"]


def test_tensorboard_event_files_hold_the_tags(probed_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(probed_run / "tensorboard"))
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    assert {"loss/train", "loss/val", "lr", "grad_norm", "tokens_per_s"} <= scalars
    assert {"grad_norm/blocks.0", "grad_norm/lm_head"} <= scalars
    assert "attention" in acc.Tags()["images"]
    rows = read_jsonl(probed_run / "metrics.jsonl")
    # each tag holds its own figure, as metrics.jsonl does (whose val_bpb test_train checks
    # by hand): swapping loss/val and bpb/val went unseen
    for tag, key in (("loss/train", "train_loss"), ("loss/val", "val_loss"),
                     ("bpb/val", "val_bpb")):
        logged = [r[key] for r in rows if key in r]
        assert [e.value for e in acc.Scalars(tag)] == pytest.approx(logged) and logged


def test_tensorboard_without_its_package_is_one_line_before_the_run_starts(small_text, tmp_path,
                                                                          capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    line = one_line_error(capsys, ["train", "--text", str(small_text), *TINY_FLAGS, "--steps",
                                   "1", "--tensorboard", "--out", str(tmp_path / "run")])
    assert line == ("minigpt: error: --tensorboard needs the tensorboard package: pip install "
                    "'minigpt-loop[tensorboard]'")
    assert not (tmp_path / "run").exists()


def test_a_resumed_probe_remembers_who_was_dead_and_shouts_nonfinite_at_once(tmp_path, caplog):
    def record(probe, step, flags):
        probe.state, probe.run = SimpleNamespace(step=step), SimpleNamespace(folder=tmp_path)
        probe.record([ParamStats(name, (1,), 0.0, 0.0, 0.0, 1.0, None, [flag])
                      for name, flag in flags.items()])

    caplog.set_level("WARNING", logger="minigpt")
    record(GradFlowProbe(5), 5, {"w": "dead"})
    assert not caplog.text  # dead at one probe: not yet
    resumed = GradFlowProbe(5)
    resumed.load_state_dict({"dead": ["w"]})  # from the checkpoint: dead at the last probe
    record(resumed, 10, {"w": "dead", "v": "nonfinite"})
    assert "step 10: gradient flow: w dead, v nonfinite" in caplog.text


class ZeroGradient(Probe):
    """Cuts lm_head off the loss: its gradient is zero at every step."""

    def start(self, run):
        run.model.lm_head.weight.register_hook(torch.zeros_like)


def test_the_probe_sees_gradients_before_clipping_and_shouts_dead_only_when_it_lasts(
        small_text, tmp_path, caplog):
    """A clipped run: the probe sees the gradients before clipping (clipped, none could ever
    be flagged exploding), as the loop's gradient norm does. The smear's gate starts at
    zero, so its weights' gradient is exactly zero at step 0 only (then tiny, as the gate
    opens): recorded, not shouted. A parameter dead at every probe is shouted from the
    second."""
    caplog.set_level("WARNING", logger="minigpt")
    cfg = tiny_config(small_text, steps=6, eval_every=5, log_every=1, gradflow_every=1,
                      grad_clip=0.05, smear=True)
    train(cfg, tmp_path / "run", progress=False,
          probes=[ZeroGradient(), *standard_probes(cfg)])
    norms = {r["step"]: r["grad_norm"] for r in read_jsonl(tmp_path / "run/metrics.jsonl")}
    assert min(norms.values()) > 0.05  # clipping acts at every step
    flows = read_jsonl(tmp_path / "run" / "gradflow.jsonl")
    for r in flows:
        total = math.sqrt(sum(v * v for v in r["layers"].values()))
        assert total == pytest.approx(norms[r["step"]], rel=1e-4)
    assert flows[0]["flagged"]["smear_gate.weight"] == ["dead"]
    assert all(r["flagged"].get("smear_gate.weight") != ["dead"] for r in flows[1:])
    assert all(r["flagged"]["lm_head.weight"] == ["dead"] for r in flows)
    shouted = [m for m in caplog.messages if "gradient flow:" in m]
    assert [m.split(":")[0] for m in shouted] == [f"step {s}" for s in range(1, 6)]
    assert all("lm_head.weight dead" in m and "smear" not in m for m in shouted)


def test_a_resumed_gradflow_probe_shouts_a_lasting_dead_parameter_as_the_whole_run_does(
        small_text, tmp_path, caplog):
    """Dead is shouted once it lasts two probes; the parameters dead at the last probe go into
    the checkpoint. A run stopped after 2 steps and resumed to 4 shouts lm_head (dead at every
    step) at the same steps as the same run uninterrupted: at 2, the resume's first probe, too."""
    def shouted(folder, steps, resume=False):
        caplog.clear()
        cfg = (resume_config(folder, {"steps": steps}, sections=SECTIONS) if resume else
               tiny_config(small_text, steps=steps, eval_every=2, log_every=1, gradflow_every=1,
                           plots=False, sample_every=0, attention_every=0))
        train(cfg, folder, resume=resume, progress=False,
              probes=[ZeroGradient(), *standard_probes(cfg)])
        return [int(m.split(":")[0].split()[1]) for m in caplog.messages
                if "gradient flow:" in m and "lm_head.weight dead" in m]

    caplog.set_level("WARNING", logger="minigpt")
    whole = shouted(tmp_path / "whole", 4)
    assert whole == [1, 2, 3]  # from the second probe on
    assert shouted(tmp_path / "cut", 2) + shouted(tmp_path / "cut", 4, resume=True) == whole


def test_variant_axes_and_settings_with_their_types():
    assert parse_axis("sgd:0.5,adamw", "optimizer") == [{"optimizer": "sgd", "lr": 0.5},
                                                       {"optimizer": "adamw"}]
    assert list(variants("sgd,adamw", None, "1,0")) == [
        "sgd clip 1", "sgd no clip", "adamw clip 1", "adamw no clip"]
    assert parse_variant("+rope+muon:pos=rope,optimizer=muon,lr=3e-3,qk_norm=true") == (
        "+rope+muon", {"pos": "rope", "optimizer": "muon", "lr": 0.003, "qk_norm": True})
    assert parse_variant("lesson") == ("lesson", {})
    assert parse_variant("fast:preset=fast,time-budget=60") == (
        "fast", {"preset": "fast", "time_budget": 60.0})
    assert parse_variant("fast:time_budget=1.5m") == ("fast", {"time_budget": 90.0})
    for bad, message in [(":pos=rope", "needs a name"), ("x:lr", "not KEY=VALUE"),
                         ("x:time_budget=30x", "not a duration"),
                         ("x:qqqq=1", "unknown setting 'qqqq'$"),
                         ("x:lrr=1", "unknown setting 'lrr'; did you mean 'lr'"),
                         ("x:steps=many", "^variant 'x': steps='many': not an integer$"),
                         ("x:bias=maybe", "not true or false")]:
        with pytest.raises(MiniGPTError, match=message):
            parse_variant(bad)
    for axis, bad, message in [("optimizer", "sgd,,adamw", "empty item in the optimizer list "
                                                           "'sgd,,adamw'"),
                               ("optimizer", "sgd:fast", "cannot read 'sgd:fast' in the optimizer "
                                                         "list 'sgd:fast'"),  # (an lr, not a word)
                               ("grad_clip", "1,big", "cannot read 'big' in the grad_clip list "
                                                      "'1,big'")]:
        with pytest.raises(MiniGPTError, match=f"^{re.escape(message)}$"):
            parse_axis(bad, axis)


def test_a_setting_that_fails_a_variant_names_the_variant(tmp_path):
    """A value parse_variant reads but the settings refuse (an unknown optimizer): which of
    the variants, before any is trained."""
    with pytest.raises(MiniGPTError, match=r"^variant 'y': 'optimizer' must be one of adamw, "
                                           r"sgd, muon; got 'foo'$"):
        compare({"x": {}, "y": {"optimizer": "foo"}}, tmp_path / "c", common={"steps": 2})
    assert not (tmp_path / "c").exists()


def test_a_switch_reads_1_and_0():
    assert parse_variant("x:qk_norm=1,bias=0") == ("x", {"qk_norm": True, "bias": False})



def test_a_table_of_different_tokenizers_puts_each_bits_per_byte_under_its_heading():
    """The val bpb column: each variant's final_val_bpb (not its loss per token), right under
    its heading, the columns after it where the header puts them."""
    row = dict(best_val_loss=2.5, steps=20, train_s=1.0, time_to={})
    table = [{"variant": "char", "tokenizer": "char, vocab 65", "final_val_loss": 1.61,
              "final_val_bpb": 2.3125, **row},
             {"variant": "bpe", "tokenizer": "bpe, vocab 280", "final_val_loss": 3.52,
              "final_val_bpb": 1.9876, **row}]
    header, _, *lines = format_table(table).splitlines()
    for r, line in zip(table, lines, strict=True):
        bpb = f"{r['final_val_bpb']:.4f}"
        assert line.index(bpb) + len(bpb) == header.index("val bpb") + len("val bpb")
        assert line.index("2.5000") + len("2.5000") == header.index("best val") + len(
            "best val")


def overlay_rows(loss0: float, bpb0: float) -> list[dict]:
    """Rows as the trainer writes them: every step a train loss, every other an evaluation."""
    return [{"step": s, "time_s": 0.25 * s, "train_loss": loss0 - 0.1 * s,
             **({"val_loss": loss0 + 0.05 - 0.1 * s, "val_bpb": bpb0 - 0.05 * s} if s % 2 == 0
                else {})} for s in range(7)]


def test_the_overlay_of_different_tokenizers_draws_each_runs_bits_per_byte_alone():
    """per_byte: each run's validation bits per byte against steps and seconds, and no
    losses per token (faint train lines, validation in nats), which do not compare."""
    curves = {"char": overlay_rows(2.0, 3.0), "bpe": overlay_rows(4.0, 2.5)}
    for per_byte, y, lines in ((True, "val_bpb", 1), (False, "val_loss", 2)):
        by_step, by_time = plot_overlay(curves, per_byte=per_byte).axes
        for ax, x in ((by_step, "step"), (by_time, "time_s")):
            drawn = ax.get_lines()
            assert len(drawn) == lines * len(curves)
            for line, rows in zip(drawn[lines - 1::lines], curves.values(), strict=True):
                evals = [r for r in rows if "val_loss" in r]
                assert list(line.get_xdata()) == [r[x] for r in evals]
                assert list(line.get_ydata()) == [r[y] for r in evals]
        assert by_step.get_ylabel() == ("validation bits per byte" if per_byte else
                                        "loss (nats); faint: train")
        assert [t.get_text() for t in by_step.get_legend().get_texts()] == ["char (val)",
                                                                            "bpe (val)"]

def test_the_overlay_keeps_a_diverged_variant_from_flattening_the_others():
    """A compare with a variant at a huge rate (its losses finite, 3.5e12) drew the others as
    a flat line at 0: the axis now ends half as much again above where the variants start
    (step 0's train loss), every loss of the others visible, and the legend says which
    variant leaves the scale and how far it went."""
    ok = overlay_rows(4.0, 5.0)
    boom = [{**r, "train_loss": r["train_loss"] * 1e12 if r["step"] else r["train_loss"],
             **({"val_loss": 3e12} if "val_loss" in r else {})} for r in ok]
    by_step, by_time = plot_overlay({"ok": ok, "boom": boom}).axes
    low, top = by_step.get_ylim()
    assert (low, top) == by_time.get_ylim() and top == 1.5 * 4.0
    shown = [r[k] for r in ok for k in ("train_loss", "val_loss") if k in r]
    assert low < min(shown) and max(shown) < top
    # and the axis starts just below them (a margin, as matplotlib's own), not at 0: that would
    # squeeze the others' curves into the top part of the panel again
    assert min(shown) - low < 0.1 * (top - low)
    assert [t.get_text() for t in by_step.get_legend().get_texts()] == [
        "ok (val)", f"boom (val, off the scale: up to {max(r['train_loss'] for r in boom):.3g})"]
    # none diverged: matplotlib's own limits, all shown; ok2 starts lower than ok, and the
    # scale is set by the highest start (ok's 4.0), not the lowest, which would cut ok off
    by_step, _ = plot_overlay({"ok": ok, "ok2": overlay_rows(2.0, 4.0)}).axes
    assert by_step.get_ylim()[1] < top
    assert not any("off the scale" in t.get_text() for t in by_step.get_legend().get_texts())


def test_the_table_has_every_variants_targets():
    row = dict(final_val_loss=3.5, best_val_loss=3.5, steps=20, train_s=1.0)
    table = [{"variant": "a", **row, "time_to": {"3.9": 0.5}},
             {"variant": "b", **row, "time_to": {"3.3": None}}]
    lines = format_table(table).splitlines()
    assert lines[0].split()[-4:] == ["to", "3.9", "to", "3.3"]
    assert lines[2].split()[-2:] == ["0.5", "n/a"] and lines[3].split()[-2:] == ["n/a", "-"]


def test_compare_takes_no_patience_and_says_a_time_budget_ends_a_variant(tmp_path, caplog):
    text = tmp_path / "t.txt"
    text.write_text("to be or not to be, that is the question\n" * 80)
    common = {"text": str(text), **TINY, "steps": 3, "eval_every": 3}
    with pytest.raises(MiniGPTError, match="compare trains every variant its full length: it "
                                           "takes no patience"):  # (it was set to 0, unsaid)
        compare({"a": {}}, tmp_path / "p", common={**common, "patience": 1}, progress=False)
    assert not (tmp_path / "p").exists()
    (tmp_path / "budget.toml").write_text("[train]\ntime_budget = 0.5\n")  # as fast's preset
    caplog.set_level("WARNING", logger="minigpt")
    compare({"a": {}}, tmp_path / "b", config_file=str(tmp_path / "budget.toml"), common=common,
            progress=False)
    assert "a: a time budget of 0.5 s ends it, not its steps (time_budget=0" in caplog.text
    table = compare({"s": {"preset": "seed"}}, tmp_path / "s", common=common, progress=False)
    assert table[0]["steps"] == 3  # a variant's own preset (it was once an unknown setting)


def test_compare_trains_without_the_patience_a_config_file_sets(tmp_path):
    """Each variant's settings, written (variants.json) before the first is trained: here
    before its text is found missing."""
    (tmp_path / "p.toml").write_text("[train]\npatience = 1\n")
    common = {"text": str(tmp_path / "nope.txt"), **TINY, "steps": 3}
    with pytest.raises(MiniGPTError, match="text file not found"):
        compare({"a": {}}, tmp_path / "c", config_file=str(tmp_path / "p.toml"), common=common,
                progress=False)
    settings = json.loads((tmp_path / "c" / "variants.json").read_text())
    assert settings["a"]["train"]["patience"] == 0


def test_a_comparison_that_failed_before_training_gives_way_to_the_corrected_one(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("to be or not to be, that is the question\n" * 80)
    common = {**TINY, "steps": 3, "eval_every": 3}
    with pytest.raises(MiniGPTError, match="^variant a: text file not found: .*nope.txt$"):
        compare({"a": {"text": str(tmp_path / "nope.txt")}, "b": {"text": str(text)}},
                tmp_path / "c", common=common, progress=False)
    table = compare({"a": {"text": str(text)}, "b": {"text": str(text), "lr": 0.1}},
                    tmp_path / "c", common=common, progress=False)  # (was: "other variants")
    assert [r["steps"] for r in table] == [3, 3]
    with pytest.raises(MiniGPTError, match=r"holds a comparison of other variants or settings "
                                           r"\(its variants were a, b\)"):  # begun
        compare({"a": {"text": str(text)}}, tmp_path / "c", common=common, progress=False)
    with pytest.raises(MiniGPTError, match=r"\(b's lr was 0.1, not 0.2\), some trained"):
        compare({"a": {"text": str(text)}, "b": {"text": str(text), "lr": 0.2}},
                tmp_path / "c", common=common, progress=False)


def test_variants_of_the_same_settings_are_said_to_train_alike(tmp_path, caplog):
    """A variant setting what its preset sets already (fast's smear, say) is no ablation."""
    text = tmp_path / "t.txt"
    text.write_text("to be or not to be, that is the question\n" * 80)
    common = {**TINY, "steps": 2, "eval_every": 2, "text": str(text)}
    compare({"base": {}, "+seed": {"seed": TINY.get("seed", 1337)}, "lr": {"lr": 0.2}},
            tmp_path / "c", common=common, progress=False)
    assert "base and +seed have the same settings: they train alike" in caplog.text
    assert "lr have" not in caplog.text


def test_a_variant_that_failed_at_its_first_step_is_trained_by_the_next_command(tmp_path,
                                                                                monkeypatch):
    """Its folder made, no checkpoint (a step-0 out-of-memory, a kill): the same command, or
    a corrected one, trains it (it was refused: 'exists, and no comparison there trained it')."""
    text = tmp_path / "t.txt"
    text.write_text("to be or not to be, that is the question\n" * 80)
    common = {"text": str(text), **TINY, "steps": 3, "eval_every": 3}

    def out_of_memory(*args, **kwargs):
        raise MemoryError("out of memory")

    monkeypatch.setattr(minigpt.trainer, "train_step", out_of_memory)
    with pytest.raises(MiniGPTError):
        compare({"a": {}, "b": {"lr": 0.1}}, tmp_path / "c", common=common, progress=False)
    begun = tmp_path / "c" / "0-a"
    assert begun.is_dir() and not (begun / "checkpoints").exists()
    monkeypatch.undo()
    (tmp_path / "c" / "1-mine").mkdir()
    (tmp_path / "c" / "1-mine" / "notes.txt").write_text("a user's own")  # not compare's
    with pytest.raises(MiniGPTError, match="1-mine exists, and no comparison there trained it"):
        compare({"a": {}, "mine": {}}, tmp_path / "c", common=common, progress=False)
    table = compare({"a": {"batch_size": 4}, "b": {"lr": 0.1}}, tmp_path / "c", common=common,
                    progress=False)  # corrected: a smaller batch
    assert [r["steps"] for r in table] == [3, 3]


def test_variants_with_different_tokenizers_are_compared_by_bits_per_byte(tmp_path, caplog,
                                                                          monkeypatch):
    """A BPE token holds several characters, so its loss per token is higher however well it
    learns: the table and the plot ranked a character run and a BPE run in nats per token."""
    text = tmp_path / "t.txt"
    text.write_text("to be or not to be, that is the question\n" * 80)
    common = {"text": str(text), **TINY, "steps": 6, "eval_every": 3, "warmup_steps": 0}
    drawn = []
    monkeypatch.setattr(minigpt.diagnostics.compare, "plot_overlay",
                        lambda *args, title, per_byte: drawn.append(per_byte))
    runs = {"char": {"tokenizer": "char"}, "bpe": {"tokenizer": "bpe", "vocab_size": 280}}
    table = compare(runs, tmp_path / "cmp", common=common, progress=False)
    chars = len(set(text.read_text()))
    assert [r["tokenizer"] for r in table] == [f"char, vocab {chars}", "bpe, vocab 280"]
    assert drawn == [True] and "tokenizers differ" in caplog.text
    header, _, *rows = format_table(table).splitlines()
    assert header.split()[:5] == ["variant", "final", "val", "val", "bpb"]
    assert [float(r.split()[2]) for r in rows] == pytest.approx(
        [r["final_val_bpb"] for r in table], abs=1e-4)
    same = compare({"a": {}, "b": {"lr": 0.002}}, tmp_path / "same", common=common,
                   progress=False)  # one tokenizer: the losses compare, as they are
    assert drawn == [True, False] and "bpb" not in format_table(same)


def test_compare_starts_from_the_same_weights_and_tables_the_time_to_each_target(tmp_path):
    """Two optimizers on one model start from the same weights and batches; a variant of
    model options runs with them; each row's seconds to a target are its metrics' own."""
    text = tmp_path / "t.txt"
    text.write_text("to be or not to be, that is the question\n" * 80)
    common = {"text": str(text), **TINY, "steps": 20, "eval_every": 5, "log_every": 1,
              "warmup_steps": 0, "schedule": "constant", "targets": "3,2.5"}
    runs = {**variants("sgd:0.5,adamw:0.003"), "+rope+muon": {"pos": "rope", "optimizer": "muon"}}
    table = compare(runs, tmp_path / "cmp", common=common, progress=False)
    assert [r["variant"] for r in table] == ["sgd lr 0.5", "adamw lr 0.003", "+rope+muon"]
    metrics = [read_jsonl(tmp_path / "cmp" / r["folder"] / "metrics.jsonl") for r in table]
    assert metrics[0][0]["train_loss"] == metrics[1][0]["train_loss"]  # same init, same batch
    assert metrics[0][5]["train_loss"] != metrics[1][5]["train_loss"]  # different updates
    for row, rows in zip(table, metrics, strict=True):
        evals = [r for r in rows if "val_loss" in r]
        for target in ("3", "2.5"):
            first = next((r["time_s"] for r in evals if r["val_loss"] <= float(target)), None)
            assert row["time_to"][target] == first
    config = json.loads((tmp_path / "cmp" / table[2]["folder"] / "config.json").read_text())
    assert config["config"]["model"]["pos"] == "rope"
    assert config["config"]["train"]["optimizer"] == "muon"
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert [r["final_val_loss"] for r in saved] == [r["final_val_loss"] for r in table]
    assert_png(tmp_path / "cmp" / "compare.png")
    h, w, _ = read_png(tmp_path / "cmp" / "compare.png").shape
    assert w / h == pytest.approx(12 / 4.5, rel=0.02)  # against steps, and against seconds


def test_the_curves_draw_the_rows_that_have_each_figure():
    """One's own loop may log validation alone, or no rate: each figure draws the rows that
    have its figure (a KeyError before)."""
    rows = [{"step": 0, "train_loss": 4.2, "lr": 1e-3}, {"step": 5, "val_loss": 3.9},
            {"step": 10, "train_loss": 3.0}]
    train_line, val_line = plot_loss(rows).axes[0].lines[:2]
    assert list(train_line.get_xdata()) == [0, 10] and list(val_line.get_xdata()) == [5]
    assert list(plot_lr(rows).axes[0].lines[0].get_xdata()) == [0]
    settings = resolve_config("seed").train
    assert list(plot_lr(rows[1:], train=settings).axes[0].lines[0].get_xdata()) == []
    assert list(plot_lr(rows, train=settings).axes[0].lines[0].get_xdata()) == [0]  # no time_s


def test_a_backward_that_raised_leaves_the_gradflow_probe_ready_for_the_next_step(small_text,
                                                                                tmp_path):
    """A loop of one's own that goes on past a backward that failed: autograd then runs no
    callback at its end, and the probe once waited for ever for the copy it had queued."""
    from minigpt.run import build_run
    from minigpt.step import train_step

    run = build_run(tiny_config(small_text, dtype="float32"), tmp_path / "run")
    (tmp_path / "run").mkdir()
    probe = GradFlowProbe(every=1)
    probe.start(run)

    def fail(grad):
        raise RuntimeError("a backward that fails")

    handle = run.model.token_emb.weight.register_hook(fail)  # (the last)
    with pytest.raises(RuntimeError, match="a backward that fails"):
        train_step(run.model, run.optimizer, run.batches)
    handle.remove()
    run.state.step += 1  # the loop skips the step
    train_step(run.model, run.optimizer, run.batches)
    rows = read_jsonl(tmp_path / "run" / "gradflow.jsonl")
    assert [r["step"] for r in rows] == [1] and rows[0]["layers"]["lm_head"] > 0


def test_the_gradflow_probe_sees_the_whole_steps_gradient_when_it_accumulates(small_text,
                                                                              tmp_path):
    """Two micro-batches a step: the probe's copy is of the gradient both left (each backward
    queues its own), the one the loop's gradient norm measures, not the first micro-batch's."""
    cfg = tiny_config(small_text, steps=3, eval_every=3, log_every=1, gradflow_every=1,
                      grad_accum=2, grad_clip=0.0, dtype="float32")
    train(cfg, tmp_path / "run", progress=False, probes=standard_probes(cfg))
    norms = {r["step"]: r["grad_norm"] for r in read_jsonl(tmp_path / "run/metrics.jsonl")}
    flows = read_jsonl(tmp_path / "run" / "gradflow.jsonl")
    assert [r["step"] for r in flows] == [0, 1, 2]
    for r in flows:
        total = math.sqrt(sum(v * v for v in r["layers"].values()))
        assert total == pytest.approx(norms[r["step"]], rel=1e-4)


def test_a_loss_summary_json_holds_as_null_is_tabled_as_nan_under_its_heading():
    """summary.json writes a NaN or infinite loss as null: the table says nan where a number
    would stand, right-aligned under its heading, the columns after it in place."""
    row = dict(steps=20, train_s=1.0, time_to={})
    table = [{"variant": "fine", "tokenizer": "char, vocab 65", "final_val_loss": 1.61,
              "final_val_bpb": 2.3125, "best_val_loss": 2.5, **row},
             {"variant": "blew-up", "tokenizer": "bpe, vocab 280", "final_val_loss": None,
              "final_val_bpb": None, "best_val_loss": None, **row}]
    header, _, fine, nan = format_table(table).splitlines()
    assert nan.split()[1:4] == ["nan"] * 3 and len(nan) == len(fine)
    for heading, number in (("final val", "1.6100"), ("val bpb", "2.3125"),
                            ("best val", "2.5000")):
        end = header.index(heading) + len(heading)
        assert fine[:end].endswith(number) and nan[:end].endswith(" nan")


def test_a_variant_that_diverges_is_a_row_and_the_comparison_goes_on(tmp_path, caplog):
    """SGD at a rate far too high is the lesson's answer, not a failure: it once stopped the
    whole comparison before AdamW trained."""
    text = tmp_path / "t.txt"
    text.write_text("to be or not to be, that is the question\n" * 80)
    common = {**TINY, "steps": 12, "eval_every": 4, "log_every": 1, "text": str(text),
              "grad_clip": 0.0}
    table = compare({"sgd": {"optimizer": "sgd", "lr": 1e9}, "adamw": {}}, tmp_path / "c",
                    common=common, progress=False)
    sgd, adamw = table
    assert sgd["final_val_loss"] is None and 0 < sgd["diverged"] == sgd["steps"] - 1 < 11
    assert "sgd: diverged at step" in caplog.text
    assert adamw["steps"] == 12 and math.isfinite(adamw["final_val_loss"])
    saved = json.loads((tmp_path / "c" / "compare.json").read_text(),
                       parse_constant=lambda c: pytest.fail(f"{c} in compare.json"))
    assert [r["variant"] for r in saved] == ["sgd", "adamw"]
    lines = format_table(table).splitlines()
    assert "diverged" in lines[2] and len(lines[2]) == len(lines[3])  # sgd's: no final loss
    sgd["best_val_loss"] = 1942973.014  # (a diverged run's estimate can be that): in its column
    assert "1.94e+06" in format_table(table).splitlines()[2]
    assert len(set(map(len, format_table(table).splitlines()))) == 1


def test_a_diverged_variants_row_has_the_best_of_its_evaluations_and_says_so_from_step_0(
        tmp_path):
    """A variant that diverged: its best validation loss is the lowest its metrics hold (not
    the last or the highest: a diverging run's losses climb), and a divergence at step 0 is
    still tabled as diverged (0 is a step, not 'no divergence')."""
    from minigpt.diagnostics.compare import diverged_summary

    rows = [{"step": 0, "val_loss": 4.1, "time_s": 0.0}, {"step": 4, "val_loss": 2.3},
            {"step": 8, "val_loss": 9.7, "time_s": 1.5}]  # fell, then blew up
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    row = diverged_summary(tmp_path, tiny_config(tmp_path / "t.txt"), 9)
    assert row["best_val_loss"] == min(r["val_loss"] for r in rows)
    assert row["steps"] == 10 and row["diverged"] == 9 and row["train_s"] == 1.5
    first = {"variant": "sgd", "tokenizer": "char", **row, "diverged": 0, "steps": 1}
    assert "diverged" in format_table([first]).splitlines()[2]


def test_the_first_difference_of_two_comparisons_is_named_whichever_side_has_the_key():
    from minigpt.diagnostics.compare import difference

    was = {"a": {"train": {"lr": 0.1, "ema": 0.9}}}
    assert difference(was, {"a": {"train": {"lr": 0.1}}}) == "a's ema was 0.9, not None"
    assert difference(was, {"a": {"train": {"lr": 0.2, "ema": 0.9}}}) == "a's lr was 0.1, not 0.2"
    assert difference(was, {"b": {}}) == "its variants were a"


def test_a_rate_a_tenth_off_the_schedule_is_drawn_from_the_rows():
    """Rows at the schedule's rate are drawn with it; a resume that changed --lr by a tenth
    gives rates the settings do not: the rows alone, one line."""
    settings = resolve_config("seed").train
    rows = [{"step": s, "time_s": 0.1 * s, "lr": schedule_lr(settings, s, 0.1 * s)}
            for s in range(0, 400, 20)]
    schedule, logged = plot_lr(rows, train=settings).axes[0].lines  # every step's, the rows'
    assert list(schedule.get_xdata()) == list(range(381))
    assert list(schedule.get_ydata()) == [schedule_lr(settings, s, 0.1 * s) for s in range(381)]
    assert list(logged.get_ydata()) == [r["lr"] for r in rows] and logged.get_marker() == "."
    changed = [{**r, "lr": 0.9 * r["lr"]} for r in rows]
    (alone,) = plot_lr(changed, train=settings).axes[0].lines
    assert list(alone.get_ydata()) == [r["lr"] for r in changed]


def test_the_loss_figure_is_drawn_on_a_log_scale_and_marks_spikes_on_the_train_curve(tmp_path):
    rows = [{"step": s, "train_loss": 4.0 - 0.1 * s + (2.0 if s == 5 else 0.0)}
            for s in range(10)]
    assert plot_loss(rows).axes[0].get_yscale() == "linear"
    assert plot_loss(rows, log_scale=True).axes[0].get_yscale() == "log"
    for log_scale, scale in ((False, "linear"), (True, "log")):  # a run's curves, as [diag] asks
        figure = run_curves(tmp_path, rows, [], log_scale)["loss.png"]
        assert figure.axes[0].get_yscale() == scale
    spike = Finding(5, "spikes", "a spike", steps=(5,))
    marks = next(ln for ln in plot_loss(rows, findings=[spike]).axes[0].lines
                 if ln.get_marker() == "x")
    assert list(marks.get_ydata()) == [rows[5]["train_loss"]]


def test_a_runs_loss_figure_draws_each_loss_of_its_metrics_file_at_its_step(tmp_path):
    """Train loss at every row, validation at every evaluation, each at its own step, the axes
    named; the rate on a linear axis (it starts at 0, which a log axis cannot show)."""
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(
        {"step": s, "train_loss": 4.0 - 0.1 * s, "lr": 1e-4 * s,
         **({"val_loss": 4.5 - 0.1 * s} if s % 3 == 0 else {})}) + "\n" for s in range(10)))
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    figures = run_curves(tmp_path, rows, [])
    ax = figures["loss.png"].axes[0]
    train_line, val_line = ax.lines[:2]
    assert list(train_line.get_xdata()) == list(range(10))
    assert list(train_line.get_ydata()) == [r["train_loss"] for r in rows]
    assert list(val_line.get_xdata()) == [0, 3, 6, 9]
    assert list(val_line.get_ydata()) == [rows[s]["val_loss"] for s in (0, 3, 6, 9)]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("step", "cross-entropy loss (nats)")
    lr_ax = figures["lr.png"].axes[0]
    assert (lr_ax.get_ylabel(), lr_ax.get_yscale()) == ("learning rate", "linear")


def test_under_a_time_budget_a_rate_taken_as_its_step_began_follows_the_schedule():
    """A row's rate is the schedule's at the seconds the step began (the last row's), its
    time_s those it ended at: drawn with the schedule, though it is not the rate at time_s."""
    settings = replace(resolve_config("seed").train, time_budget=100.0, warmup_steps=0)
    rows = [{"step": s, "time_s": 10.0 * (s + 1), "lr": schedule_lr(settings, s, 10.0 * s)}
            for s in range(9)]
    assert rows[4]["lr"] > 1.05 * schedule_lr(settings, 4, rows[4]["time_s"])  # (far apart)
    assert len(plot_lr(rows, train=settings).axes[0].lines) == 2
