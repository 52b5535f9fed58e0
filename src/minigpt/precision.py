"""The precision a run's matmuls compute in: float32, or bfloat16 where it is measured faster.

Weights, gradients and optimizer state stay float32 either way. bfloat16 means autocast around
the forward: every Linear multiplies in bf16, while the residual stream, the loss and attention
(minigpt.model.attend, on a CPU) stay float32.

--dtype auto decides:

  CUDA  bfloat16 where the GPU supports it, else float32.
  CPU   float32 at once where bf16 is not native. An x86 CPU's flags say (Linux's avx512_bf16,
        amx_bf16; AVX2 alone runs bf16 matmuls tens of times slower), and nothing is timed:
        on a busy host any timing can read anything, and an AVX2 CPU that took bf16 on such
        a reading would train ten times slower until its cache was deleted. Where there are
        no x86 flags (ARM, macOS), a bf16 and a float32 matmul are compared, and bf16 at half
        float32's speed or less is not native. Where bf16 is native, the run's own forward
        and backward are timed both ways (by turns), and bf16 is taken only when at least
        5 % faster, so that the choice never makes a run slower than float32. A run whose
        batch or sequence length starts smaller (--batch-start, --block-start) is timed at its
        first size too, and bf16 must win at both: on small tensors bf16 can lose (the fast
        preset's 20 s model at batch 4: 5.8 ms a forward and backward in bf16 against 4.9 in
        float32, on an AVX-512 BF16 EPYC). The figures are cached per machine, thread count
        and run shape.
  MPS   float32.

The same cache (precision.json) keeps the highest matmul peak a CPU has shown, MFU's
denominator (`highest_peak`).
"""

from __future__ import annotations

import json
import logging
import math
import platform
import time
from dataclasses import fields
from pathlib import Path

import torch

from minigpt.errors import MiniGPTError
from minigpt.files import atomic_write_text, read_json
from minigpt.step import MicroSteps

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
FASTER = 0.95  # bf16 must take at most this fraction of float32's step time
NATIVE = 0.5  # where no flags say, bf16 matmuls at or below this fraction of float32's speed
# are emulated (native bf16 at the gate's small size can read close to float32: a tie is no
# answer, and the step is timed)
NATIVE_FLAGS = {"avx512_bf16", "amx_bf16"}  # an x86 CPU that multiplies in bf16 (Linux's names)
PROBE_MATMUL = 256  # the gate's square matmul: a few ms in bf16 even without native bf16
PROBE_BATCH = 64  # the step is timed on at most this many sequences: the memory check comes later
PROBE_SECONDS = 0.1  # each dtype's passes take at least this long in all (a 2-core CPU's
# scheduler can stall a pass of a few ms tenfold; the fastest of many is the step's own time)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def choose_dtype(requested: str, device: torch.device, model: torch.nn.Module,
                 batch_size: int = 1, cache: Path | None = None,
                 first: tuple[int, int] | None = None) -> tuple[torch.dtype, str]:
    """The forward's compute dtype, and why, in a few words for the start log. On a CPU,
    'auto' probes `model` at its block size and `batch_size`, and at `first`, the (B, T) of
    the run's first steps where its schedules start smaller (`cpu_choice`)."""
    if requested != "auto":
        if requested not in DTYPES:
            raise MiniGPTError(f"unknown dtype {requested!r} (use auto, float32 or bfloat16)")
        return DTYPES[requested], "as set"  # (by --dtype, or by the run resumed)
    if device.type == "cuda":  # bf16 tensor cores: Ampere (compute capability 8.0) on; older
        # GPUs emulate bf16 (torch.cuda.is_bf16_supported() says yes), slower than float32
        if torch.cuda.get_device_capability(device) >= (8, 0):
            return torch.bfloat16, "auto: the GPU has bf16"
        return torch.float32, "auto: the GPU has no bf16 tensor cores"
    if device.type != "cpu":
        return torch.float32, "auto"
    return cpu_choice(model, batch_size, cache, first)


