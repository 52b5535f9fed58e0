"""How fast a run goes: compilation chosen per device, the backend switches that go with it,
the memory a run needs, and the arithmetic behind MFU (model FLOPs utilisation). The compute
precision is minigpt.precision's choice.

The choices 'auto' makes were measured (benchmarks/train_step.py; figures in the README):

  CPU   not compiled: torch.compile measured no faster than eager for this model.
  CUDA  torch.compile, TF32 matmuls for what stays fp32; scaled_dot_product_attention picks
        its flash kernel for bf16 by itself.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import replace

import torch

from minigpt.config import ModelConfig, RunConfig
from minigpt.errors import MiniGPTError
from minigpt.evaluate import WHOLE_SPLIT_BATCH
from minigpt.model import SMEAR_CHANNELS, count_params, mlp_hidden


def choose_compile(requested: str, device: torch.device) -> bool:
    """Whether to run the model through torch.compile: 'auto' means on CUDA only."""
    if requested == "auto":
        return device.type == "cuda"
    return requested == "on"


def configure_backends(device: torch.device) -> None:
    """TF32 for float32 matmuls and convolutions on CUDA (Ampere and later); nothing elsewhere."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.fp32_precision = "tf32"  # the API since torch 2.9; the
        torch.backends.cudnn.conv.fp32_precision = "tf32"  # allow_tf32 flags are deprecated


def train_flops_per_token(cfg: ModelConfig) -> int:
    """FLOPs of one training step (forward + backward) per token: 6 per weight of every Linear
    (2 forward, 4 backward) plus attention's q k^T and att v, counted over the whole T x T
    square as nanoGPT and PaLM do (so 12 L T C, at the full block: --block-start's shorter
    sequences cost less). Embedding lookups (the bigram's and value
    embeddings too), norms, activations and rotary embeddings are not counted."""
    C, L, V, T = cfg.n_embd, cfg.n_layer, cfg.vocab_size, cfg.block_size
    mlp = (3 if cfg.mlp == "swiglu" else 2) * C * mlp_hidden(cfg)  # its matrices' weights
    linear_weights = L * (4 * C * C + mlp) + C * V  # qkvo + MLP per block; lm_head
    linear_weights += min(SMEAR_CHANNELS, C) if cfg.smear else 0  # the smear's gate
    return 6 * linear_weights + 12 * L * T * C


def peak_memory(cfg: RunConfig, resident: int, n_params: int,
                dtype: torch.dtype = torch.float32) -> dict[str, int]:
    """An estimate, in bytes, of a process's peak memory while it trains: what it holds now
    (`resident`: the interpreter, torch, the model, the data's pages), the optimizer's state and
    the gradients, and the activations backward needs, kept for the batch x block tokens of a
    step, with the logits and their gradient, and an evaluation batch's.

    In float32 every activation takes 4 bytes. Under bf16 autocast the MLP's take 2 (its
    Linear outputs and activation are bf16), while the residual stream, the norms and, on a CPU,
    attention stay float32 and the bf16 copies of the projections' inputs add about what bf16
    q, k and v save; the bf16 copies of the weights add 2 bytes a parameter. (Measured for the
    lesson's model and a 6 x 128 one at batch 256: a bf16 step's peak 10-35 % below float32's,
    and this estimate 7 % under it.)

    Per token and layer the activations are about 8 C (normalisations, q, k, v, the attention
    output) plus the MLP's hidden width three times over; per token the head adds 4 vocab and
    4 C. On top, the C allocator's slack: glibc keeps some of the blocks that backward frees
    and reuses them unevenly, so the same step's peak varies from run to run (measured 2.7 to
    3.4 GiB for one configuration whose working set, with trimming forced, is 1.9 GiB); a
    quarter of the activations puts the estimate in the middle of that range. Measured against
    the peak resident memory of child processes (tests/test_memory.py), it lands within 30 % from
    batch 256 up; in smaller runs what the first step pages in (code, kernel buffers: up to a
    quarter of a GB, by CPU) can outweigh the activations."""
    m, t = cfg.model, cfg.train
    C, L, V = m.n_embd, m.n_layer, m.vocab_size
    hidden = mlp_hidden(m)
    first = 2 * hidden if m.mlp == "swiglu" else hidden  # ff.0's output width
    mlp_bytes = 4 if dtype == torch.float32 else 2
    per_token = 4 * (L * 8 * C + 4 * V + 4 * C)  # bytes
    per_token += mlp_bytes * L * (first + 2 * hidden)
    state = {"adamw": 2, "sgd": 1, "muon": 1.5}[t.optimizer]  # tensors per parameter
    weights = 0 if dtype == torch.float32 else 2 * n_params  # autocast's bf16 copies
    return {
        "resident": resident,
        "gradients and optimizer state": int(4 * n_params * (1 + state)) + weights,
        "activations": t.batch_size * m.block_size * per_token,
        "allocator slack": t.batch_size * m.block_size * per_token // 4,
        "evaluation": 4 * WHOLE_SPLIT_BATCH * m.block_size * (6 * C + 2 * V),
    }


