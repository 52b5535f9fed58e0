"""Training-step speed: the lesson's code against minigpt's default and its other paths.

In one process, for one configuration (the seed model by default; --preset for others), it
times a whole training step, batch included, of

  lesson          the lesson's model, get_batch and loop (minigpt.lesson): three Linear
                  q/k/v, masked_fill attention, a Python-list batch, AdamW (foreach), no clip;
  minigpt         minigpt's default path on this device, built by the library's own functions:
                  SDPA attention, gathered batches, clipping, fused AdamW with the on-device
                  skip of non-finite steps, the dtype and compile choice of 'auto', and
                  the preset's average of the weights (--ema), if any;
  float32-eager   the same, forced to float32 and not compiled;
  foreach-adamw   float32 eager with the multi-tensor (not fused) AdamW and the host-side check
                  of the gradient norm: the path before fused AdamW (with a Muon preset's
                  settings too: AdamW for every weight then, not Muon);
  compile         float32 under torch.compile (compile time reported apart);
  bf16-autocast   bf16 autocast, fp32 weights (what --dtype bfloat16 does);
  bf16-compile    the same under torch.compile (--dtype bfloat16 --compile on);
  bf16-weights    the whole model and its gradients in bf16 (not a training recipe: what the
                  hardware's bf16 could give, for reference).

It also measures the machine's fp32 and bf16 matmul throughput (the best of short bursts,
before the first round and after every round), and reports ms/step, tokens/s,
speed-up over the lesson and MFU (training FLOP/s over the better of the two measured peaks,
whatever the variant's dtype). Steps are timed in rounds, the variants interleaved so that load
from other processes falls on all alike; the first --warmup rounds are not counted; a variant's
figure is the median over rounds of its mean step time. Prints a table, then one JSON line.

    python benchmarks/train_step.py [--preset seed] [--rounds 12] [--steps-per-round 4]
                                    [--variants lesson,minigpt,...] [--device auto]
"""

from __future__ import annotations

import json
import statistics
import time

import numpy as np
import torch
from common import cpu, exit_status, machine, one_of, parser, positive

from minigpt import MiniGPT, lesson, performance, precision, resolve_config
from minigpt.data import Batches, Splits
from minigpt.environment import resolve_device
from minigpt.optim import make_optimizer
from minigpt.run import WeightAverage
from minigpt.step import MicroSteps, train_step

VARIANTS = ("lesson", "minigpt", "float32-eager", "foreach-adamw", "compile", "bf16-autocast",
            "bf16-compile", "bf16-weights")
CORPUS_TOKENS = 1_000_000