def cpu_choice(model: torch.nn.Module, batch_size: int, cache: Path | None,
               first: tuple[int, int] | None = None) -> tuple[torch.dtype, str]:
    """'auto' on a CPU: float32 where bf16 is not native (`native_bf16`); else the step times
    for the run's full shape and its `first`, from the cache or measured and added to it, then
    `decide`. The step is timed on at most PROBE_BATCH sequences, so that a batch too big for
    the machine is refused by the memory check (which follows the dtype) instead of exhausting
    memory here."""
    answers, before = read_cache(cache)
    machine = this_machine(answers)
    native, why_not = native_bf16(machine)
    if not native:
        write_cache(cache, answers, before)
        return torch.float32, f"auto: no native bf16, {why_not}"
    if not isinstance(machine.get("steps"), dict):
        machine["steps"] = {}
    steps, timings = machine["steps"], []
    shapes = [(batch_size, model.config.block_size)] + ([first] if first else [])
    for batch, length in dict.fromkeys((min(b, PROBE_BATCH), t) for b, t in shapes):
        key = shape_key(model, batch, length)
        if not figures(steps.get(key), "bf16_step_s", "fp32_step_s"):  # said: a big model's
            # passes take minutes; the count names the model (plan times several)
            log.info(f"--dtype auto: timing a step of {batch} x {length} of the "
                     f"{model.num_params():,}-parameter model in float32 and in bfloat16, "
                     f"once for this machine and shape")
            steps[key] = step_times(model, batch, length)
        timings.append(((batch, length), steps[key]))
    write_cache(cache, answers, before)
    return decide(timings)


def native_bf16(machine: dict) -> tuple[bool, str]:
    """Whether this CPU multiplies in bf16 natively, and where not, why it is thought not to.
    An x86 CPU's flags say (avx512_bf16 or amx_bf16), and nothing is measured; where there are
    none to read (ARM, macOS), the gate (`matmul_rates`, kept in the cache's `machine` entry):
    bf16 matmuls at more than NATIVE times float32's speed."""
    flags = cpu_flags()
    if flags is not None:
        return bool(flags & NATIVE_FLAGS), "the CPU's flags name neither avx512_bf16 nor amx_bf16"
    if not figures(machine, "bf16_matmul_flops", "fp32_matmul_flops"):  # new, or damaged
        machine |= matmul_rates()
    bf16, fp32 = machine["bf16_matmul_flops"], machine["fp32_matmul_flops"]
    return bf16 > NATIVE * fp32, (f"bf16 matmuls {bf16 / 1e9:,.1f} GFLOP/s against float32's "
                                  f"{fp32 / 1e9:,.0f}")


def highest_peak(device: torch.device, dtype: torch.dtype, cache: Path | None) -> float:
    """MFU's denominator (minigpt.performance.peak_flops, measured now); on a CPU, the highest
    this machine (its CPU, torch and threads) has shown for a run in dtype, which the cache
    keeps: a peak read while other work held the cores is not the denominator of every later
    run, so MFU stays below 100 % and compares between runs and commands."""
    from minigpt.performance import peak_flops

    peak = peak_flops(device, dtype)
    if device.type != "cpu":
        return peak
    answers, before = read_cache(cache)
    machine, key = this_machine(answers), f"peak_flops_{dtype_name(dtype)}"
    if not figures(machine, key) or machine[key] < peak:
        machine[key] = peak
    write_cache(cache, answers, before)
    kept = [k for k in {key, "peak_flops_float32"} if figures(machine, k)]  # (bf16's peak is
    return max(machine[k] for k in kept)  # the better of the two, as peak_flops measures it)


def read_cache(cache: Path | None) -> tuple[dict, str]:
    """precision.json's figures by machine ({} where there is none, or it cannot be read: they
    are measured again), and its text as read, for `write_cache` to compare."""
    answers = read_json(cache) if cache is not None else {}
    answers = answers if isinstance(answers, dict) else {}  # (another program's JSON, or none)
    return answers, json.dumps(answers)


def this_machine(answers: dict) -> dict:
    """The cache's entry for this machine, made (or remade, where damaged) empty."""
    if not isinstance(answers.get(machine_key()), dict):
        answers[machine_key()] = {}
    return answers[machine_key()]


def write_cache(cache: Path | None, answers: dict, before: str) -> None:
    """The figures back into precision.json, where they changed (a read-only cache: the next
    run measures again)."""
    if cache is not None and json.dumps(answers) != before:
        try:
            atomic_write_text(cache, json.dumps(answers, indent=1))
        except OSError:
            pass


def figures(entry, *keys: str) -> bool:
    """Whether a cache entry holds each of `keys` as a number (else it is measured again)."""
    return isinstance(entry, dict) and all(  # (JSON reads Infinity: a damaged figure)
        type(entry.get(key)) in (int, float) and 0 < entry[key] < math.inf for key in keys)


def decide(timings: list[tuple[tuple[int, int], dict]]) -> tuple[torch.dtype, str]:
    """A CPU with native bf16: its answer from the `step_times` of each (B, T) timed, the run's
    full shape first: bf16 only where the training step is at least 5 % faster, at every
    shape."""
    why = "auto: forward and backward " + ", ".join(
        f"of {batch}x{length} {milliseconds(t['bf16_step_s'])} ms in bf16, "
        f"{milliseconds(t['fp32_step_s'])} in float32" for (batch, length), t in timings)
    if all(t["bf16_step_s"] <= FASTER * t["fp32_step_s"] for _, t in timings):
        return torch.bfloat16, why
    return torch.float32, why + "; bf16 must be 5 % faster" + " at each" * (len(timings) > 1)