def check_memory(cfg: RunConfig, device: torch.device, n_params: int,
                 dtype: torch.dtype = torch.float32) -> None:
    """Refuse, before the first step, a run whose peak memory cannot fit (`peak_memory`),
    rather than be killed part-way, or push a laptop into swapping: the estimate, what is
    available, and what to change, in one line. On a CPU every process torchrun started on
    this machine (LOCAL_WORLD_SIZE) needs as much."""
    resident, available, where, processes = memory_at(device)
    parts = peak_memory(cfg, resident, n_params, dtype)
    need = (sum(parts.values()) - resident) * processes
    if need > available:
        t, gib = cfg.train, 2**30
        raise MiniGPTError(
            f"this run needs about {need / gib:.1f} GiB more memory at its peak (activations "
            f"{parts['activations'] / gib:.1f} GiB for batch {t.batch_size} x block "
            f"{cfg.model.block_size}), and {available / gib:.1f} GiB is {where}: lower "
            f"--batch-size or --block-size, or keep the batch with --grad-accum N and "
            f"--batch-size {t.batch_size}/N")


def fits_in_memory(cfg: RunConfig, device: torch.device, n_params: int,
                   dtype: torch.dtype = torch.float32) -> bool:
    """Whether check_memory lets the run start."""
    try:
        check_memory(cfg, device, n_params, dtype)
    except MiniGPTError:
        return False
    return True


def check_model_fits(cfg: RunConfig, device: torch.device) -> None:
    """Refuse, before it is made, a model whose weights, gradients and optimizer state alone
    cannot fit (a typo such as --n-embd 65536 would take minutes to allocate, then swap);
    check_memory, once the model is made, counts the rest. Past 64 blocks the parameters are
    those of 2 and 3 blocks, extrapolated (counting 100,000 blocks takes minutes even on the
    meta device): the count within a few scalars, less any value embeddings beyond 2."""
    m = cfg.model
    if m.n_layer <= 64:
        n_params = count_params(m)
    else:
        two, three = (count_params(replace(m, n_layer=n, value_embeds=min(m.value_embeds, 2)))
                      for n in (2, 3))
        n_params = two + (m.n_layer - 2) * (three - two)
    _, available, where, processes = memory_at(device)
    training = peak_memory(cfg, 0, n_params)["gradients and optimizer state"]  # (float32)
    need = (4 * n_params + training) * processes  # the weights too
    if need > available:
        raise MiniGPTError(f"a model of {n_params:,} parameters ({m.n_layer} layers, {m.n_embd} "
                           f"wide) needs about {need / 2**30:,.1f} GiB for its weights, "
                           f"gradients and optimizer state, and {available / 2**30:.1f} GiB is "
                           f"{where}: lower --n-layer or --n-embd")


def memory_at(device: torch.device) -> tuple[int, int, str, int]:
    """The bytes this process holds, those it may still use (on a CPU: without swapping),
    where, in words, and how many processes on this machine need as much (torchrun's)."""
    if device.type == "cuda":
        available = torch.cuda.mem_get_info(device)[0]  # free device memory
        return torch.cuda.memory_allocated(device), available, f"free on {device}", 1
    import psutil

    processes = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", 1)))
    return (psutil.Process().memory_info().rss, psutil.virtual_memory().available, "available",
            processes)


def best_rate(work: Callable[[], object], seconds: float, bursts: int = 10) -> float:
    """Calls of work() per second in the fastest of `bursts` back-to-back bursts that last
    about `seconds` in all (each burst makes at least one call). The fastest burst, not the
    mean: a peak is what the hardware can do, and a cold start, a clock still ramping up or
    another process only ever slow a burst down. (Measured on a shared 2-core machine, the
    mean over 1 s read 13-91 GFLOP/s where the best burst read about 150.)"""
    best, end = 0.0, time.perf_counter() + seconds
    while True:
        calls, start = 0, time.perf_counter()
        while True:
            work()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= seconds / bursts:
                break
        best = max(best, calls / elapsed)
        if time.perf_counter() >= end:
            return best


def matmul_peak(device: torch.device, dtype: torch.dtype, seconds: float = 0.2,
                n: int | None = None) -> float:
    """Measured FLOP/s of an n x n matmul in dtype on device (the best of short bursts)."""
    # by default big enough on a GPU that waiting for each product costs ~1% of its time; 512
    # on a CPU, where a bf16 product can run 100x slower than fp32
    n = n or (8192 if device.type == "cuda" else 512)
    g = torch.Generator(device).manual_seed(0)  # not the global one, which dropout draws from
    a = torch.randn(n, n, device=device, generator=g).to(dtype)
    b = torch.randn(n, n, device=device, generator=g).to(dtype)

    def product() -> None:
        a @ b
        wait_for(device)

    product()  # warm-up: the library picks its kernel
    return 2 * n**3 * best_rate(product, seconds)


def wait_for(device: torch.device) -> None:
    """Return once the device has done the work queued on it: a GPU runs behind the Python that
    queues its work (a CPU computes as it is called: nothing to wait for)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def peak_flops(device: torch.device, dtype: torch.dtype, seconds: float = 0.2) -> float:
    """The denominator of MFU: the best matmul rate measured in float32 or in dtype. (On CPUs
    without native bf16, bf16 matmuls run far below fp32, and their own peak would flatter a
    bf16 run.)"""
    peak = matmul_peak(device, torch.float32, seconds)
    if dtype != torch.float32:
        peak = max(peak, matmul_peak(device, dtype, seconds))
    return peak


def mfu(tokens_per_s: float, flops_per_token: int, peak: float) -> float:
    """Model FLOPs utilisation: achieved training FLOP/s as a fraction of the measured peak."""
    return tokens_per_s * flops_per_token / peak if peak > 0 else 0.0
