"""The CPU speedrun: training seconds to a whole-split validation loss of 1.72, 1.60 and 1.50 on
TinyShakespeare, for the lesson's script, the default run and the `fast` preset.

  lesson    the lesson's own script (minigpt.lesson: its model, get_batch and loop, AdamW at a
            constant 3e-4) ends near 1.72 after its 5000 steps, and never reaches 1.60; its
            time to 1.72 is its step time, measured here in this process, times those 5000
            steps (the measurement: a median of rounds, as benchmarks/train_step.py does);
  default   `minigpt train` (the lesson's model and its recommended recipe, 5000 steps),
            evaluated on the whole validation split every --eval-every steps;
  fast      `minigpt train --preset fast --time-budget S`, once for each budget in --budgets
            (the preset fits its recipe to a short budget: its [[fit]] tables).

A run's time to a target is the training clock (evaluation left out) at its first evaluation
at or below the target, so it is late by at most one evaluation interval. The ratio is the
lesson's time to 1.72 over the run's, both measured on this machine in this run. --dtype
float32 gives the same table with bf16 forced off (what a CPU without native bf16 gets).
Prints a table, then one JSON line.

    python benchmarks/speedrun.py [--budgets 20,180,300] [--skip-default] [--dtype auto]
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from common import cpu, exit_status, machine, parser, positive, positives

from minigpt import lesson, resolve_config, train
from minigpt.data import ensure_tinyshakespeare, load_tokens

TARGETS = ("1.72", "1.6", "1.5")
QUIET = {"sample_tokens": 0}  # train() without probes: no diagnostics, no plots


def lesson_step_seconds(rounds: int, steps: int) -> float:
    """The lesson's training step on TinyShakespeare, median over rounds of `steps` steps."""
    tokens, tok = load_tokens(ensure_tinyshakespeare())
    data = torch.from_numpy(np.asarray(tokens[: int(0.9 * len(tokens))], dtype=np.int64))
    torch.manual_seed(0)
    model = lesson.MiniGPT(tok.vocab_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    def get_batch(split):  # the lesson's get_batch(split), on the train split
        return lesson.get_batch(data, 32, 128)

    lesson.train_step(model, optimizer, get_batch)  # warm-up
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(steps):
            loss = lesson.train_step(model, optimizer, get_batch)
        loss.item()
        times.append((time.perf_counter() - start) / steps)
    return statistics.median(times)


def run(name: str, preset: str, out: Path, **settings) -> dict:
    cfg = resolve_config(preset, None, {**QUIET, **settings})
    summary = train(cfg, out / name, progress=False).summary
    chosen = json.loads((out / name / "config.json").read_text())["environment"]["dtype"]
    return {"run": name, "preset": preset, "settings": settings,
            "final_val_loss": summary["final_val_loss"], "steps": summary["steps"],
            "train_s": summary["train_s"], "time_to": summary["time_to"],
            "dtype": chosen}  # (what 'auto' chose: the run's own config says it)


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--budgets", default=[20.0, 180.0, 300.0], type=positives(float),
                    help="time budgets (s) for the fast preset, comma-separated "
                         "(default 20,180,300)")
    ap.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"),
                    help="matmul precision of the minigpt runs (default auto)")
    ap.add_argument("--eval-every", type=positive(), default=25,
                    help="steps between whole-split evaluations in every run (default 25)")
    ap.add_argument("--skip-default", action="store_true",
                    help="leave out the default run (`minigpt train`, 5000 steps)")
    ap.add_argument("--rounds", type=positive(), default=5,
                    help="rounds of the lesson's step (default 5)")
    ap.add_argument("--out", default="runs/speedrun", help="where the runs go")
    args = ap.parse_args(argv)
    logging.getLogger("minigpt").setLevel(logging.WARNING)  # the table says what matters
    out = Path(args.out) / time.strftime("%Y%m%d-%H%M%S")

    step_s = lesson_step_seconds(args.rounds, 10)
    lesson_row = {"run": "lesson", "preset": "the lesson's script", "settings": {},
                  "final_val_loss": None, "steps": 5000, "train_s": round(step_s * 5000, 1),
                  "time_to": {"1.72": round(step_s * 5000, 1), "1.6": None, "1.5": None}}
    rows = [lesson_row]
    if not args.skip_default:
        rows.append(run("default", "seed", out, eval_every=args.eval_every, dtype=args.dtype))
    for budget in args.budgets:
        rows.append(run(f"fast-{budget:g}s", "fast", out, time_budget=budget,
                        eval_every=args.eval_every, dtype=args.dtype))

    reference = lesson_row["time_to"]["1.72"]
    print(f"speedrun on TinyShakespeare, {cpu()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{torch.backends.cpu.get_cpu_capability()}, "
          f"dtype {args.dtype} ({', '.join(sorted({r['dtype'] for r in rows[1:]}))}); "
          f"the lesson's step {step_s * 1e3:.1f} ms (median of {args.rounds} rounds)")
    header = f"{'run':<14} {'final val':>9} {'steps':>6} {'train s':>8}" + "".join(
        f" {'to ' + x:>8} {'ratio':>6}" for x in TARGETS)
    print(header)
    print("-" * len(header))
    for row in rows:
        final = "-" if row["final_val_loss"] is None else f"{row['final_val_loss']:.4f}"
        cells = ""
        for x in TARGETS:
            t = row["time_to"].get(x)
            ratio = f"{reference / t:.1f}x" if t else "-"
            cells += f" {('-' if t is None else f'{t:.1f}'):>8} {ratio:>6}"
        print(f"{row['run']:<14} {final:>9} {row['steps']:>6} {row['train_s']:>8.1f}{cells}")
    print(json.dumps({"benchmark": "speedrun", **machine(),
                      "lesson_step_ms": round(step_s * 1e3, 2),
                      "reference_time_to_1.72": reference, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(exit_status(main))
