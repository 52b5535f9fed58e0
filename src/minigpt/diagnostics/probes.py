"""Probes: what a training run records about itself, hung off the loop without changing it.

The caller composes them and hands them to the loop: `train(cfg, probes=standard_probes(cfg))`
(the command line does). A probe gets `check(folder)` before the run is built (to refuse a run
folder it cannot write in, before anything is written there), `start(run)` once (the run's
parts, a minigpt.run.Run, whose `state.step` it may read; a resumed run's log rows after its
checkpoint are dropped here), `on_row(row)` for every metrics row the loop writes (rows with
"val_loss" are evaluations) and `end(summary)`. What a probe must carry across a resume it
gives the checkpoint through `state_dict` and takes back with `load_state_dict`; train refuses
a probe without all six (subclass Probe for those it does not need).
The gradient-flow probe attaches to hooks, so it sees the gradients as backward leaves them
(before clipping) and the weights either side of the update without a line in the loop.

    gradflow.jsonl, gradflow.png     per-parameter gradient health every --gradflow-every steps
    attention/step-NNNNNN.png        attention heatmaps every --attention-every steps
    samples.jsonl                    a 200-token sample every --sample-every steps
    loss.png, lr.png                 redrawn at every evaluation
    tensorboard/                     with --tensorboard
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from minigpt import config
from minigpt.config import RunConfig, opt
from minigpt.diagnostics import plots
from minigpt.diagnostics.attention import (
    attention_maps,
    plot_attention,
    readable_ids,
    token_labels,
)
from minigpt.diagnostics.gradflow import (
    grad_stats,
    gradients,
    layer_norms,
    plot_layer_norms,
    snapshot,
)
from minigpt.errors import MiniGPTError
from minigpt.files import append_line, printable, read_jsonl, truncate_jsonl
from minigpt.run import Run
from minigpt.sample import sample_text

log = logging.getLogger(__name__)


@dataclass
class DiagConfig:
    """What a run records about itself besides its metrics: the [diag] section of a config,
    which the command line (and `compare`) add to the core's (see minigpt.config.RunConfig)."""

    gradflow_every: int = opt(250, "record per-parameter gradient health every N steps (0 = off)")
    attention_every: int = opt(1000, "save attention heatmaps every N steps, at the first "
                                     "metrics row from each multiple of N, and of the final "
                                     "weights (0 = off)")
    attention_text: str = opt("ROMEO: But soft, what light", "text the attention maps read")
    sample_every: int = opt(1000, "record a 200-token sample every N steps, at the first "
                                  "metrics row from each multiple of N, and from the final "
                                  "weights (0 = off)")
    tensorboard: bool = opt(False, "also write TensorBoard event files to <run>/tensorboard")
    plots: bool = opt(True, "draw loss.png and lr.png, at every evaluation and at the end "
                             "(--no-plots: neither)")
    log_scale: bool = opt(False, "draw loss.png with a logarithmic loss axis")

    def validate(self) -> None:
        for key in ("gradflow_every", "attention_every", "sample_every"):
            if getattr(self, key) < 0:
                raise MiniGPTError(f"'{key}' must not be negative, got {getattr(self, key)}")
        if not self.attention_text:  # (each setting checked alone: see config.check_values)
            raise MiniGPTError("'attention_text' is empty: give the attention maps a text to "
                               "read (attention_every 0 turns them off)")


SECTIONS = config.SECTIONS | {"diag": DiagConfig}  # the settings the command line takes


class Probe:
    log_files: tuple[str, ...] = ()  # JSON-lines logs with a row per step, in the run folder
    fresh: dict = {}  # the state a probe starts a new run with (see state_dict)

    def check(self, folder: Path) -> None:
        """Refuse a run folder the probe cannot write in: called before the run is built."""

    def start(self, run: Run) -> None:
        self.run, self.state = run, run.state
        if not run.state.step:  # a new run, though the probe may have recorded another before
            self.load_state_dict(self.fresh)
        for name in self.log_files:  # a resumed run writes the rows after its checkpoint again
            truncate_jsonl(run.folder / name, run.state.step)

    def on_row(self, row: dict) -> None:
        pass

    def end(self, summary: dict) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class EveryNSteps(Probe):
    """A probe that records at the first metrics row of every `every` steps, and at the end
    the final weights, unless its last record was of them already."""

    fresh = {"next_step": 0, "recorded": -1}  # recorded: the step of the last record

    def __init__(self, every: int):
        self.every = every
        self.load_state_dict(self.fresh)

    def start(self, run):
        super().start(run)
        # a record kept in the folder from after the checkpoint: the end's, of a run resumed
        # when it had ended already (its end is not recorded twice)
        self.recorded = max([self.recorded, *self.kept_records(run)])

    def kept_records(self, run) -> list[int]:
        """The steps of this probe's records in the run folder: its log's rows."""
        return [row["step"] for name in self.log_files for row in read_jsonl(run.folder / name)]

    def on_row(self, row):
        if row["step"] >= self.next_step:
            self.record_at(row["step"])
            self.next_step = row["step"] - row["step"] % self.every + self.every

    def record_at(self, step: int) -> None:
        try:
            self.record(step)
        except MiniGPTError as e:  # weights gone NaN, say: the run's own checks decide on it
            what = type(self).__name__.removesuffix("Probe").lower()
            log.warning(f"step {step}: no {what} recorded: {e}")
        self.recorded = step

    def record(self, step: int) -> None:
        raise NotImplementedError

    def end(self, summary):
        if self.state.step - 1 > self.recorded:  # steps are named as their metrics rows are
            self.record_at(self.state.step - 1)

    def state_dict(self) -> dict:
        return {"next_step": self.next_step, "recorded": self.recorded}

    def load_state_dict(self, state: dict) -> None:
        self.next_step, self.recorded = state["next_step"], state.get("recorded", -1)


