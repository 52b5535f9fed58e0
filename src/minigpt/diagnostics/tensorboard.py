"""TensorBoard output for a run (`minigpt train --tensorboard`): scalars for the losses, learning
rate, gradient norm, throughput and MFU, per-layer gradient norms, and attention images, written to
`<run>/tensorboard/`. View with `tensorboard --logdir runs`.

TensorBoard is an optional dependency (`pip install -e '.[tensorboard]'`).
"""

from __future__ import annotations

from pathlib import Path

from minigpt.errors import MiniGPTError

SCALARS = {"train_loss": "loss/train", "val_loss": "loss/val", "lr": "lr",
           "grad_norm": "grad_norm", "tokens_per_s": "tokens_per_s", "mfu": "mfu"}


class TensorBoardLog:
    """A thin wrapper over torch's SummaryWriter with minigpt's tag names; `open` it on the
    run folder before writing (the package is checked for at once, the folder made then)."""

    def __init__(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise MiniGPTError("--tensorboard needs the tensorboard package: "
                               "pip install tensorboard") from None
        self.summary_writer = SummaryWriter
        self.writer = None

    def open(self, run_dir: str | Path) -> None:
        self.writer = self.summary_writer(log_dir=str(Path(run_dir) / "tensorboard"))

    def metrics(self, row: dict) -> None:
        for key, tag in SCALARS.items():
            if key in row:
                self.writer.add_scalar(tag, row[key], row["step"])

    def layer_grad_norms(self, step: int, norms: dict[str, float]) -> None:
        for layer, value in norms.items():
            self.writer.add_scalar(f"grad_norm/{layer}", value, step)

    def image(self, tag: str, png_path: str | Path, step: int) -> None:
        """Add a PNG written by one of the plotting functions."""
        import matplotlib.image

        pixels = matplotlib.image.imread(str(png_path))[..., :3]  # (H, W, 3) floats in [0, 1]
        self.writer.add_image(tag, pixels, step, dataformats="HWC")

    def close(self) -> None:
        self.writer.close()