def milliseconds(seconds: float) -> str:
    """A time in ms to about three figures, never in e-notation: '7.13', '504', '1,040'."""
    ms = seconds * 1e3
    return f"{ms:.3g}" if ms < 999.5 else f"{ms:,.0f}"


def matmul_rates() -> dict:
    """The probe's gate: FLOP/s of a small square matmul in bf16 and in float32."""
    from minigpt.performance import matmul_peak

    cpu = torch.device("cpu")
    return {"bf16_matmul_flops": matmul_peak(cpu, torch.bfloat16, 0.1, PROBE_MATMUL),
            "fp32_matmul_flops": matmul_peak(cpu, torch.float32, 0.1, PROBE_MATMUL)}


def step_times(model: torch.nn.Module, batch_size: int, length: int,
               least_s: float = PROBE_SECONDS, most: int = 50) -> dict:
    """The probe proper: the run's forward + backward on `batch_size` random sequences of
    `length` tokens, a float32 pass and a bf16 pass by turns (so that a burst of other work
    slows both alike, not all of one), each dtype's fastest pass after a warm-up, once each
    has had `least_s` seconds and 3 passes (at most `most`: a few ms a step needs many). The
    weights do not change (no optimizer step), the gradients are dropped after, and the
    global random state is left as it was (dropout draws from it)."""
    cfg = model.config
    idx = torch.randint(cfg.vocab_size, (batch_size, length),
                        generator=torch.Generator().manual_seed(0))  # (B, T)
    best = {torch.float32: math.inf, torch.bfloat16: math.inf}
    spent = dict.fromkeys(best, 0.0)
    with torch.random.fork_rng():
        for i in range(most + 1):
            for dtype in best:
                seconds = pass_seconds(model, idx, dtype)
                if i > 0:  # the first pass of each picks kernels and allocates
                    best[dtype], spent[dtype] = min(best[dtype], seconds), spent[dtype] + seconds
            if i >= 3 and min(spent.values()) >= least_s:
                break
    model.zero_grad(set_to_none=True)
    return {"fp32_step_s": best[torch.float32], "bf16_step_s": best[torch.bfloat16]}


def pass_seconds(model: torch.nn.Module, idx: torch.Tensor, dtype: torch.dtype) -> float:
    """Seconds of one forward (under autocast to dtype, none for float32) and backward."""
    start = time.perf_counter()
    with MicroSteps(dtype=dtype).autocast(idx.device):
        _, loss = model(idx, idx)
    loss.backward()
    return time.perf_counter() - start


def machine_key() -> str:
    """What the matmul rates depend on: the CPU, torch and its threads."""
    return f"{cpu_name()} | torch {torch.__version__}, {torch.get_num_threads()} threads"


def shape_key(model: torch.nn.Module, batch_size: int, length: int | None = None) -> str:
    """What the step times depend on besides the machine: the model's and the batch's shape
    (`length` tokens a sequence; the block size when None), and the model's other options
    that are not at their defaults (a bigram table, value embeddings, ...)."""
    cfg = model.config
    shown = {"n_layer", "n_embd", "n_head", "mlp", "pos", "vocab_size", "block_size"}
    options = "".join(f" {f.name}={getattr(cfg, f.name)}" for f in fields(cfg)
                      if f.name not in shown and getattr(cfg, f.name) != f.default)
    return (f"{cfg.n_layer}x{cfg.n_embd} h{cfg.n_head} {cfg.mlp} {cfg.pos} vocab {cfg.vocab_size}"
            f"{options}, batch {batch_size}x{length or cfg.block_size}")


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else what platform knows."""
    return cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_flags() -> set[str] | None:
    """An x86 CPU's feature flags, as Linux lists them (/proc/cpuinfo's "flags" line); None
    where there is no such line (ARM names its "Features"; macOS has no /proc)."""
    flags = cpuinfo("flags")
    return None if flags is None else set(flags.split())


def cpuinfo(field: str) -> str | None:
    """The first CPU's `field` in Linux's /proc/cpuinfo ("model name", "flags"), stripped;
    None where there is no such file or line."""
    path = Path("/proc/cpuinfo")
    for line in path.read_text().splitlines() if path.exists() else []:
        name, _, value = line.partition(":")
        if name.strip() == field:
            return value.strip()
    return None


def bf16_flags() -> list[str]:
    """The CPU's native-bf16 feature flags (Linux's names: avx512_bf16, amx_bf16, amx_tile),
    for the figures' captions: none on an AVX2-only CPU, or where there are no x86 flags."""
    return sorted((cpu_flags() or set()) & (NATIVE_FLAGS | {"amx_tile"}))