class CurvesProbe(Probe):
    """loss.png and lr.png, redrawn at each evaluation and at the end."""

    def __init__(self, log_scale: bool = False):
        self.log_scale = log_scale

    def on_row(self, row):
        if "val_loss" in row:
            plots.plot_run_curves(self.run.folder, self.log_scale)

    def end(self, summary):
        plots.plot_run_curves(self.run.folder, self.log_scale)


class GradFlowProbe(Probe):
    """Gradient statistics of every parameter on the steps that are due, from hooks: the
    gradients are copied as backward ends (before clipping, which would hide an exploding one;
    under torchrun, once the processes have averaged theirs), and the weights are copied before
    the optimizer's update and compared after it."""

    log_files = ("gradflow.jsonl",)
    fresh = {"dead": []}  # the parameters flagged dead at the last probe

    def __init__(self, every: int, tensorboard=None):
        self.every = every
        self.tb = tensorboard
        self.grads: dict[str, torch.Tensor] = {}
        self.before = None
        self.handles = []
        self.load_state_dict(self.fresh)

    def start(self, run):
        super().start(run)
        params = [p for p in run.model.parameters() if p.requires_grad]
        engine = torch.autograd.Variable._execution_engine  # runs callbacks as backward ends

        def due() -> bool:
            return self.state.step % self.every == 0

        def keep():  # the gradients as backward leaves them: under torchrun, averaged by now
            self.grads = gradients(run.model)
            self.waiting = None

        def hook(p):
            if not due():
                if self.grads:  # a due step that took no step (a NaN gradient) left them
                    self.grads = {}
            elif self.waiting != self.state.step:  # this backward's first gradient: copy them
                self.waiting = self.state.step  # all as it ends, after DDP's own callback,
                # which averages them (queued after this one; a backward that raised runs none)
                engine.queue_callback(lambda: engine.queue_callback(keep))

        def pre(optimizer, args, kwargs):
            if due():
                self.before = snapshot(run.model)

        def post(optimizer, args, kwargs):
            if self.before is not None:
                self.record(grad_stats(run.model, self.before, self.grads))
            self.before, self.grads = None, {}

        self.waiting = None  # the step whose backward has its copy queued
        self.handles = [p.register_post_accumulate_grad_hook(hook) for p in params]
        self.handles += [run.optimizer.register_step_pre_hook(pre),
                         run.optimizer.register_step_post_hook(post)]

    def record(self, stats) -> None:
        step = self.state.step
        layers = layer_norms(stats)
        flagged = {s.name: s.flags for s in stats if s.flags}
        row = {"step": step, "layers": layers, "flagged": flagged,
               "params": [asdict(s) for s in stats]}
        append_line(self.run.folder / "gradflow.jsonl", json.dumps(row))
        # Vanishing is recorded but not shouted: attn.Wk.bias is always ~0 (see gradflow.py).
        # Dead is shouted once it lasts two probes: a gate that starts at zero (the smear's,
        # --zero-init's projections) holds what is behind it at exactly zero for one step.
        dead = {n for n, f in flagged.items() if "dead" in f}
        alarming = {n: f for n, f in flagged.items()
                    if set(f) & {"exploding", "nonfinite"} or n in dead & self.dead}
        self.dead = dead
        if alarming:
            log.warning(f"step {step}: gradient flow: "
                        + ", ".join(f"{n} {'/'.join(f)}" for n, f in list(alarming.items())[:4])
                        + (" ..." if len(alarming) > 4 else ""))
        if self.tb:
            self.tb.layer_grad_norms(step, layers)

    def on_row(self, row):
        if "val_loss" in row:
            self.plot()

    def state_dict(self) -> dict:
        return {"dead": sorted(self.dead)}

    def load_state_dict(self, state: dict) -> None:
        self.dead = set(state["dead"])

    def plot(self):
        history = read_jsonl(self.run.folder / "gradflow.jsonl")
        if history:
            plot_layer_norms(history, self.run.folder / "gradflow.png")

    def end(self, summary):
        for h in self.handles:
            h.remove()
        self.plot()


