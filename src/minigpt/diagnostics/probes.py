"""Probes: what a training run records about itself, hung off the loop without changing it.

A probe gets `start(run)` once, `on_row(run, row)` for every metrics row the loop writes (rows
with "val_loss" are evaluations) and `end(run, summary)`. The gradient-flow probe attaches to the
optimizer's own step hooks, so it sees the gradients after clipping and the weights either side
of the update without a line in the loop.

    gradflow.jsonl, gradflow.png     per-parameter gradient health every --gradflow-every steps
    attention/step-NNNNNN.png        attention heatmaps every --attention-every steps
    samples.jsonl                    a 200-character sample every --sample-every steps
    loss.png, lr.png                 redrawn at every evaluation
    tensorboard/                     with --tensorboard
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import torch

from minigpt.diagnostics import plots
from minigpt.diagnostics.attention import attention_maps, plot_attention, token_labels
from minigpt.diagnostics.gradflow import grad_stats, layer_norms, plot_layer_norms, snapshot
from minigpt.sample import sample_text

log = logging.getLogger(__name__)


class Probe:
    def start(self, run) -> None:
        pass

    def on_row(self, run, row: dict) -> None:
        pass

    def end(self, run, summary: dict) -> None:
        pass


class CurvesProbe(Probe):
    """loss.png and lr.png, redrawn at each evaluation and at the end."""

    def on_row(self, run, row):
        if "val_loss" in row:
            plots.plot_run_curves(run.out_dir, run.cfg.diag.log_scale)

    def end(self, run, summary):
        plots.plot_run_curves(run.out_dir, run.cfg.diag.log_scale)


class GradFlowProbe(Probe):
    """Gradient statistics of every parameter on the steps that are due, from the optimizer's
    step hooks: the weights are copied before the update and compared after it."""

    def __init__(self, every: int, tensorboard=None):
        self.every = every
        self.tb = tensorboard
        self.before = None
        self.handles = []

    def start(self, run):
        def pre(optimizer, args, kwargs):
            if run.step % self.every == 0:
                self.before = snapshot(run.model)

        def post(optimizer, args, kwargs):
            if self.before is not None:
                self.record(run, grad_stats(run.model, self.before))
                self.before = None

        self.handles = [run.optimizer.register_step_pre_hook(pre),
                        run.optimizer.register_step_post_hook(post)]

    def record(self, run, stats) -> None:
        step = run.step
        layers = layer_norms(stats)
        flagged = {s.name: s.flags for s in stats if s.flags}
        row = {"step": step, "layers": layers, "flagged": flagged,
               "params": [asdict(s) for s in stats]}
        with open(run.out_dir / "gradflow.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        # vanishing is recorded but not shouted: attn.Wk.bias is always ~0 (see gradflow.py)
        alarming = {n: f for n, f in flagged.items() if set(f) & {"dead", "exploding", "nonfinite"}}
        if alarming:
            log.warning(f"step {step}: gradient flow: "
                        + ", ".join(f"{n} {'/'.join(f)}" for n, f in list(alarming.items())[:4])
                        + (" ..." if len(alarming) > 4 else ""))
        if self.tb:
            self.tb.layer_grad_norms(step, layers)

    def on_row(self, run, row):
        if "val_loss" in row:
            self.plot(run)

    def plot(self, run):
        history = plots.read_metrics(run.out_dir / "gradflow.jsonl")
        if history:
            plot_layer_norms(history, run.out_dir / "gradflow.png")

    def end(self, run, summary):
        for h in self.handles:
            h.remove()
        self.plot(run)


class AttentionProbe(Probe):
    """Attention heatmaps of every layer and head for a fixed text, every N steps."""

    def __init__(self, every: int, text: str, tensorboard=None):
        self.every = every
        self.text = text
        self.tb = tensorboard
        self.next_step = 0
        self.ids: list[int] = []  # the text's tokens, at most one block

    def start(self, run):
        tok = run.tokenizer
        known = "".join(c for c in self.text if tok.can_encode(c))
        self.ids = tok.encode(known)[: run.cfg.model.block_size]
        if not self.ids:
            log.warning("attention probe off: no character of its text is in the vocabulary")
        self.next_step = run.step

    def on_row(self, run, row):
        if self.ids and row["step"] >= self.next_step:
            self.snapshot(run, row["step"])
            self.next_step = row["step"] - row["step"] % self.every + self.every

    def snapshot(self, run, step: int) -> Path:
        idx = torch.tensor([self.ids], device=run.device)  # (1, T)
        maps = attention_maps(run.model, idx)
        path = run.out_dir / "attention" / f"step-{step:06d}.png"
        plot_attention(maps, token_labels(run.tokenizer, self.ids), path,
                       title=f"attention at step {step}")
        if self.tb:
            self.tb.image("attention", path, step)
        return path

    def end(self, run, summary):
        if self.ids:
            self.snapshot(run, run.step)


class SamplesProbe(Probe):
    """A short seeded sample every N steps, to read how the text improves (samples.jsonl)."""

    def __init__(self, every: int, length: int = 200):
        self.every = every
        self.length = length
        self.next_step = 0

    def start(self, run):
        self.next_step = run.step

    def on_row(self, run, row):
        if row["step"] >= self.next_step:
            self.record(run, row["step"])
            self.next_step = row["step"] - row["step"] % self.every + self.every

    def record(self, run, step: int) -> None:
        text = sample_text(run.model, run.tokenizer, "ROMEO:", self.length,
                           seed=run.cfg.train.seed)
        with open(run.out_dir / "samples.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, "text": text}, ensure_ascii=False) + "\n")

    def end(self, run, summary):
        self.record(run, run.step)


class TensorBoardProbe(Probe):
    def __init__(self, tb):
        self.tb = tb

    def on_row(self, run, row):
        self.tb.metrics(row)

    def end(self, run, summary):
        self.tb.close()


def standard_probes(run) -> list[Probe]:
    """The probes a run's [diag] settings ask for."""
    d = run.cfg.diag
    tb = None
    if d.tensorboard:
        from minigpt.diagnostics.tensorboard import TensorBoardLog

        tb = TensorBoardLog(run.out_dir)
    probes: list[Probe] = [CurvesProbe()] if d.plots else []
    if d.gradflow_every:
        probes.append(GradFlowProbe(d.gradflow_every, tb))
    if d.sample_every:
        probes.append(SamplesProbe(d.sample_every))
    if d.attention_every:
        probes.append(AttentionProbe(d.attention_every, d.attention_text, tb))
    if tb:
        probes.append(TensorBoardProbe(tb))
    return probes
