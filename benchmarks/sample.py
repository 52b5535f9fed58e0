"""Sampling speed: the lesson's generate against minigpt's uncached and KV-cached samplers.

In one process, on the seed model's shape (vocab 65, n_embd 64, 4 heads, 4 layers, block 128,
seeded random weights), from the prompt "ROMEO:", it times

  (a) lesson    the lesson's section-9 generate (crop to block_size, full forward, softmax,
                multinomial, torch.cat) on the lesson's model (three Linear q/k/v, masked_fill
                attention), both as minigpt.lesson transcribes them, with the same weights
                as (b) and (c);
  (b) uncached  minigpt.generate(..., cache=False): the lesson's sampler on MiniGPT;
  (c) cached    minigpt.generate(...): the KV cache while the sequence fits in the block, and
                a whole forward over the last block_size tokens per token once it does not.

Each row is a number of new tokens. 100 tokens from "ROMEO:" stay inside the block (cached
decoding only); 500 tokens fill the block after 123 and spend the other 377 past it, where every
step must re-encode the whole window (the position embeddings are absolute); the last row starts
from a full block, so every token but the first is past it. All three draw from the global RNG
seeded the same way, and the script checks that they produce the same tokens.

Timings are the median of --repeats runs after one warm-up run, the variants interleaved so that
load from other processes falls on all of them alike. Prints a table, then one JSON line.

    python benchmarks/sample.py [--new-tokens 100,500] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import json
import statistics
import time

import torch
from common import cpu, exit_status, machine, parser, positive, positives

from minigpt import MiniGPT, lesson
from minigpt.sample import generate

VOCAB, BLOCK = 65, 128
PROMPT = "ROMEO:"


# ---- the measurement ----

def build_models(seed: int) -> tuple[lesson.MiniGPT, MiniGPT]:
    torch.manual_seed(seed)
    ours = MiniGPT(VOCAB, block_size=BLOCK)
    theirs = lesson.MiniGPT(VOCAB, block_size=BLOCK)
    theirs.load_state_dict(ours.state_dict())  # the same weights, by the lesson's names
    return theirs, ours


def timed(fn, idx: torch.Tensor, n: int, seed: int) -> tuple[float, torch.Tensor]:
    torch.manual_seed(seed)  # every variant draws from the global RNG, seeded alike
    t0 = time.perf_counter()
    out = fn(idx, n)
    return time.perf_counter() - t0, out


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--new-tokens", default=[100, 500], type=positives(),
                    help="comma-separated numbers of new tokens from the prompt (default 100,500)")
    ap.add_argument("--full-block-tokens", type=positive(zero=True), default=100,
                    help="new tokens for the row that starts from a full block (0 = no row)")
    ap.add_argument("--repeats", type=positive(), default=5, help="timed runs per cell (default 5)")
    ap.add_argument("--threads", type=positive(), default=1, help="torch threads (default 1)")
    ap.add_argument("--seed", type=int, default=0, help="weights and sampling seed")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    theirs, ours = build_models(args.seed)
    chars = sorted(set(PROMPT))  # any fixed token ids will do for random weights
    prompt = torch.tensor([[chars.index(c) for c in PROMPT]])  # (1, 6)
    full = torch.randint(0, VOCAB, (1, BLOCK), generator=torch.Generator().manual_seed(1))
    rows = [(f'"{PROMPT}" + {n}', prompt, n) for n in args.new_tokens]
    if args.full_block_tokens:
        rows.append((f"{BLOCK} tokens + {args.full_block_tokens}", full, args.full_block_tokens))

    variants = {
        "lesson": lambda idx, n: lesson.generate(theirs, idx, n),
        "uncached": lambda idx, n: generate(ours, idx, n, cache=False),
        "cached": lambda idx, n: generate(ours, idx, n),
    }
    results = []
    for label, idx, n in rows:
        times = {name: [] for name in variants}
        outs = {}
        for r in range(args.repeats + 1):  # run 0 is the warm-up
            for name, fn in variants.items():
                dt, outs[name] = timed(fn, idx, n, args.seed)
                if r:
                    times[name].append(dt)
        same = all(torch.equal(outs["lesson"], o) for o in outs.values())
        inside = max(0, min(n, BLOCK - idx.size(1) + 1))  # tokens sampled with the cache
        med = {name: statistics.median(ts) for name, ts in times.items()}
        results.append({
            "row": label, "new_tokens": n, "prompt_tokens": idx.size(1),
            "tokens_inside_block": inside, "tokens_past_block": n - inside,
            "same_tokens": same,
            "ms_per_token": {k: round(v / n * 1e3, 3) for k, v in med.items()},
            "tokens_per_s": {k: round(n / v, 1) for k, v in med.items()},
            "speedup_vs_lesson": {k: round(med["lesson"] / v, 2) for k, v in med.items()},
            "spread_ms_per_token": {k: [round(min(ts) / n * 1e3, 3), round(max(ts) / n * 1e3, 3)]
                                    for k, ts in times.items()},
        })

    print(f"sampling, seed-model shape (vocab {VOCAB}, block {BLOCK}, "
          f"{ours.num_params():,} parameters), {cpu()}, torch {torch.__version__}, "
          f"{args.threads} thread(s), median of {args.repeats}")
    header = (f"{'row':<22} {'in/past':>8}  {'variant':<9} {'ms/token':>9} {'tokens/s':>9} "
              f"{'speed-up':>8}  {'min..max ms/token':>18}")
    print(header)
    print("-" * len(header))
    for res in results:
        split = f"{res['tokens_inside_block']}/{res['tokens_past_block']}"
        for i, name in enumerate(variants):
            lo, hi = res["spread_ms_per_token"][name]
            print(f"{res['row'] if i == 0 else '':<22} {split if i == 0 else '':>8}  "
                  f"{name:<9} {res['ms_per_token'][name]:>9.3f} "
                  f"{res['tokens_per_s'][name]:>9.1f} {res['speedup_vs_lesson'][name]:>7.2f}x  "
                  f"{lo:>8.3f}..{hi:<8.3f}")
        same = "yes" if res["same_tokens"] else "NO"
        print(f"{'':<22} {'':>8}  same tokens in all three: {same}")
    print(json.dumps({
        "benchmark": "sample", **machine(), "repeats": args.repeats, "block_size": BLOCK,
        "rows": results,
    }))
    return 0 if all(r["same_tokens"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(exit_status(main))
