"""Data parallel training over processes, on PyTorch's own engine (torch.distributed + DDP).

    torchrun --nproc_per_node=N -m minigpt train ...

torchrun starts N copies of the command and tells each its RANK, LOCAL_RANK and WORLD_SIZE in
the environment. Each process holds the whole model, draws its own batches, and DDP averages
the gradients across processes during backward, so every process takes the same optimizer
step. NCCL carries the gradients between GPUs, gloo between CPU processes. Every process
evaluates the same validation batches, so all make the same early-stopping decision; rank 0
alone logs, writes files, and makes the final whole-split evaluation and sample.

Without torchrun's variables (or with WORLD_SIZE=1) this is one process and every function here
does nothing special.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from minigpt.errors import MiniGPTError

# how long the other processes wait for rank 0's work alone: reading and tokenizing a new --text
# (a BPE vocabulary learnt first) or the final whole-split evaluation; NCCL's own limit is 10
# minutes
HOST_WAIT = timedelta(hours=6)
HOST = {}  # "group": the gloo group the host-side agreements go through (start makes it)


@dataclass(frozen=True)
class World:
    """Who this process is among the processes training together."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world_from_env() -> World:
    """The process's place as torchrun's environment variables say (one process without them)."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        local_size = int(os.environ.get("LOCAL_WORLD_SIZE", size))  # (processes on this machine)
    except ValueError:
        raise MiniGPTError("RANK, LOCAL_RANK, WORLD_SIZE and LOCAL_WORLD_SIZE must be integers "
                           "(torchrun sets them; unset them for one process)") from None
    if not (0 <= rank < size and 0 <= local < local_size <= size):
        raise MiniGPTError(f"RANK {rank}, LOCAL_RANK {local}, WORLD_SIZE {size} and "
                           f"LOCAL_WORLD_SIZE {local_size} do not fit together (0 <= RANK < "
                           f"WORLD_SIZE, 0 <= LOCAL_RANK < LOCAL_WORLD_SIZE <= WORLD_SIZE); "
                           f"torchrun sets them: unset them for one process")
    return World(rank, size, local)


def start(world: World, device: torch.device) -> torch.device:
    """Join the process group (NCCL on CUDA, gloo on CPU) and return this process's device:
    with CUDA, GPU number LOCAL_RANK (one process: the GPU it names), which becomes the
    process's current GPU, for the rest of the process. The processes also share
    a gloo group on the host, which their agreements go through (`agree`, `barrier`): a GPU's
    work never waits for them, and they may wait for rank 0 up to HOST_WAIT."""
    if device.type == "cuda" and (world.enabled or device.index is not None):
        device = torch.device("cuda", world.local_rank if world.enabled else device.index)
        torch.cuda.set_device(device)  # (else CUDA's context and pinned memory use GPU 0)
    if not world.enabled:
        return device
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=world.rank, world_size=world.size,
                                device_id=device if device.type == "cuda" else None)
    HOST["group"] = dist.new_group(backend="gloo", timeout=HOST_WAIT)
    return device


def outlast_torchrun() -> None:
    """Ignore SIGTERM from here on: torchrun sends it to every process once one has died, and
    this one has yet to say why it stops (torchrun's SIGKILL follows 30 s later)."""
    if threading.current_thread() is threading.main_thread():  # (where signals are set)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def stop(world: World) -> None:
    """Leave the process group (after the last collective call)."""
    if world.enabled and dist.is_initialized():
        HOST.clear()
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, world: World, device: torch.device) -> torch.nn.Module:
    """The model in DDP's wrapper, which averages gradients across processes in backward; rank
    0's initial weights are broadcast to the others. One process: the model itself."""
    if not world.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def mean(value: torch.Tensor, world: World) -> torch.Tensor:
    """The mean of a tensor over all processes (every process must call this)."""
    if not world.enabled:
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / world.size


def agree(values: list[float], world: World) -> list[float]:
    """The largest of every process's values, each, on every process, in one collective call
    (every process must call this; one process: the values themselves). Used for the training
    clock and the stop after a signal, so that all processes follow the same learning-rate
    schedule and stop after the same step."""
    if not world.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64)  # on the host: no GPU waits for it
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=HOST.get("group"))
    return t.tolist()


def any_process(flag: bool, world: World) -> bool:
    """True on every process if it is True on any (every process must call this)."""
    return bool(agree([float(flag)], world)[0])


def gather(obj, world: World) -> list:
    """Every process's obj, in rank order, on every process (every process must call this)."""
    if not world.enabled:
        return [obj]
    out = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def barrier(world: World) -> None:
    """Wait until every process has reached this call (every process must call this)."""
    if world.enabled:
        dist.barrier(group=HOST.get("group"))


@contextlib.contextmanager
def main_first(world: World):
    """Rank 0 runs the block first (e.g. writing a token cache), then the others run it (and
    find the files made). Where rank 0's block fails (a missing text, say), the others do not
    run theirs: they stop quietly, and rank 0 says why."""
    if not world.is_main and any_process(False, world):
        raise MiniGPTError("the first process failed; it says why")
    try:
        yield
    except BaseException:
        if world.is_main:
            any_process(True, world)
        raise
    if world.is_main:
        any_process(False, world)