def synthetic_tokens(vocab_size: int, seed: int) -> np.ndarray:
    """A random token stream the size of TinyShakespeare's train split (speed does not depend on
    what the tokens are)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, vocab_size, CORPUS_TOKENS, dtype=np.uint16)


def lesson_variant(cfg, tokens: np.ndarray, device: torch.device):
    m = cfg.model
    model = lesson.MiniGPT(m.vocab_size, m.n_embd, m.n_head, m.n_layer, m.block_size).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    data = torch.from_numpy(tokens.astype(np.int64)).to(device)
    def get_batch(split):  # the lesson's get_batch(split), on the train split
        return lesson.get_batch(data, cfg.train.batch_size, m.block_size)

    return lambda: lesson.train_step(model, optimizer, get_batch)


def minigpt_variant(cfg, tokens: np.ndarray, device: torch.device, dtype: str, compile: str,
                    fused: bool = True, bf16_weights: bool = False):
    """minigpt's training step as minigpt.train runs it, from the library's own pieces."""
    t = cfg.train
    model = MiniGPT.from_config(cfg.model).to(device)
    if bf16_weights:
        model = model.to(torch.bfloat16)
    optimizer = make_optimizer(model, t)
    if not fused:  # the multi-tensor AdamW minigpt used before; the host checks the norm
        groups = [{"params": g["params"], "weight_decay": g["weight_decay"]}
                  for g in optimizer.param_groups]
        optimizer = torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), foreach=True)
    batches = Batches(Splits.from_tokens(tokens, 0.1), t.batch_size, cfg.model.block_size,
                      t.seed, device)
    compute, _ = precision.choose_dtype(dtype, device, model, t.batch_size)
    net = torch.compile(model) if performance.choose_compile(compile, device) else model
    micro = MicroSteps(1, compute)
    ema = WeightAverage(model, t.ema) if t.ema and not bf16_weights else None  # (fast's)
    model.train()

    def step():  # the training loop's step (minigpt.step.train_step), and its --ema update
        loss = train_step(net, optimizer, batches, t.grad_clip, micro)[0]
        if ema is not None:
            ema.update(model)
        return loss

    return step, (torch.bfloat16 if bf16_weights else compute)


def build(name: str, cfg, tokens: np.ndarray, device: torch.device):
    """(step function, compute dtype) of a variant."""
    if name == "lesson":
        return lesson_variant(cfg, tokens, device), torch.float32
    if name == "minigpt":
        return minigpt_variant(cfg, tokens, device, cfg.train.dtype, cfg.train.compile)
    if name == "float32-eager":
        return minigpt_variant(cfg, tokens, device, "float32", "off")
    if name == "foreach-adamw":
        return minigpt_variant(cfg, tokens, device, "float32", "off", fused=False)
    if name == "compile":
        return minigpt_variant(cfg, tokens, device, "float32", "on")
    if name == "bf16-autocast":
        return minigpt_variant(cfg, tokens, device, "bfloat16", "off")
    if name == "bf16-compile":
        return minigpt_variant(cfg, tokens, device, "bfloat16", "on")
    if name == "bf16-weights":
        return minigpt_variant(cfg, tokens, device, "bfloat16", "off", bf16_weights=True)
    raise SystemExit(f"unknown variant {name!r} (choose from {', '.join(VARIANTS)})")


def timed(step, n: int, device: torch.device) -> float:
    """Mean seconds per step over n steps, the device drained before the clock stops."""
    start = time.perf_counter()
    for _ in range(n):
        loss = step()
    loss.item()  # waits for the device
    return (time.perf_counter() - start) / n


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--preset", default="seed", help="model and batch shape (default seed)")
    ap.add_argument("--variants", default=list(VARIANTS), type=one_of(VARIANTS),
                    help=f"comma-separated, from {', '.join(VARIANTS)}")
    ap.add_argument("--rounds", type=positive(), default=12, help="timed rounds (default 12)")
    ap.add_argument("--warmup", type=positive(zero=True), default=2,
                    help="rounds not counted (default 2)")
    ap.add_argument("--steps-per-round", type=positive(), default=4,
                    help="steps per round (default 4)")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda (default auto)")
    ap.add_argument("--threads", type=positive(zero=True), default=0,
                    help="torch threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0,
                    help="seed of the weights and the synthetic tokens (default 0)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    performance.configure_backends(device)
    cfg = resolve_config(args.preset)
    torch.manual_seed(args.seed)
    tokens = synthetic_tokens(cfg.model.vocab_size, args.seed)
    names = args.variants
    peaks = {dtype: performance.matmul_peak(device, dtype, seconds=1.0)
             for dtype in (torch.float32, torch.bfloat16)}

    variants, compile_s = {}, {}
    for name in names:
        torch.manual_seed(args.seed)
        start = time.perf_counter()
        variants[name] = build(name, cfg, tokens, device)
        timed(variants[name][0], 1, device)  # first step: allocation, compilation
        compile_s[name] = time.perf_counter() - start
    times = {name: [] for name in names}
    for r in range(args.warmup + args.rounds):
        for name, (step, _) in variants.items():
            dt = timed(step, args.steps_per_round, device)
            if r >= args.warmup:
                times[name].append(dt)
        for dtype in peaks:  # the machine's speed drifts (other work): the peak is the best seen
            peaks[dtype] = max(peaks[dtype], performance.matmul_peak(device, dtype, seconds=0.1))

    tokens_per_step = cfg.train.batch_size * cfg.model.block_size
    best_peak = max(peaks.values())
    flops_per_token = performance.train_flops_per_token(cfg.model)
    ref = statistics.median(times["lesson"]) if "lesson" in times else None
    rows = []
    for name in names:
        s = statistics.median(times[name])
        dtype = variants[name][1]
        rows.append({
            "variant": name, "ms_per_step": round(s * 1e3, 2),
            "tokens_per_s": round(tokens_per_step / s),
            "speedup_vs_lesson": round(ref / s, 2) if ref else None,
            "mfu": round(performance.mfu(tokens_per_step / s, flops_per_token, best_peak), 4),
            "dtype": str(dtype).removeprefix("torch."),
            "first_step_s": round(compile_s[name], 2),
            "min_max_ms": [round(min(times[name]) * 1e3, 2), round(max(times[name]) * 1e3, 2)],
        })

    m = cfg.model
    print(f"training step, preset {args.preset} (n_embd {m.n_embd}, {m.n_layer} layers, "
          f"{m.n_head} heads, block {m.block_size}, batch {cfg.train.batch_size}), {device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{cpu()}, "
          f"{torch.backends.cpu.get_cpu_capability()}")
    print(f"{flops_per_token * tokens_per_step / 1e9:.2f} GFLOP per step; measured matmul peak "
          f"fp32 {peaks[torch.float32] / 1e9:,.1f} GFLOP/s, bf16 "
          f"{peaks[torch.bfloat16] / 1e9:,.1f} GFLOP/s (MFU against the better); median of "
          f"{args.rounds} rounds of {args.steps_per_round} steps")
    header = (f"{'variant':<15} {'ms/step':>9} {'tokens/s':>10} {'speed-up':>9} {'MFU':>6}  "
              f"{'dtype':<9} {'first step s':>12}  {'min..max ms':>15}")
    print(header)
    print("-" * len(header))
    for row in rows:
        speedup = f"{row['speedup_vs_lesson']:.2f}x" if row["speedup_vs_lesson"] else "-"
        lo, hi = row["min_max_ms"]
        print(f"{row['variant']:<15} {row['ms_per_step']:>9.1f} {row['tokens_per_s']:>10,} "
              f"{speedup:>9} {row['mfu']:>6.1%}  {row['dtype']:<9} {row['first_step_s']:>12.1f}"
              f"  {lo:>7.1f}..{hi:<7.1f}")
    print(json.dumps({
        "benchmark": "train_step", "preset": args.preset, "device": str(device), **machine(),
        "gflop_per_step": flops_per_token * tokens_per_step / 1e9,
        "peak_gflops": {"float32": peaks[torch.float32] / 1e9,
                        "bfloat16": peaks[torch.bfloat16] / 1e9},
        "rounds": args.rounds, "steps_per_round": args.steps_per_round, "rows": rows,
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(exit_status(main))
