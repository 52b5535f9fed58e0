"""Where a run happens: the device it asks for, and the versions and threads it ran with."""

from __future__ import annotations

import os
import platform
import sys

import numpy as np
import torch

from minigpt.errors import MiniGPTError


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA, then Apple's MPS, then the CPU; a named device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):  # meta, xpu: not here
        raise MiniGPTError(f"unknown device {name!r} (use auto, cpu, cuda, cuda:N or mps)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MiniGPTError(f"device {name!r} asked for, but this PyTorch sees no CUDA GPU")
    if device.type == "cuda" and (device.index or 0) >= (n := torch.cuda.device_count()):
        raise MiniGPTError(f"device {name!r} asked for, but this machine has {n} CUDA GPU(s): "
                           f"cuda:0 to cuda:{n - 1}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise MiniGPTError("device 'mps' asked for, but MPS is not available here")
    return device


def describe(device: torch.device) -> dict:
    """Versions, device and threads: logged at the start of every run, saved in config.json."""
    from minigpt import __version__

    info = {
        "minigpt": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info