class AttentionProbe(EveryNSteps):
    """Attention heatmaps of every layer and head for a fixed text, every N steps."""

    def __init__(self, every: int, text: str, tensorboard=None):
        super().__init__(every)
        self.text = text
        self.tb = tensorboard
        self.ids: list[int] = []  # the text's tokens, at most one block

    def start(self, run):
        for step, shot in self.shots(run):  # those after the checkpoint: a resume draws them
            if step >= run.state.step:
                shot.unlink()
        super().start(run)
        self.ids = readable_ids(run.tokenizer, self.text, run.model.block_size)
        if not self.ids:
            log.warning("attention probe off: no character of its text is in the vocabulary")
        elif (shown := run.tokenizer.decode(self.ids)) != self.text:
            log.warning(f"attention probe: its text is drawn as {shown!r} (the characters the "
                        f"vocabulary has, one block at most)")

    @staticmethod
    def shots(run) -> list[tuple[int, Path]]:
        return [(int(shot.stem.removeprefix("step-")), shot)
                for shot in (run.folder / "attention").glob("step-*.png")]

    def kept_records(self, run) -> list[int]:
        return [step for step, _ in self.shots(run)]

    def on_row(self, row):
        if self.ids:
            super().on_row(row)

    def end(self, summary):
        if self.ids:
            super().end(summary)

    def record(self, step: int) -> None:
        idx = torch.tensor([self.ids], device=self.run.device)  # (1, T)
        maps = attention_maps(self.run.final_model, idx)
        path = self.run.folder / "attention" / f"step-{step:06d}.png"
        plot_attention(maps, token_labels(self.run.tokenizer, self.ids), path,
                       title=f"attention at step {step}")
        if self.tb:
            self.tb.image("attention", path, step)


class SamplesProbe(EveryNSteps):
    """A short seeded sample every N steps, to read how the text improves (samples.jsonl)."""

    log_files = ("samples.jsonl",)
    length = 200  # tokens after the prompt

    def record(self, step: int) -> None:
        text = sample_text(self.run.final_model, self.run.tokenizer, None, self.length,
                           seed=self.run.cfg.train.seed)
        append_line(self.run.folder / "samples.jsonl",
                    json.dumps({"step": step, "text": text}, ensure_ascii=False))


class TensorBoardProbe(Probe):
    """TensorBoard event files in <run>/tensorboard (view with `tensorboard --logdir runs`):
    every metrics row as scalars, and the per-layer gradient norms and attention images the
    other probes hand it, so it goes after them. TensorBoard is an optional dependency
    (`pip install -e '.[tensorboard]'`): it is checked for when the probe is made."""

    SCALARS = {"train_loss": "loss/train", "val_loss": "loss/val", "val_bpb": "bpb/val",
               "lr": "lr", "grad_norm": "grad_norm", "tokens_per_s": "tokens_per_s", "mfu": "mfu"}

    def __init__(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise MiniGPTError("--tensorboard needs the tensorboard package: "
                               "pip install 'minigpt-loop[tensorboard]'") from None
        self.summary_writer = SummaryWriter
        self.writer = None

    def check(self, folder):
        where = str(folder / "tensorboard")
        if printable(where) != where:
            raise MiniGPTError(f"--tensorboard cannot write under {printable(where)}: "
                               f"TensorBoard takes only paths that are UTF-8; rename the folder")

    def start(self, run):
        super().start(run)
        folder = run.folder / "tensorboard"
        # events from the step resumed at on are dropped: they come again (those of a stretch
        # after the checkpoint that a crash cut short would otherwise stay, doubled)
        self.writer = self.summary_writer(log_dir=str(folder), purge_step=run.state.step)

    def on_row(self, row):
        for key, tag in self.SCALARS.items():
            if key in row:
                self.writer.add_scalar(tag, row[key], row["step"])

    def layer_grad_norms(self, step: int, norms: dict[str, float]) -> None:
        for layer, value in norms.items():
            self.writer.add_scalar(f"grad_norm/{layer}", value, step)

    def image(self, tag: str, png_path: Path, step: int) -> None:
        """Add a PNG written by one of the plotting functions."""
        import matplotlib.image

        pixels = matplotlib.image.imread(str(png_path))[..., :3]  # (H, W, 3) floats in [0, 1]
        self.writer.add_image(tag, pixels, step, dataformats="HWC")

    def end(self, summary):
        self.writer.close()


def standard_probes(cfg: RunConfig) -> list[Probe]:
    """The probes a config's [diag] settings ask for (none set: the defaults)."""
    d = cfg.extra.get("diag", DiagConfig())
    tb = TensorBoardProbe() if d.tensorboard else None
    probes: list[Probe] = [CurvesProbe(d.log_scale)] if d.plots else []
    if d.gradflow_every:
        probes.append(GradFlowProbe(d.gradflow_every, tb))
    if d.sample_every:
        probes.append(SamplesProbe(d.sample_every))
    if d.attention_every:
        probes.append(AttentionProbe(d.attention_every, d.attention_text, tb))
    if tb:
        probes.append(tb)
    return probes
